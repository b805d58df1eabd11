#!/usr/bin/env bash
# Where the kernel runs the pooler and pgbench, second by second, and what
# that does to throughput and to the pooler's CPU per transaction.
#
#   bench/placement.sh [-c CLIENTS] [-T SECONDS] [-M simple|extended] [--rounds N] [--bin BIN]
#
# One scratch Postgres (scale 1), PgBouncer and pgharbor (transaction mode,
# pool 20, SCRAM), both on loopback. For each round and pooler: `pgbench -n
# -S -M MODE -c CLIENTS -j 1 -T SECONDS -P 1` (one pgbench thread, as
# bench/run.py runs 16 clients), while the CPU each of the two last ran on
# (/proc/PID/stat, field 39) and the pooler's utime+stime are sampled every
# 20 ms. Each second of the run is classed by how many of its samples found
# the pooler and pgbench on the same CPU: "together" (at least 80 %),
# "apart" (at most 20 %) or "mixed"; per class the table gives the seconds,
# the mean TPS and the pooler's CPU µs per transaction; the last column is
# the lowest and highest TPS of any one second. It shows how far throughput
# moves within one run while the kernel moves the processes between CPUs,
# which no pooler controls; on a 2-core machine that is the spread between
# one benchmark round and the next.
set -euo pipefail

clients=16
secs=30
mode=simple
rounds=1
bin=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        -c) clients="$2"; shift 2 ;;
        -T) secs="$2"; shift 2 ;;
        -M) mode="$2"; shift 2 ;;
        --rounds) rounds="$2"; shift 2 ;;
        --bin) bin="$(realpath "$2")"; shift 2 ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
root="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=bench/scratch.sh
source "$root/bench/scratch.sh"
[[ -n "$bin" ]] || bin="$(release_pgharbor)"
scratch_start placement
start_both_poolers "$bin"

echo "select-only -M $mode, $clients clients, pgbench -j 1, $secs s per run; seconds classed by pooler and pgbench on the same CPU"
printf '%-10s %5s  %-26s %-26s %-26s %s\n' pooler round "together: s, tps, us/txn" "mixed: s, tps, us/txn" \
    "apart: s, tps, us/txn" "tps per second"
for round in $(seq 1 "$rounds"); do
    for target in "pgharbor $harbor_port $harbor_pid" "pgbouncer $bouncer_port $bouncer_pid"; do
        read -r name port pid <<<"$target"
        PGPASSWORD=secret "$pg_bin/pgbench" -n -S -M "$mode" -c "$clients" -j 1 -T "$secs" -P 1 \
            -h 127.0.0.1 -p "$port" -U app app >"$tmp/pgbench.out" 2>&1 &
        bench_pid=$!
        python3 - "$pid" "$bench_pid" "$secs" >"$tmp/samples" <<'PY'
import sys, time
pooler, bench, secs = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
def stat(pid):
    s = open(f"/proc/{pid}/stat").read()
    f = s[s.rindex(")") + 2:].split()
    return int(f[36]), int(f[11]) + int(f[12])  # processor; utime + stime
t0 = time.monotonic()
while time.monotonic() - t0 < secs + 5:
    try:
        p_cpu, p_ticks = stat(pooler)
        b_cpu, _ = stat(bench)
    except (OSError, ValueError, IndexError):
        break
    print(f"{time.monotonic() - t0:.3f} {p_cpu} {b_cpu} {p_ticks}")
    time.sleep(0.02)
PY
        wait "$bench_pid" || { echo "pgbench against $name failed:" >&2; tail -n 5 "$tmp/pgbench.out" >&2; exit 1; }
        python3 - "$tmp/samples" "$tmp/pgbench.out" "$(getconf CLK_TCK)" "$name" "$round" <<'PY'
import sys
samples = [tuple(map(float, l.split())) for l in open(sys.argv[1])]
hz = int(sys.argv[3])
# "progress: 5.0 s, 34567.2 tps, ..." is printed at the end of each second
# of the run, counted from pgbench's start (which the sampler's clock
# follows within a few milliseconds).
progress = []
for line in open(sys.argv[2]):
    if line.startswith("progress:"):
        f = line.split()
        progress.append((float(f[1]), float(f[3])))
classes = {"together": [], "mixed": [], "apart": []}
for end, tps in progress:
    window = [s for s in samples if end - 1 <= s[0] < end]
    if len(window) < 10 or tps <= 0:
        continue
    same = sum(1 for s in window if s[1] == s[2]) / len(window)
    span = window[-1][0] - window[0][0]
    us = (window[-1][3] - window[0][3]) / hz * 1e6 / (tps * span)
    cls = "together" if same >= 0.8 else "apart" if same <= 0.2 else "mixed"
    classes[cls].append((tps, us))
def cell(xs):
    if not xs:
        return "0"
    return f"{len(xs)}, {sum(t for t, _ in xs) / len(xs):,.0f}, {sum(u for _, u in xs) / len(xs):.1f}"
every = [t for xs in classes.values() for t, _ in xs]
spread = f"{min(every):,.0f}-{max(every):,.0f}" if every else "-"
print(f"{sys.argv[4]:<10} {sys.argv[5]:>5}  {cell(classes['together']):<26} {cell(classes['mixed']):<26} "
      f"{cell(classes['apart']):<26} {spread}")
PY
    done
done

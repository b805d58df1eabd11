#!/usr/bin/env bash
# System calls and context switches per transaction of pgharbor and
# PgBouncer, counted by the kernel's tracepoints (`perf stat`), which do not
# drift with the machine's load the way CPU time does.
#
#   bench/syscalls.sh [-c CLIENTS] [-t TXNS] [-M simple|extended|prepared] [-C]
#                     [--auth scram-sha-256|trust] [--rounds N] [--bin BIN]
#
# -C opens a new connection per transaction (pgbench -C): the counts are
# then per connection. --auth trust takes the password out of the login,
# as the issue's trust-churn target does.
#
# One scratch Postgres (scale 1), PgBouncer (transaction mode, pool 20,
# SCRAM with the plain secret) and pgharbor (the same), both on loopback.
# For each round and pooler: a warm-up pgbench run, then `perf stat` attached
# to the pooler's process around `pgbench -n -S -M MODE -c CLIENTS -j 2 -t
# TXNS`; counts are divided by the transactions (logins included, CLIENTS
# of them). CPU time per transaction, user and system, comes from
# /proc/PID/stat (10 ms ticks) around the same run: tracing adds to the
# system time, not to the user time. `vol` and `invol` split the context
# switches (from /proc/PID/status): the pooler slept in epoll_wait, or was
# preempted while it had work.
set -euo pipefail

clients=16
txns=3000
mode=simple
rounds=2
bin=""
connect=()
auth=scram-sha-256
while [[ $# -gt 0 ]]; do
    case "$1" in
        -c) clients="$2"; shift 2 ;;
        -t) txns="$2"; shift 2 ;;
        -M) mode="$2"; shift 2 ;;
        -C) connect=(-C); shift ;;
        --auth) auth="$2"; shift 2 ;;
        --rounds) rounds="$2"; shift 2 ;;
        --bin) bin="$(realpath "$2")"; shift 2 ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
root="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=bench/scratch.sh
source "$root/bench/scratch.sh"
[[ -n "$bin" ]] || bin="$(release_pgharbor)"
command -v perf >/dev/null || apt-get install -y linux-perf >/dev/null
scratch_start syscalls
start_both_poolers "$bin" "$auth"

events=raw_syscalls:sys_enter,syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom
events+=,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_ctl,context-switches
# utime and stime of a process, in clock ticks.
ticks() { awk '{ sub(/.*\) /, ""); print $12, $13 }' "/proc/$1/stat"; }
# voluntary and involuntary context switches of a process so far.
switches() { awk '/^voluntary_ctxt/ { v = $2 } /^nonvoluntary_ctxt/ { n = $2 } END { print v, n }' "/proc/$1/status"; }
hz="$(getconf CLK_TCK)"
pgbench() {
    PGPASSWORD=secret "$pg_bin/pgbench" -n -S -M "$mode" "${connect[@]}" -c "$clients" -j 2 -h 127.0.0.1 -U app "$@" app
}
echo "select-only -M $mode ${connect[*]}, $auth, $clients clients x $txns transactions; counts per transaction"
printf '%-10s %5s %8s %8s %8s %10s %9s %8s %6s %6s %7s %7s %7s\n' pooler round syscalls sendto recvfrom \
    epoll_wait epoll_ctl switches vol invol user-us sys-us tps
for round in $(seq 1 "$rounds"); do
    for target in "pgharbor $harbor_port $harbor_pid" "pgbouncer $bouncer_port $bouncer_pid"; do
        read -r name port pid <<<"$target"
        pgbench -p "$port" -t 200 >/dev/null 2>&1
        perf stat -x, -e "$events" -p "$pid" -o "$tmp/perf.$name" &
        perf_pid=$!
        sleep 0.3
        read -r u0 s0 <<<"$(ticks "$pid")"
        read -r v0 i0 <<<"$(switches "$pid")"
        tps="$(pgbench -p "$port" -t "$txns" 2>&1 | awk '/^tps/ { printf "%.0f", $3 }')"
        read -r u1 s1 <<<"$(ticks "$pid")"
        read -r v1 i1 <<<"$(switches "$pid")"
        kill -INT "$perf_pid"
        wait "$perf_pid" 2>/dev/null || true
        awk -F, -v n=$((clients * txns)) -v name="$name" -v round="$round" -v tps="$tps" \
            -v user=$(((u1 - u0) * 1000000 / hz)) -v sys=$(((s1 - s0) * 1000000 / hz)) \
            -v vol=$((v1 - v0)) -v invol=$((i1 - i0)) '
            $1 ~ /^[0-9.]+$/ { v[$3] = $1 / n }
            END {
                printf "%-10s %5d %8.3f %8.3f %8.3f %10.3f %9.3f %8.3f %6.3f %6.3f %7.1f %7.1f %7s\n", name, round,
                    v["raw_syscalls:sys_enter"], v["syscalls:sys_enter_sendto"],
                    v["syscalls:sys_enter_recvfrom"], v["syscalls:sys_enter_epoll_wait"],
                    v["syscalls:sys_enter_epoll_ctl"], v["context-switches"], vol / n, invol / n,
                    user / n, sys / n, tps
            }' "$tmp/perf.$name"
    done
done

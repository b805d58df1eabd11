#!/usr/bin/env bash
# A profile-guided (PGO) release build of pgharbor:
#
#   bench/pgo.sh [--seconds S] [--out BIN]
#
# 1. builds pgharbor instrumented (-Cprofile-generate) in target/pgo-gen;
# 2. runs it in front of a scratch Postgres (scale 1, pool 20, transaction
#    mode, SCRAM) under pgbench: select-only simple, extended and prepared,
#    and tpcb-like, at 16 and 64 clients, S seconds each (default 5), plus
#    a short -C run for logins, and stops it with SIGTERM (the profile is
#    written as the process exits);
# 3. merges the profile with the toolchain's llvm-profdata (rustup
#    component llvm-tools, added if missing) and builds pgharbor with it
#    (-Cprofile-use) in target/pgo; the binary is copied to BIN
#    (default target/pgo/release/pgharbor).
#
# The default build (`cargo build --release`) does not use a profile: a
# profile is tied to the compiler that wrote it, so it is made here, on the
# machine that builds, rather than committed.
set -euo pipefail

seconds=5
out=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

sysroot="$(rustc --print sysroot)"
host="$(rustc -vV | sed -n 's/^host: //p')"
profdata="$sysroot/lib/rustlib/$host/bin/llvm-profdata"
if [[ ! -x "$profdata" ]]; then
    rustup component add llvm-tools >/dev/null
fi
# shellcheck source=bench/scratch.sh
source "$root/bench/scratch.sh"
scratch_start pgo

echo "[pgo] instrumented build (target/pgo-gen)"
mkdir -p "$tmp/profiles"
RUSTFLAGS="-Cprofile-generate=$tmp/profiles" \
    cargo build --release --bin pgharbor --target-dir target/pgo-gen 2>&1 | tail -n 1

port="$(free_port)"
pgharbor_config "$tmp/pgharbor.toml" "$port"
PGHARBOR_LOG=warn target/pgo-gen/release/pgharbor -c "$tmp/pgharbor.toml" >"$tmp/pgharbor.log" 2>&1 &
pid=$!
wait_port "$port" || { kill "$pid"; exit 1; }
bench() {
    echo "[pgo] training: pgbench $*"
    PGPASSWORD=secret "$pg_bin/pgbench" -n -j 2 -h 127.0.0.1 -p "$port" -U app "$@" app \
        >"$tmp/pgbench.log" 2>&1 || { cat "$tmp/pgbench.log" >&2; kill "$pid"; exit 1; }
}
for c in 16 64; do
    for m in simple extended prepared; do
        bench -S -M "$m" -c "$c" -T "$seconds"
    done
    bench -c "$c" -T "$seconds"
done
bench -S -C -c 16 -T 2
kill -TERM "$pid"
wait "$pid" || true

echo "[pgo] merging $(find "$tmp/profiles" -name '*.profraw' | wc -l) profile file(s)"
"$profdata" merge -o "$tmp/pgharbor.profdata" "$tmp/profiles"

echo "[pgo] optimized build (target/pgo)"
RUSTFLAGS="-Cprofile-use=$tmp/pgharbor.profdata" \
    cargo build --release --bin pgharbor --target-dir target/pgo 2>&1 | tail -n 1
if [[ -n "$out" ]]; then
    cp target/pgo/release/pgharbor "$out"
    echo "[pgo] $out"
else
    echo "[pgo] target/pgo/release/pgharbor"
fi

#!/usr/bin/env bash
# pgharbor benchmark: see bench/README.md. All arguments go to bench/run.py
# (try --help; --quick for a smoke test of a few minutes).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."

# The idle-memory test holds 10,000 client sockets per process.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

command -v python3 >/dev/null || { echo "bench: python3 is required" >&2; exit 1; }
command -v cargo >/dev/null || { echo "bench: cargo is required" >&2; exit 1; }

pid=""
cleanup() {
    # run.py tears down everything it started (Postgres, PgBouncer, pgharbor,
    # the relay, pgbench) on SIGTERM/SIGINT; make sure it gets the signal and
    # give it time to finish.
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        # On Ctrl-C the terminal already signalled run.py too; give it a moment.
        for _ in $(seq 1 4); do
            kill -0 "$pid" 2>/dev/null || return 0
            sleep 0.5
        done
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 60); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
    fi
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM HUP

python3 "$here/run.py" "$@" &
pid=$!
set +e
wait "$pid"
rc=$?
# (wait returns early when a trapped signal arrives; the INT/TERM trap handles it)
pid=""
exit "$rc"

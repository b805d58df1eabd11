#!/usr/bin/env bash
# User-space instructions per transaction of one or more pgharbor binaries,
# counted by callgrind (repeatable, whatever else the machine is doing).
#
#   bench/marginal.sh [-c CLIENTS] [-M simple|extended|prepared] [-t T1,T2]
#                     [-b select-only|tpcb-like|mixed] [-s SCALE] [--tls] BIN...
#
# For each binary: a fresh pgharbor under `valgrind --tool=callgrind` in
# front of one scratch Postgres (scale SCALE, default 1; pool 20,
# transaction mode, SCRAM), pgbench's WORKLOAD (-b, default select-only;
# `mixed` is BEGIN, three SELECTs, COMMIT: the cost per statement of a
# multi-statement transaction) `-M MODE -c CLIENTS -j 2 -t T`, twice (T1 then T2
# transactions per client, a fresh process each time); the figure is the
# marginal cost (instructions(T2) - instructions(T1)) / ((T2 - T1) *
# CLIENTS), so start-up, logins and shutdown cancel out. With --tls the
# clients connect with sslmode=require (a self-signed certificate).
# --keep DIR keeps the callgrind files (for callgrind_annotate --diff).
# The word `pgbouncer` in place of a BIN counts PgBouncer the same way
# (pgbouncer_config: transaction mode, pool 20, SCRAM; not with --tls).
set -euo pipefail

clients=16
mode=simple
workload=select-only
scratch_scale=1
runs=500,1500
tls=0
keep=""
bins=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        -c) clients="$2"; shift 2 ;;
        -M) mode="$2"; shift 2 ;;
        -t) runs="$2"; shift 2 ;;
        --tls) tls=1; shift ;;
        --keep) keep="$2"; shift 2 ;;
        -b) workload="$2"; shift 2 ;;
        -s) scratch_scale="$2"; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        pgbouncer) bins+=(pgbouncer); shift ;;
        *) bins+=("$(realpath "$1")"); shift ;;
    esac
done
[[ ${#bins[@]} -gt 0 ]] || { echo "usage: $0 [-c N] [-M MODE] [-t T1,T2] [--tls] BIN|pgbouncer..." >&2; exit 2; }
t1="${runs%,*}"
t2="${runs#*,}"
command -v valgrind >/dev/null || { echo "valgrind is required (apt-get install valgrind)" >&2; exit 1; }
# shellcheck source=bench/scratch.sh
source "$(dirname "$0")/scratch.sh"
scratch_start marginal
scratch_on_exit '[[ -f "$tmp/pgbouncer.pid" ]] && kill "$(cat "$tmp/pgbouncer.pid")" 2>/dev/null'
case "$workload" in
    select-only) script=(-b select-only) ;;
    tpcb-like) script=(-b tpcb-like) ;;
    mixed)
        cat > "$tmp/mixed.sql" <<'EOT'
\set aid random(1, 100000 * :scale)
BEGIN;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid / 2 + 1;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid / 3 + 1;
COMMIT;
EOT
        script=(-f "$tmp/mixed.sql") ;;
    *) echo "unknown workload $workload (select-only, tpcb-like, mixed)" >&2; exit 2 ;;
esac

client_tls=""
ssl_env=()
if [[ $tls == 1 ]]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=localhost -keyout "$tmp/key.pem" -out "$tmp/cert.pem" >/dev/null 2>&1
    client_tls=$'[client_tls]\nmode = "require"\ncert_file = "'"$tmp/cert.pem"$'"\nkey_file = "'"$tmp/key.pem"$'"'
    ssl_env=(PGSSLMODE=require)
fi

# Total instructions of one pgharbor process serving CLIENTS x $1 transactions.
count() {
    local bin="$1" per_client="$2"
    local port out
    port="$(free_port)"
    out="$tmp/cg.$port.out"
    if [[ "$bin" == pgbouncer ]]; then
        # As the user Postgres runs as (PgBouncer refuses root); its pid
        # file names the process valgrind runs it in, which gets the signal.
        pgbouncer_config "$tmp/pgbouncer.ini" "$port"
        rm -f "$tmp/pgbouncer.pid"
        "${as_pg[@]}" valgrind --tool=callgrind --callgrind-out-file="$out" \
            "$(pgbouncer_path)" "$tmp/pgbouncer.ini" >"$tmp/pgbouncer.out" 2>&1 &
    else
        pgharbor_config "$tmp/pgharbor.toml" "$port" "$client_tls"
        PGHARBOR_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" \
            "$bin" -c "$tmp/pgharbor.toml" >"$tmp/pgharbor.log" 2>&1 &
    fi
    local pid=$!
    # Under valgrind the start takes a while.
    wait_port "$port" 60 || { kill "$pid"; exit 1; }
    env PGPASSWORD=secret "${ssl_env[@]}" "$pg_bin/pgbench" -n "${script[@]}" -M "$mode" -c "$clients" -j 2 \
        -t "$per_client" -h 127.0.0.1 -p "$port" -U app app >"$tmp/pgbench.log" 2>&1 \
        || { cat "$tmp/pgbench.log" >&2; kill "$pid"; exit 1; }
    if [[ "$bin" == pgbouncer ]]; then
        kill -INT "$(cat "$tmp/pgbouncer.pid")"
    else
        kill -TERM "$pid"
    fi
    wait "$pid" || true
    if [[ -n "$keep" ]]; then
        mkdir -p "$keep"
        local label=pgbouncer
        [[ "$bin" == pgbouncer ]] || label="$(basename "$(dirname "$bin")")-$(basename "$bin")"
        cp "$out" "$keep/$label-t$per_client.callgrind"
    fi
    awk '/^(summary|totals):/ { print $2; exit }' "$out"
}

printf '%s\n' "$workload -M $mode, scale $scratch_scale, $clients clients, $t1 -> $t2 transactions per client$([[ $tls == 1 ]] && echo ', TLS')"
for bin in "${bins[@]}"; do
    if [[ "$bin" == pgbouncer && "$mode" == prepared ]] && ! "$(pgbouncer_path)" --version \
        | awk '/^PgBouncer/ { split($2, v, "."); exit !(v[1] > 1 || v[2] >= 21) }'; then
        # Named statements in transaction mode came with PgBouncer 1.21
        # (max_prepared_statements); before, pgbench -M prepared fails.
        printf 'pgbouncer\tskipped: -M prepared needs PgBouncer 1.21 or later\n'
        continue
    fi
    a="$(count "$bin" "$t1")"
    b="$(count "$bin" "$t2")"
    per_txn=$(( (b - a) / ((t2 - t1) * clients) ))
    printf '%s\t%s instructions per transaction\n' "$bin" "$per_txn"
done

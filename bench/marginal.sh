#!/usr/bin/env bash
# User-space instructions per transaction of one or more pgharbor binaries,
# counted by callgrind (repeatable, whatever else the machine is doing).
#
#   bench/marginal.sh [-c CLIENTS] [-M simple|extended|prepared] [-t T1,T2] [--tls] BIN...
#
# For each binary: a fresh pgharbor under `valgrind --tool=callgrind` in
# front of one scratch Postgres (scale 1, pool 20, transaction mode, SCRAM),
# `pgbench -n -S -M MODE -c CLIENTS -j 2 -t T`, twice (T1 then T2
# transactions per client, a fresh process each time); the figure is the
# marginal cost (instructions(T2) - instructions(T1)) / ((T2 - T1) *
# CLIENTS), so start-up, logins and shutdown cancel out. With --tls the
# clients connect with sslmode=require (a self-signed certificate).
# --keep DIR keeps the callgrind files (for callgrind_annotate --diff).
set -euo pipefail

clients=16
mode=simple
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
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) bins+=("$(realpath "$1")"); shift ;;
    esac
done
[[ ${#bins[@]} -gt 0 ]] || { echo "usage: $0 [-c N] [-M MODE] [-t T1,T2] [--tls] BIN..." >&2; exit 2; }
t1="${runs%,*}"
t2="${runs#*,}"
command -v valgrind >/dev/null || { echo "valgrind is required (apt-get install valgrind)" >&2; exit 1; }
pg_bin="$(dirname "$(compgen -G '/usr/lib/postgresql/*/bin/initdb' | sort -V | tail -n1)")"

tmp="$(mktemp -d /tmp/pgharbor-marginal-XXXXXX)"
chmod 755 "$tmp"
as_pg=()
if [[ "$(id -u)" == 0 ]]; then
    chown postgres: "$tmp"
    as_pg=(runuser -u postgres --)
fi
pg_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
cleanup() {
    "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$tmp/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT

echo postgres > "$tmp/pw"
"${as_pg[@]}" "$pg_bin/initdb" -D "$tmp/data" -U postgres --pwfile="$tmp/pw" \
    --auth-local=trust --auth-host=scram-sha-256 --no-sync >/dev/null
"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$tmp/data" -w -l "$tmp/pg.log" \
    -o "-p $pg_port -k $tmp -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100" start >/dev/null
psql_admin=("$pg_bin/psql" -X -q -h "$tmp" -p "$pg_port" -U postgres)
"${psql_admin[@]}" -c "create role app login password 'secret'" -c "create database app owner app"
PGPASSWORD=secret "$pg_bin/pgbench" -i -q -s 1 -h 127.0.0.1 -p "$pg_port" -U app app >/dev/null 2>&1

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
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    out="$tmp/cg.$port.out"
    cat > "$tmp/pgharbor.toml" <<EOF
[proxy]
listen_addr = "127.0.0.1:$port"
[server_tls]
mode = "disable"
$client_tls
[pool]
pool_size = 20
[[databases]]
name = "app"
port = $pg_port
[[users]]
name = "app"
password = "secret"
auth_type = "scram-sha-256"
EOF
    PGHARBOR_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$bin" -c "$tmp/pgharbor.toml" >"$tmp/pgharbor.log" 2>&1 &
    local pid=$!
    for _ in $(seq 1 600); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
    env PGPASSWORD=secret "${ssl_env[@]}" "$pg_bin/pgbench" -n -S -M "$mode" -c "$clients" -j 2 \
        -t "$per_client" -h 127.0.0.1 -p "$port" -U app app >"$tmp/pgbench.log" 2>&1 \
        || { cat "$tmp/pgbench.log" >&2; kill "$pid"; exit 1; }
    kill -TERM "$pid"
    wait "$pid" || true
    if [[ -n "$keep" ]]; then
        mkdir -p "$keep"
        cp "$out" "$keep/$(basename "$(dirname "$bin")")-$(basename "$bin")-t$per_client.callgrind"
    fi
    awk '/^(summary|totals):/ { print $2; exit }' "$out"
}

printf '%s\n' "select-only -M $mode, $clients clients, $t1 -> $t2 transactions per client$([[ $tls == 1 ]] && echo ', TLS')"
for bin in "${bins[@]}"; do
    a="$(count "$bin" "$t1")"
    b="$(count "$bin" "$t2")"
    per_txn=$(( (b - a) / ((t2 - t1) * clients) ))
    printf '%s\t%s instructions per transaction\n' "$bin" "$per_txn"
done

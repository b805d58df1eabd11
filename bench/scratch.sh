# Shared by bench/marginal.sh, bench/pgo.sh and bench/syscalls.sh (sourced,
# not run): a scratch Postgres for one script's run, and a pgharbor
# configuration in front of it.
#
#   scratch_start NAME   a temporary directory ($tmp, removed on exit with
#                        the Postgres in it), $pg_bin, $as_pg, and a
#                        Postgres (scale 1, SCRAM, user app / secret,
#                        database app) on 127.0.0.1:$pg_port
#   scratch_on_exit CMD  run CMD too as the script exits (before Postgres stops)
#   free_port            a free loopback port
#   wait_port PORT [S]   until something listens on PORT (S seconds at most,
#                        default 30)
#   pgharbor_config FILE PORT [EXTRA]
#                        a pgharbor configuration: transaction mode, pool 20,
#                        SCRAM, server TLS off, listening on PORT; EXTRA is
#                        appended (TOML sections)

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() {
    for _ in $(seq 1 $((${2:-30} * 10))); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    return 1
}

scratch_exit_hooks=()
scratch_on_exit() { scratch_exit_hooks+=("$1"); }

scratch_cleanup() {
    local hook
    for hook in "${scratch_exit_hooks[@]}"; do eval "$hook" || true; done
    "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$tmp/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$tmp"
}

scratch_start() {
    pg_bin="$(dirname "$(compgen -G '/usr/lib/postgresql/*/bin/initdb' | sort -V | tail -n1)")"
    tmp="$(mktemp -d "/tmp/pgharbor-$1-XXXXXX")"
    chmod 755 "$tmp"
    as_pg=()
    if [[ "$(id -u)" == 0 ]]; then
        chown postgres: "$tmp"
        as_pg=(runuser -u postgres --)
    fi
    trap scratch_cleanup EXIT
    pg_port="$(free_port)"
    echo postgres > "$tmp/pw"
    "${as_pg[@]}" "$pg_bin/initdb" -D "$tmp/data" -U postgres --pwfile="$tmp/pw" \
        --auth-local=trust --auth-host=scram-sha-256 --no-sync >/dev/null
    "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$tmp/data" -w -l "$tmp/pg.log" \
        -o "-p $pg_port -k $tmp -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100" start >/dev/null
    "$pg_bin/psql" -X -q -h "$tmp" -p "$pg_port" -U postgres \
        -c "create role app login password 'secret'" -c "create database app owner app"
    PGPASSWORD=secret "$pg_bin/pgbench" -i -q -s 1 -h 127.0.0.1 -p "$pg_port" -U app app >/dev/null 2>&1
}

pgharbor_config() {
    cat > "$1" <<EOT
[proxy]
listen_addr = "127.0.0.1:$2"
max_client_conn = 10000
[server_tls]
mode = "disable"
${3:-}
[pool]
pool_size = 20
[[databases]]
name = "app"
port = $pg_port
[[users]]
name = "app"
password = "secret"
auth_type = "scram-sha-256"
EOT
}

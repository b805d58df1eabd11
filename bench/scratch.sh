# Shared by bench/marginal.sh, bench/pgo.sh, bench/syscalls.sh and
# bench/placement.sh (sourced, not run): a scratch Postgres for one script's
# run, and pgharbor (and PgBouncer) in front of it.
#
#   scratch_start NAME   a temporary directory ($tmp, removed on exit with
#                        the Postgres in it), $pg_bin, $as_pg, and a
#                        Postgres (scale $scratch_scale or 1, SCRAM, user app / secret,
#                        database app) on 127.0.0.1:$pg_port
#   scratch_on_exit CMD  run CMD too as the script exits (before Postgres stops)
#   free_port            a free loopback port
#   wait_port PORT [S]   until something listens on PORT (S seconds at most,
#                        default 30)
#   pgharbor_config FILE PORT [EXTRA]
#                        a pgharbor configuration: transaction mode, pool 20,
#                        SCRAM, server TLS off, listening on PORT; EXTRA is
#                        appended (TOML sections)
#   pgbouncer_path       the PgBouncer binary (apt-get installs it if missing)
#   pgbouncer_config FILE PORT [AUTH]
#                        PgBouncer set up as pgharbor_config sets pgharbor
#   release_pgharbor     builds pgharbor (cargo build --release) and prints
#                        the binary's path
#   start_both_poolers BIN
#                        pgharbor (BIN) and PgBouncer, both in front of
#                        that Postgres (see the function)

release_pgharbor() {
    local root
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    (cd "$root" && cargo build --release --bin pgharbor 2>&1 | tail -n 1) >&2
    echo "$root/target/release/pgharbor"
}

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
    PGPASSWORD=secret "$pg_bin/pgbench" -i -q -s "${scratch_scale:-1}" -h 127.0.0.1 -p "$pg_port" -U app app >/dev/null 2>&1
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

# The PgBouncer binary (installed with apt-get when missing).
pgbouncer_path() {
    command -v pgbouncer >/dev/null || [[ -x /usr/sbin/pgbouncer ]] || apt-get install -y pgbouncer >/dev/null
    command -v pgbouncer || echo /usr/sbin/pgbouncer
}

# pgbouncer_config FILE PORT [AUTH]: PgBouncer as pgharbor_config sets
# pgharbor up (transaction mode, pool 20, SCRAM with the plain secret or
# AUTH), listening on PORT, its pid in $tmp/pgbouncer.pid.
pgbouncer_config() {
    local auth="${3:-scram-sha-256}"
    cat > "$1" <<EOF
[databases]
app = host=127.0.0.1 port=$pg_port dbname=app
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $2
unix_socket_dir =
auth_type = $auth
auth_file = $tmp/users.txt
pool_mode = transaction
default_pool_size = 20
max_client_conn = 10000
log_connections = 0
log_disconnections = 0
logfile = $tmp/pgbouncer.log
pidfile = $tmp/pgbouncer.pid
EOF
    echo '"app" "secret"' > "$tmp/users.txt"
    [[ ${#as_pg[@]} -gt 0 ]] && chown postgres: "$1" "$tmp/users.txt"
}

# start_both_poolers BIN [AUTH]: pgharbor (BIN, pgharbor_config) and
# PgBouncer (the same: transaction mode, pool 20, SCRAM with the plain
# secret; installed with apt-get when missing) in front of the scratch
# Postgres, each on a free loopback port, stopped on exit; sets
# $harbor_port, $harbor_pid, $bouncer_port and $bouncer_pid. AUTH `trust`
# makes Postgres and both poolers take clients without a password.
start_both_poolers() {
    local bin="$1" auth="${2:-scram-sha-256}" pgbouncer_bin
    if [[ "$auth" == trust ]]; then
        sed -i 's/scram-sha-256$/trust/' "$tmp/data/pg_hba.conf"
        "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$tmp/data" reload >/dev/null
    fi
    pgbouncer_bin="$(pgbouncer_path)"
    scratch_on_exit '[[ -f "$tmp/pgbouncer.pid" ]] && kill "$(cat "$tmp/pgbouncer.pid")" 2>/dev/null'
    harbor_port="$(free_port)"
    bouncer_port="$(free_port)"
    pgharbor_config "$tmp/pgharbor.toml" "$harbor_port"
    sed -i "s/^auth_type = .*/auth_type = \"$auth\"/" "$tmp/pgharbor.toml"
    pgbouncer_config "$tmp/pgbouncer.ini" "$bouncer_port" "$auth"

    PGHARBOR_LOG=warn "$bin" -c "$tmp/pgharbor.toml" >"$tmp/pgharbor.log" 2>&1 &
    harbor_pid=$!
    scratch_on_exit "kill $harbor_pid 2>/dev/null"
    "${as_pg[@]}" "$pgbouncer_bin" -d "$tmp/pgbouncer.ini" >/dev/null
    wait_port "$harbor_port"
    wait_port "$bouncer_port"
    bouncer_pid="$(cat "$tmp/pgbouncer.pid")"
}

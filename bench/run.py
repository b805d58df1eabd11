#!/usr/bin/env python3
"""pgharbor benchmark: direct Postgres, a reference relay, PgBouncer and pgharbor.

One run builds pgharbor (release), starts a scratch PostgreSQL, PgBouncer,
pgharbor and a plain TCP relay on 127.0.0.1, runs pgbench against each target
in interleaved rounds, measures the idle memory per client of both poolers and
prints a markdown report (also written to bench/results/latest.md, with the raw
numbers in latest.json). Python 3.11 standard library only.

See bench/README.md for how to run it and how to read the report.
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import os
import platform
import pwd
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, asdict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER = "bench"
PASSWORD = "bench"
DBNAME = "bench"
TARGETS = ["direct", "relay", "pgbouncer", "pgharbor", "base"]
LABEL = {"direct": "direct", "relay": "relay", "pgbouncer": "PgBouncer", "pgharbor": "pgharbor",
         "base": "pgharbor base"}
POOLERS = ["relay", "pgbouncer", "pgharbor", "base"]  # processes whose CPU we measure

# workload name -> pgbench arguments
WORKLOADS = {
    "select-simple": ["-S", "-M", "simple"],
    "select-extended": ["-S", "-M", "extended"],
    "select-prepared": ["-S", "-M", "prepared"],
    "tpcb-like": ["-M", "simple"],
    "churn": ["-S", "-M", "simple", "-C"],
}

CLK_TCK = os.sysconf("SC_CLK_TCK")

# --auth: the method of Postgres's pg_hba.conf line for 127.0.0.1 and of
# both poolers' clients, and how the report names it.
AUTH = {"scram": ("scram-sha-256", "SCRAM-SHA-256"), "trust": ("trust", "trust")}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# --------------------------------------------------------------------------
# process bookkeeping and teardown
# --------------------------------------------------------------------------

class Procs:
    """Every long-running process we start, torn down in reverse order."""

    def __init__(self) -> None:
        self.items: list[tuple[str, subprocess.Popen, int]] = []

    def add(self, name: str, p: subprocess.Popen, stop_signal: int = signal.SIGTERM) -> subprocess.Popen:
        self.items.append((name, p, stop_signal))
        return p

    def stop(self, name: str) -> None:
        for i, (n, p, sig) in enumerate(self.items):
            if n == name:
                _stop(n, p, sig)
                del self.items[i]
                return

    def stop_all(self) -> None:
        while self.items:
            n, p, sig = self.items.pop()
            _stop(n, p, sig)


def _stop(name: str, p: subprocess.Popen, sig: int) -> None:
    if p.poll() is not None:
        return
    try:
        p.send_signal(sig)
        p.wait(timeout=15)
    except subprocess.TimeoutExpired:
        log(f"{name} (pid {p.pid}) did not stop in 15 s; killing it")
        p.kill()
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    except ProcessLookupError:
        pass


PROCS = Procs()
CURRENT_CHILD: list[subprocess.Popen] = []  # the pgbench / helper running now


_SIGNALLED = []


def _on_signal(signum, _frame):
    # Interrupt the benchmark once; a second signal (e.g. run.sh forwarding
    # the Ctrl-C we already got) must not interrupt the teardown.
    if _SIGNALLED:
        return
    _SIGNALLED.append(signum)
    raise KeyboardInterrupt(f"signal {signum}")


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen | None, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what} exited with status {proc.returncode} before listening on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise BenchError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# With --pin-poolers: the CPUs of the poolers and the relay, and those of
# everything else (Postgres, pgbench, the idle-client holder). Empty: no pinning.
POOLER_CPUS: set[int] = set()
OTHER_CPUS: set[int] = set()


def pin_cpus(cpus: set[int]):
    """A preexec_fn: raise_nofile, then (when pinning) this CPU affinity."""
    def preexec() -> None:
        raise_nofile()
        if cpus:
            os.sched_setaffinity(0, cpus)
    return preexec


def as_pooler():
    return pin_cpus(POOLER_CPUS)


def as_other():
    return pin_cpus(OTHER_CPUS)


def cpu_ticks(pid: int) -> int:
    """utime + stime of the whole process (all threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    rest = data[data.rindex(")") + 2:].split()
    # fields after "pid (comm)": state is rest[0] = field 3; utime = field 14, stime = field 15
    return int(rest[11]) + int(rest[12])


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs together, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice: inside user/nice]
    total = sum(fields[:8])
    return total - fields[3] - fields[4], total


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


class CpuSampler:
    """Samples a process's CPU ticks (0 without a pid) and the machine's busy
    and total ticks every `interval` seconds, with wall-clock times."""

    def __init__(self, pid: int | None, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int, int, int]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self._sample())
            except OSError:
                return
            self._stop.wait(self.interval)

    def _sample(self) -> tuple[float, int, int, int]:
        t = time.time()
        proc = cpu_ticks(self.pid) if self.pid else 0
        return (t, proc) + machine_ticks()

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(timeout=2)
        try:
            self.samples.append(self._sample())
        except OSError:
            pass


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def percentile(sorted_xs: list[float], p: float) -> float | None:
    if not sorted_xs:
        return None
    k = max(0, min(len(sorted_xs) - 1, int(round(p / 100.0 * len(sorted_xs) + 0.5)) - 1))
    return sorted_xs[k]


# --------------------------------------------------------------------------
# setup: build, Postgres, PgBouncer, pgharbor, relay
# --------------------------------------------------------------------------

@dataclass
class Env:
    tmp: str
    pg_bin: str
    as_postgres: bool
    pg_port: int = 0
    ports: dict = field(default_factory=dict)
    pids: dict = field(default_factory=dict)
    pgharbor_bin: str = ""
    relay_bin: str = ""
    idle_bin: str = ""
    pgbouncer_version: str = ""
    pg_version: str = ""
    tls_cert: str = ""
    tls_key: str = ""


def find_pg_bin() -> str:
    env = os.environ.get("PG_BIN")
    if env:
        return env
    cands = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0)
    for c in reversed(cands):
        if os.path.exists(os.path.join(c, "initdb")) and os.path.exists(os.path.join(c, "pgbench")):
            return c
    raise BenchError("no PostgreSQL binaries under /usr/lib/postgresql/*/bin; set PG_BIN")


def build(args) -> tuple[str, str, str]:
    # Two invocations: the benchmarked binary is exactly what `cargo build
    # --release` makes (building it together with the examples would unify in
    # the dev-dependencies' features).
    exes = {}
    for extra in (["--bin", "pgharbor"], ["--example", "relay", "--example", "idle_clients"]):
        cmd = ["cargo", "build", "--release", "--message-format=json-render-diagnostics"] + extra
        log("building: " + " ".join(cmd))
        p = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True, timeout=3600)
        if p.returncode != 0:
            raise BenchError(f"cargo build failed (exit {p.returncode})")
        for line in p.stdout.splitlines():
            try:
                m = json.loads(line)
            except ValueError:
                continue
            if m.get("reason") == "compiler-artifact" and m.get("executable"):
                exes[m["target"]["name"]] = m["executable"]
    try:
        return exes["pgharbor"], exes["relay"], exes["idle_clients"]
    except KeyError as e:
        raise BenchError(f"cargo did not report the {e} executable")


def pg_user_kwargs(env: Env) -> dict:
    """Popen arguments that run a command as the postgres user when we are root.

    We drop privileges in-process (like `runuser -u postgres --`, but without a
    wrapper process) so that the PID we hold is the daemon itself, which is what
    /proc CPU and RSS accounting needs.
    """
    if not env.as_postgres:
        return {}
    pw = pwd.getpwnam("postgres")
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": [],
            "env": {**_base_env(), "HOME": env.tmp, "USER": "postgres", "LOGNAME": "postgres"}}


def _base_env() -> dict:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ")}
    keep.setdefault("PATH", "/usr/bin:/bin")
    keep["LC_ALL"] = "C.UTF-8"
    return keep


def run_checked(cmd, env: Env, what: str, as_pg: bool = True, timeout: float = 600, extra_env=None, input=None) -> str:
    kw = pg_user_kwargs(env) if as_pg else {}
    e = dict(kw.pop("env", None) or {**_base_env()})
    if extra_env:
        e.update(extra_env)
    p = subprocess.run(cmd, cwd=env.tmp, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=timeout, input=input, **kw)
    if p.returncode != 0:
        raise BenchError(f"{what} failed (exit {p.returncode}):\n{p.stdout[-3000:]}")
    return p.stdout


def start_postgres(env: Env, args) -> None:
    data = os.path.join(env.tmp, "pgdata")
    pwfile = os.path.join(env.tmp, "pgpass.init")
    with open(pwfile, "w") as f:
        f.write("postgres\n")
    if env.as_postgres:
        os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, pwd.getpwnam("postgres").pw_gid)
    log("initdb")
    run_checked([os.path.join(env.pg_bin, "initdb"), "-D", data, "-U", "postgres", "-E", "UTF8",
                 "--no-locale", "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"],
                env, "initdb", timeout=300)
    with open(os.path.join(data, "pg_hba.conf"), "w") as f:
        f.write("local all all trust\n"
                f"host all all 127.0.0.1/32 {AUTH[args.auth][0]}\n")
    env.pg_port = free_port()
    sock = env.tmp
    conf = [
        f"port={env.pg_port}", "listen_addresses=127.0.0.1", f"unix_socket_directories={sock}",
        f"max_connections={args.max_connections}", "fsync=off", "synchronous_commit=off",
        "full_page_writes=off", "shared_buffers=256MB", "password_encryption=scram-sha-256",
        "logging_collector=off", "log_min_messages=warning", "checkpoint_timeout=30min",
        "max_wal_size=4GB",
    ]
    if args.tls:
        # direct and relay clients then talk TLS to Postgres itself.
        make_tls_files(env)
        conf += ["ssl=on", f"ssl_cert_file={env.tls_cert}", f"ssl_key_file={env.tls_key}"]
    cmd = [os.path.join(env.pg_bin, "postgres"), "-D", data]
    for c in conf:
        cmd += ["-c", c]
    kw = pg_user_kwargs(env)
    e = kw.pop("env", None) or _base_env()
    logf = open(os.path.join(env.tmp, "postgres.log"), "w")
    p = subprocess.Popen(cmd, cwd=env.tmp, env=e, stdout=logf, stderr=subprocess.STDOUT,
                         start_new_session=True, preexec_fn=as_other(), **kw)
    # SIGINT = fast shutdown
    PROCS.add("postgres", p, signal.SIGINT)
    env.pids["postgres"] = p.pid
    wait_port(env.pg_port, p, "postgres", timeout=60)
    deadline = time.monotonic() + 30
    while True:  # bounded: the port answers before recovery ends
        r = subprocess.run([os.path.join(env.pg_bin, "pg_isready"), "-h", sock, "-p", str(env.pg_port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if r.returncode == 0:
            break
        if time.monotonic() > deadline:
            raise BenchError("postgres not ready within 30 s")
        time.sleep(0.2)
    env.pg_version = psql(env, "SHOW server_version").strip()
    log(f"postgres {env.pg_version} on 127.0.0.1:{env.pg_port}")
    psql(env, f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'")
    psql(env, f"CREATE DATABASE {DBNAME} OWNER {USER}")
    log(f"pgbench -i -s {args.scale}")
    run_checked([os.path.join(env.pg_bin, "pgbench"), "-i", "-q", "-s", str(args.scale),
                 "-h", "127.0.0.1", "-p", str(env.pg_port), "-U", USER, DBNAME],
                env, "pgbench -i", as_pg=False, timeout=1800, extra_env={"PGPASSWORD": PASSWORD})
    psql(env, "VACUUM ANALYZE", db=DBNAME)


def psql(env: Env, sql: str, db: str = "postgres") -> str:
    return run_checked([os.path.join(env.pg_bin, "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
                        "-h", env.tmp, "-p", str(env.pg_port), "-U", "postgres", "-d", db, "-c", sql],
                       env, f"psql {sql!r}")


def write_pg_owned(env: Env, path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
    if env.as_postgres:
        pw = pwd.getpwnam("postgres")
        os.chown(path, pw.pw_uid, pw.pw_gid)
        os.chmod(path, 0o600)


def make_tls_files(env: Env) -> None:
    """A self-signed certificate for `localhost` (P-256) that Postgres,
    PgBouncer and pgharbor all serve with --tls; owned by postgres, as
    Postgres and PgBouncer run as that user and Postgres insists on a key
    only its owner can read."""
    d = os.path.join(env.tmp, "tls")
    os.makedirs(d, exist_ok=True)
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    run_checked(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout", key, "-out", cert],
                env, "openssl req", as_pg=False)
    for f in (cert, key):
        write_pg_owned(env, f, open(f).read())
    if env.as_postgres:
        pw = pwd.getpwnam("postgres")
        os.chown(d, pw.pw_uid, pw.pw_gid)
    env.tls_cert, env.tls_key = cert, key


def start_pgbouncer(env: Env, args) -> None:
    exe = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.path.exists(exe):
        log("pgbouncer missing: apt-get install -y pgbouncer")
        r = subprocess.run(["apt-get", "install", "-y", "pgbouncer"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=600)
        if r.returncode != 0:
            raise BenchError("apt-get install -y pgbouncer failed:\n" + r.stdout[-2000:])
        exe = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    env.pgbouncer_version = subprocess.run([exe, "--version"], stdout=subprocess.PIPE, text=True).stdout.splitlines()[0]
    d = os.path.join(env.tmp, "pgbouncer")
    os.makedirs(d, exist_ok=True)
    if env.as_postgres:
        pw = pwd.getpwnam("postgres")
        os.chown(d, pw.pw_uid, pw.pw_gid)
    if args.secret == "verifier":
        secret = psql(env, f"SELECT rolpassword FROM pg_authid WHERE rolname = '{USER}'").strip()
    else:
        secret = PASSWORD
    write_pg_owned(env, os.path.join(d, "userlist.txt"), f'"{USER}" "{secret}"\n')
    port = free_port()
    env.ports["pgbouncer"] = port
    # Both poolers reach Postgres in plaintext (pgharbor's config says
    # server_tls disable; PgBouncer's default would be prefer).
    tls_lines = "server_tls_sslmode = disable"
    if args.tls:
        tls_lines += (f"\nclient_tls_sslmode = require\nclient_tls_cert_file = {env.tls_cert}"
                      f"\nclient_tls_key_file = {env.tls_key}")
    ini = f"""[databases]
{DBNAME} = host=127.0.0.1 port={env.pg_port} dbname={DBNAME}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = {AUTH[args.auth][0]}
auth_file = {d}/userlist.txt
pool_mode = transaction
default_pool_size = 20
max_client_conn = 11000
max_db_connections = 0
logfile = {d}/pgbouncer.log
{tls_lines}
pidfile =
log_connections = 0
log_disconnections = 0
admin_users = {USER}
"""
    write_pg_owned(env, os.path.join(d, "pgbouncer.ini"), ini)
    kw = pg_user_kwargs(env)
    e = kw.pop("env", None) or _base_env()
    out = open(os.path.join(d, "stdout.log"), "w")
    p = subprocess.Popen([exe, os.path.join(d, "pgbouncer.ini")], cwd=d, env=e, stdout=out,
                         stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=as_pooler(), **kw)
    PROCS.add("pgbouncer", p, signal.SIGTERM)
    env.pids["pgbouncer"] = p.pid
    wait_port(port, p, "pgbouncer")
    log(f"{env.pgbouncer_version} on 127.0.0.1:{port} (pid {p.pid})")


def start_pgharbor(env: Env, args, name: str = "pgharbor") -> None:
    """Starts pgharbor as target `name`: "pgharbor" (the build under test)
    or "base" (the binary given with --base-bin)."""
    binary = args.base_bin if name == "base" else env.pgharbor_bin
    port = free_port()
    env.ports[name] = port
    if args.secret == "verifier":
        secret = psql(env, f"SELECT rolpassword FROM pg_authid WHERE rolname = '{USER}'").strip()
    else:
        secret = PASSWORD
    client_tls = ""
    if args.tls:
        client_tls = f'\n[client_tls]\nmode = "require"\ncert_file = "{env.tls_cert}"\nkey_file = "{env.tls_key}"\n'
    cfg = f"""[proxy]
listen_addr = "127.0.0.1:{port}"
max_client_conn = 11000
admin_users = []
shutdown_timeout = "2s"

[server_tls]
mode = "disable"
{client_tls}
[pool]
pool_mode = "transaction"
pool_size = 20

[[databases]]
name = "{DBNAME}"
host = "127.0.0.1"
port = {env.pg_port}

[[users]]
name = "{USER}"
password = "{secret}"
auth_type = "{AUTH[args.auth][0]}"
"""
    path = os.path.join(env.tmp, f"{name}.toml")
    with open(path, "w") as f:
        f.write(cfg)
    out = open(os.path.join(env.tmp, f"{name}.log"), "w")
    e = {**_base_env(), "PGHARBOR_LOG": os.environ.get("PGHARBOR_LOG", "warn")}
    import shlex
    wrapper = shlex.split(args.pgharbor_wrapper) if args.pgharbor_wrapper else []
    p = subprocess.Popen(wrapper + [binary, "--config", path], cwd=env.tmp, env=e, stdout=out,
                         stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=as_pooler())
    PROCS.add(name, p, signal.SIGTERM)
    env.pids[name] = p.pid
    wait_port(port, p, name, timeout=120 if wrapper else 30)
    log(f"{LABEL[name]} ({binary}) on 127.0.0.1:{port} (pid {p.pid})")


def start_relay(env: Env) -> None:
    port = free_port()
    env.ports["relay"] = port
    out = open(os.path.join(env.tmp, "relay.log"), "w")
    p = subprocess.Popen([env.relay_bin, f"127.0.0.1:{port}", f"127.0.0.1:{env.pg_port}"], cwd=env.tmp,
                         env=_base_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                         preexec_fn=as_pooler())
    PROCS.add("relay", p, signal.SIGTERM)
    env.pids["relay"] = p.pid
    wait_port(port, p, "relay")
    log(f"relay on 127.0.0.1:{port} (pid {p.pid})")


# --------------------------------------------------------------------------
# one pgbench run
# --------------------------------------------------------------------------

@dataclass
class Run:
    workload: str
    clients: int
    target: str
    round: int
    exit_code: int = 0
    tps: float | None = None
    transactions: int | None = None
    failed_txns: int = 0
    lat_avg_ms: float | None = None
    lat_p99_ms: float | None = None
    cpu_us_per_txn: float | None = None
    machine_us_per_txn: float | None = None  # all CPUs' busy time per transaction
    machine_busy_pct: float | None = None  # of all CPUs, over the same window
    error: str = ""


def target_port(env: Env, target: str) -> int:
    return env.pg_port if target == "direct" else env.ports[target]


def warm_up(env: Env, args, targets: list[str]) -> None:
    """Uncounted load on every target before the first round: without it
    the first round ran about 30 % slower for every target (Postgres's
    caches, the poolers' server connections), which widened the spread of
    the medians."""
    saved = args.duration
    args.duration = args.warmup
    try:
        for t in targets:
            for w in ("select-simple", "tpcb-like"):
                r = run_pgbench(env, args, w, 16, t, -1)
                log(f"warm-up {w} {t}: tps {r.tps}")
    finally:
        args.duration = saved


def run_pgbench(env: Env, args, workload: str, clients: int, target: str, rnd: int) -> Run:
    r = Run(workload, clients, target, rnd)
    logdir = tempfile.mkdtemp(prefix="pgbench-log-", dir=env.tmp)
    jobs = 2 if clients >= args.jobs2_from and clients >= 2 else 1
    # pgbench's -T clock includes opening the connections; with hundreds of
    # SCRAM logins (and, direct or through the relay, hundreds of backend
    # forks) that can take longer than the run. Give it time to connect: its
    # tps excludes the initial connection time, and our CPU window starts
    # at the first completed transaction.
    connect_allowance = -(-clients // args.connect_rate) if clients > 64 else 0
    cmd = [os.path.join(env.pg_bin, "pgbench"), "-h", "127.0.0.1", "-p", str(target_port(env, target)),
           "-U", USER, "-c", str(clients), "-j", str(jobs), "-T", str(args.duration + connect_allowance),
           "--log", f"--log-prefix={logdir}/tx", "-P", "1"] + WORKLOADS[workload] + [DBNAME]
    pid = env.pids.get(target) if target in POOLERS else None
    e = {**_base_env(), "PGPASSWORD": PASSWORD}
    if args.tls:
        e["PGSSLMODE"] = "require"
    timeout = args.duration + 120 + clients * 0.2
    out = ""
    sampler = CpuSampler(pid)
    try:
        sampler.__enter__()
        p = subprocess.Popen(cmd, cwd=env.tmp, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True, preexec_fn=as_other())
        CURRENT_CHILD.append(p)
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate(timeout=10)
            r.error = f"pgbench timed out after {timeout:.0f} s"
        finally:
            CURRENT_CHILD.remove(p)
        r.exit_code = p.returncode
    finally:
        sampler.__exit__()
    m = re.search(r"^tps = ([\d.]+)", out, re.M)
    r.tps = float(m.group(1)) if m else None
    m = re.search(r"number of transactions actually processed: (\d+)", out)
    r.transactions = int(m.group(1)) if m else None
    m = re.search(r"number of failed transactions: (\d+)", out)
    r.failed_txns = int(m.group(1)) if m else 0
    m = re.search(r"latency average = ([\d.]+) ms", out)
    r.lat_avg_ms = float(m.group(1)) if m else None
    if r.exit_code == 0 and r.tps is None:
        r.exit_code = -1
        r.error = "pgbench printed no tps (no transaction completed?)"
    if r.exit_code != 0 and not r.error:
        errs = [l for l in out.splitlines() if "error" in l.lower() or "FATAL" in l or "abort" in l.lower()]
        r.error = (errs[0] if errs else out.strip().splitlines()[-1] if out.strip() else "no output")[:200]
    # per-transaction logs: latency percentiles, and the window for CPU accounting
    lats: list[int] = []
    ends: list[float] = []
    for fn in glob.glob(os.path.join(logdir, "tx*")):
        with open(fn) as f:
            for line in f:
                parts = line.split()
                if len(parts) < 6:
                    continue
                if not parts[2].isdigit():  # "failed" / "skipped"
                    continue
                lats.append(int(parts[2]))
                ends.append(int(parts[4]) + int(parts[5]) / 1e6)
    shutil.rmtree(logdir, ignore_errors=True)
    lats.sort()
    if lats:
        r.lat_p99_ms = percentile(lats, 99) / 1000.0
        if r.lat_avg_ms is None:
            r.lat_avg_ms = sum(lats) / len(lats) / 1000.0
    if ends and len(sampler.samples) >= 2:
        w = cpu_window(sampler.samples, sorted(ends))
        if w:
            (a, b), n = w
            if pid:
                r.cpu_us_per_txn = (b[1] - a[1]) / CLK_TCK * 1e6 / n
            busy, total = b[2] - a[2], b[3] - a[3]
            r.machine_us_per_txn = busy / CLK_TCK * 1e6 / n
            r.machine_busy_pct = 100.0 * busy / total if total else None
    if r.tps is not None:
        r.tps = round(r.tps, 1)
    if args.verbose:
        log(f"  {out.strip().splitlines()[-1] if out.strip() else ''}")
    return r


def cpu_window(samples: list[tuple], ends: list[float]) -> tuple[tuple[tuple, tuple], int] | None:
    """The first and last CPU samples inside the window in which transactions
    completed, and how many completed between them; CPU per transaction is
    the difference of the two samples divided by that count.

    Connection set-up before the first transaction (e.g. 500 SCRAM logins) and
    teardown after the last are left out; with -C every transaction includes its
    own connection, so there the figure is CPU per connection + transaction.
    """
    import bisect
    t0, t1 = ends[0], ends[-1]
    inside = [s for s in samples if t0 <= s[0] <= t1]
    if len(inside) < 2:
        return None
    a, b = inside[0], inside[-1]
    n = bisect.bisect_right(ends, b[0]) - bisect.bisect_left(ends, a[0])
    if n <= 0 or b[0] - a[0] < 0.5:
        return None
    return (a, b), n


# --------------------------------------------------------------------------
# idle memory
# --------------------------------------------------------------------------

def fresh_pooler(env: Env, args, target: str) -> None:
    """Restarts `target` and warms it up briefly (16 clients, 2 s), so the
    idle-memory baseline is a process of the same age for every count and
    both poolers: after the pgbench matrix a pooler's heap holds memory the
    500-client cells freed, which idle clients would then reuse unseen."""
    PROCS.stop(target)
    (start_pgbouncer if target == "pgbouncer" else start_pgharbor)(env, args)
    cmd = [os.path.join(env.pg_bin, "pgbench"), "-h", "127.0.0.1", "-p", str(env.ports[target]),
           "-U", USER, "-n", "-S", "-c", "16", "-j", "2", "-T", "2", DBNAME]
    subprocess.run(cmd, cwd=env.tmp, env={**_base_env(), "PGPASSWORD": PASSWORD},
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)


def idle_memory(env: Env, args, target: str, n: int) -> dict:
    fresh_pooler(env, args, target)
    pid = env.pids[target]
    port = env.ports[target]
    time.sleep(1.0)
    before = rss_kib(pid)
    # Each client runs one query first: an application's pooled connection
    # sits idle after use, and that is when the pooler must hold no buffers.
    cmd = [env.idle_bin, "127.0.0.1", str(port), USER, PASSWORD, DBNAME, str(n), str(args.idle_concurrency), "900",
           "select 1"]
    e = {**_base_env(), **({"IDLE_CLIENTS_TLS": "1"} if args.tls else {})}
    p = subprocess.Popen(cmd, cwd=env.tmp, env=e, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=as_other())
    CURRENT_CHILD.append(p)
    res = {"target": target, "clients": n, "rss_before_kib": before}
    try:
        line = ""
        # bounded wait for the READY line
        deadline = time.monotonic() + args.idle_timeout
        result: list[str] = []
        t = threading.Thread(target=lambda: result.append(p.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout=max(1.0, deadline - time.monotonic()))
        line = result[0] if result else ""
        m = re.match(r"READY ok=(\d+) failed=(\d+)", line)
        if not m:
            res["error"] = f"idle clients not ready within {args.idle_timeout} s"
            return res
        ok, failed = int(m.group(1)), int(m.group(2))
        time.sleep(2.0)  # let the pooler settle
        after = rss_kib(pid)
        res.update(ok=ok, failed=failed, rss_after_kib=after,
                   kib_per_client=round((after - before) / ok, 2) if ok else None)
        return res
    finally:
        try:
            p.stdin.close()
        except OSError:
            pass
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)
        err = p.stderr.read() if p.stderr else ""
        if err.strip() and "error" in err.lower():
            res.setdefault("stderr", err.strip()[-300:])
        CURRENT_CHILD.remove(p)
        time.sleep(2.0)  # let the pooler notice the disconnects


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------

def fmt(x, nd=0, dash="—"):
    if x is None:
        return dash
    return f"{x:,.{nd}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def paired_ratios(runs: list[Run], w: str, c: int, a: str, b: str, key: str) -> list[float]:
    """(a / b) within each round where both ran.

    Rounds of different targets run next to each other, so a ratio taken inside
    a round cancels most of the machine's drift (other jobs, thermal) that a
    ratio of medians keeps.
    """
    by = {}
    for r in runs:
        if r.workload == w and r.clients == c and r.exit_code == 0 and r.tps is not None:
            by[(r.target, r.round)] = getattr(r, key)
    rs = [ratio(by.get((a, n)), by.get((b, n))) for n in sorted({n for (_, n) in by})]
    return [x for x in rs if x is not None]


def paired_ratio(runs: list[Run], w: str, c: int, a: str, b: str, key: str):
    """Median over rounds of (a / b) within the same round."""
    return median(paired_ratios(runs, w, c, a, b, key))


def ratio_range(runs: list[Run], w: str, c: int, a: str, b: str, key: str) -> str:
    """The lowest and highest per-round ratio: how far one round's verdict can
    be from another's, next to the median the verdict is taken from."""
    rs = paired_ratios(runs, w, c, a, b, key)
    if len(rs) < 2:
        return "—"
    return f"{min(rs):.2f}–{max(rs):.2f}"


def summarize(runs: list[Run], cells: list[tuple[str, int]], targets: list[str]) -> dict:
    summary = {}
    for (w, c) in cells:
        for t in targets:
            rs = [r for r in runs if r.workload == w and r.clients == c and r.target == t]
            if not rs:
                continue
            ok = [r for r in rs if r.exit_code == 0 and r.tps is not None]
            summary[(w, c, t)] = {
                "rounds": len(rs),
                "failed_runs": len(rs) - len(ok),
                "failed_txns": sum(r.failed_txns for r in rs),
                "errors": sorted({r.error for r in rs if r.error}),
                "tps": median([r.tps for r in ok]),
                "lat_avg_ms": median([r.lat_avg_ms for r in ok]),
                "lat_p99_ms": median([r.lat_p99_ms for r in ok]),
                "cpu_us": median([r.cpu_us_per_txn for r in ok]),
                "machine_us": median([r.machine_us_per_txn for r in ok]),
                "machine_busy_pct": median([r.machine_busy_pct for r in ok]),
            }
    return summary


def headline(S, pr, rr, cells, targets, idle, auth: str = "scram") -> list[str]:
    """The issue's targets, checked against this run's medians, with the
    range of the per-round ratios beside each ratio."""
    if not {"pgharbor", "pgbouncer"} <= set(targets):
        return []
    g = lambda w, c, t, k: (S.get((w, c, t)) or {}).get(k)
    rows = []

    def check(what, value, goal, ok, nd=2, spread="—"):
        v = fmt(value, nd) if isinstance(value, (int, float)) or value is None else value
        verdict = "—" if ok is None else ("met" if ok else "**not met**")
        rows.append(f"| {what} | {v} | {spread} | {goal} | {verdict} |")

    def cmp(a, b, le):
        if a is None or b is None:
            return None
        return a <= b if le else a >= b

    for (w, c) in cells:
        if (w in ("select-simple", "select-extended", "tpcb-like") and c in (16, 500)
                or (w, c) in (("tpcb-like", 256), ("churn", 16))):
            r = pr(w, c, "pgharbor", "pgbouncer", "tps")
            # with -C every transaction is a new connection: TPS is connections per second
            what = "connections/s" if w == "churn" else "TPS"
            check(f"{w} {c}: {what} pgharbor / PgBouncer", r, "≥ 1.0", cmp(r, 1.0, False),
                  spread=rr(w, c, "pgharbor", "pgbouncer", "tps"))
            if "direct" in targets and (w, c) in (("select-simple", 16), ("select-extended", 16)):
                r = pr(w, c, "pgharbor", "direct", "tps")
                check(f"{w} {c}: TPS pgharbor / direct", r, "≥ 0.90", cmp(r, 0.90, False),
                      spread=rr(w, c, "pgharbor", "direct", "tps"))
            if "direct" in targets and w == "tpcb-like" and c >= 256:
                r = pr(w, c, "pgharbor", "direct", "tps")
                check(f"{w} {c}: TPS pgharbor / direct", r, "≥ 1.0", cmp(r, 1.0, False),
                      spread=rr(w, c, "pgharbor", "direct", "tps"))
            r = pr(w, c, "pgharbor", "pgbouncer", "cpu_us_per_txn")
            # The churn target for CPU is SCRAM's (keys derived once
            # per user); with trust it sets one for connections per second only.
            goal = None if w == "churn" and auth == "trust" else 0.2 if w == "churn" else 1.0
            check(f"{w} {c}: CPU/txn pgharbor / PgBouncer "
                  f"({fmt(g(w, c, 'pgharbor', 'cpu_us'), 1)} vs {fmt(g(w, c, 'pgbouncer', 'cpu_us'), 1)} µs)",
                  r, "—" if goal is None else f"≤ {goal}", None if goal is None else cmp(r, goal, True),
                  spread=rr(w, c, "pgharbor", "pgbouncer", "cpu_us_per_txn"))
            if "relay" in targets and w != "churn" and c == 16:
                r = pr(w, c, "pgharbor", "relay", "cpu_us_per_txn")
                check(f"{w} {c}: CPU/txn pgharbor / relay", r, "≤ 1.25", cmp(r, 1.25, True),
                      spread=rr(w, c, "pgharbor", "relay", "cpu_us_per_txn"))
    if "direct" in targets:
        for (w, c) in cells:
            if c == 1 and w == "select-simple":
                d = g(w, c, "direct", "lat_avg_ms")
                a, b = g(w, c, "pgharbor", "lat_avg_ms"), g(w, c, "pgbouncer", "lat_avg_ms")
                if None not in (a, b, d):
                    check(f"{w} 1: added latency pgharbor vs PgBouncer",
                          f"{(a - d) * 1000:+.0f} vs {(b - d) * 1000:+.0f} µs", "≤ PgBouncer's", a <= b)
    wins = [(w, c) for (w, c) in cells if g(w, c, "pgharbor", "tps") is not None
            and not g(w, c, "pgharbor", "failed_runs")
            and (g(w, c, "pgbouncer", "tps") is None or (pr(w, c, "pgharbor", "pgbouncer", "tps") or 0) >= 1.0)]
    check("cells where pgharbor never failed and its TPS ≥ PgBouncer's (or PgBouncer fails)", f"{len(wins)} of {len(cells)}",
          "all", len(wins) == len(cells))
    for i in idle:
        if i["target"] == "pgharbor":
            k = i.get("kib_per_client")
            check(f"idle memory at {i['clients']:,} clients, KiB/client", k, "≤ 2", cmp(k, 2.0, True))
    return ["## Targets from the performance issue (medians of this run)", "",
            "Ratios are medians over rounds of the ratio within each round; *rounds* is the "
            "lowest and highest of those per-round ratios.", "",
            "| check | value | rounds | target | |", "|---|---|---|---|---|"] + rows + [""]


def tps_cell(s) -> str:
    if s is None:
        return "—"
    if s["tps"] is None:
        return "**FAIL**"
    if s["failed_runs"]:
        return f"**FAIL {s['failed_runs']}/{s['rounds']}**, {fmt(s['tps'])}"
    return fmt(s["tps"])


def render(env: Env, args, runs: list[Run], cells, targets, idle: list[dict], started: str, elapsed: float) -> str:
    S = summarize(runs, cells, targets)
    g = lambda w, c, t, k: (S.get((w, c, t)) or {}).get(k)
    pr = lambda w, c, a, b, k: paired_ratio(runs, w, c, a, b, k)
    rr = lambda w, c, a, b, k: ratio_range(runs, w, c, a, b, k)
    L = []
    L.append(f"# pgharbor benchmark — {started}")
    L.append("")
    L.append(f"Command: `{' '.join(['bench/run.sh'] + sys.argv[1:])}`  ")
    L.append(f"Machine: {os.cpu_count()} CPUs, {platform.machine()}, Linux {platform.release()}; "
             f"PostgreSQL {env.pg_version}; {env.pgbouncer_version}; pgbench scale {args.scale}; "
             f"{args.duration} s per run, {args.rounds} interleaved round(s) after "
             f"{f'a {args.warmup} s warm-up per target' if args.warmup else 'no warm-up'}, medians shown; "
             f"pool size 20, transaction mode, {AUTH[args.auth][1]} "
             f"({args.secret} secret in the poolers); "
             f"{'clients connect with TLS (sslmode=require; poolers to Postgres in plaintext); ' if args.tls else ''}"
             f"{f'poolers and relay pinned to CPU {args.pin_poolers}, Postgres and pgbench to the others; ' if args.pin_poolers else ''}"
             f"took {elapsed / 60:.1f} min.")
    L.append("")
    L += headline(S, pr, rr, cells, targets, idle, args.auth)
    L.append("## Throughput (TPS) and pooler CPU per transaction")
    L.append("")
    L.append("TPS and CPU µs/txn: medians over rounds. Ratios: median over rounds of the ratio "
             "within each round. `FAIL k/n, X`: k of n rounds failed (see Failures), X is the median "
             "of the others.")
    L.append("")
    hdr = ["workload", "clients"] + [LABEL[t] + " TPS" for t in targets]
    if "pgharbor" in targets and "pgbouncer" in targets:
        hdr.append("pgharbor / PgBouncer")
    if "pgharbor" in targets and "direct" in targets:
        hdr.append("pgharbor / direct")
    if "pgbouncer" in targets and "direct" in targets:
        hdr.append("PgBouncer / direct")
    cpu_targets = [t for t in targets if t in POOLERS]
    hdr += [f"CPU µs/txn {LABEL[t]}" for t in cpu_targets]
    if "pgharbor" in targets and "pgbouncer" in targets:
        hdr.append("CPU pgharbor / PgBouncer")
    if "pgharbor" in targets and "relay" in targets:
        hdr.append("CPU pgharbor / relay")
    L.append("| " + " | ".join(hdr) + " |")
    L.append("|" + "---|" * len(hdr))
    for (w, c) in cells:
        row = [w, str(c)]
        row += [tps_cell(S.get((w, c, t))) for t in targets]
        if "pgharbor" in targets and "pgbouncer" in targets:
            row.append(fmt(pr(w, c, "pgharbor", "pgbouncer", "tps"), 2))
        if "pgharbor" in targets and "direct" in targets:
            row.append(fmt(pr(w, c, "pgharbor", "direct", "tps"), 2))
        if "pgbouncer" in targets and "direct" in targets:
            row.append(fmt(pr(w, c, "pgbouncer", "direct", "tps"), 2))
        row += [fmt(g(w, c, t, "cpu_us"), 1) for t in cpu_targets]
        if "pgharbor" in targets and "pgbouncer" in targets:
            row.append(fmt(pr(w, c, "pgharbor", "pgbouncer", "cpu_us_per_txn"), 2))
        if "pgharbor" in targets and "relay" in targets:
            row.append(fmt(pr(w, c, "pgharbor", "relay", "cpu_us_per_txn"), 2))
        L.append("| " + " | ".join(row) + " |")
    L.append("")
    if "pgharbor" in targets and "base" in targets:
        L.append("## This build against the base build")
        L.append("")
        L.append(f"Base: `{args.base_bin}`. Ratios: median over rounds of the ratio within each round.")
        L.append("")
        L.append("| workload | clients | TPS pgharbor / base | CPU µs/txn pgharbor vs base | CPU pgharbor / base |")
        L.append("|---|---|---|---|---|")
        for (w, c) in cells:
            L.append(f"| {w} | {c} | {fmt(pr(w, c, 'pgharbor', 'base', 'tps'), 2)} | "
                     f"{fmt(g(w, c, 'pgharbor', 'cpu_us'), 1)} vs {fmt(g(w, c, 'base', 'cpu_us'), 1)} | "
                     f"{fmt(pr(w, c, 'pgharbor', 'base', 'cpu_us_per_txn'), 2)} |")
        L.append("")
    if any(r.machine_us_per_txn is not None for r in runs):  # not in reports before it was measured
        L.append("## Machine CPU")
        L.append("")
        L.append("All CPUs' busy time (from /proc/stat: pgbench, Postgres, the pooler and anything else) per "
                 "transaction, and how busy the CPUs were, over the window in which transactions completed; "
                 "medians over rounds. A target that leaves CPU idle is bound by latency, not CPU.")
        L.append("")
        hdr = ["workload", "clients"] + [f"{LABEL[t]} µs/txn" for t in targets] + [f"{LABEL[t]} busy" for t in targets]
        L.append("| " + " | ".join(hdr) + " |")
        L.append("|" + "---|" * len(hdr))
        for (w, c) in cells:
            row = [w, str(c)] + [fmt(g(w, c, t, "machine_us"), 1) for t in targets]
            row += ["—" if g(w, c, t, "machine_busy_pct") is None else f"{g(w, c, t, 'machine_busy_pct'):.0f} %"
                    for t in targets]
            L.append("| " + " | ".join(row) + " |")
        L.append("")
    L.append("## Latency (ms): average / p99")
    L.append("")
    hdr = ["workload", "clients"] + [LABEL[t] for t in targets]
    if "direct" in targets:
        hdr += [f"{LABEL[t]} added avg" for t in targets if t != "direct"]
    L.append("| " + " | ".join(hdr) + " |")
    L.append("|" + "---|" * len(hdr))
    for (w, c) in cells:
        row = [w, str(c)]
        for t in targets:
            a, p = g(w, c, t, "lat_avg_ms"), g(w, c, t, "lat_p99_ms")
            row.append("—" if a is None else f"{a:.3f} / {fmt(p, 3)}")
        if "direct" in targets:
            d = g(w, c, "direct", "lat_avg_ms")
            for t in targets:
                if t == "direct":
                    continue
                a = g(w, c, t, "lat_avg_ms")
                row.append("—" if a is None or d is None else f"{(a - d) * 1000:+.0f} µs")
        L.append("| " + " | ".join(row) + " |")
    L.append("")
    L.append("## Failures")
    L.append("")
    fails = []
    for (w, c) in cells:
        for t in targets:
            s = S.get((w, c, t))
            if s and (s["failed_runs"] or s["failed_txns"]):
                fails.append(f"- {w}, {c} clients, {LABEL[t]}: {s['failed_runs']} of {s['rounds']} runs exited "
                             f"non-zero, {s['failed_txns']} failed transactions"
                             + (f"; {'; '.join(s['errors'])[:300]}" if s["errors"] else ""))
    L += fails or ["- none"]
    L.append("")
    L.append("## Idle memory (RSS per idle client, after login and one query)")
    L.append("")
    if not idle:
        L.append("- not measured (--idle '')")
    for i in idle:
        if i.get("error") or i.get("kib_per_client") is None:
            L.append(f"- {LABEL[i['target']]}, {i['clients']:,} clients: **FAIL** {i.get('error', '')} {i.get('stderr', '')}".rstrip())
        else:
            extra = f" ({i['failed']} connections failed)" if i.get("failed") else ""
            L.append(f"- {LABEL[i['target']]}, {i['clients']:,} clients: {i['kib_per_client']:.2f} KiB/client "
                     f"(RSS {i['rss_before_kib']:,} → {i['rss_after_kib']:,} KiB){extra}")
    L.append("")
    return "\n".join(L)


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke test: 3 s runs, 1 round, a few cells, 1,000 idle clients")
    ap.add_argument("--duration", type=int, help="seconds per pgbench run (default 10; quick 3)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 3; quick 1)")
    ap.add_argument("--warmup", type=int, help="seconds of uncounted select-only and tpcb-like load on each "
                    "target before the first round (default 5; quick 0)")
    ap.add_argument("--scale", type=int, default=10, help="pgbench scale factor (default 10)")
    ap.add_argument("--clients", help="comma-separated client counts (default 1,16,64,500, and 256 for tpcb-like)")
    ap.add_argument("--workloads", help="comma-separated workloads: " + ",".join(WORKLOADS))
    ap.add_argument("--churn-clients", type=int, default=16, help="clients for the -C churn cell (default 16)")
    ap.add_argument("--targets", default=",".join(t for t in TARGETS if t != "base"),
                    help="comma-separated subset of " + ",".join(TARGETS) + " (base: with --base-bin, which adds it)")
    ap.add_argument("--idle", help="comma-separated idle client counts (default 1000,10000; quick 1000; '' to skip)")
    ap.add_argument("--idle-concurrency", type=int, default=32, help="handshakes in flight when opening idle clients")
    ap.add_argument("--idle-timeout", type=int, default=600, help="seconds allowed to open the idle clients")
    ap.add_argument("--auth", choices=list(AUTH), default="scram",
                    help="how clients authenticate to Postgres (direct and through the relay) and to both "
                         "poolers, and the poolers to Postgres: scram (default) or trust")
    ap.add_argument("--secret", choices=["plain", "verifier"], default="plain",
                    help="what the poolers are given: the plaintext password (default) or the SCRAM verifier from pg_authid")
    ap.add_argument("--jobs2-from", type=int, default=64, help="use pgbench -j 2 from this many clients (default 64)")
    ap.add_argument("--max-connections", type=int, default=600)
    ap.add_argument("--connect-rate", type=int, default=40,
                    help="above 64 clients, add clients/RATE seconds to -T for the initial connections (default 40)")
    ap.add_argument("--tls", action="store_true",
                    help="clients connect with TLS (sslmode=require) to every target: Postgres (direct and "
                         "through the relay), PgBouncer and pgharbor share one self-signed certificate; the "
                         "poolers reach Postgres in plaintext; idle clients hold TLS connections too")
    ap.add_argument("--base-bin", metavar="BIN",
                    help="a second pgharbor binary (say, an earlier commit's release build) run as target "
                         "'base' beside the build under test, interleaved, with a table of their ratios")
    ap.add_argument("--bin", metavar="BIN",
                    help="the pgharbor binary to run as target 'pgharbor' (say, bench/pgo.sh's) instead of "
                         "the release build; the helper examples still come from the release build")
    ap.add_argument("--pin-poolers", metavar="CPUS",
                    help="comma-separated CPU numbers for the poolers and the relay; Postgres, pgbench and "
                         "the idle clients get the others (to measure a proxy on cores of its own)")
    ap.add_argument("--no-build", action="store_true", help="reuse the last release build")
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "results", "latest.md"))
    ap.add_argument("--keep-tmp", action="store_true")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--pgharbor-wrapper", metavar="CMD",
                    help="prefix for the pgharbor command, for profiling, e.g. "
                         "'valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out' (its figures are then not comparable)")
    ap.add_argument("--render-only", metavar="JSON", help="re-render the report of an earlier run's .json (to --out)")
    a = ap.parse_args()
    a.duration = a.duration or (3 if a.quick else 10)
    a.rounds = a.rounds or (1 if a.quick else 3)
    if a.warmup is None:
        a.warmup = 0 if a.quick else 5
    if a.idle is None:
        a.idle = "1000" if a.quick else "1000,10000"
    return a


def make_cells(a) -> list[tuple[str, int]]:
    if a.quick and not a.clients and not a.workloads:
        return [("select-simple", 1), ("select-simple", 16), ("select-extended", 16), ("select-prepared", 16),
                ("tpcb-like", 16), ("tpcb-like", 64), ("churn", a.churn_clients)]
    clients = [int(x) for x in (a.clients or "1,16,64,500").split(",") if x]
    wls = [w for w in (a.workloads or ",".join(WORKLOADS)).split(",") if w]
    for w in wls:
        if w not in WORKLOADS:
            raise BenchError(f"unknown workload {w!r}; choose from {', '.join(WORKLOADS)}")
    cells = []
    for w in wls:
        if w == "churn":
            cells.append((w, a.churn_clients))
        else:
            cells += [(w, c) for c in clients]
        if w == "tpcb-like" and not a.clients:
            # The target for a pool of 20 against hundreds of
            # backends names 256 clients as well as 500.
            cells.insert(cells.index((w, 500)), (w, 256))
    return cells


def render_only(args) -> int:
    with open(args.render_only) as f:
        d = json.load(f)
    a = argparse.Namespace(**{"connect_rate": 40, "pgharbor_wrapper": None, "warmup": 0, "tls": False,
                               "base_bin": None, "auth": "scram", "pin_poolers": None, **d["args"]})
    runs = [Run(**r) for r in d["runs"]]
    targets = d.get("targets") or a.targets.split(",")
    cells = [tuple(c) for c in d.get("cells") or []]
    if not cells:
        seen = []
        for r in runs:
            if (r.workload, r.clients) not in seen:
                seen.append((r.workload, r.clients))
        cells = seen
    env = Env(tmp="", pg_bin="", as_postgres=False, pg_version=d.get("pg_version", "?"),
              pgbouncer_version=d.get("pgbouncer_version", "?"))
    sys.argv = [sys.argv[0]] + d.get("argv", ["(see json)"])
    report = render(env, a, runs, cells, targets, d.get("idle", []), d.get("started", "?"), d.get("elapsed_s", 0))
    with open(args.out, "w") as f:
        f.write(report)
    print(report)
    return 0


def main() -> int:
    args = parse_args()
    if args.render_only:
        return render_only(args)
    targets = [t for t in args.targets.split(",") if t]
    if args.base_bin and "base" not in targets:
        targets.append("base")
    if "base" in targets and not args.base_bin:
        raise BenchError("target base needs --base-bin")
    for t in targets:
        if t not in TARGETS:
            raise BenchError(f"unknown target {t!r}")
    cells = make_cells(args)
    if args.pin_poolers:
        allowed = os.sched_getaffinity(0)
        POOLER_CPUS.update(int(x) for x in args.pin_poolers.split(",") if x)
        OTHER_CPUS.update(allowed - POOLER_CPUS)
        if not POOLER_CPUS <= allowed or not OTHER_CPUS:
            raise BenchError(f"--pin-poolers {args.pin_poolers}: need a subset of CPUs {sorted(allowed)} "
                             "that leaves at least one CPU for Postgres and pgbench")
    if max(c for _, c in cells) + 45 > args.max_connections:
        raise BenchError(f"max_connections {args.max_connections} too small for {max(c for _, c in cells)} direct clients")
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    raise_nofile()
    t_start = time.monotonic()
    started = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    as_pg = os.geteuid() == 0
    tmp = tempfile.mkdtemp(prefix="pgharbor-bench-")
    os.chmod(tmp, 0o755)
    if as_pg:
        pw = pwd.getpwnam("postgres")
        os.chown(tmp, pw.pw_uid, pw.pw_gid)  # Postgres and PgBouncer write here as postgres
    env = Env(tmp=tmp, pg_bin=find_pg_bin(), as_postgres=as_pg)
    runs: list[Run] = []
    idle: list[dict] = []
    try:
        if args.no_build:
            tdir = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
            env.pgharbor_bin = os.path.join(tdir, "release", "pgharbor")
            env.relay_bin = os.path.join(tdir, "release", "examples", "relay")
            env.idle_bin = os.path.join(tdir, "release", "examples", "idle_clients")
            wanted = ([env.pgharbor_bin] + ([env.relay_bin] if "relay" in targets else [])
                      + ([env.idle_bin] if args.idle else []))
            missing = [b for b in wanted if not os.path.exists(b)]
            if missing:
                raise BenchError(f"--no-build, but {', '.join(missing)} not built: run "
                                 "`cargo build --release --bin pgharbor --examples` first, "
                                 "or pass --idle '' to skip the idle-memory test")
        else:
            env.pgharbor_bin, env.relay_bin, env.idle_bin = build(args)
        if args.bin:
            env.pgharbor_bin = os.path.abspath(args.bin)
        start_postgres(env, args)
        if "relay" in targets:
            start_relay(env)
        if "pgbouncer" in targets or "pgbouncer" in args.idle:
            start_pgbouncer(env, args)
        if "pgharbor" in targets:
            start_pgharbor(env, args)
        if "base" in targets:
            start_pgharbor(env, args, "base")
        total = args.rounds * len(cells) * len(targets)
        n = 0
        log(f"{len(cells)} cells × {len(targets)} targets × {args.rounds} rounds × {args.duration} s "
            f"≈ {total * (args.duration + 2) / 60:.0f} min")
        if args.warmup > 0:
            warm_up(env, args, targets)
        for rnd in range(args.rounds):
            for (w, c) in cells:
                # rotate the target order each round so no target always runs first
                order = targets[rnd % len(targets):] + targets[:rnd % len(targets)]
                for t in order:
                    n += 1
                    r = run_pgbench(env, args, w, c, t, rnd)
                    runs.append(r)
                    cpu = f", {r.cpu_us_per_txn:.1f} µs CPU/txn" if r.cpu_us_per_txn else ""
                    st = f"tps {r.tps}" if r.exit_code == 0 else f"FAILED (exit {r.exit_code}: {r.error})"
                    log(f"[{n}/{total}] round {rnd + 1} {w} c={c} {t}: {st}{cpu}")
                    for name in ("postgres",) + tuple(x for x in targets if x in POOLERS):
                        p = next((p for (nm, p, _) in PROCS.items if nm == name), None)
                        if p is not None and p.poll() is not None:
                            raise BenchError(f"{name} died (exit {p.returncode}); see {tmp}")
                    time.sleep(0.5)
        for count in [int(x) for x in args.idle.split(",") if x]:
            for t in ("pgbouncer", "pgharbor"):
                if t not in env.pids:
                    continue
                log(f"idle memory: {count} clients on {t}")
                i = idle_memory(env, args, t, count)
                log(f"  {i}")
                idle.append(i)
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); tearing down")
        return 130
    except BenchError as e:
        log(f"error: {e}")
        return 1
    finally:
        for p in list(CURRENT_CHILD):
            try:
                p.kill()
                p.wait(timeout=5)
            except Exception:
                pass
        _SIGNALLED.append(0)  # further signals must not interrupt the teardown
        PROCS.stop_all()
        if runs or idle:
            elapsed = time.monotonic() - t_start
            report = render(env, args, runs, cells, targets, idle, started, elapsed)
            os.makedirs(os.path.dirname(args.out), exist_ok=True)
            with open(args.out, "w") as f:
                f.write(report)
            with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
                json.dump({"args": vars(args), "argv": sys.argv[1:], "started": started, "elapsed_s": elapsed,
                           "cells": cells, "targets": targets,
                           "runs": [asdict(r) for r in runs], "idle": idle,
                           "pg_version": env.pg_version, "pgbouncer_version": env.pgbouncer_version}, f, indent=1)
            print(report)
            log(f"report written to {args.out}")
        if args.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        log(f"error: {e}")
        sys.exit(1)

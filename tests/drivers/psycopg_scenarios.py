"""psycopg 3 scenarios for tests/drivers.rs.

Usage: python psycopg_scenarios.py SCENARIO. The connection comes from the
PG* environment variables; PSYCOPG_IMPL=python makes psycopg use the system's
libpq (before 17 it evicts a statement with SQL `DEALLOCATE _pg3_N`, the
binary package's libpq 17 with a protocol Close). Prints a JSON transcript;
the Rust test compares it with the direct run's.
"""

import collections
import faulthandler
import sys
import threading

import psycopg

from transcript import dump

CLIENTS = 20
ITERATIONS = 30
QUERIES = [
    "SELECT v FROM drv_items WHERE id = %s",
    "SELECT v + 0 FROM drv_items WHERE id = %s",
    "SELECT sum(v) FROM drv_items WHERE id <= %s",
]
# What some clients run between their prepared queries. psycopg sends
# DEALLOCATE ALL after a ROLLBACK or DROP while it holds prepared statements;
# DISCARD ALL and DEALLOCATE ALL drop this client's own statements, so on
# Postgres its next prepared query fails once with 26000 and psycopg
# re-prepares: the same must happen through pgharbor, and no one else may be
# touched.
ROLES = {
    "reader": [],
    "rollback": ["BEGIN", QUERIES[0], "ROLLBACK"],
    "alter": ["ALTER TABLE drv_items ALTER COLUMN note SET DEFAULT 'n'"],
    "drop": ["DROP TABLE IF EXISTS drv_nothing"],
    "discard all": ["DISCARD ALL"],
    "deallocate all": ["DEALLOCATE ALL"],
}
ROLE_OF_CLIENT = ["reader"] * 10 + [r for r in ROLES if r != "reader"] * 2


def error_key(exc):
    state = getattr(exc, "sqlstate", None) or type(exc).__name__
    return f"{state} {type(exc).__name__}: {exc}"


def setup_items():
    with psycopg.connect(autocommit=True) as con:
        con.execute(
            "DROP TABLE IF EXISTS drv_items;"
            "CREATE TABLE drv_items (id int PRIMARY KEY, v int, note text);"
            "INSERT INTO drv_items SELECT g, g * 10 FROM generate_series(1, 100) g"
        )


def client_run(role, prepare_threshold):
    """One client's loop; returns its outcome (sum, errors by kind)."""
    errors = collections.Counter()
    total = 0
    with psycopg.connect(autocommit=True, prepare_threshold=prepare_threshold) as con:
        for i in range(ITERATIONS):
            for sql in [QUERIES[i % len(QUERIES)]] + ROLES[role]:
                try:
                    cur = con.execute(sql, (i + 1,) if "%s" in sql else None)
                    if cur.description is not None:
                        total += sum(row[0] for row in cur.fetchall())
                except psycopg.Error as exc:
                    errors[error_key(exc)] += 1
    return {"role": role, "sum": total, "errors": dict(sorted(errors.items()))}


def concurrent_prepared_with_resets(prepare_threshold):
    """CLIENTS clients at once: readers run prepared queries while others
    ROLLBACK, ALTER, DROP, DISCARD ALL and DEALLOCATE ALL between theirs."""
    setup_items()
    outcomes = [None] * CLIENTS
    barrier = threading.Barrier(CLIENTS)

    def run(n):
        barrier.wait(timeout=60)
        outcomes[n] = client_run(ROLE_OF_CLIENT[n], prepare_threshold)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return {"clients": outcomes}


def prepared_max_eviction():
    """prepare_threshold 0 and prepared_max 5: 50 distinct queries, twice
    over, on 4 connections at once, so every query evicts an older one."""
    outcomes = [None] * 4

    def run(n):
        errors = collections.Counter()
        results = []
        with psycopg.connect(autocommit=True, prepare_threshold=0) as con:
            con.prepared_max = 5
            for rnd in range(2):
                for k in range(50):
                    try:
                        cur = con.execute(f"SELECT %s::int + {k}", (n * 1000 + rnd,))
                        results.append(cur.fetchone()[0])
                    except psycopg.Error as exc:
                        errors[error_key(exc)] += 1
        outcomes[n] = {"sum": sum(results), "rows": len(results), "errors": dict(errors)}

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(outcomes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return {"connections": outcomes}


def notify_each_other():
    """Two connections listen on one channel and notify it by the extended
    protocol, taking turns: `NOTIFY chan, 'lit'` and
    `SELECT pg_notify(%s, %s)` with a payload of their own. Each tells, per
    notification it hears, whose backend pid it carries."""
    channel = "drv_psy_notify"
    rounds = 5
    cons = [psycopg.connect(autocommit=True) for _ in range(2)]
    try:
        for con in cons:
            con.execute(f"LISTEN {channel}")
        for n in range(rounds):
            for me, con in enumerate(cons):
                con.execute(f"NOTIFY {channel}, 'lit'")
                con.execute("SELECT pg_notify(%s, %s)", (channel, f"{me}-{n}"))
        heard = []
        for me, con in enumerate(cons):
            pids = {con.info.backend_pid: "mine", cons[1 - me].info.backend_pid: "the peer's"}
            seen = [
                [pids.get(note.pid, "neither's"), note.payload]
                for note in con.notifies(timeout=10, stop_after=4 * rounds)
            ]
            heard.append(sorted(seen))
        return {"heard": heard}
    finally:
        for con in cons:
            con.close()


SCENARIOS = {
    "notify_each_other": notify_each_other,
    "concurrent_prepared_with_resets": lambda: concurrent_prepared_with_resets(0),
    "concurrent_auto_prepared_with_resets": lambda: concurrent_prepared_with_resets(5),
    "prepared_max_eviction": prepared_max_eviction,
}


def main():
    # A hung driver ends the run (with its threads' stacks on stderr)
    # before the Rust test's own limit.
    faulthandler.dump_traceback_later(100, exit=True)
    transcript = SCENARIOS[sys.argv[1]]()
    transcript["driver"] = (
        f"psycopg {psycopg.__version__} ({psycopg.pq.__impl__} implementation,"
        f" libpq {psycopg.pq.version() // 10000})"
    )
    dump(transcript)


if __name__ == "__main__":
    main()

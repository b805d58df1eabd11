"""asyncpg scenarios for tests/drivers.rs.

Usage: python asyncpg_scenarios.py SCENARIO. The connection comes from the
PG* environment variables. Prints a JSON transcript of what the driver
observed; the Rust test runs the same scenario against Postgres directly and
through pgharbor and compares the transcripts. Only what does not depend on
timing goes in: counts, sums, sorted payloads, SQLSTATEs and messages, and
pids reduced to "equals the connection's own backend pid".
"""

import asyncio
import collections
import faulthandler
import hashlib
import io
import sys

import asyncpg

from transcript import dump

CYCLES = 1000
WORKERS = 20
POOL_SIZE = 10
CHANNEL = "drivers_chan"
WAIT_SECONDS = 20


def error_key(exc):
    """Names an error by SQLSTATE (or class for client-side ones) and message."""
    state = getattr(exc, "sqlstate", None) or type(exc).__name__
    return f"{state} {type(exc).__name__}: {exc}"


async def run_cycles(pool, on_cycle=None):
    """CYCLES acquire/execute/release cycles from WORKERS tasks; returns the
    sum of the results and the errors by kind. Release runs asyncpg's reset
    query (advisory unlock, CLOSE ALL, UNLISTEN *, RESET ALL)."""
    errors = collections.Counter()
    total = 0
    next_cycle = iter(range(CYCLES))

    async def worker():
        nonlocal total
        for i in next_cycle:
            try:
                async with pool.acquire() as con:
                    value = await con.fetchval("SELECT $1::int + 1", i)
                    total += value
                    if on_cycle is not None:
                        await on_cycle(con, i)
            except Exception as exc:  # every failure is part of the transcript
                errors[error_key(exc)] += 1

    await asyncio.gather(*(worker() for _ in range(WORKERS)))
    return {"cycles": CYCLES, "sum": total, "errors": dict(sorted(errors.items()))}


async def pool_cycles():
    async with asyncpg.create_pool(min_size=POOL_SIZE, max_size=POOL_SIZE) as pool:
        return await run_cycles(pool)


async def pool_cycles_with_listener():
    """The cycles while one pooled connection listens: every 50th cycle
    notifies the channel, and the listener notifies itself once."""
    async with asyncpg.create_pool(min_size=POOL_SIZE, max_size=POOL_SIZE) as pool:
        listener = await pool.acquire()
        own_pid = listener.get_server_pid()
        received = []
        expected = CYCLES // 50 + 1

        def on_notify(_con, pid, channel, payload):
            received.append([channel, payload, pid == own_pid])

        await listener.add_listener(CHANNEL, on_notify)

        async def notify_some(con, i):
            if i % 50 == 0:
                await con.execute(f"NOTIFY {CHANNEL}, 'cycle {i}'")

        result = await run_cycles(pool, notify_some)
        await listener.execute(f"NOTIFY {CHANNEL}, 'self'")
        for _ in range(WAIT_SECONDS * 20):
            if len(received) >= expected:
                break
            await asyncio.sleep(0.05)
        await listener.remove_listener(CHANNEL, on_notify)
        await pool.release(listener)
        result["notifications"] = sorted(received)
        return result


async def fetch_outcome(con, query, in_transaction):
    """Rows of `query` as [value, python type] pairs, or the error."""
    try:
        if in_transaction:
            async with con.transaction():
                rows = await con.fetch(query)
        else:
            rows = await con.fetch(query)
        return [[[v, type(v).__name__] for v in row.values()] for row in rows]
    except Exception as exc:
        return {"error": error_key(exc)}


async def alter_column_type():
    """ALTER COLUMN ... TYPE under statements two connections have cached:
    inside a transaction each gets InvalidCachedStatementError once, then
    correct values; outside one asyncpg re-prepares by itself."""
    setup = await asyncpg.connect()
    await setup.execute(
        "DROP TABLE IF EXISTS drv_alter; CREATE TABLE drv_alter (a int, b int);"
        "INSERT INTO drv_alter VALUES (1, 2), (3, 4)"
    )
    query = "SELECT a, b FROM drv_alter ORDER BY a"
    first, second = await asyncpg.connect(), await asyncpg.connect()
    steps = []
    for con in (first, second):
        steps.append(["before", await fetch_outcome(con, query, False)])
    await setup.execute("ALTER TABLE drv_alter ALTER COLUMN b TYPE real")
    for con in (first, second):
        steps.append(["after, in a transaction", await fetch_outcome(con, query, True)])
        steps.append(["after, again", await fetch_outcome(con, query, True)])
    await setup.execute("ALTER TABLE drv_alter ALTER COLUMN b TYPE bigint")
    for con in (first, second):
        steps.append(["second change, outside", await fetch_outcome(con, query, False)])
    for con in (first, second, setup):
        await con.close()
    return {"steps": steps}


async def outcome(run):
    """What an awaitable gave, or the error it raised."""
    try:
        return await run
    except Exception as exc:
        return {"error": error_key(exc)}


async def copy_and_cancel():
    """COPY in (records and text), COPY out, a COPY that fails on bad data,
    and a query cancelled by asyncpg's timeout: each followed by a query
    on the same connection."""
    con = await asyncpg.connect()
    await con.execute("DROP TABLE IF EXISTS drv_copy; CREATE TABLE drv_copy (a int, b text)")
    steps = []
    records = [(i, f"row {i}") for i in range(1000)]
    steps.append(["copy records in", await outcome(con.copy_records_to_table("drv_copy", records=records))])
    text = io.BytesIO(b"".join(f"{i}\ttext {i}\n".encode() for i in range(1000, 1100)))
    steps.append(["copy text in", await outcome(con.copy_to_table("drv_copy", source=text))])
    bad = io.BytesIO(b"1\tfine\nnot a number\tbad\n")
    steps.append(["copy bad data in", await outcome(con.copy_to_table("drv_copy", source=bad))])
    out = io.BytesIO()
    steps.append(["copy out", await outcome(con.copy_from_query("SELECT * FROM drv_copy ORDER BY a", output=out))])
    steps.append(["copied out bytes", [len(out.getvalue()), hashlib.sha256(out.getvalue()).hexdigest()]])
    steps.append(["count", await outcome(con.fetchval("SELECT count(*) FROM drv_copy"))])
    steps.append(["cancelled by timeout", await outcome(con.fetchval("SELECT pg_sleep(30)", timeout=0.5))])
    steps.append(["after the cancel", await outcome(con.fetchval("SELECT 41 + 1"))])
    await con.close()
    return {"steps": steps}


SCENARIOS = {
    "copy_and_cancel": copy_and_cancel,
    "pool_cycles": pool_cycles,
    "pool_cycles_with_listener": pool_cycles_with_listener,
    "alter_column_type": alter_column_type,
}


def main():
    # A hung driver ends the run (with its threads' stacks on stderr)
    # before the Rust test's own limit.
    faulthandler.dump_traceback_later(100, exit=True)
    scenario = SCENARIOS[sys.argv[1]]
    transcript = asyncio.run(asyncio.wait_for(scenario(), timeout=90))
    transcript["driver"] = f"asyncpg {asyncpg.__version__}"
    dump(transcript)


if __name__ == "__main__":
    main()

//! The driver matrix: short scenarios written with the drivers applications
//! use (asyncpg, psycopg 3, node-postgres; the scripts are in
//! tests/drivers/), each run against Postgres directly and through pgharbor
//! in session and in transaction mode. Each script prints a transcript of
//! what its driver observed (results, SQLSTATEs and messages, notification
//! payloads); the test is that pgharbor's transcript is the direct one.
//!
//! The drivers are installed at pinned versions into `target/drivers` by
//! tests/drivers/install.sh (which .ci/run also runs); when one cannot be
//! installed the scenarios needing it say so on stderr and pass.
//!
//! Normalisations, all made by the scripts: backend pids appear only as
//! "equals the connection's own backend pid", and sets filled by concurrent
//! clients (notification payloads) are sorted. Nothing else is normalised.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::support::*;

/// A scenario script is killed after this long; each bounds itself well
/// below it.
const SCRIPT_LIMIT: Duration = Duration::from_secs(150);

/// Session mode gives each client a server for its whole life: the pool must
/// hold every client of the largest scenario (psycopg's 20 plus its setup).
const SESSION_POOL_SIZE: usize = 25;
/// Transaction mode: many clients over few servers, as the tests ask.
const TRANSACTION_POOL_SIZE: usize = 2;

#[derive(Clone, Copy, PartialEq)]
enum Runtime {
    Python,
    Node,
    /// A single-file Java program run from source with pgjdbc's jar.
    Java,
}

/// One scenario of one driver script.
#[derive(Clone, Copy)]
struct Scenario {
    /// Names the scenario's databases and its cached direct transcript.
    key: &'static str,
    runtime: Runtime,
    script: &'static str,
    name: &'static str,
    /// Extra environment, e.g. which psycopg implementation to load.
    env: &'static [(&'static str, &'static str)],
}

#[derive(Clone, Copy, PartialEq)]
enum Target {
    Direct,
    Session,
    Transaction,
}

impl Target {
    fn label(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Session => "session",
            Target::Transaction => "transaction",
        }
    }
}

fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/drivers")
}

/// `target/drivers`, found from this test binary's path
/// (`target/debug/deps/drivers-…`) so that CARGO_TARGET_DIR is honoured.
fn drivers_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    match exe.ancestors().nth(3) {
        Some(target) => target.join("drivers"),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/drivers"),
    }
}

/// Runs install.sh for `part` once per test binary; the error names what is
/// missing.
fn installed(part: &'static str) -> Result<(), String> {
    type Outcomes = Vec<(&'static str, Result<(), String>)>;
    static PARTS: OnceLock<Mutex<Outcomes>> = OnceLock::new();
    let parts = PARTS.get_or_init(Default::default);
    let mut parts = parts.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, done)) = parts.iter().find(|(p, _)| *p == part) {
        return done.clone();
    }
    let out = std::process::Command::new("bash")
        .arg(scripts_dir().join("install.sh"))
        .arg(part)
        .arg(drivers_dir())
        .output();
    let done = match out {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "tests/drivers/install.sh {part} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )),
        Err(e) => Err(format!("cannot run bash for tests/drivers/install.sh: {e}")),
    };
    parts.push((part, done.clone()));
    done
}

/// How to run a scenario script of one runtime.
struct Interpreter {
    program: PathBuf,
    /// Arguments before the script's path.
    args: Vec<String>,
    env: Vec<(String, String)>,
}

/// The interpreter for `runtime`, installing its drivers if needed.
fn interpreter(runtime: Runtime) -> Result<Interpreter, String> {
    let dir = drivers_dir();
    let interpreter = match runtime {
        Runtime::Python => {
            installed("python")?;
            Interpreter {
                program: dir.join("venv/bin/python"),
                args: vec![],
                env: vec![],
            }
        }
        Runtime::Node => {
            installed("node")?;
            let modules = dir.join("node/node_modules");
            Interpreter {
                program: "node".into(),
                args: vec![],
                env: vec![("NODE_PATH".into(), modules.display().to_string())],
            }
        }
        Runtime::Java => {
            installed("java")?;
            Interpreter {
                program: "java".into(),
                args: vec!["-cp".into(), "/usr/share/java/postgresql.jar".into()],
                env: vec![],
            }
        }
    };
    Ok(interpreter)
}

/// The database a run of `scenario` against `target` uses, created empty:
/// runs never share tables, so they can go on at once.
fn database_for(scenario: &Scenario, target: Target) -> String {
    let name = format!("drv_{}_{}", scenario.key, target.label());
    pg().create_database(&name, USER).expect("create database");
    name
}

/// Runs the scenario's script with the PG* variables pointing at
/// `host:port/db` and returns its transcript: stdout, plus the exit status
/// and stderr when it failed (a crash is a difference too).
async fn run_script(scenario: &Scenario, host: &str, port: u16, db: &str) -> String {
    let interpreter = interpreter(scenario.runtime).expect("checked by check()");
    let mut cmd = tokio::process::Command::new(interpreter.program);
    cmd.args(interpreter.args)
        .arg(scripts_dir().join(scenario.script))
        .arg(scenario.name)
        .envs(interpreter.env)
        .envs(scenario.env.iter().copied())
        .env("PGHOST", host)
        .env("PGPORT", port.to_string())
        .env("PGUSER", USER)
        .env("PGPASSWORD", PASSWORD)
        .env("PGDATABASE", db)
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGSERVICE")
        .env_remove("PGOPTIONS")
        .env_remove("PGSSLMODE")
        .env_remove("PGAPPNAME")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(SCRIPT_LIMIT, cmd.output())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{} {} ran over {SCRIPT_LIMIT:?}",
                scenario.script, scenario.name
            )
        })
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", scenario.script));
    let mut transcript = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        transcript.push_str(&format!(
            "exit: {}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    transcript
}

/// The direct run's transcript, made once per scenario and shared by the
/// session and transaction tests.
async fn direct_transcript(scenario: &Scenario) -> String {
    type Cell = Arc<tokio::sync::OnceCell<String>>;
    static DIRECT: OnceLock<Mutex<Vec<(&'static str, Cell)>>> = OnceLock::new();
    let cell = {
        let cells = DIRECT.get_or_init(Default::default);
        let mut cells = cells.lock().unwrap_or_else(|e| e.into_inner());
        match cells.iter().find(|(k, _)| *k == scenario.key) {
            Some((_, cell)) => cell.clone(),
            None => {
                let cell = Cell::default();
                cells.push((scenario.key, cell.clone()));
                cell
            }
        }
    };
    cell.get_or_init(|| async {
        let db = database_for(scenario, Target::Direct);
        run_script(scenario, pg().host(), pg().port(), &db).await
    })
    .await
    .clone()
}

/// pgharbor's config for `target`: the shared test config plus the
/// scenario's own database.
fn proxy_config(db: &str, target: Target) -> String {
    let (mode, pool_size) = match target {
        Target::Session => ("session", SESSION_POOL_SIZE),
        _ => ("transaction", TRANSACTION_POOL_SIZE),
    };
    let mut text = config_text(mode, pool_size, "");
    text.push_str(&format!(
        "\n[[databases]]\nname = \"{db}\"\nport = {}\n",
        pg().port()
    ));
    text
}

/// The line number and both lines where two transcripts first differ.
fn first_difference(direct: &str, proxied: &str) -> Option<(usize, String, String)> {
    let mut a = direct.lines();
    let mut b = proxied.lines();
    for n in 1.. {
        match (a.next(), b.next()) {
            (None, None) => return None,
            (x, y) if x == y => continue,
            (x, y) => {
                let show = |l: Option<&str>| l.unwrap_or("(end of transcript)").to_string();
                return Some((n, show(x), show(y)));
            }
        }
    }
    None
}

/// Runs `scenario` directly and through pgharbor in `target` mode and
/// asserts that the transcripts are the same.
async fn check(scenario: Scenario, target: Target) {
    if let Err(missing) = interpreter(scenario.runtime) {
        return skip(&scenario, &missing);
    }
    let direct = direct_transcript(&scenario).await;
    assert!(
        !direct.is_empty() && !direct.contains("\nexit: "),
        "{} {} fails against Postgres directly:\n{direct}",
        scenario.script,
        scenario.name
    );
    let db = database_for(&scenario, target);
    let proxy = start_proxy_with(&proxy_config(&db, target)).await;
    let addr = proxy.addr();
    let proxied = run_script(&scenario, &addr.ip().to_string(), addr.port(), &db).await;
    if let Some((line, want, got)) = first_difference(&direct, &proxied) {
        panic!(
            "{} {} in {} mode differs from Postgres at line {line}:\n  direct:   {want}\n  pgharbor: {got}\n\
             --- direct transcript\n{direct}--- pgharbor transcript\n{proxied}",
            scenario.script,
            scenario.name,
            target.label()
        );
    }
}

/// Says loudly, past the test harness's output capture, that a scenario did
/// not run and why.
fn skip(scenario: &Scenario, missing: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED driver scenario {} {}: driver not installed: {missing}",
        scenario.script,
        scenario.name
    );
}

const ASYNCPG: &str = "asyncpg_scenarios.py";
const PSYCOPG: &str = "psycopg_scenarios.py";
const NODE_PG: &str = "node_pg_scenarios.js";
const PGJDBC: &str = "PgjdbcScenarios.java";

const fn python(key: &'static str, script: &'static str, name: &'static str) -> Scenario {
    Scenario {
        key,
        runtime: Runtime::Python,
        script,
        name,
        env: &[],
    }
}

/// A Pool of 10 asyncpg connections, 1,000 acquire/fetch/release cycles
/// from 20 tasks; every release runs asyncpg's reset query
/// (`SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;`).
const ASYNCPG_POOL: Scenario = python("asyncpg_pool", ASYNCPG, "pool_cycles");
/// The same cycles while one pooled connection listens (add_listener):
/// every 50th cycle notifies it, and it notifies itself once.
const ASYNCPG_POOL_LISTEN: Scenario =
    python("asyncpg_pool_listen", ASYNCPG, "pool_cycles_with_listener");
/// Two connections with a cached `SELECT a, b`, then `ALTER COLUMN b TYPE
/// real`: in a transaction each gets InvalidCachedStatementError once, then
/// the new values; after a second change asyncpg re-prepares by itself.
const ASYNCPG_ALTER: Scenario = python("asyncpg_alter", ASYNCPG, "alter_column_type");
/// COPY in from records and from text, a COPY failing on bad data, COPY
/// out, and a query cancelled by asyncpg's timeout (a CancelRequest), each
/// followed by a query on the same connection.
const ASYNCPG_COPY_CANCEL: Scenario = python("asyncpg_copy_cancel", ASYNCPG, "copy_and_cancel");
/// psycopg 3 with prepare_threshold 0: 20 clients at once, 10 running
/// prepared queries while the others put ROLLBACK (psycopg then sends
/// DEALLOCATE ALL), ALTER TABLE, DROP, DISCARD ALL or DEALLOCATE ALL between
/// theirs. Errors are counted by SQLSTATE and message.
const PSYCOPG_RESETS: Scenario =
    python("psycopg_resets", PSYCOPG, "concurrent_prepared_with_resets");
/// The same with psycopg's default prepare_threshold (5 executions).
const PSYCOPG_AUTO_RESETS: Scenario = python(
    "psycopg_auto_resets",
    PSYCOPG,
    "concurrent_auto_prepared_with_resets",
);
/// prepared_max 5 and 50 distinct queries on 4 connections: every query
/// evicts an older statement. With the system's libpq (before 17) psycopg
/// evicts with SQL `DEALLOCATE _pg3_N`.
const PSYCOPG_EVICT_SQL: Scenario = Scenario {
    env: &[("PSYCOPG_IMPL", "python")],
    ..python("psycopg_evict_sql", PSYCOPG, "prepared_max_eviction")
};
/// The same with psycopg-binary's libpq 17, which evicts with a protocol
/// Close message.
const PSYCOPG_EVICT_CLOSE: Scenario = Scenario {
    env: &[("PSYCOPG_IMPL", "binary")],
    ..python("psycopg_evict_close", PSYCOPG, "prepared_max_eviction")
};
/// Two connections listening on one channel notify it by the extended
/// protocol (`NOTIFY` and `pg_notify(%s, %s)`): whose pid each notification
/// carries.
const PSYCOPG_NOTIFY: Scenario = python("psycopg_notify", PSYCOPG, "notify_each_other");
/// `client.connect(); client.end()` 100 times: the Terminate reaches the
/// server before the startup packet.
const NODE_CONNECT_END: Scenario = Scenario {
    runtime: Runtime::Node,
    ..python("node_connect_end", NODE_PG, "connect_end")
};
/// A query, a parameterized and a named prepared one, an error inside a
/// transaction and its ROLLBACK, LISTEN and a NOTIFY to itself.
const NODE_QUERIES: Scenario = Scenario {
    runtime: Runtime::Node,
    ..python("node_queries", NODE_PG, "queries")
};

/// A node-postgres Pool of 10: 300 named prepared queries at once, then
/// transactions checked out and released, some failing and rolled back.
const NODE_POOL: Scenario = Scenario {
    runtime: Runtime::Node,
    ..python("node_pool", NODE_PG, "pool")
};
/// pgjdbc with server-side statements from the first execution: prepared
/// queries across `ALTER COLUMN ... TYPE`, an error inside a transaction and
/// its rollback, a batch insert, LISTEN and a NOTIFY to itself.
const PGJDBC_BASICS: Scenario = Scenario {
    runtime: Runtime::Java,
    ..python("pgjdbc_basics", PGJDBC, "basics")
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_pool_cycles_as_on_postgres_in_session_mode() {
    check(ASYNCPG_POOL, Target::Session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_pool_cycles_as_on_postgres_in_transaction_mode() {
    check(ASYNCPG_POOL, Target::Transaction).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_pool_with_a_listener_as_on_postgres_in_session_mode() {
    check(ASYNCPG_POOL_LISTEN, Target::Session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_pool_with_a_listener_as_on_postgres_in_transaction_mode() {
    check(ASYNCPG_POOL_LISTEN, Target::Transaction).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_sees_a_column_type_change_as_on_postgres_in_session_mode() {
    check(ASYNCPG_ALTER, Target::Session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_sees_a_column_type_change_as_on_postgres_in_transaction_mode() {
    check(ASYNCPG_ALTER, Target::Transaction).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_copy_and_cancel_as_on_postgres_in_session_mode() {
    check(ASYNCPG_COPY_CANCEL, Target::Session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_copy_and_cancel_as_on_postgres_in_transaction_mode() {
    check(ASYNCPG_COPY_CANCEL, Target::Transaction).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_prepared_beside_resets_as_on_postgres_in_session_mode() {
    check(PSYCOPG_RESETS, Target::Session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_prepared_beside_resets_as_on_postgres_in_transaction_mode() {
    check(PSYCOPG_RESETS, Target::Transaction).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_auto_prepared_beside_resets_as_on_postgres_in_session_mode() {
    check(PSYCOPG_AUTO_RESETS, Target::Session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_auto_prepared_beside_resets_as_on_postgres_in_transaction_mode() {
    check(PSYCOPG_AUTO_RESETS, Target::Transaction).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_notifications_carry_the_senders_pid_as_on_postgres_in_session_mode() {
    check(PSYCOPG_NOTIFY, Target::Session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_notifications_carry_the_senders_pid_as_on_postgres_in_transaction_mode() {
    check(PSYCOPG_NOTIFY, Target::Transaction).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_evicting_with_sql_deallocate_as_on_postgres_in_session_mode() {
    check(PSYCOPG_EVICT_SQL, Target::Session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_evicting_with_sql_deallocate_as_on_postgres_in_transaction_mode() {
    check(PSYCOPG_EVICT_SQL, Target::Transaction).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_evicting_with_protocol_close_as_on_postgres_in_session_mode() {
    check(PSYCOPG_EVICT_CLOSE, Target::Session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_evicting_with_protocol_close_as_on_postgres_in_transaction_mode() {
    check(PSYCOPG_EVICT_CLOSE, Target::Transaction).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_connect_then_end_as_on_postgres_in_session_mode() {
    check(NODE_CONNECT_END, Target::Session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_connect_then_end_as_on_postgres_in_transaction_mode() {
    check(NODE_CONNECT_END, Target::Transaction).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_queries_as_on_postgres_in_session_mode() {
    check(NODE_QUERIES, Target::Session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_queries_as_on_postgres_in_transaction_mode() {
    check(NODE_QUERIES, Target::Transaction).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_pool_as_on_postgres_in_session_mode() {
    check(NODE_POOL, Target::Session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_pool_as_on_postgres_in_transaction_mode() {
    check(NODE_POOL, Target::Transaction).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgjdbc_basics_as_on_postgres_in_session_mode() {
    check(PGJDBC_BASICS, Target::Session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgjdbc_basics_as_on_postgres_in_transaction_mode() {
    check(PGJDBC_BASICS, Target::Transaction).await;
}

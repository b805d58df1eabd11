//! `query_timeout` and `transaction_timeout`, in both pool modes: a slow
//! query is cancelled (the client gets Postgres's 57014 and keeps its
//! connection, and no other client sees a cancel), a query under the
//! timeout is left alone, and a transaction open too long ends its client
//! with FATAL 25P04, its work rolled back and its server clean.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::support::raw::{query, Msg, RawClient};
use crate::support::*;

const CANCELED: &str = "57014";

/// A proxy in `mode` with `keys` in `[pool]`, serving database `role` as
/// `role`.
async fn proxy_for(mode: &str, pool_size: usize, keys: &str, role: &str) -> pgharbor::Proxy {
    start_proxy_with(&config_text_for_user(mode, pool_size, keys, role)).await
}

/// The pool's counter `name` for `role`, from /metrics (present from the
/// pool's start, at 0).
fn pool_counter(proxy: &pgharbor::Proxy, name: &str, role: &str) -> f64 {
    let text = proxy.state().metrics().render();
    let prefix = format!("{name}{{database=\"{role}\",user=\"{role}\"}} ");
    let value = text.lines().find_map(|l| l.strip_prefix(&prefix));
    let value = value.unwrap_or_else(|| panic!("no {prefix}in /metrics"));
    value.trim().parse().unwrap()
}

/// Short queries one after another for `run`, each checked: a cancel
/// meant for another client's query would fail one with 57014.
async fn steady_queries(client: Client, run: Duration) -> usize {
    let until = Instant::now() + run;
    let mut n = 0;
    while Instant::now() < until {
        let got = client.simple_query("select pg_sleep(0.05)").await;
        if let Err(e) = got {
            panic!("a neighbour's query failed: {e} ({:?})", sqlstate(&e));
        }
        n += 1;
    }
    n
}

async fn slow_query_is_cancelled(mode: &str, role: &str) {
    // Pool size 1 in transaction mode: the neighbour gets the very server
    // the slow query was cancelled on.
    let size = if mode == "transaction" { 1 } else { 2 };
    let proxy = proxy_for(mode, size, r#"query_timeout = "1s""#, role).await;
    let dsn = dsn_as(&proxy, role, role);
    let slow = connect_dsn(&dsn).await;
    let neighbour = connect_dsn(&dsn).await;
    simple_value(&neighbour, "select 1").await;
    let steady = tokio::spawn(steady_queries(neighbour, Duration::from_secs(4)));
    let t0 = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(15),
        slow.simple_query("select pg_sleep(30)"),
    )
    .await
    .expect("the slow query ends within a few seconds");
    let took = t0.elapsed();
    let e = r.expect_err("the slow query is cancelled");
    assert_eq!(sqlstate(&e).as_deref(), Some(CANCELED), "{e}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(6),
        "cancelled after {took:?}"
    );
    // Postgres's own error, as a CancelRequest gets it.
    let msg = e.as_db_error().map(|d| d.message().to_owned());
    assert_eq!(
        msg.as_deref(),
        Some("canceling statement due to user request")
    );
    assert_eq!(
        simple_value(&slow, "select 41 + 1").await.as_deref(),
        Some("42")
    );
    // The extended protocol's query too.
    let r = tokio::time::timeout(
        Duration::from_secs(15),
        slow.query("select pg_sleep($1)", &[&30f64]),
    )
    .await
    .expect("the slow extended query ends within a few seconds");
    let e = r.expect_err("the slow extended query is cancelled");
    assert_eq!(sqlstate(&e).as_deref(), Some(CANCELED), "{e}");
    let row = slow.query_one("select 42::int", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    let n = tokio::time::timeout(Duration::from_secs(30), steady)
        .await
        .expect("the neighbour's queries end")
        .expect("no neighbour query was cancelled");
    assert!(n > 5, "the neighbour ran {n} queries");
    assert_eq!(
        pool_counter(&proxy, "pgharbor_query_timeouts_total", role),
        2.0
    );
}

#[tokio::test]
async fn query_timeout_cancels_a_slow_query_in_transaction_mode() {
    slow_query_is_cancelled("transaction", "to_query_tx").await;
}

#[tokio::test]
async fn query_timeout_cancels_a_slow_query_in_session_mode() {
    slow_query_is_cancelled("session", "to_query_sess").await;
}

/// Queries each under the timeout, in a transaction and in a pipeline
/// that together run longer: the clock is per query.
async fn quick_queries_are_untouched(mode: &str, role: &str) {
    let proxy = proxy_for(mode, 2, r#"query_timeout = "2s""#, role).await;
    let client = connect_dsn(&dsn_as(&proxy, role, role)).await;
    client.batch_execute("begin").await.unwrap();
    for _ in 0..3 {
        client.batch_execute("select pg_sleep(0.8)").await.unwrap();
    }
    client.batch_execute("commit").await.unwrap();
    // Pipelined: each query's clock starts when the one before it ends.
    let q = || client.query("select pg_sleep(0.8)", &[]);
    let (a, b, c) = tokio::join!(q(), q(), q());
    for r in [a, b, c] {
        r.expect("a pipelined quick query");
    }
    assert_eq!(
        pool_counter(&proxy, "pgharbor_query_timeouts_total", role),
        0.0
    );
}

#[tokio::test]
async fn query_timeout_leaves_quicker_queries_alone_in_transaction_mode() {
    quick_queries_are_untouched("transaction", "to_quick_tx").await;
}

#[tokio::test]
async fn query_timeout_leaves_quicker_queries_alone_in_session_mode() {
    quick_queries_are_untouched("session", "to_quick_sess").await;
}

/// The FATAL that ended `msgs`' connection.
fn fatal_of(msgs: &[Msg]) -> &Msg {
    let e = msgs.iter().rev().find(|m| m.tag == b'E');
    e.unwrap_or_else(|| panic!("no ErrorResponse before the close: {msgs:?}"))
}

/// Postgres 15 has no transaction_timeout: its idle-in-transaction FATAL,
/// the same kind of ending, shows the fields a client reads.
async fn postgres_timeout_fatal() -> Msg {
    let mut c = RawClient::login(direct_addr(), USER, PASSWORD, "app").await;
    c.send(&query(
        "set idle_in_transaction_session_timeout = '200ms'; begin",
    ))
    .await;
    c.until_ready().await;
    fatal_of(&c.until_closed(Duration::from_secs(10)).await).clone()
}

async fn transaction_timeout_ends_client(mode: &str, role: &str, running: bool) {
    let keys = r#"transaction_timeout = "1s""#;
    let proxy = proxy_for(mode, 1, keys, role).await;
    let direct = connect_direct().await;
    let table = format!("{role}_rows");
    direct
        .batch_execute(&format!(
            "drop table if exists {table}; create table {table} (v int); grant all on {table} to {role}"
        ))
        .await
        .unwrap();
    let mut c = RawClient::login(proxy.addr(), role, PASSWORD, role).await;
    c.send(&query(&format!("begin; insert into {table} values (1)")))
        .await;
    c.until_ready().await;
    let t0 = Instant::now();
    if running {
        c.send(&query("select pg_sleep(30)")).await;
    }
    let msgs = c.until_closed(Duration::from_secs(15)).await;
    let took = t0.elapsed();
    let fatal = fatal_of(&msgs);
    assert_eq!(fatal.sqlstate().as_deref(), Some("25P04"), "{fatal:?}");
    assert!(took < Duration::from_secs(6), "ended after {took:?}");
    let text = fatal.field(b'M').unwrap();
    assert!(
        text.starts_with("pgharbor: ") && text.contains("transaction_timeout"),
        "{text}"
    );
    // As Postgres's own timeouts end a connection: FATAL in S and V.
    let theirs = postgres_timeout_fatal().await;
    for f in [b'S', b'V'] {
        assert_eq!(fatal.field(f), theirs.field(f), "field {}", f as char);
    }
    let n: i64 = (direct
        .query_one(&format!("select count(*) from {table}"), &[])
        .await)
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the insert was not committed");
    // The pool's server (the same one, or a new one if it was closed) is
    // in no transaction: the next client gets a clean one.
    let next = connect_dsn(&dsn_as(&proxy, role, role)).await;
    let xid = simple_value(&next, "select txid_current_if_assigned()").await;
    assert_eq!(xid, None, "the next client starts in no transaction");
    let stuck = format!(
        "select count(*) from pg_stat_activity where usename = '{role}' and state <> 'idle' and pid <> pg_backend_pid()"
    );
    let clean = eventually(Duration::from_secs(10), || async {
        let r = direct.query_one(&stuck, &[]).await.unwrap();
        r.get::<_, i64>(0) == 0
    })
    .await;
    assert!(
        clean,
        "a server of {role} was left busy or in a transaction"
    );
    assert_eq!(
        pool_counter(&proxy, "pgharbor_transaction_timeouts_total", role),
        1.0
    );
}

#[tokio::test]
async fn transaction_timeout_ends_an_idle_transaction_in_transaction_mode() {
    transaction_timeout_ends_client("transaction", "to_txn_idle_tx", false).await;
}

#[tokio::test]
async fn transaction_timeout_ends_a_running_transaction_in_transaction_mode() {
    transaction_timeout_ends_client("transaction", "to_txn_run_tx", true).await;
}

#[tokio::test]
async fn transaction_timeout_ends_an_idle_transaction_in_session_mode() {
    transaction_timeout_ends_client("session", "to_txn_idle_sess", false).await;
}

#[tokio::test]
async fn transaction_timeout_ends_a_running_transaction_in_session_mode() {
    transaction_timeout_ends_client("session", "to_txn_run_sess", true).await;
}

/// A backend stopped with SIGSTOP, continued when dropped (also when the
/// test fails half-way, so no stopped backend outlives it).
struct Stopped(i32);

impl Stopped {
    async fn stop(pid: i32) -> Stopped {
        let mut cmd = std::process::Command::new("kill");
        cmd.args(["-STOP".to_string(), pid.to_string()]);
        assert_succeeded(&output(cmd).await);
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // `kill` returns at once: nothing here waits on pgharbor.
        let _ = std::process::Command::new("kill")
            .args(["-CONT".to_string(), self.0.to_string()])
            .status();
    }
}

/// A server that does not end the query after its cancel (here: its
/// backend stopped) is closed, and the client ended with 08006.
async fn stuck_query_closes_its_server(mode: &str, role: &str) {
    let proxy = proxy_for(mode, 1, r#"query_timeout = "1s""#, role).await;
    let direct = connect_direct().await;
    let mut c = RawClient::login(proxy.addr(), role, PASSWORD, role).await;
    c.send(&query("select pg_sleep(60)")).await;
    let active =
        format!("select pid from pg_stat_activity where usename = '{role}' and state = 'active'");
    let running = async {
        loop {
            if let Some(r) = direct.query_opt(&active, &[]).await.unwrap() {
                return r.get::<_, i32>(0);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let pid = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the query runs on a backend");
    let stopped = Stopped::stop(pid).await;
    let t0 = Instant::now();
    let msgs = tokio::time::timeout(
        Duration::from_secs(20),
        c.until_closed(Duration::from_secs(20)),
    )
    .await
    .expect("the client is ended");
    let took = t0.elapsed();
    drop(stopped);
    let fatal = fatal_of(&msgs);
    assert_eq!(fatal.sqlstate().as_deref(), Some("08006"), "{fatal:?}");
    assert_eq!(fatal.field(b'S').as_deref(), Some("FATAL"));
    let text = fatal.field(b'M').unwrap();
    assert!(
        text.starts_with("pgharbor: ") && text.contains("query_timeout"),
        "{text}"
    );
    assert!(took < Duration::from_secs(12), "ended after {took:?}");
    // The server was closed, not lent again: its backend goes away.
    let gone = eventually(Duration::from_secs(10), || async {
        backend_state(&direct, pid).await.is_none()
    })
    .await;
    assert!(gone, "backend {pid} still there");
    let next = connect_dsn(&dsn_as(&proxy, role, role)).await;
    assert_eq!(simple_value(&next, "select 1").await.as_deref(), Some("1"));
}

#[tokio::test]
async fn query_timeout_closes_a_server_that_ignores_the_cancel_in_transaction_mode() {
    stuck_query_closes_its_server("transaction", "to_stuck_tx").await;
}

#[tokio::test]
async fn query_timeout_closes_a_server_that_ignores_the_cancel_in_session_mode() {
    stuck_query_closes_its_server("session", "to_stuck_sess").await;
}

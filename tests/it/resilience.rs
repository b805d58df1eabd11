//! Servers that die, peers that break the protocol, and a graceful drain on
//! SIGTERM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::raw::{self, RawClient};
use crate::support::*;

/// A well-behaved client that keeps querying until stopped; returns how many
/// queries succeeded and panics on the first failure.
async fn steady_client(dsn: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<usize> {
    // Connected and served once before the test breaks anything, so the
    // bystander is in service throughout, however slowly the machine runs.
    let c = connect_dsn(&dsn).await;
    assert_eq!(simple_value(&c, "select 0 + 1").await.as_deref(), Some("1"));
    tokio::spawn(async move {
        let mut n = 1;
        while !stop.load(Ordering::Relaxed) {
            let v = simple_value(&c, &format!("select {n} + 1")).await;
            assert_eq!(v, Some((n + 1).to_string()));
            n += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        n
    })
}

async fn terminate(direct: &tokio_postgres::Client, pid: i32) {
    let ok: bool = direct
        .query_one("select pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(ok, "pg_terminate_backend({pid})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_dying_under_a_client_is_reported_and_replaced() {
    let user = "victim";
    let proxy = start_proxy_with(&config_text_for_user("transaction", 3, "", user)).await;
    let direct = connect_direct().await;
    let dsn = dsn_as(&proxy, user, user);
    let stop = Arc::new(AtomicBool::new(false));
    let bystander = steady_client(dsn.clone(), stop.clone()).await;

    // 1. Killed while running a query.
    let c = connect_dsn(&dsn).await;
    let pid: i32 = simple_value(&c, "begin; select pg_backend_pid()")
        .await
        .unwrap()
        .parse()
        .unwrap();
    let sleeper = tokio::spawn(async move { c.simple_query("select pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    terminate(&direct, pid).await;
    let err = tokio::time::timeout(Duration::from_secs(5), sleeper)
        .await
        .expect("the client was told at once")
        .unwrap()
        .expect_err("the query cannot succeed");
    let code = sqlstate(&err);
    assert!(
        matches!(code.as_deref(), Some("57P01") | Some("08006")),
        "{err} {code:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5));

    // 2. Killed while idle in a transaction: the error arrives unasked, then
    //    the connection closes.
    let mut r = RawClient::login(proxy.addr(), user, PASSWORD, user).await;
    r.send(&raw::query("begin; select pg_backend_pid()")).await;
    let msgs = r.until_ready().await;
    let pid: i32 = raw::first_column(&msgs)[0]
        .clone()
        .unwrap()
        .parse()
        .unwrap();
    terminate(&direct, pid).await;
    let msgs = r.until_closed(Duration::from_secs(5)).await;
    let err = msgs
        .iter()
        .find(|m| m.tag == b'E')
        .unwrap_or_else(|| panic!("no error before close: {msgs:?}"));
    assert!(
        matches!(err.sqlstate().as_deref(), Some("57P01") | Some("08006")),
        "{err:?}"
    );
    assert_eq!(err.field(b'S').as_deref(), Some("FATAL"));
    assert!(
        msgs.iter().all(|m| m.tag != b'Z'),
        "ReadyForQuery after FATAL"
    );

    // The others never noticed, and the pool serves new clients with fresh
    // servers.
    for _ in 0..10 {
        let c = connect_dsn(&dsn).await;
        assert_eq!(simple_value(&c, "select 42").await.as_deref(), Some("42"));
    }
    stop.store(true, Ordering::Relaxed);
    assert!(bystander.await.expect("the bystander never failed") > 0);
    assert!(backends_of_user(&direct, user).await <= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_idle_servers_are_never_handed_out() {
    let user = "reaped";
    // Default server_check_delay (30s): dead servers must be noticed anyway.
    let proxy = start_proxy_with(&config_text_for_user("transaction", 3, "", user)).await;
    let direct = connect_direct().await;
    let dsn = dsn_as(&proxy, user, user);

    // Open three servers at once, then let them go idle in the pool.
    let mut clients = Vec::new();
    let mut pids = Vec::new();
    for _ in 0..3 {
        let c = connect_dsn(&dsn).await;
        let pid: i32 = simple_value(&c, "begin; select pg_backend_pid()")
            .await
            .unwrap()
            .parse()
            .unwrap();
        pids.push(pid);
        clients.push(c);
    }
    for c in &clients {
        c.simple_query("commit").await.unwrap();
    }
    assert_eq!(backends_of_user(&direct, user).await, 3);

    for &pid in &pids {
        terminate(&direct, pid).await;
    }
    let gone = eventually(Duration::from_secs(5), || async {
        backends_of_user(&direct, user).await == 0
    })
    .await;
    assert!(gone, "the killed servers are still there");

    // Every query succeeds on the first try, on the old clients and on new ones.
    for round in 0..5 {
        for c in &clients {
            let v = c.simple_query("select 1").await;
            assert!(v.is_ok(), "round {round}: {:?}", v.err());
        }
        let c = connect_dsn(&dsn).await;
        let pid: i32 = simple_value(&c, "select pg_backend_pid()")
            .await
            .unwrap()
            .parse()
            .unwrap();
        assert!(!pids.contains(&pid), "a killed server was handed out");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_get_08p01_and_a_closed_connection() {
    let proxy = start_proxy("transaction", 2).await;
    let a = proxy.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let bystander = steady_client(dsn(&proxy, "app"), stop.clone()).await;

    let expect_protocol_violation = |msgs: Vec<raw::Msg>, what: &str| {
        let err = msgs
            .iter()
            .find(|m| m.tag == b'E')
            .unwrap_or_else(|| panic!("{what}: no ErrorResponse: {msgs:?}"));
        assert_eq!(err.sqlstate().as_deref(), Some("08P01"), "{what}: {err:?}");
        assert!(err.field(b'M').is_some_and(|m| !m.is_empty()), "{what}");
        assert!(
            msgs.iter().all(|m| m.tag != b'Z'),
            "{what}: RFQ after FATAL"
        );
    };

    // A startup packet claiming 2^31 - 1 bytes.
    let mut r = RawClient::open(a).await;
    r.send(&[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0]).await;
    expect_protocol_violation(r.until_closed(Duration::from_secs(5)).await, "huge startup");

    // A regular message with a negative length, after login.
    let mut r = RawClient::login(a, USER, PASSWORD, "app").await;
    let _ = r.try_send(&[b'Q', 0xff, 0xff, 0xff, 0xf0]).await;
    expect_protocol_violation(
        r.until_closed(Duration::from_secs(5)).await,
        "negative length",
    );

    // A length too small to count itself.
    let mut r = RawClient::login(a, USER, PASSWORD, "app").await;
    let _ = r.try_send(&[b'Q', 0, 0, 0, 2]).await;
    expect_protocol_violation(r.until_closed(Duration::from_secs(5)).await, "length 2");

    // An unknown message type, after login.
    let mut r = RawClient::login(a, USER, PASSWORD, "app").await;
    let _ = r.try_send(&raw::msg(b'z', b"hello")).await;
    expect_protocol_violation(r.until_closed(Duration::from_secs(5)).await, "unknown type");

    // The same in the middle of a transaction: the server is not kept.
    let mut r = RawClient::login(a, USER, PASSWORD, "app").await;
    r.send(&raw::query("begin")).await;
    r.until_ready().await;
    let _ = r.try_send(&raw::msg(b'z', b"")).await;
    expect_protocol_violation(
        r.until_closed(Duration::from_secs(5)).await,
        "unknown type in a transaction",
    );

    // Garbage instead of a startup packet.
    let mut r = RawClient::open(a).await;
    let _ = r
        .try_send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\0\0\0\0")
        .await;
    let msgs = r.until_closed(Duration::from_secs(5)).await;
    assert!(msgs.iter().all(|m| m.tag == b'E'), "{msgs:?}");

    // The pool of two is not wedged by the broken clients.
    for _ in 0..4 {
        let c = connect(&proxy, "app").await;
        assert_eq!(simple_value(&c, "select 7").await.as_deref(), Some("7"));
    }
    stop.store(true, Ordering::Relaxed);
    assert!(bystander.await.expect("the bystander never failed") > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_get_a_clear_error() {
    let text = config_text("transaction", 2, "").replace(
        "shutdown_timeout = \"10s\"",
        "shutdown_timeout = \"10s\"\nmax_message_size = 65536",
    );
    let proxy = start_proxy_with(&text).await;
    let a = proxy.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let bystander = steady_client(dsn(&proxy, "app"), stop.clone()).await;

    // Just under the limit works.
    let mut r = RawClient::login(a, USER, PASSWORD, "app").await;
    let small = format!("select length('{}')", "x".repeat(60_000));
    r.send(&raw::query(&small)).await;
    let msgs = r.until_ready().await;
    assert_eq!(raw::first_column(&msgs), [Some("60000".to_string())]);

    // A query of 1 MB is refused, with a message that names the limit.
    let big = format!("select length('{}')", "x".repeat(1 << 20));
    let _ = r.try_send(&raw::query(&big)).await;
    let msgs = r.until_closed(Duration::from_secs(10)).await;
    let err = msgs
        .iter()
        .find(|m| m.tag == b'E')
        .unwrap_or_else(|| panic!("no error for an oversized message: {msgs:?}"));
    let code = err.sqlstate();
    assert!(
        matches!(code.as_deref(), Some("08P01") | Some("54000")),
        "{err:?}"
    );
    let text = err.field(b'M').unwrap_or_default();
    assert!(
        text.contains("65536") || text.contains("max_message_size"),
        "the error should name the limit: {text}"
    );
    assert!(
        !raw::first_column(&msgs).contains(&Some((1 << 20).to_string())),
        "the oversized query ran"
    );
    stop.store(true, Ordering::Relaxed);
    assert!(bystander.await.expect("the bystander never failed") > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_open_transactions_then_exits() {
    let mut proxy = ProxyProcess::start("6s").await;
    let dsn = proxy.dsn.clone();
    let direct = connect_direct().await;
    direct
        .batch_execute(
            "create table if not exists drained (tag text); grant all on drained to public",
        )
        .await
        .unwrap();

    let c = connect_dsn(&dsn).await;
    c.simple_query("begin; insert into drained values ('before')")
        .await
        .unwrap();
    let idle = connect_dsn(&dsn).await;
    simple_value(&idle, "select 1").await;

    let t0 = Instant::now();
    proxy.sigterm();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // New connections are refused.
    let refused = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await;
    assert!(
        refused.is_err(),
        "a new connection was accepted while draining"
    );
    // An idle client is told to go (its next query fails).
    assert!(idle.simple_query("select 1").await.is_err());

    // The open transaction finishes.
    c.simple_query("insert into drained values ('during')")
        .await
        .unwrap();
    c.simple_query("commit").await.unwrap();
    let n: i64 = direct
        .query_one(
            "select count(*) from drained where tag in ('before', 'during')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2, "the drained transaction was not committed");

    // Then the process exits, well within shutdown_timeout.
    let status = proxy.wait_exit(Duration::from_secs(6 + 3).saturating_sub(t0.elapsed()));
    assert!(status.success(), "exit status {status}");
    let _ = c.simple_query("select 1").await.unwrap_err();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_gives_up_on_transactions_after_shutdown_timeout() {
    let mut proxy = ProxyProcess::start("2s").await;
    let c = connect_dsn(&proxy.dsn).await;
    c.simple_query("begin").await.unwrap();
    let t0 = Instant::now();
    proxy.sigterm();
    let status = proxy.wait_exit(Duration::from_secs(8));
    assert!(t0.elapsed() >= Duration::from_millis(1500), "did not wait");
    assert!(status.success(), "exit status {status}");
}

//! Per-pool metrics that the load test does not check, each moved by a
//! known cause: the transaction-duration histogram counts transactions,
//! the byte counters grow by a large query and result, a refusing server
//! port counts connect errors, and the `login` / `testing` server states
//! show while a server is being opened or checked.

use std::time::Duration;

use crate::observability::{sample, scrape};
use crate::support::*;
use pgharbor::Proxy;

/// A pgharbor for `user`'s own pool (transaction mode, one server) with a
/// metrics endpoint; `extra_pool` goes into `[pool]`, `sections` at the end.
async fn proxy_with_metrics(user: &str, extra_pool: &str, sections: &str) -> Proxy {
    let text = config_text_for_user("transaction", 1, extra_pool, user)
        + "\n[metrics]\nlisten_addr = \"127.0.0.1:0\"\n"
        + sections;
    start_proxy_with(&text).await
}

/// `name` of the pool `database`/`user`, 0 while it has no sample yet.
async fn pool_value(proxy: &Proxy, name: &str, database: &str, user: &str) -> f64 {
    let text = scrape(proxy).await;
    sample(&text, name, &[("database", database), ("user", user)]).unwrap_or(0.0)
}

async fn servers_in(proxy: &Proxy, database: &str, user: &str, state: &str) -> f64 {
    let text = scrape(proxy).await;
    let want = [("database", database), ("user", user), ("state", state)];
    sample(&text, "pgharbor_pool_servers", &want).unwrap_or(0.0)
}

/// Polls `name` of the pool until it equals `want`; its last value.
async fn settles_at(proxy: &Proxy, name: &str, db: &str, user: &str, want: f64) -> f64 {
    eventually(Duration::from_secs(5), || async {
        pool_value(proxy, name, db, user).await == want
    })
    .await;
    pool_value(proxy, name, db, user).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_duration_histogram_counts_each_transaction() {
    let user = "xact_metrics_role";
    let proxy = proxy_with_metrics(user, "", "").await;
    let client = connect_dsn(&dsn_as(&proxy, user, user)).await;
    let count = "pgharbor_transaction_duration_seconds_count";
    let before = pool_value(&proxy, count, user, user).await;
    // Three transactions of three statements, three of one.
    for _ in 0..3 {
        client.batch_execute("BEGIN").await.expect("begin");
        client
            .batch_execute("select pg_sleep(0.05)")
            .await
            .expect("select");
        client.batch_execute("COMMIT").await.expect("commit");
        client.batch_execute("select 1").await.expect("select");
    }
    let after = settles_at(&proxy, count, user, user, before + 6.0).await;
    assert_eq!(after - before, 6.0, "transactions counted");
    let sum = pool_value(
        &proxy,
        "pgharbor_transaction_duration_seconds_sum",
        user,
        user,
    )
    .await;
    assert!(sum >= 0.15, "three transactions of 50 ms sum to {sum} s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_counters_grow_by_a_large_query_and_its_large_result() {
    let user = "bytes_metrics_role";
    let proxy = proxy_with_metrics(user, "", "").await;
    let client = connect_dsn(&dsn_as(&proxy, user, user)).await;
    let received = "pgharbor_bytes_received_total";
    let sent = "pgharbor_bytes_sent_total";

    let before = pool_value(&proxy, received, user, user).await;
    let query = format!("select length('{}')", "x".repeat(100_000));
    assert_eq!(
        simple_value(&client, &query).await.as_deref(),
        Some("100000")
    );
    let grown = pool_value(&proxy, received, user, user).await - before;
    assert!(
        grown >= 100_000.0,
        "{received} grew by {grown} for a 100 kB query"
    );

    let before = pool_value(&proxy, sent, user, user).await;
    let result = simple_value(&client, "select repeat('y', 200000)").await;
    assert_eq!(result.map(|r| r.len()), Some(200_000));
    let grown = pool_value(&proxy, sent, user, user).await - before;
    assert!(
        grown >= 200_000.0,
        "{sent} grew by {grown} for a 200 kB result"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_connect_errors_count_a_server_port_that_refuses() {
    let user = "connect_errors_role";
    let port = free_port();
    let db = "refusing_db";
    let section = format!("\n[[databases]]\nname = \"{db}\"\ndbname = \"app\"\nport = {port}\n");
    let proxy = proxy_with_metrics(user, "", &section).await;
    let name = "pgharbor_server_connect_errors_total";
    for attempt in 1..=2 {
        let e = try_connect(&dsn_as(&proxy, user, db))
            .await
            .expect_err("no server to log in to");
        let errors = pool_value(&proxy, name, db, user).await;
        assert!(
            errors >= attempt as f64,
            "{name} {errors} after {attempt} refusals ({e})"
        );
    }
    assert_eq!(
        pool_value(&proxy, name, user, user).await,
        0.0,
        "another pool counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_being_opened_shows_in_state_login() {
    let user = "login_state_role";
    // A "server" that accepts and never answers: pgharbor waits in the
    // login until server_connect_timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            sockets.push(s);
        }
    });
    let db = "silent_db";
    let section = format!("\n[[databases]]\nname = \"{db}\"\ndbname = \"app\"\nport = {port}\n");
    let proxy = proxy_with_metrics(user, "server_connect_timeout = \"4s\"", &section).await;
    let dsn = dsn_as(&proxy, user, db);
    let login = tokio::spawn(async move { try_connect(&dsn).await.is_err() });
    let seen = eventually(Duration::from_secs(3), || async {
        servers_in(&proxy, db, user, "login").await == 1.0
    })
    .await;
    assert!(seen, "no server in state login while one was being opened");
    let refused = tokio::time::timeout(Duration::from_secs(15), login)
        .await
        .expect("the login ends after server_connect_timeout")
        .expect("login task");
    assert!(refused, "a login with no server succeeded");
    assert_eq!(servers_in(&proxy, db, user, "login").await, 0.0);
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_being_checked_shows_in_state_testing() {
    let user = "testing_state_role";
    let extra = "server_check_query = \"select pg_sleep(1)\"\nserver_check_delay = \"0s\"";
    let proxy = proxy_with_metrics(user, extra, "").await;
    let client = connect_dsn(&dsn_as(&proxy, user, user)).await;
    // The first server is new (no check); the next checkout checks it.
    assert_eq!(
        simple_value(&client, "select 1").await.as_deref(),
        Some("1")
    );
    assert_eq!(servers_in(&proxy, user, user, "testing").await, 0.0);
    let query = tokio::spawn(async move { simple_value(&client, "select 2").await });
    let seen = eventually(Duration::from_secs(3), || async {
        servers_in(&proxy, user, user, "testing").await == 1.0
    })
    .await;
    assert!(seen, "no server in state testing during server_check_query");
    let got = tokio::time::timeout(Duration::from_secs(10), query)
        .await
        .expect("the query after the check")
        .expect("query task");
    assert_eq!(got.as_deref(), Some("2"));
    assert_eq!(servers_in(&proxy, user, user, "testing").await, 0.0);
}

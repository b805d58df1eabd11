//! `client_idle_timeout` and `idle_transaction_timeout` end the client the
//! way Postgres's `idle_session_timeout` and
//! `idle_in_transaction_session_timeout` do: one ErrorResponse of the same
//! severity and SQLSTATE, then a closed connection; the idle transaction's
//! work is not committed and its server is not left inside it.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::raw::{first_column, query, Msg, RawClient};
use crate::support::*;

fn direct_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], pg().port()))
}

/// Runs `sql` and checks it succeeded.
async fn run(c: &mut RawClient, sql: &str) -> Vec<Msg> {
    c.send(&query(sql)).await;
    let got = c.until_ready().await;
    assert!(
        got.iter().all(|m| m.tag != b'E'),
        "{sql}: {:?}",
        got.iter()
            .find(|m| m.tag == b'E')
            .and_then(|m| m.field(b'M'))
    );
    got
}

/// The ErrorResponse sent before the peer closed an idle connection, as
/// (severity, non-localized severity, SQLSTATE), and its message.
async fn fatal_when_idle(
    mut c: RawClient,
) -> ((Option<String>, Option<String>, Option<String>), String) {
    let got = c.until_closed(Duration::from_secs(10)).await;
    let errors: Vec<&Msg> = got.iter().filter(|m| m.tag == b'E').collect();
    assert_eq!(
        errors.len(),
        1,
        "one ErrorResponse before the close: {got:?}"
    );
    let e = errors[0];
    (
        (e.field(b'S'), e.field(b'V'), e.sqlstate()),
        e.field(b'M').unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_idle_timeout_sends_the_fatal_postgres_sends_for_idle_session_timeout() {
    let mut direct = RawClient::login(direct_addr(), USER, PASSWORD, "app").await;
    run(&mut direct, "SET idle_session_timeout = '1s'").await;
    let (postgres, _) = fatal_when_idle(direct).await;
    assert_eq!(postgres.2.as_deref(), Some("57P05"), "{postgres:?}");

    let user = "idle_client_role";
    let text = config_text_for_user("transaction", 1, "client_idle_timeout = \"1s\"", user);
    let proxy = start_proxy_with(&text).await;
    let mut c = RawClient::login(proxy.addr(), user, PASSWORD, user).await;
    run(&mut c, "select 1").await;
    let started = tokio::time::Instant::now();
    let (got, message) = fatal_when_idle(c).await;
    assert_eq!(
        got, postgres,
        "through pgharbor (left) and directly (right)"
    );
    assert!(message.starts_with("pgharbor: "), "{message}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before client_idle_timeout passed: {:?}",
        started.elapsed()
    );
}

/// The rows `tag` put in the test's table, read directly.
async fn committed_rows(tag: &str) -> i64 {
    let direct = connect_direct().await;
    direct
        .query_one("select count(*) from idle_txn_rows where tag = $1", &[&tag])
        .await
        .expect("count rows")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_transaction_timeout_sends_postgres_fatal_rolls_back_and_frees_the_server() {
    pg().psql(
        "app",
        "CREATE TABLE IF NOT EXISTS idle_txn_rows (tag text); GRANT ALL ON idle_txn_rows TO PUBLIC",
    )
    .expect("create table");
    let mut direct = RawClient::login(direct_addr(), USER, PASSWORD, "app").await;
    run(
        &mut direct,
        "SET idle_in_transaction_session_timeout = '1s'",
    )
    .await;
    run(&mut direct, "BEGIN").await;
    run(&mut direct, "INSERT INTO idle_txn_rows VALUES ('direct')").await;
    let (postgres, _) = fatal_when_idle(direct).await;
    assert_eq!(postgres.2.as_deref(), Some("25P03"), "{postgres:?}");
    assert_eq!(committed_rows("direct").await, 0, "Postgres rolled back");

    let user = "idle_txn_role";
    let text = config_text_for_user("transaction", 1, "idle_transaction_timeout = \"1s\"", user);
    let proxy = start_proxy_with(&text).await;
    let mut c = RawClient::login(proxy.addr(), user, PASSWORD, user).await;
    run(&mut c, "BEGIN").await;
    run(&mut c, "INSERT INTO idle_txn_rows VALUES ('proxied')").await;
    let (got, message) = fatal_when_idle(c).await;
    assert_eq!(
        got, postgres,
        "through pgharbor (left) and directly (right)"
    );
    assert!(message.starts_with("pgharbor: "), "{message}");
    assert_eq!(
        committed_rows("proxied").await,
        0,
        "the insert was committed"
    );

    // The pool's one server (or its replacement) serves the next client
    // outside any transaction: the insert is not visible to it either.
    let mut next = RawClient::login(proxy.addr(), user, PASSWORD, user).await;
    let got = run(
        &mut next,
        "select count(*) from idle_txn_rows where tag = 'proxied'",
    )
    .await;
    assert_eq!(first_column(&got), vec![Some("0".to_owned())]);
    let got = run(&mut next, "select now() = statement_timestamp()").await;
    assert_eq!(
        first_column(&got),
        vec![Some("t".to_owned())],
        "the next client's statement ran inside an older transaction"
    );
    let direct = connect_direct().await;
    let in_transaction: i64 = direct
        .query_one(
            "select count(*) from pg_stat_activity where usename = $1 and state like 'idle in transaction%'",
            &[&user],
        )
        .await
        .expect("pg_stat_activity")
        .get(0);
    assert_eq!(
        in_transaction, 0,
        "a server of the pool is left in a transaction"
    );
}

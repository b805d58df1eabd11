//! A client connection that ends with an error is counted in
//! `pgharbor_client_errors_total` under who failed: the client, the server
//! connection, or pgharbor.

use std::time::Duration;

use crate::support::raw::{first_column, msg, query, RawClient};
use crate::support::*;

/// The count of `pgharbor_client_errors_total{side="…"}`.
fn client_errors(proxy: &pgharbor::Proxy, side: &str) -> u64 {
    let text = proxy.state().metrics().render();
    let series = format!("pgharbor_client_errors_total{{side=\"{side}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .trim()
        .parse()
        .expect("a count")
}

/// Waits (at most 10 s) until the count of each side is as given.
async fn counts_become(proxy: &pgharbor::Proxy, want: [(&str, u64); 3]) {
    let reached = eventually(Duration::from_secs(10), || async {
        want.iter()
            .all(|&(side, n)| client_errors(proxy, side) == n)
    })
    .await;
    let seen = want.map(|(side, _)| (side, client_errors(proxy, side)));
    assert!(reached, "wanted {want:?}, counted {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_client_connection_is_counted_under_who_failed() {
    let proxy = start_proxy("transaction", 2).await;
    counts_become(&proxy, [("client", 0), ("server", 0), ("pgharbor", 0)]).await;

    // The client breaks the protocol: a message type no client sends.
    let mut raw = RawClient::login(proxy.addr(), USER, PASSWORD, "app").await;
    raw.send(&msg(b'!', &[])).await;
    let seen = raw.until_closed(Duration::from_secs(10)).await;
    assert!(seen.iter().any(|m| m.tag == b'E'), "{seen:?}");
    counts_become(&proxy, [("client", 1), ("server", 0), ("pgharbor", 0)]).await;

    // pgharbor refuses a database it does not serve.
    let refused = try_connect(&dsn(&proxy, "no_such_database")).await;
    assert!(refused.is_err(), "a database pgharbor does not serve");
    counts_become(&proxy, [("client", 1), ("server", 0), ("pgharbor", 1)]).await;

    // The server dies under a client in a transaction. The raw client
    // keeps its socket open, so pgharbor sees the server go first.
    let mut raw = RawClient::login(proxy.addr(), USER, PASSWORD, "app").await;
    raw.send(&query("begin")).await;
    raw.until_ready().await;
    raw.send(&query("select pg_backend_pid()")).await;
    let pid: i32 = first_column(&raw.until_ready().await)[0]
        .as_deref()
        .and_then(|p| p.parse().ok())
        .expect("the server's pid");
    let direct = connect_direct().await;
    let row = (direct
        .query_one("select pg_terminate_backend($1)", &[&pid])
        .await)
        .expect("pg_terminate_backend");
    assert!(row.get::<_, bool>(0), "the client's server was terminated");
    let seen = raw.until_closed(Duration::from_secs(10)).await;
    assert!(seen.iter().any(|m| m.tag == b'E'), "{seen:?}");
    counts_become(&proxy, [("client", 1), ("server", 1), ("pgharbor", 1)]).await;
}

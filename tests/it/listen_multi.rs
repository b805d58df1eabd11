//! LISTEN and UNLISTEN inside a simple Query with other statements, in
//! transaction mode: the other statements run on a server, LISTEN/UNLISTEN
//! take effect when the transaction commits (not at all when it fails), and
//! every CommandComplete comes in its place. Each test runs the same steps
//! on Postgres directly and compares what the client received.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::raw::{self, Msg, RawClient};
use crate::support::*;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_postgres::Notification;

const LIMIT: Duration = Duration::from_secs(30);

/// What the client saw of a message: its tag, and for errors the SQLSTATE
/// and the position, for CommandComplete the tag, for ReadyForQuery the
/// status, for DataRow its first column.
fn seen(m: &Msg) -> String {
    match m.tag {
        b'E' | b'N' => format!(
            "{}:{}:{}",
            m.tag as char,
            m.sqlstate().unwrap_or_default(),
            m.field(b'P').unwrap_or_default()
        ),
        b'C' => format!(
            "C:{}",
            String::from_utf8_lossy(m.body.split(|&b| b == 0).next().unwrap_or(&[]))
        ),
        b'Z' => format!("Z:{}", m.body[0] as char),
        b'D' => format!("D:{:?}", raw::first_column(std::slice::from_ref(m))),
        t => (t as char).to_string(),
    }
}

/// Sends each query in turn on one connection to `addr` and returns what
/// came back for each (ParameterStatus aside).
async fn replies(addr: SocketAddr, queries: &[&str]) -> Vec<Vec<String>> {
    let mut c = RawClient::login(addr, USER, PASSWORD, "app").await;
    let mut all = Vec::new();
    for q in queries {
        c.send(&raw::query(q)).await;
        let got = tokio::time::timeout(LIMIT, c.until_ready())
            .await
            .expect("answered in time");
        all.push(got.iter().filter(|m| m.tag != b'S').map(seen).collect());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_statement_queries_with_listen_get_the_replies_postgres_gives() {
    let proxy = start_proxy("transaction", 1).await;
    let sessions: &[&[&str]] = &[
        // asyncpg's pool runs this on every release.
        &["SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;"],
        &["LISTEN lm_a; SELECT 1; UNLISTEN lm_a; LISTEN lm_b; SELECT 2"],
        &["SELECT 1; LISTEN lm_c; SELECT 1/0; LISTEN lm_d"],
        // Positions in errors stay those of the client's text.
        &[
            "LISTEN \"lm_ü\"; SELECT no_such_column",
            "LISTEN lm_e; SELEC 1",
        ],
        &["BEGIN; LISTEN lm_f; SELECT 3", "COMMIT"],
        &["BEGIN", "SELECT 1/0", "SELECT 1; LISTEN lm_g", "ROLLBACK"],
        &["LISTEN lm_h; COPY (SELECT 1) TO STDOUT; UNLISTEN *"],
    ];
    for queries in sessions {
        let want = replies(direct_addr(), queries).await;
        let got = replies(proxy.addr(), queries).await;
        assert_eq!(got, want, "{queries:?}");
    }
}

/// The next notification, whatever its channel.
async fn next(rx: &mut UnboundedReceiver<Notification>) -> (String, String) {
    let n = tokio::time::timeout(LIMIT, rx.recv())
        .await
        .expect("a notification in time")
        .expect("connection open");
    (n.channel().to_owned(), n.payload().to_owned())
}

/// Runs `steps` with a listening client on `dsn`, the NOTIFYs of others on
/// `other`; returns each step's outcome and the notifications received,
/// up to a sentinel sent last (so what must not come is seen not to).
async fn notifications(dsn: &str, other: &tokio_postgres::Client, steps: &[&str]) -> Vec<String> {
    let (c, mut rx) = listening_client(dsn).await;
    let mut log = Vec::new();
    for step in steps {
        let r = match step.strip_prefix("other: ") {
            Some(sql) => other.batch_execute(sql).await,
            None => c.batch_execute(step).await,
        };
        log.push(format!("{step}: {:?}", r.map_err(|e| sqlstate(&e))));
    }
    c.batch_execute("LISTEN lm_sentinel").await.unwrap();
    other
        .batch_execute("NOTIFY lm_sentinel, 'end'")
        .await
        .unwrap();
    loop {
        let n = next(&mut rx).await;
        log.push(format!("{n:?}"));
        if n.0 == "lm_sentinel" {
            return log;
        }
    }
}

async fn compare_notifications(steps: &[&str]) {
    let proxy = start_proxy("transaction", 1).await;
    let other = connect_direct().await;
    let want = notifications(&direct_dsn(), &other, steps).await;
    let got = notifications(&dsn(&proxy, "app"), &other, steps).await;
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_and_notify_in_one_batch_delivers_the_notification() {
    compare_notifications(&[
        "LISTEN lm_one; NOTIFY lm_one, 'hi'",
        "other: NOTIFY lm_one, 'from another'",
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_leaves_no_subscription() {
    compare_notifications(&[
        "LISTEN lm_failed; SELECT 1/0",
        "other: NOTIFY lm_failed, 'not for you'",
        "SELECT 1; UNLISTEN *; LISTEN lm_kept; SELECT 1/0",
        "other: NOTIFY lm_kept, 'still not'",
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_in_a_transaction_block_takes_effect_at_a_later_commit() {
    compare_notifications(&[
        "BEGIN; LISTEN lm_later; SELECT 1",
        "other: NOTIFY lm_later, 'before the commit'",
        "NOTIFY lm_later, 'own, in the transaction'",
        "COMMIT",
        "other: NOTIFY lm_later, 'after the commit'",
        "BEGIN; UNLISTEN lm_later; SELECT 1",
        "ROLLBACK",
        "other: NOTIFY lm_later, 'after the rollback'",
    ])
    .await;
}

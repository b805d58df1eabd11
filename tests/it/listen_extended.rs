//! LISTEN/UNLISTEN sent with the extended protocol through pgharbor in
//! transaction mode: answered by pgharbor exactly as Postgres answers them,
//! never run on a pool server.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::raw::{self, Msg, RawClient};
use crate::support::*;
use tokio::sync::mpsc;
use tokio_postgres::Notification;

async fn next_notification(rx: &mut mpsc::UnboundedReceiver<Notification>) -> Notification {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a notification arrives")
        .expect("connection open")
}

async fn nothing_arrives(rx: &mut mpsc::UnboundedReceiver<Notification>) -> bool {
    tokio::time::timeout(Duration::from_millis(300), rx.recv())
        .await
        .is_err()
}

/// What a client sees of one reply sequence: each message's tag with what
/// identifies it (command tag, SQLSTATE and message, parameter types).
fn transcript(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .map(|m| match m.tag {
            b'C' => format!("C {}", String::from_utf8_lossy(&m.body[..m.body.len() - 1])),
            b'E' => format!(
                "E {} {}",
                m.sqlstate().unwrap_or_default(),
                m.field(b'M').unwrap_or_default()
            ),
            b't' | b'Z' => format!("{} {:?}", m.tag as char, &m.body[..]),
            t => (t as char).to_string(),
        })
        .collect()
}

/// Sends each step, waits for its ReadyForQuery, and records the replies.
async fn run_script(addr: SocketAddr, steps: &[Vec<u8>]) -> Vec<Vec<String>> {
    let mut c = RawClient::login(addr, USER, PASSWORD, "app").await;
    let mut out = Vec::new();
    for step in steps {
        c.send(step).await;
        let msgs = tokio::time::timeout(Duration::from_secs(10), c.until_ready())
            .await
            .expect("ReadyForQuery");
        out.push(transcript(&msgs));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_listen_gets_exactly_the_replies_postgres_sends() {
    let proxy = start_proxy("transaction", 2).await;
    let cat = |parts: &[Vec<u8>]| parts.concat();
    let steps = vec![
        // Unnamed statement, Describe of the portal, one Sync group.
        cat(&[
            raw::parse("LISTEN raw_x"),
            raw::bind(),
            raw::describe_portal(),
            raw::execute(),
            raw::sync(),
        ]),
        // Named, with a declared parameter type, described.
        cat(&[
            raw::parse_named("s1", "UNLISTEN raw_x", &[23]),
            raw::statement_target(b'D', "s1"),
            raw::sync(),
        ]),
        // Wrong number of parameters: Postgres's error, then skip to Sync.
        cat(&[raw::bind_named("s1", &[]), raw::execute(), raw::sync()]),
        cat(&[raw::bind_named("s1", &["1"]), raw::execute(), raw::sync()]),
        // A name used twice.
        cat(&[
            raw::parse_named("s1", "LISTEN raw_other", &[]),
            raw::bind_named("s1", &["1"]),
            raw::execute(),
            raw::sync(),
        ]),
        // Mixed with an ordinary statement in one Sync group.
        cat(&[
            raw::parse("LISTEN raw_z"),
            raw::bind(),
            raw::execute(),
            raw::parse("SELECT 1"),
            raw::bind(),
            raw::execute(),
            raw::sync(),
        ]),
        // Inside an explicit transaction held on a server; the duplicate
        // name aborts it as Postgres would.
        raw::query("BEGIN"),
        cat(&[
            raw::parse("LISTEN raw_y"),
            raw::bind(),
            raw::execute(),
            raw::sync(),
        ]),
        cat(&[raw::parse_named("s1", "LISTEN raw_w", &[]), raw::sync()]),
        raw::query("COMMIT"),
        // Close, and a Sync on its own.
        cat(&[raw::statement_target(b'C', "s1"), raw::sync()]),
        raw::sync(),
        // Malformed LISTEN: the server's own syntax error.
        cat(&[raw::parse("LISTEN"), raw::sync()]),
    ];
    let direct: SocketAddr = format!("127.0.0.1:{}", pg().port()).parse().unwrap();
    let want = run_script(direct, &steps).await;
    let got = run_script(proxy.addr(), &steps).await;
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        assert_eq!(g, w, "step {i}: pgharbor's replies differ from Postgres's");
    }
    // The script did exercise what it is about.
    assert_eq!(want[0], ["1", "2", "n", "C LISTEN", "Z [73]"]);
    assert!(want[2][0].starts_with("E 08P01"));
    assert!(want[4][0].starts_with("E 42P05"));
    assert_eq!(want[9][0], "C ROLLBACK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_listen_is_answered_without_a_pool_server_and_delivers() {
    // A pool of one server, held by another client for the whole LISTEN.
    let proxy = start_proxy("transaction", 1).await;
    let holder = connect(&proxy, "app").await;
    holder.batch_execute("BEGIN").await.unwrap();
    let (c, mut rx) = listening_client(&dsn(&proxy, "app")).await;
    // tokio-postgres sends Parse/Describe/Sync, then Bind/Execute/Sync.
    tokio::time::timeout(Duration::from_secs(5), c.execute("LISTEN ext_a", &[]))
        .await
        .expect("LISTEN answered while the only server is busy")
        .unwrap();
    let stmt = tokio::time::timeout(Duration::from_secs(5), c.prepare("LISTEN \"Ext B\""))
        .await
        .expect("prepare answered while the only server is busy")
        .unwrap();
    assert!(stmt.columns().is_empty() && stmt.params().is_empty());
    c.execute(&stmt, &[]).await.unwrap();
    holder.batch_execute("COMMIT").await.unwrap();
    // The pool's server never ran it.
    let listening: i64 = c
        .query_one("select count(*) from pg_listening_channels()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(listening, 0, "LISTEN must not reach a pool server");
    let direct = connect_direct().await;
    direct
        .batch_execute("NOTIFY ext_a, 'one'; NOTIFY \"Ext B\", 'two'")
        .await
        .unwrap();
    let a = next_notification(&mut rx).await;
    let b = next_notification(&mut rx).await;
    assert_eq!((a.channel(), a.payload()), ("ext_a", "one"));
    assert_eq!((b.channel(), b.payload()), ("Ext B", "two"));
    c.execute("UNLISTEN ext_a", &[]).await.unwrap();
    direct
        .batch_execute("NOTIFY ext_a, 'gone'; NOTIFY \"Ext B\", 'still'")
        .await
        .unwrap();
    let b = next_notification(&mut rx).await;
    assert_eq!((b.channel(), b.payload()), ("Ext B", "still"));
    assert!(nothing_arrives(&mut rx).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_listen_in_a_transaction_follows_commit_and_rollback() {
    let proxy = start_proxy("transaction", 2).await;
    let (mut c, mut rx) = listening_client(&dsn(&proxy, "app")).await;
    let tx = c.transaction().await.unwrap();
    tx.execute("LISTEN ext_rolled_back", &[]).await.unwrap();
    tx.rollback().await.unwrap();
    let tx = c.transaction().await.unwrap();
    tx.execute("LISTEN ext_committed", &[]).await.unwrap();
    // Not yet: a LISTEN takes effect at COMMIT.
    let direct = connect_direct().await;
    direct
        .batch_execute("NOTIFY ext_committed, 'early'")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    direct
        .batch_execute("NOTIFY ext_rolled_back, 'no'; NOTIFY ext_committed, 'yes'")
        .await
        .unwrap();
    let n = next_notification(&mut rx).await;
    assert_eq!((n.channel(), n.payload()), ("ext_committed", "yes"));
    assert!(nothing_arrives(&mut rx).await);
}

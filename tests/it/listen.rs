//! LISTEN/NOTIFY through pgharbor in transaction mode: answered by pgharbor,
//! multiplexed on one listener connection, fanned out to subscribers.

use std::collections::HashMap;
use std::time::Duration;

use crate::support::*;

fn config(extra_listen: &str) -> String {
    format!(
        "{}\n[listen]\n{extra_listen}\n",
        config_text("transaction", 2, "")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_to_many_clients_on_one_listener_connection() {
    // Its own user, so its listener connection is told apart from those of
    // the other tests' instances.
    let text = format!(
        "{}\n[listen]\nclient_buffer = 20000\n",
        config_text_for_user("transaction", 2, "", "fanout")
    );
    let proxy = start_proxy_with(&text).await;
    let dsn = dsn_as(&proxy, "fanout", "fanout");
    let mut clients = Vec::new();
    for i in 0..200 {
        let (c, rx) = listening_client(&dsn).await;
        let ch = format!("fan_{}", i % 20);
        c.batch_execute(&format!("LISTEN {ch}")).await.unwrap();
        clients.push((c, rx, i % 20));
    }
    // Postgres sees one listener connection for the database.
    let direct = connect_direct().await;
    let listeners: i64 = direct
        .query_one(
            "select count(*) from pg_stat_activity where application_name = 'pgharbor-listener' and usename = 'fanout'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(listeners, 1);
    // 10,000 notifications, 500 per channel, in batches.
    for batch in 0..20 {
        direct
            .batch_execute(&format!(
                "select pg_notify('fan_' || (n % 20), (n / 20)::text) from generate_series({}, {}) n",
                batch * 500,
                batch * 500 + 499
            ))
            .await
            .unwrap();
    }
    for (_c, rx, ch) in clients.iter_mut() {
        let mut got = Vec::new();
        while got.len() < 500 {
            let n = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .expect("notifications keep coming")
                .expect("connection open");
            assert_eq!(n.channel(), format!("fan_{ch}"), "only subscribed channels");
            got.push(n.payload().parse::<i32>().unwrap());
        }
        let want: Vec<i32> = (0..500).collect();
        assert_eq!(got, want, "all delivered, in order");
        // Nothing else arrives.
        assert!(tokio::time::timeout(Duration::from_millis(50), rx.recv())
            .await
            .is_err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_in_a_transaction_takes_effect_at_commit() {
    let proxy = start_proxy_with(&config("")).await;
    let (c, mut rx) = listening_client(&dsn(&proxy, "app")).await;
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("LISTEN tx_a").await.unwrap();
    c.batch_execute("ROLLBACK").await.unwrap();
    // Mixed with other statements in one query: as if sent one by one.
    c.batch_execute("BEGIN; LISTEN tx_c; ROLLBACK")
        .await
        .unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("LISTEN tx_b").await.unwrap();
    c.batch_execute("COMMIT").await.unwrap();
    let direct = connect_direct().await;
    direct
        .batch_execute("NOTIFY tx_a, 'no'; NOTIFY tx_b, 'yes'")
        .await
        .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((n.channel(), n.payload()), ("tx_b", "yes"));
    assert!(tokio::time::timeout(Duration::from_millis(300), rx.recv())
        .await
        .is_err());
    // UNLISTEN * stops everything.
    c.batch_execute("UNLISTEN *").await.unwrap();
    direct.batch_execute("NOTIFY tx_b, 'late'").await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(300), rx.recv())
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quoted_unicode_channels_and_large_payloads_arrive_intact() {
    let proxy = start_proxy_with(&config("")).await;
    let (c, mut rx) = listening_client(&dsn(&proxy, "app")).await;
    c.batch_execute(r#"LISTEN "Mixed Case ""q"""; LISTEN "käse_🧀"; LISTEN Folded"#)
        .await
        .unwrap();
    // A NOTIFY sent through pgharbor (on a pool server) arrives too.
    let sender = connect(&proxy, "app").await;
    let big: String = "x".repeat(7999);
    sender
        .simple_query(&format!(
            r#"NOTIFY "Mixed Case ""q""", 'one'; select pg_notify('käse_🧀', '{big}'); NOTIFY folded, 'three'"#
        ))
        .await
        .unwrap();
    let mut got = HashMap::new();
    for _ in 0..3 {
        let n = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        got.insert(n.channel().to_string(), n.payload().to_string());
    }
    assert_eq!(got["Mixed Case \"q\""], "one");
    assert_eq!(got["käse_🧀"], big);
    assert_eq!(got["folded"], "three");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_does_not_take_a_pool_server() {
    let proxy = start_proxy_with(&config("")).await;
    let holder = connect(&proxy, "app").await;
    let holder2 = connect(&proxy, "app").await;
    holder.batch_execute("BEGIN").await.unwrap();
    holder2.batch_execute("BEGIN").await.unwrap();
    // Both servers of the pool are busy; LISTEN is answered anyway.
    let (c, _rx) = listening_client(&dsn(&proxy, "app")).await;
    tokio::time::timeout(
        Duration::from_secs(5),
        c.batch_execute("LISTEN free_of_pool"),
    )
    .await
    .expect("LISTEN answered without a pool server")
    .unwrap();
    holder.batch_execute("COMMIT").await.unwrap();
    holder2.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_listener_connection_is_restored_with_a_marker() {
    let text = format!(
        "{}\n[listen]\noverflow_payload = \"rescan\"\n",
        config_text_for_user("transaction", 2, "", "relisten")
    );
    let proxy = start_proxy_with(&text).await;
    let (c, mut rx) = listening_client(&dsn_as(&proxy, "relisten", "relisten")).await;
    c.batch_execute("LISTEN phoenix").await.unwrap();
    let direct = connect_direct().await;
    direct
        .batch_execute("select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'pgharbor-listener' and usename = 'relisten'")
        .await
        .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("marker after reconnect")
        .unwrap();
    assert_eq!(
        (n.channel(), n.payload(), n.process_id()),
        ("phoenix", "rescan", 0)
    );
    // Subscriptions are back: later notifications arrive.
    let mut ok = false;
    for _ in 0..30 {
        direct
            .batch_execute("NOTIFY phoenix, 'again'")
            .await
            .unwrap();
        if let Ok(Some(n)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
            if n.payload() == "again" {
                ok = true;
                break;
            }
        }
    }
    assert!(
        ok,
        "notifications flow again after the listener reconnected"
    );
}

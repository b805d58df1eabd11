//! The LISTEN hub against a real Postgres: one listener connection per
//! database, fan-out, bounded buffers, overflow policies, reconnection.
//! Each test uses its own role, so its listener connection is its own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use bytes::BytesMut;
use pgharbor::auth::credential::ServerCredential;
use pgharbor::config::{Endpoint, ListenConfig, OverflowPolicy};
use pgharbor::listen::{self, ListenCommand, ListenHub, PendingListens, Subscriber};
use pgharbor::metrics::Metrics;
use pgharbor::server::{ServerKey, ServerTarget};

type Note = (i32, String, String);

fn role(name: &str) -> ServerTarget {
    let pg = pg();
    pg.create_user(name, "pw", "scram-sha-256").expect("role");
    ServerTarget {
        endpoints: vec![Endpoint {
            host: pg.host().to_string(),
            port: pg.port(),
        }]
        .into(),
        session_attrs: Default::default(),
        load_balance: Default::default(),
        last_good: Default::default(),
        dbname: "app".into(),
        user: name.into(),
        credential: Arc::new(ServerCredential::new("pw")),
        connect_timeout: Duration::from_secs(5),
        failover_timeout: Duration::ZERO,
        tls: Default::default(),
        tcp: Default::default(),
    }
}

fn hub(client_buffer: usize, on_overflow: OverflowPolicy) -> (Arc<ListenHub>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let cfg = ListenConfig {
        client_buffer,
        on_overflow,
        overflow_payload: "pgharbor:overflow".into(),
    };
    (ListenHub::new(cfg, metrics.clone()), metrics)
}

fn decode(mut buf: &[u8], out: &mut Vec<Note>) {
    while !buf.is_empty() {
        assert_eq!(buf[0], b'A', "only NotificationResponse");
        let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        let body = &buf[5..len + 1];
        let pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        let mut parts = body[4..].split(|&b| b == 0);
        let ch = String::from_utf8(parts.next().unwrap().to_vec()).unwrap();
        let p = String::from_utf8(parts.next().unwrap().to_vec()).unwrap();
        out.push((pid, ch, p));
        buf = &buf[len + 1..];
    }
}

/// Drains until `pred` holds for what was received, or `timeout`.
async fn collect_until(
    sub: &mut Subscriber,
    got: &mut Vec<Note>,
    timeout: Duration,
    pred: impl Fn(&[Note]) -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let mut buf = BytesMut::new();
        sub.drain_into(&mut buf);
        decode(&buf, got);
        if pred(got) {
            return true;
        }
        if let Some(f) = sub.take_fatal() {
            panic!("unexpected FATAL: {f}");
        }
        if tokio::time::timeout_at(deadline, sub.ready())
            .await
            .is_err()
        {
            return false;
        }
    }
}

async fn listeners_of(direct: &tokio_postgres::Client, user: &str) -> Vec<i32> {
    direct
        .query(
            "select pid from pg_stat_activity where application_name = $1 and usename = $2",
            &[&listen::APPLICATION_NAME, &user],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn quote_lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_subscribers_get_every_notification_of_their_channel_only() {
    let target = role("listen_fanout");
    let (hub, metrics) = hub(1000, OverflowPolicy::Marker);
    let mut subs: Vec<Subscriber> = (0..200)
        .map(|i| hub.subscriber(&target, 1000 + i))
        .collect();
    let listens = subs
        .iter_mut()
        .enumerate()
        .map(|(i, s)| async move { s.listen(&format!("ch{}", i % 20)).await });
    for r in futures_util::future::join_all(listens).await {
        r.expect("listen");
    }
    let direct = connect_direct().await;
    assert_eq!(listeners_of(&direct, "listen_fanout").await.len(), 1);
    assert_eq!(metrics.listen_channels.get(), 20);
    assert_eq!(metrics.listen_subscriptions.get(), 200);

    // Every subscriber drains concurrently while 10,000 NOTIFYs flow.
    let readers: Vec<_> = subs
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            tokio::spawn(async move {
                let mut got = Vec::new();
                let ok = collect_until(&mut s, &mut got, Duration::from_secs(60), |g| {
                    g.len() >= 500
                })
                .await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                let mut buf = BytesMut::new();
                s.drain_into(&mut buf);
                decode(&buf, &mut got);
                (i, ok, got)
            })
        })
        .collect();
    for batch in 0..100 {
        let mut sql = String::new();
        for k in 0..100 {
            let n = batch * 100 + k;
            sql.push_str(&format!("NOTIFY ch{}, '{}';", n % 20, n / 20));
        }
        direct.batch_execute(&sql).await.unwrap();
    }
    for r in readers {
        let (i, ok, got) = r.await.unwrap();
        assert!(ok, "subscriber {i} got only {} notifications", got.len());
        assert_eq!(got.len(), 500, "subscriber {i}: exactly its channel's");
        let ch = format!("ch{}", i % 20);
        for (seq, (_, c, p)) in got.iter().enumerate() {
            assert_eq!(c, &ch, "subscriber {i} got another channel");
            assert_eq!(p, &seq.to_string(), "subscriber {i}: order");
        }
    }
    assert_eq!(metrics.listen_notifications.get(), 200 * 500);
    assert_eq!(metrics.listen_dropped.get(), 0);
    // Everyone left: the listener UNLISTENed everything.
    assert!(
        eventually(Duration::from_secs(5), || async {
            metrics.listen_channels.get() == 0
        })
        .await
    );
    assert_eq!(metrics.listen_subscriptions.get(), 0);
}

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_that_never_drains_stays_bounded_and_gets_one_marker_per_channel() {
    let target = role("listen_slow");
    let (hub, metrics) = hub(1000, OverflowPolicy::Marker);
    let mut slow = hub.subscriber(&target, 1);
    let mut fast = hub.subscriber(&target, 2);
    for ch in ["big_a", "big_b"] {
        slow.listen(ch).await.unwrap();
        fast.listen(ch).await.unwrap();
    }
    let rss_before = rss_bytes();
    const TOTAL: usize = 100_000;
    let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let received2 = received.clone();
    let reader = tokio::spawn(async move {
        let (mut n, mut per) = (0usize, [0usize; 2]);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        while n < TOTAL {
            if tokio::time::timeout_at(deadline, fast.ready())
                .await
                .is_err()
            {
                break;
            }
            let mut buf = BytesMut::new();
            fast.drain_into(&mut buf);
            let mut got = Vec::new();
            decode(&buf, &mut got);
            for (_, c, p) in got {
                assert_ne!(p, "pgharbor:overflow", "the fast reader never overflows");
                let i = usize::from(c == "big_b");
                assert_eq!(p[..p.find(':').unwrap()], per[i].to_string(), "order");
                per[i] += 1;
                n += 1;
            }
            received2.store(n, std::sync::atomic::Ordering::Relaxed);
        }
        n
    });
    let direct = connect_direct().await;
    let pad = "x".repeat(1000);
    let mut max_queued = 0;
    for batch in 0..(TOTAL / 500) {
        let mut sql = String::new();
        for k in 0..500 {
            let n = batch * 500 + k;
            let ch = if n % 2 == 0 { "big_a" } else { "big_b" };
            sql.push_str(&format!("NOTIFY {ch}, '{}:{pad}';", n / 2));
        }
        direct.batch_execute(&sql).await.unwrap();
        max_queued = max_queued.max(slow.queued());
        // The other client reads as fast as it can; keep at most one batch
        // ahead of it, as its socket would (buffer 1000 > batch 500).
        let sent = (batch + 1) * 500;
        let r = &received;
        assert!(
            eventually(Duration::from_secs(30), || async move {
                r.load(std::sync::atomic::Ordering::Relaxed) + 500 >= sent
            })
            .await
        );
    }
    assert_eq!(
        reader.await.unwrap(),
        TOTAL,
        "the other client got everything"
    );
    max_queued = max_queued.max(slow.queued());
    assert!(max_queued <= 1000, "queue held {max_queued}");
    let grown = rss_bytes().saturating_sub(rss_before);
    assert!(grown < 50 << 20, "RSS grew by {} MB", grown >> 20);

    let mut got = Vec::new();
    let mut buf = BytesMut::new();
    slow.drain_into(&mut buf);
    decode(&buf, &mut got);
    let markers: Vec<_> = got
        .iter()
        .filter(|(_, _, p)| p == "pgharbor:overflow")
        .collect();
    assert_eq!(markers.len(), 2, "one marker per channel");
    assert!(markers.iter().all(|(pid, _, _)| *pid == 0));
    assert!(got.len() <= 1000 + 2);
    assert!(metrics.listen_dropped.get() >= (TOTAL - 1000) as u64);
    assert_eq!(metrics.listen_overflows.get(), 1);
    // Room again: new notifications flow normally, no further marker.
    direct.batch_execute("NOTIFY big_a, 'after'").await.unwrap();
    let mut more = Vec::new();
    assert!(
        collect_until(&mut slow, &mut more, Duration::from_secs(10), |g| !g
            .is_empty())
        .await
    );
    assert_eq!(more[0].2, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disconnect_policy_ends_only_the_slow_client() {
    let target = role("listen_disc");
    let (hub, _metrics) = hub(10, OverflowPolicy::Disconnect);
    let mut slow = hub.subscriber(&target, 1);
    let mut fast = hub.subscriber(&target, 2);
    slow.listen("d").await.unwrap();
    fast.listen("d").await.unwrap();
    let direct = connect_direct().await;
    // The fast client keeps up with batches of 10; the slow one never reads.
    let mut got = Vec::new();
    for batch in 0..5 {
        let sql: String = (0..10)
            .map(|i| format!("NOTIFY d, '{batch}-{i}';"))
            .collect();
        direct.batch_execute(&sql).await.unwrap();
        let want = 10 * (batch + 1);
        assert!(
            collect_until(&mut fast, &mut got, Duration::from_secs(10), |g| g.len()
                == want)
            .await
        );
    }
    tokio::time::timeout(Duration::from_secs(5), slow.ready())
        .await
        .expect("ready with the FATAL");
    let fatal = slow.take_fatal().expect("disconnect policy fired");
    assert!(fatal.is_fatal());
    assert_eq!(fatal.code, "54000");
    assert!(
        fatal.message.contains("listen.client_buffer (10)"),
        "{}",
        fatal.message
    );
    assert!(slow.take_fatal().is_none());
    assert!(fast.take_fatal().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_listener_is_replaced_and_everyone_gets_the_marker() {
    let target = role("listen_kill");
    let (hub, metrics) = hub(100, OverflowPolicy::Marker);
    let mut subs: Vec<Subscriber> = (0..6).map(|i| hub.subscriber(&target, 100 + i)).collect();
    for (i, s) in subs.iter_mut().enumerate() {
        s.listen(if i % 2 == 0 { "k_even" } else { "k_odd" })
            .await
            .unwrap();
        if i == 0 {
            s.listen("k_odd").await.unwrap();
        }
    }
    let direct = connect_direct().await;
    let before = listeners_of(&direct, "listen_kill").await;
    assert_eq!(before.len(), 1);
    let killed: bool = direct
        .query_one("select pg_terminate_backend($1)", &[&before[0]])
        .await
        .unwrap()
        .get(0);
    assert!(killed);
    let started = Instant::now();
    for (i, s) in subs.iter_mut().enumerate() {
        let mut got = Vec::new();
        let want = if i == 0 { 2 } else { 1 };
        let ok = collect_until(s, &mut got, Duration::from_secs(10), |g| {
            g.iter()
                .filter(|(p, _, m)| *p == 0 && m == "pgharbor:overflow")
                .count()
                >= want
        })
        .await;
        assert!(ok, "subscriber {i} got {got:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let after = listeners_of(&direct, "listen_kill").await;
    assert_eq!(after.len(), 1);
    assert_ne!(after, before);
    assert_eq!(metrics.listen_channels.get(), 2);
    direct
        .batch_execute("NOTIFY k_even, 'e'; NOTIFY k_odd, 'o'")
        .await
        .unwrap();
    for (i, s) in subs.iter_mut().enumerate() {
        let mut got = Vec::new();
        let want = if i == 0 { 2 } else { 1 };
        assert!(
            collect_until(s, &mut got, Duration::from_secs(10), |g| g.len() >= want).await,
            "subscriber {i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quoted_unicode_names_and_large_payloads_arrive_intact() {
    let target = role("listen_names");
    let (hub, _metrics) = hub(100, OverflowPolicy::Marker);
    let mut sub = hub.subscriber(&target, 42);
    let long = format!("\"{}\"", "ü".repeat(40)); // 80 bytes → 31 chars kept
    let mut names = Vec::new();
    for sql in [
        r#"LISTEN "Mixed Case ""quoted""; -- x""#,
        "LISTEN Канал_📣",
        r#"LISTEN U&"\0441\+01F600""#,
        &format!("LISTEN {long}"),
    ] {
        let Ok(Some(ListenCommand::Listen(ch))) = listen::parse(sql) else {
            panic!("{sql}");
        };
        sub.listen(&ch).await.unwrap();
        names.push(ch);
    }
    assert_eq!(names[0], "Mixed Case \"quoted\"; -- x");
    assert_eq!(names[1], "Канал_📣", "only ASCII folds");
    assert_eq!(names[3], "ü".repeat(31));
    let direct = connect_direct().await;
    let payload: String = "é漢🙂a".chars().cycle().take(7999).collect::<String>();
    let payload = {
        let mut p = payload;
        while p.len() > 7999 {
            p.pop();
        }
        p
    };
    for ch in &names {
        direct
            .execute("select pg_notify($1, $2)", &[ch, &payload])
            .await
            .unwrap();
        // Postgres truncates a NOTIFY channel exactly as the listener did.
        direct
            .batch_execute(&format!(
                "NOTIFY {}, {}",
                pgharbor::sql::quote::quote_ident(ch),
                quote_lit("short")
            ))
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    assert!(
        collect_until(&mut sub, &mut got, Duration::from_secs(10), |g| g.len()
            >= 8)
        .await,
        "{got:?}"
    );
    for (i, ch) in names.iter().enumerate() {
        assert_eq!(&got[2 * i].1, ch);
        assert_eq!(got[2 * i].2, payload);
        assert_eq!(got[2 * i + 1].2, "short");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pending_listens_apply_at_commit_only_and_pids_are_rewritten_when_known() {
    let target = role("listen_tx");
    let (hub, metrics) = hub(100, OverflowPolicy::Marker);
    let mut sub = hub.subscriber(&target, 777);
    let mut pending = PendingListens::new();
    pending.push(ListenCommand::Listen("tx_a".into()));
    pending.rollback();
    pending.commit(&mut sub).await.unwrap();
    pending.push(ListenCommand::Listen("tx_b".into()));
    pending.commit(&mut sub).await.unwrap();
    assert_eq!(sub.channels().collect::<Vec<_>>(), ["tx_b"]);

    let direct = connect_direct().await;
    let backend: i32 = direct
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    direct
        .batch_execute("NOTIFY tx_a, 'no'; NOTIFY tx_b, 'server pid'")
        .await
        .unwrap();
    let mut got = Vec::new();
    assert!(
        collect_until(&mut sub, &mut got, Duration::from_secs(10), |g| !g
            .is_empty())
        .await
    );
    // pgharbor lends that backend to client 4242: its notifications say so.
    let key = ServerKey {
        addr: format!("{}:{}", pg().host(), pg().port()).parse().unwrap(),
        pid: backend,
        secret: 0,
    };
    hub.note_server_pid(&key, 4242);
    direct
        .batch_execute("NOTIFY tx_b, 'client pid'")
        .await
        .unwrap();
    hub.forget_server_pid(&key);
    assert!(
        collect_until(&mut sub, &mut got, Duration::from_secs(10), |g| g.len()
            >= 2)
        .await
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut buf = BytesMut::new();
    sub.drain_into(&mut buf);
    decode(&buf, &mut got);
    assert_eq!(
        got,
        vec![
            (backend, "tx_b".to_string(), "server pid".to_string()),
            (4242, "tx_b".to_string(), "client pid".to_string()),
        ]
    );
    // UNLISTEN of the last subscriber reaches the listener.
    sub.unlisten("tx_b");
    assert!(
        eventually(Duration::from_secs(5), || async {
            metrics.listen_channels.get() == 0
        })
        .await
    );
    let mut pending = PendingListens::new();
    pending.push(ListenCommand::Listen("tx_c".into()));
    pending.push(ListenCommand::UnlistenAll);
    pending.commit(&mut sub).await.unwrap();
    assert_eq!(sub.channels().count(), 0);
}

//! The process id a client is given in BackendKeyData means what it means on
//! Postgres: in session mode it is the client's server's own pid
//! (`pg_backend_pid()`, `pg_terminate_backend`, a notification's sender), and
//! in transaction mode a client's own notifications carry it, however busy
//! the pool. Each check runs against Postgres directly first and through
//! pgharbor after, and asserts the same of both.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::support::raw::{first_column, query, Msg, RawClient};
use crate::support::*;
use bytes::Buf;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

fn direct_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], pg().port()))
}

async fn login(addr: SocketAddr, db: &str) -> RawClient {
    RawClient::login(addr, USER, PASSWORD, db).await
}

fn key_pid(c: &RawClient) -> i32 {
    c.backend_key.expect("a BackendKeyData at login").0
}

async fn backend_pid(c: &mut RawClient) -> i32 {
    c.send(&query("select pg_backend_pid()")).await;
    let got = c.until_ready().await;
    first_column(&got)[0]
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {got:?}"))
}

/// A NotificationResponse's process id and channel.
fn notification(m: &Msg) -> (i32, String) {
    let mut b = m.body.clone();
    let pid = b.get_i32();
    let end = b.iter().position(|&c| c == 0).expect("channel");
    (pid, String::from_utf8_lossy(&b[..end]).into_owned())
}

#[tokio::test]
async fn in_session_mode_the_key_carries_the_servers_pid_as_on_postgres() {
    let proxy = start_proxy("session", 2).await;
    for (what, addr, db) in [
        ("postgres", direct_addr(), "app"),
        ("pgharbor session mode", proxy.addr(), "app_session"),
    ] {
        let mut c = login(addr, db).await;
        assert_eq!(
            backend_pid(&mut c).await,
            key_pid(&c),
            "{what}: pg_backend_pid() is the BackendKeyData pid"
        );
    }
}

#[tokio::test]
async fn terminating_the_session_mode_pid_ends_that_session_with_57p01_as_on_postgres() {
    let proxy = start_proxy("session", 2).await;
    let admin = connect_direct().await;
    let mut seen = Vec::new();
    for (addr, db) in [(direct_addr(), "app"), (proxy.addr(), "app_session")] {
        let mut c = login(addr, db).await;
        let pid = key_pid(&c);
        let row = admin
            .query_one("select pg_terminate_backend($1)", &[&pid])
            .await
            .expect("pg_terminate_backend");
        let terminated: bool = row.get(0);
        let got = c.until_closed(Duration::from_secs(10)).await;
        let errors: Vec<_> = got
            .iter()
            .filter(|m| m.tag == b'E')
            .map(|m| (m.field(b'S'), m.sqlstate()))
            .collect();
        seen.push((terminated, errors));
    }
    assert_eq!(
        seen[0],
        (true, vec![(Some("FATAL".into()), Some("57P01".into()))]),
        "postgres"
    );
    assert_eq!(seen[1], seen[0], "pgharbor answers as postgres does");
}

#[tokio::test]
async fn in_session_mode_a_notification_to_oneself_carries_the_key_pid_as_on_postgres() {
    let proxy = start_proxy("session", 2).await;
    for (what, addr, db) in [
        ("postgres", direct_addr(), "app"),
        ("pgharbor session mode", proxy.addr(), "app_session"),
    ] {
        let mut c = login(addr, db).await;
        c.send(&query("LISTEN self_pid; NOTIFY self_pid, 'hi'"))
            .await;
        let got = c.until_ready().await;
        let notes: Vec<_> = got
            .iter()
            .filter(|m| m.tag == b'A')
            .map(notification)
            .collect();
        assert_eq!(
            notes,
            vec![(key_pid(&c), "self_pid".to_string())],
            "{what}: {got:?}"
        );
    }
}

/// Reads into `got` until it holds `count` notifications, for at most ten
/// seconds.
async fn await_notifications(c: &mut RawClient, got: &mut Vec<Msg>, count: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got.iter().filter(|m| m.tag == b'A').count() < count {
        match tokio::time::timeout_at(deadline, c.recv()).await {
            Ok(Some(m)) => got.push(m),
            _ => break,
        }
    }
}

/// Each of `clients` listens on its own channel (named from `prefix`) and
/// notifies it `rounds` times, all at once; returns, per client, whether
/// every notification it got carried its own key pid, and how many it got.
async fn notify_own_channels(
    addr: SocketAddr,
    db: &str,
    prefix: &'static str,
    clients: usize,
    rounds: usize,
) -> Vec<(bool, usize)> {
    let mut tasks = Vec::new();
    for i in 0..clients {
        let db = db.to_string();
        tasks.push(tokio::spawn(async move {
            let mut c = login(addr, &db).await;
            let me = key_pid(&c);
            let channel = format!("{prefix}_{i}");
            c.send(&query(&format!("LISTEN {channel}"))).await;
            let mut got = c.until_ready().await;
            for n in 0..rounds {
                c.send(&query(&format!("NOTIFY {channel}, '{n}'"))).await;
                got.extend(c.until_ready().await);
            }
            await_notifications(&mut c, &mut got, rounds).await;
            let notes: Vec<_> = got
                .iter()
                .filter(|m| m.tag == b'A')
                .map(notification)
                .collect();
            let all_mine = notes.iter().all(|(pid, ch)| *pid == me && *ch == channel);
            (all_mine, notes.len())
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("client task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_transaction_mode_each_clients_own_notifications_carry_its_pid_as_on_postgres() {
    const CLIENTS: usize = 20;
    const ROUNDS: usize = 5;
    let proxy = start_proxy("transaction", 2).await;
    let direct = notify_own_channels(direct_addr(), "app", "own_pid", CLIENTS, ROUNDS).await;
    assert_eq!(direct, vec![(true, ROUNDS); CLIENTS], "postgres");
    let pooled = notify_own_channels(proxy.addr(), "app_tx", "own_pid", CLIENTS, ROUNDS).await;
    assert_eq!(pooled, direct, "pgharbor, {CLIENTS} clients over 2 servers");
}

/// How a client sees one notification: whose pid it carries (its own key
/// pid, its peer's, or neither) and its payload.
type Seen = Vec<(&'static str, String)>;

/// Whose a notification's `pid` is, to the client `mine` whose peer is
/// `peer`.
fn whose(pid: i32, mine: i32, peer: i32) -> &'static str {
    match pid {
        p if p == mine => "mine",
        p if p == peer => "the peer's",
        _ => "neither's",
    }
}

/// What each of the two clients' tasks saw.
async fn both(tasks: Vec<tokio::task::JoinHandle<Seen>>) -> [Seen; 2] {
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("client task"));
    }
    out.try_into().expect("two clients")
}

/// Two clients listen on one channel and notify it `rounds` times each, at
/// once, alternately with a payload both send and one of their own; each
/// returns what it saw, sorted.
async fn notify_one_channel_in_pairs(addr: SocketAddr, db: &str, rounds: usize) -> [Seen; 2] {
    const CHANNEL: &str = "shared_pid";
    let mut pair = Vec::new();
    for _ in 0..2 {
        let mut c = login(addr, db).await;
        c.send(&query(&format!("LISTEN {CHANNEL}"))).await;
        c.until_ready().await;
        pair.push(c);
    }
    let pids = [key_pid(&pair[0]), key_pid(&pair[1])];
    let expected = 2 * 2 * rounds;
    let mut tasks = Vec::new();
    for (me, mut c) in pair.into_iter().enumerate() {
        let (mine, peer) = (pids[me], pids[1 - me]);
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for n in 0..rounds {
                for payload in ["same".to_string(), format!("{me}-{n}")] {
                    c.send(&query(&format!("NOTIFY {CHANNEL}, '{payload}'")))
                        .await;
                    got.extend(c.until_ready().await);
                }
            }
            await_notifications(&mut c, &mut got, expected).await;
            let mut seen: Seen = (got.iter().filter(|m| m.tag == b'A'))
                .map(|m| {
                    let pid = m.body.clone().get_i32();
                    let payload = m.body[4..].split(|&b| b == 0).nth(1).unwrap_or_default();
                    let payload = String::from_utf8_lossy(payload).into_owned();
                    (whose(pid, mine, peer), payload)
                })
                .collect();
            seen.sort();
            seen
        }));
    }
    both(tasks).await
}

/// Twenty clients on channels of their own and a pair on one channel, all
/// at once: what each saw of the pids (see `notify_own_channels` and
/// `notify_one_channel_in_pairs`).
async fn own_channels_beside_a_shared_one(
    addr: SocketAddr,
    db: &str,
) -> (Vec<(bool, usize)>, [Seen; 2]) {
    tokio::join!(
        notify_own_channels(addr, db, "beside_shared", 20, 3),
        notify_one_channel_in_pairs(addr, db, 10)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_transaction_mode_two_clients_notifying_one_channel_through_one_server_get_their_own_pids_as_on_postgres(
) {
    let direct = own_channels_beside_a_shared_one(direct_addr(), "app").await;
    assert_eq!(direct.0, vec![(true, 3); 20], "postgres");
    assert!(
        direct
            .1
            .iter()
            .flatten()
            .all(|(whose, _)| *whose != "neither's"),
        "postgres: {direct:?}"
    );
    for pool_size in [1, 2] {
        let proxy = start_proxy("transaction", pool_size).await;
        let pooled = own_channels_beside_a_shared_one(proxy.addr(), "app_tx").await;
        assert_eq!(pooled, direct, "pgharbor, a pool of {pool_size}");
    }
}

/// Client 0 notifies a channel nobody listens to; client 2 then listens
/// to it and client 1 sends the very same notification (one server in
/// transaction mode carries both). Whose pid the notification client 2
/// hears carries.
async fn a_notification_after_one_nobody_heard(addr: SocketAddr, db: &str) -> Vec<&'static str> {
    const CHANNEL: &str = "unheard_then_heard";
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(login(addr, db).await);
    }
    let steps = [
        // Some channel is listened to, so pgharbor's LISTEN hub runs.
        (2, "LISTEN unheard_other".to_string()),
        (0, format!("NOTIFY {CHANNEL}, 'same'")),
        (2, format!("LISTEN {CHANNEL}")),
        (1, format!("NOTIFY {CHANNEL}, 'same'")),
    ];
    let mut heard = Vec::new();
    for (k, sql) in steps {
        clients[k].send(&query(&sql)).await;
        heard.extend(clients[k].until_ready().await);
    }
    await_notifications(&mut clients[2], &mut heard, 1).await;
    let pids = [key_pid(&clients[0]), key_pid(&clients[1])];
    (heard.iter().filter(|m| m.tag == b'A'))
        .map(|m| match notification(m).0 {
            p if p == pids[1] => "its sender's",
            p if p == pids[0] => "the unheard sender's",
            _ => "neither's",
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_transaction_mode_a_notification_nobody_heard_is_never_taken_for_a_later_one_as_on_postgres(
) {
    let direct = a_notification_after_one_nobody_heard(direct_addr(), "app").await;
    assert_eq!(direct, vec!["its sender's"], "postgres");
    let proxy = start_proxy("transaction", 1).await;
    let pooled = a_notification_after_one_nobody_heard(proxy.addr(), "app_tx").await;
    assert_eq!(pooled, direct, "pgharbor, one server");
}

/// A socket that reads the pid of the BackendKeyData going by at login,
/// for a driver that does not tell it (tokio-postgres keeps it private).
struct KeySniffer {
    inner: tokio::net::TcpStream,
    /// The server's bytes read so far, until the login's ReadyForQuery.
    head: Vec<u8>,
    pid: Arc<OnceLock<i32>>,
    done: bool,
}

impl KeySniffer {
    /// Looks at the whole messages of `head` for the key's pid, up to the
    /// first ReadyForQuery.
    fn look(&mut self) {
        let mut at = 0;
        while let Some(header) = self.head.get(at..at + 5) {
            let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            let Some(body) = self.head.get(at + 5..at + 1 + len) else {
                return;
            };
            match header[0] {
                b'K' if body.len() >= 4 => {
                    let _ =
                        (self.pid).set(i32::from_be_bytes([body[0], body[1], body[2], body[3]]));
                }
                b'Z' => {
                    self.done = true;
                    self.head = Vec::new();
                    return;
                }
                _ => {}
            }
            at += 1 + len;
        }
    }
}

impl AsyncRead for KeySniffer {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if !self.done {
            let new = buf.filled()[before..].to_vec();
            self.head.extend_from_slice(&new);
            self.look();
        }
        polled
    }
}

impl AsyncWrite for KeySniffer {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A tokio-postgres client, the pid its BackendKeyData gave, and the
/// notifications it gets.
async fn driver_client(
    addr: SocketAddr,
    db: &str,
) -> (
    tokio_postgres::Client,
    i32,
    tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
) {
    let mut config = tokio_postgres::Config::new();
    config.user(USER).password(PASSWORD).dbname(db);
    let inner = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let pid = Arc::new(OnceLock::new());
    let socket = KeySniffer {
        inner,
        head: Vec::new(),
        pid: pid.clone(),
        done: false,
    };
    let (client, mut conn) = (config.connect_raw(socket, tokio_postgres::NoTls).await)
        .unwrap_or_else(|e| panic!("login to {addr}: {e}"));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = futures_util::StreamExt::next(&mut messages).await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send(n);
            }
        }
    });
    let pid = *pid.get().expect("a BackendKeyData at login");
    (client, pid, rx)
}

/// Two tokio-postgres clients listen on one channel and notify it
/// `rounds` times each, at once, by the extended protocol: with
/// `pg_notify($1, $2)` (a payload both send and one of their own, in the
/// binary format the driver sends text in) and with a prepared `NOTIFY`
/// of a literal payload both send. Each returns what it saw, sorted.
async fn notify_by_driver_in_pairs(addr: SocketAddr, db: &str, rounds: usize) -> [Seen; 2] {
    const CHANNEL: &str = "driver_pid";
    let mut pair = Vec::new();
    for _ in 0..2 {
        let (c, pid, notes) = driver_client(addr, db).await;
        c.batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .expect("listen");
        pair.push((c, pid, notes));
    }
    let pids = [pair[0].1, pair[1].1];
    let expected = 2 * 3 * rounds;
    let mut tasks = Vec::new();
    for (me, (c, _, mut notes)) in pair.into_iter().enumerate() {
        let (mine, peer) = (pids[me], pids[1 - me]);
        tasks.push(tokio::spawn(async move {
            let literal =
                (c.prepare(&format!("NOTIFY {CHANNEL}, 'lit'")).await).expect("prepare NOTIFY");
            for n in 0..rounds {
                for payload in ["same".to_string(), format!("{me}-{n}")] {
                    (c.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
                        .await)
                        .expect("pg_notify");
                }
                c.execute(&literal, &[]).await.expect("NOTIFY");
            }
            let mut seen: Seen = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while seen.len() < expected {
                let Ok(Some(note)) = tokio::time::timeout_at(deadline, notes.recv()).await else {
                    break;
                };
                let pid = note.process_id();
                seen.push((whose(pid, mine, peer), note.payload().to_string()));
            }
            seen.sort();
            seen
        }));
    }
    both(tasks).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_transaction_mode_notifications_a_driver_sends_by_the_extended_protocol_carry_the_senders_pid_as_on_postgres(
) {
    const ROUNDS: usize = 5;
    let direct = notify_by_driver_in_pairs(direct_addr(), "app", ROUNDS).await;
    for seen in &direct {
        assert_eq!(seen.len(), 2 * 3 * ROUNDS, "postgres: {direct:?}");
        assert!(
            seen.iter().all(|(whose, _)| *whose != "neither's"),
            "postgres: {direct:?}"
        );
    }
    for pool_size in [1, 2] {
        let proxy = start_proxy("transaction", pool_size).await;
        let pooled = notify_by_driver_in_pairs(proxy.addr(), "app_tx", ROUNDS).await;
        assert_eq!(pooled, direct, "pgharbor, a pool of {pool_size}");
    }
}

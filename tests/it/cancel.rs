//! Cancel requests through pgharbor: tokio-postgres and psql cancels, a
//! stress run that checks no cancel ever reaches another client's query,
//! wrong secrets, and cancels sent to a peer replica.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_postgres::{CancelToken, Client, NoTls, SimpleQueryMessage};

use crate::support::*;

const CANCELED: &str = "57014";

/// The proxy-issued key inside a CancelToken: let the token write its
/// CancelRequest into a pipe and read it back.
async fn key_of(token: &CancelToken) -> (i32, [u8; 4]) {
    let (ours, mut theirs) = tokio::io::duplex(64);
    let send = token.cancel_query_raw(ours, NoTls);
    let read = async move {
        let mut packet = [0u8; 16];
        theirs
            .read_exact(&mut packet)
            .await
            .expect("a CancelRequest");
        packet
    };
    let (sent, packet) = tokio::join!(send, read);
    sent.expect("cancel_query_raw");
    assert_eq!(i32::from_be_bytes(packet[0..4].try_into().unwrap()), 16);
    assert_eq!(
        i32::from_be_bytes(packet[4..8].try_into().unwrap()),
        80_877_102
    );
    let pid = i32::from_be_bytes(packet[8..12].try_into().unwrap());
    (pid, packet[12..16].try_into().unwrap())
}

/// A raw CancelRequest to `addr`; returns once pgharbor closed the
/// connection (as Postgres does when it has passed the request on).
async fn raw_cancel(addr: std::net::SocketAddr, pid: i32, secret: [u8; 4]) {
    use tokio::io::AsyncWriteExt;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut packet = Vec::new();
    packet.extend_from_slice(&16i32.to_be_bytes());
    packet.extend_from_slice(&80_877_102i32.to_be_bytes());
    packet.extend_from_slice(&pid.to_be_bytes());
    packet.extend_from_slice(&secret);
    s.write_all(&packet).await.unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    assert!(rest.is_empty(), "nothing is answered to a CancelRequest");
}

/// Sends `token`'s CancelRequest to `addr` and, unlike
/// `CancelToken::cancel_query`, waits until the receiver closed the
/// connection: then the request has been passed on and the backend
/// signalled.
async fn cancel_confirmed(token: &CancelToken, addr: std::net::SocketAddr) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    token.cancel_query_raw(&mut s, NoTls).await.unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    assert!(rest.is_empty(), "nothing is answered to a CancelRequest");
}

fn cancel_count(proxy: &pgharbor::Proxy, result: &str) -> u64 {
    proxy
        .state()
        .metrics()
        .cancel_requests
        .with_label_values(&[result])
        .get()
}

/// Runs `sql`, cancels it after `after` with `cancel`, and returns the error
/// code and how long the query took to end after the cancel was started.
async fn run_and_cancel<F, Fut>(client: &Client, sql: &str, after: Duration, cancel: F) -> Duration
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let query = async {
        let r = client.simple_query(sql).await;
        (r, Instant::now())
    };
    let cancel = async {
        tokio::time::sleep(after).await;
        let sent = Instant::now();
        cancel().await;
        sent
    };
    let ((result, ended), sent) = tokio::join!(query, cancel);
    let err = result.expect_err("the query was cancelled");
    assert_eq!(sqlstate(&err).as_deref(), Some(CANCELED), "{err}");
    ended.saturating_duration_since(sent)
}

async fn count_where(direct: &Client, sql: &str) -> i64 {
    direct.query_one(sql, &[]).await.unwrap().get(0)
}

/// No server of `USER` whose last query carries `marker` is left idle in
/// transaction or still running it. The marker keeps other tests' clients
/// of `USER`, which may well sit in a transaction meanwhile, out of the
/// count.
async fn servers_are_clean(direct: &Client, marker: &str) {
    let clean = eventually(Duration::from_secs(5), || async {
        let dirty = count_where(
            direct,
            &format!(
                "select count(*) from pg_stat_activity where usename = '{USER}' \
                 and (state like 'idle in transaction%' or state = 'active') \
                 and query like '%{marker}%' and pid <> pg_backend_pid()"
            ),
        )
        .await;
        dirty == 0
    })
    .await;
    assert!(clean, "a server was left in a transaction or still running");
}

async fn token_cancel_in(db: &str, marker: &str) {
    let proxy = start_proxy("transaction", 2).await;
    let client = connect(&proxy, db).await;
    let token = client.cancel_token();
    let sql = format!("select pg_sleep(30) /* {marker} */");
    let latency = run_and_cancel(&client, &sql, Duration::from_millis(300), || async {
        token.cancel_query(NoTls).await.expect("cancel_query");
    })
    .await;
    eprintln!("{db}: tokio-postgres cancel took {latency:?}");
    assert!(latency < Duration::from_secs(1), "{latency:?}");
    // cancel_query does not wait for pgharbor to finish, so neither do we.
    let counted = eventually(Duration::from_secs(5), || async {
        cancel_count(&proxy, "forwarded") == 1
    })
    .await;
    assert!(counted);

    // The session goes on, and the server it used is clean.
    let rows = client.simple_query("select 41 + 1").await.unwrap();
    let got = rows.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(got.as_deref(), Some("42"));
    let direct = connect_direct().await;
    servers_are_clean(&direct, marker).await;
    // In a transaction too: the cancelled transaction is rolled back by the
    // client, and the session still works.
    client.simple_query("begin").await.unwrap();
    let latency = run_and_cancel(&client, &sql, Duration::from_millis(300), || async {
        token.cancel_query(NoTls).await.expect("cancel_query");
    })
    .await;
    assert!(latency < Duration::from_secs(1), "{latency:?}");
    client.simple_query("rollback").await.unwrap();
    client.simple_query("select 1").await.unwrap();
    servers_are_clean(&direct, marker).await;
    // A cancel while the client is idle: in transaction mode it holds no
    // server, so nothing is sent; in session mode it goes to the server,
    // which ignores it. Either way the next query is not hit. The client
    // reads its ReadyForQuery before pgharbor gives the server back, so
    // wait for that first.
    if db == "app_tx" {
        let released = eventually(Duration::from_secs(5), || async {
            proxy
                .state()
                .pools()
                .all()
                .iter()
                .all(|p| p.stats.clients_active.get() == 0)
        })
        .await;
        assert!(released, "the server went back after the transaction");
    }
    cancel_confirmed(&token, proxy.addr()).await;
    if db == "app_tx" {
        assert_eq!(cancel_count(&proxy, "no_query"), 1);
    } else {
        // The second cancel (cancel_query, which does not wait) is counted
        // when pgharbor's forward is confirmed, which may come after the
        // client saw its query end.
        let counted = eventually(Duration::from_secs(5), || async {
            cancel_count(&proxy, "forwarded") == 3
        })
        .await;
        assert!(counted, "{}", cancel_count(&proxy, "forwarded"));
    }
    client.simple_query("select 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_cancel_in_session_mode() {
    token_cancel_in("app_session", "token-session").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_cancel_in_transaction_mode() {
    token_cancel_in("app_tx", "token-tx").await;
}

async fn psql_ctrl_c_in(db: &str, marker: &str) {
    let proxy = start_proxy("transaction", 2).await;
    let a = proxy.addr();
    let sql = format!("select pg_sleep(30) /* {marker} */");
    let mut child = Command::new(bin("psql"))
        .args(["-X", "-qAt", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", &a.ip().to_string(), "-p", &a.port().to_string()])
        .args(["-U", USER, "-d", db, "-c", &sql])
        .env("PGPASSWORD", PASSWORD)
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGSERVICE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run psql");
    // Ctrl-C once the query runs (at least 300 ms after the start).
    let direct = connect_direct().await;
    let running = eventually(Duration::from_secs(10), || async {
        let q = format!(
            "select count(*) from pg_stat_activity where state = 'active' and query like '%{marker}%' and pid <> pg_backend_pid()"
        );
        count_where(&direct, &q).await == 1
    })
    .await;
    assert!(running, "psql's query never started");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Instant::now();
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(1),
            "psql still runs 1 s after Ctrl-C"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let latency = sent.elapsed();
    eprintln!("{db}: psql Ctrl-C took {latency:?}");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success());
    assert!(
        stderr.contains("canceling statement due to user request"),
        "{stderr}"
    );
    servers_are_clean(&direct, marker).await;
    let out = psql(&proxy, USER, PASSWORD, db, "select 1").await;
    assert!(out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_ctrl_c_in_session_mode() {
    psql_ctrl_c_in("app_session", "psql-session").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_ctrl_c_in_transaction_mode() {
    psql_ctrl_c_in("app_tx", "psql-tx").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_cancels_nothing() {
    let proxy = start_proxy("transaction", 2).await;
    let client = connect(&proxy, "app").await;
    let (pid, secret) = key_of(&client.cancel_token()).await;
    assert!(pid > 0);
    assert!(i32::from_be_bytes(secret) > 0);
    let mut wrong = secret;
    wrong[3] ^= 1;
    let query = client.simple_query("select pg_sleep(1)");
    let cancels = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        raw_cancel(proxy.addr(), pid, wrong).await;
        raw_cancel(proxy.addr(), pid ^ 0x10, secret).await;
    };
    let (result, ()) = tokio::join!(query, cancels);
    result.expect("a wrong key cancels nothing");
    assert_eq!(cancel_count(&proxy, "bad_secret"), 1);
    assert_eq!(cancel_count(&proxy, "unknown_key"), 1);
    assert_eq!(cancel_count(&proxy, "forwarded"), 0);
    // The right key, through the same raw path, does cancel.
    let latency = run_and_cancel(
        &client,
        "select pg_sleep(30)",
        Duration::from_millis(200),
        || raw_cancel(proxy.addr(), pid, secret),
    )
    .await;
    assert!(latency < Duration::from_secs(1), "{latency:?}");
    assert_eq!(cancel_count(&proxy, "forwarded"), 1);
}

fn peer_config(port: u16, id: u8, peer_id: u8, peer_port: u16) -> String {
    let text = config_text("transaction", 2, "").replace(
        "listen_addr = \"127.0.0.1:0\"",
        &format!("listen_addr = \"127.0.0.1:{port}\"\npeer_id = {id}"),
    );
    format!("{text}\n[[peers]]\nid = {peer_id}\naddr = \"127.0.0.1:{peer_port}\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_to_a_peer_reaches_the_owner() {
    let (pa, pb) = (free_port(), free_port());
    let a = start_proxy_with(&peer_config(pa, 1, 2, pb)).await;
    let b = start_proxy_with(&peer_config(pb, 2, 1, pa)).await;
    for db in ["app_tx", "app_session"] {
        let client = connect(&a, db).await;
        let token = client.cancel_token();
        let (_, secret) = key_of(&token).await;
        assert_eq!(secret[0], 1, "A's keys carry A's peer id in the secret");
        let latency = run_and_cancel(
            &client,
            "select pg_sleep(30)",
            Duration::from_millis(300),
            || cancel_confirmed(&token, b.addr()),
        )
        .await;
        eprintln!("{db}: cancel through peer B took {latency:?}");
        assert!(latency < Duration::from_secs(1), "{latency:?}");
        client.simple_query("select 1").await.unwrap();
    }
    // B passed both on, A forwarded both to the server.
    assert_eq!(cancel_count(&b, "forwarded"), 2);
    assert_eq!(cancel_count(&a, "forwarded"), 2);
    // A key of B's sent to A goes the other way.
    let client = connect(&b, "app_tx").await;
    let token = client.cancel_token();
    run_and_cancel(
        &client,
        "select pg_sleep(30)",
        Duration::from_millis(300),
        || cancel_confirmed(&token, a.addr()),
    )
    .await;
}

/// One cancel aimed at a client: when it was sent, and when pgharbor closed
/// the cancel connection (by then the backend has been signalled).
type Aimed = (Instant, Option<Instant>);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stress_cancels_hit_only_their_target() {
    const CLIENTS: usize = 50;
    const CANCELS: usize = 500;
    let proxy = start_proxy("transaction", 5).await;
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(Arc::new(connect(&proxy, "app").await));
    }
    let aimed: Arc<Vec<Mutex<Vec<Aimed>>>> =
        Arc::new((0..CLIENTS).map(|_| Mutex::new(Vec::new())).collect());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    // Each client: short and long queries until told to stop; the time span
    // of every query that ended in 57014.
    let mut workers = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        let client = client.clone();
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (i as u64 + 1);
            let mut cancelled = Vec::new();
            let mut queries = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let long = xorshift(&mut rng).is_multiple_of(8);
                let sql = if long {
                    "select pg_sleep(2) /* cancel-stress */"
                } else {
                    "select pg_sleep(0.01) /* cancel-stress */"
                };
                let t0 = Instant::now();
                let r = client.simple_query(sql).await;
                let t1 = Instant::now();
                queries += 1;
                match r {
                    Ok(_) => {}
                    Err(e) if sqlstate(&e).as_deref() == Some(CANCELED) => cancelled.push((t0, t1)),
                    Err(e) => panic!("client {i}: unexpected error {e}"),
                }
            }
            (cancelled, queries)
        }));
    }

    // 500 cancels at random clients, one every 20 ms, each on its own task.
    let tokens: Vec<CancelToken> = clients.iter().map(|c| c.cancel_token()).collect();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut cancels = Vec::new();
    for _ in 0..CANCELS {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let target = (xorshift(&mut rng) % CLIENTS as u64) as usize;
        let token = tokens[target].clone();
        let aimed = aimed.clone();
        let addr = proxy.addr();
        cancels.push(tokio::spawn(async move {
            let idx = {
                let mut v = aimed[target].lock().unwrap();
                v.push((Instant::now(), None));
                v.len() - 1
            };
            cancel_confirmed(&token, addr).await;
            aimed[target].lock().unwrap()[idx].1 = Some(Instant::now());
        }));
    }
    for c in cancels {
        c.await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total_cancelled = 0;
    let mut total_queries = 0;
    for (i, w) in workers.into_iter().enumerate() {
        let (cancelled, queries) = w.await.expect("client task");
        total_queries += queries;
        let aimed = aimed[i].lock().unwrap();
        for (t0, t1) in &cancelled {
            // Some cancel for this client was under way while the query ran:
            // sent before it ended, and not already delivered before it
            // began (Postgres drops a cancel that arrives while idle).
            let ok = aimed
                .iter()
                .any(|(sent, done)| sent <= t1 && done.is_none_or(|d| d >= *t0));
            assert!(
                ok,
                "client {i} got 57014 for a query at {:?}..{:?} that no cancel was aimed at",
                t0.duration_since(started),
                t1.duration_since(started)
            );
        }
        total_cancelled += cancelled.len();
    }
    let forwarded = cancel_count(&proxy, "forwarded");
    let no_query = cancel_count(&proxy, "no_query");
    eprintln!(
        "stress: {total_queries} queries, {total_cancelled} cancelled, {forwarded} cancels forwarded, {no_query} for idle or waiting clients, in {:?}",
        started.elapsed()
    );
    assert_eq!(forwarded + no_query, CANCELS as u64);
    assert!(total_cancelled >= 20, "too few cancels landed to mean much");
    // Every client still works and no server was left dirty.
    for c in &clients {
        c.simple_query("select 1").await.unwrap();
    }
    let direct = connect_direct().await;
    servers_are_clean(&direct, "/* cancel-stress */").await;
    assert!(started.elapsed() < Duration::from_secs(60));
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

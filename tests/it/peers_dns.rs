//! Cancels across replicas found through `[proxy] peers_dns`: real pgharbor
//! processes on loopback addresses 127.0.0.2, .3, .4 (and .5 added later)
//! with no peer ids, and a name that resolves to all of them through a
//! hosts file of the test's own, bound over `/etc/hosts` in each process's
//! private mount namespace (`unshare --mount`), so the machine's
//! `/etc/hosts` is never touched. Needs root, as the tests run here and in
//! CI.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::{CancelToken, NoTls};

use crate::support::*;

/// Reserved for names that never exist in DNS (RFC 6761): only our hosts
/// file answers for it.
const NAME: &str = "pgharbor-peers.invalid";

/// One replica: a pgharbor process on `ip`.
struct Replica {
    child: Child,
    addr: std::net::SocketAddr,
    metrics: std::net::SocketAddr,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes the hosts file in place (the same inode stays bound over
/// `/etc/hosts` in every replica's namespace).
fn write_hosts(path: &Path, ips: &[&str]) {
    let mut text = String::from("127.0.0.1 localhost\n");
    for ip in ips {
        text.push_str(&format!("{ip} {NAME}\n"));
    }
    std::fs::write(path, text).unwrap();
}

fn start_replica(dir: &Path, hosts: &Path, ip: &str, port: u16) -> Replica {
    let metrics_port = free_port();
    let text = config_text("transaction", 2, "").replace(
        "listen_addr = \"127.0.0.1:0\"",
        &format!(
            "listen_addr = \"{ip}:{port}\"\npeers_dns = \"{NAME}:{port}\"\npeers_dns_interval = \"200ms\""
        ),
    );
    let text = format!("{text}\n[metrics]\nlisten_addr = \"{ip}:{metrics_port}\"\n");
    let config: PathBuf = dir.join(format!("{ip}.toml"));
    std::fs::write(&config, text).unwrap();
    let log = std::fs::File::create(dir.join(format!("{ip}.log"))).unwrap();
    let child = Command::new("unshare")
        .args(["--mount", "sh", "-c"])
        .arg(r#"mount --bind "$1" /etc/hosts && exec "$2" -c "$3""#)
        .arg("sh")
        .arg(hosts)
        .arg(env!("CARGO_BIN_EXE_pgharbor"))
        .arg(&config)
        .env("RUST_LOG", "pgharbor=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("unshare (util-linux) runs pgharbor in a mount namespace of its own");
    Replica {
        child,
        addr: format!("{ip}:{port}").parse().unwrap(),
        metrics: format!("{ip}:{metrics_port}").parse().unwrap(),
    }
}

async fn wait_listening(r: &mut Replica) {
    let addr = r.addr;
    let up = eventually(Duration::from_secs(10), || async move {
        TcpStream::connect(addr).await.is_ok()
    })
    .await;
    if let Some(status) = r.child.try_wait().unwrap() {
        panic!("pgharbor on {addr} exited ({status}); it needs root for unshare --mount");
    }
    assert!(up, "pgharbor on {addr} did not start");
}

/// `pgharbor_cancel_requests_total{result=...}` scraped from `/metrics`.
async fn cancel_count(r: &Replica, result: &str) -> u64 {
    let mut s = TcpStream::connect(r.metrics).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    let series = format!("pgharbor_cancel_requests_total{{result=\"{result}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .unwrap_or_else(|| panic!("{series} not exported"))
        .trim()
        .parse()
        .unwrap()
}

async fn counts(r: &Replica) -> [u64; 5] {
    let mut out = [0; 5];
    for (i, result) in [
        "forwarded",
        "no_query",
        "unknown_key",
        "bad_secret",
        "to_peers",
    ]
    .iter()
    .enumerate()
    {
        out[i] = cancel_count(r, result).await;
    }
    out
}

/// Sends `token`'s CancelRequest to `addr` and waits until the receiver
/// closed the connection (by then it has passed the request on).
async fn cancel_confirmed(token: &CancelToken, addr: std::net::SocketAddr) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    token.cancel_query_raw(&mut s, NoTls).await.unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
}

/// A raw CancelRequest for a key nobody issued.
async fn raw_cancel(addr: std::net::SocketAddr, pid: i32, secret: i32) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut packet = Vec::new();
    packet.extend_from_slice(&16i32.to_be_bytes());
    packet.extend_from_slice(&80_877_102i32.to_be_bytes());
    packet.extend_from_slice(&pid.to_be_bytes());
    packet.extend_from_slice(&secret.to_be_bytes());
    s.write_all(&packet).await.unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
}

/// Runs `pg_sleep(30)` through `owner` and sends its cancel to `via`, again
/// every 200 ms up to `tries` times (while a replica that just joined may
/// not be resolved yet); the query must end cancelled.
async fn cancelled_through(owner: &Replica, via: &Replica, db: &str, tries: usize) {
    let dsn = format!(
        "host={} port={} user={USER} password={PASSWORD} dbname={db} connect_timeout=10",
        owner.addr.ip(),
        owner.addr.port()
    );
    let client = connect_dsn(&dsn).await;
    let token = client.cancel_token();
    let query = tokio::spawn(async move {
        let r = client.simple_query("select pg_sleep(30)").await;
        (r.map(|_| ()), client)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut sent = 0;
    while sent < tries && !query.is_finished() {
        cancel_confirmed(&token, via.addr).await;
        sent += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "{} -> {}: cancelled after {sent} cancel(s)",
        owner.addr, via.addr
    );
    let (result, client) = tokio::time::timeout(Duration::from_secs(5), query)
        .await
        .expect("the query ended")
        .unwrap();
    let err = result.expect_err("the query was cancelled");
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err}");
    // The client's connection is still usable after its cancel.
    client.simple_query("select 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_the_replica_that_issued_the_key_through_peers_dns() {
    pg();
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    write_hosts(&hosts, &["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
    let port = free_port();
    let mut fleet = Vec::new();
    for ip in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        let mut r = start_replica(dir.path(), &hosts, ip, port);
        wait_listening(&mut r).await;
        fleet.push(r);
    }
    let (a, b, c) = (&fleet[0], &fleet[1], &fleet[2]);

    // A query through A, cancelled through B and through C, in transaction
    // and session mode (there the key carries the server's own pid).
    // Each replica resolved the name when it started: one cancel is enough.
    cancelled_through(a, b, "app_tx", 1).await;
    cancelled_through(a, c, "app_session", 1).await;
    cancelled_through(c, b, "app_tx", 1).await;

    // A key nobody issued: B offers it to A and C, who find nothing and
    // pass it on to no one. Each replica counts it exactly once.
    let before = [counts(a).await, counts(b).await, counts(c).await];
    raw_cancel(b.addr, 4242, 0x1234_5678).await;
    let after = [counts(a).await, counts(b).await, counts(c).await];
    let delta = |i: usize| -> Vec<u64> { (0..5).map(|k| after[i][k] - before[i][k]).collect() };
    // forwarded, no_query, unknown_key, bad_secret, to_peers
    assert_eq!(delta(1), [0, 0, 0, 0, 1], "B offered it to its peers");
    assert_eq!(delta(0), [0, 0, 1, 0, 0], "A found nothing, once");
    assert_eq!(delta(2), [0, 0, 1, 0, 0], "C found nothing, once");

    // A fourth replica joins: the name now resolves to it too, and the
    // others reach it without a restart.
    let mut d = start_replica(dir.path(), &hosts, "127.0.0.5", port);
    write_hosts(
        &hosts,
        &["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"],
    );
    wait_listening(&mut d).await;
    cancelled_through(&d, a, "app_tx", 50).await;
    cancelled_through(a, &d, "app_tx", 1).await;
}

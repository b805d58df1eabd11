//! The TCP options of `[proxy]` client_tcp_* and `[pool]` server_tcp_*, on
//! real sockets: the keepalive timer `ss` shows on pgharbor's end of a
//! client and of a server connection, and TCP_USER_TIMEOUT ending a query
//! on a server, or a client, whose packets are dropped (a veth pair into a
//! network namespace, its far end taken down). Without root and network
//! namespaces the TCP_USER_TIMEOUT tests print why and pass as skipped.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::raw::{self, RawClient};
use crate::support::*;

/// The `ss -tnoH` line of the TCP socket from `local` to `peer`, once all
/// it sent is acknowledged: until then the kernel shows its retransmission
/// timer (`timer:(on,…)`) in place of the keepalive one.
async fn socket_line(local: SocketAddr, peer: SocketAddr) -> String {
    let (local, peer) = (local.to_string(), peer.to_string());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut cmd = Command::new("ss");
        cmd.arg("-tnoH");
        let out = output(cmd).await;
        assert!(out.status.success(), "ss: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text
            .lines()
            .find(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() >= 5 && f[3] == local && f[4] == peer
            })
            .unwrap_or_else(|| panic!("no socket {local} -> {peer} in `ss -tnoH`:\n{text}"))
            .to_owned();
        let unacknowledged = line.split_whitespace().nth(2) != Some("0");
        if !unacknowledged || Instant::now() > deadline {
            return line;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// pgharbor with `proxy_keys` in `[proxy]` and `pool_keys` in `[pool]`;
/// one client logged in to a session-mode database. Returns `ss`'s lines
/// for pgharbor's end of the client connection and of its server
/// connection.
async fn pgharbor_socket_lines(proxy_keys: &str, pool_keys: &str) -> (String, String) {
    let text = config_text("session", 1, pool_keys)
        .replace("[proxy]\n", &format!("[proxy]\n{proxy_keys}\n"));
    let proxy = start_proxy_with(&text).await;
    let mut c = RawClient::login(proxy.addr(), USER, PASSWORD, "app_session").await;
    // The server connection's port on pgharbor's side, as Postgres sees it.
    c.send(&raw::query("SELECT inet_client_port()")).await;
    let port = raw::first_column(&c.until_ready().await)[0]
        .clone()
        .expect("a port");
    let server_side = SocketAddr::from(([127, 0, 0, 1], port.parse().expect("a port")));
    let client_peer = c.stream.local_addr().expect("client address");
    let client_line = socket_line(proxy.addr(), client_peer).await;
    let server_line = socket_line(server_side, direct_addr()).await;
    (client_line, server_line)
}

#[tokio::test]
async fn client_and_server_sockets_have_a_keepalive_timer_by_default() {
    let (client, server) = pgharbor_socket_lines("", "").await;
    assert!(client.contains("timer:(keepalive"), "client: {client}");
    assert!(server.contains("timer:(keepalive"), "server: {server}");
}

#[tokio::test]
async fn tcp_keepalive_false_leaves_client_and_server_sockets_without_a_keepalive_timer() {
    let (client, server) = pgharbor_socket_lines(
        "client_tcp_keepalive = false",
        "server_tcp_keepalive = false",
    )
    .await;
    assert!(!client.contains("keepalive"), "client: {client}");
    assert!(!server.contains("keepalive"), "server: {server}");
    // Each side's key is its own.
    let (client, server) = pgharbor_socket_lines("", "server_tcp_keepalive = false").await;
    assert!(client.contains("timer:(keepalive"), "client: {client}");
    assert!(!server.contains("keepalive"), "server: {server}");
}

/// A network namespace joined to this one by a veth pair; dropped, both go.
struct Netns {
    name: String,
    host_if: String,
    peer_if: String,
    /// This side's address on the pair.
    host_ip: Ipv4Addr,
    /// The namespace's address on the pair.
    peer_ip: Ipv4Addr,
}

async fn ip(args: &[&str]) -> Result<(), String> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    let out = output(cmd).await;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// A namespace and a /30 between it and here, named after this process
    /// and the test (several run at once).
    async fn create() -> Result<Netns, String> {
        static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 4;
        let pid = std::process::id();
        let (a, b) = (((pid >> 4) & 255) as u8, ((pid & 15) * 16 + n * 4) as u8);
        let ns = Netns {
            name: format!("pgharbor-tcp-{pid}-{n}"),
            host_if: format!("pgh{pid}{n}h"),
            peer_if: format!("pgh{pid}{n}p"),
            host_ip: Ipv4Addr::new(10, 213, a, b + 1),
            peer_ip: Ipv4Addr::new(10, 213, a, b + 2),
        };
        ip(&["netns", "add", &ns.name]).await?;
        let host_cidr = format!("{}/30", ns.host_ip);
        let peer_cidr = format!("{}/30", ns.peer_ip);
        let (n, h, p) = (ns.name.as_str(), ns.host_if.as_str(), ns.peer_if.as_str());
        ip(&["link", "add", h, "type", "veth", "peer", "name", p]).await?;
        ip(&["link", "set", p, "netns", n]).await?;
        ip(&["addr", "add", &host_cidr, "dev", h]).await?;
        ip(&["link", "set", h, "up"]).await?;
        ip(&["-n", n, "addr", "add", &peer_cidr, "dev", p]).await?;
        ip(&["-n", n, "link", "set", p, "up"]).await?;
        ip(&["-n", n, "link", "set", "lo", "up"]).await?;
        Ok(ns)
    }

    /// Runs `make` on a thread of its own moved into the namespace: the
    /// sockets it makes stay in the namespace.
    async fn inside<T: Send + 'static>(
        &self,
        make: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        let path = format!("/run/netns/{}", self.name);
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let made = std::fs::File::open(&path).and_then(|ns| {
                rustix::thread::move_into_link_name_space(
                    ns.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )?;
                make()
            });
            let _ = tx.send(made);
        });
        rx.await.expect("namespace thread")
    }

    /// A listening socket inside the namespace, at its end of the pair.
    async fn listen(&self) -> std::io::Result<tokio::net::TcpListener> {
        let ip = self.peer_ip;
        let listener = self
            .inside(move || std::net::TcpListener::bind((ip, 0)))
            .await?;
        listener.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(listener)
    }

    /// A connection from inside the namespace to `to`.
    async fn connect(&self, to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
        let stream = self
            .inside(move || std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5)))
            .await?;
        stream.set_nonblocking(true)?;
        tokio::net::TcpStream::from_std(stream)
    }

    /// Takes the namespace's end of the pair down: what is sent to it from
    /// here is dropped, and nothing comes back.
    async fn cut(&self) {
        ip(&["-n", &self.name, "link", "set", &self.peer_if, "down"])
            .await
            .expect("take the link down");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Relays connections made to `listener` (in the namespace) to `to`.
fn forward(listener: tokio::net::TcpListener, to: SocketAddr) {
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                // Made here, by this process's namespace: it reaches `to`.
                let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
}

/// pgharbor whose database `app` is reached at `server`.
async fn pgharbor_to(server: SocketAddr, user_timeout: &str) -> pgharbor::Proxy {
    let text = format!(
        r#"
[proxy]
listen_addr = "127.0.0.1:0"

[pool]
pool_mode = "session"
pool_size = 1
query_wait_timeout = "30s"
server_tcp_user_timeout = "{user_timeout}"

[[databases]]
name = "app"
host = "{}"
port = {}

[[users]]
name = "{USER}"
password = "{PASSWORD}"
auth_type = "scram-sha-256"
"#,
        server.ip(),
        server.port()
    );
    start_proxy_with(&text).await
}

/// A network namespace for the `key` test, or `None` after printing why
/// the test is skipped on this machine.
async fn namespace_or_skip(key: &str, whose: &str) -> Option<Netns> {
    match Netns::create().await {
        Ok(ns) => Some(ns),
        Err(why) => {
            println!(
                "SKIPPED {key} test: it needs root and network namespaces \
                 (`ip netns add`, veth pairs) to drop {whose} packets: {why}"
            );
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_tcp_user_timeout_ends_a_query_whose_server_stopped_acknowledging() {
    let Some(ns) = namespace_or_skip("server_tcp_user_timeout", "a server's").await else {
        return;
    };
    let listener = ns.listen().await.expect("listen in the namespace");
    let through_ns = listener.local_addr().expect("address");
    forward(listener, direct_addr());
    let with = pgharbor_to(through_ns, "2s").await;
    let without = pgharbor_to(through_ns, "0s").await;
    let with_client = connect(&with, "app").await;
    let without_client = connect(&without, "app").await;
    for c in [&with_client, &without_client] {
        c.simple_query("SELECT 1")
            .await
            .expect("a query through the namespace");
    }
    ns.cut().await;
    let started = Instant::now();
    let (with_result, without_result) = tokio::join!(
        async {
            let r = tokio::time::timeout(
                Duration::from_secs(20),
                with_client.simple_query("SELECT 2"),
            )
            .await;
            (r, started.elapsed())
        },
        // Without it the kernel retries for about 15 minutes: still waiting
        // well past the other's end.
        tokio::time::timeout(
            Duration::from_secs(8),
            without_client.simple_query("SELECT 2")
        ),
    );
    let (with_result, took) = with_result;
    println!("with server_tcp_user_timeout = 2s: {with_result:?} after {took:?}");
    let error = match with_result {
        Ok(Err(e)) => e,
        other => panic!("the query should fail once the server stops acknowledging: {other:?}"),
    };
    assert!(
        took < Duration::from_secs(8),
        "the error came after {took:?}: {error}"
    );
    assert!(
        without_result.is_err(),
        "without server_tcp_user_timeout the query should still wait: {without_result:?}"
    );
}

/// pgharbor listening on this side of the pair, with `client_tcp_user_timeout`.
async fn pgharbor_on(ip: Ipv4Addr, user_timeout: &str) -> pgharbor::Proxy {
    let text = config_text("session", 2, "").replace(
        "[proxy]\nlisten_addr = \"127.0.0.1:0\"\n",
        &format!(
            "[proxy]\nlisten_addr = \"{ip}:0\"\nclient_tcp_user_timeout = \"{user_timeout}\"\n"
        ),
    );
    start_proxy_with(&text).await
}

/// A client of `proxy` from inside the namespace, logged in to `app`.
async fn client_from(ns: &Netns, proxy: &pgharbor::Proxy) -> tokio_postgres::Client {
    let stream = ns
        .connect(proxy.addr())
        .await
        .expect("connect from the namespace");
    let mut config = tokio_postgres::Config::new();
    config.user(USER).password(PASSWORD).dbname("app");
    let (client, conn) = config
        .connect_raw(stream, tokio_postgres::NoTls)
        .await
        .expect("log in from the namespace");
    tokio::spawn(conn);
    client
}

/// How many clients of user [`USER`] the console of `proxy` lists.
async fn listed_clients(admin: &tokio_postgres::Client) -> usize {
    let msgs = admin
        .simple_query("SHOW CLIENTS")
        .await
        .expect("SHOW CLIENTS");
    msgs.iter()
        .filter(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get("user") == Some(USER),
            _ => false,
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tcp_user_timeout_ends_a_client_that_stopped_acknowledging() {
    let Some(ns) = namespace_or_skip("client_tcp_user_timeout", "a client's").await else {
        return;
    };
    let with = pgharbor_on(ns.host_ip, "2s").await;
    let without = pgharbor_on(ns.host_ip, "0s").await;
    let (with_admin, _) = connect_admin(&with).await;
    let (without_admin, _) = connect_admin(&without).await;
    let with_client = client_from(&ns, &with).await;
    let without_client = client_from(&ns, &without).await;
    assert_eq!(listed_clients(&with_admin).await, 1);
    assert_eq!(listed_clients(&without_admin).await, 1);
    // Queries whose answers come after the link is down: pgharbor sends
    // them to clients that never acknowledge.
    let sleep = "SELECT pg_sleep(1.5)";
    let pending = [
        tokio::spawn(async move { with_client.simple_query(sleep).await.map(|_| ()) }),
        tokio::spawn(async move { without_client.simple_query(sleep).await.map(|_| ()) }),
    ];
    tokio::time::sleep(Duration::from_millis(300)).await;
    ns.cut().await;
    let started = Instant::now();
    let gone = eventually(Duration::from_secs(12), || async {
        listed_clients(&with_admin).await == 0
    })
    .await;
    let took = started.elapsed();
    assert!(
        gone,
        "with client_tcp_user_timeout = 2s the client is still listed after {took:?}"
    );
    println!("with client_tcp_user_timeout = 2s: the client ended {took:?} after the cut");
    // Without it the kernel retries for about 15 minutes.
    assert_eq!(
        listed_clients(&without_admin).await,
        1,
        "without client_tcp_user_timeout the client should still be there"
    );
    for p in pending {
        p.abort();
    }
}

//! Test harness: one real PostgreSQL per test binary (initdb in a temp dir, a
//! free port, run as `postgres` when we are root), torn down when the test
//! process exits; helpers to start pgharbor instances in-process and to drive
//! them with tokio-postgres, psql and pgbench.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Output};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use pgharbor::config::Config;
use pgharbor::scratch_pg::ScratchPostgres;
use pgharbor::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub mod tls;

pub const USER: &str = "app";
pub const PASSWORD: &str = "secret";
pub const MD5_USER: &str = "legacy";
pub const MD5_PASSWORD: &str = "legacy-pw";

struct Shared {
    pg: ScratchPostgres,
    /// Stops the server when this process exits (statics are never dropped).
    _guardian: Mutex<Child>,
}

static PG: OnceLock<Shared> = OnceLock::new();

/// The shared Postgres of this test binary, started on first use.
pub fn pg() -> &'static ScratchPostgres {
    &PG.get_or_init(|| {
        let pg = ScratchPostgres::start().expect("start a scratch PostgreSQL");
        let guardian = pg.stop_when_process_exits().expect("start the guardian");
        pg.create_user(USER, PASSWORD, "scram-sha-256")
            .expect("create user");
        pg.create_user(MD5_USER, MD5_PASSWORD, "md5")
            .expect("create md5 user");
        pg.create_database("app", USER).expect("create database");
        pg.psql(
            "app",
            "ALTER ROLE app SET lock_timeout = 0; GRANT pg_signal_backend TO app",
        )
        .expect("grant");
        Shared {
            pg,
            _guardian: Mutex::new(guardian),
        }
    })
    .pg
}

/// A pgharbor config in front of the shared Postgres: database `app` in
/// `mode`, `app_session` in session mode, `app_tx` in transaction mode.
/// `extra_pool` lines go into `[pool]`.
pub fn config_text(mode: &str, pool_size: usize, extra_pool: &str) -> String {
    let port = pg().port();
    format!(
        r#"
[proxy]
listen_addr = "127.0.0.1:0"
admin_users = ["admin"]
shutdown_timeout = "10s"

[pool]
pool_mode = "{mode}"
pool_size = {pool_size}
query_wait_timeout = "60s"
{extra_pool}

[[databases]]
name = "app"
port = {port}

[[databases]]
name = "app_session"
dbname = "app"
port = {port}
pool_mode = "session"

[[databases]]
name = "app_tx"
dbname = "app"
port = {port}
pool_mode = "transaction"

[[users]]
name = "{USER}"
password = "{PASSWORD}"
auth_type = "scram-sha-256"

[[users]]
name = "{MD5_USER}"
password = "{MD5_PASSWORD}"
auth_type = "md5"

[[users]]
name = "admin"
password = "admin-pw"
auth_type = "scram-sha-256"
"#
    )
}

pub async fn start_proxy_with(text: &str) -> Proxy {
    let config = Config::from_toml_str(text).expect("valid test config");
    Proxy::start(config).await.expect("start pgharbor")
}

pub async fn start_proxy(mode: &str, pool_size: usize) -> Proxy {
    start_proxy_with(&config_text(mode, pool_size, "")).await
}

pub fn dsn(proxy: &Proxy, db: &str) -> String {
    let a = proxy.addr();
    format!(
        "host={} port={} user={USER} password={PASSWORD} dbname={db} connect_timeout=10",
        a.ip(),
        a.port()
    )
}

pub async fn connect_dsn(dsn: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {dsn}: {e} {:?}", e.as_db_error()));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

pub async fn connect(proxy: &Proxy, db: &str) -> tokio_postgres::Client {
    connect_dsn(&dsn(proxy, db)).await
}

/// A direct connection to Postgres as the superuser, for checking what
/// pgharbor did.
pub async fn connect_direct() -> tokio_postgres::Client {
    let dsn = format!(
        "host=127.0.0.1 port={} user=postgres password=postgres dbname=app",
        pg().port()
    );
    connect_dsn(&dsn).await
}

/// Postgres itself, for the same raw-protocol steps as through pgharbor.
pub fn direct_addr() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], pg().port()))
}

/// Postgres itself as the test user, for the same driver steps as through
/// pgharbor.
pub fn direct_dsn() -> String {
    format!(
        "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname=app connect_timeout=10",
        pg().port()
    )
}

pub fn bin(name: &str) -> PathBuf {
    pg().bin_dir().join(name)
}

/// How long a client program (psql, pgbench) may run before its test
/// fails, rather than hanging the whole suite.
pub const PROGRAM_LIMIT: Duration = Duration::from_secs(180);

/// Runs `cmd` (stdin closed, stdout and stderr captured) without blocking
/// the test's runtime, for at most [`PROGRAM_LIMIT`]. A blocking wait in a
/// test would hold up its worker thread, and with it the task tokio keeps
/// in that worker's LIFO slot, which other workers never steal: when that
/// task is one of the in-process pgharbor's, a client waiting on it never
/// ends and neither does the wait.
pub async fn output(cmd: Command) -> Output {
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    let program = cmd.as_std().get_program().to_string_lossy().into_owned();
    match tokio::time::timeout(PROGRAM_LIMIT, cmd.output()).await {
        Ok(out) => out.unwrap_or_else(|e| panic!("run {program}: {e}")),
        Err(_) => panic!("{program} still runs after {PROGRAM_LIMIT:?}; killed"),
    }
}

/// psql against pgharbor with -X -qAt; returns the raw output.
pub async fn psql(proxy: &Proxy, user: &str, password: &str, db: &str, sql: &str) -> Output {
    let a = proxy.addr();
    let mut cmd = Command::new(bin("psql"));
    cmd.args(["-X", "-qAt", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", &a.ip().to_string(), "-p", &a.port().to_string()])
        .args(["-U", user, "-d", db, "-c", sql])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGSERVICE");
    output(cmd).await
}

/// Held by tests that make pgbench's tables in `app`'s own (public) schema
/// of the shared Postgres and run pgbench on them: `pgbench -i` drops and
/// makes them again, which another such test must not see halfway.
pub static PUBLIC_PGBENCH_TABLES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `pgbench -i -s 1` on database `db` of the shared Postgres, as `user`
/// (password [`PASSWORD`]), directly.
pub fn pgbench_init(user: &str, db: &str) {
    let init = Command::new(bin("pgbench"))
        .args(["-i", "-s", "1", "-q", "-h", "127.0.0.1"])
        .args(["-p", &pg().port().to_string(), "-U", user, db])
        .env("PGPASSWORD", PASSWORD)
        .output()
        .expect("run pgbench -i");
    assert!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Server connections pgharbor holds to Postgres, seen from Postgres.
pub async fn backends_of_user(direct: &tokio_postgres::Client, user: &str) -> i64 {
    direct
        .query_one(
            "select count(*) from pg_stat_activity where usename = $1 and backend_type = 'client backend'",
            &[&user],
        )
        .await
        .expect("pg_stat_activity")
        .get(0)
}

pub fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.code().map(|c| c.code().to_string())
}

/// Makes sure a login role `name` (password [`PASSWORD`]) exists, once per
/// test binary. Tests that count
/// server connections per user use their own role, so concurrent tests of
/// the same binary do not disturb the count.
pub fn ensure_user(name: &str) {
    static DONE: OnceLock<Mutex<std::collections::HashSet<String>>> = OnceLock::new();
    let done = DONE.get_or_init(Default::default);
    let mut done = done.lock().unwrap_or_else(|e| e.into_inner());
    if done.contains(name) {
        return;
    }
    pg().create_user(name, PASSWORD, "scram-sha-256")
        .expect("create user");
    pg().psql("app", &format!("GRANT CREATE ON SCHEMA public TO {name}"))
        .expect("grant");
    done.insert(name.to_string());
}

/// [`config_text_for_user`], with the real database a new one of the
/// role's own (named after it) instead of `app`: for tests that make
/// pgbench's tables, which would clash with other roles' in `app` of the
/// shared Postgres.
pub fn config_text_for_own_database(mode: &str, pool_size: usize, user: &str) -> String {
    ensure_user(user);
    pg().create_database(user, user).expect("create database");
    config_text_for_user(mode, pool_size, "", user).replace(
        &format!("name = \"{user}\"\ndbname = \"app\""),
        &format!("name = \"{user}\"\ndbname = \"{user}\""),
    )
}

/// [`config_text`] plus a database called `user` (the real database `app`)
/// and the role `user` (see [`ensure_user`]), in `mode` with `pool_size`.
pub fn config_text_for_user(mode: &str, pool_size: usize, extra_pool: &str, user: &str) -> String {
    ensure_user(user);
    let port = pg().port();
    let mut text = config_text(mode, pool_size, extra_pool);
    text.push_str(&format!(
        r#"
[[databases]]
name = "{user}"
dbname = "app"
port = {port}
pool_mode = "{mode}"
pool_size = {pool_size}

[[users]]
name = "{user}"
password = "{PASSWORD}"
auth_type = "scram-sha-256"
"#
    ));
    text
}

/// A DSN for `user` (password [`PASSWORD`]) on database `db`.
pub fn dsn_as(proxy: &Proxy, user: &str, db: &str) -> String {
    let a = proxy.addr();
    format!(
        "host={} port={} user={user} password={PASSWORD} dbname={db} connect_timeout=10",
        a.ip(),
        a.port()
    )
}

/// The first value of the first row of a simple query.
pub async fn simple_value(client: &tokio_postgres::Client, sql: &str) -> Option<String> {
    let msgs = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    msgs.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    })
}

/// The state column of pg_stat_activity for one backend, `None` once the
/// backend is gone.
pub async fn backend_state(direct: &tokio_postgres::Client, pid: i32) -> Option<String> {
    direct
        .query_opt(
            "select coalesce(state, '') from pg_stat_activity where pid = $1",
            &[&pid],
        )
        .await
        .expect("pg_stat_activity")
        .map(|r| r.get(0))
}

/// Asserts that a child process exited successfully, showing its stderr if not.
#[track_caller]
pub fn assert_succeeded(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One HTTP/1.0 GET: status code and body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the metrics endpoint");
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("send request");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("response within 10s")
        .expect("read response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// pgharbor run as its own process (the real binary, signals and all) in
/// transaction mode with a pool of 2, on a port of its own.
pub struct ProxyProcess {
    pub child: Child,
    pub dsn: String,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl ProxyProcess {
    /// Starts it with `shutdown_timeout` and waits until it accepts clients.
    pub async fn start(shutdown_timeout: &str) -> ProxyProcess {
        Self::start_on(free_port(), shutdown_timeout, "").await
    }

    /// Starts it with more `[proxy]` keys and returns once its port accepts
    /// TCP connections: no client has logged in yet.
    pub async fn start_listening(shutdown_timeout: &str, proxy_keys: &str) -> ProxyProcess {
        let proxy = Self::spawn_on(free_port(), shutdown_timeout, proxy_keys);
        let addr = proxy.addr.clone();
        let up = eventually(Duration::from_secs(10), || {
            let addr = addr.clone();
            async move { tokio::net::TcpStream::connect(addr).await.is_ok() }
        })
        .await;
        assert!(up, "pgharbor did not start");
        proxy
    }

    /// Starts it on `port` with more `[proxy]` keys and waits until a
    /// client can log in.
    pub async fn start_on(port: u16, shutdown_timeout: &str, proxy_keys: &str) -> ProxyProcess {
        let proxy = Self::spawn_on(port, shutdown_timeout, proxy_keys);
        let up = eventually(Duration::from_secs(10), || async {
            tokio_postgres::connect(&proxy.dsn, tokio_postgres::NoTls)
                .await
                .is_ok()
        })
        .await;
        assert!(up, "pgharbor did not start");
        proxy
    }

    fn spawn_on(port: u16, shutdown_timeout: &str, proxy_keys: &str) -> ProxyProcess {
        let text = config_text("transaction", 2, "")
            .replace(
                "listen_addr = \"127.0.0.1:0\"",
                &format!("listen_addr = \"127.0.0.1:{port}\"\n{proxy_keys}"),
            )
            .replace(
                "shutdown_timeout = \"10s\"",
                &format!("shutdown_timeout = \"{shutdown_timeout}\""),
            );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgharbor.toml");
        std::fs::write(&path, text).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pgharbor"))
            .arg("-c")
            .arg(&path)
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("pgharbor.log")).expect("log file"))
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start pgharbor");
        let dsn = format!(
            "host=127.0.0.1 port={port} user={USER} password={PASSWORD} dbname=app connect_timeout=5"
        );
        ProxyProcess {
            child,
            dsn,
            addr: format!("127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Sends signal `name` (`TERM`, `HUP`, …) to the process.
    pub fn signal(&self, name: &str) {
        let kill = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
    }

    /// The config file it was started from.
    pub fn config_path(&self) -> PathBuf {
        self._dir.path().join("pgharbor.toml")
    }

    /// What it logged so far (its stdout).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("pgharbor.log")).unwrap_or_default()
    }

    /// Waits for the process to exit; kills it and panics after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let t0 = std::time::Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if t0.elapsed() > limit {
                let _ = self.child.kill();
                panic!("pgharbor still running {limit:?} after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client whose notifications arrive on the returned channel.
pub async fn listening_client(
    dsn: &str,
) -> (
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
) {
    client_with_messages(dsn, |m| match m {
        tokio_postgres::AsyncMessage::Notification(n) => Some(n),
        _ => None,
    })
    .await
}

/// A client whose asynchronous messages that `pick` keeps arrive on the
/// returned channel.
pub async fn client_with_messages<T: Send + 'static>(
    dsn: &str,
    pick: fn(tokio_postgres::AsyncMessage) -> Option<T>,
) -> (
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<T>,
) {
    let (client, mut conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
        .await
        .expect("connect");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = futures_util::StreamExt::next(&mut messages).await {
            if let Some(t) = pick(m) {
                let _ = tx.send(t);
            }
        }
    });
    (client, rx)
}

/// A minimal protocol client over a raw socket, for what drivers will not
/// send: Flush without Sync, malformed frames, half-finished transactions.
pub mod raw {
    use bytes::{Buf, Bytes, BytesMut};
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    use postgres_protocol::message::frontend;
    use std::net::SocketAddr;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// One backend message: its tag and body.
    #[derive(Debug, Clone)]
    pub struct Msg {
        pub tag: u8,
        pub body: Bytes,
    }

    impl Msg {
        /// An ErrorResponse or NoticeResponse field (`b'C'` for SQLSTATE,
        /// `b'M'` for the message).
        pub fn field(&self, code: u8) -> Option<String> {
            let mut b = &self.body[..];
            while let Some((&c, rest)) = b.split_first() {
                if c == 0 {
                    break;
                }
                let end = rest.iter().position(|&x| x == 0)?;
                if c == code {
                    return Some(String::from_utf8_lossy(&rest[..end]).into_owned());
                }
                b = &rest[end + 1..];
            }
            None
        }

        pub fn sqlstate(&self) -> Option<String> {
            self.field(b'C')
        }
    }

    /// Builds a regular frontend message.
    pub fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(body.len() + 5);
        v.push(tag);
        v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn cstr(s: &str) -> Vec<u8> {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        v
    }

    pub fn query(sql: &str) -> Vec<u8> {
        msg(b'Q', &cstr(sql))
    }

    /// Parse of an unnamed statement without parameter types.
    pub fn parse(sql: &str) -> Vec<u8> {
        let mut b = cstr("");
        b.extend(cstr(sql));
        b.extend(0i16.to_be_bytes());
        msg(b'P', &b)
    }

    /// Bind of the unnamed statement to the unnamed portal, no parameters.
    pub fn bind() -> Vec<u8> {
        let mut b = cstr("");
        b.extend(cstr(""));
        b.extend(0i16.to_be_bytes());
        b.extend(0i16.to_be_bytes());
        b.extend(0i16.to_be_bytes());
        msg(b'B', &b)
    }

    /// Parse of statement `name` with the given parameter type OIDs.
    pub fn parse_named(name: &str, sql: &str, types: &[u32]) -> Vec<u8> {
        let mut b = cstr(name);
        b.extend(cstr(sql));
        b.extend((types.len() as i16).to_be_bytes());
        for t in types {
            b.extend(t.to_be_bytes());
        }
        msg(b'P', &b)
    }

    /// Bind of statement `statement` to the unnamed portal with `params`
    /// text values.
    pub fn bind_named(statement: &str, params: &[&str]) -> Vec<u8> {
        let mut b = cstr("");
        b.extend(cstr(statement));
        b.extend(0i16.to_be_bytes());
        b.extend((params.len() as i16).to_be_bytes());
        for p in params {
            b.extend((p.len() as i32).to_be_bytes());
            b.extend(p.as_bytes());
        }
        b.extend(0i16.to_be_bytes());
        msg(b'B', &b)
    }

    /// Describe (`D`) or Close (`C`) of statement `name`.
    pub fn statement_target(tag: u8, name: &str) -> Vec<u8> {
        let mut b = vec![b'S'];
        b.extend(cstr(name));
        msg(tag, &b)
    }

    /// Describe of the unnamed portal.
    pub fn describe_portal() -> Vec<u8> {
        let mut b = vec![b'P'];
        b.extend(cstr(""));
        msg(b'D', &b)
    }

    pub fn execute() -> Vec<u8> {
        let mut b = cstr("");
        b.extend(0i32.to_be_bytes());
        msg(b'E', &b)
    }

    pub fn sync() -> Vec<u8> {
        msg(b'S', &[])
    }

    pub fn flush() -> Vec<u8> {
        msg(b'H', &[])
    }

    pub fn copy_data(data: &[u8]) -> Vec<u8> {
        msg(b'd', data)
    }

    pub fn copy_done() -> Vec<u8> {
        msg(b'c', &[])
    }

    pub struct RawClient {
        pub stream: TcpStream,
        buf: BytesMut,
        /// The process id and secret of the login's BackendKeyData.
        pub backend_key: Option<(i32, i32)>,
    }

    impl RawClient {
        /// Opens a socket without saying anything yet.
        pub async fn open(addr: SocketAddr) -> RawClient {
            let stream = TcpStream::connect(addr).await.expect("connect");
            RawClient {
                stream,
                buf: BytesMut::new(),
                backend_key: None,
            }
        }

        /// Connects and logs in (trust or SCRAM-SHA-256), up to the first
        /// ReadyForQuery.
        pub async fn login(addr: SocketAddr, user: &str, password: &str, db: &str) -> RawClient {
            Self::login_with(addr, password, &[("user", user), ("database", db)])
                .await
                .0
        }

        /// Logs in with these startup parameters; returns the client and
        /// every message after the authentication exchange, up to and
        /// including ReadyForQuery (AuthenticationOk first).
        pub async fn login_with(
            addr: SocketAddr,
            password: &str,
            params: &[(&str, &str)],
        ) -> (RawClient, Vec<Msg>) {
            let mut c = RawClient::open(addr).await;
            let mut out = BytesMut::new();
            frontend::startup_message(params.iter().copied(), &mut out).expect("startup message");
            c.send(&out).await;
            let mut scram: Option<ScramSha256> = None;
            let mut after_auth = Vec::new();
            loop {
                let m = c.recv().await.expect("login answer");
                if m.tag != b'R' || m.body.starts_with(&[0, 0, 0, 0]) {
                    after_auth.push(m.clone());
                }
                match m.tag {
                    b'R' => {
                        let mut body = m.body.clone();
                        match body.get_i32() {
                            0 => {}
                            10 => {
                                let s = ScramSha256::new(
                                    password.as_bytes(),
                                    ChannelBinding::unsupported(),
                                );
                                let mut out = BytesMut::new();
                                frontend::sasl_initial_response(
                                    "SCRAM-SHA-256",
                                    s.message(),
                                    &mut out,
                                )
                                .expect("sasl initial");
                                c.send(&out).await;
                                scram = Some(s);
                            }
                            11 => {
                                let s = scram.as_mut().expect("SASL started");
                                s.update(&body).expect("server-first");
                                let mut out = BytesMut::new();
                                frontend::sasl_response(s.message(), &mut out)
                                    .expect("sasl response");
                                c.send(&out).await;
                            }
                            12 => {
                                scram
                                    .as_mut()
                                    .expect("SASL started")
                                    .finish(&body)
                                    .expect("server-final");
                            }
                            other => panic!("raw client: unsupported auth request {other}"),
                        }
                    }
                    b'E' => panic!("login refused: {:?}", m.field(b'M')),
                    b'K' => {
                        let mut body = m.body.clone();
                        c.backend_key = Some((body.get_i32(), body.get_i32()));
                    }
                    b'Z' => return (c, after_auth),
                    _ => {}
                }
            }
        }

        pub async fn send(&mut self, bytes: &[u8]) {
            self.stream.write_all(bytes).await.expect("raw send");
        }

        /// Sends, tolerating a peer that already closed.
        pub async fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
            self.stream.write_all(bytes).await
        }

        /// The next backend message; `None` at end of stream (or on a
        /// reset connection).
        pub async fn recv(&mut self) -> Option<Msg> {
            loop {
                if self.buf.len() >= 5 {
                    let len =
                        i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
                    assert!(len >= 4, "bad length from pgharbor: {len}");
                    let total = len as usize + 1;
                    if self.buf.len() >= total {
                        let mut frame = self.buf.split_to(total);
                        let tag = frame[0];
                        frame.advance(5);
                        return Some(Msg {
                            tag,
                            body: frame.freeze(),
                        });
                    }
                }
                self.buf.reserve(64 * 1024);
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        }

        /// [`RawClient::recv`] with a deadline; panics when it passes.
        pub async fn recv_within(&mut self, d: Duration) -> Option<Msg> {
            tokio::time::timeout(d, self.recv())
                .await
                .expect("no answer from pgharbor in time")
        }

        /// Messages up to and including the next ReadyForQuery.
        pub async fn until_ready(&mut self) -> Vec<Msg> {
            let mut got = Vec::new();
            loop {
                let m = self
                    .recv_within(Duration::from_secs(30))
                    .await
                    .unwrap_or_else(|| panic!("connection closed; got so far: {got:?}"));
                let done = m.tag == b'Z';
                got.push(m);
                if done {
                    return got;
                }
            }
        }

        /// Reads until end of stream, returning what came before it.
        pub async fn until_closed(&mut self, d: Duration) -> Vec<Msg> {
            let mut got = Vec::new();
            let deadline = tokio::time::Instant::now() + d;
            loop {
                match tokio::time::timeout_at(deadline, self.recv()).await {
                    Ok(Some(m)) => got.push(m),
                    Ok(None) => return got,
                    Err(_) => panic!("connection still open after {d:?}; got {got:?}"),
                }
            }
        }
    }

    /// The text of the first column of every DataRow in `msgs`.
    pub fn first_column(msgs: &[Msg]) -> Vec<Option<String>> {
        msgs.iter()
            .filter(|m| m.tag == b'D')
            .map(|m| {
                let mut b = m.body.clone();
                let _n = b.get_i16();
                let len = b.get_i32();
                (len >= 0).then(|| String::from_utf8_lossy(&b[..len as usize]).into_owned())
            })
            .collect()
    }

    /// The transaction status of the last ReadyForQuery in `msgs`.
    pub fn status(msgs: &[Msg]) -> Option<u8> {
        msgs.iter().rev().find(|m| m.tag == b'Z').map(|m| m.body[0])
    }
}

/// A DSN for `role` with `password` on database `db` at `addr`.
pub fn dsn_at(addr: std::net::SocketAddr, role: &str, password: &str, db: &str) -> String {
    format!(
        "host={} port={} user={role} password={password} dbname={db} connect_timeout=10",
        addr.ip(),
        addr.port()
    )
}

/// Connects, handing back the error (a refused login) instead of panicking.
pub async fn try_connect(dsn: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// Puts `lines` before the shared Postgres's pg_hba.conf rules (the first
/// match wins) and asks it to reload them.
pub fn prepend_hba(lines: &str) {
    let hba = pg().psql("app", "SHOW hba_file").expect("hba_file");
    let hba = hba.trim();
    let old = std::fs::read_to_string(hba).expect("read pg_hba.conf");
    std::fs::write(hba, format!("{lines}{old}")).expect("write pg_hba.conf");
    pg().psql("app", "SELECT pg_reload_conf()").expect("reload");
}

static PG2: OnceLock<Shared> = OnceLock::new();

/// A second Postgres of this test binary, with the same role [`USER`] and
/// database `app` as [`pg`], for tests that move a database between servers.
pub fn pg2() -> &'static ScratchPostgres {
    &PG2.get_or_init(|| {
        let pg = ScratchPostgres::start().expect("start a second scratch PostgreSQL");
        let guardian = pg.stop_when_process_exits().expect("start the guardian");
        pg.create_user(USER, PASSWORD, "scram-sha-256")
            .expect("create user");
        pg.create_database("app", USER).expect("create database");
        Shared {
            pg,
            _guardian: Mutex::new(guardian),
        }
    })
    .pg
}

/// pgharbor started from a config file, so that RELOAD and SIGHUP re-read
/// it; [`FileProxy::write`] replaces the file's text.
pub struct FileProxy {
    pub proxy: Proxy,
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl FileProxy {
    pub async fn start(text: &str) -> FileProxy {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("pgharbor.toml");
        std::fs::write(&path, text).expect("write config");
        FileProxy::start_from(dir, path).await
    }

    /// Starts from the file at `path`, inside `dir` (kept until dropped).
    pub async fn start_from(dir: tempfile::TempDir, path: PathBuf) -> FileProxy {
        let config = Config::load(&path).expect("valid test config");
        let proxy = Proxy::start(config).await.expect("start pgharbor");
        proxy.set_config_file(path.clone());
        FileProxy {
            proxy,
            path,
            _dir: dir,
        }
    }

    /// Replaces the file in one step (a rename), as editors and config
    /// management do.
    pub fn write(&self, text: &str) {
        let tmp = self.path.with_extension("toml.new");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, &self.path).expect("replace config");
    }
}

/// The admin console (user `admin` of [`config_text`]), and the notices it
/// sends.
pub async fn connect_admin(
    proxy: &Proxy,
) -> (
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::error::DbError>,
) {
    let a = proxy.addr();
    let dsn = format!(
        "host={} port={} user=admin password=admin-pw dbname=pgharbor connect_timeout=10",
        a.ip(),
        a.port()
    );
    client_with_messages(&dsn, |m| match m {
        tokio_postgres::AsyncMessage::Notice(n) => Some(n),
        _ => None,
    })
    .await
}

/// What pgharbor and Postgres say of `user`'s clients and servers, for a
/// test whose pgbench never ended: whether a client waits in line (SHOW
/// CLIENTS), holds a server, or its server waits inside Postgres
/// (pg_stat_activity's state and wait event).
pub async fn where_clients_are(admin: &tokio_postgres::Client, user: &str) -> String {
    let mut out = String::new();
    for what in ["POOLS", "CLIENTS", "SERVERS"] {
        out.push_str(&format!("SHOW {what}:\n"));
        match admin.simple_query(&format!("SHOW {what}")).await {
            Ok(messages) => {
                for m in messages {
                    if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                        let cells: Vec<String> = (0..r.len())
                            .map(|i| {
                                format!("{}={}", r.columns()[i].name(), r.get(i).unwrap_or(""))
                            })
                            .collect();
                        out.push_str(&format!("  {}\n", cells.join(" ")));
                    }
                }
            }
            Err(e) => out.push_str(&format!("  {e}\n")),
        }
    }
    let direct = connect_direct().await;
    let sql = "select pid, state, coalesce(wait_event_type, ''), coalesce(wait_event, ''), left(query, 80) \
               from pg_stat_activity where usename = $1 and backend_type = 'client backend'";
    out.push_str("pg_stat_activity:\n");
    match direct.query(sql, &[&user]).await {
        Ok(rows) => {
            for r in rows {
                let pid: i32 = r.get(0);
                let cells: Vec<Option<String>> = (1..5).map(|i| r.get(i)).collect();
                out.push_str(&format!("  {pid} {cells:?}\n"));
            }
        }
        Err(e) => out.push_str(&format!("  {e}\n")),
    }
    out
}

/// pgbench through `proxy` as `user` (password [`PASSWORD`]) on database
/// `user`, as a child process that may run alongside the test.
pub async fn pgbench_at(addr: std::net::SocketAddr, user: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin("pgbench"));
    cmd.args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-U", user])
        .args(args)
        .arg(user)
        .env("PGPASSWORD", PASSWORD)
        .env("PGCONNECT_TIMEOUT", "10");
    // A test that gives up on pgbench (a bounded wait) ends it too.
    output(cmd).await
}

/// A `name: value` line of pgbench's summary, as a number.
pub fn pgbench_number(out: &str, label: &str) -> Option<u64> {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

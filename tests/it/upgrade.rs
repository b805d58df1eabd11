//! Binary upgrade: SIGUSR2 (or the console's UPGRADE) starts the binary now
//! at the running one's path and hands it the listeners and the idle
//! clients, with their cancel keys, prepared statements, settings and
//! LISTENs; a binary that cannot start leaves the old process serving.
//!
//! The "new build" is a script put in the binary's place that starts the
//! same executable with `PGHARBOR_BUILD_TAG` set, so SHOW VERSION tells
//! the two processes apart without a second cargo build.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio_postgres::NoTls;

use crate::support::tls;
use crate::support::*;

/// pgharbor run from a copy of the test binary in a directory of its own,
/// so that the test can replace the file the process was started from.
struct Upgradable {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    metrics_port: u16,
    user: String,
}

impl Upgradable {
    /// Starts it in transaction mode with `pool_size` servers for `user`'s
    /// own database, and waits until a client can log in.
    async fn start(user: &str, pool_size: usize) -> Upgradable {
        Self::start_with(user, pool_size, "").await
    }

    /// [`Upgradable::start`] with more config sections.
    async fn start_with(user: &str, pool_size: usize, sections: &str) -> Upgradable {
        let port = free_port();
        let metrics_port = free_port();
        let text = config_text_for_own_database("transaction", pool_size, user)
            .replace(
                "listen_addr = \"127.0.0.1:0\"",
                &format!("listen_addr = \"127.0.0.1:{port}\""),
            )
            .replace("shutdown_timeout = \"10s\"", "shutdown_timeout = \"20s\"")
            + &format!("\n[metrics]\nlisten_addr = \"127.0.0.1:{metrics_port}\"\n{sections}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pgharbor.toml"), text).unwrap();
        let exe = dir.path().join("pgharbor");
        std::fs::copy(env!("CARGO_BIN_EXE_pgharbor"), &exe).expect("copy the binary");
        let child = Command::new(&exe)
            .arg("-c")
            .arg(dir.path().join("pgharbor.toml"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("pgharbor.log")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .expect("start pgharbor");
        let proxy = Upgradable {
            child,
            dir,
            port,
            metrics_port,
            user: user.to_string(),
        };
        let dsn = proxy.dsn();
        let up = eventually(Duration::from_secs(10), || async {
            tokio_postgres::connect(&dsn, NoTls).await.is_ok()
        })
        .await;
        assert!(up, "pgharbor did not start: {}", proxy.log());
        proxy
    }

    fn exe(&self) -> PathBuf {
        self.dir.path().join("pgharbor")
    }

    fn dsn(&self) -> String {
        let (port, user) = (self.port, &self.user);
        format!("host=127.0.0.1 port={port} user={user} password={PASSWORD} dbname={user} connect_timeout=10")
    }

    fn admin_dsn(&self) -> String {
        let port = self.port;
        format!("host=127.0.0.1 port={port} user=admin password=admin-pw dbname=pgharbor connect_timeout=10")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgharbor.log")).unwrap_or_default()
    }

    /// Puts `contents` (with `mode`) where the binary was, the way an
    /// upgrade does: a new file renamed over the old one.
    fn replace_binary(&self, contents: &[u8], mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        let staged = self.dir.path().join("pgharbor.new");
        std::fs::write(&staged, contents).unwrap();
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode)).unwrap();
        std::fs::rename(&staged, self.exe()).unwrap();
    }

    /// Replaces the binary with a build that reports `tag` in SHOW VERSION.
    fn replace_with_tagged_build(&self, tag: &str) {
        let real = Path::new(env!("CARGO_BIN_EXE_pgharbor"))
            .display()
            .to_string();
        let script = format!("#!/bin/sh\nPGHARBOR_BUILD_TAG={tag} exec '{real}' \"$@\"\n");
        self.replace_binary(script.as_bytes(), 0o755);
    }

    fn signal(&self, name: &str) {
        let kill = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
    }

    /// Whether the process started by the test is still running.
    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits up to `limit` for the process started by the test to exit.
    async fn exits_within(&mut self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.running() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }
}

impl Drop for Upgradable {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The new process, started by the old one, is not the test's
        // child: the old one logged its pid when it took over.
        let log = self.log();
        let taken = log
            .lines()
            .filter(|l| l.contains("the new process serves the listeners"));
        for line in taken {
            let Some(pid) = line.rsplit("pid ").next() else {
                continue;
            };
            let pid: String = pid.chars().take_while(char::is_ascii_digit).collect();
            if !pid.is_empty() {
                let _ = Command::new("kill").arg(&pid).status();
            }
        }
    }
}

/// SHOW VERSION of the process that accepts this connection; `None` if
/// it closes the console (an old process stopping).
async fn version(admin_dsn: &str) -> Option<String> {
    let (admin, conn) = tokio_postgres::connect(admin_dsn, NoTls).await.ok()?;
    tokio::spawn(conn);
    let rows = admin.simple_query("SHOW VERSION").await.ok()?;
    rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    })
}

/// Waits until the process accepting on the port reports `tag` in SHOW
/// VERSION.
async fn serves_build(admin_dsn: &str, tag: &str) -> bool {
    eventually(Duration::from_secs(30), || async {
        version(admin_dsn).await.is_some_and(|v| v.contains(tag))
    })
    .await
}

/// The console's SHOW CLIENTS rows of `user`.
async fn clients_of(admin_dsn: &str, user: &str) -> usize {
    let Ok((admin, conn)) = tokio_postgres::connect(admin_dsn, NoTls).await else {
        return 0;
    };
    tokio::spawn(conn);
    let Ok(rows) = admin.simple_query("SHOW CLIENTS").await else {
        return 0;
    };
    rows.iter()
        .filter(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get("user") == Some(user),
            _ => false,
        })
        .count()
}

#[track_caller]
fn assert_no_failed_transactions_nor_reconnects(out: &std::process::Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        pgbench_number(&stdout, "number of failed transactions"),
        Some(0),
        "{stdout}"
    );
    // Without -C a client that lost its connection is aborted, and says so.
    assert!(!stderr.contains("aborted"), "{stderr}");
    assert!(!stderr.contains("connection"), "{stderr}");
}

async fn upgrade_under_pgbench_keeps_every_client(user: &'static str, protocol: &'static str) {
    let _tables = PUBLIC_PGBENCH_TABLES.lock().await;
    let mut proxy = Upgradable::start(user, 5).await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], proxy.port));
    let init = pgbench_at(addr, user, &["-i", "-s", "1", "-q"]).await;
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let old_version = version(&proxy.admin_dsn()).await.expect("SHOW VERSION");

    // Clients with state to keep: a LISTEN, a setting, a prepared
    // statement, and a cancel key.
    let (listener, mut notes) = listening_client(&proxy.dsn()).await;
    listener.batch_execute("LISTEN upgraded").await.unwrap();
    let (worker, conn) = tokio_postgres::connect(&proxy.dsn(), NoTls).await.unwrap();
    tokio::spawn(conn);
    worker
        .batch_execute("SET application_name = 'kept-setting'")
        .await
        .unwrap();
    let statement = worker.prepare("select $1::int + 1").await.unwrap();
    let cancel = worker.cancel_token();

    proxy.replace_with_tagged_build("second-build");
    let bench = tokio::spawn(async move {
        let args = ["-c", "50", "-j", "2", "-T", "30", "-M", protocol, "-S"];
        pgbench_at(addr, user, &args).await
    });
    tokio::time::sleep(Duration::from_secs(10)).await;
    proxy.signal("USR2");

    let admin = proxy.admin_dsn();
    let upgraded = serves_build(&admin, "second-build").await;
    assert!(upgraded, "the new build serves the port: {}", proxy.log());
    let exited = proxy.exits_within(Duration::from_secs(30)).await;
    assert!(exited, "the old process exits: {}", proxy.log());
    assert_ne!(version(&admin).await.unwrap(), old_version);
    // The last clients sent may still be on their way in.
    let all_listed = eventually(Duration::from_secs(10), || async {
        clients_of(&admin, user).await >= 52
    })
    .await;
    let listed = clients_of(&admin, user).await;
    assert!(
        all_listed,
        "the new process lists pgbench's 50 clients and ours: {listed}"
    );

    // The clients from before go on where they were.
    let row = worker
        .query_one(&statement, &[&41])
        .await
        .expect("prepared statement");
    assert_eq!(row.get::<_, i32>(0), 42);
    let setting = simple_value(&worker, "SHOW application_name").await;
    assert_eq!(setting.as_deref(), Some("kept-setting"));
    let sleeping = tokio::spawn(async move { worker.simple_query("select pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    cancel
        .cancel_query(NoTls)
        .await
        .expect("cancel with the old key");
    let slept = tokio::time::timeout(Duration::from_secs(10), sleeping)
        .await
        .expect("the cancel ends the sleep")
        .unwrap();
    let e = slept.expect_err("the sleep is cancelled");
    assert_eq!(sqlstate(&e).as_deref(), Some("57014"), "{e}");
    let (notifier, conn) = tokio_postgres::connect(&proxy.dsn(), NoTls).await.unwrap();
    tokio::spawn(conn);
    notifier
        .batch_execute("NOTIFY upgraded, 'after'")
        .await
        .unwrap();
    let note = tokio::time::timeout(Duration::from_secs(10), notes.recv()).await;
    let log = proxy.log();
    let note = note
        .unwrap_or_else(|_| panic!("the LISTEN from before the upgrade still receives: {log}"))
        .expect("a notification");
    assert_eq!((note.channel(), note.payload()), ("upgraded", "after"));
    drop(listener);

    let out = bench.await.expect("pgbench task");
    assert_no_failed_transactions_nor_reconnects(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigusr2_moves_50_prepared_pgbench_clients_to_the_new_build_without_a_failure() {
    upgrade_under_pgbench_keeps_every_client("upgrade_prepared", "prepared").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigusr2_moves_50_simple_pgbench_clients_to_the_new_build_without_a_failure() {
    upgrade_under_pgbench_keeps_every_client("upgrade_simple", "simple").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_binary_that_cannot_start_leaves_the_old_process_serving_and_says_why() {
    let mut proxy = Upgradable::start("upgrade_broken", 2).await;
    let (client, conn) = tokio_postgres::connect(&proxy.dsn(), NoTls).await.unwrap();
    tokio::spawn(conn);
    let real = std::fs::read(env!("CARGO_BIN_EXE_pgharbor")).unwrap();
    proxy.replace_binary(&real, 0o644);

    let (admin, conn) = tokio_postgres::connect(&proxy.admin_dsn(), NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let e = admin
        .simple_query("UPGRADE")
        .await
        .expect_err("UPGRADE fails");
    let db = e.as_db_error().expect("an ErrorResponse");
    assert!(
        db.message().contains("cannot start the new binary"),
        "{db:?}"
    );
    assert!(db.message().contains("ermission denied"), "{db:?}");

    proxy.signal("USR2");
    let logged = eventually(Duration::from_secs(10), || {
        let log = proxy.log();
        async move {
            log.matches("upgrade failed; this process keeps serving")
                .count()
                >= 2
        }
    })
    .await;
    assert!(
        logged,
        "both failures are logged with their reason: {}",
        proxy.log()
    );
    assert!(proxy.log().contains("ermission denied"), "{}", proxy.log());
    assert!(proxy.running(), "the old process keeps running");
    assert_eq!(
        simple_value(&client, "select 1").await.as_deref(),
        Some("1")
    );
    let (fresh, conn) = tokio_postgres::connect(&proxy.dsn(), NoTls).await.unwrap();
    tokio::spawn(conn);
    assert_eq!(simple_value(&fresh, "select 2").await.as_deref(), Some("2"));
    let still = version(&proxy.admin_dsn()).await.expect("SHOW VERSION");
    assert!(!still.contains('('), "no other build took over: {still}");
}

/// The replies up to ReadyForQuery, with no ErrorResponse among them; the
/// transaction status ReadyForQuery reports.
async fn answered(client: &mut raw::RawClient, sql: &str) -> u8 {
    client.send(&raw::query(sql)).await;
    let got = client.until_ready().await;
    let error = got.iter().find(|m| m.tag == b'E');
    assert!(
        error.is_none(),
        "{sql}: {:?}",
        error.and_then(|e| e.field(b'M'))
    );
    got.last().map_or(0, |z| z.body[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_open_at_the_upgrade_ends_where_it_began_and_then_moves_or_is_told_to_reconnect(
) {
    let user = "upgrade_in_txn";
    let mut proxy = Upgradable::start(user, 2).await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], proxy.port));
    let mut pooled = raw::RawClient::login(addr, user, PASSWORD, user).await;
    let mut session = raw::RawClient::login(addr, USER, PASSWORD, "app_session").await;
    for client in [&mut pooled, &mut session] {
        assert_eq!(answered(client, "BEGIN").await, b'T');
        assert_eq!(answered(client, "select 1").await, b'T');
    }

    proxy.replace_with_tagged_build("second-build");
    proxy.signal("USR2");
    let admin = proxy.admin_dsn();
    let upgraded = serves_build(&admin, "second-build").await;
    assert!(upgraded, "the new build serves the port: {}", proxy.log());
    assert!(
        proxy.running(),
        "the old process waits for the open transactions"
    );

    // Both transactions go on, and end, on the process they began on.
    for client in [&mut pooled, &mut session] {
        assert_eq!(answered(client, "select 2").await, b'T');
        assert_eq!(answered(client, "COMMIT").await, b'I');
    }
    // The transaction-mode client then moves, and goes on.
    assert_eq!(answered(&mut pooled, "select 3").await, b'I');
    let listed = eventually(Duration::from_secs(10), || async {
        clients_of(&admin, user).await == 1
    })
    .await;
    assert!(listed, "the new process lists the moved client");
    // The session-mode client is told to reconnect, after its COMMIT.
    let last = session.until_closed(Duration::from_secs(10)).await;
    let fatal = last
        .iter()
        .find(|m| m.tag == b'E')
        .expect("an ErrorResponse");
    assert_eq!(fatal.sqlstate().as_deref(), Some("57P01"));
    assert!(
        fatal.field(b'M').unwrap_or_default().contains("reconnect"),
        "{fatal:?}"
    );
    let exited = proxy.exits_within(Duration::from_secs(30)).await;
    assert!(
        exited,
        "the old process exits once its clients left: {}",
        proxy.log()
    );
    assert_eq!(answered(&mut pooled, "select 4").await, b'I');
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], proxy.metrics_port));
    let (status, _) = http_get(metrics, "/healthz").await;
    assert_eq!(
        status, 200,
        "the new process serves the metrics endpoint it took over"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_reaching_the_old_process_after_its_client_moved_still_cancels() {
    let user = "upgrade_cancel";
    let mut proxy = Upgradable::start(user, 2).await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], proxy.port));
    let mut sleeper = raw::RawClient::login(addr, user, PASSWORD, user).await;
    let (pid, secret) = sleeper.backend_key.expect("BackendKeyData");
    // Accepted by the old process (the only one listening yet), which
    // waits for its first packet.
    let mut late = raw::RawClient::open(addr).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    proxy.replace_with_tagged_build("second-build");
    proxy.signal("USR2");
    let admin = proxy.admin_dsn();
    let moved = serves_build(&admin, "second-build").await
        && eventually(Duration::from_secs(10), || async {
            clients_of(&admin, user).await == 1
        })
        .await;
    assert!(moved, "the client moved to the new build: {}", proxy.log());
    assert!(
        proxy.running(),
        "the old process waits for the connection it accepted"
    );

    sleeper.send(&raw::query("select pg_sleep(30)")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut cancel = Vec::with_capacity(16);
    cancel.extend_from_slice(&16i32.to_be_bytes());
    cancel.extend_from_slice(&80_877_102i32.to_be_bytes());
    cancel.extend_from_slice(&pid.to_be_bytes());
    cancel.extend_from_slice(&secret.to_be_bytes());
    late.send(&cancel).await;
    let replies = tokio::time::timeout(Duration::from_secs(10), sleeper.until_ready())
        .await
        .expect("the cancel ends the sleep");
    let error = replies
        .iter()
        .find(|m| m.tag == b'E')
        .expect("an ErrorResponse");
    assert_eq!(error.sqlstate().as_deref(), Some("57014"), "{error:?}");
    // The old process passed it on and the new one cancelled: both log it.
    let logged = eventually(Duration::from_secs(5), || {
        let log = proxy.log();
        async move { log.matches("cancel request").count() >= 2 }
    })
    .await;
    assert!(logged, "{}", proxy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_client_finishes_its_transaction_then_is_told_to_reconnect() {
    use std::io::{BufRead, Write};
    let user = "upgrade_tls";
    let files = tls::PkiFiles::write(&tls::issue("pgharbor upgrade CA", &["localhost"]));
    let tls_section = tls::client_tls("allow", &files);
    let mut proxy = Upgradable::start_with(user, 2, &tls_section).await;
    let conninfo = format!(
        "host=localhost hostaddr=127.0.0.1 port={} user={user} dbname={user} connect_timeout=10 {}",
        proxy.port,
        tls::verify_full(&files.ca())
    );
    let mut psql = tls::psql_args(&conninfo, PASSWORD, &[])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql");
    let mut stdin = psql.stdin.take().unwrap();
    let stdout = psql.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let next_line = || lines.recv_timeout(Duration::from_secs(20)).ok();
    writeln!(stdin, "BEGIN;\nselect 'in-transaction';").unwrap();
    assert_eq!(next_line().as_deref(), Some("in-transaction"));

    proxy.replace_with_tagged_build("second-build");
    proxy.signal("USR2");
    let upgraded = serves_build(&proxy.admin_dsn(), "second-build").await;
    assert!(upgraded, "the new build serves the port: {}", proxy.log());
    writeln!(stdin, "select 'still-in-it';\nCOMMIT;\nselect 'after';").unwrap();
    drop(stdin);
    assert_eq!(next_line().as_deref(), Some("still-in-it"));
    let mut stderr = psql.stderr.take().unwrap();
    let ended = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        let _ = psql.wait();
        text
    });
    let stderr = tokio::time::timeout(Duration::from_secs(20), ended)
        .await
        .expect("psql ends")
        .unwrap();
    assert!(
        stderr.contains("cannot move this connection; reconnect"),
        "{stderr}"
    );
    assert_eq!(next_line(), None, "nothing ran after the COMMIT: {stderr}");
    let exited = proxy.exits_within(Duration::from_secs(30)).await;
    assert!(exited, "the old process exits: {}", proxy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrade_on_the_console_hands_over_to_the_new_build_and_a_client_goes_on() {
    let mut proxy = Upgradable::start("upgrade_console", 2).await;
    let (client, conn) = tokio_postgres::connect(&proxy.dsn(), NoTls).await.unwrap();
    tokio::spawn(conn);
    client
        .batch_execute("SET application_name = 'before-upgrade'")
        .await
        .unwrap();
    let statement = client.prepare("select $1::int * 2").await.unwrap();
    let old_version = version(&proxy.admin_dsn()).await.expect("SHOW VERSION");

    proxy.replace_with_tagged_build("console-build");
    let (admin, conn) = tokio_postgres::connect(&proxy.admin_dsn(), NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let done = tokio::time::timeout(Duration::from_secs(30), admin.simple_query("UPGRADE"))
        .await
        .expect("UPGRADE answers");
    let tag = done
        .unwrap_or_else(|e| panic!("UPGRADE fails: {e:?}\n{}", proxy.log()))
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::CommandComplete(_) => Some(()),
            _ => None,
        });
    assert!(tag.is_some(), "UPGRADE completes");

    let admin_dsn = proxy.admin_dsn();
    let upgraded = serves_build(&admin_dsn, "console-build").await;
    assert!(upgraded, "the new build serves the port: {}", proxy.log());
    let exited = proxy.exits_within(Duration::from_secs(30)).await;
    assert!(exited, "the old process exits: {}", proxy.log());
    assert_ne!(version(&admin_dsn).await.unwrap(), old_version);

    // The client from before goes on, on the new process, as it was.
    let row = client
        .query_one(&statement, &[&21])
        .await
        .expect("prepared");
    assert_eq!(row.get::<_, i32>(0), 42);
    let setting = simple_value(&client, "SHOW application_name").await;
    assert_eq!(setting.as_deref(), Some("before-upgrade"));
    let listed = eventually(Duration::from_secs(10), || async {
        clients_of(&admin_dsn, "upgrade_console").await == 1
    })
    .await;
    assert!(listed, "the new process lists the client");
}

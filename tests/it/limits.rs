//! Limits with PgBouncer 1.24's names: `max_db_connections` bounds the
//! server connections to a database across its users (clients wait, never
//! fail), `max_user_client_connections` refuses the client past it with
//! 53300 naming the key.

use std::process::Stdio;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use tokio::io::AsyncReadExt;

/// A database of these tests alone, so Postgres's count of its sessions
/// is pgharbor's servers and nothing else.
const DB: &str = "limits_db";
const USERS: [&str; 2] = ["limits_a", "limits_b"];

/// pgharbor in front of `databases` (name, real name) for `users`.
fn config(extra_pool: &str, databases: &[(&str, &str)], users: &[&str]) -> String {
    let port = pg().port();
    let mut text = format!(
        r#"
[proxy]
listen_addr = "127.0.0.1:0"

[pool]
pool_size = 5
query_wait_timeout = "60s"
{extra_pool}
"#
    );
    for (name, dbname) in databases {
        text.push_str(&format!(
            "\n[[databases]]\nname = \"{name}\"\ndbname = \"{dbname}\"\nport = {port}\n"
        ));
    }
    for user in users {
        text.push_str(&format!(
            "\n[[users]]\nname = \"{user}\"\npassword = \"{PASSWORD}\"\n"
        ));
    }
    text
}

/// The two roles, their database and pgbench's tables in it, once.
fn setup() {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let pg = pg();
        for user in USERS {
            pg.create_user(user, PASSWORD, "scram-sha-256")
                .expect("role");
        }
        pg.create_database(DB, USERS[0]).expect("database");
        let grant = format!(
            "GRANT ALL ON SCHEMA public TO {b}; GRANT CONNECT ON DATABASE {DB} TO {b}",
            b = USERS[1]
        );
        pgbench_init(USERS[0], DB);
        pg.psql(DB, &grant).expect("grant");
        let tables = "pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history";
        pg.psql(DB, &format!("GRANT ALL ON {tables} TO {}", USERS[1]))
            .expect("grant tables");
    });
}

/// Starts pgbench as `user` through pgharbor; returns its output.
fn pgbench(addr: std::net::SocketAddr, user: &str) -> tokio::task::JoinHandle<(bool, String)> {
    let mut child = tokio::process::Command::new(bin("pgbench"))
        .args(["-c", "5", "-j", "1", "-t", "60", "-M", "simple", "-n"])
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-U", user, DB])
        .env("PGPASSWORD", PASSWORD)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start pgbench");
    tokio::spawn(async move {
        let mut out = String::new();
        let mut err = String::new();
        let mut stdout = child.stdout.take().expect("stdout");
        let mut stderr = child.stderr.take().expect("stderr");
        let _ = tokio::join!(
            stdout.read_to_string(&mut out),
            stderr.read_to_string(&mut err)
        );
        let status = tokio::time::timeout(Duration::from_secs(120), child.wait()).await;
        let ok = matches!(status, Ok(Ok(s)) if s.success());
        (ok, format!("{out}\n{err}"))
    })
}

fn failed_transactions(out: &str) -> Option<u64> {
    out.lines()
        .find_map(|l| l.strip_prefix("number of failed transactions: "))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_under_pgbench_never_hold_more_servers_than_max_db_connections() {
    setup();
    let proxy = start_proxy_with(&config("max_db_connections = 3", &[(DB, DB)], &USERS)).await;
    let direct = connect_direct().await;
    let most = Arc::new(AtomicI64::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (most, done) = (most.clone(), done.clone());
        tokio::spawn(async move {
            // At most 120 s of samples, one every 20 ms.
            for _ in 0..6000 {
                if done.load(Ordering::Acquire) {
                    break;
                }
                let row = direct
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
                        &[&DB],
                    )
                    .await
                    .expect("pg_stat_activity");
                most.fetch_max(row.get(0), Ordering::AcqRel);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let benches: Vec<_> = USERS.iter().map(|u| pgbench(proxy.addr(), u)).collect();
    for (user, bench) in USERS.iter().zip(benches) {
        let (ok, out) = bench.await.expect("pgbench task");
        assert!(ok, "pgbench as {user} failed:\n{out}");
        assert_eq!(failed_transactions(&out), Some(0), "{user}:\n{out}");
    }
    done.store(true, Ordering::Release);
    watcher.await.expect("watcher");
    let most = most.load(Ordering::Acquire);
    assert!(most > 0, "no server connection was ever seen");
    assert!(most <= 3, "Postgres saw {most} sessions on {DB}");
}

#[tokio::test]
async fn the_client_past_max_user_client_connections_gets_53300_naming_the_key() {
    setup();
    // The real database `app`: these sessions are not counted on DB
    // while the other test watches it.
    let proxy = start_proxy_with(&config(
        "max_user_client_connections = 10",
        &[(DB, "app")],
        &USERS,
    ))
    .await;
    let user = USERS[1];
    let mut clients = Vec::new();
    for _ in 0..10 {
        let c = try_connect(&dsn_at(proxy.addr(), user, PASSWORD, DB))
            .await
            .expect("one of the first 10 clients");
        clients.push(c);
    }
    let e = try_connect(&dsn_at(proxy.addr(), user, PASSWORD, DB))
        .await
        .expect_err("the 11th client is refused");
    assert_eq!(sqlstate(&e).as_deref(), Some("53300"), "{e}");
    let message = e
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains("max_user_client_connections"), "{message}");
    // Another user is not counted against this one's limit.
    try_connect(&dsn_at(proxy.addr(), USERS[0], PASSWORD, DB))
        .await
        .expect("another user");
    // A client that left makes room.
    drop(clients.pop());
    let again = eventually(Duration::from_secs(10), || async {
        try_connect(&dsn_at(proxy.addr(), user, PASSWORD, DB))
            .await
            .is_ok()
    })
    .await;
    assert!(again, "no room after a client left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_on_two_databases_never_holds_more_servers_than_max_user_connections() {
    setup();
    // A role of this test alone: Postgres's count of its sessions is ours.
    let user = "limits_c";
    pg().create_user(user, PASSWORD, "scram-sha-256")
        .expect("role");
    // "two" is not DB: the other test counts every session there.
    let databases = [("one", "app"), ("two", "postgres")];
    let proxy = start_proxy_with(&config("max_user_connections = 2", &databases, &[user])).await;
    let direct = connect_direct().await;
    let clients = sleepers(proxy.addr(), user, &["one", "two"], 6);
    let most = most_sessions_of(&direct, user, clients).await;
    assert!(most > 0, "no server connection was ever seen");
    assert!(most <= 2, "Postgres saw {most} sessions of {user}");
}

/// `n` clients of `user` at `addr`, on `databases` in turn, each running
/// five short sleeps.
fn sleepers(
    addr: std::net::SocketAddr,
    user: &str,
    databases: &[&str],
    n: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|i| {
            let dsn = dsn_at(addr, user, PASSWORD, databases[i % databases.len()]);
            tokio::spawn(async move {
                let c = try_connect(&dsn).await.expect("login");
                for _ in 0..5 {
                    c.simple_query("SELECT pg_sleep(0.05)")
                        .await
                        .expect("query");
                }
            })
        })
        .collect()
}

/// The most sessions of `user` Postgres showed while `clients` ran; panics
/// if a client failed.
async fn most_sessions_of(
    direct: &tokio_postgres::Client,
    user: &str,
    clients: Vec<tokio::task::JoinHandle<()>>,
) -> i64 {
    let mut most = 0;
    // At most 60 s of samples, one every 20 ms, until every client is done.
    for _ in 0..3000 {
        most = most.max(backends_of_user(direct, user).await);
        if clients.iter().all(|c| c.is_finished()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for c in clients {
        c.await.expect("every client's queries succeeded");
    }
    most
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_lowers_max_user_connections_closes_idle_servers_and_holds_under_load() {
    setup();
    // A role of this test alone: Postgres's count of its sessions is ours.
    let user = "limits_d";
    pg().create_user(user, PASSWORD, "scram-sha-256")
        .expect("role");
    let text = |limit: &str| {
        let admin = "\n[[users]]\nname = \"admin\"\npassword = \"admin-pw\"\n";
        config(limit, &[("one", "app")], &[user]).replacen(
            "[proxy]\n",
            "[proxy]\nadmin_users = [\"admin\"]\n",
            1,
        ) + admin
    };
    let fp = FileProxy::start(&text("")).await;
    let direct = connect_direct().await;
    let before =
        most_sessions_of(&direct, user, sleepers(fp.proxy.addr(), user, &["one"], 5)).await;
    assert!(
        before >= 3,
        "five clients at once opened only {before} servers"
    );
    let idle = backends_of_user(&direct, user).await;
    assert!(idle >= 3, "the servers stay open, idle: {idle}");

    fp.write(&text("max_user_connections = 2"));
    let (admin, _) = connect_admin(&fp.proxy).await;
    admin.simple_query("RELOAD").await.expect("RELOAD");
    let mut now = idle;
    // Up to 5 s for Postgres to see the closed servers leave.
    for _ in 0..50 {
        now = backends_of_user(&direct, user).await;
        if now <= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(now <= 2, "the lowered limit left {now} idle servers open");

    let most = most_sessions_of(&direct, user, sleepers(fp.proxy.addr(), user, &["one"], 6)).await;
    assert!(most > 0, "no server connection was ever seen");
    assert!(
        most <= 2,
        "after RELOAD Postgres saw {most} sessions of {user}"
    );
}

#[tokio::test]
async fn the_client_past_max_client_conn_gets_53300_saying_what_to_change_and_others_go_on() {
    let text = config_text("transaction", 2, "").replace(
        "admin_users = [\"admin\"]",
        "admin_users = [\"admin\"]\nmax_client_conn = 3",
    );
    let proxy = start_proxy_with(&text).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(connect(&proxy, "app").await);
    }
    let e = try_connect(&dsn(&proxy, "app"))
        .await
        .expect_err("the 4th client is refused");
    assert_eq!(sqlstate(&e).as_deref(), Some("53300"), "{e}");
    let db = e.as_db_error().expect("an ErrorResponse");
    // pgharbor's own refusal, in DESIGN.md's style: prefixed, naming the
    // key and its value, saying what to change.
    assert!(db.message().starts_with("pgharbor: "), "{}", db.message());
    assert!(
        db.message().contains("max_client_conn = 3"),
        "{}",
        db.message()
    );
    let advice = format!("{} {}", db.message(), db.hint().unwrap_or_default());
    assert!(advice.contains("raise proxy.max_client_conn"), "{advice}");
    for (i, c) in clients.iter().enumerate() {
        let v = simple_value(c, &format!("select {i}")).await;
        assert_eq!(v, Some(i.to_string()), "client {i} after the refusal");
    }
    drop(clients.pop());
    let again = eventually(Duration::from_secs(10), || async {
        match try_connect(&dsn(&proxy, "app")).await {
            Ok(c) => simple_value(&c, "select 'in'").await.as_deref() == Some("in"),
            Err(_) => false,
        }
    })
    .await;
    assert!(again, "no room after a client left");
}

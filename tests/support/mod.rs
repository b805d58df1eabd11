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

pub fn bin(name: &str) -> PathBuf {
    pg().bin_dir().join(name)
}

/// psql against pgharbor with -X -qAt; returns the raw output.
pub fn psql(proxy: &Proxy, user: &str, password: &str, db: &str, sql: &str) -> Output {
    let a = proxy.addr();
    Command::new(bin("psql"))
        .args(["-X", "-qAt", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", &a.ip().to_string(), "-p", &a.port().to_string()])
        .args(["-U", user, "-d", db, "-c", sql])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGSERVICE")
        .output()
        .expect("run psql")
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

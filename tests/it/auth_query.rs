//! auth_query: with a config that lists only the auth_user, roles created in
//! Postgres log in through pgharbor (SCRAM pass-through to a Postgres that
//! requires scram-sha-256 for them), a changed password takes effect after
//! the cache TTL, and the client cannot steer the lookup.

use std::sync::OnceLock;
use std::time::Duration;

use crate::support::*;
use pgharbor::Proxy;

const LOOKUP_USER: &str = "aq_lookup";
const LOOKUP_PASSWORD: &str = "aq-lookup-pw";
/// Every role of these tests starts with this; pg_hba requires SCRAM for them.
const PREFIX: &str = "aq_role_";

/// The auth_user (a superuser, to read pg_authid) and the pg_hba line
/// requiring scram-sha-256 for the test roles, once.
fn setup() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let pg = pg();
        pg.create_user(LOOKUP_USER, LOOKUP_PASSWORD, "scram-sha-256")
            .expect("auth_user");
        pg.psql("app", &format!("ALTER ROLE {LOOKUP_USER} SUPERUSER"))
            .expect("superuser");
        let roles: Vec<String> = ["new", "evil", "expired", "nologin", "crowd"]
            .iter()
            .map(|r| format!("{PREFIX}{r}"))
            .collect();
        let line = format!("host all {} 127.0.0.1/32 scram-sha-256\n", roles.join(","));
        prepend_hba(&line);
    });
}

/// Only the auth_user is listed.
async fn start(ttl: &str) -> Proxy {
    start_as(LOOKUP_USER, ttl).await
}

async fn start_as(lookup_user: &str, ttl: &str) -> Proxy {
    setup();
    let port = pg().port();
    start_proxy_with(&format!(
        r#"
[proxy]
listen_addr = "127.0.0.1:0"

[pool]
pool_size = 2
auth_user = "{lookup_user}"
auth_query_cache_ttl = "{ttl}"

[[databases]]
name = "app"
port = {port}

[[databases]]
name = "app_session"
dbname = "app"
port = {port}
pool_mode = "session"

[[users]]
name = "{lookup_user}"
password = "{LOOKUP_PASSWORD}"
"#
    ))
    .await
}

/// Logs in and returns current_user, or the login's SQLSTATE.
async fn whoami(
    addr: std::net::SocketAddr,
    role: &str,
    password: &str,
    db: &str,
) -> Result<String, String> {
    let client = try_connect(&dsn_at(addr, role, password, db))
        .await
        .map_err(|e| sqlstate(&e).unwrap_or_else(|| e.to_string()))?;
    let row = client
        .query_one("SELECT current_user::text", &[])
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_created_after_start_logs_in_and_a_new_password_works_after_the_ttl() {
    let proxy = start("1s").await;
    let role = format!("{PREFIX}new");
    pg().create_user(&role, "first-pw", "scram-sha-256")
        .expect("role");
    for db in ["app", "app_session"] {
        assert_eq!(
            whoami(proxy.addr(), &role, "first-pw", db).await,
            Ok(role.clone()),
            "{db}"
        );
    }
    let out = psql(&proxy, &role, "first-pw", "app", "SELECT current_user").await;
    assert_succeeded(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), role);

    pg().create_user(&role, "second-pw", "scram-sha-256")
        .expect("new password");
    // The cached verifier serves until the TTL has passed: poll (at most
    // 100 times, 100 ms apart) until the new password is accepted.
    let mut accepted = false;
    for _ in 0..100 {
        if whoami(proxy.addr(), &role, "second-pw", "app")
            .await
            .is_ok()
        {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(accepted, "the new password was never accepted");
    let old = whoami(proxy.addr(), &role, "first-pw", "app").await;
    assert_eq!(old, Err("28P01".to_owned()), "the old password still works");
    // Each database keeps its own answer, taken a little later than app's:
    // poll the same way.
    let mut session = Err(String::new());
    for _ in 0..100 {
        session = whoami(proxy.addr(), &role, "second-pw", "app_session").await;
        if session.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(session, Ok(role));
}

#[tokio::test]
async fn a_client_search_path_cannot_change_what_the_lookup_runs() {
    let proxy = start("60s").await;
    let role = format!("{PREFIX}evil");
    pg().create_user(&role, "real-pw", "scram-sha-256")
        .expect("role");
    let fake = postgres_protocol::password::scram_sha_256(b"evil-pw");
    let sql = format!(
        "DROP SCHEMA IF EXISTS evil CASCADE; CREATE SCHEMA evil; GRANT USAGE ON SCHEMA evil TO PUBLIC; \
         CREATE VIEW evil.pg_authid AS SELECT '{role}'::name AS rolname, '{fake}'::text AS rolpassword, \
         NULL::timestamptz AS rolvaliduntil, true AS rolcanlogin; GRANT SELECT ON evil.pg_authid TO PUBLIC"
    );
    pg().psql("app", &sql).expect("schema evil");
    // With that search_path, the default auth_query would read the fake.
    let query = pgharbor::config::DEFAULT_AUTH_QUERY.replace("$1", &format!("'{role}'"));
    let shadowed = pg()
        .psql(
            "app",
            &format!("SET search_path = evil, pg_catalog; {query}"),
        )
        .expect("query");
    assert!(
        shadowed.contains(&fake),
        "the view does not shadow pg_authid: {shadowed}"
    );

    let evil_options = "options='-c search_path=evil,pg_catalog'";
    let dsn = |pw: &str| format!("{} {evil_options}", dsn_at(proxy.addr(), &role, pw, "app"));
    let e = try_connect(&dsn("evil-pw"))
        .await
        .expect_err("the fake verifier is not used");
    assert_eq!(sqlstate(&e).as_deref(), Some("28P01"), "{e}");
    let client = try_connect(&dsn("real-pw"))
        .await
        .expect("the real verifier is used");
    let row = client
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("query");
    assert_eq!(row.get::<_, String>(0), role);
}

#[tokio::test]
async fn an_expired_role_and_a_role_without_login_are_refused_as_a_wrong_password() {
    let proxy = start("60s").await;
    let expired = format!("{PREFIX}expired");
    pg().create_user(&expired, "pw", "scram-sha-256")
        .expect("role");
    pg().psql(
        "app",
        &format!("ALTER ROLE {expired} VALID UNTIL '2000-01-01'"),
    )
    .expect("valid until");
    let direct = try_connect(&dsn_at(direct_addr(), &expired, "pw", "app"))
        .await
        .expect_err("Postgres refuses an expired password");
    let through = whoami(proxy.addr(), &expired, "pw", "app").await;
    assert_eq!(through, Err(sqlstate(&direct).unwrap_or_default()));
    assert_eq!(through, Err("28P01".to_owned()));

    let nologin = format!("{PREFIX}nologin");
    pg().create_user(&nologin, "pw", "scram-sha-256")
        .expect("role");
    pg().psql("app", &format!("ALTER ROLE {nologin} NOLOGIN"))
        .expect("nologin");
    let wrong = whoami(proxy.addr(), "aq_role_nobody_at_all", "pw", "app").await;
    assert_eq!(whoami(proxy.addr(), &nologin, "pw", "app").await, wrong);
    assert_eq!(wrong, Err("28P01".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_logins_of_one_unknown_user_share_one_lookup() {
    // An auth_user of this test alone, whose statements Postgres logs.
    let lookup_user = "aq_lookup_logged";
    pg().create_user(lookup_user, LOOKUP_PASSWORD, "scram-sha-256")
        .expect("auth_user");
    let sql = format!(
        "ALTER ROLE {lookup_user} SUPERUSER; ALTER ROLE {lookup_user} SET log_statement = 'all'"
    );
    pg().psql("app", &sql).expect("log statements");
    let proxy = start_as(lookup_user, "60s").await;
    let role = format!("{PREFIX}crowd");
    pg().create_user(&role, "crowd-pw", "scram-sha-256")
        .expect("role");
    let lookups = || {
        let log = std::fs::read_to_string(pg().log_path()).unwrap_or_default();
        let marker = format!("{lookup_user}@app LOG:  execute");
        log.lines().filter(|l| l.contains(&marker)).count()
    };
    let before = lookups();
    let logins: Vec<_> = (0..16)
        .map(|_| {
            let dsn = dsn_at(proxy.addr(), &role, "crowd-pw", "app");
            tokio::spawn(async move { try_connect(&dsn).await.map(drop) })
        })
        .collect();
    for login in logins {
        login.await.expect("task").expect("login");
    }
    let mut seen = 0;
    for _ in 0..50 {
        seen = lookups() - before;
        if seen > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, 1, "16 concurrent logins ran {seen} lookups");
}

#[tokio::test]
async fn a_role_stored_as_md5_logs_in_with_md5_both_ways() {
    let proxy = start("60s").await;
    let role = "aq_md5_role";
    pg().create_user(role, "md5-pw", "md5").expect("md5 role");
    assert_eq!(
        whoami(proxy.addr(), role, "md5-pw", "app").await,
        Ok(role.to_owned())
    );
    let direct = try_connect(&dsn_at(direct_addr(), role, "wrong", "app"))
        .await
        .expect_err("Postgres refuses a wrong password");
    let through = whoami(proxy.addr(), role, "wrong", "app").await;
    assert_eq!(through, Err(sqlstate(&direct).unwrap_or_default()));
}

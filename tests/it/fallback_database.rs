//! The fallback `[[databases]] name = "*"` entry with auth_query: a
//! database and a role created in Postgres after pgharbor started are
//! reachable with no config change, and the pool made for them closes once
//! unused, its metric series with it.

use std::time::Duration;

use crate::support::*;

const LOOKUP_USER: &str = "fb_lookup";
const LOOKUP_PASSWORD: &str = "fb-lookup-pw";

async fn show_pools(proxy: &pgharbor::Proxy) -> Vec<String> {
    let admin = connect_dsn(&dsn_at(proxy.addr(), "admin", "admin-pw", "pgharbor")).await;
    let rows = admin.simple_query("SHOW POOLS").await.expect("SHOW POOLS");
    rows.iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_created_after_start_is_reachable_and_its_pool_closes_when_unused() {
    pg().create_user(LOOKUP_USER, LOOKUP_PASSWORD, "scram-sha-256")
        .expect("auth_user");
    pg().psql("app", &format!("ALTER ROLE {LOOKUP_USER} SUPERUSER"))
        .expect("superuser");
    let port = pg().port();
    let proxy = start_proxy_with(&format!(
        r#"
[proxy]
listen_addr = "127.0.0.1:0"

[pool]
pool_size = 2
auth_user = "{LOOKUP_USER}"
server_idle_timeout = "1s"

[[databases]]
name = "*"
port = {port}

[[users]]
name = "{LOOKUP_USER}"
password = "{LOOKUP_PASSWORD}"

[[users]]
name = "admin"
password = "admin-pw"
"#
    ))
    .await;

    let (role, db) = ("fb_role", "fb_created_later");
    pg().create_user(role, "fb-pw", "scram-sha-256")
        .expect("role");
    pg().create_database(db, role).expect("database");
    let client = try_connect(&dsn_at(proxy.addr(), role, "fb-pw", db))
        .await
        .expect("login to a database created after start");
    let row = client
        .query_one("SELECT current_database()::text, current_user::text", &[])
        .await
        .expect("query");
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        (db.into(), role.into())
    );
    // A database that does not exist: the lookup in it fails, which is
    // answered as a wrong password is.
    let e = try_connect(&dsn_at(proxy.addr(), role, "fb-pw", "fb_never_created"))
        .await
        .expect_err("no such database");
    assert_eq!(sqlstate(&e).as_deref(), Some("28P01"), "{e}");

    assert!(
        show_pools(&proxy).await.iter().any(|d| d == db),
        "pool not listed"
    );
    let series = format!("database=\"{db}\"");
    assert!(proxy.state().metrics().render().contains(&series));
    drop(client);
    // server_idle_timeout (1 s) closes its idle server, then the pool goes:
    // poll at most 100 times, 100 ms apart.
    let mut gone = false;
    for _ in 0..100 {
        if !show_pools(&proxy).await.iter().any(|d| d == db) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the unused pool of {db} is still listed");
    // Its series went with it.
    let metrics = proxy.state().metrics().render();
    assert!(!metrics.contains(&series), "{metrics}");
    // Nothing of pgharbor's is left on it: Postgres drops it at once.
    pg().psql("app", &format!("DROP DATABASE {db}"))
        .expect("drop database");
}

//! A database with several servers (`host = "a,b"`): a primary and a hot
//! standby made with `pg_basebackup -R`, `target_session_attrs` choosing
//! among them, `load_balance_hosts` spreading connections, and a failover
//! (the primary crashes, the standby is promoted) that clients ride
//! through without a restart of pgharbor.

use std::collections::BTreeSet;
use std::time::Duration;

use pgharbor::scratch_pg::ScratchPostgres;

use crate::support::*;

/// A primary with the test role and database, and its hot standby.
struct Pair {
    primary: ScratchPostgres,
    standby: ScratchPostgres,
}

fn pair() -> Pair {
    let primary = ScratchPostgres::start().expect("start the primary");
    primary
        .create_user(USER, PASSWORD, "scram-sha-256")
        .expect("role");
    primary.create_database("app", USER).expect("database");
    let standby = primary.start_standby().expect("pg_basebackup -R a standby");
    Pair { primary, standby }
}

fn config(servers: &str, attrs: &str, balance: &str, pool_size: usize) -> String {
    config_with(servers, attrs, balance, pool_size, "")
}

fn config_with(servers: &str, attrs: &str, balance: &str, pool_size: usize, pool: &str) -> String {
    format!(
        r#"
[proxy]
listen_addr = "127.0.0.1:0"

[pool]
pool_mode = "transaction"
pool_size = {pool_size}
query_wait_timeout = "30s"
server_connect_timeout = "5s"
{pool}

[[databases]]
name = "app"
host = "{servers}"
target_session_attrs = "{attrs}"
load_balance_hosts = "{balance}"

[[users]]
name = "{USER}"
password = "{PASSWORD}"
auth_type = "scram-sha-256"
"#
    )
}

fn servers(pgs: &[&ScratchPostgres]) -> String {
    let list: Vec<String> = pgs
        .iter()
        .map(|p| format!("127.0.0.1:{}", p.port()))
        .collect();
    list.join(",")
}

async fn connect_to(pg: &ScratchPostgres) -> tokio_postgres::Client {
    connect_dsn(&format!(
        "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname=app connect_timeout=10",
        pg.port()
    ))
    .await
}

/// The port of the server a statement ran on, and whether it is a standby.
async fn where_it_ran(client: &tokio_postgres::Client) -> (i32, bool) {
    let row = client
        .query_one("SELECT inet_server_port(), pg_is_in_recovery()", &[])
        .await
        .expect("where");
    (row.get(0), row.get(1))
}

/// Where libpq (psql) runs the same statement given the same list.
fn libpq_picks(list: &str, attrs: &str) -> (i32, bool) {
    let ports: Vec<&str> = list
        .split(',')
        .map(|hp| hp.rsplit_once(':').expect("port").1)
        .collect();
    let hosts = vec!["127.0.0.1"; ports.len()].join(",");
    let conninfo = format!(
        "host={hosts} port={} user={USER} dbname=app target_session_attrs={attrs}",
        ports.join(",")
    );
    let out = std::process::Command::new(bin("psql"))
        .args(["-X", "-qAt", "-d", &conninfo])
        .args(["-c", "SELECT inet_server_port(), pg_is_in_recovery()"])
        .env("PGPASSWORD", PASSWORD)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("run psql");
    assert_succeeded(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    let (port, standby) = text.trim().split_once('|').expect("port|standby");
    (port.parse().expect("port"), standby == "t")
}

async fn caught_up(standby: &ScratchPostgres, rows: i64) -> bool {
    let direct = connect_to(standby).await;
    eventually(Duration::from_secs(30), || async {
        direct
            .query_one("SELECT count(*) FROM failover_t", &[])
            .await
            .is_ok_and(|r| r.get::<_, i64>(0) == rows)
    })
    .await
}

#[tokio::test]
async fn each_target_session_attrs_lands_where_libpq_would() {
    let p = pair();
    let (primary, standby) = (p.primary.port() as i32, p.standby.port() as i32);
    // Each list names the wrong kind of server first.
    for (list, attrs, want_port, want_standby) in [
        (
            servers(&[&p.standby, &p.primary]),
            "read-write",
            primary,
            false,
        ),
        (
            servers(&[&p.standby, &p.primary]),
            "primary",
            primary,
            false,
        ),
        (
            servers(&[&p.primary, &p.standby]),
            "read-only",
            standby,
            true,
        ),
        (servers(&[&p.primary, &p.standby]), "standby", standby, true),
        (
            servers(&[&p.primary, &p.standby]),
            "prefer-standby",
            standby,
            true,
        ),
        (servers(&[&p.standby, &p.primary]), "any", standby, true),
    ] {
        let proxy = start_proxy_with(&config(&list, attrs, "disable", 2)).await;
        let client = connect(&proxy, "app").await;
        let through = where_it_ran(&client).await;
        assert_eq!(through, (want_port, want_standby), "{attrs} over {list}");
        assert_eq!(through, libpq_picks(&list, attrs), "{attrs}: as libpq");
    }
}

#[tokio::test]
async fn no_server_of_the_kind_asked_for_is_a_clear_error_and_prefer_standby_falls_back() {
    let p = pair();
    let proxy =
        start_proxy_with(&config(&servers(&[&p.standby]), "read-write", "disable", 2)).await;
    let e = tokio_postgres::connect(&dsn(&proxy, "app"), tokio_postgres::NoTls)
        .await
        .map(drop);
    // The login itself succeeds; the first statement needs a server.
    let err = match e {
        Err(e) => e,
        Ok(()) => {
            let client = connect(&proxy, "app").await;
            client
                .simple_query("SELECT 1")
                .await
                .expect_err("no read-write server")
        }
    };
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "08001", "{db:?}");
    assert!(
        db.message().contains("target_session_attrs"),
        "{}",
        db.message()
    );
    assert!(db.message().contains("is read-only"), "{}", db.message());

    // With the standby gone, prefer-standby takes the primary.
    p.standby.crash().expect("stop the standby");
    let proxy = start_proxy_with(&config(
        &servers(&[&p.standby, &p.primary]),
        "prefer-standby",
        "disable",
        2,
    ))
    .await;
    let client = connect(&proxy, "app").await;
    assert_eq!(
        where_it_ran(&client).await,
        (p.primary.port() as i32, false)
    );
}

#[tokio::test]
async fn load_balance_hosts_random_spreads_server_connections_over_the_list() {
    let p = pair();
    let clients = 12;
    let proxy = start_proxy_with(&config(
        &servers(&[&p.primary, &p.standby]),
        "any",
        "random",
        clients,
    ))
    .await;
    let mut held = Vec::new();
    let mut ports = BTreeSet::new();
    // Each client holds its server in a transaction, so each has its own.
    for _ in 0..clients {
        let c = connect(&proxy, "app").await;
        c.batch_execute("BEGIN").await.expect("begin");
        ports.insert(where_it_ran(&c).await.0);
        held.push(c);
    }
    // In disable mode all of them would be on the first server; shuffled,
    // all on one has a chance of 2 in 2^12.
    assert_eq!(
        ports,
        BTreeSet::from([p.primary.port() as i32, p.standby.port() as i32])
    );
}

#[tokio::test]
async fn a_read_write_database_follows_the_promoted_standby_after_its_primary_crashes() {
    let p = pair();
    let proxy = start_proxy_with(&config(
        &servers(&[&p.primary, &p.standby]),
        "read-write",
        "disable",
        3,
    ))
    .await;
    let client = connect(&proxy, "app").await;
    client
        .batch_execute("CREATE TABLE failover_t (n int PRIMARY KEY); INSERT INTO failover_t SELECT generate_series(1, 100)")
        .await
        .expect("write on the primary");
    assert_eq!(
        where_it_ran(&client).await,
        (p.primary.port() as i32, false)
    );
    assert!(
        caught_up(&p.standby, 100).await,
        "the standby replays the rows"
    );

    p.primary.crash().expect("crash the primary");
    // Until a standby is promoted there is no read-write server.
    let err = client
        .simple_query("SELECT 1")
        .await
        .expect_err("no primary");
    assert_eq!(err.code().map(|c| c.code()), Some("08001"), "{err:?}");
    p.standby.promote().expect("promote the standby");

    // A new client, through the same pgharbor: the promoted standby serves
    // it, with every committed row, and takes writes.
    let after = connect(&proxy, "app").await;
    assert_eq!(where_it_ran(&after).await, (p.standby.port() as i32, false));
    after
        .batch_execute("INSERT INTO failover_t VALUES (101)")
        .await
        .expect("write on the promoted standby");
    let n: i64 = after
        .query_one("SELECT count(*) FROM failover_t", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 101);
}

#[tokio::test]
async fn a_standby_pool_leaves_a_server_once_it_is_promoted() {
    let p = pair();
    let other = p.primary.start_standby().expect("a second standby");
    let proxy = start_proxy_with(&config(
        &servers(&[&p.standby, &other]),
        "standby",
        "disable",
        1,
    ))
    .await;
    let client = connect(&proxy, "app").await;
    assert_eq!(where_it_ran(&client).await, (p.standby.port() as i32, true));

    p.standby.promote().expect("promote the first standby");
    // A server of a standby that is promoted is closed (at once if it
    // told pgharbor while idle, else when the transaction that learnt it
    // gives it back); the client is then served by a standby again.
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(where_it_ran(&client).await);
    }
    assert_eq!(seen[1], (other.port() as i32, true), "{seen:?}");
    assert!(
        seen[0] == (other.port() as i32, true) || seen[0] == (p.standby.port() as i32, false),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_transaction_begun_during_a_failover_waits_for_the_promotion_and_runs_there() {
    let p = pair();
    let proxy = start_proxy_with(&config_with(
        &servers(&[&p.primary, &p.standby]),
        "read-write",
        "disable",
        2,
        "server_failover_timeout = \"60s\"",
    ))
    .await;
    let client = connect(&proxy, "app").await;
    client
        .batch_execute(
            "CREATE TABLE failover_t (n int PRIMARY KEY); INSERT INTO failover_t VALUES (1)",
        )
        .await
        .expect("write on the primary");
    assert!(
        caught_up(&p.standby, 1).await,
        "the standby replays the row"
    );

    p.primary.crash().expect("crash the primary");
    let writer = tokio::spawn(async move {
        let r = client
            .batch_execute("INSERT INTO failover_t VALUES (2)")
            .await;
        (client, r)
    });
    // No read-write server: the client waits rather than fail.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!writer.is_finished(), "the write waits for a primary");
    p.standby.promote().expect("promote the standby");
    let (client, r) = tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .expect("served once promoted")
        .expect("join");
    r.expect("the write runs on the promoted standby");
    assert_eq!(
        where_it_ran(&client).await,
        (p.standby.port() as i32, false)
    );
    let n: i64 = client
        .query_one("SELECT count(*) FROM failover_t", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 2);
}

#[tokio::test]
async fn a_missing_database_behind_a_host_list_is_told_at_once_not_waited_for() {
    let p = pair();
    let text = config_with(
        &servers(&[&p.primary, &p.standby]),
        "read-write",
        "disable",
        2,
        "server_failover_timeout = \"60s\"",
    )
    .replacen(
        "target_session_attrs",
        "dbname = \"no_such_db\"\ntarget_session_attrs",
        1,
    );
    let proxy = start_proxy_with(&text).await;
    // What Postgres itself tells a client asking for that database.
    let direct = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname=no_such_db",
            p.primary.port()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .map(drop)
    .expect_err("no such database");
    let asked = tokio::time::timeout(Duration::from_secs(20), async {
        match tokio_postgres::connect(&dsn(&proxy, "app"), tokio_postgres::NoTls).await {
            Err(e) => e,
            Ok((client, conn)) => {
                tokio::spawn(conn);
                client
                    .simple_query("SELECT 1")
                    .await
                    .expect_err("no such database")
            }
        }
    })
    .await
    .expect("told within the failover timeout's first round, not after it");
    assert_eq!(asked.code(), direct.code(), "{asked:?} vs {direct:?}");
}

/// LISTEN needs a server that is not in recovery. Through a database
/// entry whose servers are standbys, the client gets the refusal a
/// standby itself gives (SQLSTATE, severity and words), not one of
/// pgharbor's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_through_a_standby_entry_is_refused_as_the_standby_refuses_it() {
    let p = pair();
    let proxy = start_proxy_with(&config(&servers(&[&p.standby]), "standby", "disable", 1)).await;
    let direct = connect_to(&p.standby).await;
    let on_standby = direct
        .batch_execute("LISTEN standby_channel")
        .await
        .expect_err("a standby refuses LISTEN");
    let through = connect(&proxy, "app").await;
    let via_pgharbor = through
        .batch_execute("LISTEN standby_channel")
        .await
        .expect_err("refused through pgharbor too");
    let fields = |e: &tokio_postgres::Error| {
        let db = e.as_db_error().expect("an ErrorResponse");
        (
            db.severity().to_owned(),
            db.code().code().to_owned(),
            db.message().to_owned(),
        )
    };
    assert_eq!(fields(&via_pgharbor), fields(&on_standby));
    // The client's connection goes on.
    assert_eq!(
        where_it_ran(&through).await,
        (p.standby.port() as i32, true)
    );
}

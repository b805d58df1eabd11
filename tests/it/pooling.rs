//! The core relay: psql, tokio-postgres and pgbench through pgharbor.

use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_select_works_and_bad_logins_are_refused() {
    let proxy = start_proxy("transaction", 2).await;
    let out = psql(&proxy, USER, PASSWORD, "app", "select 1").await;
    assert_succeeded(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");

    let out = psql(&proxy, USER, "wrong", "app", "select 1").await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("password authentication failed for user \"app\""),
        "{err}"
    );

    let out = psql(&proxy, "nobody", "x", "app", "select 1").await;
    assert!(!out.status.success());

    // The SQLSTATEs, seen by a driver.
    let e = tokio_postgres::connect(&dsn(&proxy, "nosuchdb"), tokio_postgres::NoTls)
        .await
        .err()
        .expect("unknown database refused");
    assert_eq!(sqlstate(&e).as_deref(), Some("3D000"), "{e}");
    let bad = dsn(&proxy, "app").replace(PASSWORD, "wrong");
    let e = tokio_postgres::connect(&bad, tokio_postgres::NoTls)
        .await
        .err()
        .expect("wrong password refused");
    assert_eq!(sqlstate(&e).as_deref(), Some("28P01"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_users_log_in() {
    let proxy = start_proxy("transaction", 2).await;
    let out = psql(&proxy, MD5_USER, MD5_PASSWORD, "app", "select current_user").await;
    assert_succeeded(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "legacy");
    let out = psql(&proxy, MD5_USER, "nope", "app", "select 1").await;
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_queries_return_to_the_right_caller() {
    let proxy = start_proxy("transaction", 2).await;
    let client = connect(&proxy, "app").await;
    let int4 = tokio_postgres::types::Type::INT4;
    let futs = (0..500i32).map(|i| {
        let client = &client;
        let int4 = int4.clone();
        async move {
            // Unnamed statements: Parse/Bind/Execute/Sync in one burst.
            let rows = client
                .query_typed("select $1::int * 2", &[(&i, int4)])
                .await
                .unwrap();
            let row = &rows[0];
            assert_eq!(row.get::<_, i32>(0), i * 2);
            let row = client
                .query_one(&format!("select {i}::text"), &[])
                .await
                .unwrap();
            assert_eq!(row.get::<_, String>(0), i.to_string());
        }
    });
    futures_util::future::join_all(futs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_clients_share_a_pool_of_ten() {
    // Its own role, so the count of server connections below is this
    // pool's alone, not also those of tests running beside it.
    let user = "thousand";
    let proxy = start_proxy_with(&config_text_for_user("transaction", 10, "", user)).await;
    let dsn = dsn_as(&proxy, user, user);
    let mut tasks = Vec::new();
    for i in 0..1000i32 {
        let dsn = dsn.clone();
        tasks.push(tokio::spawn(async move {
            let c = connect_dsn(&dsn).await;
            let rows = c.simple_query(&format!("select {i} + 1")).await.unwrap();
            let got = rows.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            });
            assert_eq!(got, Some((i + 1).to_string()));
            c
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.expect("client task"));
    }
    assert_eq!(clients.len(), 1000);
    let direct = connect_direct().await;
    assert!(backends_of_user(&direct, user).await <= 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_settings_never_leak_to_the_next_client() {
    let proxy = start_proxy("session", 1).await;
    {
        let c = connect(&proxy, "app_session").await;
        c.batch_execute("SET statement_timeout = '1234s'; SET application_name = 'leaky'")
            .await
            .unwrap();
        let v: String = c
            .query_one("show statement_timeout", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(v, "1234s");
    }
    // Pool of one: the next client gets the same server, after the reset.
    let mut seen = None;
    for _ in 0..50 {
        let c = connect(&proxy, "app_session").await;
        let row = c
            .query_one("select current_setting('statement_timeout'), current_setting('application_name'), pg_backend_pid()", &[])
            .await
            .unwrap();
        let st: String = row.get(0);
        let app: String = row.get(1);
        assert_eq!(st, "0", "statement_timeout leaked");
        assert_ne!(app, "leaky", "application_name leaked");
        let pid: i32 = row.get(2);
        if let Some(p) = seen {
            assert_eq!(p, pid, "pool of one reuses its server");
        }
        seen = Some(pid);
    }
}

/// A proxy with a pool of one server and `query_wait_timeout` of
/// `wait_timeout`, and the client holding that server in a transaction.
async fn pool_of_one_held(wait_timeout: &str) -> (pgharbor::Proxy, tokio_postgres::Client) {
    let text = config_text("transaction", 1, "").replace(
        "query_wait_timeout = \"60s\"",
        &format!("query_wait_timeout = \"{wait_timeout}\""),
    );
    let proxy = start_proxy_with(&text).await;
    let holder = connect(&proxy, "app").await;
    holder.batch_execute("BEGIN").await.unwrap();
    (proxy, holder)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_timeout_gives_a_clear_error() {
    let (proxy, holder) = pool_of_one_held("300ms").await;
    let waiter = connect(&proxy, "app").await;
    let asked = std::time::Instant::now();
    let err = waiter.simple_query("select 1").await.unwrap_err();
    let waited = asked.elapsed();
    // Not before its timeout, and not left waiting long after it.
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "53300");
    assert!(
        db.message().contains("query_wait_timeout"),
        "{}",
        db.message()
    );
    assert!(db.message().contains("1 of 1 in use"), "{}", db.message());
    holder.batch_execute("COMMIT").await.unwrap();
    let again = connect(&proxy, "app").await;
    again.simple_query("select 1").await.unwrap();
}

/// A client whose startup settings a server already applied for an
/// earlier client of the pool (the application's previous connection)
/// logs in without a server: it gets in while the pool's only server is
/// held in a transaction, with its setting in force. A client with new
/// settings still waits for a server at login, where a bad value would
/// fail it as on Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_application_logs_in_while_every_server_is_busy() {
    let proxy = start_proxy("transaction", 1).await;
    let returning = format!("{} application_name=returning", dsn(&proxy, "app"));
    let first = connect_dsn(&returning).await;
    drop(first);
    let holder = connect(&proxy, "app").await;
    holder.batch_execute("BEGIN").await.unwrap();

    let again = tokio::time::timeout(Duration::from_secs(5), connect_dsn(&returning))
        .await
        .expect("the returning application logs in while the server is held");
    let newcomer = format!("{} application_name=newcomer", dsn(&proxy, "app"));
    let waiting = tokio::spawn(async move { connect_dsn(&newcomer).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "new settings were taken without a server to apply them"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    let newcomer = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the newcomer logs in once the server is free")
        .unwrap();
    assert_eq!(
        simple_value(&again, "show application_name")
            .await
            .as_deref(),
        Some("returning")
    );
    assert_eq!(
        simple_value(&newcomer, "show application_name")
            .await
            .as_deref(),
        Some("newcomer")
    );
}

/// Each waiting client has its own deadline: the first times out at its
/// own, while one that began to wait later is still served when a server
/// comes free before its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_waiting_client_times_out_at_its_own_deadline() {
    let (proxy, holder) = pool_of_one_held("1s").await;
    let first = connect(&proxy, "app").await;
    let second = connect(&proxy, "app").await;
    let t0 = std::time::Instant::now();
    let first_wait = tokio::spawn(async move { first.simple_query("select 1").await });
    tokio::time::sleep(Duration::from_millis(600)).await;
    let second_wait = tokio::spawn(async move {
        second
            .simple_query("select 2")
            .await
            .map(|_| std::time::Instant::now())
    });
    let err = first_wait.await.unwrap().unwrap_err();
    assert_eq!(
        err.as_db_error().expect("an ErrorResponse").code().code(),
        "53300"
    );
    assert!(t0.elapsed() >= Duration::from_secs(1), "{:?}", t0.elapsed());
    // Past the first deadline, before the second's (1.6 s): free the server.
    let free_at = t0 + Duration::from_millis(1300);
    tokio::time::sleep_until(free_at.into()).await;
    holder.batch_execute("COMMIT").await.unwrap();
    let served_at = second_wait
        .await
        .unwrap()
        .expect("the second client is served before its deadline");
    assert!(served_at >= free_at, "served while the server was held");
}

/// Clients waiting for a busy pool get its server in the order they began
/// to wait: a server given back goes to the first in line, not to whoever
/// asks next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_clients_are_served_in_the_order_they_came() {
    let (proxy, holder) = pool_of_one_held("30s").await;
    let mut waits = Vec::new();
    for n in 0..5i32 {
        let client = connect(&proxy, "app").await;
        // One round trip (a simple query): with the extended protocol a
        // client's prepare and its execution would wait in line apart.
        waits.push(tokio::spawn(async move {
            client
                .batch_execute(&format!("select {n}, pg_sleep(0.05)"))
                .await
                .expect("served once the server is free");
            (n, std::time::Instant::now())
        }));
        // Each is in line before the next asks.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    holder.batch_execute("COMMIT").await.unwrap();
    let mut done = Vec::new();
    for w in waits {
        done.push(w.await.unwrap());
    }
    done.sort_by_key(|(_, at)| *at);
    let order: Vec<i32> = done.iter().map(|(n, _)| *n).collect();
    assert_eq!(order, [0, 1, 2, 3, 4]);
}

/// Query texts are in the client's encoding: a LATIN1 client's 'é' is the
/// single byte 0xE9, which is not UTF-8. It reaches Postgres as sent (and
/// comes back as sent), in a plain statement and in one pgharbor inspects
/// for session state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latin1_client_sends_and_gets_latin1_text() {
    use crate::support::raw::{self, RawClient};
    let proxy = start_proxy("transaction", 1).await;
    let mut c = RawClient::login(proxy.addr(), USER, PASSWORD, "app").await;
    c.send(&raw::query("SET client_encoding = 'LATIN1'")).await;
    let msgs = c.until_ready().await;
    assert!(msgs.iter().all(|m| m.tag != b'E'), "{msgs:?}");
    for sql in [
        &b"select 'caf\xe9'::text"[..],
        b"set search_path = 'caf\xe9', public; select 'caf\xe9'::text",
    ] {
        let mut body = sql.to_vec();
        body.push(0);
        c.send(&raw::msg(b'Q', &body)).await;
        let msgs = c.until_ready().await;
        let errors: Vec<_> = msgs.iter().filter(|m| m.tag == b'E').collect();
        assert!(errors.is_empty(), "{errors:?}");
        let row = msgs.iter().find(|m| m.tag == b'D').expect("a row");
        // DataRow: field count (2), length (4), then the value.
        assert_eq!(&row.body[6..], b"caf\xe9");
    }
}

/// A pgharbor config for the role `user` (its own, so other tests counting
/// the shared role's servers are not disturbed) with one more database
/// entry, `name`, owned by `user`; both of the role's databases in `mode`.
fn config_with_database(mode: &str, user: &str, name: &str) -> String {
    let mut text = config_text_for_user(mode, 4, "", user);
    pg().create_database(name, user).expect("create database");
    let port = pg().port();
    text.push_str(&format!(
        "\n[[databases]]\nname = \"{name}\"\nport = {port}\npool_mode = \"{mode}\"\n"
    ));
    text
}

async fn sessions_on(direct: &tokio_postgres::Client, db: &str) -> i64 {
    direct
        .query_one(
            "select count(*) from pg_stat_activity where datname = $1",
            &[&db],
        )
        .await
        .expect("pg_stat_activity")
        .get(0)
}

async fn database_exists(direct: &tokio_postgres::Client, db: &str) -> bool {
    direct
        .query_one(
            "select count(*) = 1 from pg_database where datname = $1",
            &[&db],
        )
        .await
        .expect("pg_database")
        .get(0)
}

/// A client of `db` leaves an idle server to it; then, through pgharbor and
/// connected to another database, psql drops `db`.
async fn drop_database_with_an_idle_server(mode: &str, user: &str, db: &str) {
    let proxy = start_proxy_with(&config_with_database(mode, user, db)).await;
    let user_of_db = connect_dsn(&dsn_as(&proxy, user, db)).await;
    assert_eq!(
        simple_value(&user_of_db, "select 1").await.as_deref(),
        Some("1")
    );
    // In session mode the server goes back to the pool when its client leaves.
    drop(user_of_db);
    let direct = connect_direct().await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            sessions_on(&direct, db).await == 1
        })
        .await,
        "one idle server to {db}"
    );

    // Postgres answers 55006 (after waiting 5 s for the session to leave);
    // pgharbor closes its idle servers to the database and runs it once more.
    let out = psql(&proxy, user, PASSWORD, user, &format!("DROP DATABASE {db}")).await;
    assert_succeeded(&out);
    assert!(!database_exists(&direct, db).await);
    assert_eq!(
        psql(&proxy, user, PASSWORD, user, "select 2").await.stdout,
        b"2\n",
        "the dropping client's pool works on"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_database_succeeds_although_pgharbor_holds_idle_servers_to_it() {
    drop_database_with_an_idle_server("transaction", "dropper", "drop_me").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_database_from_a_session_mode_pool_succeeds_too() {
    drop_database_with_an_idle_server("session", "dropper_session", "drop_me_session").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_database_of_a_database_in_use_fails_and_leaves_its_transaction_alone() {
    let user = "dropper_busy";
    let proxy = start_proxy_with(&config_with_database("transaction", user, "drop_me_busy")).await;
    // A transaction is open on drop_me_busy: its server is in use, not idle.
    let busy = connect_dsn(&dsn_as(&proxy, user, "drop_me_busy")).await;
    busy.batch_execute("begin; create table t (x int); insert into t values (1)")
        .await
        .unwrap();

    let dropper = connect_dsn(&dsn_as(&proxy, user, user)).await;
    let e = dropper
        .simple_query("drop database drop_me_busy")
        .await
        .expect_err("a database with an open transaction is not dropped");
    assert_eq!(sqlstate(&e).as_deref(), Some("55006"), "{e:?}");

    // The open transaction was not touched: it goes on and commits.
    assert_eq!(
        simple_value(&busy, "select count(*) from t")
            .await
            .as_deref(),
        Some("1")
    );
    busy.batch_execute("commit").await.unwrap();
    let direct = connect_direct().await;
    assert!(database_exists(&direct, "drop_me_busy").await);
    // The dropping client's session is in order after the refusal.
    assert_eq!(
        simple_value(&dropper, "select 3").await.as_deref(),
        Some("3")
    );
}

/// A client in line behind a transaction on a pool of 1, with
/// `query_wait_notify` in `[pool]`, and the NOTICEs it receives.
async fn waiting_behind_a_transaction(
    user: &str,
    notify: &str,
) -> (
    pgharbor::Proxy,
    tokio_postgres::Client,
    tokio::task::JoinHandle<Vec<tokio_postgres::SimpleQueryMessage>>,
    tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::error::DbError>,
) {
    let extra = format!("query_wait_notify = \"{notify}\"");
    let proxy = start_proxy_with(&config_text_for_user("transaction", 1, &extra, user)).await;
    let dsn = dsn_as(&proxy, user, user);
    let holder = connect_dsn(&dsn).await;
    holder
        .batch_execute("begin; select 1")
        .await
        .expect("the transaction holds the only server");
    let (waiter, notices) = client_with_messages(&dsn, |m| match m {
        tokio_postgres::AsyncMessage::Notice(n) => Some(n),
        _ => None,
    })
    .await;
    let query = tokio::spawn(async move {
        waiter
            .simple_query("select 'served'")
            .await
            .expect("served once the server is free")
    });
    (proxy, holder, query, notices)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_still_waiting_after_query_wait_notify_is_told_once_and_then_served() {
    let (_proxy, holder, query, mut notices) =
        waiting_behind_a_transaction("wait_notify", "1s").await;
    let notice = tokio::time::timeout(Duration::from_secs(10), notices.recv())
        .await
        .expect("a NOTICE within 10 s")
        .expect("the connection is open");
    assert_eq!(notice.severity(), "NOTICE");
    assert_eq!(notice.code().code(), "00000");
    let message = notice.message();
    assert!(message.starts_with("pgharbor: "), "{message}");
    assert!(message.contains("wait_notify"), "names the pool: {message}");
    assert!(message.contains("1 of 1 in use"), "{message}");
    assert!(message.contains("query_wait_timeout"), "{message}");
    assert!(!query.is_finished(), "still waiting after the notice");
    // Once per wait: nothing more while it goes on.
    let again = tokio::time::timeout(Duration::from_millis(2500), notices.recv()).await;
    assert!(again.is_err(), "a second NOTICE: {again:?}");

    holder.batch_execute("commit").await.expect("commit");
    let rows = tokio::time::timeout(Duration::from_secs(10), query)
        .await
        .expect("served after the commit")
        .expect("query task");
    let served = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(served.as_deref(), Some("served"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_wait_notify_of_zero_tells_a_waiting_client_nothing() {
    let (_proxy, holder, query, mut notices) =
        waiting_behind_a_transaction("wait_silent", "0s").await;
    let notice = tokio::time::timeout(Duration::from_millis(2500), notices.recv()).await;
    assert!(notice.is_err(), "a NOTICE: {notice:?}");
    assert!(!query.is_finished(), "the client waits");
    holder.batch_execute("commit").await.expect("commit");
    tokio::time::timeout(Duration::from_secs(10), query)
        .await
        .expect("served after the commit")
        .expect("query task");
}

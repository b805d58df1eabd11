//! Transaction mode keeps what drivers assume: named prepared statements and
//! session parameters follow the client from server to server.

use std::time::Duration;

use crate::support::*;

fn rows_text(msgs: &[tokio_postgres::SimpleQueryMessage]) -> Vec<String> {
    msgs.iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_prepare_many_executions_across_servers() {
    let proxy = start_proxy("transaction", 3).await;
    let client = connect(&proxy, "app").await;
    let stmt = client
        .prepare("select $1::int + 1, pg_backend_pid()")
        .await
        .unwrap();
    // 50 other clients keep the pool's servers changing hands.
    let dsn = dsn(&proxy, "app");
    let mut others = Vec::new();
    for i in 0..50 {
        let dsn = dsn.clone();
        others.push(tokio::spawn(async move {
            let c = connect_dsn(&dsn).await;
            let s = c.prepare("select $1::text || 'x'").await.unwrap();
            for j in 0..40 {
                let v = format!("{i}-{j}");
                let row = c.query_one(&s, &[&v]).await.unwrap();
                assert_eq!(row.get::<_, String>(0), format!("{v}x"));
            }
        }));
    }
    let mut pids = std::collections::HashSet::new();
    for i in 0..1000i32 {
        let row = client.query_one(&stmt, &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i + 1);
        pids.insert(row.get::<_, i32>(1));
    }
    for o in others {
        o.await.unwrap();
    }
    assert!(pids.len() > 1, "the statement ran on more than one server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_name_different_sql_and_reprepare() {
    let proxy = start_proxy("transaction", 1).await;
    let a = connect(&proxy, "app").await;
    let b = connect(&proxy, "app").await;
    // tokio-postgres names statements s0, s1, … per connection: both
    // clients prepare "s0" with different SQL on the same server.
    let sa = a.prepare("select 'a'::text").await.unwrap();
    let sb = b.prepare("select 'b'::text, 2").await.unwrap();
    for _ in 0..20 {
        assert_eq!(
            a.query_one(&sa, &[]).await.unwrap().get::<_, String>(0),
            "a"
        );
        assert_eq!(
            b.query_one(&sb, &[]).await.unwrap().get::<_, String>(0),
            "b"
        );
    }
    // Close (dropping the Statement sends Close) and prepare new SQL.
    drop(sa);
    let sa2 = a.prepare("select 'a2'::text").await.unwrap();
    assert_eq!(
        a.query_one(&sa2, &[]).await.unwrap().get::<_, String>(0),
        "a2"
    );
    // A Parse error is Postgres's own, and the session goes on.
    let err = a.prepare("selec broken").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42601"));
    assert_eq!(
        a.query_one(&sa2, &[]).await.unwrap().get::<_, String>(0),
        "a2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared_mode_has_no_failures() {
    let _tables = PUBLIC_PGBENCH_TABLES.lock().await;
    let proxy = start_proxy("transaction", 5).await;
    let init = pgbench_at(
        proxy.addr(),
        USER,
        &["-i", "-s", "1", "-q", "--foreign-keys"],
    )
    .await;
    assert_succeeded(&init);
    let bench = pgbench_at(
        proxy.addr(),
        USER,
        &["-M", "prepared", "-c", "50", "-j", "2", "-T", "5"],
    );
    // pgbench -T 5 ends once every client's transaction does: one still
    // running long after says where the clients are.
    let Ok(run) = tokio::time::timeout(Duration::from_secs(90), bench).await else {
        let (admin, _) = connect_admin(&proxy).await;
        let state = where_clients_are(&admin, USER).await;
        panic!("pgbench -M prepared -T 5 still runs after 90 s\n{state}");
    };
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let processed = pgbench_number(&out, "number of transactions actually processed");
    assert!(processed > Some(0), "{out}");
    let failed = pgbench_number(&out, "number of failed transactions");
    assert_eq!(failed, Some(0), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_zone_follows_the_client_and_never_leaks() {
    let proxy = start_proxy("transaction", 2).await;
    let tokyo = connect(&proxy, "app").await;
    tokyo
        .batch_execute("SET TimeZone = 'Asia/Tokyo'")
        .await
        .unwrap();
    let via_options = connect_dsn(&format!(
        "{} options='-c TimeZone=Asia/Tokyo'",
        dsn(&proxy, "app")
    ))
    .await;
    let plain = connect(&proxy, "app").await;
    let default_zone = {
        let d = connect_direct().await;
        rows_text(&d.simple_query("show timezone").await.unwrap())[0].clone()
    };
    assert_ne!(default_zone, "Asia/Tokyo");
    for _ in 0..30 {
        // Interleave so each client lands on servers the others used.
        for (c, want) in [
            (&tokyo, "Asia/Tokyo"),
            (&via_options, "Asia/Tokyo"),
            (&plain, default_zone.as_str()),
        ] {
            let got = rows_text(&c.simple_query("show timezone").await.unwrap());
            assert_eq!(got, vec![want.to_string()]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_and_local_settings_do_not_stick() {
    let proxy = start_proxy("transaction", 2).await;
    let c = connect(&proxy, "app").await;
    let before = rows_text(&c.simple_query("show timezone").await.unwrap());
    c.batch_execute("BEGIN; SET TimeZone = 'UTC+3'; ROLLBACK")
        .await
        .unwrap();
    assert_eq!(
        rows_text(&c.simple_query("show timezone").await.unwrap()),
        before
    );
    c.batch_execute("BEGIN; SET LOCAL TimeZone = 'UTC+3'; COMMIT")
        .await
        .unwrap();
    for _ in 0..10 {
        assert_eq!(
            rows_text(&c.simple_query("show timezone").await.unwrap()),
            before
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_pins_the_client_to_its_server() {
    let proxy = start_proxy("transaction", 2).await;
    let c = connect(&proxy, "app").await;
    c.batch_execute("CREATE TEMP TABLE scratch (a int); INSERT INTO scratch VALUES (7)")
        .await
        .unwrap();
    // Other clients churn the pool; the temp table stays reachable.
    let other = connect(&proxy, "app").await;
    for _ in 0..20 {
        other.simple_query("select 1").await.unwrap();
        let got = rows_text(&c.simple_query("select a from scratch").await.unwrap());
        assert_eq!(got, vec!["7".to_string()]);
    }
    assert_eq!(proxy.state().metrics().session_pins.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_error_mode_refuses_with_a_clear_message() {
    let text = config_text("transaction", 2, "session_state = \"error\"");
    let proxy = start_proxy_with(&text).await;
    let c = connect(&proxy, "app").await;
    let err = c
        .simple_query("CREATE TEMP TABLE scratch (a int)")
        .await
        .unwrap_err();
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "0A000");
    assert!(db.message().contains("session_state"), "{}", db.message());
    // The session goes on, and nothing was created.
    c.simple_query("select 1").await.unwrap();
    let direct = connect_direct().await;
    let n: i64 = direct
        .query_one(
            "select count(*) from pg_class where relname = 'scratch' and relpersistence = 't'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

/// A client that has used only the unnamed statement sends its plain
/// messages without pgharbor recording a reply for each. When it then
/// prepares a named statement in the same group, and pgharbor answers that
/// Parse itself (the server has the statement already), or closes a name
/// pgharbor answers for, those replies must still come after the replies
/// of everything sent before them, as Postgres would order them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_given_by_pgharbor_keep_their_place_after_unnamed_statements() {
    use crate::support::raw::{self, RawClient};
    // One server: the second client's named Parse finds its statement there.
    let proxy = start_proxy("transaction", 1).await;
    let mut first = RawClient::login(proxy.addr(), USER, PASSWORD, "app").await;
    first
        .send(&[raw::parse_named("early", "select 42", &[]), raw::sync()].concat())
        .await;
    assert_eq!(tags(&first.until_ready().await), b"1Z");

    let mut c = RawClient::login(proxy.addr(), USER, PASSWORD, "app").await;
    c.send(
        &[
            raw::parse("select 1"),
            raw::bind(),
            raw::describe_portal(),
            raw::execute(),
            raw::parse_named("late", "select 42", &[]),
            raw::bind_named("late", &[]),
            raw::execute(),
            raw::statement_target(b'C', "never_prepared"),
            raw::sync(),
        ]
        .concat(),
    )
    .await;
    let msgs = c.until_ready().await;
    assert_eq!(tags(&msgs), b"12TDC12DC3Z", "{msgs:?}");
    assert_eq!(
        raw::first_column(&msgs),
        [Some("1".to_string()), Some("42".to_string())]
    );

    // The same with the group's first message failing: Postgres skips to
    // Sync, so nothing of the group is answered but the error.
    c.send(
        &[
            raw::parse("select * from no_such_table_here"),
            raw::bind(),
            raw::execute(),
            raw::parse_named("later", "select 42", &[]),
            raw::statement_target(b'C', "never_prepared"),
            raw::sync(),
        ]
        .concat(),
    )
    .await;
    let msgs = c.until_ready().await;
    assert_eq!(tags(&msgs), b"EZ", "{msgs:?}");
    // "later" was never prepared, as on Postgres: binding it fails (26000),
    // and the connection goes on working.
    c.send(&[raw::bind_named("later", &[]), raw::execute(), raw::sync()].concat())
        .await;
    let msgs = c.until_ready().await;
    assert_eq!(tags(&msgs), b"EZ", "{msgs:?}");
    assert_eq!(msgs[0].sqlstate().as_deref(), Some("26000"));
    c.send(&[raw::bind_named("late", &[]), raw::execute(), raw::sync()].concat())
        .await;
    assert_eq!(
        raw::first_column(&c.until_ready().await),
        [Some("42".to_string())]
    );
}

fn tags(msgs: &[crate::support::raw::Msg]) -> Vec<u8> {
    msgs.iter().map(|m| m.tag).collect()
}

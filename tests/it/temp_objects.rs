//! Temporary objects in transaction mode: whatever form creates one, it
//! stays with the client that created it and never reaches another client,
//! as on Postgres, where every session has its own temporary schema. Each
//! form is run on Postgres directly first, and the answers pgharbor gives
//! are compared with the ones Postgres gave.

use std::time::Duration;

use crate::support::raw::{self, RawClient};
use crate::support::*;
use tokio_postgres::{Client, SimpleQueryMessage};

/// What a query returns: the first column of its rows, or the error's
/// SQLSTATE and message.
type Answer = Result<Vec<Option<String>>, (String, String)>;

async fn answer(c: &Client, sql: &str) -> Answer {
    match c.simple_query(sql).await {
        Ok(msgs) => Ok(msgs
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_owned)),
                _ => None,
            })
            .collect()),
        Err(e) => Err(match e.as_db_error() {
            Some(d) => (d.code().code().to_owned(), d.message().to_owned()),
            None => ("none".to_owned(), e.to_string()),
        }),
    }
}

/// A way to create a temporary object, and a query that reads it.
struct Form {
    what: &'static str,
    create: &'static str,
    probe: &'static str,
}

const fn form(what: &'static str, create: &'static str, probe: &'static str) -> Form {
    Form {
        what,
        create,
        probe,
    }
}

const TABLE_PROBE: &str = "SELECT a::text FROM pg_temp.leak_t";

/// Every form is tested end to end; the last one is hidden from the text
/// scanner (the table is created by a DO block) and caught by the check
/// pgharbor runs on the server when a transaction ran a DO, CALL or CREATE.
const FORMS: &[Form] = &[
    form(
        "TEMP keyword",
        "CREATE TEMP TABLE leak_t (a int); INSERT INTO leak_t VALUES (1)",
        TABLE_PROBE,
    ),
    form(
        "pg_temp-qualified table",
        "CREATE TABLE pg_temp.leak_t (a int); INSERT INTO pg_temp.leak_t VALUES (2)",
        TABLE_PROBE,
    ),
    form(
        "quoted pg_temp, comments and mixed case, after another statement",
        "select 1; /* a */ cReAtE -- b\n TABLE \"pg_temp\" . leak_t (a int); \
         insert into pg_temp.leak_t values (3)",
        TABLE_PROBE,
    ),
    form(
        "SELECT INTO TEMP",
        "SELECT 4 AS a INTO TEMP leak_t",
        TABLE_PROBE,
    ),
    form(
        "SELECT INTO pg_temp",
        "SELECT 5 AS a INTO pg_temp.leak_t",
        TABLE_PROBE,
    ),
    form(
        "CREATE TEMPORARY TABLE AS",
        "CREATE LOCAL TEMPORARY TABLE leak_t AS SELECT 6 AS a",
        TABLE_PROBE,
    ),
    form(
        "CREATE TABLE pg_temp AS",
        "CREATE TABLE pg_temp.leak_t AS SELECT 7 AS a",
        TABLE_PROBE,
    ),
    form(
        "CREATE TYPE pg_temp",
        "CREATE TYPE pg_temp.leak_ty AS (a int)",
        "SELECT (ROW(8)::pg_temp.leak_ty).a::text",
    ),
    form(
        "CREATE DOMAIN pg_temp",
        "CREATE DOMAIN pg_temp.leak_d AS int CHECK (VALUE > 0)",
        "SELECT 9::pg_temp.leak_d::text",
    ),
    form(
        "CREATE FUNCTION pg_temp",
        "CREATE FUNCTION pg_temp.leak_f() RETURNS int LANGUAGE sql AS 'SELECT 10'",
        "SELECT pg_temp.leak_f()::text",
    ),
    form(
        "CREATE OR REPLACE FUNCTION pg_temp",
        "CREATE OR REPLACE FUNCTION pg_temp.leak_f() RETURNS int LANGUAGE sql AS 'SELECT 11'",
        "SELECT pg_temp.leak_f()::text",
    ),
    form(
        "CREATE SEQUENCE pg_temp",
        "CREATE SEQUENCE pg_temp.leak_s START 12",
        "SELECT last_value::text FROM pg_temp.leak_s",
    ),
    form(
        "CREATE TEMP VIEW",
        "CREATE TEMP VIEW leak_v AS SELECT 13 AS a",
        "SELECT a::text FROM pg_temp.leak_v",
    ),
    form(
        "a DO block (caught by the server-side check)",
        "DO $$ BEGIN EXECUTE 'CREATE TEMP TABLE leak_t (a int)'; \
         EXECUTE 'INSERT INTO leak_t VALUES (14)'; END $$",
        TABLE_PROBE,
    ),
];

/// What Postgres directly answers for `f`: to the session that created the
/// object, and to another session.
async fn reference(f: &Form) -> (Answer, Answer) {
    let creator = connect_direct().await;
    creator
        .batch_execute(f.create)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", f.what));
    let own = answer(&creator, f.probe).await;
    let other = answer(&connect_direct().await, f.probe).await;
    assert!(
        own.is_ok() && other.is_err(),
        "{}: {own:?} {other:?}",
        f.what
    );
    (own, other)
}

/// A client of `proxy` that created the object of `f`.
async fn creator(proxy: &pgharbor::Proxy, f: &Form) -> Client {
    let c = connect(proxy, "app").await;
    c.batch_execute(f.create)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", f.what));
    c
}

#[tokio::test]
async fn no_temp_object_reaches_a_later_client_of_the_pool() {
    for f in FORMS {
        let (own, other) = reference(f).await;
        let proxy = start_proxy("transaction", 1).await;
        let creator = creator(&proxy, f).await;
        for _ in 0..3 {
            assert_eq!(answer(&creator, f.probe).await, own, "{}", f.what);
        }
        drop(creator);
        for i in 0..50 {
            let later = connect(&proxy, "app").await;
            assert_eq!(
                answer(&later, f.probe).await,
                other,
                "{}: later client {i}",
                f.what
            );
        }
    }
}

#[tokio::test]
async fn a_client_keeps_its_temp_objects_while_other_clients_never_see_them() {
    for f in FORMS {
        let (own, other) = reference(f).await;
        let proxy = start_proxy("transaction", 2).await;
        let creator = creator(&proxy, f).await;
        for i in 0..5 {
            // Another client holds a server in an open transaction while the
            // creator's next transaction runs: without the pin, one of the
            // two would land on the server that has the object.
            let neighbour = connect(&proxy, "app").await;
            neighbour.batch_execute("BEGIN").await.expect("begin");
            assert_eq!(answer(&neighbour, f.probe).await, other, "{}: {i}", f.what);
            assert_eq!(answer(&creator, f.probe).await, own, "{}: {i}", f.what);
        }
    }
}

#[tokio::test]
async fn in_error_mode_a_temp_object_is_refused_with_a_clear_error() {
    let text = config_text("transaction", 1, "session_state = \"error\"");
    let proxy = start_proxy_with(&text).await;
    // The forms the scanner knows are refused before they run.
    for f in &FORMS[..FORMS.len() - 1] {
        let c = connect(&proxy, "app").await;
        let e = c.batch_execute(f.create).await.expect_err(f.what);
        assert_eq!(sqlstate(&e).as_deref(), Some("0A000"), "{}: {e}", f.what);
        let (_, other) = reference(f).await;
        assert_eq!(answer(&c, f.probe).await, other, "{}", f.what);
    }
}

#[tokio::test]
async fn in_error_mode_a_temp_object_the_scanner_missed_is_dropped_with_a_warning() {
    let hidden = FORMS.last().expect("forms");
    let (_, other) = reference(hidden).await;
    let text = config_text("transaction", 1, "session_state = \"error\"");
    let proxy = start_proxy_with(&text).await;
    let mut c = RawClient::login(proxy.addr(), USER, PASSWORD, "app").await;
    c.send(&raw::query(hidden.create)).await;
    let reply = c.until_ready().await;
    assert_eq!(raw::status(&reply), Some(b'I'));
    // The warning follows the transaction's ReadyForQuery: the check runs
    // when the server is about to go back to the pool.
    let warning = c
        .recv_within(Duration::from_secs(10))
        .await
        .expect("a warning");
    assert_eq!(warning.tag, b'N', "{warning:?}");
    assert_eq!(warning.field(b'V').as_deref(), Some("WARNING"));
    assert!(
        warning.field(b'M').is_some_and(|m| m.contains("temporary")),
        "{warning:?}"
    );
    for i in 0..50 {
        let later = connect(&proxy, "app").await;
        assert_eq!(
            answer(&later, hidden.probe).await,
            other,
            "later client {i}"
        );
    }
}

//! Transaction mode's named prepared statements answer as Postgres would
//! to that client alone: SQL `DEALLOCATE`, `DISCARD ALL` and `EXECUTE` act
//! on the client's own statements, never on other clients', and a changed
//! result type reaches the client as Postgres sends it. Every test runs
//! the same steps on a direct connection and compares what the client
//! receives.

use std::net::SocketAddr;

use crate::support::raw::{self, Msg, RawClient};
use crate::support::*;
use pgharbor::Proxy;

/// What a client receives, in a form that compares across connections:
/// errors and notices by SQLSTATE and message (the rest of their fields
/// name source lines), everything else whole.
fn shown(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .map(|m| match m.tag {
            b'E' | b'N' => format!(
                "{} {} {}",
                m.tag as char,
                m.sqlstate().unwrap_or_default(),
                m.field(b'M').unwrap_or_default()
            ),
            _ => format!("{} {:?}", m.tag as char, String::from_utf8_lossy(&m.body)),
        })
        .collect()
}

fn direct_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], pg().port()))
}

/// Sends each step and collects its replies up to ReadyForQuery.
async fn run(c: &mut RawClient, steps: &[Vec<u8>]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for step in steps {
        c.send(step).await;
        out.push(shown(&c.until_ready().await));
    }
    out
}

/// The steps' replies through pgharbor and from Postgres directly.
async fn through_and_direct(
    proxy: &Proxy,
    steps: &[Vec<u8>],
) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
    let mut c = RawClient::login(proxy.addr(), USER, PASSWORD, "app").await;
    let through = run(&mut c, steps).await;
    let mut d = RawClient::login(direct_addr(), USER, PASSWORD, "app").await;
    let direct = run(&mut d, steps).await;
    (through, direct)
}

fn prepare(name: &str, sql: &str) -> Vec<u8> {
    [raw::parse_named(name, sql, &[]), raw::sync()].concat()
}

fn run_named(name: &str, params: &[&str]) -> Vec<u8> {
    [raw::bind_named(name, params), raw::execute(), raw::sync()].concat()
}

fn no_internal_names(replies: &[Vec<String>]) {
    for r in replies.iter().flatten() {
        assert!(
            !r.contains("ph_"),
            "pgharbor's statement name reached the client: {r}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_all_then_the_same_text_prepares_again_as_on_postgres() {
    let proxy = start_proxy("transaction", 1).await;
    let steps = [
        prepare("s1", "select 1"),
        run_named("s1", &[]),
        raw::query("DEALLOCATE ALL"),
        run_named("s1", &[]),
        prepare("s1", "select 1"),
        run_named("s1", &[]),
        raw::query("deallocate prepare all"),
        prepare("s1", "select 1"),
    ];
    let (through, direct) = through_and_direct(&proxy, &steps).await;
    assert_eq!(through, direct);
    no_internal_names(&through);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clients_deallocate_all_and_discard_all_never_touch_another_clients_statements() {
    // One server: both clients' statements live on it.
    let proxy = start_proxy("transaction", 1).await;
    let mut a = RawClient::login(proxy.addr(), USER, PASSWORD, "app").await;
    let mut b = RawClient::login(proxy.addr(), USER, PASSWORD, "app").await;
    run(
        &mut a,
        &[prepare("a", "select 'shared'"), run_named("a", &[])],
    )
    .await;
    let first = run(
        &mut b,
        &[prepare("b", "select 'shared'"), run_named("b", &[])],
    )
    .await;
    for reset in ["DEALLOCATE ALL", "DISCARD ALL"] {
        run(&mut a, &[prepare("a", "select 'shared'")]).await;
        let by_a = run(&mut a, &[raw::query(reset)]).await;
        assert!(
            by_a[0].iter().all(|m| !m.starts_with('E')),
            "{reset}: {by_a:?}"
        );
        let after = run(&mut b, &[run_named("b", &[])]).await;
        assert_eq!(
            after[0], first[1],
            "{reset} by one client broke another's statement"
        );
        // A new client preparing the same text is not hurt either.
        let mut c = RawClient::login(proxy.addr(), USER, PASSWORD, "app").await;
        let fresh = run(
            &mut c,
            &[prepare("c", "select 'shared'"), run_named("c", &[])],
        )
        .await;
        assert_eq!(fresh[1], first[1], "{reset}");
        no_internal_names(&fresh);
    }
    // On Postgres the other session is untouched too: the same replies.
    let mut d = RawClient::login(direct_addr(), USER, PASSWORD, "app").await;
    let direct = run(
        &mut d,
        &[prepare("b", "select 'shared'"), run_named("b", &[])],
    )
    .await;
    assert_eq!(first, direct);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_of_a_protocol_statement_frees_its_name_as_on_postgres() {
    let proxy = start_proxy("transaction", 2).await;
    let steps = [
        // As psycopg 3 does when its cache evicts a statement.
        prepare("_pg3_0", "select 10"),
        raw::query("DEALLOCATE _pg3_0"),
        run_named("_pg3_0", &[]),
        raw::query("DEALLOCATE \"_pg3_0\""),
        prepare("_pg3_0", "select 11"),
        run_named("_pg3_0", &[]),
        // Unknown names, quoted and folded.
        raw::query("DEALLOCATE no_such_statement"),
        raw::query("DEALLOCATE PREPARE \"No Such\""),
        raw::query("deallocate _PG3_0"),
        run_named("_pg3_0", &[]),
        // Inside a transaction, and inside a failed one.
        prepare("t1", "select 12"),
        raw::query("BEGIN"),
        raw::query("DEALLOCATE t1"),
        run_named("t1", &[]),
        raw::query("ROLLBACK"),
        prepare("t2", "select 13"),
        raw::query("BEGIN"),
        raw::query("select 1/0"),
        raw::query("DEALLOCATE t2"),
        raw::query("ROLLBACK"),
        run_named("t2", &[]),
        // With the extended protocol.
        [
            raw::parse("DEALLOCATE t2"),
            raw::bind(),
            raw::execute(),
            raw::sync(),
        ]
        .concat(),
        run_named("t2", &[]),
    ];
    let (through, direct) = through_and_direct(&proxy, &steps).await;
    assert_eq!(through, direct);
    no_internal_names(&through);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_of_a_protocol_statement_runs_it_as_on_postgres() {
    let proxy = start_proxy("transaction", 2).await;
    let steps = [
        [
            raw::parse_named("p1", "select $1::int + 1", &[23]),
            raw::sync(),
        ]
        .concat(),
        raw::query("EXECUTE p1(41)"),
        raw::query("execute \"p1\" (1); select 'execute p1(2)'; EXECUTE p1 (2)"),
        [
            raw::parse("EXECUTE p1(5)"),
            raw::bind(),
            raw::execute(),
            raw::sync(),
        ]
        .concat(),
        raw::query("BEGIN"),
        raw::query("EXECUTE p1(7)"),
        raw::query("COMMIT"),
        raw::query("EXECUTE p1('x')"),
        raw::query("EXECUTE nope(1)"),
    ];
    let (through, direct) = through_and_direct(&proxy, &steps).await;
    assert_eq!(through, direct);
    no_internal_names(&through);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_clients_statement_never_pgharbors() {
    let proxy = start_proxy("transaction", 1).await;
    let steps = [
        prepare("mine", "select 20"),
        // A second Parse of a live name: 42P05 names it.
        prepare("mine", "select 20"),
        raw::query("DEALLOCATE mine"),
        raw::query("DEALLOCATE mine"),
    ];
    let (through, direct) = through_and_direct(&proxy, &steps).await;
    assert_eq!(through, direct);
    no_internal_names(&through);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discard_all_forgets_the_clients_statements_and_settings_as_on_postgres() {
    let proxy = start_proxy("transaction", 1).await;
    let steps = [
        prepare("d1", "select 30"),
        raw::query("SET application_name = 'changed'"),
        raw::query("SET DateStyle = 'SQL, DMY'"),
        raw::query("BEGIN"),
        raw::query("DISCARD ALL"),
        raw::query("ROLLBACK"),
        raw::query("DISCARD ALL"),
        run_named("d1", &[]),
        raw::query("SHOW application_name"),
        raw::query("SHOW DateStyle"),
        prepare("d1", "select 31"),
        run_named("d1", &[]),
    ];
    let (through, direct) = through_and_direct(&proxy, &steps).await;
    assert_eq!(through, direct);
    no_internal_names(&through);
}

/// One client's steps around a column's type change: prepare and
/// describe, run, ALTER (by `ddl`), run (Postgres: 0A000), close and
/// prepare again, run.
async fn retype(c: &mut RawClient, ddl: &tokio_postgres::Client) -> Vec<Vec<String>> {
    ddl.batch_execute(
        "DROP TABLE IF EXISTS retyped; CREATE TABLE retyped (b int); INSERT INTO retyped VALUES (1073741824); GRANT SELECT ON retyped TO app",
    )
    .await
    .unwrap();
    // An expression, so the RowDescription names no table (whose oid
    // differs from run to run).
    let sql = "select b + 0 as b from retyped";
    let describe = raw::statement_target(b'D', "s");
    let mut out = run(
        c,
        &[
            [
                raw::parse_named("s", sql, &[]),
                describe.clone(),
                raw::sync(),
            ]
            .concat(),
            run_named("s", &[]),
        ],
    )
    .await;
    ddl.batch_execute("ALTER TABLE retyped ALTER COLUMN b TYPE real")
        .await
        .unwrap();
    let again = [
        raw::statement_target(b'C', "s"),
        raw::parse_named("s", sql, &[]),
        describe,
        raw::sync(),
    ]
    .concat();
    out.extend(run(c, &[run_named("s", &[]), again, run_named("s", &[])]).await);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_result_type_reaches_the_client_and_its_new_prepare_reads_correct_values() {
    // One server: the statement is bound where it went stale.
    let proxy = start_proxy("transaction", 1).await;
    let ddl = connect_direct().await;
    let mut c = RawClient::login(proxy.addr(), USER, PASSWORD, "app").await;
    let through = retype(&mut c, &ddl).await;
    let mut d = RawClient::login(direct_addr(), USER, PASSWORD, "app").await;
    let direct = retype(&mut d, &ddl).await;
    assert_eq!(through, direct);
    assert!(
        through[2][0].starts_with("E 0A000"),
        "the client is told, as by Postgres: {:?}",
        through[2]
    );
    no_internal_names(&through);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_prepares_the_statement_on_a_server_that_lost_it() {
    // Two statements per server: preparing a third evicts the first,
    // which EXECUTE must then prepare again before running it.
    let proxy = start_proxy_with(&config_text(
        "transaction",
        1,
        "max_prepared_statements = 2",
    ))
    .await;
    let steps = [
        [
            raw::parse_named("p1", "select $1::int + 1", &[23]),
            raw::sync(),
        ]
        .concat(),
        [
            raw::parse_named("p2", "select $1::int * 2", &[23]),
            raw::sync(),
        ]
        .concat(),
        [
            raw::parse_named("p3", "select $1::int - 3", &[23]),
            raw::sync(),
        ]
        .concat(),
        raw::query("EXECUTE p1(41)"),
        raw::query("EXECUTE p2(21); EXECUTE p3(1)"),
        raw::query("BEGIN"),
        raw::query("EXECUTE p1(1)"),
        raw::query("select 1/0"),
        raw::query("EXECUTE p2(2)"),
        raw::query("ROLLBACK"),
        run_named("p1", &["5"]),
    ];
    let (through, direct) = through_and_direct(&proxy, &steps).await;
    assert_eq!(through, direct);
    no_internal_names(&through);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eviction_skipped_after_an_error_leaves_the_statement_usable() {
    // Two statements per server: a third, parsed after a failed Execute of
    // its group, evicts the first with a Close the server skips; the
    // server keeps that statement, which a later Bind must still find
    // (not be refused with 42P05 when it is prepared again).
    let proxy = start_proxy_with(&config_text(
        "transaction",
        1,
        "max_prepared_statements = 2",
    ))
    .await;
    let steps = [
        [
            raw::parse_named("p1", "select $1::int + 11", &[23]),
            raw::sync(),
        ]
        .concat(),
        [
            raw::parse_named("p2", "select $1::int * 12", &[23]),
            raw::sync(),
        ]
        .concat(),
        run_named("p2", &["1"]),
        [
            raw::execute(),
            raw::parse_named("p3", "select $1::int - 13", &[23]),
            raw::sync(),
        ]
        .concat(),
        run_named("p1", &["5"]),
        run_named("p3", &["5"]),
    ];
    let (through, direct) = through_and_direct(&proxy, &steps).await;
    assert_eq!(through, direct);
    no_internal_names(&through);
}

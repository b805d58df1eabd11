//! Around a login, the client gets what Postgres alone would send: nothing
//! for a Terminate before any startup packet, the server's NOTICE where
//! Postgres puts it, and a CREATE DATABASE from a template that pgharbor's
//! idle servers are connected to works as it does with nobody connected.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::raw::{Msg, RawClient};
use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a peer sends back to a Terminate sent as the first bytes of a
/// connection, up to its close.
async fn answer_to_an_early_terminate(addr: SocketAddr) -> Vec<u8> {
    let mut c = RawClient::open(addr).await;
    c.stream
        .write_all(&raw::msg(b'X', &[]))
        .await
        .expect("send");
    let mut got = Vec::new();
    let read = c.stream.read_to_end(&mut got);
    match tokio::time::timeout(Duration::from_secs(10), read).await {
        Ok(_) => got,
        Err(_) => panic!("{addr} kept the connection open"),
    }
}

#[tokio::test]
async fn a_terminate_before_the_startup_packet_closes_silently_as_on_postgres() {
    let direct: SocketAddr = ([127, 0, 0, 1], pg().port()).into();
    let postgres = answer_to_an_early_terminate(direct).await;
    assert!(postgres.is_empty(), "{postgres:?}");
    let proxy = start_proxy("transaction", 1).await;
    for _ in 0..20 {
        assert_eq!(answer_to_an_early_terminate(proxy.addr()).await, postgres);
    }
}

/// A login's messages after authentication with a long application_name
/// (Postgres truncates it to 63 bytes with a NOTICE); ParameterStatus
/// messages collapsed into one `S`.
async fn login_with_a_long_application_name(addr: SocketAddr, db: &str) -> Vec<(u8, Vec<u8>)> {
    let name = "n".repeat(70);
    let params = [
        ("user", USER),
        ("database", db),
        ("application_name", &name),
    ];
    let (_c, msgs) = RawClient::login_with(addr, PASSWORD, &params).await;
    let mut shape: Vec<(u8, Vec<u8>)> = Vec::new();
    for Msg { tag, body } in msgs {
        match tag {
            b'N' => shape.push((tag, body.to_vec())),
            b'S' if shape.last().is_some_and(|l| l.0 == b'S') => {}
            // What differs by design (pgharbor's own key) is left out.
            _ => shape.push((tag, Vec::new())),
        }
    }
    shape
}

#[tokio::test]
async fn a_notice_of_the_login_reaches_the_client_where_postgres_puts_it() {
    let direct: SocketAddr = ([127, 0, 0, 1], pg().port()).into();
    let postgres = login_with_a_long_application_name(direct, "app").await;
    assert_eq!(postgres.get(1).map(|m| m.0), Some(b'N'), "{postgres:?}");
    let proxy = start_proxy("session", 1).await;
    let got = login_with_a_long_application_name(proxy.addr(), "app").await;
    assert_eq!(got, postgres);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_database_from_a_template_pgharbor_holds_idle_servers_on_succeeds() {
    let user = "templater";
    let mut text = config_text_for_user("transaction", 2, "", user);
    pg().psql("app", &format!("ALTER ROLE {user} CREATEDB"))
        .expect("createdb");
    pg().create_database("tmpl_src", user)
        .expect("create database");
    let port = pg().port();
    text.push_str(&format!(
        "\n[[databases]]\nname = \"tmpl_src\"\nport = {port}\n"
    ));
    // On Postgres with nobody connected to the template, it succeeds.
    let direct = connect_direct().await;
    direct
        .batch_execute("CREATE DATABASE tmpl_copy_direct TEMPLATE tmpl_src")
        .await
        .expect("direct CREATE DATABASE");

    let proxy = start_proxy_with(&text).await;
    let on_template = connect_dsn(&dsn_as(&proxy, user, "tmpl_src")).await;
    assert_eq!(
        simple_value(&on_template, "select 1").await.as_deref(),
        Some("1")
    );
    // Its server is idle in the pool now, still connected to tmpl_src.
    let creator = connect_dsn(&dsn_as(&proxy, user, user)).await;
    creator
        .simple_query("CREATE DATABASE tmpl_copy TEMPLATE tmpl_src")
        .await
        .expect("CREATE DATABASE through pgharbor");
    let exists: bool = direct
        .query_one(
            "select count(*) = 1 from pg_database where datname = 'tmpl_copy'",
            &[],
        )
        .await
        .expect("pg_database")
        .get(0);
    assert!(exists);
    assert_eq!(
        simple_value(&on_template, "select 2").await.as_deref(),
        Some("2"),
        "the template's clients go on"
    );
}

/// The ParameterStatus messages of a login, by name.
fn parameter_statuses(msgs: &[Msg]) -> std::collections::BTreeMap<String, String> {
    msgs.iter()
        .filter(|m| m.tag == b'S')
        .map(|m| {
            let mut parts = m.body.split(|&b| b == 0).map(String::from_utf8_lossy);
            let name = parts.next().unwrap_or_default().into_owned();
            let value = parts.next().unwrap_or_default().into_owned();
            (name, value)
        })
        .collect()
}

/// `SHOW name` and the backend's pid, in one round trip (one server).
async fn show_on_a_server(c: &mut RawClient, name: &str) -> (String, String) {
    c.send(&raw::query(&format!(
        "SHOW {name}; select pg_backend_pid()"
    )))
    .await;
    let got = c.until_ready().await;
    assert!(got.iter().all(|m| m.tag != b'E'), "SHOW {name}: {got:?}");
    let values = raw::first_column(&got);
    let value = |i: usize| values.get(i).cloned().flatten().unwrap_or_default();
    (value(0), value(1))
}

/// The startup parameters drivers send outside `options`, each with a
/// value other than the server's default.
const PLAIN_STARTUP_PARAMETERS: [(&str, &str); 5] = [
    ("search_path", "pg_temp, public"),
    ("statement_timeout", "5s"),
    ("client_min_messages", "warning"),
    ("IntervalStyle", "iso_8601"),
    ("client_encoding", "utf8"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_startup_parameters_read_as_on_postgres_on_every_server_of_the_pool() {
    let user = "startup_params_role";
    let text = config_text_for_user("transaction", 2, "", user);
    let direct: SocketAddr = ([127, 0, 0, 1], pg().port()).into();
    for (name, value) in PLAIN_STARTUP_PARAMETERS {
        let params = |db| [("user", user), ("database", db), (name, value)];
        let (mut c, login) = RawClient::login_with(direct, PASSWORD, &params("app")).await;
        let want_status = parameter_statuses(&login);
        let (want, _) = show_on_a_server(&mut c, name).await;
        assert_ne!(want, "", "SHOW {name} directly");

        // A pool of its own per parameter, so the first server is new.
        let proxy = start_proxy_with(&text).await;
        let (mut c, login) = RawClient::login_with(proxy.addr(), PASSWORD, &params(user)).await;
        assert_eq!(
            parameter_statuses(&login),
            want_status,
            "{name}={value}: ParameterStatus through pgharbor (left) and directly (right)"
        );
        let (first, first_pid) = show_on_a_server(&mut c, name).await;
        assert_eq!(first, want, "{name}={value}: SHOW on the first server");
        // Another client holds that server in a transaction: the next
        // statement gets the pool's second server.
        let mut holder = RawClient::login(proxy.addr(), user, PASSWORD, user).await;
        holder
            .send(&raw::query("BEGIN; select pg_backend_pid()"))
            .await;
        let held = raw::first_column(&holder.until_ready().await);
        assert_eq!(
            held,
            vec![Some(first_pid.clone())],
            "the holder took the first server"
        );
        let (second, second_pid) = show_on_a_server(&mut c, name).await;
        assert_ne!(second_pid, first_pid, "{name}: not on a second server");
        assert_eq!(second, want, "{name}={value}: SHOW on the second server");
    }
}

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

//! `proxy.client_login_timeout`: a client that has not logged in within it
//! is disconnected, and gets what Postgres sends a client that outlasts its
//! `authentication_timeout`. Each case is played against a Postgres of its
//! own with `authentication_timeout = 1s` and against pgharbor with
//! `client_login_timeout = "1s"`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use pgharbor::scratch_pg::ScratchPostgres;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;

use crate::support::raw::{Msg, RawClient};
use crate::support::*;

const ROLE: &str = "login_timeout_role";
const ROLE_PASSWORD: &str = "login-timeout-pw";

/// A Postgres that gives a client 1 s to log in, with [`ROLE`] (SCRAM).
async fn postgres_with_one_second() -> ScratchPostgres {
    tokio::task::spawn_blocking(|| {
        let pg = ScratchPostgres::start().expect("start a scratch PostgreSQL");
        pg.psql("postgres", "ALTER SYSTEM SET authentication_timeout = '1s'")
            .expect("set authentication_timeout");
        pg.psql("postgres", "SELECT pg_reload_conf()")
            .expect("reload");
        pg.create_user(ROLE, ROLE_PASSWORD, "scram-sha-256")
            .expect("create role");
        let shown = pg
            .psql("postgres", "SHOW authentication_timeout")
            .expect("show");
        assert_eq!(shown.trim(), "1s");
        pg
    })
    .await
    .expect("start task")
}

/// pgharbor with `client_login_timeout = "1s"` and [`ROLE`] as a SCRAM user.
async fn pgharbor_with_one_second() -> pgharbor::Proxy {
    let text = config_text("session", 2, "")
        .replace("[proxy]\n", "[proxy]\nclient_login_timeout = \"1s\"\n");
    let text = format!(
        "{text}\n[[users]]\nname = \"{ROLE}\"\npassword = \"{ROLE_PASSWORD}\"\nauth_type = \"scram-sha-256\"\n"
    );
    start_proxy_with(&text).await
}

/// What a stalled client got before the connection closed.
struct Outcome {
    /// Each message's tag, with the severity and SQLSTATE of an
    /// ErrorResponse.
    kinds: Vec<(char, String, String)>,
    messages: Vec<Msg>,
    /// From the stall to the close.
    waited: Duration,
}

async fn outcome(mut c: RawClient, started: Instant) -> Outcome {
    let messages = c.until_closed(Duration::from_secs(10)).await;
    let waited = started.elapsed();
    let kinds = messages
        .iter()
        .map(|m| {
            let severity = m.field(b'V').unwrap_or_default();
            (m.tag as char, severity, m.sqlstate().unwrap_or_default())
        })
        .collect();
    Outcome {
        kinds,
        messages,
        waited,
    }
}

/// Half a startup packet: its length says 40 bytes, 8 are sent.
async fn stall_in_startup_packet(addr: SocketAddr) -> Outcome {
    let mut c = RawClient::open(addr).await;
    let started = Instant::now();
    let mut half = 40i32.to_be_bytes().to_vec();
    half.extend(196_608i32.to_be_bytes());
    c.send(&half).await;
    outcome(c, started).await
}

/// A startup packet, then the SCRAM exchange up to server-first-message,
/// and then nothing.
async fn stall_in_scram(addr: SocketAddr) -> Outcome {
    let mut c = RawClient::open(addr).await;
    let started = Instant::now();
    let mut out = BytesMut::new();
    frontend::startup_message([("user", ROLE), ("database", "postgres")], &mut out)
        .expect("startup message");
    c.send(&out).await;
    let sasl = c
        .recv_within(Duration::from_secs(5))
        .await
        .expect("AuthenticationSASL");
    assert_eq!(
        (sasl.tag, sasl.body.clone().get_i32()),
        (b'R', 10),
        "{sasl:?}"
    );
    let scram = ScramSha256::new(ROLE_PASSWORD.as_bytes(), ChannelBinding::unsupported());
    let mut out = BytesMut::new();
    frontend::sasl_initial_response("SCRAM-SHA-256", scram.message(), &mut out)
        .expect("client-first");
    c.send(&out).await;
    let first = c
        .recv_within(Duration::from_secs(5))
        .await
        .expect("server-first");
    assert_eq!(
        (first.tag, first.body.clone().get_i32()),
        (b'R', 11),
        "{first:?}"
    );
    outcome(c, started).await
}

/// pgharbor's answer matches Postgres's; an error of pgharbor's names the
/// key to raise.
fn assert_same(case: &str, pg: &Outcome, ours: &Outcome) {
    println!(
        "{case}: Postgres sent {:?} and closed after {:?}; pgharbor sent {:?} and closed after {:?}",
        pg.kinds, pg.waited, ours.kinds, ours.waited
    );
    assert_eq!(
        ours.kinds, pg.kinds,
        "{case}: pgharbor's answer differs from Postgres's"
    );
    for m in ours.messages.iter().filter(|m| m.tag == b'E') {
        let text = m.field(b'M').unwrap_or_default();
        assert!(
            text.starts_with("pgharbor: ") && text.contains("client_login_timeout"),
            "{case}: {text}"
        );
    }
    for (who, waited) in [("Postgres", pg.waited), ("pgharbor", ours.waited)] {
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
            "{case}: {who} closed after {waited:?}, not about 1 s"
        );
    }
}

#[tokio::test]
async fn a_client_that_stalls_in_its_startup_packet_is_closed_at_client_login_timeout_as_postgres_does(
) {
    let pg = postgres_with_one_second().await;
    let proxy = pgharbor_with_one_second().await;
    let direct: SocketAddr = format!("{}:{}", pg.host(), pg.port()).parse().unwrap();
    let (from_pg, ours) = tokio::join!(
        stall_in_startup_packet(direct),
        stall_in_startup_packet(proxy.addr())
    );
    assert_same("stalled startup packet", &from_pg, &ours);
}

#[tokio::test]
async fn a_client_that_stalls_in_its_scram_exchange_is_closed_at_client_login_timeout_as_postgres_does(
) {
    let pg = postgres_with_one_second().await;
    let proxy = pgharbor_with_one_second().await;
    let direct: SocketAddr = format!("{}:{}", pg.host(), pg.port()).parse().unwrap();
    let (from_pg, ours) = tokio::join!(stall_in_scram(direct), stall_in_scram(proxy.addr()));
    assert_same("stalled SCRAM exchange", &from_pg, &ours);
}

#[tokio::test]
async fn a_reloaded_client_login_timeout_applies_to_the_next_clients() {
    let text = |timeout: &str| {
        config_text("session", 2, "").replace(
            "[proxy]\n",
            &format!("[proxy]\nclient_login_timeout = \"{timeout}\"\n"),
        )
    };
    let proxy = FileProxy::start(&text("60s")).await;
    let addr = proxy.proxy.addr();
    // Connected before the reload: keeps the 60 s it was given.
    let mut before = RawClient::open(addr).await;
    before.send(&40i32.to_be_bytes()).await;
    proxy.write(&text("1s"));
    let (admin, _notices) = connect_admin(&proxy.proxy).await;
    admin.simple_query("RELOAD").await.expect("RELOAD");
    let Outcome { kinds, waited, .. } = stall_in_startup_packet(addr).await;
    assert!(kinds.is_empty(), "{kinds:?}");
    assert!(
        waited < Duration::from_secs(5),
        "a client connecting after the reload was closed after {waited:?}"
    );
    let still_open = tokio::time::timeout(Duration::from_millis(500), before.recv()).await;
    assert!(
        still_open.is_err(),
        "the client connected before the reload was closed: {still_open:?}"
    );
}

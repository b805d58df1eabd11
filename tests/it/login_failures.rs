//! Failed logins: an unknown user cannot be told from a wrong password, a
//! thousand wrong passwords tried at once get nowhere and do not stop
//! pgharbor from serving others, and the failures are counted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::raw::{Msg, RawClient};
use crate::support::*;
use bytes::{Buf, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;

/// What a client sees of a SCRAM login with `password`: every message up
/// to the end of the connection (at most 10 s).
async fn scram_attempt(addr: SocketAddr, user: &str, password: &str, db: &str) -> Vec<Msg> {
    let mut c = RawClient::open(addr).await;
    let mut out = BytesMut::new();
    frontend::startup_message([("user", user), ("database", db)], &mut out).expect("startup");
    c.send(&out).await;
    let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
    let mut seen = Vec::new();
    while let Some(m) = c.recv_within(Duration::from_secs(10)).await {
        seen.push(m.clone());
        let mut body = m.body.clone();
        if m.tag != b'R' {
            continue;
        }
        let mut out = BytesMut::new();
        match body.get_i32() {
            10 => frontend::sasl_initial_response("SCRAM-SHA-256", scram.message(), &mut out)
                .expect("initial"),
            11 => {
                scram.update(&body).expect("server-first");
                frontend::sasl_response(scram.message(), &mut out).expect("response");
            }
            _ => {}
        }
        if !out.is_empty() && c.try_send(&out).await.is_err() {
            break;
        }
    }
    seen
}

/// The ErrorResponse among `msgs`.
fn error_of(msgs: &[Msg]) -> &Msg {
    msgs.iter()
        .find(|m| m.tag == b'E')
        .unwrap_or_else(|| panic!("no ErrorResponse in {msgs:?}"))
}

/// The authentication requests' codes, in order (10 SASL, 11 continue…).
fn auth_codes(msgs: &[Msg]) -> Vec<i32> {
    msgs.iter()
        .filter(|m| m.tag == b'R')
        .map(|m| m.body.clone().get_i32())
        .collect()
}

/// The `s=` salt of the SASLContinue among `msgs`.
fn salt_of(msgs: &[Msg]) -> String {
    let m = msgs
        .iter()
        .find(|m| m.tag == b'R' && m.body.clone().get_i32() == 11)
        .expect("a SASLContinue");
    let text = String::from_utf8_lossy(&m.body[4..]).to_string();
    text.split(',')
        .find_map(|a| a.strip_prefix("s="))
        .expect("salt")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_user_gets_the_same_exchange_and_error_as_a_wrong_password() {
    let proxy = start_proxy("transaction", 2).await;
    let ghost = "no_such_user_anywhere";
    let wrong = scram_attempt(proxy.addr(), USER, "wrong", "app").await;
    let unknown = scram_attempt(proxy.addr(), ghost, "wrong", "app").await;
    // The same steps: SASL, SASLContinue, then the error.
    assert_eq!(auth_codes(&wrong), vec![10, 11]);
    assert_eq!(auth_codes(&unknown), auth_codes(&wrong));
    // The same bytes, but for the name each error quotes.
    let as_known = String::from_utf8_lossy(&error_of(&unknown).body).replace(ghost, USER);
    assert_eq!(as_known, String::from_utf8_lossy(&error_of(&wrong).body));
    // A made-up salt that stays the same, as a real user's does.
    assert_eq!(
        salt_of(&unknown),
        salt_of(&scram_attempt(proxy.addr(), ghost, "other", "app").await)
    );
    // What Postgres says to the unknown user, field for field.
    let direct = scram_attempt(direct_addr(), ghost, "wrong", "app").await;
    assert_eq!(auth_codes(&direct), auth_codes(&unknown));
    for field in [b'S', b'V', b'C', b'M'] {
        assert_eq!(
            error_of(&unknown).field(field),
            error_of(&direct).field(field),
            "field {}",
            field as char
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_wrong_passwords_fail_while_others_are_served_and_are_counted() {
    let proxy = start_proxy("transaction", 2).await;
    let before = proxy
        .state()
        .metrics()
        .login_failures
        .with_label_values(&["app", USER])
        .get();
    let worker = connect(&proxy, "app").await;
    let answered = Arc::new(AtomicU32::new(0));
    let served = {
        let answered = answered.clone();
        tokio::spawn(async move {
            // At most 60 s of queries, until the attempts are over.
            for _ in 0..6000 {
                let row = worker.query_one("select 1", &[]).await.expect("query");
                assert_eq!(row.get::<_, i32>(0), 1);
                answered.fetch_add(1, Ordering::AcqRel);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let at_start = answered.load(Ordering::Acquire);
    let limit = Arc::new(tokio::sync::Semaphore::new(100));
    let attempts: Vec<_> = (0..1000)
        .map(|i| {
            let (addr, limit) = (proxy.addr(), limit.clone());
            tokio::spawn(async move {
                let _turn = limit.acquire().await.expect("semaphore");
                scram_attempt(addr, USER, &format!("guess-{i}"), "app").await
            })
        })
        .collect();
    let mut failed = 0;
    for attempt in attempts {
        let msgs = attempt.await.expect("attempt task");
        assert!(
            !msgs
                .iter()
                .any(|m| m.tag == b'R' && m.body.clone().get_i32() == 0),
            "a wrong password logged in"
        );
        assert_eq!(error_of(&msgs).field(b'C').as_deref(), Some("28P01"));
        failed += 1;
    }
    assert_eq!(failed, 1000);
    // The other client kept being served meanwhile.
    assert!(!served.is_finished(), "the other client stopped");
    assert!(
        answered.load(Ordering::Acquire) > at_start,
        "no query answered meanwhile"
    );
    served.abort();
    let after = proxy
        .state()
        .metrics()
        .login_failures
        .with_label_values(&["app", USER])
        .get();
    assert_eq!(after - before, 1000);
}

//! SCRAM pass-through: a user given in `[[users]]` only by the verifier
//! copied from `pg_authid` logs in through pgharbor to a Postgres whose
//! pg_hba requires scram-sha-256 for it; pgharbor logs in to Postgres with
//! the ClientKey the client proved, never knowing the password.

use std::sync::OnceLock;
use std::time::Duration;

use crate::support::*;

/// Postgres requires scram-sha-256 for this role.
const SCRAM_ROLE: &str = "passthrough_scram";
/// Postgres asks this role for a cleartext password, which a verifier
/// cannot give.
const CLEAR_ROLE: &str = "passthrough_clear";
const ROLE_PASSWORD: &str = "pt-pw-Lk82vq";

/// Creates both roles and puts their pg_hba lines first, once.
fn setup() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let pg = pg();
        for role in [SCRAM_ROLE, CLEAR_ROLE] {
            pg.create_user(role, ROLE_PASSWORD, "scram-sha-256")
                .expect("role");
        }
        prepend_hba(&format!(
            "host all {SCRAM_ROLE} 127.0.0.1/32 scram-sha-256\n\
             host all {CLEAR_ROLE} 127.0.0.1/32 password\n"
        ));
    });
}

/// The role's verifier as Postgres stores it (superuser, unix socket).
fn verifier_of(role: &str) -> String {
    let sql = format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'");
    let v = pg().psql("app", &sql).expect("pg_authid");
    let v = v.trim().to_owned();
    assert!(v.starts_with("SCRAM-SHA-256$"), "not a SCRAM verifier: {v}");
    v
}

fn config() -> String {
    let mut text = config_text("transaction", 2, "");
    for role in [SCRAM_ROLE, CLEAR_ROLE] {
        text.push_str(&format!(
            "\n[[users]]\nname = \"{role}\"\npassword = \"{}\"\n",
            verifier_of(role)
        ));
    }
    text
}

#[tokio::test]
async fn a_user_known_only_by_its_verifier_logs_in_to_a_scram_only_postgres() {
    setup();
    let proxy = start_proxy_with(&config()).await;
    let direct = connect_direct().await;
    for db in ["app_tx", "app_session"] {
        let dsn = dsn_at(proxy.addr(), SCRAM_ROLE, ROLE_PASSWORD, db);
        let client = try_connect(&dsn).await.expect("login through pgharbor");
        let row = client
            .query_one("SELECT current_user::text, $1::int + 1", &[&41i32])
            .await
            .unwrap_or_else(|e| panic!("query in {db}: {e}"));
        assert_eq!(row.get::<_, String>(0), SCRAM_ROLE);
        assert_eq!(row.get::<_, i32>(1), 42);
        let held = backends_of_user(&direct, SCRAM_ROLE).await;
        assert!(held >= 1, "Postgres shows no server connection of the role");
    }
    // A wrong password is refused as Postgres refuses it.
    let direct_dsn = dsn_at(direct_addr(), SCRAM_ROLE, "wrong-pw", "app");
    let refused = try_connect(&direct_dsn)
        .await
        .expect_err("Postgres refuses");
    let dsn = dsn_at(proxy.addr(), SCRAM_ROLE, "wrong-pw", "app_tx");
    let through = try_connect(&dsn).await.expect_err("pgharbor refuses");
    assert_eq!(sqlstate(&through), sqlstate(&refused), "{through}");
    assert_eq!(sqlstate(&through).as_deref(), Some("28P01"));
}

#[tokio::test]
async fn a_server_asking_a_verifier_only_user_for_a_cleartext_password_gets_a_hint() {
    setup();
    let proxy = start_proxy_with(&config()).await;
    let dsn = dsn_at(proxy.addr(), CLEAR_ROLE, ROLE_PASSWORD, "app_tx");
    // pg_reload_conf() is asynchronous: try until the password line holds
    // (at most 200 times, 50 ms apart).
    let mut last = None;
    for _ in 0..200 {
        // The server login happens at the client's login or at its first
        // query, depending on whether the pool has a server yet.
        let e = match try_connect(&dsn).await {
            Ok(client) => client
                .simple_query("SELECT 1")
                .await
                .expect_err("no server login"),
            Err(e) => e,
        };
        last = e.as_db_error().map(|d| {
            (
                d.code().code().to_owned(),
                d.message().to_owned(),
                d.hint().unwrap_or_default().to_owned(),
            )
        });
        if last
            .as_ref()
            .is_some_and(|(_, m, _)| m.contains("only by a SCRAM verifier"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, message, hint) = last.expect("an ErrorResponse");
    assert_eq!(code, "08001", "{message}");
    assert!(message.contains("only by a SCRAM verifier"), "{message}");
    assert!(hint.contains("pg_hba.conf"), "{hint}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_binds_the_server_login_to_its_tls_certificate() {
    setup();
    let mut text = crate::support::tls::config(
        "127.0.0.1",
        &crate::support::tls::server_tls("require", None),
    );
    text.push_str(&format!(
        "\n[[users]]\nname = \"{SCRAM_ROLE}\"\npassword = \"{}\"\n",
        verifier_of(SCRAM_ROLE)
    ));
    let proxy = start_proxy_with(&text).await;
    let dsn = dsn_at(proxy.addr(), SCRAM_ROLE, ROLE_PASSWORD, "app");
    let client = try_connect(&dsn).await.expect("login through pgharbor");
    let row = client
        .query_one(
            "SELECT current_user::text, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("query over a TLS server connection");
    assert_eq!(row.get::<_, String>(0), SCRAM_ROLE);
    assert!(
        row.get::<_, bool>(1),
        "the server connection is not encrypted"
    );
}

//! TLS toward applications (`[client_tls]`), driven by psql (libpq with
//! OpenSSL), tokio-postgres over rustls and Postgres's own view of the
//! sessions. Fixtures in `support/tls.rs`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::tls::*;
use crate::support::*;
use pgharbor::config::Config;
use pgharbor::Proxy;
use rcgen::{CertificateParams, KeyPair};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_serves_tls_clients_with_the_configured_certificate_and_refuses_plaintext() {
    let files = PkiFiles::write(&issue("pgharbor test client CA", &["localhost"]));
    let proxy = start_proxy_with(&config("127.0.0.1", &client_tls("require", &files))).await;

    let tls = conninfo(&proxy, USER, "app", &verify_full(&files.ca()));
    let out = output(psql_args(
        &tls,
        PASSWORD,
        &["-c", "\\conninfo", "-c", "select 40 + 2"],
    ))
    .await;
    assert_succeeded(&out);
    let text = stdout(&out);
    assert!(text.contains("SSL connection"), "{text}");
    assert!(text.ends_with("42"), "{text}");

    // SCRAM-SHA-256-PLUS: libpq hashes the certificate it was shown and
    // pgharbor the one it serves; the login succeeds only if they agree.
    let bound = psql_tls(&format!("{tls} channel_binding=require"), "select 'bound'").await;
    assert_succeeded(&bound);
    assert_eq!(stdout(&bound), "bound");

    // The console lists the client with its TLS version and cipher.
    let admin = conninfo(&proxy, "admin", "pgharbor", &verify_full(&files.ca()));
    let out = output(psql_args(&admin, "admin-pw", &["-c", "SHOW CLIENTS"])).await;
    assert_succeeded(&out);
    assert!(
        stdout(&out).contains("|TLSv1.3/TLS_AES_"),
        "{}",
        stdout(&out)
    );

    let plain = psql_tls(
        &conninfo(&proxy, USER, "app", "sslmode=disable"),
        "select 1",
    )
    .await;
    assert!(!plain.status.success());
    assert!(
        stderr(&plain)
            .contains("pgharbor accepts only TLS connections (client_tls.mode = require)"),
        "{}",
        stderr(&plain)
    );

    let stranger = PkiFiles::write(&issue("some other CA", &["localhost"]));
    let wrong_ca = psql_tls(
        &conninfo(&proxy, USER, "app", &verify_full(&stranger.ca())),
        "select 1",
    )
    .await;
    assert!(!wrong_ca.status.success());
    assert!(
        stderr(&wrong_ca).contains("certificate verify failed"),
        "{}",
        stderr(&wrong_ca)
    );

    // For operators: the handshake the client gave up shows in /metrics,
    // and so does when the certificate expires (2031-06-01, as issued).
    let metrics = scrape(&proxy).await;
    assert!(
        metric(&metrics, "pgharbor_client_tls_handshake_errors_total") >= 1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "pgharbor_client_tls_cert_expiry_timestamp_seconds"
        ),
        1_938_038_400.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_serves_tls_and_plaintext_clients_alike() {
    let files = PkiFiles::write(&issue("pgharbor test client CA", &["localhost"]));
    let proxy = start_proxy_with(&config("127.0.0.1", &client_tls("allow", &files))).await;
    for (ssl, encrypted) in [
        ("sslmode=disable", false),
        ("sslmode=require", true),
        (verify_full(&files.ca()).as_str(), true),
    ] {
        let out = output(psql_args(
            &conninfo(&proxy, USER, "app", ssl),
            PASSWORD,
            &["-c", "\\conninfo", "-c", "select 'served'"],
        ))
        .await;
        assert_succeeded(&out);
        let text = stdout(&out);
        assert!(text.ends_with("served"), "{ssl}: {text}");
        assert_eq!(text.contains("SSL connection"), encrypted, "{ssl}: {text}");
    }
    // Channel binding needs TLS: without it SCRAM-SHA-256-PLUS is not
    // offered, and a client that insists gives up.
    let out = psql_tls(
        &conninfo(
            &proxy,
            USER,
            "app",
            "sslmode=disable channel_binding=require",
        ),
        "select 1",
    )
    .await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("channel binding"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_picks_up_a_renewed_certificate() {
    let first = issue("pgharbor first CA", &["localhost"]);
    let files = PkiFiles::write(&first);
    let old_ca = files.dir.path().join("old-ca.pem");
    std::fs::write(&old_ca, &first.ca_pem).expect("keep old CA");
    let text = config("127.0.0.1", &client_tls("require", &files));
    let proxy = start_proxy_with(&text).await;
    let before = psql_tls(
        &conninfo(&proxy, USER, "app", &verify_full(&old_ca)),
        "select 1",
    )
    .await;
    assert_succeeded(&before);

    // The certificate is renewed in place (as cert-manager does), then the
    // configuration reloaded (SIGHUP or the console's RELOAD).
    files.rewrite(&issue("pgharbor second CA", &["localhost"]));
    proxy
        .state()
        .reload(Config::from_toml_str(&text).expect("config"))
        .expect("reload");
    let renewed = psql_tls(
        &conninfo(&proxy, USER, "app", &verify_full(&files.ca())),
        "select 1",
    )
    .await;
    assert_succeeded(&renewed);
    let stale = psql_tls(
        &conninfo(&proxy, USER, "app", &verify_full(&old_ca)),
        "select 1",
    )
    .await;
    assert!(
        !stale.status.success(),
        "the old certificate is no longer served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_cancel_stops_a_tls_clients_query() {
    let files = PkiFiles::write(&issue("pgharbor test client CA", &["localhost"]));
    let proxy = start_proxy_with(&config("127.0.0.1", &client_tls("require", &files))).await;
    let tls = conninfo(&proxy, USER, "app", &verify_full(&files.ca()));
    // psql answers Ctrl-C with a CancelRequest; libpq 15 sends it in
    // plaintext, which `require` must still accept.
    let child = psql_args(&tls, PASSWORD, &["-c", "select pg_sleep(60)"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql");
    let pid = child.id();
    let direct = connect_direct().await;
    let started = eventually(Duration::from_secs(20), || async {
        backends(&direct, "select pg_sleep(60)", "= 'active'").await == 1
    })
    .await;
    assert!(started, "the query never started");
    let kill = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().expect("psql"))
        .await
        .expect("wait");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("canceling statement due to user request"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_that_vanishes_mid_transaction_leaves_nothing_behind() {
    let files = PkiFiles::write(&issue("pgharbor test client CA", &["localhost"]));
    let proxy = start_proxy_with(&config("127.0.0.1", &client_tls("require", &files))).await;
    let tls = conninfo(&proxy, USER, "app", &verify_full(&files.ca()));
    assert_succeeded(&psql_tls(&tls, "create table if not exists tls_vanish (n int)").await);
    assert_succeeded(&psql_tls(&tls, "truncate tls_vanish").await);
    // Killed with SIGKILL, psql sends no close_notify: the TLS stream just
    // ends, inside the transaction, while its query runs.
    let mut child = psql_args(
        &tls,
        PASSWORD,
        &[
            "-c",
            "begin; insert into tls_vanish values (1); select pg_sleep(60)",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("psql");
    let direct = connect_direct().await;
    let query = "begin; insert into tls_vanish%";
    let running = eventually(Duration::from_secs(20), || async {
        backends(&direct, query, "= 'active'").await == 1
    })
    .await;
    assert!(running, "the transaction never started");
    child.kill().expect("kill psql");
    let _ = child.wait();
    // The query is cancelled and the transaction rolled back: the server
    // is idle again (or gone), and the row was never committed.
    let settled = eventually(Duration::from_secs(20), || async {
        backends(&direct, query, "<> 'idle'").await == 0
    })
    .await;
    assert!(
        settled,
        "the server was left inside the client's transaction"
    );
    let rows: i64 = direct
        .query_one("select count(*) from tls_vanish", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(
        rows, 0,
        "nothing of the vanished client's transaction is committed"
    );
}

/// A TLS connection opened the way Postgres 17's `sslnegotiation=direct`
/// does it: a ClientHello first, no SSLRequest, with or without ALPN.
async fn direct_tls(
    proxy: &Proxy,
    ca: &Path,
    alpn: Option<&[u8]>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("CA")).expect("add CA");
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.map(|p| vec![p.to_vec()]).unwrap_or_default();
    let tcp = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_without_sslrequest_is_served_when_alpn_says_postgresql() {
    let files = PkiFiles::write(&issue("pgharbor test client CA", &["localhost"]));
    let proxy = start_proxy_with(&config("127.0.0.1", &client_tls("require", &files))).await;
    let mut pg_config = tokio_postgres::Config::new();
    pg_config
        .user(USER)
        .password(PASSWORD)
        .dbname("app")
        .ssl_mode(tokio_postgres::config::SslMode::Disable);

    // tokio-postgres speaks the protocol over the TLS stream it is given.
    let stream = direct_tls(&proxy, &files.ca(), Some(b"postgresql")).await;
    let (client, conn) = pg_config
        .connect_raw(stream, tokio_postgres::NoTls)
        .await
        .expect("login over direct TLS");
    tokio::spawn(conn);
    let row = client.query_one("select 6 * 7", &[]).await.expect("query");
    assert_eq!(row.get::<_, i32>(0), 42);

    // Without ALPN the connection could be one meant for another protocol.
    let stream = direct_tls(&proxy, &files.ca(), None).await;
    let Err(e) = pg_config.connect_raw(stream, tokio_postgres::NoTls).await else {
        panic!("direct TLS without ALPN must be refused");
    };
    let db = e.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "08P01");
    assert!(db.message().contains("without ALPN"), "{}", db.message());
}

#[test]
fn tls_config_errors_name_the_key_at_fault() {
    let files = PkiFiles::write(&issue("pgharbor test client CA", &["localhost"]));
    let base = r#"
[[databases]]
name = "app"
[[users]]
name = "app"
password = "x"
"#;
    let cases = [
        (
            "[client_tls]\nmode = \"require\"\n".to_string(),
            "client_tls.cert_file",
        ),
        (
            format!(
                "[client_tls]\nmode = \"allow\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
                files.cert().display(),
                files.cert().display()
            ),
            "client_tls.key_file",
        ),
        (
            format!(
                "[client_tls]\nmode = \"allow\"\ncert_file = \"{}/missing.pem\"\nkey_file = \"{}\"\n",
                files.dir.path().display(),
                files.key().display()
            ),
            "client_tls.cert_file",
        ),
        (
            "[server_tls]\nmode = \"verify-full\"\n".to_string(),
            "server_tls.ca_file",
        ),
    ];
    for (section, key) in cases {
        let text = format!("{base}{section}");
        // The files are read where they are used, as at start and reload.
        let e = Config::from_toml_str(&text)
            .and_then(|c| pgharbor::tls::TlsSettings::from_config(&c))
            .err()
            .expect(key);
        assert!(e.to_string().contains(&format!("`{key}`")), "{key}: {e}");
    }
}

#[test]
fn channel_binding_hashes_the_certificate_with_its_signature_hash() {
    // rcgen signs with ECDSA P-256 / SHA-256 by default.
    let pki = issue("pgharbor test client CA", &["localhost"]);
    let der = pem_to_der(&pki.cert_pem);
    let expected: Vec<u8> = sha256(&der);
    assert_eq!(pgharbor::tls::end_point_hash(&der), Some(expected));
    // Ed25519 names no separate hash: no tls-server-end-point, as in
    // Postgres, so SCRAM-SHA-256-PLUS is not offered with such a certificate.
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519 key");
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("self-signed");
    assert_eq!(pgharbor::tls::end_point_hash(cert.der()), None);
}

fn pem_to_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("PEM certificate")
        .to_vec()
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).to_vec()
}

/// Backends whose query text is like `query` and whose state matches
/// `state` (an SQL comparison such as `= 'active'`).
async fn backends(direct: &tokio_postgres::Client, query: &str, state: &str) -> i64 {
    let sql =
        format!("select count(*) from pg_stat_activity where query like $1 and state {state}");
    direct
        .query_one(&sql, &[&query])
        .await
        .expect("pg_stat_activity")
        .get(0)
}

//! TLS toward applications (`[client_tls]`) and toward Postgres
//! (`[server_tls]`), driven by psql and pgbench (libpq with OpenSSL) and
//! checked from Postgres's own `pg_stat_ssl`. The scratch Postgres of this
//! test binary runs with `ssl = on`, its certificate issued for `localhost`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use pgharbor::config::Config;
use pgharbor::Proxy;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use support::*;

/// A CA and one certificate it issued.
struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn issue(ca_name: &str, names: &[&str]) -> Pki {
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("CA key")).expect("CA");
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut leaf = CertificateParams::new(names).expect("leaf params");
    leaf.distinguished_name
        .push(DnType::CommonName, "pgharbor test");
    leaf.not_after = rcgen::date_time_ymd(2031, 6, 1);
    let key = KeyPair::generate().expect("leaf key");
    let cert = leaf.signed_by(&key, &ca).expect("sign leaf");
    Pki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// The files of one [`Pki`], in a directory of their own.
struct PkiFiles {
    dir: tempfile::TempDir,
}

impl PkiFiles {
    fn write(pki: &Pki) -> PkiFiles {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = PkiFiles { dir };
        files.rewrite(pki);
        files
    }

    fn rewrite(&self, pki: &Pki) {
        std::fs::write(self.ca(), &pki.ca_pem).expect("write CA");
        std::fs::write(self.cert(), &pki.cert_pem).expect("write cert");
        std::fs::write(self.key(), &pki.key_pem).expect("write key");
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }
}

/// The scratch Postgres with `ssl = on`; returns the CA that issued its
/// certificate (for `localhost` only, not for `127.0.0.1`).
fn server_ca() -> &'static str {
    static CA: OnceLock<String> = OnceLock::new();
    CA.get_or_init(|| {
        let pki = issue("pgharbor test server CA", &["localhost"]);
        pg().enable_ssl(&pki.cert_pem, &pki.key_pem)
            .expect("enable ssl");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !pg().ssl_is_on() {
            assert!(
                std::time::Instant::now() < deadline,
                "scratch Postgres did not turn ssl on; see {}",
                pg().log_path().display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        pki.ca_pem
    })
}

/// A pgharbor config: database `app` on the scratch server at `host`,
/// users `app` and `admin`, and the given TLS sections.
fn config(host: &str, tls_sections: &str) -> String {
    server_ca();
    let port = pg().port();
    format!(
        r#"
[proxy]
listen_addr = "127.0.0.1:0"
admin_users = ["admin"]

[pool]
pool_size = 4

[[databases]]
name = "app"
host = "{host}"
port = {port}

[[users]]
name = "{USER}"
password = "{PASSWORD}"
auth_type = "scram-sha-256"

[[users]]
name = "admin"
password = "admin-pw"
auth_type = "scram-sha-256"

[metrics]
listen_addr = "127.0.0.1:0"

{tls_sections}
"#
    )
}

fn client_tls(mode: &str, files: &PkiFiles) -> String {
    format!(
        "[client_tls]\nmode = \"{mode}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        files.cert().display(),
        files.key().display()
    )
}

fn server_tls(mode: &str, ca: Option<&Path>) -> String {
    let ca = ca.map(|p| p.display().to_string()).unwrap_or_default();
    format!("[server_tls]\nmode = \"{mode}\"\nca_file = \"{ca}\"\n")
}

/// A libpq connection string to `proxy` as host name `localhost` (what the
/// certificate names), at its real address.
fn conninfo(proxy: &Proxy, user: &str, db: &str, ssl: &str) -> String {
    format!(
        "host=localhost hostaddr=127.0.0.1 port={} user={user} dbname={db} connect_timeout=10 {ssl}",
        proxy.addr().port()
    )
}

fn verify_full(ca: &Path) -> String {
    format!("sslmode=verify-full sslrootcert={}", ca.display())
}

fn psql_args(conninfo: &str, password: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin("psql"));
    cmd.args(["-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-d", conninfo])
        .args(args)
        .env("PGPASSWORD", password)
        .env_remove("PGSSLMODE")
        .env_remove("PGSERVICE");
    cmd
}

fn psql_tls(conninfo: &str, sql: &str) -> Output {
    psql_args(conninfo, PASSWORD, &["-c", sql])
        .output()
        .expect("run psql")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_serves_tls_clients_with_the_configured_certificate_and_refuses_plaintext() {
    let files = PkiFiles::write(&issue("pgharbor test client CA", &["localhost"]));
    let proxy = start_proxy_with(&config("127.0.0.1", &client_tls("require", &files))).await;

    let tls = conninfo(&proxy, USER, "app", &verify_full(&files.ca()));
    let out = psql_args(&tls, PASSWORD, &["-c", "\\conninfo", "-c", "select 40 + 2"])
        .output()
        .expect("psql");
    assert_succeeded(&out);
    let text = stdout(&out);
    assert!(text.contains("SSL connection"), "{text}");
    assert!(text.ends_with("42"), "{text}");

    // SCRAM-SHA-256-PLUS: libpq hashes the certificate it was shown and
    // pgharbor the one it serves; the login succeeds only if they agree.
    let bound = psql_tls(&format!("{tls} channel_binding=require"), "select 'bound'");
    assert_succeeded(&bound);
    assert_eq!(stdout(&bound), "bound");

    // The console lists the client with its TLS version and cipher.
    let admin = conninfo(&proxy, "admin", "pgharbor", &verify_full(&files.ca()));
    let out = psql_args(&admin, "admin-pw", &["-c", "SHOW CLIENTS"])
        .output()
        .expect("psql");
    assert_succeeded(&out);
    assert!(
        stdout(&out).contains("|TLSv1.3/TLS_AES_"),
        "{}",
        stdout(&out)
    );

    let plain = psql_tls(
        &conninfo(&proxy, USER, "app", "sslmode=disable"),
        "select 1",
    );
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
    );
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

/// `GET /metrics` of `proxy` (started with a `[metrics]` section).
async fn scrape(proxy: &Proxy) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = proxy.metrics_addr().expect("metrics enabled");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let mut body = String::new();
    s.read_to_string(&mut body).await.expect("response");
    body
}

/// The value of an unlabelled sample.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name}"))
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
        let out = psql_args(
            &conninfo(&proxy, USER, "app", ssl),
            PASSWORD,
            &["-c", "\\conninfo", "-c", "select 'served'"],
        )
        .output()
        .expect("psql");
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
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("channel binding"), "{}", stderr(&out));
}

/// Whether the server connection the proxy lends is encrypted, as Postgres
/// sees it; or the error the client got.
async fn server_side_ssl(text: &str) -> Result<bool, tokio_postgres::Error> {
    let proxy = start_proxy_with(text).await;
    let (client, conn) =
        tokio_postgres::connect(&dsn(&proxy, "app"), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let row = client
        .query_one(
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_tls_modes_decide_how_server_connections_are_encrypted() {
    let files = PkiFiles::write(&Pki {
        ca_pem: server_ca().to_string(),
        cert_pem: String::new(),
        key_pem: String::new(),
    });
    let ca = files.ca();
    for (mode, host, expected) in [
        ("disable", "127.0.0.1", false),
        ("prefer", "127.0.0.1", true),
        ("require", "127.0.0.1", true),
        // The certificate names `localhost`, not the address: verify-ca
        // checks the chain only.
        ("verify-ca", "127.0.0.1", true),
        ("verify-full", "localhost", true),
    ] {
        let text = config(host, &server_tls(mode, Some(&ca)));
        let ssl = server_side_ssl(&text)
            .await
            .unwrap_or_else(|e| panic!("{mode} via {host}: {e}"));
        assert_eq!(ssl, expected, "{mode} via {host}");
    }

    // verify-full compares the host name: the address is not in the
    // certificate.
    let e = server_side_ssl(&config("127.0.0.1", &server_tls("verify-full", Some(&ca))))
        .await
        .expect_err("verify-full must refuse a certificate for another name");
    let db = e.as_db_error().expect("an ErrorResponse");
    assert!(db.code().code().starts_with("08"), "{db:?}");
    assert!(
        db.message().contains("certificate not valid for name"),
        "{}",
        db.message()
    );
    assert!(db.message().contains("server_tls"), "{}", db.message());

    // A CA that did not issue the server's certificate.
    let stranger = PkiFiles::write(&issue("some other CA", &["localhost"]));
    let e = server_side_ssl(&config(
        "localhost",
        &server_tls("verify-ca", Some(&stranger.ca())),
    ))
    .await
    .expect_err("verify-ca must refuse an unknown issuer");
    let db = e.as_db_error().expect("an ErrorResponse");
    assert!(db.message().contains("UnknownIssuer"), "{}", db.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_tls_require_refuses_a_server_without_tls() {
    server_ca();
    let plain_pg = tokio::task::spawn_blocking(|| {
        let pg = pgharbor::scratch_pg::ScratchPostgres::start().expect("second Postgres");
        pg.create_user(USER, PASSWORD, "scram-sha-256")
            .expect("user");
        pg
    })
    .await
    .expect("start");
    let text = config("127.0.0.1", &server_tls("require", None)).replace(
        &format!("port = {}", pg().port()),
        &format!("port = {}\ndbname = \"postgres\"", plain_pg.port()),
    );
    let e = server_side_ssl(&text)
        .await
        .expect_err("require must refuse a plaintext server");
    let db = e.as_db_error().expect("an ErrorResponse");
    assert!(db.code().code().starts_with("08"), "{db:?}");
    assert!(
        db.message()
            .contains("does not accept TLS, and server_tls.mode = require requires it"),
        "{}",
        db.message()
    );
    // prefer falls back to plaintext with the same server.
    let text = text.replace("mode = \"require\"", "mode = \"prefer\"");
    assert!(!server_side_ssl(&text).await.expect("prefer connects"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_both_sides_carries_large_results_copies_and_pipelines() {
    let files = PkiFiles::write(&issue("pgharbor test client CA", &["localhost"]));
    let server_files = PkiFiles::write(&Pki {
        ca_pem: server_ca().to_string(),
        cert_pem: String::new(),
        key_pem: String::new(),
    });
    let text = config(
        "localhost",
        &format!(
            "{}{}",
            client_tls("require", &files),
            server_tls("verify-full", Some(&server_files.ca()))
        ),
    );
    let proxy = start_proxy_with(&text).await;
    let tls = conninfo(&proxy, USER, "app", &verify_full(&files.ca()));

    // About 20 MB from the server, through two TLS connections.
    let out = tokio::task::spawn_blocking({
        let tls = tls.clone();
        move || {
            psql_tls(
                &tls,
                "select repeat('x', 1000) from generate_series(1, 20000)",
            )
        }
    })
    .await
    .expect("psql");
    assert_succeeded(&out);
    assert_eq!(out.stdout.len(), 20000 * 1001);
    assert!(out.stdout.iter().all(|&b| b == b'x' || b == b'\n'));

    // About 10 MB toward the server with COPY FROM STDIN.
    psql_tls(&tls, "create table if not exists tls_copy (line text)");
    psql_tls(&tls, "truncate tls_copy");
    let line = "y".repeat(999);
    let out = tokio::task::spawn_blocking({
        let tls = tls.clone();
        move || {
            use std::io::Write;
            let mut child = psql_args(&tls, PASSWORD, &["-c", "\\copy tls_copy from stdin"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("psql");
            let mut stdin = child.stdin.take().expect("stdin");
            for _ in 0..10_000 {
                writeln!(stdin, "{line}").expect("write to psql");
            }
            drop(stdin);
            child.wait_with_output().expect("psql")
        }
    })
    .await
    .expect("copy");
    assert_succeeded(&out);
    let out = psql_tls(&tls, "select count(*), sum(length(line)) from tls_copy");
    assert_succeeded(&out);
    assert_eq!(stdout(&out), "10000|9990000");

    // pgbench pipelines extended-protocol batches through both TLS links.
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("pipeline.sql");
    std::fs::write(
        &script,
        "\\startpipeline\nselect 1;\nselect repeat('z', 5000);\nselect 3;\n\\endpipeline\n",
    )
    .expect("script");
    let out = tokio::task::spawn_blocking({
        let tls = tls.clone();
        move || {
            Command::new(bin("pgbench"))
                .args(["-n", "-M", "extended", "-c", "4", "-j", "2", "-t", "300"])
                .arg("-f")
                .arg(&script)
                .arg(&tls)
                .env("PGPASSWORD", PASSWORD)
                .output()
                .expect("pgbench")
        }
    })
    .await
    .expect("pgbench");
    assert_succeeded(&out);
    let report = stdout(&out);
    assert!(
        report.contains("number of transactions actually processed: 1200/1200"),
        "{report}"
    );
    assert!(
        report.contains("number of failed transactions: 0"),
        "{report}"
    );
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
    );
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
    );
    assert_succeeded(&renewed);
    let stale = psql_tls(
        &conninfo(&proxy, USER, "app", &verify_full(&old_ca)),
        "select 1",
    );
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
        let n: i64 = direct
            .query_one(
                "select count(*) from pg_stat_activity where query = 'select pg_sleep(60)' and state = 'active'",
                &[],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        n == 1
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
        let e = Config::from_toml_str(&text).expect_err(key);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_that_vanishes_mid_transaction_leaves_nothing_behind() {
    let files = PkiFiles::write(&issue("pgharbor test client CA", &["localhost"]));
    let proxy = start_proxy_with(&config("127.0.0.1", &client_tls("require", &files))).await;
    let tls = conninfo(&proxy, USER, "app", &verify_full(&files.ca()));
    assert_succeeded(&psql_tls(
        &tls,
        "create table if not exists tls_vanish (n int)",
    ));
    assert_succeeded(&psql_tls(&tls, "truncate tls_vanish"));
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
    let running = eventually(Duration::from_secs(20), || async {
        let n: i64 = direct
            .query_one(
                "select count(*) from pg_stat_activity where query like 'begin; insert into tls_vanish%' and state = 'active'",
                &[],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        n == 1
    })
    .await;
    assert!(running, "the transaction never started");
    child.kill().expect("kill psql");
    let _ = child.wait();
    // The query is cancelled and the transaction rolled back: the server
    // is idle again (or gone), and the row was never committed.
    let settled = eventually(Duration::from_secs(20), || async {
        let n: i64 = direct
            .query_one(
                "select count(*) from pg_stat_activity where query like 'begin; insert into tls_vanish%' and state <> 'idle'",
                &[],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        n == 0
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

//! Who may log in how: `hba_file` (pg_hba.conf lines, first match wins,
//! re-read on RELOAD) and client certificates (`auth_type = "cert"`).

use std::path::Path;

use crate::support::tls::*;
use crate::support::*;
use pgharbor::config::Config;
use pgharbor::Proxy;

/// A config file in `dir` naming `hba` and the server certificate in
/// `files`, with the users `app` (SCRAM) and `admin`; `extra` is appended.
fn write_config(dir: &Path, files: &PkiFiles, hba: &Path, extra: &str) -> std::path::PathBuf {
    let port = pg().port();
    let text = format!(
        r#"
[proxy]
listen_addr = "127.0.0.1:0"
admin_users = ["admin"]

[pool]
pool_size = 2
hba_file = "{hba}"

[[databases]]
name = "app"
port = {port}

[[users]]
name = "{USER}"
password = "{PASSWORD}"

[[users]]
name = "admin"
password = "admin-pw"

[client_tls]
mode = "allow"
cert_file = "{cert}"
key_file = "{key}"
{extra}
"#,
        hba = hba.display(),
        cert = files.cert().display(),
        key = files.key().display(),
    );
    let path = dir.join("pgharbor.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

async fn start_from(path: &Path) -> Proxy {
    let config = Config::load(path).expect("valid config");
    let proxy = Proxy::start(config).await.expect("start pgharbor");
    // So that the console's RELOAD re-reads this file.
    let _ = proxy.state().set_config_path(path.to_path_buf());
    proxy
}

/// The login's outcome over plaintext: Ok, or the SQLSTATE and message.
async fn plaintext_login(
    proxy: &Proxy,
    user: &str,
    password: &str,
) -> Result<(), (String, String)> {
    match try_connect(&dsn_at(proxy.addr(), user, password, "app")).await {
        Ok(client) => {
            client.simple_query("select 1").await.expect("query");
            Ok(())
        }
        Err(e) => {
            let message = e.as_db_error().map(|d| d.message().to_owned());
            Err((
                sqlstate(&e).unwrap_or_default(),
                message.unwrap_or_else(|| e.to_string()),
            ))
        }
    }
}

async fn reload(proxy: &Proxy) -> Result<(), String> {
    let admin = try_connect(&dsn_at(proxy.addr(), "admin", "admin-pw", "pgharbor"))
        .await
        .map_err(|e| format!("admin login: {e}"))?;
    admin.simple_query("RELOAD").await.map(drop).map_err(|e| {
        e.as_db_error()
            .map_or(e.to_string(), |d| d.message().to_owned())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hba_rules_refuse_plaintext_admit_tls_and_change_on_reload() {
    let files = PkiFiles::write(&issue("pgharbor test client CA", &["localhost"]));
    let dir = tempfile::tempdir().expect("temp dir");
    let hba = dir.path().join("pg_hba.conf");
    // The console's own line first, so the test can RELOAD through it.
    let console = "host pgharbor admin 127.0.0.1/32 scram-sha-256\n";
    std::fs::write(
        &hba,
        format!(
            "{console}hostssl all app 127.0.0.1/32 scram-sha-256\nhost all all 0.0.0.0/0 reject\n"
        ),
    )
    .expect("write hba");
    let proxy = start_from(&write_config(dir.path(), &files, &hba, "")).await;

    let (code, message) = plaintext_login(&proxy, USER, PASSWORD)
        .await
        .expect_err("a plaintext client is refused");
    assert_eq!(code, "28000", "{message}");
    assert!(
        message.contains("pg_hba.conf rejects connection"),
        "{message}"
    );
    assert!(message.contains("no encryption"), "{message}");
    let tls = psql_tls(
        &conninfo(&proxy, USER, "app", "sslmode=require"),
        "select 'in'",
    )
    .await;
    assert_succeeded(&tls);
    assert_eq!(stdout(&tls), "in");

    // Swapped: plaintext only.
    std::fs::write(
        &hba,
        format!("{console}hostnossl all app 127.0.0.1/32 scram-sha-256\nhost all all 0.0.0.0/0 reject\n"),
    )
    .expect("rewrite hba");
    // Before RELOAD the old rules still apply.
    assert!(plaintext_login(&proxy, USER, PASSWORD).await.is_err());
    reload(&proxy).await.expect("RELOAD");
    plaintext_login(&proxy, USER, PASSWORD)
        .await
        .expect("plaintext admitted after RELOAD");
    let tls = psql_tls(
        &conninfo(&proxy, USER, "app", "sslmode=require"),
        "select 1",
    )
    .await;
    assert!(!tls.status.success(), "TLS still admitted");
    assert!(stderr(&tls).contains("SSL encryption"), "{}", stderr(&tls));
    // The password is still checked.
    let (code, _) = plaintext_login(&proxy, USER, "wrong")
        .await
        .expect_err("wrong password");
    assert_eq!(code, "28P01");

    // A line pgharbor cannot honour fails the RELOAD, naming it, and the
    // rules in force stay.
    std::fs::write(&hba, format!("{console}local all all trust\n")).expect("bad hba");
    let e = reload(&proxy)
        .await
        .expect_err("RELOAD of a bad file fails");
    assert!(e.contains("line 2") && e.contains("local"), "{e}");
    plaintext_login(&proxy, USER, PASSWORD)
        .await
        .expect("the previous rules still apply");
}

/// A client certificate and key for `cn`, issued by `ca`.
fn client_cert(
    ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    cn: &str,
    dir: &Path,
) -> String {
    client_cert_numbered(ca, cn, dir, 1)
}

/// [`client_cert`] with serial number `serial` (files named after it).
fn client_cert_numbered(
    ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    cn: &str,
    dir: &Path,
    serial: u64,
) -> String {
    let dir = dir.join(serial.to_string());
    std::fs::create_dir_all(&dir).expect("cert dir");
    let dir = dir.as_path();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.serial_number = Some(serial.into());
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, ca).expect("sign");
    let (cert_path, key_path) = (dir.join(format!("{cn}.crt")), dir.join(format!("{cn}.key")));
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    // libpq refuses a key file others may read.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    format!(
        "sslcert={} sslkey={}",
        cert_path.display(),
        key_path.display()
    )
}

fn client_ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, name);
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().expect("CA key"))
        .expect("CA")
}

/// pgharbor with client certificates from `ca_file`: the role `role`
/// (created in Postgres, where pgharbor logs in with its password) with
/// `auth_type = "cert"`, the user `app` by password; `client_tls` lines
/// follow the certificate keys.
async fn cert_proxy(role: &str, ca_file: &Path, client_tls: &str) -> (Proxy, PkiFiles) {
    let files = PkiFiles::write(&issue("pgharbor test server CA", &["localhost"]));
    pg().create_user(role, "server-pw", "scram-sha-256")
        .expect("role");
    let port = pg().port();
    let text = format!(
        r#"
[proxy]
listen_addr = "127.0.0.1:0"

[[databases]]
name = "app"
port = {port}

[[users]]
name = "{role}"
password = "server-pw"
auth_type = "cert"

[[users]]
name = "{USER}"
password = "{PASSWORD}"

[client_tls]
cert_file = "{cert}"
key_file = "{key}"
ca_file = "{ca}"
{client_tls}
"#,
        cert = files.cert().display(),
        key = files.key().display(),
        ca = ca_file.display(),
    );
    (start_proxy_with(&text).await, files)
}

/// psql as `role` over TLS with the certificate options `cert`; the
/// password it has is a wrong one, never asked for.
async fn cert_login(proxy: &Proxy, role: &str, cert: &str) -> std::process::Output {
    let info = conninfo(proxy, role, "app", &format!("sslmode=require {cert}"));
    output(psql_args(
        &info,
        "not-the-password",
        &["-c", "select current_user"],
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_logs_in_the_user_its_cn_names_and_refuses_every_other_certificate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = client_ca("pgharbor test client CA");
    let ca_file = dir.path().join("client-ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write CA");
    let role = "cert_user";
    let tls = "mode = \"allow\"\nclient_cert = \"optional\"";
    let (proxy, _files) = cert_proxy(role, &ca_file, tls).await;

    let own = cert_login(&proxy, role, &client_cert(&ca, role, dir.path())).await;
    assert_succeeded(&own);
    assert_eq!(stdout(&own), role);

    let refusals = [
        (
            client_cert(&ca, "someone_else", dir.path()),
            "CN is \"someone_else\"",
        ),
        (
            client_cert(&client_ca("another CA"), role, dir.path()),
            "the client certificate was refused",
        ),
        (
            String::new(),
            "connection requires a valid client certificate",
        ),
    ];
    for (cert, why) in refusals {
        let out = cert_login(&proxy, role, &cert).await;
        assert!(!out.status.success(), "{cert}: logged in");
        assert!(stderr(&out).contains(why), "{cert}: {}", stderr(&out));
    }
    // The SQLSTATE, through a driver that reports it: no certificate (on a
    // plaintext connection).
    let e = try_connect(&dsn_at(proxy.addr(), role, "x", "app"))
        .await
        .expect_err("no certificate");
    assert_eq!(sqlstate(&e).as_deref(), Some("28000"), "{e}");
    let message = e.as_db_error().map(|d| d.message().to_owned());
    assert_eq!(
        message.as_deref(),
        Some("connection requires a valid client certificate")
    );
    // A password user logs in as before, with or without a certificate.
    let pw = psql_tls(
        &conninfo(&proxy, USER, "app", "sslmode=require"),
        "select 1",
    )
    .await;
    assert_succeeded(&pw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cleartext_password_is_taken_over_tls_and_over_plaintext_only_when_allowed() {
    let files = PkiFiles::write(&issue("pgharbor test client CA", &["localhost"]));
    let port = pg().port();
    let text = |allow: bool| {
        format!(
            r#"
[proxy]
listen_addr = "127.0.0.1:0"

[[databases]]
name = "app"
port = {port}

[[users]]
name = "{USER}"
password = "{PASSWORD}"
auth_type = "password"

[client_tls]
mode = "allow"
cert_file = "{cert}"
key_file = "{key}"
allow_plaintext_password = {allow}
"#,
            cert = files.cert().display(),
            key = files.key().display(),
        )
    };
    let strict = start_proxy_with(&text(false)).await;
    let (code, message) = plaintext_login(&strict, USER, PASSWORD)
        .await
        .expect_err("cleartext over plaintext is refused");
    assert_eq!(code, "28000", "{message}");
    assert!(message.contains("without TLS"), "{message}");
    let tls = psql_tls(
        &conninfo(&strict, USER, "app", "sslmode=require"),
        "select 'tls'",
    )
    .await;
    assert_succeeded(&tls);
    assert_eq!(stdout(&tls), "tls");
    let wrong = output(psql_args(
        &conninfo(&strict, USER, "app", "sslmode=require"),
        "wrong",
        &["-c", "select 1"],
    ))
    .await;
    assert!(
        stderr(&wrong).contains("password authentication failed"),
        "{}",
        stderr(&wrong)
    );

    let allowed = start_proxy_with(&text(true)).await;
    plaintext_login(&allowed, USER, PASSWORD)
        .await
        .expect("allowed over plaintext");
    let (code, _) = plaintext_login(&allowed, USER, "wrong")
        .await
        .expect_err("wrong password");
    assert_eq!(code, "28P01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_on_the_revocation_list_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = client_ca("pgharbor test revoking CA");
    let ca_file = dir.path().join("client-ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write CA");
    let crl = rcgen::CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2024, 1, 1),
        next_update: rcgen::date_time_ymd(2031, 1, 1),
        crl_number: 1u64.into(),
        issuing_distribution_point: None,
        revoked_certs: vec![rcgen::RevokedCertParams {
            serial_number: 66u64.into(),
            revocation_time: rcgen::date_time_ymd(2024, 1, 1),
            reason_code: Some(rcgen::RevocationReason::KeyCompromise),
            invalidity_date: None,
        }],
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&ca)
    .expect("CRL");
    let crl_file = dir.path().join("client-ca.crl");
    std::fs::write(&crl_file, crl.pem().expect("CRL PEM")).expect("write CRL");
    let role = "crl_user";
    let tls = format!(
        "mode = \"require\"\nclient_cert = \"require\"\ncrl_file = \"{}\"",
        crl_file.display()
    );
    let (proxy, _files) = cert_proxy(role, &ca_file, &tls).await;
    let good = cert_login(
        &proxy,
        role,
        &client_cert_numbered(&ca, role, dir.path(), 65),
    )
    .await;
    assert_succeeded(&good);
    assert_eq!(stdout(&good), role);
    let revoked = cert_login(
        &proxy,
        role,
        &client_cert_numbered(&ca, role, dir.path(), 66),
    )
    .await;
    assert!(!revoked.status.success(), "a revoked certificate logged in");
    assert!(
        stderr(&revoked).contains("the client certificate was refused")
            && stderr(&revoked).to_lowercase().contains("revoked"),
        "{}",
        stderr(&revoked)
    );
}

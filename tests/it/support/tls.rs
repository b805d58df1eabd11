//! TLS fixtures for the TLS tests: certificates issued on the spot
//! (rcgen), the scratch Postgres with `ssl = on`, pgharbor configs with
//! `[client_tls]` / `[server_tls]`, and psql (libpq with OpenSSL) as the
//! client.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use pgharbor::Proxy;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

use super::*;

/// A CA and one certificate it issued.
pub struct Pki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

pub fn issue(ca_name: &str, names: &[&str]) -> Pki {
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
pub struct PkiFiles {
    pub dir: tempfile::TempDir,
}

impl PkiFiles {
    pub fn write(pki: &Pki) -> PkiFiles {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = PkiFiles { dir };
        files.rewrite(pki);
        files
    }

    pub fn rewrite(&self, pki: &Pki) {
        std::fs::write(self.ca(), &pki.ca_pem).expect("write CA");
        std::fs::write(self.cert(), &pki.cert_pem).expect("write cert");
        std::fs::write(self.key(), &pki.key_pem).expect("write key");
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }
}

/// The scratch Postgres with `ssl = on`; returns the CA that issued its
/// certificate (for `localhost` only, not for `127.0.0.1`).
pub fn server_ca() -> &'static str {
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
pub fn config(host: &str, tls_sections: &str) -> String {
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

pub fn client_tls(mode: &str, files: &PkiFiles) -> String {
    format!(
        "[client_tls]\nmode = \"{mode}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        files.cert().display(),
        files.key().display()
    )
}

pub fn server_tls(mode: &str, ca: Option<&Path>) -> String {
    let ca = ca.map(|p| p.display().to_string()).unwrap_or_default();
    format!("[server_tls]\nmode = \"{mode}\"\nca_file = \"{ca}\"\n")
}

/// A libpq connection string to `proxy` as host name `localhost` (what the
/// certificate names), at its real address.
pub fn conninfo(proxy: &Proxy, user: &str, db: &str, ssl: &str) -> String {
    format!(
        "host=localhost hostaddr=127.0.0.1 port={} user={user} dbname={db} connect_timeout=10 {ssl}",
        proxy.addr().port()
    )
}

pub fn verify_full(ca: &Path) -> String {
    format!("sslmode=verify-full sslrootcert={}", ca.display())
}

pub fn psql_args(conninfo: &str, password: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin("psql"));
    cmd.args(["-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-d", conninfo])
        .args(args)
        .env("PGPASSWORD", password)
        .env_remove("PGSSLMODE")
        .env_remove("PGSERVICE");
    cmd
}

pub async fn psql_tls(conninfo: &str, sql: &str) -> Output {
    output(psql_args(conninfo, PASSWORD, &["-c", sql])).await
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// `GET /metrics` of `proxy` (started with a `[metrics]` section).
pub async fn scrape(proxy: &Proxy) -> String {
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
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name}"))
}

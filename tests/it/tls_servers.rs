//! TLS toward Postgres (`[server_tls]`), checked from Postgres's own
//! `pg_stat_ssl`, and TLS on both sides at once under large transfers and
//! pipelines. The scratch Postgres of this test binary runs with
//! `ssl = on`, its certificate issued for `localhost` only. Fixtures in
//! `support/tls.rs`.

use std::process::{Command, Stdio};

use crate::support::tls::*;
use crate::support::*;

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
async fn a_databases_own_server_tls_overrides_the_global_one() {
    let port = pg().port();
    let own = |mode: &str| {
        config("127.0.0.1", &server_tls("disable", None)).replace(
            &format!("port = {port}\n"),
            &format!("port = {port}\nserver_tls = {{ mode = \"{mode}\" }}\n"),
        )
    };
    assert!(server_side_ssl(&own("require")).await.expect("require"));
    let global_require = config("127.0.0.1", &server_tls("require", None)).replace(
        &format!("port = {port}\n"),
        &format!("port = {port}\nserver_tls = {{ mode = \"disable\" }}\n"),
    );
    assert!(!server_side_ssl(&global_require).await.expect("disable"));
    // A CA file that is not there is named by the database's key.
    let missing = own("verify-ca").replace(
        "mode = \"verify-ca\" }",
        "mode = \"verify-ca\", ca_file = \"/nonexistent/ca.pem\" }",
    );
    let e = pgharbor::config::Config::from_toml_str(&missing)
        .and_then(|c| pgharbor::tls::TlsSettings::from_config(&c))
        .err()
        .expect("an unreadable CA file is refused");
    assert!(
        e.to_string().contains("databases[0].server_tls.ca_file"),
        "{e}"
    );
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
    let out = psql_tls(
        &tls,
        "select repeat('x', 1000) from generate_series(1, 20000)",
    )
    .await;
    assert_succeeded(&out);
    assert_eq!(out.stdout.len(), 20000 * 1001);
    assert!(out.stdout.iter().all(|&b| b == b'x' || b == b'\n'));

    // About 10 MB toward the server with COPY FROM STDIN.
    psql_tls(&tls, "create table if not exists tls_copy (line text)").await;
    psql_tls(&tls, "truncate tls_copy").await;
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
    let out = psql_tls(&tls, "select count(*), sum(length(line)) from tls_copy").await;
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

/// A TCP relay in front of Postgres that lets a connection through only if
/// it starts with an SSLRequest, as a network that allows TLS alone would.
/// Returns its address and how many plaintext connections it refused.
async fn tls_only_path(
    pg_port: u16,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncReadExt;
    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let refused = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = refused.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let refused = counter.clone();
            tokio::spawn(async move {
                let mut first = [0u8; 8];
                if client.read_exact(&mut first).await.is_err() || first != SSL_REQUEST {
                    refused.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                let mut server = tokio::net::TcpStream::connect(("127.0.0.1", pg_port))
                    .await
                    .unwrap();
                use tokio::io::AsyncWriteExt;
                server.write_all(&first).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    (addr, refused)
}

/// A Postgres of its own with `ssl = on` and `hostssl` lines only, database
/// `app` owned by [`USER`].
fn ssl_only_postgres() -> pgharbor::scratch_pg::ScratchPostgres {
    let pg = pgharbor::scratch_pg::ScratchPostgres::start().expect("a second Postgres");
    pg.create_user(USER, PASSWORD, "scram-sha-256")
        .expect("user");
    pg.create_database("app", USER).expect("database");
    let pki = issue("pgharbor cancel test CA", &["localhost"]);
    pg.enable_ssl(&pki.cert_pem, &pki.key_pem)
        .expect("enable ssl");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !pg.ssl_is_on() {
        assert!(std::time::Instant::now() < deadline, "ssl did not turn on");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    pg.require_ssl_over_tcp().expect("hostssl only");
    pg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_a_query_on_a_tls_server_connection_over_tls() {
    let ssl_pg = tokio::task::spawn_blocking(ssl_only_postgres)
        .await
        .expect("start");
    let (path, refused) = tls_only_path(ssl_pg.port()).await;
    let text = config("127.0.0.1", &server_tls("require", None)).replace(
        &format!("port = {}", pg().port()),
        &format!("port = {}", path.port()),
    );
    let proxy = start_proxy_with(&text).await;
    let client = connect(&proxy, "app").await;
    let ssl: bool = client
        .query_one(
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("a query through pgharbor")
        .get(0);
    assert!(ssl, "the server connection uses TLS");
    let token = client.cancel_token();
    let query = client.simple_query("select pg_sleep(30)");
    let cancel = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        token
            .cancel_query(tokio_postgres::NoTls)
            .await
            .expect("cancel sent to pgharbor");
    };
    let bounded = tokio::time::timeout(std::time::Duration::from_secs(10), query);
    let (result, ()) = tokio::join!(bounded, cancel);
    let err = result
        .expect("the cancel reached the query (it ran on)")
        .expect_err("the query was cancelled");
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err}");
    client.simple_query("select 1").await.expect("still usable");
    psql_ctrl_c_cancels(&proxy, &ssl_pg).await;
    assert_eq!(
        refused.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "something was sent to the server in clear"
    );
}

/// psql runs `pg_sleep(30)` through `proxy`; once `pg` shows it running,
/// Ctrl-C (SIGINT) makes psql send its cancel, which must end the query.
async fn psql_ctrl_c_cancels(proxy: &pgharbor::Proxy, pg: &pgharbor::scratch_pg::ScratchPostgres) {
    let a = proxy.addr();
    let mut child = Command::new(bin("psql"))
        .args([
            "-X",
            "-qAt",
            "-h",
            &a.ip().to_string(),
            "-p",
            &a.port().to_string(),
        ])
        .args([
            "-U",
            USER,
            "-d",
            "app",
            "-c",
            "select pg_sleep(30) /* tls-ctrl-c */",
        ])
        .env("PGPASSWORD", PASSWORD)
        .env("PGCONNECT_TIMEOUT", "10")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run psql");
    let running = "select count(*) from pg_stat_activity where state = 'active' \
                   and query like '%tls-ctrl-c%' and pid <> pg_backend_pid()";
    let started = eventually(std::time::Duration::from_secs(10), || async {
        pg.psql("app", running).is_ok_and(|n| n == "1")
    })
    .await;
    assert!(started, "psql's query never started");
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let exited = eventually(std::time::Duration::from_secs(10), || {
        let done = child.try_wait().unwrap().is_some();
        async move { done }
    })
    .await;
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("canceling statement due to user request"),
        "psql's Ctrl-C did not cancel the query: {stderr}"
    );
}

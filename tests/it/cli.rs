//! The command line: `check-config`, `demo`, and the example config file
//! staying in step with `src/config/mod.rs`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::assert_succeeded;

fn pgharbor() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pgharbor"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

fn example_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/pgharbor.toml")
}

fn check_config_text(text: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    pgharbor()
        .arg("check-config")
        .arg(&path)
        .output()
        .expect("run pgharbor check-config")
}

#[test]
fn check_config_accepts_the_example_file() {
    let out = pgharbor()
        .args(["check-config", "config/pgharbor.toml"])
        .output()
        .unwrap();
    assert_succeeded(&out);
}

#[test]
fn check_config_rejects_bad_files_naming_the_key() {
    let cases = [
        ("[pool]\npool_size = 0\n", "pool_size"),
        ("[pool]\npool_sise = 3\n", "pool_sise"),
        ("[proxy]\nlisten_adr = \"127.0.0.1:6432\"\n", "listen_adr"),
        ("[proxy]\nshutdown_timeout = \"soon\"\n", "shutdown_timeout"),
        ("[proxy]\nlisten_addr = \"nowhere\"\n", "proxy.listen_addr"),
        (
            "[[databases]]\nname = \"a\"\npool_size = 2\nmin_pool_size = 5\n",
            "databases[0].min_pool_size",
        ),
        (
            "[[users]]\nname = \"u\"\nauth_type = \"md5\"\n",
            "users[0].password",
        ),
        ("[pool]\npool_mode = \"statement\"\n", "pool_mode"),
        // TLS files are read by check-config too.
        (
            "[client_tls]\nmode = \"require\"\ncert_file = \"/nonexistent/cert.pem\"\nkey_file = \"/nonexistent/key.pem\"\n",
            "client_tls.cert_file",
        ),
    ];
    for (text, key) in cases {
        let out = check_config_text(text);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted:\n{text}");
        assert!(stderr.contains(key), "{key} not named in: {stderr}");
    }
    let out = pgharbor()
        .args(["check-config", "/nonexistent/pgharbor.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/pgharbor.toml"));
}

/// `struct name -> the [section] of config/pgharbor.toml that documents it`.
const SECTIONS: &[(&str, &str)] = &[
    ("Config", ""),
    ("ProxyConfig", "proxy"),
    ("PeerConfig", "peers"),
    ("MetricsConfig", "metrics"),
    ("ClientTlsConfig", "client_tls"),
    ("ServerTlsConfig", "server_tls"),
    ("PoolDefaults", "pool"),
    ("ListenConfig", "listen"),
    ("DatabaseConfig", "databases"),
    ("UserConfig", "users"),
];

/// The `pub` fields of each config struct in src/config/mod.rs.
fn config_struct_fields() -> Vec<(String, Vec<String>)> {
    let src =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config/mod.rs"))
            .unwrap();
    let mut out = Vec::new();
    let mut current: Option<(String, Vec<String>)> = None;
    for line in src.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("pub struct ") {
            let name = rest
                .split(|c: char| !c.is_alphanumeric() && c != '_')
                .next()
                .unwrap();
            current = Some((name.to_string(), Vec::new()));
            continue;
        }
        if let Some((_, fields)) = current.as_mut() {
            if t == "}" {
                out.push(current.take().unwrap());
            } else if let Some(rest) = t.strip_prefix("pub ") {
                if let Some((field, _)) = rest.split_once(':') {
                    fields.push(field.trim().to_string());
                }
            }
        }
    }
    out
}

/// Keys written (or shown commented out) in each `[section]` of the example
/// file; the top level is "".
fn documented_keys() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(example_config()).unwrap();
    let mut section = String::new();
    let mut keys = Vec::new();
    for line in text.lines() {
        let t = line.trim().trim_start_matches('#').trim();
        if let Some(name) = t.strip_prefix('[') {
            let name = name.trim_matches(|c| c == '[' || c == ']').trim();
            if !name.contains(' ') && !name.is_empty() {
                section = name.to_string();
                keys.push((String::new(), section.clone()));
            }
            continue;
        }
        if let Some((key, _)) = t.split_once('=') {
            let key = key.trim();
            if !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                keys.push((section.clone(), key.to_string()));
            }
        }
    }
    keys
}

#[test]
fn example_config_documents_every_key() {
    let structs = config_struct_fields();
    let keys = documented_keys();
    let text = std::fs::read_to_string(example_config()).unwrap();
    let mut checked = 0;
    for (name, fields) in &structs {
        let Some((_, section)) = SECTIONS.iter().find(|(s, _)| s == name) else {
            panic!("src/config/mod.rs has a new struct `{name}`: add it to SECTIONS in tests/it/cli.rs and document it in config/pgharbor.toml");
        };
        for field in fields {
            let found = keys.iter().any(|(s, k)| s == section && k == field);
            assert!(
                found,
                "config/pgharbor.toml does not document `{field}` in [{section}] (struct {name})"
            );
            checked += 1;
        }
    }
    assert!(
        checked > 40,
        "only {checked} fields found; is the parser broken?"
    );
    // Every key comes with a comment that says its default.
    assert!(text.matches("Default").count() >= 25);
}

/// Ends a child we started, by its pid.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn demo_answers_psql_and_cleans_up_on_ctrl_c() {
    let child = pgharbor()
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .env("PGHARBOR_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pgharbor demo");
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut dsn = None;
    let mut data_dir = None;
    let mut pg_port = None;
    let mut seen = Vec::new();
    while dsn.is_none() || data_dir.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no DSN printed; output so far: {seen:#?}"));
        if let Some(start) = line.find("postgresql://") {
            if dsn.is_none() {
                let rest = &line[start..];
                dsn = Some(rest[..rest.find('\'').unwrap_or(rest.len())].to_string());
            }
        }
        if let Some(i) = line.find("(data in ") {
            let rest = &line[i + "(data in ".len()..];
            data_dir = Some(PathBuf::from(rest.trim_end_matches(')')));
            let port = line[..i].trim().rsplit(':').next().unwrap().to_string();
            pg_port = port.parse::<u16>().ok();
        }
        seen.push(line);
    }
    let dsn = dsn.unwrap();
    let data_dir = data_dir.unwrap();
    assert!(data_dir.exists(), "{}", data_dir.display());

    let psql = Path::new(
        seen.iter()
            .find_map(|l| l.strip_prefix("PostgreSQL from "))
            .and_then(|l| l.split(" is running").next())
            .expect("the demo names its PostgreSQL binaries"),
    )
    .join("psql");
    let out = Command::new(&psql)
        .args(["-X", "-qAt", &dsn, "-c", "select 40 + 2"])
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("run psql");
    assert_succeeded(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");

    // Ctrl-C: both stop, the temporary directory goes away.
    let int = Command::new("kill")
        .args(["-INT", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(int.success());
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "demo still running after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert!(!data_dir.exists(), "{} left behind", data_dir.display());
    if let Some(port) = pg_port {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "the demo PostgreSQL still listens on {port}"
        );
    }
}

/// Threads of a running process, from /proc.
fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

/// `proxy.worker_threads`: 1 (the default) serves every client from the
/// main thread; N starts N worker threads. Both serve concurrent clients.
#[tokio::test]
async fn worker_threads_sets_how_many_threads_serve_clients() {
    for (workers, threads) in [(1, 1), (3, 4)] {
        let proxy = crate::support::ProxyProcess::start_listening(
            "2s",
            &format!("worker_threads = {workers}"),
        )
        .await;
        // Counted before any login: a server login later derives its SCRAM
        // key on a blocking-pool thread.
        assert_eq!(
            thread_count(proxy.child.id()),
            threads,
            "worker_threads = {workers}"
        );
        let mut clients = Vec::new();
        for i in 0..8 {
            let dsn = proxy.dsn.clone();
            clients.push(tokio::spawn(async move {
                let c = crate::support::connect_dsn(&dsn).await;
                for _ in 0..20 {
                    let row = c.query_one("select $1::int + 1", &[&i]).await.unwrap();
                    assert_eq!(row.get::<_, i32>(0), i + 1);
                }
            }));
        }
        for c in clients {
            c.await.unwrap();
        }
    }
}

/// What pgharbor prints to stdout between starting with `PGHARBOR_LOG` set
/// to `spec` and being stopped with SIGTERM after one query (its server
/// connection is logged at debug).
async fn log_output(spec: &str) -> String {
    let port = crate::support::free_port();
    let text = crate::support::config_text("transaction", 1, "").replace(
        "listen_addr = \"127.0.0.1:0\"",
        &format!("listen_addr = \"127.0.0.1:{port}\""),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgharbor.toml");
    std::fs::write(&path, text).unwrap();
    let child = pgharbor()
        .arg("-c")
        .arg(&path)
        .env("PGHARBOR_LOG", spec)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pgharbor");
    let addr = format!("127.0.0.1:{port}");
    let up = crate::support::eventually(Duration::from_secs(10), || {
        let addr = addr.clone();
        async move { tokio::net::TcpStream::connect(addr).await.is_ok() }
    })
    .await;
    if up {
        let dsn = format!(
            "host=127.0.0.1 port={port} user={} password={} dbname=app connect_timeout=10",
            crate::support::USER,
            crate::support::PASSWORD
        );
        crate::support::connect_dsn(&dsn)
            .await
            .simple_query("select 1")
            .await
            .unwrap();
    }
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let out = child.wait_with_output().expect("pgharbor exits");
    assert!(up, "pgharbor did not start with PGHARBOR_LOG={spec:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `PGHARBOR_LOG` takes a level or a list of `target=level` (read as a
/// static filter) and defaults to info.
#[tokio::test]
async fn pgharbor_log_sets_the_level_per_target() {
    for (spec, shows_info, shows_debug) in [
        ("", true, false),
        ("warn", false, false),
        ("pgharbor=debug", true, true),
        ("tokio=info", false, false),
        ("warn,pgharbor=info", true, false),
    ] {
        let out = log_output(spec).await;
        assert_eq!(
            out.contains("pgharbor listening"),
            shows_info,
            "PGHARBOR_LOG={spec:?}: {out}"
        );
        assert_eq!(
            out.contains("server connection opened"),
            shows_debug,
            "PGHARBOR_LOG={spec:?}: {out}"
        );
    }
}

//! Observability: /metrics under pgbench load, promtool, health endpoints,
//! and the admin console (SHOW, PAUSE / RESUME, RELOAD, SHUTDOWN, refusals).

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use crate::support::*;
use pgharbor::Proxy;
use tokio::io::AsyncReadExt;
use tokio_postgres::SimpleQueryMessage;

const ADMIN: &str = "admin";
const ADMIN_PASSWORD: &str = "admin-pw";

/// `config_text` plus an HTTP endpoint on a free port.
fn with_metrics(mode: &str, pool_size: usize) -> String {
    config_text(mode, pool_size, "") + "\n[metrics]\nlisten_addr = \"127.0.0.1:0\"\n"
}

pub(crate) async fn scrape(proxy: &Proxy) -> String {
    let (status, body) = http_get(proxy.metrics_addr().expect("metrics enabled"), "/metrics").await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of the sample `name{labels…}` whose labels include `want`.
pub(crate) fn sample(text: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            continue;
        }
        let labels: HashMap<&str, &str> = labels
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"')))
            .collect();
        if want.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            return value.parse().ok();
        }
    }
    None
}

fn pool_metric(text: &str, name: &str, state: Option<&str>) -> i64 {
    let mut want = vec![("database", "app"), ("user", USER)];
    if let Some(s) = state {
        want.push(("state", s));
    }
    sample(text, name, &want).unwrap_or_else(|| panic!("{name} {state:?} missing in\n{text}"))
        as i64
}

async fn admin(proxy: &Proxy) -> tokio_postgres::Client {
    let a = proxy.addr();
    connect_dsn(&format!(
        "host={} port={} user={ADMIN} password={ADMIN_PASSWORD} dbname=pgharbor connect_timeout=10",
        a.ip(),
        a.port()
    ))
    .await
}

/// Rows of a console command as column → value maps.
async fn show(admin: &tokio_postgres::Client, cmd: &str) -> Vec<HashMap<String, String>> {
    let msgs = admin
        .simple_query(cmd)
        .await
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_string(), r.get(i).unwrap_or("").to_string()))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

fn app_pool(rows: &[HashMap<String, String>]) -> HashMap<String, String> {
    rows.iter()
        .find(|r| r["database"] == "app" && r["user"] == USER)
        .cloned()
        .unwrap_or_else(|| panic!("no app/app pool in {rows:?}"))
}

fn num(row: &HashMap<String, String>, col: &str) -> i64 {
    row.get(col)
        .unwrap_or_else(|| panic!("no column {col} in {row:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("{col} is not a number in {row:?}"))
}

/// Issue item 1 (+ process metrics): 40 pgbench clients over a pool of 5.
/// Item 2: `promtool check metrics` accepts a scrape taken under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_under_pgbench_load() {
    let _tables = PUBLIC_PGBENCH_TABLES.lock().await;
    let proxy = start_proxy_with(&with_metrics("transaction", 5)).await;
    pgbench_init(USER, "app");

    let a = proxy.addr();
    let mut bench = tokio::process::Command::new(bin("pgbench"))
        .args(["-c", "40", "-j", "2", "-T", "8", "-M", "simple", "-n"])
        .args(["-h", &a.ip().to_string(), "-p", &a.port().to_string()])
        .args(["-U", USER, "app"])
        .env("PGPASSWORD", PASSWORD)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start pgbench");
    let mut stdout = bench.stdout.take().expect("stdout");
    let mut stderr = bench.stderr.take().expect("stderr");
    let collect = tokio::spawn(async move {
        let mut out = String::new();
        let mut err = String::new();
        let _ = stdout.read_to_string(&mut out).await;
        let _ = stderr.read_to_string(&mut err).await;
        (out, err)
    });

    let mut scrapes = 0;
    let mut max_waiting = 0;
    let mut max_active = 0;
    let mut under_load = String::new();
    let status = loop {
        tokio::select! {
            s = bench.wait() => break s.expect("pgbench exit status"),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        let text = scrape(&proxy).await;
        scrapes += 1;
        assert_eq!(pool_metric(&text, "pgharbor_pool_size", None), 5);
        let active = pool_metric(&text, "pgharbor_pool_servers", Some("active"));
        let idle = pool_metric(&text, "pgharbor_pool_servers", Some("idle"));
        assert!(active >= 0 && idle >= 0, "active {active} idle {idle}");
        // Each gauge is exact, but a scrape reads `active` and `idle` at two
        // instants: on this multi-threaded runtime a server returned between
        // the two reads is counted in both (with the default single thread
        // no relay runs during a scrape). The sum is checked once idle.
        assert!(active <= 5 && idle <= 5, "active {active} idle {idle} > 5");
        let waiting = pool_metric(&text, "pgharbor_pool_clients", Some("waiting"));
        if waiting > max_waiting {
            max_waiting = waiting;
            under_load = text;
        }
        max_active = max_active.max(active);
    };
    let (out, err) = collect.await.expect("pgbench output");
    assert!(status.success(), "pgbench failed: {out}\n{err}");
    let processed: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no processed count in pgbench output:\n{out}"));
    eprintln!(
        "pgbench processed {processed}; {scrapes} scrapes; max waiting {max_waiting}; max active {max_active}"
    );
    assert!(processed > 0 && scrapes >= 20, "{out}");
    assert!(max_waiting > 0, "no scrape saw a waiting client");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let last = loop {
        let text = scrape(&proxy).await;
        let counted = pool_metric(&text, "pgharbor_transactions_total", None) as u64;
        if counted >= processed {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pgharbor_transactions_total {counted} < pgbench's {processed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let active = pool_metric(&last, "pgharbor_pool_servers", Some("active"));
    let idle = pool_metric(&last, "pgharbor_pool_servers", Some("idle"));
    assert!(active + idle <= 5, "active {active} + idle {idle} > 5");
    assert!(pool_metric(&last, "pgharbor_queries_total", None) as u64 >= processed * 7);
    assert!(
        sample(
            &last,
            "pgharbor_pool_wait_seconds_count",
            &[("database", "app")]
        )
        .unwrap_or(0.0)
            > 0.0
    );
    assert!(
        sample(&last, "pgharbor_clients_total", &[]).unwrap_or(0.0) >= 40.0,
        "pgharbor_clients_total"
    );
    // Process metrics (the prometheus crate's process collector).
    for name in [
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(
            sample(&last, name, &[]).is_some_and(|v| v > 0.0),
            "{name} missing"
        );
    }
    // Whole seconds in this crate: present, maybe still 0.
    assert!(sample(&last, "process_cpu_seconds_total", &[]).is_some());

    // promtool: the scrape taken with clients waiting, and the final one.
    for text in [&under_load, &last] {
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool is installed (Debian package `prometheus`)");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("feed promtool");
        let out = child.wait_with_output().expect("promtool ran");
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Issue item 3: SHOW POOLS agrees with /metrics; the other SHOWs list
/// what is connected; PAUSE holds new transactions, RESUME releases them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_agrees_with_metrics_and_pause_holds_transactions() {
    let proxy = start_proxy_with(&with_metrics("transaction", 2)).await;
    let a = connect(&proxy, "app").await;
    let b = connect(&proxy, "app").await;
    a.simple_query("BEGIN; SELECT 1").await.unwrap();
    b.simple_query("SELECT 1").await.unwrap();
    let console = admin(&proxy).await;

    let pools = show(&console, "SHOW POOLS").await;
    let row = app_pool(&pools);
    let text = scrape(&proxy).await;
    assert_eq!(
        num(&row, "sv_active"),
        pool_metric(&text, "pgharbor_pool_servers", Some("active"))
    );
    assert_eq!(
        num(&row, "sv_idle"),
        pool_metric(&text, "pgharbor_pool_servers", Some("idle"))
    );
    assert_eq!(
        num(&row, "cl_waiting"),
        pool_metric(&text, "pgharbor_pool_clients", Some("waiting"))
    );
    assert_eq!(
        num(&row, "cl_active"),
        pool_metric(&text, "pgharbor_pool_clients", Some("active"))
            + pool_metric(&text, "pgharbor_pool_clients", Some("idle"))
    );
    assert_eq!(
        (num(&row, "cl_active"), num(&row, "cl_waiting")),
        (2, 0),
        "{row:?}"
    );
    assert_eq!((num(&row, "sv_active"), num(&row, "sv_idle")), (1, 1));
    assert_eq!((num(&row, "maxwait"), num(&row, "maxwait_us")), (0, 0));
    assert_eq!(row["pool_mode"], "transaction");
    let cols: Vec<&str> = vec![
        "database",
        "user",
        "cl_active",
        "cl_waiting",
        "cl_cancel_req",
        "sv_active",
        "sv_idle",
        "sv_used",
        "sv_tested",
        "sv_login",
        "maxwait",
        "maxwait_us",
        "pool_mode",
    ];
    for c in cols {
        assert!(row.contains_key(c), "SHOW POOLS lacks {c}");
    }

    // SHOW SERVERS / CLIENTS: the client in a transaction is linked to the
    // active server, both ways.
    let servers = show(&console, "show servers;").await;
    let app_servers: Vec<_> = servers.iter().filter(|s| s["database"] == "app").collect();
    assert_eq!(app_servers.len(), 2, "{servers:?}");
    let active: Vec<_> = app_servers
        .iter()
        .filter(|s| s["state"] == "active")
        .collect();
    assert_eq!(active.len(), 1, "{servers:?}");
    let clients = show(&console, "Show Clients").await;
    let linked: Vec<_> = clients.iter().filter(|c| !c["link"].is_empty()).collect();
    assert_eq!(linked.len(), 1, "{clients:?}");
    assert_eq!(linked[0]["link"], active[0]["ptr"]);
    assert_eq!(active[0]["link"], linked[0]["ptr"]);
    assert_eq!(linked[0]["state"], "active");
    let direct = connect_direct().await;
    let pid: i32 = active[0]["remote_pid"].parse().unwrap();
    let row = direct
        .query_one("select state from pg_stat_activity where pid = $1", &[&pid])
        .await
        .expect("remote_pid is a real backend");
    assert_eq!(row.get::<_, String>(0), "idle in transaction");
    assert!(
        clients
            .iter()
            .any(|c| c["database"] == "pgharbor" && c["user"] == ADMIN),
        "the console itself is listed: {clients:?}"
    );
    assert_eq!(clients.iter().filter(|c| c["database"] == "app").count(), 2);
    // Each client shows the address it connected to: the listener's (bound
    // to 127.0.0.1, so known without asking the socket).
    for c in clients.iter().filter(|c| c["database"] == "app") {
        assert_eq!(c["local_addr"], proxy.addr().ip().to_string(), "{c:?}");
        assert_eq!(c["local_port"], proxy.addr().port().to_string(), "{c:?}");
    }

    // The other SHOWs answer with PgBouncer's columns.
    let stats = show(&console, "SHOW STATS").await;
    let app = stats
        .iter()
        .find(|r| r["database"] == "app")
        .expect("app stats");
    assert!(num(app, "total_xact_count") >= 1, "{app:?}");
    assert!(num(app, "total_query_count") >= 2, "{app:?}");
    assert!(num(app, "total_received") > 0 && num(app, "total_sent") > 0);
    for c in [
        "total_xact_time",
        "total_wait_time",
        "avg_xact_time",
        "avg_wait_time",
    ] {
        num(app, c);
    }
    let dbs = show(&console, "SHOW DATABASES").await;
    let app = dbs
        .iter()
        .find(|r| r["name"] == "app")
        .expect("app database");
    assert_eq!(num(app, "pool_size"), 2);
    assert_eq!(num(app, "current_connections"), 2);
    assert_eq!(num(app, "paused"), 0);
    let config = show(&console, "SHOW CONFIG").await;
    let size = config
        .iter()
        .find(|r| r["key"] == "pool.pool_size")
        .expect("pool.pool_size");
    assert_eq!(
        (size["value"].as_str(), size["default"].as_str()),
        ("2", "20")
    );
    let lists = show(&console, "SHOW LISTS").await;
    let items: HashMap<_, _> = lists
        .iter()
        .map(|r| (r["list"].clone(), r["items"].clone()))
        .collect();
    assert_eq!(items["databases"], "3");
    assert_eq!(items["used_clients"], "3");
    assert_eq!(items["used_servers"], "2");
    let version = show(&console, "SHOW VERSION").await;
    assert!(version[0]["version"].starts_with("pgharbor "));

    // PAUSE waits (like PgBouncer's) until the open transaction ends.
    let pause = {
        let console = admin(&proxy).await;
        tokio::spawn(async move { console.simple_query("PAUSE app").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !pause.is_finished(),
        "PAUSE returned while a transaction was open"
    );
    a.simple_query("COMMIT").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), pause)
        .await
        .expect("PAUSE returns once the transaction ended")
        .unwrap()
        .expect("PAUSE succeeds");

    // Paused: a new transaction does not complete...
    let held = tokio::spawn(async move { b.simple_query("SELECT 2").await.map(|_| b) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!held.is_finished(), "a transaction ran while paused");
    let row = app_pool(&show(&console, "SHOW POOLS").await);
    assert_eq!(num(&row, "cl_waiting"), 1, "{row:?}");
    assert_eq!(
        num(&row, "cl_active"),
        1,
        "the waiting client is not also active"
    );
    // It has waited about the 500 ms slept above (less the moment its
    // query took to arrive).
    let waited_us = num(&row, "maxwait") * 1_000_000 + num(&row, "maxwait_us");
    assert!(
        (400_000..60_000_000).contains(&waited_us),
        "maxwait {waited_us} µs: {row:?}"
    );
    let text = scrape(&proxy).await;
    // The client states partition the clients: a idle, b waiting.
    for (state, n) in [("waiting", 1), ("active", 0), ("idle", 1)] {
        assert_eq!(
            pool_metric(&text, "pgharbor_pool_clients", Some(state)),
            n,
            "{state}"
        );
    }
    let dbs = show(&console, "SHOW DATABASES").await;
    assert_eq!(
        num(dbs.iter().find(|r| r["name"] == "app").unwrap(), "paused"),
        1
    );

    // ...until RESUME.
    console.simple_query("resume app;").await.unwrap();
    let b = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("RESUME releases the waiting transaction")
        .unwrap()
        .expect("query succeeds after RESUME");
    b.simple_query("SELECT 3").await.unwrap();
    let row = app_pool(&show(&console, "SHOW POOLS").await);
    assert_eq!(num(&row, "cl_waiting"), 0);
    assert_eq!(
        (num(&row, "maxwait"), num(&row, "maxwait_us")),
        (0, 0),
        "nobody waits any more"
    );

    // RECONNECT closes the idle servers.
    console.simple_query("RECONNECT app").await.unwrap();
    let row = app_pool(&show(&console, "SHOW POOLS").await);
    assert_eq!(num(&row, "sv_idle"), 0, "{row:?}");
    assert!(show(&console, "SHOW SERVERS").await.is_empty());
}

/// Non-admins are refused; odd input gets errors, not a dead console.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_refuses_non_admins_and_survives_odd_input() {
    let proxy = start_proxy("transaction", 2).await;
    let e = tokio_postgres::connect(&dsn(&proxy, "pgharbor"), tokio_postgres::NoTls)
        .await
        .err()
        .expect("a non-admin is refused");
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{e}");
    let out = psql(&proxy, USER, PASSWORD, "pgbouncer", "SHOW POOLS").await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("may not use the admin console"), "{err}");
    assert!(err.contains("admin_users"), "hint names the setting: {err}");

    // psql, through the `pgbouncer` alias.
    let out = psql(&proxy, ADMIN, ADMIN_PASSWORD, "pgbouncer", "show lists;").await;
    assert_succeeded(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("databases|3"));

    let console = admin(&proxy).await;
    for bad in [
        "SELECT 1",
        "SHOW",
        "SHOW NOTHING",
        "PAUSE a b",
        "\"",
        "SHOW \u{feff}",
    ] {
        let e = console.simple_query(bad).await.expect_err(bad);
        assert_eq!(sqlstate(&e).as_deref(), Some("42601"), "{bad}: {e}");
    }
    let e = console
        .simple_query("PAUSE nosuchdb")
        .await
        .expect_err("unknown database");
    assert_eq!(sqlstate(&e).as_deref(), Some("3D000"), "{e}");
    // Extended protocol is refused with an error, and the console goes on.
    let e = console
        .query("SHOW POOLS", &[])
        .await
        .expect_err("extended protocol refused");
    assert_eq!(sqlstate(&e).as_deref(), Some("0A000"), "{e}");
    // An empty query and several statements in one.
    console.simple_query("").await.unwrap();
    console.simple_query(" ; ").await.unwrap();
    let msgs = console
        .simple_query("SHOW VERSION; SHOW LISTS")
        .await
        .unwrap();
    let rows = msgs
        .iter()
        .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(rows, 1 + 13);
    // RELOAD without a config file is an error, not a crash.
    let e = console.simple_query("RELOAD").await.expect_err("no file");
    assert_eq!(sqlstate(&e).as_deref(), Some("22023"), "{e}");
    assert_eq!(show(&console, "SHOW VERSION").await.len(), 1);
}

/// RELOAD re-reads the file; SHUTDOWN starts the drain and ends the console.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_and_shutdown_from_the_console() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgharbor.toml");
    let text = config_text("transaction", 2, "");
    std::fs::write(&path, &text).unwrap();
    let proxy = start_proxy_with(&text).await;
    proxy.state().set_config_path(path.clone()).unwrap();
    let e = tokio_postgres::connect(&dsn(&proxy, "pgharbor"), tokio_postgres::NoTls)
        .await
        .err()
        .expect("app is not an admin yet");
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{e}");

    std::fs::write(
        &path,
        text.replace(
            "admin_users = [\"admin\"]",
            &format!("admin_users = [\"admin\", \"{USER}\"]"),
        ),
    )
    .unwrap();
    let console = admin(&proxy).await;
    console.simple_query("RELOAD").await.unwrap();
    let app_console = connect(&proxy, "pgharbor").await;
    let config = show(&app_console, "SHOW CONFIG").await;
    let admins = config
        .iter()
        .find(|r| r["key"] == "proxy.admin_users")
        .unwrap();
    assert_eq!(admins["value"], format!("admin,{USER}"));

    // A broken file keeps the previous configuration.
    std::fs::write(&path, "[proxy]\nnot_a_key = 1\n").unwrap();
    let e = console.simple_query("RELOAD").await.expect_err("bad file");
    assert!(
        e.to_string().contains("not_a_key") || format!("{e:?}").contains("not_a_key"),
        "{e:?}"
    );
    assert_eq!(show(&console, "SHOW DATABASES").await.len(), 3);

    console.simple_query("SHUTDOWN").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), proxy.shutdown_requested())
        .await
        .expect("SHUTDOWN starts the drain");
    // The consoles are closed by the drain.
    let closed = eventually(Duration::from_secs(5), || async {
        app_console.simple_query("SHOW VERSION").await.is_err()
    })
    .await;
    assert!(closed, "console still open after SHUTDOWN");
}

/// Issue item 4 and the HTTP basics: /readyz follows Postgres, /healthz is
/// always 200, unknown paths are 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_postgres_and_unknown_paths_are_404() {
    let pg = tokio::task::spawn_blocking(pgharbor::scratch_pg::ScratchPostgres::start)
        .await
        .unwrap()
        .expect("a dedicated scratch PostgreSQL");
    let port = pg.port();
    let text = format!(
        r#"
[proxy]
listen_addr = "127.0.0.1:0"

[metrics]
listen_addr = "127.0.0.1:0"

[[databases]]
name = "own"
dbname = "postgres"
port = {port}

[[users]]
name = "postgres"
password = "postgres"
"#
    );
    let proxy = start_proxy_with(&text).await;
    let m = proxy.metrics_addr().expect("metrics enabled");
    assert_eq!(http_get(m, "/healthz").await.0, 200);
    let (status, body) = http_get(m, "/nope").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(http_get(m, "/readyz").await.0, 200);

    let pg = std::sync::Arc::new(pg);
    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.stop())
        .await
        .unwrap()
        .expect("stop Postgres");
    let (status, body) = http_get(m, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("database own"),
        "the reason names the database: {body}"
    );
    assert_eq!(
        http_get(m, "/healthz").await.0,
        200,
        "alive while not ready"
    );

    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.restart())
        .await
        .unwrap()
        .expect("restart Postgres");
    let ready = eventually(Duration::from_secs(10), || async {
        http_get(m, "/readyz").await.0 == 200
    })
    .await;
    assert!(ready, "/readyz is 200 again after Postgres restarted");
}

/// A PAUSE covers pools that open only while it lasts (a client of a user
/// or database not connected before), as PgBouncer's does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_pools_opened_after_it() {
    let proxy = start_proxy_with(&with_metrics("transaction", 2)).await;
    let console = admin(&proxy).await;
    console.simple_query("PAUSE").await.expect("PAUSE");
    // No pool for app_tx exists yet.
    let dsn = dsn(&proxy, "app_tx");
    let held = tokio::spawn(async move {
        let c = connect_dsn(&dsn).await;
        c.simple_query("SELECT 1").await.map(|_| c)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !held.is_finished(),
        "a new pool ran a transaction while paused"
    );
    console.simple_query("RESUME").await.expect("RESUME");
    tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("RESUME releases the held client")
        .unwrap()
        .expect("its query succeeds");
}

/// SHOW CLIENTS names a client waiting in line for a server `waiting`, with
/// how long it has waited, as PgBouncer does; `active` once it has one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_clients_names_a_client_waiting_for_a_server() {
    let proxy = start_proxy_with(&with_metrics("transaction", 1)).await;
    let admin = admin(&proxy).await;
    let holder = connect(&proxy, "app").await;
    holder.batch_execute("BEGIN").await.expect("begin");
    let waiter = connect(&proxy, "app").await;
    let query = tokio::spawn(async move {
        waiter.simple_query("SELECT 1").await.map(drop)?;
        Ok::<_, tokio_postgres::Error>(waiter)
    });
    let app_clients = |rows: Vec<HashMap<String, String>>| -> Vec<HashMap<String, String>> {
        rows.into_iter().filter(|r| r["user"] == USER).collect()
    };
    // Bounded: the waiter queues within moments of its query being sent.
    let mut waiting = None;
    for _ in 0..200 {
        let rows = app_clients(show(&admin, "SHOW CLIENTS").await);
        waiting = rows.into_iter().find(|r| r["state"] == "waiting");
        if waiting.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let row = waiting.expect("no client shown waiting");
    assert!(num(&row, "wait") < 10, "{row:?}");
    assert!(num(&row, "wait_us") < 1_000_000, "{row:?}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let rows = app_clients(show(&admin, "SHOW CLIENTS").await);
    let still = rows
        .iter()
        .find(|r| r["ptr"] == row["ptr"])
        .expect("same client");
    assert_eq!(still["state"], "waiting");
    assert!(num(still, "wait") >= 1, "the wait grows: {still:?}");

    holder.batch_execute("COMMIT").await.expect("commit");
    let _waiter = query
        .await
        .expect("join")
        .expect("served once the server is free");
    let rows = app_clients(show(&admin, "SHOW CLIENTS").await);
    assert!(
        rows.iter()
            .all(|r| r["state"] != "waiting" && r["wait"] == "0"),
        "{rows:?}"
    );
}

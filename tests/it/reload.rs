//! RELOAD on a running instance: open pools take their new size and server
//! at once, without failing a transaction; a bad file changes nothing and
//! says where it is wrong; removed databases and settings that need a
//! restart are reported.

use std::time::Duration;

use crate::support::*;

/// Postgres backends of `user` on the server at `port`, as Postgres lists them.
async fn backends_at(port: u16, user: &str) -> i64 {
    let dsn = format!("host=127.0.0.1 port={port} user=postgres password=postgres dbname=app");
    let direct = connect_dsn(&dsn).await;
    backends_of_user(&direct, user).await
}

/// Polls the number of `user`'s backends on the shared Postgres until
/// `ok` holds, for up to `limit`; returns the last count.
async fn wait_for_backends(user: &str, limit: Duration, ok: impl Fn(i64) -> bool) -> i64 {
    let direct = connect_direct().await;
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let n = backends_of_user(&direct, user).await;
        if ok(n) || tokio::time::Instant::now() >= deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// pgbench ran to its end and reports no failed transaction.
#[track_caller]
fn assert_no_failed_transactions(out: &std::process::Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        pgbench_number(&stdout, "number of failed transactions"),
        Some(0),
        "{stdout}"
    );
}

/// `text` with `[pool] pool_size` misspelt, and the line of the typo.
fn with_typo(text: &str) -> (String, usize) {
    let bad = text.replacen("\npool_size =", "\npool_sise =", 1);
    let line = bad
        .lines()
        .position(|l| l.starts_with("pool_sise"))
        .expect("the typo")
        + 1;
    (bad, line)
}

async fn reload(admin: &tokio_postgres::Client) {
    admin.simple_query("RELOAD").await.expect("RELOAD");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_grows_and_shrinks_open_pools_under_pgbench_without_a_failed_transaction() {
    let user = "reload_size";
    let text = |size: usize| config_text_for_own_database("transaction", size, user);
    let fp = FileProxy::start(&text(5)).await;
    let addr = fp.proxy.addr();
    let init = pgbench_at(addr, user, &["-i", "-s", "1", "-q"]).await;
    assert_succeeded(&init);
    let (admin, _) = connect_admin(&fp.proxy).await;

    let bench = tokio::spawn(async move {
        pgbench_at(addr, user, &["-c", "40", "-j", "2", "-T", "25", "-S"]).await
    });
    let before = wait_for_backends(user, Duration::from_secs(10), |n| n == 5).await;
    assert_eq!(before, 5, "pgbench fills the pool of 5");

    fp.write(&text(10));
    reload(&admin).await;
    let grown = wait_for_backends(user, Duration::from_secs(8), |n| n == 10).await;
    assert_eq!(
        grown, 10,
        "RELOAD to pool_size 10 opens servers for the waiting clients"
    );

    fp.write(&text(3));
    reload(&admin).await;
    let shrunk = wait_for_backends(user, Duration::from_secs(10), |n| n <= 3).await;
    assert!(
        shrunk <= 3,
        "RELOAD to pool_size 3 closes servers as they come back: {shrunk}"
    );

    // pgbench runs for 25 s: a client still waiting long after that would
    // hang the suite, so the wait is bounded and says where the pools are.
    let Ok(ended) = tokio::time::timeout(Duration::from_secs(90), bench).await else {
        let state = where_clients_are(&admin, user).await;
        panic!("pgbench -T 25 still runs after 90 s, a client waits for good\n{state}");
    };
    assert_no_failed_transactions(&ended.expect("pgbench task"));
    let after = wait_for_backends(user, Duration::from_secs(2), |n| n <= 3).await;
    assert!(after <= 3, "still at most 3 once pgbench is done: {after}");
}

/// A config with database `app` on the server at `port`, for [`USER`].
fn config_on_port(port: u16) -> String {
    config_text("transaction", 4, "").replacen(
        &format!("name = \"app\"\nport = {}", pg().port()),
        &format!("name = \"app\"\nport = {port}"),
        1,
    )
}

async fn server_port(client: &tokio_postgres::Client) -> u16 {
    let port = simple_value(client, "select inet_server_port()")
        .await
        .expect("a port");
    port.parse().expect("a port number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_port_moves_new_transactions_while_an_open_one_finishes_where_it_began() {
    // A role of its own, on both servers: the count of backends left on
    // the first server must not see other tests' clients of `app`.
    let user = "reload_port";
    pg2()
        .create_user(user, PASSWORD, "scram-sha-256")
        .expect("the role on the second server");
    let (first, second) = (pg().port(), pg2().port());
    let on_port = |port: u16| {
        config_text_for_user("transaction", 4, "", user).replacen(
            &format!(
                "name = \"{user}\"\ndbname = \"app\"\nport = {}",
                pg().port()
            ),
            &format!("name = \"{user}\"\ndbname = \"app\"\nport = {port}"),
            1,
        )
    };
    let fp = FileProxy::start(&on_port(first)).await;
    let (admin, _) = connect_admin(&fp.proxy).await;
    let as_user = dsn_as(&fp.proxy, user, user);
    let in_txn = connect_dsn(&as_user).await;
    let idle = connect_dsn(&as_user).await;
    assert_eq!(server_port(&idle).await, first);
    in_txn
        .batch_execute("begin; create temporary table t_reload(x int) on commit drop")
        .await
        .expect("begin");
    assert_eq!(server_port(&in_txn).await, first);

    fp.write(&on_port(second));
    reload(&admin).await;

    // The open transaction goes on, on its own server, to its end.
    assert_eq!(
        server_port(&in_txn).await,
        first,
        "an open transaction never moves"
    );
    in_txn
        .batch_execute("insert into t_reload values (1); commit")
        .await
        .expect("the open transaction commits on the first server");
    // Every new transaction, of old clients and new ones, lands on the second.
    let fresh = connect_dsn(&as_user).await;
    for c in [&in_txn, &idle, &fresh] {
        assert_eq!(server_port(c).await, second);
    }
    let left = std::cell::Cell::new(-1);
    let closed = eventually(Duration::from_secs(10), || async {
        left.set(backends_at(first, user).await);
        left.get() == 0
    })
    .await;
    assert!(
        closed,
        "servers to the old port are closed once given back: {} left",
        left.get()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typo_in_the_file_names_line_and_key_and_the_old_settings_keep_working() {
    let good = config_text("transaction", 4, "");
    let fp = FileProxy::start(&good).await;
    let (admin, _) = connect_admin(&fp.proxy).await;
    let (bad, line) = with_typo(&good);
    fp.write(&bad);

    let err = admin
        .simple_query("RELOAD")
        .await
        .expect_err("RELOAD of a bad file fails");
    let msg = err
        .as_db_error()
        .expect("an ErrorResponse")
        .message()
        .to_owned();
    assert!(
        msg.contains(&fp.path.display().to_string()),
        "names the file: {msg}"
    );
    assert!(
        msg.contains(&format!("line {line}")),
        "names line {line}: {msg}"
    );
    assert!(msg.contains("pool.pool_sise"), "names the key: {msg}");

    let client = connect(&fp.proxy, "app").await;
    assert_eq!(
        simple_value(&client, "select 1").await.as_deref(),
        Some("1")
    );
    let rows = admin
        .simple_query("SHOW CONFIG")
        .await
        .expect("SHOW CONFIG");
    let pool_size = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("pool.pool_size") => {
            r.get(1).map(str::to_owned)
        }
        _ => None,
    });
    assert_eq!(
        pool_size.as_deref(),
        Some("4"),
        "the running config is kept"
    );

    let metrics = fp.proxy.state().metrics().render();
    assert!(
        metrics.contains("pgharbor_config_last_reload_success 0"),
        "{metrics}"
    );
    fp.write(&good);
    reload(&admin).await;
    let metrics = fp.proxy.state().metrics().render();
    assert!(
        metrics.contains("pgharbor_config_last_reload_success 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_database_refuses_new_logins_and_ends_its_clients_after_their_transaction() {
    let user = "reload_gone";
    let text = config_text_for_user("transaction", 2, "", user);
    let fp = FileProxy::start(&text).await;
    let (admin, _) = connect_admin(&fp.proxy).await;
    let client = connect_dsn(&dsn_as(&fp.proxy, user, user)).await;
    client.batch_execute("begin").await.expect("begin");
    assert_eq!(
        simple_value(&client, "select 1").await.as_deref(),
        Some("1")
    );

    let without = text.replacen(
        &format!("name = \"{user}\"\ndbname"),
        "name = \"elsewhere\"\ndbname",
        1,
    );
    fp.write(&without);
    reload(&admin).await;

    // Its transaction is not cut.
    client
        .batch_execute("commit")
        .await
        .expect("the open transaction commits");
    let after = client
        .simple_query("select 1")
        .await
        .expect_err("the client is ended after its transaction");
    assert_eq!(sqlstate(&after).as_deref(), Some("3D000"), "{after:?}");
    let msg = after.as_db_error().map(|e| e.message().to_owned());
    assert!(
        msg.as_deref().is_some_and(|m| m.contains("removed")),
        "{msg:?}"
    );
    let refused = tokio_postgres::connect(&dsn_as(&fp.proxy, user, user), tokio_postgres::NoTls)
        .await
        .err()
        .expect("a new login is refused");
    assert_eq!(sqlstate(&refused).as_deref(), Some("3D000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setting_that_needs_a_restart_keeps_its_value_and_reload_names_it_in_a_notice() {
    let text = config_text("transaction", 2, "");
    let fp = FileProxy::start(&text).await;
    let (admin, mut notices) = connect_admin(&fp.proxy).await;
    fp.write(&text.replacen(
        "listen_addr = \"127.0.0.1:0\"",
        "listen_addr = \"127.0.0.1:1\"\nworker_threads = 3",
        1,
    ));
    reload(&admin).await;
    let notice = tokio::time::timeout(Duration::from_secs(5), notices.recv())
        .await
        .expect("a notice")
        .expect("a notice");
    assert_eq!(notice.severity(), "NOTICE");
    for key in ["proxy.listen_addr", "proxy.worker_threads"] {
        assert!(notice.message().contains(key), "{}", notice.message());
    }
    assert_eq!(
        fp.proxy.state().config().proxy.listen_addr,
        "127.0.0.1:0",
        "the running value is kept"
    );
    let client = connect(&fp.proxy, "app").await;
    assert_eq!(
        simple_value(&client, "select 1").await.as_deref(),
        Some("1")
    );
}

/// A mounted ConfigMap as Kubernetes lays it out: the file is a symlink
/// through `..data`, itself a symlink to a timestamped directory.
struct ConfigMapDir {
    root: std::path::PathBuf,
    version: u32,
}

impl ConfigMapDir {
    fn new(root: &std::path::Path, text: &str) -> ConfigMapDir {
        let mut dir = ConfigMapDir {
            root: root.to_owned(),
            version: 0,
        };
        dir.update(text);
        std::os::unix::fs::symlink("..data/pgharbor.toml", root.join("pgharbor.toml"))
            .expect("file symlink");
        dir
    }

    /// Kubernetes' update: a new directory, a new `..data` link renamed
    /// over the old one, the old directory removed.
    fn update(&mut self, text: &str) {
        self.version += 1;
        let name = format!("..2026_12_07_{}", self.version);
        let new = self.root.join(&name);
        std::fs::create_dir(&new).expect("new data directory");
        std::fs::write(new.join("pgharbor.toml"), text).expect("write config");
        let tmp = self.root.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).expect("data symlink");
        std::fs::rename(&tmp, self.root.join("..data")).expect("swap ..data");
        if self.version > 1 {
            let old = self.root.join(format!("..2026_12_07_{}", self.version - 1));
            std::fs::remove_dir_all(old).expect("remove the old data directory");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_config_applies_a_configmap_update_and_ignores_an_invalid_one_until_it_is_fixed() {
    let text = |size: usize| {
        config_text("transaction", size, "").replacen(
            "[proxy]\n",
            "[proxy]\nwatch_config = true\n",
            1,
        )
    };
    let root = tempfile::tempdir().expect("temp dir");
    let mut configmap = ConfigMapDir::new(root.path(), &text(2));
    let path = root.path().join("pgharbor.toml");
    let fp = FileProxy::start_from(root, path).await;
    let client = connect(&fp.proxy, "app").await;
    assert_eq!(
        simple_value(&client, "select 1").await.as_deref(),
        Some("1")
    );
    let pool = fp
        .proxy
        .state()
        .pools()
        .all()
        .into_iter()
        .find(|p| p.key.database == "app");
    let pool = pool.expect("the pool of app");
    let state = fp.proxy.state().clone();
    let reload_failed = || {
        state
            .metrics()
            .render()
            .contains("pgharbor_config_last_reload_success 0")
    };

    // A broken update is refused and the running config kept.
    configmap.update(&text(5).replacen("pool_size = 5", "pool_size = \"five\"", 1));
    let refused = eventually(Duration::from_secs(10), || async { reload_failed() }).await;
    assert!(refused, "the invalid file was tried and refused");
    assert_eq!(pool.settings().pool_size, 2);
    assert_eq!(
        simple_value(&client, "select 2").await.as_deref(),
        Some("2")
    );

    // Once fixed, the next update applies, to the open pool too.
    configmap.update(&text(5));
    let applied = eventually(Duration::from_secs(10), || async {
        pool.settings().pool_size == 5
    })
    .await;
    assert!(
        applied,
        "pool_size 5 reached the open pool without a SIGHUP"
    );
    assert!(!reload_failed());
}

/// The `proxy.peer_id` of the instance that took this admin connection.
async fn peer_id_behind(port: u16) -> Option<String> {
    let dsn = format!(
        "host=127.0.0.1 port={port} user=admin password=admin-pw dbname=pgharbor connect_timeout=5"
    );
    let (admin, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
        .await
        .ok()?;
    tokio::spawn(conn);
    let rows = admin.simple_query("SHOW CONFIG").await.ok()?;
    rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("proxy.peer_id") => {
            r.get(1).map(str::to_owned)
        }
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_a_port_with_reuseport_and_one_drains_while_the_other_serves() {
    let port = free_port();
    let keys = |id: u8| format!("listen_reuseport = true\npeer_id = {id}");
    let mut first = ProxyProcess::start_on(port, "10s", &keys(1)).await;
    let second = ProxyProcess::start_on(port, "10s", &keys(2)).await;

    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        seen.extend(peer_id_behind(port).await);
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(
        seen.len(),
        2,
        "both instances accept clients on the port: {seen:?}"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("select.sql");
    std::fs::write(&script, "select 1;\n").expect("write script");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let script_arg = script.display().to_string();
    let bench = tokio::spawn(async move {
        let args = [
            "-n",
            "-C",
            "-c",
            "4",
            "-j",
            "2",
            "-T",
            "8",
            "-f",
            &script_arg,
        ];
        pgbench_at(addr, USER, &args).await
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    first.sigterm();
    let status = tokio::task::spawn_blocking(move || first.wait_exit(Duration::from_secs(15)))
        .await
        .expect("wait for the first instance");
    assert!(
        status.success(),
        "the drained instance exits cleanly: {status}"
    );

    assert_no_failed_transactions(&bench.await.expect("pgbench task"));
    assert_eq!(
        peer_id_behind(port).await.as_deref(),
        Some("2"),
        "the second instance serves the port alone"
    );
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_added_changed_and_removed_by_reload_reach_logins_and_open_pools() {
    let user = "reload_user";
    let block = |pw: &str| {
        format!(
            "\n[[users]]\nname = \"{user}\"\npassword = \"{pw}\"\nauth_type = \"scram-sha-256\"\n"
        )
    };
    let with_user = config_text_for_user("transaction", 2, "", user);
    let without = with_user.replacen(&block(PASSWORD), "", 1);
    assert_ne!(with_user, without);
    let fp = FileProxy::start(&without).await;
    let (admin, _) = connect_admin(&fp.proxy).await;
    let a = fp.proxy.addr();
    let dsn = |pw: &str| {
        format!(
            "host={} port={} user={user} password={pw} dbname={user} connect_timeout=10",
            a.ip(),
            a.port()
        )
    };
    let login =
        |dsn: String| async move { tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await };
    assert!(login(dsn(PASSWORD)).await.is_err(), "not a user yet");

    // Added.
    fp.write(&with_user);
    reload(&admin).await;
    let client = connect_dsn(&dsn(PASSWORD)).await;
    assert_eq!(
        simple_value(&client, "select 1").await.as_deref(),
        Some("1")
    );

    // Password changed, in Postgres and in the file: the open pool logs in
    // to new servers with the new one, clients log in with it.
    let new_pw = "changed-by-reload";
    pg().create_user(user, new_pw, "scram-sha-256")
        .expect("new password");
    fp.write(&(without.clone() + &block(new_pw)));
    reload(&admin).await;
    admin.simple_query("RECONNECT").await.expect("RECONNECT");
    let renewed = connect_dsn(&dsn(new_pw)).await;
    assert_eq!(
        simple_value(&renewed, "select 2").await.as_deref(),
        Some("2")
    );
    let old = login(dsn(PASSWORD))
        .await
        .err()
        .expect("the old password is refused");
    assert_eq!(sqlstate(&old).as_deref(), Some("28P01"));

    // Removed: new logins are refused, open clients end when they next
    // need a server.
    fp.write(&without);
    reload(&admin).await;
    assert!(
        login(dsn(new_pw)).await.is_err(),
        "a removed user cannot log in"
    );
    let ended = renewed.simple_query("select 3").await.expect_err("ended");
    assert_eq!(sqlstate(&ended).as_deref(), Some("28000"), "{ended:?}");
    pg().create_user(user, PASSWORD, "scram-sha-256")
        .expect("restore the password");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listening_client_hears_notifications_from_the_new_server_after_a_move() {
    let (first, second) = (pg().port(), pg2().port());
    let fp = FileProxy::start(&config_on_port(first)).await;
    let (admin, _) = connect_admin(&fp.proxy).await;
    let (listener, mut notes) = listening_client(&dsn(&fp.proxy, "app")).await;
    listener
        .batch_execute("listen moved_channel")
        .await
        .expect("LISTEN");

    fp.write(&config_on_port(second));
    reload(&admin).await;
    let sender = connect(&fp.proxy, "app").await;
    assert_eq!(server_port(&sender).await, second);
    // Sent until one arrives: the listener connection moves in the
    // background, and a NOTIFY before it listens again is missed (the
    // overflow marker says so).
    let mut heard = None;
    for i in 0..100 {
        sender
            .batch_execute(&format!("notify moved_channel, 'after the move {i}'"))
            .await
            .expect("NOTIFY");
        let wait = tokio::time::timeout(Duration::from_millis(200), notes.recv()).await;
        if let Ok(Some(n)) = wait {
            if n.payload().starts_with("after the move") {
                heard = Some(n);
                break;
            }
        }
    }
    assert!(
        heard.is_some(),
        "a NOTIFY on the new server reaches the listener"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_larger_min_pool_size_warms_an_open_pool_without_clients_asking() {
    let user = "reload_min";
    let text = |extra: &str| config_text_for_user("transaction", 5, extra, user);
    let fp = FileProxy::start(&text("")).await;
    let (admin, _) = connect_admin(&fp.proxy).await;
    let client = connect_dsn(&dsn_as(&fp.proxy, user, user)).await;
    assert_eq!(
        simple_value(&client, "select 1").await.as_deref(),
        Some("1")
    );
    assert_eq!(backends_at(pg().port(), user).await, 1);

    fp.write(&text("min_pool_size = 3"));
    reload(&admin).await;
    let warmed = wait_for_backends(user, Duration::from_secs(10), |n| n >= 3).await;
    assert_eq!(
        warmed, 3,
        "the janitor opens servers up to the new min_pool_size"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_bad_file_logs_where_it_is_wrong_and_keeps_serving() {
    let proxy = ProxyProcess::start("5s").await;
    let path = proxy.config_path();
    let good = std::fs::read_to_string(&path).expect("config");
    let (bad, line) = with_typo(&good);
    std::fs::write(&path, &bad).expect("write config");
    proxy.signal("HUP");
    let logged = eventually(Duration::from_secs(10), || async {
        proxy.log().contains("reload failed")
    })
    .await;
    let log = proxy.log();
    assert!(logged, "the failed reload is logged: {log}");
    let failure = log
        .lines()
        .find(|l| l.contains("reload failed"))
        .unwrap_or_default();
    let parts = [
        path.display().to_string(),
        format!("line {line}"),
        "pool.pool_sise".to_owned(),
    ];
    for part in parts {
        assert!(failure.contains(&part), "{part} in: {failure}");
    }
    let client = connect_dsn(&proxy.dsn).await;
    assert_eq!(
        simple_value(&client, "select 1").await.as_deref(),
        Some("1")
    );
}

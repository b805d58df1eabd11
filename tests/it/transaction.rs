//! Transaction-mode pinning: pgbench under a small pool, clients that vanish
//! mid-transaction, COPY, errors inside transactions, multi-statement queries
//! and Flush without Sync.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::raw::{self, RawClient};
use crate::support::*;
use futures_util::{SinkExt, StreamExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pgbench_50_clients_on_a_pool_of_5_in_simple_and_extended_mode() {
    // A role of its own, so other tests' servers do not count.
    let user = "bench";
    let proxy = start_proxy_with(&config_text_for_own_database("transaction", 5, user)).await;
    let init = pgbench_at(proxy.addr(), user, &["-i", "-s", "1", "-q"]).await;
    assert!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );

    let direct = connect_direct().await;
    for mode in ["simple", "extended"] {
        let stop = Arc::new(AtomicBool::new(false));
        let max_seen = Arc::new(AtomicI64::new(0));
        let samples = Arc::new(AtomicI64::new(0));
        let sampler = {
            let (stop, max_seen, samples) = (stop.clone(), max_seen.clone(), samples.clone());
            let direct = connect_direct().await;
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let n = backends_of_user(&direct, user).await;
                    max_seen.fetch_max(n, Ordering::Relaxed);
                    samples.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        let args = ["-c", "50", "-j", "2", "-T", "10", "-M", mode];
        // pgbench -T 10 ends once every client's transaction does: one
        // still running long after says where the clients are.
        let bench = pgbench_at(proxy.addr(), user, &args);
        let Ok(run) = tokio::time::timeout(Duration::from_secs(90), bench).await else {
            let (admin, _) = connect_admin(&proxy).await;
            let state = where_clients_are(&admin, user).await;
            panic!("pgbench -M {mode} -T 10 still runs after 90 s\n{state}");
        };
        stop.store(true, Ordering::Relaxed);
        sampler.await.unwrap();
        let stdout = String::from_utf8_lossy(&run.stdout);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            run.status.success(),
            "pgbench -M {mode} failed:\n{stdout}\n{stderr}"
        );
        let processed = pgbench_number(&stdout, "number of transactions actually processed")
            .unwrap_or_else(|| panic!("no transaction count in:\n{stdout}"));
        assert!(processed > 0, "{stdout}");
        // pgbench 15+ reports failures; older versions abort the client
        // instead, which the exit status above catches.
        if let Some(failed) = pgbench_number(&stdout, "number of failed transactions") {
            assert_eq!(failed, 0, "-M {mode}:\n{stdout}");
        }
        assert!(!stderr.contains("aborted"), "-M {mode}: {stderr}");
        assert!(samples.load(Ordering::Relaxed) >= 50, "sampled too rarely");
        let max = max_seen.load(Ordering::Relaxed);
        assert!(max <= 5, "-M {mode}: Postgres saw {max} backends of {user}");
        assert!(max >= 1);
    }
    // The pool of 5 is still all there is.
    assert!(backends_of_user(&direct, user).await <= 5);
}

/// Whether any row with `tag` is in `lost_rows`, seen directly.
async fn visible(direct: &tokio_postgres::Client, tag: &str) -> bool {
    let n: i64 = direct
        .query_one("select count(*) from lost_rows where tag = $1", &[&tag])
        .await
        .unwrap()
        .get(0);
    n > 0
}

async fn create_lost_rows() {
    let direct = connect_direct().await;
    direct
        .batch_execute(
            "create table if not exists lost_rows (tag text); grant all on lost_rows to public",
        )
        .await
        .ok();
}

/// The next client on a pool of one: it gets a server at once, and that
/// server has no transaction open.
async fn assert_next_client_is_clean(proxy: &pgharbor::Proxy, db: &str, user: &str) {
    let c = tokio::time::timeout(Duration::from_secs(5), async {
        let c = connect_dsn(&dsn_as(proxy, user, db)).await;
        let fresh = simple_value(&c, "select now() = statement_timestamp()").await;
        let xid = simple_value(&c, "select txid_current_if_assigned()").await;
        (c, fresh, xid)
    })
    .await
    .expect("the next client waited for the server");
    assert_eq!(
        c.1.as_deref(),
        Some("t"),
        "the server was left in a transaction"
    );
    assert_eq!(c.2, None, "the server holds a transaction id");
}

async fn assert_not_idle_in_transaction(direct: &tokio_postgres::Client, pid: i32) {
    let ok = eventually(Duration::from_secs(5), || async {
        !matches!(backend_state(direct, pid).await.as_deref(), Some(s) if s.starts_with("idle in transaction"))
    })
    .await;
    assert!(ok, "server {pid} was left idle in transaction");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_drops_its_socket_mid_transaction_leaves_nothing_behind() {
    create_lost_rows().await;
    let user = "dropper";
    let proxy = start_proxy_with(&config_text_for_user("transaction", 1, "", user)).await;
    let direct = connect_direct().await;
    let db = user;
    for (i, how) in ["drop the client", "abort the connection task"]
        .into_iter()
        .enumerate()
    {
        let tag = format!("dropped-{i}");
        let (client, conn) =
            tokio_postgres::connect(&dsn_as(&proxy, user, db), tokio_postgres::NoTls)
                .await
                .unwrap();
        let conn_task = tokio::spawn(conn);
        client
            .simple_query(&format!("BEGIN; INSERT INTO lost_rows VALUES ('{tag}')"))
            .await
            .unwrap();
        let pid: i32 = simple_value(&client, "select pg_backend_pid()")
            .await
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            backend_state(&direct, pid).await.as_deref(),
            Some("idle in transaction")
        );
        if i == 0 {
            drop(client);
            let _ = conn_task.await;
        } else {
            conn_task.abort();
            let _ = conn_task.await;
            drop(client);
        }
        assert_not_idle_in_transaction(&direct, pid).await;
        assert!(
            !visible(&direct, &tag).await,
            "{how}: the row was committed"
        );
        assert_next_client_is_clean(&proxy, db, user).await;
        assert!(
            !visible(&direct, &tag).await,
            "{how}: the row was committed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_killed_mid_query_is_cancelled_and_rolled_back() {
    create_lost_rows().await;
    let user = "killed";
    let proxy = start_proxy_with(&config_text_for_user("transaction", 1, "", user)).await;
    let direct = connect_direct().await;
    let db = user;
    let a = proxy.addr();

    // Two ways to die mid-query: a raw socket closed while the query runs,
    // and psql killed with SIGKILL.
    for how in ["raw socket closed", "psql SIGKILL"] {
        let tag = format!("killed-{}", how.replace(' ', "-"));
        let sql =
            format!("begin; insert into lost_rows values ('{tag}'); select pg_sleep(10); commit");
        let mut raw_client = None;
        let mut child = None;
        if how == "raw socket closed" {
            let mut c = RawClient::login(a, user, PASSWORD, db).await;
            c.send(&raw::query(&sql)).await;
            raw_client = Some(c);
        } else {
            child = Some(
                std::process::Command::new(bin("psql"))
                    .args(["-X", "-h", &a.ip().to_string(), "-p", &a.port().to_string()])
                    .args(["-U", user, "-d", db, "-c", &sql])
                    .env("PGPASSWORD", PASSWORD)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn psql"),
            );
        }
        // Wait until the sleep runs on the server.
        let mut pid = None;
        for _ in 0..200 {
            let row = direct
                .query_opt(
                    "select pid from pg_stat_activity where usename = $1 and query like '%pg_sleep(10)%' and state = 'active'",
                    &[&user],
                )
                .await
                .unwrap();
            if let Some(r) = row {
                pid = Some(r.get::<_, i32>(0));
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let running = pid.is_some();
        let pid = pid.unwrap_or_default();
        assert!(running, "{how}: the query never started");
        drop(raw_client);
        if let Some(mut ch) = child {
            ch.kill().expect("SIGKILL psql");
            ch.wait().unwrap();
        }
        // Well before the sleep would end, the server is free and clean.
        let t0 = std::time::Instant::now();
        assert_not_idle_in_transaction(&direct, pid).await;
        assert_next_client_is_clean(&proxy, db, user).await;
        assert!(
            t0.elapsed() < Duration::from_secs(8),
            "{how}: the query was not cancelled"
        );
        assert!(
            !visible(&direct, &tag).await,
            "{how}: the row was committed"
        );
        let state = backend_state(&direct, pid).await;
        assert!(
            !matches!(state.as_deref(), Some("active")),
            "{how}: server still busy: {state:?}"
        );
    }
    // Long after the sleep would have ended, still nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for tag in ["killed-raw-socket-closed", "killed-psql-SIGKILL"] {
        assert!(!visible(&direct, tag).await, "{tag}: the row was committed");
    }
}

/// 10 MB of COPY text with every row distinct, in the form Postgres writes
/// it back.
fn copy_payload() -> Vec<u8> {
    let mut out = Vec::with_capacity(10 * 1024 * 1024 + 200);
    let mut i: u64 = 0;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while out.len() < 10 * 1024 * 1024 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let payload: String = (0..6)
            .map(|k| format!("{:016x}", x.rotate_left(k * 9)))
            .collect();
        out.extend_from_slice(format!("{i}\t{payload}\n").as_bytes());
        i += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out_of_10_mb_is_byte_identical() {
    let data = copy_payload();
    let proxy = start_proxy("transaction", 2).await;

    // tokio-postgres copy_in / copy_out (they prepare their statement, so
    // they run on the session-mode pool).
    let c = connect(&proxy, "app_session").await;
    c.batch_execute("drop table if exists copy_tp; create table copy_tp (id bigint, payload text)")
        .await
        .unwrap();
    let sink = c.copy_in("COPY copy_tp FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    for chunk in data.chunks(64 * 1024) {
        sink.send(bytes::Bytes::copy_from_slice(chunk))
            .await
            .unwrap();
    }
    let n = sink.finish().await.unwrap();
    assert_eq!(n as usize, data.iter().filter(|&&b| b == b'\n').count());
    let stream = c
        .copy_out("COPY (select * from copy_tp order by id) TO STDOUT")
        .await
        .unwrap();
    futures_util::pin_mut!(stream);
    let mut back = Vec::with_capacity(data.len());
    while let Some(chunk) = stream.next().await {
        back.extend_from_slice(&chunk.unwrap());
    }
    assert!(back == data, "tokio-postgres COPY round trip differs");

    // The same in transaction mode with the simple protocol (what psql
    // sends), split into odd-sized CopyData messages.
    let a = proxy.addr();
    let mut r = RawClient::login(a, USER, PASSWORD, "app").await;
    r.send(&raw::query(
        "drop table if exists copy_raw; create table copy_raw (id bigint, payload text)",
    ))
    .await;
    r.until_ready().await;
    r.send(&raw::query("COPY copy_raw FROM STDIN")).await;
    let m = r.recv_within(Duration::from_secs(10)).await.unwrap();
    assert_eq!(m.tag, b'G', "CopyInResponse expected: {m:?}");
    for chunk in data.chunks(100_003) {
        r.send(&raw::copy_data(chunk)).await;
    }
    r.send(&raw::copy_done()).await;
    let msgs = r.until_ready().await;
    assert!(msgs.iter().all(|m| m.tag != b'E'), "{msgs:?}");
    assert_eq!(raw::status(&msgs), Some(b'I'));
    r.send(&raw::query(
        "COPY (select * from copy_raw order by id) TO STDOUT",
    ))
    .await;
    let msgs = r.until_ready().await;
    let back: Vec<u8> = msgs
        .iter()
        .filter(|m| m.tag == b'd')
        .flat_map(|m| m.body.iter().copied())
        .collect();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "raw COPY round trip differs");

    // psql \copy through the transaction pool.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("in.tsv");
    let dst = dir.path().join("out.tsv");
    std::fs::write(&src, &data).unwrap();
    let sql = format!(
        "drop table if exists copy_psql; create table copy_psql (id bigint, payload text);
\\copy copy_psql from '{}'
\\copy (select * from copy_psql order by id) to '{}'",
        src.display(),
        dst.display()
    );
    let script = dir.path().join("copy.sql");
    std::fs::write(&script, sql).unwrap();
    let mut psql = std::process::Command::new(bin("psql"));
    psql.args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", &a.ip().to_string(), "-p", &a.port().to_string()])
        .args(["-U", USER, "-d", "app", "-f"])
        .arg(&script)
        .env("PGPASSWORD", PASSWORD);
    let out = output(psql).await;
    assert_succeeded(&out);
    assert!(
        std::fs::read(&dst).unwrap() == data,
        "psql \\copy round trip differs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_error_in_a_transaction_keeps_the_pin_until_rollback() {
    let user = "errpin";
    let proxy = start_proxy_with(&config_text_for_user("transaction", 1, "", user)).await;
    let a = proxy.addr();
    let mut r = RawClient::login(a, user, PASSWORD, user).await;
    r.send(&raw::query("begin; select pg_backend_pid()")).await;
    let msgs = r.until_ready().await;
    assert_eq!(raw::status(&msgs), Some(b'T'));
    let pid = raw::first_column(&msgs)[0].clone().unwrap();

    // An error through Parse/Bind/Execute/Sync: status E.
    let mut batch = raw::parse("select 1/0");
    batch.extend(raw::bind());
    batch.extend(raw::execute());
    batch.extend(raw::sync());
    r.send(&batch).await;
    let msgs = r.until_ready().await;
    let err = msgs.iter().find(|m| m.tag == b'E').expect("an error");
    assert_eq!(err.sqlstate().as_deref(), Some("22012"));
    assert_eq!(raw::status(&msgs), Some(b'E'));

    // Another client must wait: the server belongs to the failed transaction.
    let other = connect_dsn(&dsn_as(&proxy, user, user)).await;
    let waiting = tokio::spawn(async move {
        let v = simple_value(&other, "select pg_backend_pid()").await;
        (other, v)
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!waiting.is_finished(), "the pin was released on status E");

    // Still the same server, still aborted.
    r.send(&raw::query("select 1")).await;
    let msgs = r.until_ready().await;
    let err = msgs.iter().find(|m| m.tag == b'E').expect("still aborted");
    assert_eq!(err.sqlstate().as_deref(), Some("25P02"));
    assert_eq!(raw::status(&msgs), Some(b'E'));

    r.send(&raw::query("rollback")).await;
    let msgs = r.until_ready().await;
    assert_eq!(raw::status(&msgs), Some(b'I'));
    let (_other, v) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the server came back after ROLLBACK")
        .unwrap();
    assert_eq!(v.as_deref(), Some(pid.as_str()), "pool of one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_statement_simple_queries() {
    let proxy = start_proxy("transaction", 2).await;
    let setup = connect(&proxy, "app").await;
    setup
        .batch_execute("create table if not exists multi (client int, n int)")
        .await
        .unwrap();

    let mut tasks = Vec::new();
    for client in 0..10i32 {
        let dsn = dsn(&proxy, "app");
        tasks.push(tokio::spawn(async move {
            let c = connect_dsn(&dsn).await;
            // Several results from one Query.
            let msgs = c.simple_query("select 1; select 2; select 3").await.unwrap();
            let rows: Vec<_> = msgs
                .iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                    _ => None,
                })
                .collect();
            assert_eq!(rows, ["1", "2", "3"]);
            // A whole transaction in one Query.
            c.simple_query(&format!(
                "begin; insert into multi values ({client}, 1); insert into multi values ({client}, 2); commit"
            ))
            .await
            .unwrap();
            // A Query that leaves a transaction open keeps its server for the
            // next Query, while nine other clients want one of two servers.
            let pid = simple_value(
                &c,
                &format!("begin; insert into multi values ({client}, 3); select pg_backend_pid()"),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            let again = simple_value(
                &c,
                &format!("select pg_backend_pid() from multi where client = {client} and n = 3"),
            )
            .await;
            assert_eq!(pid, again, "the open transaction moved to another server");
            c.simple_query("commit").await.unwrap();
            // An error in the middle ends the rest of the Query and rolls
            // back its implicit transaction.
            let e = c
                .simple_query(&format!(
                    "insert into multi values ({client}, 4); select 1/0; insert into multi values ({client}, 5)"
                ))
                .await
                .unwrap_err();
            assert_eq!(sqlstate(&e).as_deref(), Some("22012"));
            let n = simple_value(&c, &format!("select count(*) from multi where client = {client}"))
                .await;
            assert_eq!(n.as_deref(), Some("3"));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_without_sync_gets_answers_and_keeps_the_pin() {
    let user = "flusher";
    let proxy = start_proxy_with(&config_text_for_user("transaction", 1, "", user)).await;
    let a = proxy.addr();
    let mut r = RawClient::login(a, user, PASSWORD, user).await;
    let mut batch = raw::parse("select pg_backend_pid()");
    batch.extend(raw::bind());
    batch.extend(raw::describe_portal());
    batch.extend(raw::execute());
    batch.extend(raw::flush());
    r.send(&batch).await;
    // ParseComplete, BindComplete, RowDescription, DataRow, CommandComplete —
    // and no ReadyForQuery, because no Sync was sent.
    let mut got = Vec::new();
    while got.len() < 5 {
        got.push(r.recv_within(Duration::from_secs(5)).await.expect("answer"));
    }
    let tags: Vec<char> = got.iter().map(|m| m.tag as char).collect();
    assert_eq!(tags, ['1', '2', 'T', 'D', 'C']);
    let pid = raw::first_column(&got)[0].clone().unwrap();

    // Until Sync, the server stays with this client.
    let other = connect_dsn(&dsn_as(&proxy, user, user)).await;
    let waiting = tokio::spawn(async move {
        let v = simple_value(&other, "select pg_backend_pid()").await;
        (other, v)
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!waiting.is_finished(), "the pin was released before Sync");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), r.recv())
            .await
            .is_err(),
        "nothing more until Sync"
    );

    // More work in the same unsynced run lands on the same server.
    let mut batch = raw::parse("select pg_backend_pid()");
    batch.extend(raw::bind());
    batch.extend(raw::execute());
    batch.extend(raw::sync());
    r.send(&batch).await;
    let msgs = r.until_ready().await;
    assert_eq!(raw::first_column(&msgs), [Some(pid.clone())]);
    assert_eq!(raw::status(&msgs), Some(b'I'));
    let (_other, v) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the server came back after Sync")
        .unwrap();
    assert_eq!(v, Some(pid));
}

/// The value `SHOW name` gives on `client`.
async fn show(client: &tokio_postgres::Client, name: &str) -> Option<String> {
    simple_value(client, &format!("SHOW {name}")).await
}

#[tokio::test]
async fn reset_all_restores_the_clients_startup_settings_as_on_postgres() {
    let proxy = start_proxy("transaction", 1).await;
    let direct = format!(
        "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname=app \
         options='-c statement_timeout=7s'",
        pg().port()
    );
    let pooled = format!(
        "{} options='-c statement_timeout=7s'",
        dsn(&proxy, "app_tx")
    );
    let mut seen = Vec::new();
    for dsn in [direct, pooled] {
        let c = connect_dsn(&dsn).await;
        c.batch_execute("SET DateStyle = 'German'").await.unwrap();
        let before = (
            show(&c, "statement_timeout").await,
            show(&c, "DateStyle").await,
        );
        // asyncpg's release query: it must not pin the client either.
        c.batch_execute("SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;")
            .await
            .unwrap();
        let after = (
            show(&c, "statement_timeout").await,
            show(&c, "DateStyle").await,
        );
        seen.push((before, after));
    }
    assert_eq!(
        seen[0].1,
        (Some("7s".into()), Some("ISO, MDY".into())),
        "postgres: {seen:?}"
    );
    assert_eq!(seen[1], seen[0], "pgharbor answers as postgres does");
    let pins = proxy.state().metrics().session_pins.get();
    assert_eq!(pins, 0, "RESET ALL does not pin");
}

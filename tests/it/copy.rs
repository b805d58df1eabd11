//! COPY through pgharbor answers as Postgres does: COPY FROM STDIN in the
//! simple and the extended protocol, text and binary, CopyFail, an error in
//! the middle of the data, Sync and Flush sent during the COPY, COPY TO
//! STDOUT. Each test runs the same steps on Postgres directly and compares
//! what the client received: in transaction mode over one server shared by
//! several clients (a server released too early hands a ReadyForQuery to
//! the next client; one never released stalls them), and in session mode.

use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use crate::support::raw::{self, Msg, RawClient};
use crate::support::*;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

/// Clients sharing the one server in transaction mode.
const CLIENTS: usize = 3;

/// A whole test's bound: a server never released stalls the others.
const LIMIT: Duration = Duration::from_secs(60);

/// Creates table `name` (id int, note text), empty, owned by the test user.
async fn fresh_table(name: &str) {
    let direct = connect_direct().await;
    direct
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {name}; CREATE TABLE {name} (id int, note text); ALTER TABLE {name} OWNER TO {USER}"
        ))
        .await
        .unwrap();
}

fn outcome<T: std::fmt::Debug>(r: Result<T, tokio_postgres::Error>) -> String {
    match r {
        Ok(v) => format!("ok {v:?}"),
        Err(e) => format!("error {:?}", sqlstate(&e)),
    }
}

/// tokio-postgres's `copy_in` (text), binary copy, a `copy_in` dropped
/// unfinished (CopyFail), a bad row, and `copy_out`; what each returned.
async fn driver_steps(c: &tokio_postgres::Client, table: &str) -> Vec<String> {
    let mut log = Vec::new();
    let sink = c
        .copy_in(&format!("COPY {table} (id, note) FROM STDIN"))
        .await
        .unwrap();
    let mut sink = pin!(sink);
    for i in 0..100 {
        sink.send(Bytes::from(format!("{i}\tn{i}\n")))
            .await
            .unwrap();
    }
    log.push(outcome(sink.as_mut().finish().await));

    let sink = c
        .copy_in::<_, Bytes>(&format!("COPY {table} (id, note) FROM STDIN BINARY"))
        .await
        .unwrap();
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &[Type::INT4, Type::TEXT]));
    for i in 100..150 {
        writer
            .as_mut()
            .write(&[&i, &format!("b{i}")])
            .await
            .unwrap();
    }
    log.push(outcome(writer.as_mut().finish().await));

    {
        let sink = c
            .copy_in(&format!("COPY {table} (id, note) FROM STDIN"))
            .await
            .unwrap();
        let mut sink = Box::pin(sink);
        sink.send(Bytes::from_static(b"999\tdropped\n"))
            .await
            .unwrap();
        // Dropped without finish: CopyFail.
    }

    let sink = c
        .copy_in(&format!("COPY {table} (id, note) FROM STDIN"))
        .await
        .unwrap();
    let mut sink = pin!(sink);
    let _ = sink.send(Bytes::from_static(b"1\tgood\n")).await;
    let _ = sink.send(Bytes::from_static(b"not a number\tbad\n")).await;
    let _ = sink.send(Bytes::from_static(b"2\tlate\n")).await;
    log.push(outcome(sink.as_mut().finish().await));

    let out = c
        .copy_out(&format!(
            "COPY (SELECT id, note FROM {table} ORDER BY id) TO STDOUT"
        ))
        .await
        .unwrap();
    let chunks: Vec<_> = out.collect().await;
    let text: Result<Vec<Bytes>, _> = chunks.into_iter().collect();
    let text = text.map(|v| v.concat());
    log.push(outcome(
        text.map(|t| String::from_utf8_lossy(&t).into_owned()),
    ));
    let row = c
        .query_one(&format!("SELECT count(*), sum(id) FROM {table}"), &[])
        .await;
    log.push(outcome(
        row.map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1))),
    ));
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_copies_give_what_postgres_gives_over_one_shared_server() {
    fresh_table("copy_drv_direct").await;
    let direct = connect_dsn(&direct_dsn()).await;
    let want = driver_steps(&direct, "copy_drv_direct").await;

    let proxy = start_proxy("transaction", 1).await;
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let table = format!("copy_drv_tx_{i}");
        fresh_table(&table).await;
        let dsn = dsn(&proxy, "app");
        tasks.push(tokio::spawn(async move {
            let c = connect_dsn(&dsn).await;
            driver_steps(&c, &table).await
        }));
    }
    for t in tasks {
        let got = tokio::time::timeout(LIMIT, t)
            .await
            .expect("every client done in time")
            .unwrap();
        assert_eq!(got, want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_copies_give_what_postgres_gives_in_session_mode() {
    fresh_table("copy_drv_direct_s").await;
    let direct = connect_dsn(&direct_dsn()).await;
    let want = driver_steps(&direct, "copy_drv_direct_s").await;

    let proxy = start_proxy("session", 1).await;
    fresh_table("copy_drv_session").await;
    let c = connect(&proxy, "app").await;
    let pid = simple_value(&c, "SELECT pg_backend_pid()").await;
    let got = tokio::time::timeout(LIMIT, driver_steps(&c, "copy_drv_session"))
        .await
        .unwrap();
    assert_eq!(got, want);
    drop(c);
    // The session ended with nothing owed: its server was reset and goes
    // to the next client, not closed as if cut off mid-COPY.
    let next = connect(&proxy, "app").await;
    assert_eq!(simple_value(&next, "SELECT pg_backend_pid()").await, pid);
}

/// One step of a raw exchange.
enum Step {
    Send(Vec<u8>),
    /// Read until a message with this tag has come.
    Until(u8),
}

use Step::{Send, Until};

/// What the client saw of a message: its tag, and for errors the
/// SQLSTATE, for CommandComplete the tag, for ReadyForQuery the status,
/// for DataRow and CopyData the text.
fn seen(m: &Msg) -> String {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let tag = m.tag as char;
    match m.tag {
        b'E' | b'N' => format!("{tag}:{}", m.sqlstate().unwrap_or_default()),
        b'C' => format!(
            "C:{}",
            text(m.body.split(|&b| b == 0).next().unwrap_or(&[]))
        ),
        b'Z' => format!("Z:{}", m.body[0] as char),
        b'D' => format!("D:{:?}", raw::first_column(std::slice::from_ref(m))),
        b'd' => format!("d:{}", text(&m.body)),
        _ => tag.to_string(),
    }
}

/// Runs `steps` as user `app` against `addr`, then a marker query, and
/// returns everything received (ParameterStatus aside).
async fn exchange(addr: SocketAddr, steps: &[Step]) -> Vec<String> {
    let mut c = RawClient::login(addr, USER, PASSWORD, "app").await;
    let mut got = Vec::new();
    let recv = |m: Option<Msg>, got: &mut Vec<String>| {
        let m = m.unwrap_or_else(|| panic!("connection closed; got {got:?}"));
        let tag = m.tag;
        if tag != b'S' {
            got.push(seen(&m));
        }
        tag
    };
    for step in steps {
        match step {
            Send(bytes) => c.send(bytes).await,
            Until(tag) => while recv(c.recv_within(LIMIT).await, &mut got) != *tag {},
        }
    }
    c.send(&raw::query("SELECT 'end of steps'")).await;
    let marker = "D:[Some(\"end of steps\")]";
    while got.last().map(String::as_str) != Some(marker) {
        recv(c.recv_within(LIMIT).await, &mut got);
    }
    recv(c.recv_within(LIMIT).await, &mut got);
    got
}

fn copy_fail() -> Vec<u8> {
    raw::msg(b'f', b"stop\0")
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// The scenarios, for table `t`.
fn scenarios(t: &str) -> Vec<(&'static str, Vec<Step>)> {
    let copy = format!("COPY {t} (id, note) FROM STDIN");
    let row = |i: u32| raw::copy_data(format!("{i}\tr{i}\n").as_bytes());
    let bad = raw::copy_data(b"oops\tbad\n");
    let prepare = cat(&[
        raw::parse_named("s0", &copy, &[]),
        raw::statement_target(b'D', "s0"),
        raw::sync(),
    ]);
    let run = cat(&[raw::bind_named("s0", &[]), raw::execute(), raw::sync()]);
    let close = cat(&[raw::statement_target(b'C', "s0"), raw::sync()]);
    vec![
        (
            "tokio-postgres's copy_in",
            vec![
                Send(prepare.clone()),
                Until(b'Z'),
                Send(run.clone()),
                Until(b'G'),
                Send(cat(&[row(1), row(2), raw::copy_done(), raw::sync()])),
                Send(close.clone()),
            ],
        ),
        (
            "the same in one write",
            vec![Send(cat(&[
                prepare.clone(),
                run.clone(),
                row(3),
                raw::copy_done(),
                raw::sync(),
                close.clone(),
            ]))],
        ),
        (
            "Sync and Flush during copy-in",
            vec![
                Send(prepare.clone()),
                Until(b'Z'),
                Send(cat(&[run.clone(), raw::flush()])),
                Until(b'G'),
                Send(cat(&[row(4), raw::sync(), raw::flush(), row(5)])),
                Send(cat(&[raw::sync(), raw::copy_done(), raw::sync()])),
                Send(close.clone()),
            ],
        ),
        (
            "a bad row in the extended protocol",
            vec![
                Send(cat(&[prepare.clone(), run.clone()])),
                Until(b'G'),
                Send(cat(&[row(6), bad.clone()])),
                Until(b'E'),
                Send(cat(&[row(7), raw::copy_done(), raw::sync()])),
                Send(close.clone()),
            ],
        ),
        (
            "CopyFail in the extended protocol",
            vec![
                Send(cat(&[prepare.clone(), run.clone()])),
                Until(b'G'),
                Send(cat(&[row(8), copy_fail(), raw::sync()])),
                Send(close),
            ],
        ),
        (
            "a simple-protocol COPY",
            vec![
                Send(raw::query(&copy)),
                Until(b'G'),
                Send(cat(&[row(9), raw::copy_done()])),
            ],
        ),
        (
            "a simple-protocol COPY in one write, with statements after it",
            vec![Send(cat(&[
                raw::query(&format!("{copy}; SELECT 2")),
                row(10),
                raw::copy_done(),
                raw::query("SELECT 3"),
            ]))],
        ),
        (
            "Sync during a simple-protocol COPY",
            vec![
                Send(raw::query(&copy)),
                Until(b'G'),
                Send(cat(&[raw::sync(), row(11), raw::flush(), raw::copy_done()])),
            ],
        ),
        (
            "CopyFail in the simple protocol",
            vec![
                Send(raw::query(&copy)),
                Until(b'G'),
                Send(cat(&[row(12), copy_fail()])),
            ],
        ),
        (
            "a bad row in the simple protocol, data sent after the error",
            vec![
                Send(raw::query(&copy)),
                Until(b'G'),
                Send(bad),
                Until(b'Z'),
                Send(cat(&[row(13), raw::copy_done()])),
            ],
        ),
        (
            "COPY TO STDOUT in the extended protocol",
            vec![Send(cat(&[
                raw::parse(&format!("COPY (SELECT id FROM {t} ORDER BY id) TO STDOUT")),
                raw::bind(),
                raw::execute(),
                raw::sync(),
            ]))],
        ),
    ]
}

/// Every scenario's messages on Postgres directly, into table `t`.
async fn direct_exchanges(t: &str) -> Vec<Vec<String>> {
    fresh_table(t).await;
    let mut all = Vec::new();
    for (_, steps) in scenarios(t) {
        all.push(exchange(direct_addr(), &steps).await);
    }
    all
}

/// Runs every scenario through `proxy` into table `t`, comparing each with
/// `want`.
async fn check_exchanges(addr: SocketAddr, t: String, want: Vec<Vec<String>>) {
    fresh_table(&t).await;
    for ((name, steps), want) in scenarios(&t).into_iter().zip(want) {
        let got = exchange(addr, &steps).await;
        assert_eq!(got, want, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_copy_exchanges_match_postgres_over_one_shared_server() {
    let want = direct_exchanges("copy_raw_direct").await;
    let proxy = start_proxy("transaction", 1).await;
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let t = format!("copy_raw_tx_{i}");
        tasks.push(tokio::spawn(check_exchanges(proxy.addr(), t, want.clone())));
    }
    for t in tasks {
        tokio::time::timeout(LIMIT, t)
            .await
            .expect("every client done in time")
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_copy_exchanges_match_postgres_in_session_mode() {
    let want = direct_exchanges("copy_raw_direct_s").await;
    let proxy = start_proxy("session", 1).await;
    tokio::time::timeout(
        LIMIT,
        check_exchanges(proxy.addr(), "copy_raw_session".into(), want),
    )
    .await
    .expect("done in time");
}

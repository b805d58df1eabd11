//! Opens N authenticated connections and holds them idle, for the
//! benchmark's memory-per-idle-client figure.
//!
//! `idle_clients HOST PORT USER PASSWORD DBNAME N [CONCURRENCY] [HOLD_SECS] [QUERY]`
//!
//! With QUERY, each connection runs it once (simple protocol) before it is
//! held: an application's pooled connection is idle *after* use, which is
//! when a proxy must have let go of its buffers.
//!
//! Connects (startup + authentication, e.g. SCRAM) with at most CONCURRENCY
//! handshakes in flight, then prints one line
//! `READY ok=<n> failed=<n>` and holds every connection open until standard
//! input is closed or HOLD_SECS (default 600) pass, whichever comes first.
//! Progress and errors go to standard error.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 6 {
        eprintln!(
            "usage: idle_clients HOST PORT USER PASSWORD DBNAME N [CONCURRENCY] [HOLD_SECS] [QUERY]"
        );
        std::process::exit(2);
    }
    let n: usize = args[5].parse().expect("N must be a number");
    let concurrency: usize = args.get(6).map_or(32, |s| s.parse().expect("CONCURRENCY"));
    let hold_secs: u64 = args.get(7).map_or(600, |s| s.parse().expect("HOLD_SECS"));
    let query: Option<Arc<str>> = args.get(8).map(|q| Arc::from(q.as_str()));
    let mut config = tokio_postgres::Config::new();
    config
        .host(&args[0])
        .port(args[1].parse().expect("PORT must be a number"))
        .user(&args[2])
        .password(&args[3])
        .dbname(&args[4])
        .connect_timeout(Duration::from_secs(30));
    let config = Arc::new(config);
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let config = config.clone();
        let query = query.clone();
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        tasks.push(tokio::spawn(async move {
            let r = config.connect(tokio_postgres::NoTls).await;
            let r = match r {
                Ok((client, connection)) => {
                    // The connection future drives the socket; keep it alive.
                    let conn = tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    match &query {
                        Some(q) => client
                            .simple_query(q)
                            .await
                            .map(|_| (client, conn))
                            .map_err(|e| e.to_string()),
                        None => Ok((client, conn)),
                    }
                }
                Err(e) => Err(e.to_string()),
            };
            drop(permit);
            r
        }));
    }
    let mut held = Vec::with_capacity(n);
    let mut failed = 0usize;
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok(Ok(c)) => held.push(c),
            Ok(Err(e)) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    if let Some(e) = first_error {
        eprintln!("idle_clients: {failed} connections failed; first error: {e}");
    }
    eprintln!(
        "idle_clients: {} connected in {:.1}s",
        held.len(),
        started.elapsed().as_secs_f64()
    );
    println!("READY ok={} failed={failed}", held.len());
    // Hold until stdin closes (the benchmark closes it) or the hold time ends.
    let wait_stdin = tokio::task::spawn_blocking(|| {
        let mut buf = [0u8; 64];
        let mut stdin = std::io::stdin();
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    });
    let _ = tokio::time::timeout(Duration::from_secs(hold_secs), wait_stdin).await;
    drop(held);
}

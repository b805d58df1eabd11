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
//!
//! With `IDLE_CLIENTS_TLS=1` in the environment every connection uses TLS
//! (the certificate is not checked: the benchmark's is self-signed) and,
//! where the server offers it, SCRAM-SHA-256-PLUS, as libpq does.

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
    if std::env::var_os("IDLE_CLIENTS_TLS").is_some_and(|v| v == "1") {
        config.ssl_mode(tokio_postgres::config::SslMode::Require);
    }
    let tls = (config.get_ssl_mode() == tokio_postgres::config::SslMode::Require)
        .then(tls::Tls::unverified);
    let config = Arc::new(config);
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let config = config.clone();
        let query = query.clone();
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        let tls = tls.clone();
        tasks.push(tokio::spawn(async move {
            let r = match tls {
                Some(tls) => config
                    .connect(tls)
                    .await
                    .map(|(client, connection)| (client, tokio::spawn(connection))),
                None => config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map(|(client, connection)| (client, tokio::spawn(connection))),
            };
            let r = match r {
                // The connection future drives the socket; its task keeps
                // it alive.
                Ok((client, conn)) => match &query {
                    Some(q) => client
                        .simple_query(q)
                        .await
                        .map(|_| (client, conn))
                        .map_err(|e| e.to_string()),
                    None => Ok((client, conn)),
                },
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

/// TLS for tokio-postgres with rustls: pgharbor's own connector for
/// `server_tls.mode = "require"` (encrypted, certificate not checked).
mod tls {
    use std::future::Future;
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

    #[derive(Clone)]
    pub struct Tls(tokio_rustls::TlsConnector);

    impl Tls {
        pub fn unverified() -> Tls {
            let mut config = pgharbor::config::Config::default();
            config.server_tls.mode = pgharbor::config::ServerTlsMode::Require;
            let settings = pgharbor::tls::TlsSettings::from_config(&config).expect("TLS connector");
            Tls(settings
                .server
                .connector
                .clone()
                .expect("require mode has a connector"))
        }
    }

    impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> MakeTlsConnect<S> for Tls {
        type Stream = Stream<S>;
        type TlsConnect = Tls;
        type Error = io::Error;

        fn make_tls_connect(&mut self, _domain: &str) -> io::Result<Tls> {
            Ok(self.clone())
        }
    }

    impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> TlsConnect<S> for Tls {
        type Stream = Stream<S>;
        type Error = io::Error;
        type Future = Pin<Box<dyn Future<Output = io::Result<Stream<S>>> + Send>>;

        fn connect(self, stream: S) -> Self::Future {
            Box::pin(async move {
                let name = rustls::pki_types::ServerName::try_from("localhost")
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                Ok(Stream(self.0.connect(name, stream).await?))
            })
        }
    }

    pub struct Stream<S>(tokio_rustls::client::TlsStream<S>);

    impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for Stream<S> {
        fn channel_binding(&self) -> ChannelBinding {
            let hash = self
                .0
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|cert| pgharbor::tls::end_point_hash(cert));
            match hash {
                Some(h) => ChannelBinding::tls_server_end_point(h),
                None => ChannelBinding::none(),
            }
        }
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
        }
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_flush(cx)
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
        }
    }
}

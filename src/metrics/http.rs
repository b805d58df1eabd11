//! The HTTP endpoint (hyper): `GET /metrics`, `/healthz`, `/readyz`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::Metrics;
use crate::shutdown::Shutdown;

/// What the endpoint reads of the instance it reports on.
pub trait Instance: Send + Sync + 'static {
    fn metrics(&self) -> &Metrics;
    fn shutdown(&self) -> &Shutdown;
    /// Where `/readyz` probes: the configured databases, as configured now.
    fn databases(&self) -> Vec<Probe>;
}

/// A database `/readyz` connects to.
pub struct Probe {
    pub name: String,
    /// The database's servers (host, port): it is ready when one of them
    /// accepts a connection.
    pub servers: Vec<(String, u16)>,
}

/// How long one HTTP connection may take to send its request headers: slow
/// scrapers cannot hold connections forever.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many HTTP connections at once.
const MAX_HTTP_CONNECTIONS: usize = 64;

/// Binds `addr` (`[metrics] listen_addr`), unless it is empty.
pub async fn bind(addr: &str) -> Result<Option<TcpListener>, (String, std::io::Error)> {
    if addr.is_empty() {
        return Ok(None);
    }
    let listener = TcpListener::bind(addr).await;
    listener.map(Some).map_err(|e| (addr.to_string(), e))
}

/// Serves the endpoint on `listener` in the background.
pub fn start<I: Instance>(listener: TcpListener, state: &Arc<I>) -> std::io::Result<SocketAddr> {
    let local = listener.local_addr()?;
    let st = state.clone();
    tokio::spawn(async move {
        let limit = Arc::new(tokio::sync::Semaphore::new(MAX_HTTP_CONNECTIONS));
        loop {
            let accepted = tokio::select! {
                _ = st.shutdown().cancelled() => return,
                r = listener.accept() => r,
            };
            let Ok((stream, _)) = accepted else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                continue; // dropped: too many concurrent scrapers
            };
            let st = st.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(req, st.clone()));
                let conn = http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), svc);
                let _ = tokio::time::timeout(Duration::from_secs(300), conn).await;
                drop(permit);
            });
        }
    });
    Ok(local)
}

fn text(status: StatusCode, body: impl Into<Bytes>, content_type: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

async fn handle<I: Instance>(
    req: Request<Incoming>,
    state: Arc<I>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET\n",
            "text/plain",
        ));
    }
    let resp = match req.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            state.metrics().render(),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        "/healthz" => text(StatusCode::OK, "ok\n", "text/plain"),
        "/readyz" => readyz(&state).await,
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n",
            "text/plain",
        ),
    };
    Ok(resp)
}

/// Whether one of `db`'s servers accepts a TCP connection; if none does,
/// what each answered.
async fn probe_servers(db: &Probe) -> Result<(), String> {
    let mut failures = Vec::new();
    for (host, port) in &db.servers {
        let connect = tokio::net::TcpStream::connect((host.as_str(), *port));
        match tokio::time::timeout(Duration::from_secs(2), connect).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => failures.push(format!("{host}:{port}: {e}")),
            Err(_) => failures.push(format!("{host}:{port}: connect timed out")),
        }
    }
    Err(failures.join("; "))
}

/// Ready when every configured database accepts TCP connections (one of
/// its servers, for a database with several) and is not shutting down.
async fn readyz<I: Instance>(state: &Arc<I>) -> Response<Full<Bytes>> {
    if state.shutdown().is_cancelled() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down\n",
            "text/plain",
        );
    }
    let mut problems = Vec::new();
    for db in &state.databases() {
        if let Err(why) = probe_servers(db).await {
            problems.push(format!("database {}: {why}", db.name));
        }
    }
    if problems.is_empty() {
        text(StatusCode::OK, "ready\n", "text/plain")
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            problems.join("\n") + "\n",
            "text/plain",
        )
    }
}

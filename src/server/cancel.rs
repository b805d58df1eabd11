//! The outgoing cancel connection: a CancelRequest sent to a server or a
//! peer, confirmed when the receiver closes the connection. Toward a server
//! whose connection uses TLS, the request goes over TLS too (an SSLRequest
//! first, as libpq does): Postgres accepts a CancelRequest after it, the
//! key never crosses the network in clear, and a path that only lets TLS
//! through still carries it.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use postgres_protocol::message::frontend;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::{ServerKey, ServerTarget};

/// How long a forward may take (connect, send, wait for the close) before we
/// give up on it.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// How a cancel reaches a server whose connection uses TLS.
pub struct CancelTls {
    connector: TlsConnector,
    name: ServerName<'static>,
    /// `server_tls.mode` refuses plaintext: a server that now answers the
    /// SSLRequest with `N` is not sent the key in clear.
    required: bool,
}

impl CancelTls {
    /// The TLS of `target`'s connections to `host` (call for one that
    /// uses TLS).
    pub fn for_target(target: &ServerTarget, host: &str) -> Option<Arc<CancelTls>> {
        let connector = target.tls.connector.clone()?;
        let name = ServerName::try_from(host.to_owned()).ok()?;
        Some(Arc::new(CancelTls {
            connector,
            name,
            required: target.tls.requires_tls(),
        }))
    }
}

impl fmt::Debug for CancelTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelTls")
            .field("name", &self.name)
            .field("required", &self.required)
            .finish()
    }
}

/// Where a cancel for a server's current query goes.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    pub key: ServerKey,
    /// Set when the server connection uses TLS.
    pub tls: Option<Arc<CancelTls>>,
}

const CANCEL_REQUEST_CODE: i32 = 80_877_102;

/// Where a forward went wrong, which decides whether its signal may still
/// arrive later.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ForwardError {
    /// Nothing was sent.
    #[error("not sent: {0}")]
    NotSent(std::io::Error),
    /// The request may have arrived, but the receiver never confirmed it by
    /// closing the connection.
    #[error("not confirmed: {0}")]
    Unconfirmed(std::io::Error),
}

fn cancel_packet(pid: i32, secret: &[u8]) -> BytesMut {
    let mut b = BytesMut::with_capacity(12 + secret.len());
    b.put_i32(12 + secret.len() as i32);
    b.put_i32(CANCEL_REQUEST_CODE);
    b.put_i32(pid);
    b.put_slice(secret);
    b
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "cancel forward timed out")
}

/// Sends a CancelRequest to `addr` (a server or a peer), over TLS when
/// `tls` says so, and waits until the receiver closes the connection, which
/// Postgres does only after it has signalled the backend, and a peer only
/// after its own forward is done.
pub(crate) async fn send_cancel<A: ToSocketAddrs>(
    addr: A,
    pid: i32,
    secret: &[u8],
    tls: Option<&CancelTls>,
    deadline: Instant,
) -> Result<(), ForwardError> {
    let stream = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| ForwardError::NotSent(timed_out()))?
        .map_err(ForwardError::NotSent)?;
    let _ = stream.set_nodelay(true);
    let packet = cancel_packet(pid, secret);
    let confirm = async {
        match tls {
            None => deliver(stream, &packet).await,
            Some(tls) => deliver_over_tls(stream, tls, &packet).await,
        }
    };
    // A timeout may come after the request was written: unconfirmed.
    tokio::time::timeout_at(deadline, confirm)
        .await
        .map_err(|_| ForwardError::Unconfirmed(timed_out()))?
}

/// The SSLRequest exchange, then the request over TLS; in clear on the same
/// connection if the server declines TLS and the mode allows that.
async fn deliver_over_tls(
    mut tcp: TcpStream,
    tls: &CancelTls,
    packet: &[u8],
) -> Result<(), ForwardError> {
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    tcp.write_all(&request)
        .await
        .map_err(ForwardError::NotSent)?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer)
        .await
        .map_err(ForwardError::NotSent)?;
    match answer[0] {
        b'S' => {
            let stream = tls
                .connector
                .connect(tls.name.clone(), tcp)
                .await
                .map_err(ForwardError::NotSent)?;
            deliver(stream, packet).await
        }
        b'N' if !tls.required => deliver(tcp, packet).await,
        _ => Err(ForwardError::NotSent(io::Error::new(
            io::ErrorKind::InvalidData,
            "the server declined TLS for the cancel request, and server_tls.mode requires it",
        ))),
    }
}

/// Writes the request and waits for the receiver to close. Over TLS,
/// Postgres closes without a close_notify: that end counts as a close too.
async fn deliver<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    packet: &[u8],
) -> Result<(), ForwardError> {
    let sent = async {
        stream.write_all(packet).await?;
        stream.flush().await
    };
    sent.await.map_err(ForwardError::Unconfirmed)?;
    let mut sink = [0u8; 64];
    loop {
        match stream.read(&mut sink).await {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(ForwardError::Unconfirmed(e)),
        }
    }
}

/// Cancels whatever `target`'s backend is running (used when a client
/// vanished mid-query; the server is closed afterwards, so an unconfirmed
/// cancel is harmless).
pub async fn cancel_server(target: CancelTarget) {
    let deadline = Instant::now() + FORWARD_TIMEOUT;
    let key = target.key;
    let secret = key.secret.to_be_bytes();
    let sent = send_cancel(key.addr, key.pid, &secret, target.tls.as_deref(), deadline);
    if let Err(e) = sent.await {
        tracing::debug!(server = %key.addr, error = %e, "cancel of abandoned query failed");
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use tokio::io::AsyncReadExt;

    use crate::server::ServerKey;

    /// A plaintext server's key as a test names it.
    pub(crate) fn server_key(addr: std::net::SocketAddr) -> super::CancelTarget {
        super::CancelTarget {
            key: ServerKey {
                addr,
                pid: 4242,
                secret: 77,
            },
            tls: None,
        }
    }

    /// Accepts one connection, returns the packet it carried, closes.
    pub(crate) async fn one_packet(listener: tokio::net::TcpListener) -> Vec<u8> {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await.unwrap();
        let mut rest = vec![0u8; i32::from_be_bytes(len) as usize - 4];
        s.read_exact(&mut rest).await.unwrap();
        rest
    }
}

//! The outgoing cancel connection: a CancelRequest sent to a server or a
//! peer, confirmed when the receiver closes the connection.

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::time::Instant;

use super::FORWARD_TIMEOUT;
use crate::server::ServerKey;

const CANCEL_REQUEST_CODE: i32 = 80_877_102;

/// Where a forward went wrong, which decides whether its signal may still
/// arrive later.
#[derive(Debug, thiserror::Error)]
pub(super) enum ForwardError {
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

fn timed_out() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "cancel forward timed out")
}

/// Sends a CancelRequest to `addr` (a server or a peer) and waits until the
/// receiver closes the connection, which Postgres does only after it has
/// signalled the backend, and a peer only after its own forward is done.
pub(super) async fn send_cancel<A: ToSocketAddrs>(
    addr: A,
    pid: i32,
    secret: &[u8],
    deadline: Instant,
) -> Result<(), ForwardError> {
    let mut stream = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| ForwardError::NotSent(timed_out()))?
        .map_err(ForwardError::NotSent)?;
    let _ = stream.set_nodelay(true);
    let confirm = async {
        stream.write_all(&cancel_packet(pid, secret)).await?;
        let mut sink = [0u8; 64];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout_at(deadline, confirm)
        .await
        .map_err(|_| ForwardError::Unconfirmed(timed_out()))?
        .map_err(ForwardError::Unconfirmed)
}

/// Cancels whatever `key`'s backend is running (used when a client vanished
/// mid-query; the server is closed afterwards, so an unconfirmed cancel is
/// harmless).
pub async fn cancel_server(key: ServerKey) {
    let deadline = Instant::now() + FORWARD_TIMEOUT;
    if let Err(e) = send_cancel(key.addr, key.pid, &key.secret.to_be_bytes(), deadline).await {
        tracing::debug!(server = %key.addr, error = %e, "cancel of abandoned query failed");
    }
}

#[cfg(test)]
pub(super) mod tests {
    use tokio::io::AsyncReadExt;

    use crate::server::ServerKey;

    /// A server's key as a test names it.
    pub fn server_key(addr: std::net::SocketAddr) -> ServerKey {
        ServerKey {
            addr,
            pid: 4242,
            secret: 77,
        }
    }

    /// Accepts one connection, returns the packet it carried, closes.
    pub async fn one_packet(listener: tokio::net::TcpListener) -> Vec<u8> {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await.unwrap();
        let mut rest = vec![0u8; i32::from_be_bytes(len) as usize - 4];
        s.read_exact(&mut rest).await.unwrap();
        rest
    }
}

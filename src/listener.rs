//! The accept loop: takes connections until shutdown and hands each to its
//! own client task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::shutdown::Shutdown;

/// What the accept loop needs of the instance it accepts for.
pub(crate) trait Serve: Send + Sync + 'static {
    fn shutdown(&self) -> &Shutdown;
    /// Cancelled when this instance stops taking new connections (a
    /// draining `listen_reuseport` instance) before it shuts down.
    fn stop_accepting(&self) -> &Shutdown;
    /// Starts serving an accepted connection from `addr`, made to `local`
    /// when every connection of the listener is made to the same address.
    fn serve(self: Arc<Self>, stream: TcpStream, addr: SocketAddr, local: Option<SocketAddr>);
}

/// Connections waiting in the kernel for `accept`; bursts of thousands of
/// clients connecting at once are normal for a pooler.
const BACKLOG: u32 = 4096;

/// Binds with a deep backlog and SO_REUSEADDR (restarts do not wait out
/// TIME_WAIT); with `reuseport`, SO_REUSEPORT too, so that several
/// instances share the port and the kernel spreads connections over them.
pub(crate) fn bind(addr: &str, reuseport: bool) -> std::io::Result<TcpListener> {
    let addr: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if reuseport {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// The local address of every connection accepted on a listener bound to
/// `bound`, if they all share it. A connection accepted on a listener bound
/// to one address was made to that address, so asking the kernel for it
/// (getsockname) per connection, for SHOW CLIENTS, is needed only behind a
/// wildcard address.
fn fixed_local_addr(bound: std::net::SocketAddr) -> Option<std::net::SocketAddr> {
    (!bound.ip().is_unspecified()).then_some(bound)
}

pub(crate) async fn accept_loop<S: Serve>(listener: TcpListener, state: Arc<S>) {
    let mut backoff = Duration::from_millis(10);
    // Made once: a new one per connection would register with the
    // shutdown token and unregister again at every accept. It is polled
    // only when no connection is waiting (polled again, it takes the
    // token's lock); the flag, set before the token, ends the loop, also
    // during a burst of connections.
    let mut stopped = std::pin::pin!(state.shutdown().cancelled_owned());
    let mut closing = std::pin::pin!(state.stop_accepting().cancelled_owned());
    let local = listener.local_addr().ok().and_then(fixed_local_addr);
    while !state.shutdown().is_cancelled() && !state.stop_accepting().is_cancelled() {
        let accepted = tokio::select! {
            biased;
            r = listener.accept() => r,
            _ = &mut stopped => continue,
            _ = &mut closing => continue,
        };
        match accepted {
            Ok((stream, addr)) => {
                backoff = Duration::from_millis(10);
                state.clone().serve(stream, addr, local);
            }
            Err(e) => {
                // Out of file descriptors and the like: wait, then retry,
                // rather than spinning or dying.
                tracing::error!(error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    take_queued(&listener, local, &state);
    tracing::info!("stopped accepting connections");
}

/// Serves the connections the kernel already queued on the listener before
/// it is closed: closing resets them, and with SO_REUSEPORT they were
/// meant for this instance while another one goes on serving the port.
fn take_queued<S: Serve>(
    listener: &TcpListener,
    local: Option<std::net::SocketAddr>,
    state: &Arc<S>,
) {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    while let std::task::Poll::Ready(Ok((stream, addr))) = listener.poll_accept(&mut cx) {
        // The tracker is closed by now; the session still counts in it and
        // ends at its first safe point, as every session of a draining
        // instance does.
        state.clone().serve(stream, addr, local);
    }
}

#[cfg(test)]
mod tests {
    use super::fixed_local_addr;

    #[test]
    fn only_a_listener_on_one_address_knows_its_clients_local_address() {
        for bound in ["127.0.0.1:6432", "[::1]:6432", "10.1.2.3:5432"] {
            let bound = bound.parse().unwrap();
            assert_eq!(fixed_local_addr(bound), Some(bound));
        }
        for wildcard in ["0.0.0.0:6432", "[::]:6432"] {
            assert_eq!(fixed_local_addr(wildcard.parse().unwrap()), None);
        }
    }
}

//! One connection, to a client or to a server, in plaintext or TLS.
//!
//! The relay is built on readiness (wait until a socket is readable or
//! writable, then read or write without blocking) so that both directions
//! move together. [`Stream`] gives that same shape to TLS connections:
//! - readable: rustls holds decrypted bytes (or the peer's close), or the
//!   socket has bytes (which may be only part of a record: the read then
//!   finds nothing, and the wait starts again);
//! - writable: the socket takes bytes. rustls keeps encrypted bytes the
//!   socket did not take yet, so a caller also waits for writability while
//!   [`Stream::has_unsent`] says so, and the next write pushes them out.
//!
//! The non-blocking calls poll the TLS stream with a no-op waker: when the
//! socket would block, tokio clears its readiness, and the relay's next wait
//! registers the real waker on that same readiness, so no wakeup is lost.
//! The plaintext path is the relay's own, unchanged; its calls are
//! `#[inline(always)]` because left to the compiler some were not inlined,
//! and the dispatch then showed in the instructions per select-only
//! transaction (`bench/marginal.sh`).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsStream;

pub enum Stream {
    Plain(TcpStream),
    /// Boxed: rustls's state is large, and plaintext connections should
    /// not pay for it.
    Tls(Box<TlsStream<TcpStream>>),
}

/// Which of a relay's two sockets (the client's, the server's) have its
/// task's read waker registered from a pending poll, read from neither
/// since (`client/wait.rs`). Such a socket needs no new
/// registration: until it turns readable the waker stays in tokio's slot,
/// and when it does, tokio sets its readiness before it takes the waker. A
/// plain load of the readiness ([`Stream::read_ready_now`]) answers for
/// it, where a poll takes the slot's lock and the task's budget: without
/// this the relay polled each socket again at every wait, about seven
/// polls per statement where two register anything.
///
/// A read of a socket (or a new server) disarms it: a read that empties
/// the socket clears its readiness, and a waker taken before that is gone.
#[derive(Default)]
pub struct ArmedReads {
    pub client: bool,
    pub server: bool,
    /// The waker registered (its data and vtable addresses): another one
    /// (a poll from another context) disarms both.
    waker: (usize, usize),
}

impl ArmedReads {
    /// Disarms both when `waker` is not the one registered.
    pub fn check_waker(&mut self, waker: &Waker) {
        let id = (waker.data() as usize, waker.vtable() as *const _ as usize);
        if self.waker != id {
            *self = ArmedReads {
                client: false,
                server: false,
                waker: id,
            };
        }
    }
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.is_tls() { "tls" } else { "plain" };
        f.debug_struct("Stream")
            .field("kind", &kind)
            .field("peer", &self.tcp().peer_addr().ok())
            .finish()
    }
}

/// The TCP options a new connection gets from the config: `[proxy]`
/// client_tcp_* on accepted clients, `[pool]` server_tcp_* toward
/// Postgres. Set once, when the socket is made; none costs the relay
/// anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpOptions {
    /// SO_KEEPALIVE, with the kernel's timings (net.ipv4.tcp_keepalive_*).
    pub keepalive: bool,
    /// TCP_USER_TIMEOUT: how long sent data may stay unacknowledged before
    /// the kernel drops the connection; zero leaves the kernel's default.
    pub user_timeout: std::time::Duration,
}

/// Which side's keys a [`TcpOptions`] came from, for the warning that names
/// the key when the kernel refuses one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpSide {
    Client,
    Server,
}

impl TcpSide {
    fn keys(self) -> (&'static str, &'static str) {
        match self {
            TcpSide::Client => (
                "proxy.client_tcp_keepalive",
                "proxy.client_tcp_user_timeout",
            ),
            TcpSide::Server => ("pool.server_tcp_keepalive", "pool.server_tcp_user_timeout"),
        }
    }
}

impl TcpOptions {
    /// Sets the options on `tcp`. One the kernel refuses is logged at warn
    /// and left out: the connection goes on without it.
    pub fn apply(self, tcp: &TcpStream, side: TcpSide) {
        let socket = socket2::SockRef::from(tcp);
        let (keepalive_key, user_timeout_key) = side.keys();
        if self.keepalive {
            if let Err(e) = socket.set_keepalive(true) {
                tracing::warn!(key = keepalive_key, error = %e, "cannot set SO_KEEPALIVE; the connection goes on without it");
            }
        }
        if !self.user_timeout.is_zero() {
            #[cfg(target_os = "linux")]
            let set = socket.set_tcp_user_timeout(Some(self.user_timeout));
            #[cfg(not(target_os = "linux"))]
            let set: io::Result<()> = Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "TCP_USER_TIMEOUT exists only on Linux",
            ));
            if let Err(e) = set {
                tracing::warn!(key = user_timeout_key, error = %e, "cannot set TCP_USER_TIMEOUT; the connection goes on with the kernel's timeout");
            }
        }
    }
}

impl From<TcpStream> for Stream {
    fn from(s: TcpStream) -> Self {
        Stream::Plain(s)
    }
}

impl Stream {
    /// The socket underneath.
    #[inline(always)]
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// The TLS version and cipher suite, for the console's `tls` column
    /// (as PgBouncer shows it); empty for plaintext.
    pub fn tls_description(&self) -> String {
        let Stream::Tls(s) = self else {
            return String::new();
        };
        let state = s.get_ref().1;
        let version = match state.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "TLS",
        };
        // IANA's names (what OpenSSL, and so PgBouncer, show for TLS 1.3),
        // not rustls's `TLS13_` spelling.
        let suite = state
            .negotiated_cipher_suite()
            .and_then(|c| c.suite().as_str())
            .unwrap_or("unknown");
        let suite = suite
            .strip_prefix("TLS13_")
            .map_or(suite.to_string(), |rest| format!("TLS_{rest}"));
        format!("{version}/{suite}")
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().local_addr()
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().peer_addr()
    }

    /// The `tls-server-end-point` hash of the peer's certificate, for
    /// SCRAM-SHA-256-PLUS toward a server (see [`crate::tls::end_point_hash`]).
    pub fn peer_end_point(&self) -> Option<Vec<u8>> {
        let Stream::Tls(s) = self else {
            return None;
        };
        let certs = s.get_ref().1.peer_certificates()?;
        crate::tls::end_point_hash(certs.first()?)
    }

    /// Encrypted bytes rustls holds that the socket has not taken yet.
    #[inline(always)]
    pub fn has_unsent(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(s) => s.get_ref().1.wants_write(),
        }
    }

    /// Ready when a read would find bytes, the end of the stream or an
    /// error (or, with TLS, possibly only part of a record).
    #[inline(always)]
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Plain(s) => s.poll_read_ready(cx),
            Stream::Tls(s) => {
                let (tcp, state) = s.get_ref();
                // rustls wants no more input while it holds plaintext or
                // after the peer's close_notify: the next read returns it.
                if !state.wants_read() {
                    return Poll::Ready(Ok(()));
                }
                tcp.poll_read_ready(cx)
            }
        }
    }

    /// What [`Stream::poll_read_ready`] would say now, without registering
    /// a waker: `true` when it would be ready. A plain load of the
    /// socket's readiness, for a caller whose waker is still registered
    /// from an earlier pending poll (`client/wait.rs`).
    #[inline(always)]
    pub fn read_ready_now(&self) -> bool {
        match self {
            Stream::Plain(s) => readiness_set(s),
            Stream::Tls(s) => {
                let (tcp, state) = s.get_ref();
                !state.wants_read() || readiness_set(tcp)
            }
        }
    }

    /// Ready when the socket takes bytes.
    #[inline(always)]
    pub fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp().poll_write_ready(cx)
    }

    /// Reads what is available now into `buf`'s spare capacity (which the
    /// caller reserved). `Ok(false)`: end of stream.
    #[inline(always)]
    pub fn try_read_available(&mut self, buf: &mut BytesMut) -> io::Result<bool> {
        match self {
            Stream::Plain(s) => try_read_plain(s, buf),
            Stream::Tls(s) => try_read_tls(s, buf),
        }
    }

    /// Writes as much of `buf` as the connection takes now, dropping what
    /// was written from its front; with TLS, also pushes out encrypted
    /// bytes held from earlier writes.
    #[inline(always)]
    pub fn try_write_available(&mut self, buf: &mut BytesMut) -> io::Result<()> {
        match self {
            Stream::Plain(s) => {
                while !buf.is_empty() {
                    match s.try_write(buf) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        // Not `split_to`: the sent bytes are not wanted,
                        // and moving the start costs nothing where
                        // splitting takes a reference.
                        Ok(n) => buf.advance(n),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
            Stream::Tls(s) => try_write_tls(s, buf),
        }
    }

    /// A cheap look at an idle connection: `true` while nothing has
    /// arrived (a close, an unsolicited message). Anything that did arrive
    /// is consumed: the caller drops a connection found not idle.
    #[inline(always)]
    pub fn is_quiet(&mut self) -> bool {
        match self {
            Stream::Plain(s) => {
                let mut probe = [0u8; 1];
                matches!(s.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            Stream::Tls(s) => {
                if !s.get_ref().1.wants_read() {
                    return false;
                }
                let mut probe = [0u8; 1];
                let mut rb = ReadBuf::new(&mut probe);
                let mut cx = Context::from_waker(Waker::noop());
                Pin::new(&mut **s).poll_read(&mut cx, &mut rb).is_pending()
            }
        }
    }
}

/// Whether tokio holds read readiness for `stream`: `try_io` with an
/// operation that does nothing, which tokio runs only when it does.
#[inline(always)]
fn readiness_set(stream: &TcpStream) -> bool {
    // Err: the WouldBlock tokio gives without running the operation.
    stream.try_io(Interest::READABLE, || Ok(())).is_ok()
}

#[inline(always)]
fn try_read_plain(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<bool> {
    let spare = buf.capacity() - buf.len();
    let mut got = None;
    // A short read drained the socket, but tokio still counts it readable,
    // which would cost the next loop turn a read that only says WouldBlock.
    // Reporting WouldBlock from inside `try_io` clears the readiness as it
    // was *before* the read: data that arrives meanwhile bumps readiness
    // anew, so no wakeup is lost.
    let r = stream.try_io(Interest::READABLE, || {
        let n = stream.try_read_buf(buf)?;
        got = Some(n);
        if n > 0 && n < spare {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(())
        }
    });
    match (got, r) {
        (Some(0), _) => Ok(false),
        (Some(_), _) => Ok(true),
        (None, Err(e)) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
        (None, _) => Ok(true),
    }
}

fn try_read_tls(stream: &mut TlsStream<TcpStream>, buf: &mut BytesMut) -> io::Result<bool> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut read_any = false;
    // rustls hands out at most one record's plaintext per read.
    while buf.capacity() > buf.len() {
        let room = buf.capacity() - buf.len();
        let n = match Pin::new(&mut *stream).poll_fill_buf(&mut cx) {
            Poll::Ready(Ok(data)) => {
                let n = data.len().min(room);
                buf.extend_from_slice(&data[..n]);
                n
            }
            // Hand out what was read; the error comes back at the next read.
            Poll::Ready(Err(_)) if read_any => return Ok(true),
            // The peer closed the socket without a close_notify, as most
            // drivers do after Terminate. The protocol frames its own
            // messages, so a cut-off stream cannot pass for a whole one:
            // this is the end of the stream, as in plaintext.
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => return Ok(true),
        };
        if n == 0 {
            // End of stream; bytes read before it are handed out first,
            // and the next call sees the end again.
            return Ok(read_any);
        }
        Pin::new(&mut *stream).consume(n);
        read_any = true;
    }
    Ok(true)
}

fn try_write_tls(stream: &mut TlsStream<TcpStream>, buf: &mut BytesMut) -> io::Result<()> {
    let mut cx = Context::from_waker(Waker::noop());
    while !buf.is_empty() {
        match Pin::new(&mut *stream).poll_write(&mut cx, buf) {
            Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => buf.advance(n),
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => break,
        }
    }
    if stream.get_ref().1.wants_write() {
        if let Poll::Ready(Err(e)) = Pin::new(&mut *stream).poll_flush(&mut cx) {
            return Err(e);
        }
    }
    Ok(())
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

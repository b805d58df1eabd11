//! The start of a client connection: the first packet (SSLRequest,
//! GSSENCRequest, CancelRequest or StartupMessage), protocol version
//! negotiation, and password authentication.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::auth::client_cert::ClientCertificate;
use crate::net::Stream;
use crate::protocol::backend;
use crate::protocol::frame::ProtocolError;
use crate::protocol::sqlstate;
use crate::protocol::startup::{
    split_startup, Pair, StartupPacket, StartupParams, GSSENC_REQUEST, POSTGRES_ALPN, PROTOCOL_3_0,
    SSL_REQUEST,
};
use crate::protocol::PgError;
use crate::tls::ClientTls;

/// The first byte of a TLS handshake record. No startup packet begins with
/// it: their length field would say 369 MB.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What the first packet(s) asked for.
pub enum Handshake {
    Login(LoginRequest),
    Cancel { pid: i32, secret: Vec<u8> },
}

#[derive(Debug, Clone)]
pub struct LoginRequest {
    /// Every startup parameter but `user`, `database`, `replication` and
    /// the protocol options (`_pq_.*`), in the client's order.
    pub params: StartupParams,
    user: Pair,
    /// `None`: the database is named like the user.
    database: Option<Pair>,
    /// The client certificate presented over TLS, already checked against
    /// `client_tls.ca_file`.
    certificate: Option<Box<ClientCertificate>>,
}

impl LoginRequest {
    pub fn user(&self) -> &str {
        self.params.value(self.user)
    }

    pub fn database(&self) -> &str {
        self.params.value(self.database.unwrap_or(self.user))
    }

    /// The `application_name` the client gave, or "".
    pub fn application_name(&self) -> &str {
        self.params.get("application_name").unwrap_or("")
    }

    pub fn certificate(&self) -> Option<&ClientCertificate> {
        self.certificate.as_deref()
    }

    /// The login of a client handed over by a binary upgrade, as the
    /// console lists it: its user, database and application_name.
    pub(crate) fn handed_over(user: &str, database: &str, app: &str) -> Option<LoginRequest> {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[0; 4]);
        buf.extend_from_slice(&0x0003_0000u32.to_be_bytes());
        for (k, v) in [
            ("user", user),
            ("database", database),
            ("application_name", app),
        ] {
            for s in [k, v] {
                buf.extend_from_slice(s.as_bytes());
                buf.extend_from_slice(b"\0");
            }
        }
        buf.extend_from_slice(b"\0");
        let len = (buf.len() as u32).to_be_bytes();
        buf[..4].copy_from_slice(&len);
        let Ok(Some(StartupPacket::Startup { mut params, .. })) = split_startup(&mut buf) else {
            return None;
        };
        let (mut user, mut database) = (None, None);
        params.retain(|pair, k, _| {
            match k {
                "user" => user = Some(pair),
                "database" => database = Some(pair),
                _ => return true,
            }
            false
        });
        Some(LoginRequest {
            params,
            user: user?,
            database,
            certificate: None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Tell the client, then close.
    #[error("{0}")]
    Refuse(PgError),
    /// The client went away or broke framing; nothing useful to send.
    #[error("client closed the connection during startup")]
    Closed,
    /// A Terminate sent before any startup packet, as node-postgres's
    /// `connect(); end()` does: its bytes read as an impossible length, for
    /// which Postgres closes without a word, and so do we. (Other impossible
    /// lengths still get a FATAL 08P01, which tells a person what is wrong.)
    #[error("Terminate before the startup packet")]
    EarlyTerminate,
    #[error("i/o error during startup: {0}")]
    Io(#[from] std::io::Error),
    #[error("did not log in within proxy.client_login_timeout")]
    TimedOut,
    /// The TLS handshake failed; nothing can be said in the clear.
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
}

/// The length a startup packet would have that begins with a Terminate
/// (`X`, then the 4-byte length 4): `X\0\0\0` read as a big-endian i32.
const EARLY_TERMINATE_LENGTH: i64 = 0x5800_0000;

impl From<ProtocolError> for StartupError {
    fn from(e: ProtocolError) -> Self {
        match e {
            ProtocolError::BadStartupLength(EARLY_TERMINATE_LENGTH) => StartupError::EarlyTerminate,
            e => StartupError::Refuse(PgError::fatal(sqlstate::PROTOCOL_VIOLATION, e.to_string())),
        }
    }
}

pub(super) async fn fill<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<(), StartupError> {
    buf.reserve(512);
    if stream.read_buf(buf).await? == 0 {
        return Err(StartupError::Closed);
    }
    Ok(())
}

/// A startup refused: the error, and the connection to send it on when
/// there is one that can still carry it.
pub struct Refused {
    pub stream: Option<Stream>,
    pub error: StartupError,
}

impl Refused {
    fn on(stream: Stream, error: StartupError) -> Refused {
        Refused {
            stream: Some(stream),
            error,
        }
    }
}

/// What the first packet asked for, before any encryption.
enum FirstPacket {
    /// The TLS handshake comes next, with this acceptor: after an
    /// SSLRequest answered with `S`, or at once (`direct`: the client's
    /// first byte began a TLS record, as with Postgres 17's
    /// `sslnegotiation=direct`).
    Tls {
        acceptor: tokio_rustls::TlsAcceptor,
        direct: bool,
        /// Plaintext came with the SSLRequest: refused once the handshake
        /// is done, through TLS, as Postgres does.
        cleartext_after: bool,
    },
    Plain(Request),
}

/// A StartupMessage or CancelRequest, in plaintext or through TLS.
enum Request {
    Cancel { pid: i32, secret: Vec<u8> },
    Startup { version: u32, params: StartupParams },
}

/// Reads the first packets up to a StartupMessage or CancelRequest, with
/// TLS set up in between when the client asks and `tls` offers it. Returns
/// the connection the session goes on with.
pub async fn handshake(
    tcp: TcpStream,
    buf: &mut BytesMut,
    tls: &ClientTls,
    deadline: Instant,
) -> Result<(Stream, Handshake), Refused> {
    let mut tcp = tcp;
    let first = match tokio::time::timeout_at(deadline, first_packet(&mut tcp, buf, tls)).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return Err(Refused::on(Stream::Plain(tcp), e)),
        Err(_) => return Err(Refused::on(Stream::Plain(tcp), StartupError::TimedOut)),
    };
    let (mut stream, packet) = match first {
        FirstPacket::Tls {
            acceptor,
            direct,
            cleartext_after,
        } => {
            let mut stream =
                tls_handshake(tcp, &acceptor, direct, cleartext_after, deadline).await?;
            match tokio::time::timeout_at(deadline, packet_after_tls(&mut stream, buf)).await {
                Ok(Ok(p)) => (stream, p),
                Ok(Err(e)) => return Err(Refused::on(stream, e)),
                Err(_) => return Err(Refused::on(stream, StartupError::TimedOut)),
            }
        }
        FirstPacket::Plain(request) => (Stream::Plain(tcp), request),
    };
    match packet {
        Request::Cancel { pid, secret } => Ok((stream, Handshake::Cancel { pid, secret })),
        Request::Startup { version, params } => {
            if tls.requires_tls() && !stream.is_tls() {
                let e = PgError::fatal(
                    sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                    "pgharbor accepts only TLS connections (client_tls.mode = require)",
                )
                .with_hint("connect with sslmode=require (or verify-ca / verify-full)");
                return Err(Refused::on(stream, StartupError::Refuse(e)));
            }
            let login =
                tokio::time::timeout_at(deadline, login_request(&mut stream, version, params));
            match login.await {
                Ok(Ok(mut l)) => match client_certificate(tls, &stream) {
                    Ok(certificate) => {
                        l.certificate = certificate.map(Box::new);
                        Ok((stream, Handshake::Login(l)))
                    }
                    Err(e) => Err(Refused::on(stream, StartupError::Refuse(e))),
                },
                Ok(Err(e)) => Err(Refused::on(stream, e)),
                Err(_) => Err(Refused::on(stream, StartupError::TimedOut)),
            }
        }
    }
}

/// The TLS handshake after an `S` (or a direct ClientHello), and the
/// refusals that come right after it: plaintext that came with the
/// SSLRequest, and a direct connection without ALPN `postgresql`.
async fn tls_handshake(
    tcp: TcpStream,
    acceptor: &tokio_rustls::TlsAcceptor,
    direct: bool,
    cleartext_after: bool,
    deadline: Instant,
) -> Result<Stream, Refused> {
    let tls_stream = match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(Refused {
                stream: None,
                error: StartupError::Tls(e),
            })
        }
        Err(_) => {
            return Err(Refused {
                stream: None,
                error: StartupError::TimedOut,
            })
        }
    };
    let alpn_ok = tls_stream.get_ref().1.alpn_protocol() == Some(POSTGRES_ALPN);
    let stream = Stream::Tls(Box::new(tls_stream.into()));
    if cleartext_after {
        return Err(Refused::on(stream, unencrypted_after(SSL_AFTER)));
    }
    if direct && !alpn_ok {
        // Without the ALPN check a TLS connection meant for another
        // protocol could be replayed here; Postgres refuses it too.
        let e = PgError::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            "direct TLS connection established without ALPN protocol \"postgresql\"",
        )
        .with_hint("use a client that negotiates ALPN, or sslnegotiation=postgres");
        return Err(Refused::on(stream, StartupError::Refuse(e)));
    }
    Ok(stream)
}

/// The client's certificate, checked against `client_tls.ca_file`, when
/// client certificates are asked for.
fn client_certificate(
    tls: &ClientTls,
    stream: &Stream,
) -> Result<Option<ClientCertificate>, PgError> {
    let Some(policy) = &tls.client_certs else {
        return Ok(None);
    };
    let presented = match stream {
        Stream::Tls(s) => s.get_ref().1.peer_certificates(),
        Stream::Plain(_) => None,
    };
    policy.check(presented)
}

/// A connection whose next byte can be looked at without taking it, so
/// that a TLS handshake's bytes stay in the socket for rustls to read.
/// Generic so that the unit tests can drive [`first_packet`] over an
/// in-memory pipe.
trait PeekByte: AsyncRead + AsyncWrite + Unpin {
    /// The next byte, or `None` when the peer closed.
    async fn peek_byte(&mut self) -> std::io::Result<Option<u8>>;
}

impl PeekByte for TcpStream {
    async fn peek_byte(&mut self) -> std::io::Result<Option<u8>> {
        let mut first = [0u8; 1];
        Ok((self.peek(&mut first).await? != 0).then_some(first[0]))
    }
}

/// Reads the first packet, answering GSSENCRequest with `N` (no GSSAPI
/// here), and SSLRequest with `S` when TLS is offered, else `N`.
///
/// As Postgres 15 (`ProcessStartupPacket`): after an `N` a request of the
/// same kind is taken for a StartupMessage of an unsupported protocol
/// (its code read as the version 1234.5679 or 1234.5680), while the other
/// kind may follow, and after it the first kind again. Bytes that came
/// with a request get its answer (`N`, or `S` when TLS is offered), then a
/// FATAL: they were sent in the clear before the answer said whether to
/// encrypt.
async fn first_packet<S: PeekByte>(
    stream: &mut S,
    buf: &mut BytesMut,
    tls: &ClientTls,
) -> Result<FirstPacket, StartupError> {
    let (mut ssl_done, mut gss_done) = (false, false);
    loop {
        if let (true, Some(acceptor)) = (buf.is_empty(), &tls.acceptor) {
            let Some(first) = stream.peek_byte().await? else {
                return Err(StartupError::Closed);
            };
            if first == TLS_HANDSHAKE_RECORD {
                return Ok(FirstPacket::Tls {
                    acceptor: acceptor.clone(),
                    direct: true,
                    cleartext_after: false,
                });
            }
        }
        let Some(packet) = split_startup(buf)? else {
            fill(stream, buf).await?;
            continue;
        };
        let refused = match packet {
            StartupPacket::SslRequest if ssl_done => return Err(unsupported_protocol(SSL_REQUEST)),
            StartupPacket::GssEncRequest if gss_done => {
                return Err(unsupported_protocol(GSSENC_REQUEST))
            }
            StartupPacket::SslRequest => {
                if let Some(acceptor) = &tls.acceptor {
                    stream.write_all(b"S").await?;
                    // Bytes already sent after the request came in the
                    // clear, and must not be taken as if they came
                    // through TLS: Postgres 15 completes the handshake,
                    // then refuses them through it.
                    return Ok(FirstPacket::Tls {
                        acceptor: acceptor.clone(),
                        direct: false,
                        cleartext_after: !buf.is_empty(),
                    });
                }
                (ssl_done, gss_done) = (true, false);
                SSL_AFTER
            }
            StartupPacket::GssEncRequest => {
                (ssl_done, gss_done) = (false, true);
                "received unencrypted data after GSSAPI encryption request"
            }
            StartupPacket::Cancel { pid, secret } => {
                return Ok(FirstPacket::Plain(Request::Cancel { pid, secret }))
            }
            StartupPacket::Startup { version, params } => {
                return Ok(FirstPacket::Plain(Request::Startup { version, params }))
            }
        };
        stream.write_all(b"N").await?;
        if !buf.is_empty() {
            return Err(unencrypted_after(refused));
        }
    }
}

/// Postgres 15's words for plaintext that came with an SSLRequest.
const SSL_AFTER: &str = "received unencrypted data after SSL request";

/// Postgres 15's refusal of bytes sent in the clear together with an
/// encryption request, before its answer said whether to encrypt.
fn unencrypted_after(refused: &'static str) -> StartupError {
    StartupError::Refuse(
        PgError::fatal(sqlstate::PROTOCOL_VIOLATION, refused).with_detail(
            "This could be either a client-software bug or evidence of an attempted man-in-the-middle attack.",
        ),
    )
}

/// Postgres 15's refusal of a StartupMessage of protocol `version`.
fn unsupported_protocol(version: u32) -> StartupError {
    let (major, minor) = (version >> 16, version & 0xffff);
    StartupError::Refuse(PgError::fatal(
        sqlstate::FEATURE_NOT_SUPPORTED,
        format!("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0"),
    ))
}

/// The packet that follows the TLS handshake: a StartupMessage or a
/// CancelRequest. A request for encryption again is, as in Postgres 15, a
/// StartupMessage of an unsupported protocol (both kinds are done once
/// TLS is on).
async fn packet_after_tls(
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> Result<Request, StartupError> {
    loop {
        let Some(packet) = split_startup(buf)? else {
            fill(stream, buf).await?;
            continue;
        };
        return match packet {
            StartupPacket::SslRequest => Err(unsupported_protocol(SSL_REQUEST)),
            StartupPacket::GssEncRequest => Err(unsupported_protocol(GSSENC_REQUEST)),
            StartupPacket::Cancel { pid, secret } => Ok(Request::Cancel { pid, secret }),
            StartupPacket::Startup { version, params } => Ok(Request::Startup { version, params }),
        };
    }
}

/// Writes `bytes` and pushes them out (TLS keeps written bytes until
/// flushed).
pub(crate) async fn send<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

async fn login_request<S: AsyncWrite + Unpin>(
    stream: &mut S,
    version: u32,
    mut params: StartupParams,
) -> Result<LoginRequest, StartupError> {
    let minor = version & 0xffff;
    if version >> 16 != 3 {
        return Err(unsupported_protocol(version));
    }
    let mut user = None;
    let mut database = None;
    let mut replication = false;
    let mut unrecognized = Vec::new();
    params.retain(|pair, k, v| {
        match k {
            "user" => user = Some(pair).filter(|_| !v.is_empty()),
            "database" => database = Some(pair).filter(|_| !v.is_empty()),
            "replication" => replication |= !matches!(v, "false" | "off" | "no" | "0"),
            _ if k.starts_with("_pq_.") => unrecognized.push(pair),
            _ => return true,
        }
        false
    });
    if replication {
        return Err(StartupError::Refuse(
            PgError::fatal(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "pgharbor does not support replication connections",
            )
            .with_hint("connect to PostgreSQL directly for replication"),
        ));
    }
    // We speak 3.0. A client asking for 3.2 (Postgres 18) is told so and
    // then expects a 3.0 BackendKeyData with a 4-byte secret, which is what
    // we issue (see the protocol 3.2 note in `crate::cancel`).
    if minor > 0 || !unrecognized.is_empty() {
        let mut out = BytesMut::new();
        let names: Vec<&str> = unrecognized.iter().map(|&p| params.name(p)).collect();
        backend::negotiate_protocol_version(&mut out, PROTOCOL_3_0, &names);
        send(stream, &out).await?;
    }
    let Some(user) = user else {
        return Err(StartupError::Refuse(PgError::fatal(
            sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
            "no PostgreSQL user name specified in startup packet",
        )));
    };
    Ok(LoginRequest {
        params,
        user,
        database,
        certificate: None,
    })
}

#[cfg(test)]
#[path = "startup_tests.rs"]
mod tests;

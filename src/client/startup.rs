//! The start of a client connection: the first packet (SSLRequest,
//! GSSENCRequest, CancelRequest or StartupMessage), protocol version
//! negotiation, and password authentication.

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::auth::scram::ScramServer;
use crate::config::AuthType;
use crate::protocol::backend;
use crate::protocol::frame::{read_cstr, split_message, ProtocolError};
use crate::protocol::sqlstate;
use crate::protocol::startup::{split_startup, StartupPacket};
use crate::protocol::PgError;
use crate::users::UserEntry;

/// Password messages are small; anything bigger is an attack or a bug.
const MAX_AUTH_MESSAGE: usize = 16 * 1024;

/// What the first packet(s) asked for.
pub enum Handshake {
    Login(LoginRequest),
    Cancel { pid: i32, secret: Vec<u8> },
}

#[derive(Debug, Clone)]
pub struct LoginRequest {
    pub user: String,
    pub database: String,
    /// Every other startup parameter, in the client's order.
    pub params: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Tell the client, then close.
    #[error("{0}")]
    Refuse(PgError),
    /// The client went away or broke framing; nothing useful to send.
    #[error("client closed the connection during startup")]
    Closed,
    #[error("i/o error during startup: {0}")]
    Io(#[from] std::io::Error),
}

impl From<ProtocolError> for StartupError {
    fn from(e: ProtocolError) -> Self {
        StartupError::Refuse(PgError::fatal(sqlstate::PROTOCOL_VIOLATION, e.to_string()))
    }
}

async fn fill(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<(), StartupError> {
    buf.reserve(512);
    if stream.read_buf(buf).await? == 0 {
        return Err(StartupError::Closed);
    }
    Ok(())
}

/// Reads the first packet, answering SSLRequest and GSSENCRequest with `N`
/// (no encryption on this listener), and negotiating the protocol version.
pub async fn handshake(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
) -> Result<Handshake, StartupError> {
    let mut refused_encryption = 0;
    loop {
        let Some(packet) = split_startup(buf)? else {
            fill(stream, buf).await?;
            continue;
        };
        match packet {
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                refused_encryption += 1;
                if refused_encryption > 2 {
                    return Err(ProtocolError::Malformed("startup packet").into());
                }
                // Bytes already sent after the request would arrive in the
                // clear before our answer: Postgres refuses that too.
                if !buf.is_empty() {
                    return Err(ProtocolError::Malformed("SSLRequest").into());
                }
                stream.write_all(b"N").await?;
            }
            StartupPacket::Cancel { pid, secret } => return Ok(Handshake::Cancel { pid, secret }),
            StartupPacket::Startup { version, params } => {
                return login_request(stream, version, params)
                    .await
                    .map(Handshake::Login)
            }
        }
    }
}

async fn login_request(
    stream: &mut TcpStream,
    version: u32,
    params: Vec<(String, String)>,
) -> Result<LoginRequest, StartupError> {
    let (major, minor) = (version >> 16, version & 0xffff);
    if major != 3 {
        return Err(StartupError::Refuse(PgError::fatal(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0"),
        )));
    }
    let mut user = None;
    let mut database = None;
    let mut rest = Vec::new();
    let mut unrecognized = Vec::new();
    for (k, v) in params {
        match k.as_str() {
            "user" => user = Some(v),
            "database" => database = Some(v),
            "replication" => {
                if !matches!(v.as_str(), "false" | "off" | "no" | "0") {
                    return Err(StartupError::Refuse(
                        PgError::fatal(
                            sqlstate::FEATURE_NOT_SUPPORTED,
                            "pgharbor does not support replication connections",
                        )
                        .with_hint("connect to PostgreSQL directly for replication"),
                    ));
                }
            }
            _ if k.starts_with("_pq_.") => unrecognized.push(k),
            _ => rest.push((k, v)),
        }
    }
    // We speak 3.0. A client asking for 3.2 (Postgres 18) is told so and
    // then expects a 3.0 BackendKeyData with a 4-byte secret, which is what
    // we issue (see the protocol 3.2 note in `crate::cancel`).
    if minor > 0 || !unrecognized.is_empty() {
        let mut out = BytesMut::new();
        let names: Vec<&str> = unrecognized.iter().map(String::as_str).collect();
        backend::negotiate_protocol_version(&mut out, 0, &names);
        stream.write_all(&out).await?;
    }
    let user = match user {
        Some(u) if !u.is_empty() => u,
        _ => {
            return Err(StartupError::Refuse(PgError::fatal(
                sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                "no PostgreSQL user name specified in startup packet",
            )))
        }
    };
    let database = database
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    Ok(LoginRequest {
        user,
        database,
        params: rest,
    })
}

fn auth_failed(user: &str) -> StartupError {
    StartupError::Refuse(PgError::fatal(
        sqlstate::INVALID_PASSWORD,
        format!("password authentication failed for user \"{user}\""),
    ))
}

/// Reads the next client message, which must be a password-type message.
async fn read_password_message(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
) -> Result<BytesMut, StartupError> {
    loop {
        if let Some(m) = split_message(buf, MAX_AUTH_MESSAGE)? {
            if m[0] != b'p' {
                return Err(ProtocolError::Unexpected {
                    tag: m[0],
                    context: "during authentication: expected a password response",
                }
                .into());
            }
            return Ok(m);
        }
        fill(stream, buf).await?;
    }
}

/// Authenticates the client as `user` (None: unknown user, always refused
/// with the same message as a wrong password, as Postgres does). Sends
/// AuthenticationOk on success.
pub async fn authenticate(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    name: &str,
    user: Option<&UserEntry>,
) -> Result<(), StartupError> {
    let Some(user) = user else {
        return Err(auth_failed(name));
    };
    let mut out = BytesMut::new();
    match user.config.auth_type {
        AuthType::Trust => {}
        AuthType::Md5 => {
            let stored = user.md5.as_deref().ok_or_else(|| auth_failed(name))?;
            let salt: [u8; 4] = rand::random();
            backend::authentication_md5(&mut out, salt);
            stream.write_all(&out).await?;
            out.clear();
            let msg = read_password_message(stream, buf).await?;
            let body = &msg[5..];
            let response = body.strip_suffix(&[0]).unwrap_or(body);
            if !crate::auth::md5::md5_verify(stored, salt, response) {
                return Err(auth_failed(name));
            }
        }
        AuthType::ScramSha256 => {
            let secret = user.scram.clone().ok_or_else(|| auth_failed(name))?;
            let mut scram = ScramServer::new(secret);
            backend::authentication_sasl(&mut out, &["SCRAM-SHA-256"]);
            stream.write_all(&out).await?;
            out.clear();
            // SASLInitialResponse: mechanism, length of data, data.
            let msg = read_password_message(stream, buf).await?;
            let (mechanism, rest) = read_cstr(&msg[5..])?;
            if mechanism != "SCRAM-SHA-256" {
                return Err(StartupError::Refuse(PgError::fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!(
                        "client selected an invalid SASL authentication mechanism \"{mechanism}\""
                    ),
                )));
            }
            if rest.len() < 4 {
                return Err(ProtocolError::Malformed("SASLInitialResponse").into());
            }
            let data = &rest[4..];
            let first = scram
                .handle_client_first(data)
                .map_err(|_| auth_failed(name))?;
            backend::authentication_sasl_continue(&mut out, &first);
            stream.write_all(&out).await?;
            out.clear();
            let msg = read_password_message(stream, buf).await?;
            let last = scram
                .handle_client_final(&msg[5..])
                .map_err(|_| auth_failed(name))?;
            backend::authentication_sasl_final(&mut out, &last);
        }
    }
    backend::authentication_ok(&mut out);
    stream.write_all(&out).await?;
    Ok(())
}

//! Authenticating a client: the method (the first matching `hba_file`
//! line's, else the user's `auth_type`), then its exchange.
//!
//! A user pgharbor does not know goes through the same exchange as a known
//! one (SCRAM with a made-up salt, an md5 salt, a password prompt) and gets
//! the same 28P01 as a wrong password, byte for byte: a stranger cannot
//! tell which user names exist.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use subtle::ConstantTimeEq;

use super::startup::{send, LoginRequest, StartupError};
use crate::auth::hba::{Decision, HbaRules, Method};
use crate::auth::md5::{md5_stored, md5_verify};
use crate::auth::scram::{ChannelBinding, ScramSecret, ScramServer};
use crate::net::Stream;
use crate::protocol::backend;
use crate::protocol::frame::{read_cstr, split_message, ProtocolError};
use crate::protocol::sqlstate;
use crate::protocol::tag::frontend;
use crate::protocol::PgError;
use crate::users::UserEntry;

/// Password messages are small; anything bigger is an attack or a bug.
const MAX_AUTH_MESSAGE: usize = 16 * 1024;

/// Room for a login's reply in one allocation: AuthenticationOk, then the
/// ParameterStatus messages (about 400 bytes for Postgres 15's fourteen),
/// BackendKeyData and ReadyForQuery.
const LOGIN_REPLY_CAPACITY: usize = 512;

/// What decides how a client authenticates, besides its user.
pub struct Access<'a> {
    /// The `tls-server-end-point` hash of the certificate the client was
    /// served: SCRAM-SHA-256-PLUS is offered over TLS when present.
    pub end_point: Option<&'a Arc<[u8]>>,
    /// The rules of `pool.hba_file`, if one is configured.
    pub hba: Option<&'a HbaRules>,
    /// The client's address, for hba lines.
    pub addr: SocketAddr,
    /// `client_tls.allow_plaintext_password`.
    pub allow_plaintext_password: bool,
}

pub(crate) fn auth_failed(user: &str) -> StartupError {
    StartupError::Refuse(PgError::fatal(
        sqlstate::INVALID_PASSWORD,
        format!("password authentication failed for user \"{user}\""),
    ))
}

fn refused(message: String) -> StartupError {
    StartupError::Refuse(PgError::fatal(
        sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
        message,
    ))
}

/// Authenticates the client of `login` as `user` (None: a user pgharbor
/// does not know, always refused like a wrong password). On success
/// returns AuthenticationOk (after SCRAM's final message) unsent: the
/// caller sends it with the parameters and ReadyForQuery that follow, so
/// the client is woken once for its login rather than twice.
pub async fn authenticate(
    stream: &mut Stream,
    buf: &mut BytesMut,
    login: &LoginRequest,
    user: Option<&UserEntry>,
    access: &Access<'_>,
) -> Result<BytesMut, StartupError> {
    let name = login.user();
    let method = method(access, stream.is_tls(), login, user)?;
    let mut out = BytesMut::with_capacity(LOGIN_REPLY_CAPACITY);
    match method {
        // `method` refused a `reject` line already.
        Method::Trust | Method::Reject => {
            if user.is_none() {
                return Err(auth_failed(name));
            }
        }
        Method::Cert => check_certificate(login, user)?,
        Method::Password => {
            if !stream.is_tls() && !access.allow_plaintext_password {
                let e = PgError::fatal(
                    sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                    "pgharbor does not take a cleartext password on a connection without TLS",
                )
                .with_hint("connect with sslmode=require, or set client_tls.allow_plaintext_password = true");
                return Err(StartupError::Refuse(e));
            }
            cleartext(stream, buf, &mut out, name, user).await?;
        }
        // Postgres runs SCRAM for an md5 line when the role's secret is a
        // SCRAM verifier.
        Method::Md5 if user.is_some_and(|u| u.md5.is_none() && u.scram.is_some()) => {
            scram(stream, buf, &mut out, name, user, access).await?
        }
        Method::Md5 => md5(stream, buf, &mut out, name, user).await?,
        Method::ScramSha256 => scram(stream, buf, &mut out, name, user, access).await?,
    }
    backend::authentication_ok(&mut out);
    Ok(out)
}

/// Counts a login refused by authentication (not one the client gave up)
/// in `pgharbor_login_failures_total`. Names pgharbor does not know are
/// counted under "", so that a stranger trying names cannot add series.
pub fn count_failure(
    state: &crate::state::State,
    login: &LoginRequest,
    known_user: bool,
    error: &StartupError,
) {
    if !matches!(error, StartupError::Refuse(_)) {
        return;
    }
    let database = login.database();
    let known_database =
        matches!(database, "pgharbor" | "pgbouncer") || state.config().database(database).is_some();
    let labels = [
        if known_database { database } else { "" },
        if known_user { login.user() } else { "" },
    ];
    state
        .metrics()
        .login_failures
        .with_label_values(&labels)
        .inc();
}

/// The method for this login: the first matching hba line's (a `reject`
/// line, or none, refuses it as Postgres does), else the user's auth_type
/// (SCRAM for a user pgharbor does not know).
fn method(
    access: &Access<'_>,
    tls: bool,
    login: &LoginRequest,
    user: Option<&UserEntry>,
) -> Result<Method, StartupError> {
    let Some(hba) = access.hba else {
        return Ok(user.map_or(Method::ScramSha256, |u| u.config.auth_type.method()));
    };
    let (name, database) = (login.user(), login.database());
    let ip = access.addr.ip();
    let encryption = if tls {
        "SSL encryption"
    } else {
        "no encryption"
    };
    match hba.decide(tls, database, name, ip) {
        Decision::Method(Method::Reject, line) => {
            tracing::info!(line, "hba_file line rejects the login");
            Err(refused(format!(
                "pg_hba.conf rejects connection for host \"{ip}\", user \"{name}\", database \"{database}\", {encryption}"
            )))
        }
        Decision::Method(method, _) => Ok(method),
        Decision::NoMatch => Err(refused(format!(
            "no pg_hba.conf entry for host \"{ip}\", user \"{name}\", database \"{database}\", {encryption}"
        ))),
    }
}

/// `cert`: the certificate (already checked against `client_tls.ca_file`
/// during the handshake) must name the user in its CN.
fn check_certificate(login: &LoginRequest, user: Option<&UserEntry>) -> Result<(), StartupError> {
    let name = login.user();
    let Some(cert) = login.certificate() else {
        return Err(refused(
            "connection requires a valid client certificate".into(),
        ));
    };
    match cert.common_name.as_deref() {
        Some(cn) if cn == name && user.is_some() => Ok(()),
        Some(cn) if cn == name => Err(auth_failed(name)),
        Some(cn) => Err(refused(format!(
            "certificate authentication failed for user \"{name}\": the certificate's CN is \"{cn}\""
        ))),
        None => Err(refused(format!(
            "certificate authentication failed for user \"{name}\": the certificate has no CN"
        ))),
    }
}

/// Reads the next client message, which must be a password-type message.
async fn read_password_message(
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> Result<BytesMut, StartupError> {
    loop {
        if let Some(m) = split_message(buf, MAX_AUTH_MESSAGE)? {
            if m[0] != frontend::PASSWORD {
                return Err(ProtocolError::Unexpected {
                    tag: m[0],
                    context: "during authentication: expected a password response",
                }
                .into());
            }
            return Ok(m);
        }
        super::startup::fill(stream, buf).await?;
    }
}

/// Sends `out` (an authentication request) and reads the answer.
async fn ask(
    stream: &mut Stream,
    buf: &mut BytesMut,
    out: &mut BytesMut,
) -> Result<BytesMut, StartupError> {
    send(stream, out).await?;
    out.clear();
    read_password_message(stream, buf).await
}

/// A PasswordMessage's body without its terminating NUL.
fn password_body(msg: &BytesMut) -> &[u8] {
    let body = &msg[5..];
    body.strip_suffix(&[0]).unwrap_or(body)
}

async fn md5(
    stream: &mut Stream,
    buf: &mut BytesMut,
    out: &mut BytesMut,
    name: &str,
    user: Option<&UserEntry>,
) -> Result<(), StartupError> {
    let salt: [u8; 4] = rand::random();
    backend::authentication_md5(out, salt);
    let msg = ask(stream, buf, out).await?;
    let stored = user.and_then(|u| u.md5.as_deref());
    match stored {
        Some(stored) if md5_verify(stored, salt, password_body(&msg)) => Ok(()),
        _ => Err(auth_failed(name)),
    }
}

/// The `password` method: the password in cleartext, checked against
/// whichever secret the user has.
async fn cleartext(
    stream: &mut Stream,
    buf: &mut BytesMut,
    out: &mut BytesMut,
    name: &str,
    user: Option<&UserEntry>,
) -> Result<(), StartupError> {
    backend::authentication_cleartext_password(out);
    let msg = ask(stream, buf, out).await?;
    let Ok(given) = std::str::from_utf8(password_body(&msg)) else {
        return Err(auth_failed(name));
    };
    let ok = match user {
        None => false,
        Some(u) => match (&u.md5, &u.scram) {
            (Some(stored), _) => {
                bool::from(md5_stored(name, given).as_bytes().ct_eq(stored.as_bytes()))
            }
            (None, Some(secret)) => secret.matches_password(given),
            (None, None) => false,
        },
    };
    if ok {
        Ok(())
    } else {
        Err(auth_failed(name))
    }
}

/// The secret a SCRAM exchange for `user` runs against, and whether it is
/// the user's own (a made-up one can never succeed).
fn scram_secret(name: &str, user: Option<&UserEntry>) -> (ScramSecret, bool) {
    let Some(user) = user else {
        return (ScramSecret::mock(name), false);
    };
    if let Some(secret) = &user.scram {
        return (secret.clone(), true);
    }
    let password = &user.config.password;
    let md5_hash = password.len() == 35 && password.starts_with("md5");
    if password.is_empty() || md5_hash {
        // No SCRAM login can be checked against an md5 hash.
        return (ScramSecret::mock(name), false);
    }
    (ScramSecret::from_password(password), true)
}

async fn scram(
    stream: &mut Stream,
    buf: &mut BytesMut,
    out: &mut BytesMut,
    name: &str,
    user: Option<&UserEntry>,
    access: &Access<'_>,
) -> Result<(), StartupError> {
    let (secret, real) = scram_secret(name, user);
    let end_point = access.end_point.filter(|_| stream.is_tls());
    if end_point.is_some() {
        backend::authentication_sasl(out, &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]);
    } else {
        backend::authentication_sasl(out, &["SCRAM-SHA-256"]);
    }
    // SASLInitialResponse: mechanism, length of data, data.
    let msg = ask(stream, buf, out).await?;
    let (mechanism, rest) = read_cstr(&msg[5..])?;
    let binding = match (mechanism, end_point) {
        ("SCRAM-SHA-256", None) => ChannelBinding::NotOffered,
        ("SCRAM-SHA-256", Some(_)) => ChannelBinding::Declined,
        ("SCRAM-SHA-256-PLUS", Some(hash)) => ChannelBinding::TlsServerEndPoint(hash.clone()),
        _ => {
            return Err(StartupError::Refuse(PgError::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                format!("client selected an invalid SASL authentication mechanism \"{mechanism}\""),
            )))
        }
    };
    let mut exchange = ScramServer::with_channel_binding(secret.clone(), binding);
    if rest.len() < 4 {
        return Err(ProtocolError::Malformed("SASLInitialResponse").into());
    }
    let first = exchange
        .handle_client_first(&rest[4..])
        .map_err(|_| auth_failed(name))?;
    backend::authentication_sasl_continue(out, &first);
    let msg = ask(stream, buf, out).await?;
    let last = exchange
        .handle_client_final(&msg[5..])
        .map_err(|_| auth_failed(name))?;
    let Some(user) = user.filter(|_| real) else {
        return Err(auth_failed(name));
    };
    // For a user known only by its verifier, the proven ClientKey is what
    // lets pgharbor log in to Postgres (SCRAM pass-through).
    if let Some(key) = exchange.take_client_key() {
        user.server.learn(key, &secret);
    }
    backend::authentication_sasl_final(out, &last);
    Ok(())
}

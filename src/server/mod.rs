//! One connection to a real Postgres server: connect, authenticate, learn its
//! parameters, and the few round trips pgharbor makes on its own (parameter
//! sync, health check, reset, rollback).

pub mod cancel;
mod hosts;
pub mod listing;
mod login;
pub mod prepared;

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::auth::credential::{ServerCredential, ServerLogin};
use crate::auth::scram_client::KeyClient;
use crate::config::{Endpoint, LoadBalanceHosts, TargetSessionAttrs};
use crate::net::Stream;
use crate::tls::ServerTls;

use crate::protocol::backend::parse_parameter_status;
use crate::protocol::error::ServerErrorFields;
use crate::protocol::frame::{split_message, ProtocolError};
use crate::protocol::tag::{backend as tag, TxStatus};
use crate::sql::quote::{quote_ident, quote_literal};

/// Largest message accepted from a server outside the relay (login, our own
/// queries); the relay itself streams larger ones.
const MAX_SERVER_MESSAGE: usize = 64 * 1024 * 1024;

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct ServerTarget {
    /// The database's servers, in the order `host` lists them.
    pub endpoints: Arc<[Endpoint]>,
    /// Which of them a new connection may use.
    pub session_attrs: TargetSessionAttrs,
    pub load_balance: LoadBalanceHosts,
    /// The endpoint of the last connection that matched, tried first by
    /// the next (shared by the target's copies): after a failover, new
    /// connections do not wait on the old primary first.
    pub last_good: Arc<std::sync::atomic::AtomicUsize>,
    pub dbname: String,
    pub user: String,
    /// The user's password or learnt ClientKey, read at each login so a
    /// reload or a client's SCRAM login reaches pools already open.
    pub credential: Arc<ServerCredential>,
    pub connect_timeout: Duration,
    /// How long to keep looking for a matching server (`hosts.rs`).
    pub failover_timeout: Duration,
    /// `[server_tls]` as it was when the pool was made.
    pub tls: Arc<ServerTls>,
    /// server_tcp_keepalive and server_tcp_user_timeout.
    pub tcp: crate::net::TcpOptions,
}

impl ServerTarget {
    /// `db`'s server, logged in to as `user`, with `tls` (`[server_tls]`)
    /// or the database's own `server_tls`.
    pub fn new(
        db: &crate::config::DatabaseConfig,
        settings: &crate::config::PoolDefaults,
        user: &crate::users::UserEntry,
        tls: Arc<ServerTls>,
    ) -> ServerTarget {
        // Where and how: filled in by `set_database`, as a RELOAD does.
        let mut target = ServerTarget {
            endpoints: Arc::from([]),
            session_attrs: Default::default(),
            load_balance: Default::default(),
            last_good: Default::default(),
            dbname: String::new(),
            user: user.config.name.clone(),
            credential: user.server.clone(),
            connect_timeout: Duration::ZERO,
            failover_timeout: Duration::ZERO,
            tls: tls.clone(),
            tcp: Default::default(),
        };
        target.set_database(db, settings, &tls);
        target
    }

    /// Takes what `db` (with its pool `settings` and `tls`) says of where
    /// and how to connect: at creation, and at a RELOAD. The user and
    /// credential stay.
    pub fn set_database(
        &mut self,
        db: &crate::config::DatabaseConfig,
        settings: &crate::config::PoolDefaults,
        tls: &Arc<ServerTls>,
    ) {
        let endpoints: Arc<[Endpoint]> = db.endpoints().into();
        if endpoints != self.endpoints {
            self.endpoints = endpoints;
            self.last_good = Default::default();
        }
        self.session_attrs = db.target_session_attrs;
        self.load_balance = db.load_balance_hosts;
        db.server_dbname().clone_into(&mut self.dbname);
        self.connect_timeout = settings.server_connect_timeout;
        self.failover_timeout = settings.server_failover_timeout;
        self.tcp = crate::net::TcpOptions {
            keepalive: settings.server_tcp_keepalive,
            user_timeout: settings.server_tcp_user_timeout,
        };
        self.tls = tls.for_database(&db.name);
    }

    /// Whether a server of this target may be one of `endpoints`.
    pub fn shares_a_server_with(&self, endpoints: &[Endpoint]) -> bool {
        self.endpoints.iter().any(|e| endpoints.contains(e))
    }

    /// The servers as `host` lists them, for logs.
    pub fn servers_text(&self) -> String {
        let names: Vec<String> = self.endpoints.iter().map(Endpoint::to_string).collect();
        names.join(",")
    }
}

/// The real server's cancel key and address, for forwarding CancelRequests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerKey {
    pub addr: SocketAddr,
    pub pid: i32,
    pub secret: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot connect to server {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("connecting to server {addr} took longer than server_connect_timeout ({timeout:?})")]
    ConnectTimeout { addr: String, timeout: Duration },
    #[error("server refused login: {} ({})", .0.message, .0.code)]
    Login(ServerErrorFields),
    #[error("server asks for a password but none is configured for user `{0}`; set users.password to the plaintext password")]
    NoPassword(String),
    #[error("server asks for SCRAM as user `{0}`, whom pgharbor knows only by a SCRAM verifier, and no client has logged in as `{0}` with SCRAM since pgharbor started or the verifier changed")]
    NoClientKey(String),
    #[error("server asks for a password (md5 or cleartext) as user `{0}`, whom pgharbor knows only by a SCRAM verifier; only a SCRAM login can pass through")]
    VerifierOnly(String),
    #[error("SCRAM login to the server as user `{user}` failed: {source}")]
    Scram {
        user: String,
        source: crate::auth::scram::ScramError,
    },
    #[error("server asked for an unsupported authentication method ({0})")]
    UnsupportedAuth(String),
    #[error("server error: {} ({})", .0.message, .0.code)]
    Query(ServerErrorFields),
    #[error("server protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("server closed the connection")]
    Closed,
    #[error("server {addr} does not accept TLS, and server_tls.mode = {mode} requires it; enable ssl in postgresql.conf or set server_tls.mode = \"prefer\"")]
    TlsRefused { addr: String, mode: &'static str },
    #[error("TLS handshake with server {addr} failed: {source}; check server_tls.mode and server_tls.ca_file")]
    Tls { addr: String, source: io::Error },
    #[error("no server of `{servers}` is {wanted} (target_session_attrs): {tried}")]
    NoMatchingServer {
        servers: String,
        wanted: &'static str,
        tried: String,
    },
    #[error("server i/o error: {0}")]
    Io(#[from] io::Error),
}

impl ServerError {
    /// What to change when pgharbor has no way to log in as the user.
    pub fn login_hint(&self) -> Option<&'static str> {
        match self {
            ServerError::NoClientKey(_) => Some(
                "log in through pgharbor once with the user's password over SCRAM, or give \
                 users.password the plaintext password",
            ),
            ServerError::VerifierOnly(_) => Some(
                "require scram-sha-256 for this user in pg_hba.conf, or give users.password \
                 the plaintext password",
            ),
            ServerError::Scram { .. } => Some(
                "copy the user's verifier from pg_authid.rolpassword again: the server's \
                 differs from the one in pgharbor's config",
            ),
            _ => None,
        }
    }
}

/// Parameters Postgres reports that no client can change; never synced.
const READ_ONLY_PARAMS: &[&str] = &[
    "server_version",
    "server_encoding",
    "integer_datetimes",
    "is_superuser",
    "session_authorization",
    "in_hot_standby",
];

pub fn is_read_only_param(name: &str) -> bool {
    READ_ONLY_PARAMS.contains(&name)
}

/// One server connection. Owned by exactly one place at a time: the pool's
/// idle list, or the client session that borrowed it.
#[derive(Debug)]
pub struct Server {
    pub stream: Stream,
    /// Bytes read from the server and not yet handled. Lives with the server
    /// (not the client) so idle clients hold no buffers.
    pub rbuf: BytesMut,
    /// Values the server reported with ParameterStatus, kept current.
    pub params: BTreeMap<String, String>,
    /// Unreported settings pgharbor applied for the current client
    /// (lower-case names), so they can be reset for the next one.
    pub applied: BTreeMap<String, String>,
    pub key: ServerKey,
    /// Set when this connection uses TLS: cancels for it use TLS too.
    pub cancel_tls: Option<Arc<cancel::CancelTls>>,
    /// Unique within this process, for logs and the admin console.
    pub id: u64,
    /// Keeps this server listed in its pool's SHOW SERVERS until dropped.
    pub ticket: Option<listing::ServerTicket>,
    pub created: Instant,
    /// `created` + the pool's `server_lifetime`, set by the pool (`None`:
    /// never): compared at every checkout and return, where a subtraction
    /// of instants would cost more than a comparison.
    pub retire_at: Option<Instant>,
    pub last_used: Instant,
    /// Transaction status from the last ReadyForQuery: its byte (`I`, `T`
    /// or `E`, see [`TxStatus`]).
    pub status: TxStatus,
    /// Bumped whenever `params` changes.
    pub params_version: u64,
    /// The client parameter map this server was last synced to, and
    /// `params_version` then: lets checkout skip the comparison.
    pub synced: Option<(Arc<BTreeMap<String, String>>, u64)>,
    /// The NoticeResponses of the last query that applied a client's
    /// settings: a client's login forwards them, as Postgres sends them
    /// at login.
    pub sync_notices: Vec<BytesMut>,
    /// Proxy-named statements prepared on this server (transaction mode).
    pub prepared: prepared::PreparedSet,
    /// What `target_session_attrs` this connection was opened for: a
    /// server that stops being that (a standby promoted, a primary made
    /// read-only) is closed when it is given back.
    pub session_attrs: TargetSessionAttrs,
}

impl Server {
    /// Where a cancel of this server's current query goes.
    pub fn cancel_target(&self) -> cancel::CancelTarget {
        cancel::CancelTarget {
            key: self.key,
            tls: self.cancel_tls.clone(),
        }
    }

    /// Writes `bytes` and pushes them out (TLS holds written bytes until
    /// flushed).
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Reads one whole message (outside the relay).
    pub async fn read_message(&mut self) -> Result<BytesMut, ServerError> {
        loop {
            if let Some(m) = split_message(&mut self.rbuf, MAX_SERVER_MESSAGE)? {
                return Ok(m);
            }
            if self.rbuf.capacity() - self.rbuf.len() < 1024 {
                self.rbuf.reserve(8192);
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(ServerError::Closed);
            }
        }
    }

    /// Records a ParameterStatus body.
    pub fn note_parameter(&mut self, body: &[u8]) {
        if let Some((k, v)) = parse_parameter_status(body) {
            self.set_param(k, v);
        }
    }

    /// Records a reported parameter value.
    pub fn set_param(&mut self, name: String, value: String) {
        if self.params.get(&name) != Some(&value) {
            let role_param = hosts::is_role_param(&name);
            self.params.insert(name, value);
            self.params_version += 1;
            if role_param {
                self.check_role();
            }
        }
    }

    /// A cheap, non-blocking look at the socket: a server that Postgres or a
    /// middlebox closed (or that sent an unsolicited FATAL) is not alive.
    /// The read goes through tokio's readiness, which the relay clears when
    /// it drains the socket: it costs a syscall only when the runtime has
    /// seen the socket become readable since (data or a close), so checking
    /// out a healthy server costs none.
    pub fn is_alive(&mut self) -> bool {
        self.rbuf.is_empty() && self.stream.is_quiet()
    }

    /// Runs `sql` as a simple query and reads up to ReadyForQuery, keeping
    /// parameter reports. Returns the first error the server sent.
    pub async fn simple_query(&mut self, sql: &str) -> Result<(), ServerError> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out)?;
        self.send(&out).await?;
        self.read_until_ready().await
    }

    /// Runs `sql` as a simple query and returns the first column of its
    /// first row (`None` for no row or NULL), as the server sent it.
    pub async fn query_first_value(&mut self, sql: &str) -> Result<Option<Vec<u8>>, ServerError> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out)?;
        self.send(&out).await?;
        let row = self.read_reply(true, None).await?;
        Ok(row.and_then(|r| first_column(&r[5..])))
    }

    /// Runs `sql` with the extended protocol and `param` as `$1` (text), so
    /// the value is never part of the SQL; returns the columns of the first
    /// row (`None` for NULL), or `None` for no row.
    pub async fn query_row_with(
        &mut self,
        sql: &str,
        param: &str,
    ) -> Result<Option<Vec<Option<Vec<u8>>>>, ServerError> {
        let mut out = BytesMut::new();
        frontend::parse("", sql, std::iter::empty(), &mut out)?;
        let param_len = i32::try_from(param.len())
            .map_err(|_| ProtocolError::Malformed("query parameter too long"))?;
        // Bind: unnamed portal and statement, no format codes (text), one
        // parameter, no result format codes (text).
        let mut bind = BytesMut::new();
        bind.extend_from_slice(b"\0\0\0\0\0\x01");
        bind.extend_from_slice(&param_len.to_be_bytes());
        bind.extend_from_slice(param.as_bytes());
        bind.extend_from_slice(b"\0\0");
        out.extend_from_slice(b"B");
        out.extend_from_slice(&(bind.len() as i32 + 4).to_be_bytes());
        out.extend_from_slice(&bind);
        frontend::execute("", 0, &mut out)?;
        frontend::sync(&mut out);
        self.send(&out).await?;
        let row = self.read_reply(true, None).await?;
        Ok(row.map(|r| columns(&r[5..])))
    }

    /// Reads and discards messages up to ReadyForQuery.
    pub async fn read_until_ready(&mut self) -> Result<(), ServerError> {
        self.read_reply(false, None).await.map(drop)
    }

    /// Reads up to ReadyForQuery; returns the first DataRow when `keep_row`
    /// and keeps NoticeResponses in `notices` when given.
    async fn read_reply(
        &mut self,
        keep_row: bool,
        mut notices: Option<&mut Vec<BytesMut>>,
    ) -> Result<Option<BytesMut>, ServerError> {
        let mut first_error = None;
        let mut row = None;
        loop {
            let msg = self.read_message().await?;
            match msg[0] {
                tag::DATA_ROW if keep_row && row.is_none() => row = Some(msg),
                tag::NOTICE_RESPONSE => {
                    if let Some(n) = notices.as_deref_mut() {
                        n.push(msg);
                    }
                }
                tag::PARAMETER_STATUS => self.note_parameter(&msg[5..]),
                tag::ERROR_RESPONSE => {
                    let f = ServerErrorFields::parse(&msg[5..]);
                    if f.is_fatal() {
                        return Err(ServerError::Query(f));
                    }
                    first_error.get_or_insert(f);
                }
                tag::READY_FOR_QUERY => {
                    self.status = TxStatus::from_ready(msg.get(5).copied());
                    return match first_error {
                        Some(f) => Err(ServerError::Query(f)),
                        None => Ok(row),
                    };
                }
                // COPY started by a check or reset query cannot be served.
                tag::COPY_IN_RESPONSE | tag::COPY_OUT_RESPONSE | tag::COPY_BOTH_RESPONSE => {
                    return Err(ServerError::Closed)
                }
                _ => {}
            }
        }
    }

    /// The fast path of [`Server::sync_params`]: the server was last synced
    /// to this very map (clients with default settings share one), has
    /// reported nothing since, and the client set nothing unreported.
    pub fn params_in_sync(
        &self,
        reported: &Arc<BTreeMap<String, String>>,
        other: &BTreeMap<String, String>,
    ) -> bool {
        other.is_empty()
            && self.applied.is_empty()
            && self.synced.as_ref().is_some_and(|(map, version)| {
                Arc::ptr_eq(map, reported) && *version == self.params_version
            })
    }

    /// Brings the server's settings to what a client expects: reported
    /// parameters that differ and unreported ones the client set at startup,
    /// and resets what an earlier client left. One round trip, or none.
    pub async fn sync_params(
        &mut self,
        reported: &Arc<BTreeMap<String, String>>,
        other: &BTreeMap<String, String>,
    ) -> Result<(), ServerError> {
        if self.params_in_sync(reported, other) {
            return Ok(());
        }
        // Boxed: a rare round trip whose future would otherwise be part of
        // every client task (see `Pool::checkout`).
        let result = Box::pin(self.sync_params_slow(reported, other)).await;
        if result.is_ok() {
            self.synced = Some((reported.clone(), self.params_version));
        } else {
            self.synced = None;
        }
        result
    }

    async fn sync_params_slow(
        &mut self,
        reported: &BTreeMap<String, String>,
        other: &BTreeMap<String, String>,
    ) -> Result<(), ServerError> {
        let mut sets: Vec<(&str, &str)> = Vec::new();
        for (k, v) in reported {
            if is_read_only_param(k) {
                continue;
            }
            if self.params.get(k) != Some(v) {
                sets.push((k, v));
            }
        }
        for (k, v) in other {
            if self.applied.get(k) != Some(v) {
                sets.push((k, v));
            }
        }
        let resets: Vec<String> = self
            .applied
            .keys()
            .filter(|k| !other.contains_key(*k))
            .cloned()
            .collect();
        if sets.is_empty() && resets.is_empty() {
            return Ok(());
        }
        let mut sql = String::new();
        for k in &resets {
            sql.push_str("RESET ");
            sql.push_str(&quote_ident(k));
            sql.push(';');
        }
        if !sets.is_empty() {
            sql.push_str("SELECT ");
            for (i, (k, v)) in sets.iter().enumerate() {
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str("pg_catalog.set_config(");
                sql.push_str(&quote_literal(k));
                sql.push(',');
                sql.push_str(&quote_literal(v));
                sql.push_str(",false)");
            }
        }
        // Its notices (`application_name` truncated, …) are what a client
        // logging in with these settings gets from Postgres.
        let mut notices = std::mem::take(&mut self.sync_notices);
        notices.clear();
        let mut out = BytesMut::new();
        frontend::query(&sql, &mut out)?;
        self.send(&out).await?;
        let result = self.read_reply(false, Some(&mut notices)).await.map(drop);
        self.sync_notices = notices;
        match &result {
            Ok(()) => self.applied = other.clone(),
            // We no longer know exactly what is set: the caller drops us.
            Err(_) => self.applied.clear(),
        }
        result
    }

    /// Marks the server's session state as gone after a reset query
    /// (`DISCARD ALL` drops settings and prepared statements).
    pub fn forget_applied(&mut self) {
        self.applied.clear();
        self.prepared.clear();
    }
}

/// The first column of a DataRow's body; `None` for NULL or no column.
fn first_column(mut row: &[u8]) -> Option<Vec<u8>> {
    if row.len() < 6 || row.get_i16() < 1 {
        return None;
    }
    let len = usize::try_from(row.get_i32()).ok()?;
    row.get(..len).map(<[u8]>::to_vec)
}

/// Every column of a DataRow body (`None` for NULL); stops at a malformed
/// column rather than trusting its length.
fn columns(mut row: &[u8]) -> Vec<Option<Vec<u8>>> {
    let mut out = Vec::new();
    if row.len() < 2 {
        return out;
    }
    let count = row.get_i16();
    for _ in 0..count {
        if row.len() < 4 {
            break;
        }
        let len = row.get_i32();
        let Ok(len) = usize::try_from(len) else {
            out.push(None);
            continue;
        };
        let Some(value) = row.get(..len) else { break };
        out.push(Some(value.to_vec()));
        row = &row[len..];
    }
    out
}

//! The life of one client past its login: the session's state, the
//! server it holds, and the clean-up that guarantees no half-done
//! transaction is ever left on a server that goes back to the pool. How a
//! client gets here is in `accept.rs`; the relay loop in `relay.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::expect::Expectations;
use super::prepared::Statements;
use super::startup::{LoginRequest, StartupError};
use crate::cancel::{AfterCancels, CancelHandle};
use crate::config::PoolMode;
use crate::net::Stream;
use crate::pool::{CheckoutError, Pool, PooledServer, Retired, SlowCheckout};
use crate::protocol::startup::parse_options;
use crate::protocol::{backend, sqlstate, FrameScanner, PgError};
use crate::server::{is_read_only_param, ServerError};
use crate::State;

/// What follows the ParameterStatus messages in a login's reply:
/// BackendKeyData (13 bytes) and ReadyForQuery (6).
const LOGIN_REPLY_TAIL: usize = 13 + 6;

/// Records a reported parameter value, copying the shared map only when
/// the value actually changes.
fn set_param(map: &mut Arc<BTreeMap<String, String>>, name: &str, value: &str) {
    if map.get(name).map(String::as_str) != Some(value) {
        Arc::make_mut(map).insert(name.to_string(), value.to_string());
    }
}

/// Why a session ended. The large variants are boxed: the relay's result
/// is part of every client task's future, and idle clients should not pay
/// for the rare case.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    Startup(Box<StartupError>),
    #[error("{0}")]
    Refused(Box<PgError>),
    #[error("client i/o error: {0}")]
    ClientIo(std::io::Error),
    #[error("client protocol error: {0}")]
    ClientProtocol(#[from] crate::protocol::ProtocolError),
    #[error("server connection lost: {0}")]
    ServerLost(Box<ServerError>),
}

impl From<StartupError> for SessionError {
    fn from(e: StartupError) -> Self {
        SessionError::Startup(Box::new(e))
    }
}

/// Where the client's current unit of work stands on its server.
#[derive(Debug, Default)]
pub(super) struct TxnState {
    /// Query, Sync and FunctionCall messages sent and not yet answered by
    /// ReadyForQuery.
    pub pending: u32,
    /// Extended-protocol messages sent since the last Sync: the server may
    /// hold an open implicit transaction, so it must stay with this client.
    pub unsynced: bool,
    /// The client is in COPY FROM STDIN: the server asked for its data and
    /// its CopyDone or CopyFail has not been sent yet (see `copy.rs`).
    pub copy_in: bool,
    /// The server reads COPY FROM STDIN data: from its CopyInResponse to
    /// the CommandComplete or ErrorResponse that ends the COPY.
    pub server_copy_in: bool,
    /// Bit `i`: the `i`-th of the `pending` messages is a Query (the others
    /// are Syncs and FunctionCalls), so a CopyInResponse tells whether the
    /// COPY's message is itself owed a ReadyForQuery.
    pub ready_queries: u32,
    /// CopyDone/CopyFail messages sent while no COPY was known to run: for
    /// each, how many of the `pending` messages were sent before it. Boxed:
    /// only clients that pipeline a COPY's data ever have one.
    pub copy_ends: Option<Box<super::copy::CopyEnds>>,
    /// Transaction status from the last ReadyForQuery.
    pub status: u8,
    /// When the current unit of work began (for the duration histogram).
    pub started: Option<Instant>,
    /// The server sent an ErrorResponse since its last ReadyForQuery.
    pub failed: bool,
    /// A reply said CREATE, DO or CALL since the server was last checked:
    /// its temporary schema is looked at before it goes back to the pool
    /// (see `temp_backstop.rs`).
    pub temp_check: bool,
}

impl TxnState {
    /// Nothing in flight and no transaction open: the server may go back.
    pub fn is_idle(&self) -> bool {
        self.pending == 0
            && !self.unsynced
            && !self.copy_in
            && self.status != b'T'
            && self.status != b'E'
    }
}

pub(super) struct Session {
    pub client: Stream,
    pub mode: PoolMode,
    pub pool: Arc<Pool>,
    pub state: Arc<State>,
    /// The client's view of reported parameters (what it was told with
    /// ParameterStatus), synced onto every server it lands on.
    pub reported: Arc<BTreeMap<String, String>>,
    /// `reported` as it was at login: what a `DISCARD ALL` (or RESET)
    /// returns to.
    pub login_params: Arc<BTreeMap<String, String>>,
    /// Unreported settings from the startup packet (lower-case names).
    pub other: BTreeMap<String, String>,
    pub cancel: CancelHandle,
    /// Bytes read from the client, not yet decided on.
    pub cbuf: BytesMut,
    /// Client bytes decided on, waiting to be written to the server.
    pub to_server: BytesMut,
    /// Bytes waiting to be written to the client.
    pub to_client: BytesMut,
    /// The server this client holds now, if any.
    pub server: Option<PooledServer>,
    pub txn: TxnState,
    pub cscan: FrameScanner,
    pub sscan: FrameScanner,
    pub max_message: usize,
    /// A FATAL from the server was forwarded; no second one is added.
    pub server_fatal_sent: bool,
    /// Transaction mode: the client's named statements.
    pub statements: Statements,
    /// Transaction mode: the client's unnamed statement.
    pub unnamed: super::unnamed::UnnamedStatement,
    /// Transaction mode: a Bind waits in `cbuf` until the server says the
    /// result shape of the statement it names (see `rewrite` in
    /// `extended.rs`); the client's messages are not read meanwhile.
    pub shape_wait: bool,
    /// Transaction mode: replies to swallow or synthesize, in order.
    pub expect: Expectations,
    /// Transaction mode with `session_state = "pin"`: why this client keeps
    /// its server until it disconnects.
    pub pinned: Option<String>,
    /// Transaction mode: this client's LISTEN subscriptions (created at its
    /// first LISTEN; dropping it unsubscribes). Boxed: most clients never
    /// listen, and unboxed it would add ~180 bytes to every client.
    pub listen: Option<Box<crate::listen::Subscriber>>,
    /// LISTEN/UNLISTEN issued inside the open transaction.
    pub pending_listens: crate::listen::PendingListens,
    /// Transaction mode: LISTEN statements sent with the extended protocol
    /// (created at the first one).
    pub local: Option<Box<super::listen_extended::LocalStatements>>,
    /// Transaction mode: the current Sync group, kept for a retry after its
    /// statement's result type changed.
    pub replay: Option<Box<super::replay::Replay>>,
    /// Tag of the last CommandComplete, while LISTENs wait for COMMIT.
    pub last_command_tag: Option<String>,
    /// The server this client holds was announced to the LISTEN hub.
    pub noted_sender: Option<crate::server::ServerKey>,
}

impl Session {
    /// Applies the startup parameters, then tells the client the parameter
    /// set, its cancel key, and that it is ready.
    pub(super) async fn login(&mut self, login: &LoginRequest) -> Result<(), PgError> {
        let template = self.pool.template_params().await.map_err(checkout_error)?;
        // Clients with default settings share the pool's map (copy on write).
        self.reported = template.clone();
        // `options` (`-c name=value`) is parsed first so that its settings
        // can be borrowed in the client's order below.
        let mut options = Vec::new();
        if let Some(v) = login.params.get("options") {
            options = parse_options(v).map_err(|e| {
                PgError::fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!("invalid options: {e}"),
                )
            })?;
        }
        // Known, writable parameters the client sets, under the names the
        // server reports them by, in the client's order.
        let mut settings: Vec<(&str, &str)> = Vec::new();
        let mut needs_server = false;
        let wanted = login.params.iter().flat_map(|(k, v)| {
            let opts: &[(String, String)] = if k == "options" { &options } else { &[] };
            let plain = (k != "options").then_some((k, v));
            plain
                .into_iter()
                .chain(opts.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        });
        for (k, v) in wanted {
            match template.keys().find(|t| t.eq_ignore_ascii_case(k)) {
                Some(name) if is_read_only_param(name) => {}
                Some(name) => {
                    if template.get(name).map(String::as_str) != Some(v) {
                        needs_server = true;
                    }
                    settings.push((name.as_str(), v));
                }
                None => {
                    needs_server = true;
                    self.other.insert(k.to_ascii_lowercase(), v.to_string());
                }
            }
        }
        // Settings a server already applied for an earlier client of this
        // pool (the application's previous connection) are known good, and
        // what the server reported for them is known: this client is told
        // the same without taking a server. Settings the template does not
        // report are applied at every checkout and are not remembered.
        let rememberable = needs_server && self.other.is_empty() && self.mode != PoolMode::Session;
        let settled = if rememberable {
            self.pool.settled_params(&settings)
        } else {
            None
        };
        let remembered = settled.is_some();
        if let Some(params) = settled {
            self.reported = params;
        } else {
            for (name, v) in &settings {
                set_param(&mut self.reported, name, v);
            }
            if needs_server || self.mode == PoolMode::Session {
                // Apply the settings once now, so a bad one fails the login
                // as it would on Postgres, and learn the server's normalized
                // values (`UTF8` for `utf8`).
                self.acquire_server().await?;
                if let Some(s) = self.server.as_mut() {
                    for (k, v) in s.server.params.iter() {
                        set_param(&mut self.reported, k, v);
                    }
                    if self.mode == PoolMode::Session {
                        // The client keeps this server for life: its key
                        // carries the server's pid, as Postgres's would.
                        self.cancel.adopt_pid(s.server.key.pid);
                    }
                    // After AuthenticationOk, before ParameterStatus: where
                    // Postgres puts the notices of the startup's settings.
                    for notice in s.server.sync_notices.drain(..) {
                        self.to_client.extend_from_slice(&notice);
                    }
                }
                if self.mode == PoolMode::Transaction {
                    self.release_server(None).await;
                }
            }
        }
        let shared = self.pool.share_params(&self.reported);
        self.reported = shared.map;
        self.login_params = self.reported.clone();
        if rememberable && !remembered {
            self.pool.remember_settled(&settings, self.reported.clone());
        }
        let out = &mut self.to_client;
        out.reserve(shared.status.len() + LOGIN_REPLY_TAIL);
        out.extend_from_slice(&shared.status);
        backend::backend_key_data(out, self.cancel.slot.pid(), self.cancel.slot.secret());
        backend::ready_for_query(out, b'I');
        self.txn.status = b'I';
        Ok(())
    }

    /// Borrows a server for this client and brings its settings in line.
    /// The common case (an idle server at once, its settings already the
    /// client's) runs without a nested future; waiting, connecting, health
    /// checks and applying settings are boxed, so their state is not part
    /// of every client task (a task is as large as its largest state).
    pub async fn acquire_server(&mut self) -> Result<(), PgError> {
        match self.acquire_server_now(Instant::now()) {
            Ok(()) => Ok(()),
            Err(attempt) => Box::pin(self.acquire_server_slow(attempt)).await,
        }
    }

    /// The common case of [`Session::acquire_server`], without awaiting,
    /// with the clock read by the caller.
    /// `Err` hands what the fast checkout got to
    /// [`Session::acquire_server_slow`].
    pub fn acquire_server_now(
        &mut self,
        now: Instant,
    ) -> Result<(), Result<PooledServer, SlowCheckout>> {
        // While it waits the client counts as `waiting` only (checkout
        // counts that), so the client states add up to the clients.
        self.pool.stats.clients_idle.dec();
        match self.pool.checkout_now(now) {
            Ok(pooled) => self.take_if_in_sync(pooled).map_err(Ok),
            Err(slow) => Err(Err(slow)),
        }
    }

    /// Takes `pooled` if its settings are already the client's; gives it
    /// back otherwise, to be synced by [`Session::acquire_server_slow`].
    pub(super) fn take_if_in_sync(&mut self, pooled: PooledServer) -> Result<(), PooledServer> {
        if !pooled.server.params_in_sync(&self.reported, &self.other) {
            return Err(pooled);
        }
        self.pool.stats.clients_active.inc();
        self.take_server(pooled);
        Ok(())
    }

    /// The error a client gets for a checkout that failed; the client is
    /// idle again.
    pub(super) fn checkout_failed(&self, e: CheckoutError) -> PgError {
        self.pool.stats.clients_idle.inc();
        checkout_error(e)
    }

    /// Waits for a server, connects, checks or syncs one, after
    /// [`Session::acquire_server_now`] could not.
    pub async fn acquire_server_slow(
        &mut self,
        attempt: Result<PooledServer, SlowCheckout>,
    ) -> Result<(), PgError> {
        let stats = &self.pool.stats;
        let mut pooled = match attempt {
            Ok(pooled) => pooled,
            Err(slow) => match self.pool.checkout_slow(slow).await {
                Ok(pooled) => pooled,
                Err(e) => return Err(self.checkout_failed(e)),
            },
        };
        stats.clients_active.inc();
        if let Err(e) = pooled.server.sync_params(&self.reported, &self.other).await {
            pooled.discard();
            self.pool.stats.clients_active.dec();
            self.pool.stats.clients_idle.inc();
            return Err(match e {
                ServerError::Query(f) => PgError::fatal(
                    leak_code(&f.code),
                    format!(
                        "pgharbor: cannot apply the session's settings: {}",
                        f.message
                    ),
                ),
                other => PgError::fatal(
                    sqlstate::CONNECTION_FAILURE,
                    format!("pgharbor: server connection lost while applying settings: {other}"),
                ),
            });
        }
        self.take_server(pooled);
        Ok(())
    }

    /// The client holds `pooled` from now on.
    fn take_server(&mut self, pooled: PooledServer) {
        self.cancel.slot.set_target(pooled.server.key);
        if self.state.metrics.listen_subscriptions.get() > 0 {
            // Someone listens: remember who holds this server, so a NOTIFY
            // it sends can carry the sending client's pid.
            self.state
                .listen
                .note_server_pid(&pooled.server.key, self.cancel.slot.pid());
            self.noted_sender = Some(pooled.server.key);
        }
        self.txn.status = pooled.server.status;
        self.server = Some(pooled);
    }

    /// Gives the server back: to the pool if it is clean, closed otherwise.
    /// Tells the LISTEN hub this client no longer holds its server.
    pub fn forget_sender(&mut self) {
        if let Some(key) = self.noted_sender.take() {
            self.state.listen.forget_server_pid(&key);
        }
    }

    /// `now`: the clock read at the end of the transaction, if it was.
    pub async fn release_server(&mut self, now: Option<Instant>) {
        self.hand_back_server(now, true).await;
    }

    /// Gives the server back to the pool, or closes it when `reusable` is
    /// false or it is not at rest.
    pub async fn hand_back_server(&mut self, now: Option<Instant>, reusable: bool) {
        if self.server.is_none() {
            return;
        }
        self.forget_sender();
        // Awaited while the server is still in `self.server`: kept out of
        // this future's state, which is part of every client task's.
        let cancels = self.cancel.slot.clear_target().await;
        let Some(pooled) = self.server.take() else {
            return;
        };
        // Before the client's next message is looked at: a Bind of its
        // unnamed statement must not pass unread to the next server.
        self.unnamed.here = false;
        self.shape_wait = false;
        self.pool.stats.clients_active.dec();
        self.pool.stats.clients_idle.inc();
        if reusable
            && cancels == AfterCancels::Reusable
            && self.txn.is_idle()
            && pooled.server.rbuf.is_empty()
            && self.sscan.at_boundary()
        {
            pooled.release(now.unwrap_or_else(Instant::now));
        } else {
            pooled.discard();
        }
        self.sscan = FrameScanner::default();
        self.expect.clear();
    }

    /// Clean-up when the client is gone or the session ends: a server still
    /// held is rolled back (or closed), never committed, never reused dirty.
    pub(super) async fn finish(&mut self) {
        let Some(mut pooled) = self.server.take() else {
            return;
        };
        self.forget_sender();
        let cancels = self.cancel.slot.clear_target().await;
        self.pool.stats.clients_active.dec();
        self.pool.stats.clients_idle.inc();
        let timeout = self
            .pool
            .settings()
            .server_connect_timeout
            .max(Duration::from_secs(2));
        let clean_boundary = pooled.server.rbuf.is_empty() && self.sscan.at_boundary();
        let t = &self.txn;
        let mid_query = !clean_boundary || t.pending > 0 || t.unsynced || t.copy_in;
        if mid_query {
            // Mid-query (or mid-COPY, or an unsynced implicit transaction
            // that a Sync would commit): cancel what runs and close; the
            // backend rolls back as it exits.
            crate::cancel::cancel_server(pooled.server.key).await;
        }
        let reusable = if mid_query || cancels == AfterCancels::Close {
            // Closed rather than reused: it is busy, or a cancel of ours
            // that was never confirmed may still land on it.
            false
        } else if t.status == b'T' || t.status == b'E' {
            let r = tokio::time::timeout(timeout, pooled.server.simple_query("ROLLBACK")).await;
            matches!(r, Ok(Ok(()))) && pooled.server.status == b'I'
        } else {
            true
        };
        let reusable = reusable && {
            let reset = &self.pool.settings().server_reset_query;
            // A client pinned or not yet checked may leave session state
            // (temporary objects) behind: reset, or closed without a reset.
            // A server whose temporary schema was used is closed: after a
            // reset its `pg_temp` still exists, which a new session's
            // errors about `pg_temp.x` would show.
            let dirty = self.pinned.is_some() || self.txn.temp_check;
            if dirty && super::temp_backstop::temp_schema_used(&mut pooled.server, timeout).await {
                false
            } else if (self.mode == PoolMode::Session || dirty) && !reset.is_empty() {
                let r = tokio::time::timeout(timeout, pooled.server.simple_query(reset)).await;
                pooled.server.forget_applied();
                matches!(r, Ok(Ok(()))) && pooled.server.status == b'I'
            } else {
                !dirty
            }
        };
        if reusable {
            pooled.release(Instant::now());
        } else {
            pooled.discard();
        }
    }
}

/// Settings errors keep the server's code when it names a client mistake.
fn leak_code(code: &str) -> &'static str {
    match code {
        "22023" => "22023",
        "42704" => "42704",
        "22P02" => "22P02",
        _ => sqlstate::CONNECTION_EXCEPTION,
    }
}

pub(super) fn checkout_error(e: CheckoutError) -> PgError {
    if let CheckoutError::Connect { source, .. } = &e {
        if let Some(hint) = source.login_hint() {
            let code = sqlstate::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION;
            return PgError::fatal(code, e.to_string()).with_hint(hint);
        }
    }
    match &e {
        CheckoutError::Timeout { .. } => {
            PgError::fatal(sqlstate::TOO_MANY_CONNECTIONS, e.to_string())
                .with_hint("raise pool_size or query_wait_timeout, or shorten transactions")
        }
        CheckoutError::Connect {
            source: ServerError::Login(f),
            ..
        } => {
            let code = if f.code == "3D000" {
                sqlstate::INVALID_CATALOG_NAME
            } else {
                sqlstate::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION
            };
            PgError::fatal(code, e.to_string())
        }
        CheckoutError::Connect { .. } => PgError::fatal(
            sqlstate::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
            e.to_string(),
        )
        .with_hint(
            "check that PostgreSQL is running and the [[databases]] host and port are right",
        ),
        CheckoutError::Closed(_) => PgError::fatal(sqlstate::ADMIN_SHUTDOWN, e.to_string()),
        CheckoutError::Retired(Retired::DatabaseRemoved(_)) => {
            PgError::fatal(sqlstate::INVALID_CATALOG_NAME, e.to_string())
        }
        CheckoutError::Retired(Retired::UserRemoved(_)) => {
            PgError::fatal(sqlstate::INVALID_AUTHORIZATION_SPECIFICATION, e.to_string())
        }
    }
}

//! The life of one client connection: handshake, authentication, login to a
//! pool, the relay, and the clean-up that guarantees no half-done transaction
//! is ever left on a server that goes back to the pool.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use super::expect::Expectations;
use super::prepared::Statements;
use super::startup::{self, Handshake, LoginRequest, StartupError};
use crate::admin::registry::ClientEntry;
use crate::cancel::{AfterCancels, CancelHandle};
use crate::config::PoolMode;
use crate::net::Stream;
use crate::pool::{CheckoutError, Pool, PooledServer, SlowCheckout};
use crate::protocol::startup::parse_options;
use crate::protocol::{backend, sqlstate, FrameScanner, PgError};
use crate::server::{is_read_only_param, ServerError};
use crate::State;

/// The whole startup (first packet to AuthenticationOk) must fit in this.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves one accepted connection to its end.
pub async fn serve(tcp: TcpStream, addr: SocketAddr, state: Arc<State>) {
    let _ = tcp.set_nodelay(true);
    let mut buf = BytesMut::new();
    let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
    // A snapshot: a reload during the handshake applies to the next client.
    let tls = state.tls().client.clone();
    let (mut stream, login) = match startup::handshake(tcp, &mut buf, &tls, deadline).await {
        Ok((_, Handshake::Cancel { pid, secret })) => {
            let outcome = state.cancel.handle(pid, &secret).await;
            tracing::info!(client = %addr, pid, outcome = outcome.label(), "cancel request");
            return;
        }
        Ok((stream, Handshake::Login(login))) => (stream, login),
        Err(startup::Refused {
            stream: Some(mut stream),
            error,
        }) => return refuse(&mut stream, addr, error).await,
        Err(startup::Refused {
            stream: None,
            error,
        }) => {
            if matches!(error, StartupError::Tls(_)) {
                state.metrics.client_tls_handshake_errors.inc();
            }
            tracing::info!(client = %addr, error = %error, "client refused");
            return;
        }
    };
    // Cancel connections never get here, so they do not count against
    // max_client_conn and cannot exhaust it.
    let Ok(permit) = state.client_permits.clone().try_acquire_owned() else {
        let max = state.config().proxy.max_client_conn;
        let e = PgError::fatal(
            sqlstate::TOO_MANY_CONNECTIONS,
            format!("sorry, too many clients already (max_client_conn = {max})"),
        )
        .with_hint("raise proxy.max_client_conn or use fewer client connections");
        return refuse(&mut stream, addr, StartupError::Refuse(e)).await;
    };
    state.metrics.clients_total.inc();
    let span = tracing::info_span!("client", client = %addr, user = %login.user, database = %login.database);
    async move {
        tracing::info!("client connected");
        let end_point = tls.end_point.clone();
        match run(stream, buf, addr, login, state.clone(), permit, end_point).await {
            // The rest of the client's life runs in a task of its own, so
            // an idle client holds only what the relay needs: this task's
            // future is sized by the startup's (authentication, timeouts,
            // the login request), and it ends here.
            Ok(Some(client)) => {
                let span = tracing::Span::current();
                state.tracker.spawn(client.run().instrument(span));
            }
            Ok(None) => log_end(Ok(())),
            Err(e) => log_end(Err(e)),
        }
    }
    .instrument(span)
    .await
}

fn log_end(result: Result<(), SessionError>) {
    match result {
        Ok(()) => tracing::info!("client disconnected"),
        Err(e) => tracing::info!(reason = %e, "client disconnected"),
    }
}

/// A client past its login, with what must live exactly as long as it.
struct LoggedIn {
    session: Session,
    /// Listed for SHOW CLIENTS until dropped.
    _listed: ClientEntry,
    /// Counts against max_client_conn until dropped.
    _permit: OwnedSemaphorePermit,
}

impl LoggedIn {
    /// The relay, then the clean-up.
    // An async block, not an async fn: an async fn's argument is stored in
    // its future twice, as argument and as local (1,728 bytes instead of
    // 1,192 here, per idle client).
    #[allow(clippy::manual_async_fn)]
    fn run(mut self) -> impl std::future::Future<Output = ()> + Send {
        async move {
            let result = self.session.relay().await;
            self.session.pool.stats.clients_idle.dec();
            // Logged before the clean-up, so the result is not kept across
            // its await (which would add its size to every client task).
            log_end(result);
            // Boxed, like the relay's rare paths (see `relay::Ending`).
            Box::pin(self.session.finish()).await;
            drop(self);
        }
    }
}

async fn refuse(stream: &mut Stream, addr: SocketAddr, e: StartupError) {
    let e = match e {
        StartupError::TimedOut => StartupError::Refuse(PgError::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            "pgharbor: startup timed out",
        )),
        e => e,
    };
    if let StartupError::Refuse(err) = e {
        tracing::info!(client = %addr, error = %err, "client refused");
        let mut out = BytesMut::new();
        err.encode(&mut out);
        let _ = startup::send(stream, &out).await;
        let _ = stream.shutdown().await;
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

async fn run(
    mut stream: Stream,
    mut buf: BytesMut,
    addr: SocketAddr,
    login: LoginRequest,
    state: Arc<State>,
    permit: OwnedSemaphorePermit,
    end_point: Option<Arc<[u8]>>,
) -> Result<Option<LoggedIn>, SessionError> {
    let user = state.users().get(&login.user);
    let auth = startup::authenticate(
        &mut stream,
        &mut buf,
        &login.user,
        user.as_deref(),
        end_point.as_ref(),
    );
    match tokio::time::timeout(STARTUP_TIMEOUT, auth).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let msg = e.to_string();
            refuse(&mut stream, addr, e).await;
            return Err(SessionError::Refused(Box::new(PgError::fatal(
                sqlstate::INVALID_PASSWORD,
                msg,
            ))));
        }
        Err(_) => return Ok(None),
    }
    let Some(user) = user else { return Ok(None) };
    let config = state.config();
    if login.database == "pgharbor" || login.database == "pgbouncer" {
        // Boxed: the console's future is large and would otherwise size
        // every client task.
        return Box::pin(crate::admin::serve(stream, buf, &login, state.clone()))
            .await
            .map(|()| None);
    }
    let Some(db) = config.database(&login.database) else {
        let e = PgError::fatal(
            sqlstate::INVALID_CATALOG_NAME,
            format!("database \"{}\" does not exist", login.database),
        )
        .with_hint("pgharbor serves only the databases listed in its [[databases]] config");
        refuse(&mut stream, addr, StartupError::Refuse(e.clone())).await;
        return Err(SessionError::Refused(Box::new(e)));
    };
    let pool = state
        .pools
        .get_or_create(db, &user.config, &config.pool, &state.tls().server);
    let cancel = state.cancel.register();
    let listed = (state.clients).register(
        &login,
        pool.key.clone(),
        addr,
        stream.local_addr().ok(),
        stream.tls_description(),
        &cancel.slot,
    );
    let mut session = Session {
        client: stream,
        mode: pool.settings.pool_mode,
        pool,
        state: state.clone(),
        reported: Arc::default(),
        other: BTreeMap::new(),
        cancel,
        cbuf: buf,
        to_server: BytesMut::new(),
        to_client: BytesMut::new(),
        server: None,
        txn: TxnState::default(),
        cscan: FrameScanner::with_limit(config.proxy.max_message_size),
        sscan: FrameScanner::default(),
        max_message: config.proxy.max_message_size,
        server_fatal_sent: false,
        statements: Statements::default(),
        expect: Expectations::default(),
        pinned: None,
        listen: None,
        pending_listens: Default::default(),
        local: None,
        replay: None,
        last_command_tag: None,
        noted_sender: None,
    };
    drop(config);
    if session.cbuf.is_empty() {
        // The startup buffer is not needed while the client is idle.
        session.cbuf = BytesMut::new();
    }
    session.pool.stats.clients_idle.inc();
    if let Err(e) = session.login(&login).await {
        session.pool.stats.clients_idle.dec();
        session.to_client.clear();
        e.encode(&mut session.to_client);
        let _ = startup::send(&mut session.client, &session.to_client).await;
        return Err(SessionError::Refused(Box::new(e)));
    }
    Ok(Some(LoggedIn {
        session,
        _listed: listed,
        _permit: permit,
    }))
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
    /// The server is in COPY FROM STDIN and waits for the client's data.
    pub copy_in: bool,
    /// Transaction status from the last ReadyForQuery.
    pub status: u8,
    /// When the current unit of work began (for the duration histogram).
    pub started: Option<Instant>,
    /// The server sent an ErrorResponse since its last ReadyForQuery.
    pub failed: bool,
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
    async fn login(&mut self, login: &LoginRequest) -> Result<(), PgError> {
        let template = self.pool.template_params().await.map_err(checkout_error)?;
        // Clients with default settings share the pool's map (copy on write).
        self.reported = template.clone();
        let mut wanted = Vec::new();
        for (k, v) in &login.params {
            if k == "options" {
                let opts = parse_options(v).map_err(|e| {
                    PgError::fatal(
                        sqlstate::PROTOCOL_VIOLATION,
                        format!("invalid options: {e}"),
                    )
                })?;
                wanted.extend(opts);
            } else {
                wanted.push((k.clone(), v.clone()));
            }
        }
        let mut needs_server = false;
        for (k, v) in wanted {
            match template.keys().find(|t| t.eq_ignore_ascii_case(&k)) {
                Some(name) if is_read_only_param(name) => {}
                Some(name) => {
                    if template.get(name) != Some(&v) {
                        needs_server = true;
                    }
                    let name = name.clone();
                    self.set_reported(name, v);
                }
                None => {
                    needs_server = true;
                    self.other.insert(k.to_ascii_lowercase(), v);
                }
            }
        }
        if needs_server || self.mode == PoolMode::Session {
            // Apply the settings once now, so a bad one fails the login as it
            // would on Postgres, and learn the server's normalized values
            // (`UTF8` for `utf8`).
            self.acquire_server().await?;
            if let Some(s) = self.server.as_ref() {
                let params: Vec<(String, String)> = s
                    .server
                    .params
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                for (k, v) in params {
                    self.set_reported(k, v);
                }
            }
            if self.mode == PoolMode::Transaction {
                self.release_server(None).await;
            }
        }
        self.reported = self.pool.share_params(std::mem::take(&mut self.reported));
        let out = &mut self.to_client;
        for (k, v) in self.reported.iter() {
            backend::parameter_status(out, k, v);
        }
        backend::backend_key_data(out, self.cancel.slot.pid, self.cancel.slot.secret());
        backend::ready_for_query(out, b'I');
        self.txn.status = b'I';
        Ok(())
    }

    /// Records a reported parameter value, copying the shared map only when
    /// the value actually changes.
    pub fn set_reported(&mut self, name: String, value: String) {
        if self.reported.get(&name) != Some(&value) {
            Arc::make_mut(&mut self.reported).insert(name, value);
        }
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
            Ok(pooled) if pooled.server.params_in_sync(&self.reported, &self.other) => {
                self.pool.stats.clients_active.inc();
                self.take_server(pooled);
                Ok(())
            }
            attempt => Err(attempt),
        }
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
            Err((permit, due)) => match self.pool.checkout_slow(permit, due).await {
                Ok(pooled) => pooled,
                Err(e) => {
                    self.pool.stats.clients_idle.inc();
                    return Err(checkout_error(e));
                }
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
                .note_server_pid(&pooled.server.key, self.cancel.slot.pid);
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
        self.pool.stats.clients_active.dec();
        self.pool.stats.clients_idle.inc();
        if cancels == AfterCancels::Reusable
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
    async fn finish(&mut self) {
        let Some(mut pooled) = self.server.take() else {
            return;
        };
        self.forget_sender();
        let cancels = self.cancel.slot.clear_target().await;
        self.pool.stats.clients_active.dec();
        self.pool.stats.clients_idle.inc();
        let timeout = self
            .pool
            .settings
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
            let reset = &self.pool.settings.server_reset_query;
            if (self.mode == PoolMode::Session || self.pinned.is_some()) && !reset.is_empty() {
                let r = tokio::time::timeout(timeout, pooled.server.simple_query(reset)).await;
                pooled.server.forget_applied();
                matches!(r, Ok(Ok(()))) && pooled.server.status == b'I'
            } else {
                true
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
    }
}

//! A client from its accepted socket to the relay: the handshake (TLS
//! included), authentication, the checks that may refuse it, and the login
//! to its pool. The relay and the clean-up after it are in `session.rs`.
//! A console login is handed back to the caller: the console sits above
//! the client layer.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use super::session::{Io, Session, SessionError};
use super::startup::{self, Handshake, LoginRequest, StartupError};
use crate::metrics::Metrics;
use crate::net::{Stream, TcpOptions, TcpSide};
use crate::protocol::{sqlstate, PgError};
use crate::state::clients::ClientEntry;
use crate::state::State;
use crate::users::UserEntry;

/// Serves one accepted connection to its end, in one task, unless it
/// logged in to the console: that client is returned, for the caller to
/// serve with the console ([`ConsoleLogin::serve_with`]).
/// `local` is the address the client connected to when the listener knows
/// it (bound to one address), else `None`, and the socket is asked.
pub fn serve(
    tcp: TcpStream,
    addr: SocketAddr,
    local: Option<SocketAddr>,
    state: Arc<State>,
) -> impl std::future::Future<Output = Option<Box<ConsoleLogin>>> + Send {
    // The startup's future is large (2.7 KB: TLS, authentication, the
    // timeouts) and boxed: it is freed at login, so an idle client's task
    // holds only what the relay needs. It is made here, outside the task's
    // future, which then holds its 8-byte pointer where an async fn would
    // keep its arguments (the socket and both addresses, about 100 bytes)
    // for the client's whole life. One task rather than a second one for
    // the relay saves a spawn per connection. The logged-in client (536 bytes) comes
    // boxed too: spawning the task, returning the client from the startup
    // and starting its relay then copy a pointer, not the client (a trust
    // login spent 1,400 of its 32,000 instructions on those copies).
    let startup = Box::pin(start(tcp, addr, local, state));
    async move {
        match startup.await? {
            (Ready::Relay(client), span) => {
                client.run().instrument(span).await;
                None
            }
            (Ready::Console(console), _) => Some(console),
        }
    }
}

/// A client past its authentication, ready for what it logged in to.
enum Ready {
    /// A database of the config: the relay.
    Relay(Box<LoggedIn>),
    /// Database `pgharbor` or `pgbouncer`: the console.
    Console(Box<ConsoleLogin>),
}

/// A client that logged in to the console, AuthenticationOk sent. The
/// console is above the client layer; its caller runs it with
/// [`ConsoleLogin::serve_with`].
pub struct ConsoleLogin {
    stream: Stream,
    /// What the client sent after its startup packet, if anything.
    buf: BytesMut,
    login: LoginRequest,
    state: Arc<State>,
    /// The client's span, which its log lines go to.
    span: tracing::Span,
    /// Counts against max_client_conn until dropped.
    _permit: OwnedSemaphorePermit,
}

impl ConsoleLogin {
    /// Runs `console` for this client in the client's span, holding its
    /// place in max_client_conn, and logs its end as a client's.
    pub async fn serve_with<F, Fut>(self: Box<Self>, console: F)
    where
        F: FnOnce(Stream, BytesMut, LoginRequest, Arc<State>) -> Fut,
        Fut: std::future::Future<Output = Result<(), SessionError>>,
    {
        let ConsoleLogin {
            stream,
            buf,
            login,
            state,
            span,
            _permit,
        } = *self;
        let metrics = state.metrics().clone();
        let served = console(stream, buf, login, state);
        let result = served.instrument(span.clone()).await;
        span.in_scope(|| log_end(&metrics, result));
    }
}

/// The handshake, authentication and login: the client ready for its
/// relay or the console, or `None` once it was answered (a cancel, a
/// refusal).
async fn start(
    tcp: TcpStream,
    addr: SocketAddr,
    local: Option<SocketAddr>,
    state: Arc<State>,
) -> Option<(Ready, tracing::Span)> {
    let login_timeout = set_up_socket(&tcp, &state);
    let mut buf = BytesMut::new();
    let deadline = tokio::time::Instant::now() + login_timeout;
    // A snapshot: a reload during the handshake applies to the next client.
    let tls = state.tls().client.clone();
    let (mut stream, login) = match startup::handshake(tcp, &mut buf, &tls, deadline).await {
        Ok((_, Handshake::Cancel { pid, secret })) => {
            let outcome = state.cancel().handle(pid, &secret).await;
            tracing::info!(client = %addr, pid, outcome = outcome.label(), "cancel request");
            return None;
        }
        Ok((stream, Handshake::Login(login))) => (stream, login),
        Err(startup::Refused {
            stream: Some(mut stream),
            error,
        }) => {
            refuse(&mut stream, addr, error).await;
            return None;
        }
        Err(startup::Refused {
            stream: None,
            error,
        }) => {
            if matches!(error, StartupError::Tls(_)) {
                state.metrics().client_tls_handshake_errors.inc();
            }
            tracing::info!(client = %addr, error = %error, "client refused");
            return None;
        }
    };
    // Cancel connections never get here, so they do not count against
    // max_client_conn and cannot exhaust it.
    let Ok(permit) = state.client_permits().clone().try_acquire_owned() else {
        let e = too_many_clients(state.config().proxy.max_client_conn);
        refuse(&mut stream, addr, StartupError::Refuse(e)).await;
        return None;
    };
    state.metrics().clients_total.inc();
    let span = tracing::info_span!("client", client = %addr, user = %login.user(), database = %login.database());
    let logged_in = async move {
        tracing::info!("client connected");
        let end_point = tls.end_point.clone();
        let greeted = Greeted {
            stream,
            buf,
            addr,
            local,
            login,
        };
        match run(greeted, &state, permit, end_point, deadline).await {
            Ok(Some(client)) => Some(client),
            Ok(None) => {
                log_end(state.metrics(), Ok(()));
                None
            }
            Err(e) => {
                log_end(state.metrics(), Err(e));
                None
            }
        }
    }
    .instrument(span.clone())
    .await?;
    Some((logged_in, span))
}

/// A new client's socket options, and how long its whole login (first
/// packet to AuthenticationOk) may take: read once, so that a reload
/// applies to the next client.
fn set_up_socket(tcp: &TcpStream, state: &State) -> std::time::Duration {
    let _ = tcp.set_nodelay(true);
    let config = state.config();
    let p = &config.proxy;
    let options = TcpOptions {
        keepalive: p.client_tcp_keepalive,
        user_timeout: p.client_tcp_user_timeout,
    };
    options.apply(tcp, TcpSide::Client);
    p.client_login_timeout
}

/// The refusal of a client past `max_client_conn` (`max`).
fn too_many_clients(max: usize) -> PgError {
    PgError::fatal(
        sqlstate::TOO_MANY_CONNECTIONS,
        format!("pgharbor: sorry, too many clients already (max_client_conn = {max})"),
    )
    .with_hint("raise proxy.max_client_conn or use fewer client connections")
}

/// The log line of a client's end; an error is counted by who failed.
fn log_end(metrics: &Metrics, result: Result<(), SessionError>) {
    match result {
        Ok(()) => tracing::info!("client disconnected"),
        Err(e) => {
            let side = e.side();
            metrics.client_error(side);
            tracing::info!(reason = %e, side = side.label(), "client disconnected");
        }
    }
}

/// A client past its login, with what must live exactly as long as it.
struct LoggedIn {
    session: Session,
    /// Listed for SHOW CLIENTS until dropped.
    _listed: ClientEntry,
    /// Counts against max_client_conn until dropped.
    _permit: OwnedSemaphorePermit,
    /// Counts against max_db/user_client_connections until dropped.
    _counted: Option<crate::pool::ClientCount>,
}

impl LoggedIn {
    /// The relay, then the clean-up.
    async fn run(mut self: Box<Self>) {
        let result = self.session.relay().await;
        // What the client sent last (Terminate, or half a message) is no
        // longer wanted; its read buffer goes back to the thread's stock
        // for the next client instead of to the allocator.
        self.session.io.cbuf.clear();
        super::buffers::give_back(&mut self.session.io.cbuf);
        self.session.pool.stats.clients_idle.dec();
        // Logged before the clean-up, so the result is not kept across its
        // await (which would add its size to every client task).
        log_end(self.session.state.metrics(), result);
        // Boxed, like the relay's rare paths (see `relay::Ending`).
        Box::pin(self.session.finish()).await;
        drop(self);
    }
}

async fn refuse(stream: &mut Stream, addr: SocketAddr, e: StartupError) {
    if let StartupError::TimedOut = e {
        log_login_timeout(addr);
        let _ = stream.shutdown().await;
        return;
    }
    if let StartupError::EarlyTerminate = e {
        tracing::debug!(client = %addr, "Terminate before the startup packet; closed");
    }
    if let StartupError::Refuse(err) = e {
        tracing::info!(client = %addr, error = %err, "client refused");
        let mut out = BytesMut::new();
        err.encode(&mut out);
        let _ = startup::send(stream, &out).await;
        let _ = stream.shutdown().await;
    }
}

/// A client past client_login_timeout is closed without a word, as
/// Postgres closes one past its authentication_timeout (in the startup
/// packet or the authentication exchange alike): the log says why.
fn log_login_timeout(addr: SocketAddr) {
    tracing::info!(
        client = %addr,
        "client did not log in within proxy.client_login_timeout; closed (raise it for slow clients)"
    );
}

/// A client through its handshake, not yet authenticated.
struct Greeted {
    stream: Stream,
    /// What it sent after its startup packet, if anything.
    buf: BytesMut,
    addr: SocketAddr,
    /// The address it connected to, if the listener knew it.
    local: Option<SocketAddr>,
    login: LoginRequest,
}

async fn run(
    greeted: Greeted,
    state: &Arc<State>,
    permit: OwnedSemaphorePermit,
    end_point: Option<Arc<[u8]>>,
    deadline: tokio::time::Instant,
) -> Result<Option<Ready>, SessionError> {
    let Greeted {
        mut stream,
        mut buf,
        addr,
        local,
        login,
    } = greeted;
    let auth = authenticate_client(
        state,
        &mut stream,
        &mut buf,
        &login,
        addr,
        end_point,
        deadline,
    );
    // AuthenticationOk, sent with whatever follows it.
    let Some((auth_ok, user)) = auth.await? else {
        return Ok(None);
    };
    let config = state.config();
    if matches!(login.database(), "pgharbor" | "pgbouncer") {
        let console = console_login(stream, buf, login, state, permit, &auth_ok).await?;
        return Ok(Some(console));
    }
    let Some(db) = config.database_for(login.database()) else {
        let e = PgError::fatal(
            sqlstate::INVALID_CATALOG_NAME,
            format!("database \"{}\" does not exist", login.database()),
        )
        .with_hint("pgharbor serves only the databases listed in its [[databases]] config");
        return Err(refuse_after_auth(&mut stream, &auth_ok, addr, e).await);
    };
    let pool = state
        .pools()
        .get_or_create(&db, &user, &config.pool, &state.tls().server);
    let counted = match state
        .pools()
        .limits
        .admit_client(&pool.key, &pool.settings())
    {
        Ok(counted) => counted,
        Err(e) => return Err(refuse_after_auth(&mut stream, &auth_ok, addr, e).await),
    };
    let cancel = state.cancel().register();
    let listed = (state.clients()).register(
        login.application_name(),
        pool.key.clone(),
        addr,
        local.or_else(|| stream.local_addr().ok()),
        stream.tls_description(),
        &cancel.slot,
    );
    // The login's ParameterStatus, BackendKeyData and ReadyForQuery follow
    // AuthenticationOk, in one write when the relay starts.
    let io = Io::new(buf, auth_ok, config.proxy.max_message_size);
    let mut session = Session::new(stream, pool, state.clone(), cancel, io);
    drop(config);
    log_in(&mut session, &login).await?;
    Ok(Some(Ready::Relay(Box::new(LoggedIn {
        session,
        _listed: listed,
        _permit: permit,
        _counted: counted,
    }))))
}

/// A login to the console: AuthenticationOk sent, the connection handed
/// to the caller, which runs the console above this layer.
async fn console_login(
    mut stream: Stream,
    buf: BytesMut,
    login: LoginRequest,
    state: &Arc<State>,
    permit: OwnedSemaphorePermit,
    auth_ok: &[u8],
) -> Result<Ready, SessionError> {
    startup::send(&mut stream, auth_ok)
        .await
        .map_err(SessionError::ClientIo)?;
    Ok(Ready::Console(Box::new(ConsoleLogin {
        stream,
        buf,
        login,
        state: state.clone(),
        // `run` runs in the client's span.
        span: tracing::Span::current(),
        _permit: permit,
    })))
}

/// Finds the client's user (`[[users]]`, else auth_query) and runs the
/// authentication its access rules ask for. `Some`: the AuthenticationOk
/// to send and the user; `None`: the client is gone or timed out.
async fn authenticate_client(
    state: &Arc<State>,
    stream: &mut Stream,
    buf: &mut BytesMut,
    login: &LoginRequest,
    addr: SocketAddr,
    end_point: Option<Arc<[u8]>>,
    deadline: tokio::time::Instant,
) -> Result<Option<(BytesMut, Arc<UserEntry>)>, SessionError> {
    let user = match state.users().get(login.user()) {
        Some(user) => Some(user),
        None => {
            let lookup =
                (state.auth_cache()).user(state.settings(), login.database(), login.user());
            tokio::time::timeout_at(deadline, lookup)
                .await
                .ok()
                .flatten()
        }
    };
    let (hba, allow_plaintext_password) = {
        let config = state.config();
        (
            config.hba.clone(),
            config.client_tls.allow_plaintext_password,
        )
    };
    let access = super::authenticate::Access {
        end_point: end_point.as_ref(),
        hba: hba.as_deref(),
        addr,
        allow_plaintext_password,
    };
    let auth = super::authenticate::authenticate(stream, buf, login, user.as_deref(), &access);
    match tokio::time::timeout_at(deadline, auth).await {
        Ok(Ok(auth_ok)) => Ok(user.map(|user| (auth_ok, user))),
        Ok(Err(e)) => {
            super::authenticate::count_failure(state, login, user.is_some(), &e);
            let msg = e.to_string();
            refuse(stream, addr, e).await;
            Err(SessionError::Refused(Box::new(PgError::fatal(
                sqlstate::INVALID_PASSWORD,
                msg,
            ))))
        }
        Err(_) => {
            log_login_timeout(addr);
            Ok(None)
        }
    }
}

/// Refuses an authenticated client: AuthenticationOk, then why it cannot
/// go on, as Postgres does.
async fn refuse_after_auth(
    stream: &mut Stream,
    auth_ok: &BytesMut,
    addr: SocketAddr,
    e: PgError,
) -> SessionError {
    let _ = startup::send(stream, auth_ok).await;
    refuse(stream, addr, StartupError::Refuse(e.clone())).await;
    SessionError::Refused(Box::new(e))
}

/// The client's login to its pool; a refusal is sent after its
/// AuthenticationOk.
async fn log_in(session: &mut Session, login: &LoginRequest) -> Result<(), SessionError> {
    if session.io.cbuf.is_empty() {
        // The startup buffer is not needed while the client is idle.
        session.io.cbuf = BytesMut::new();
    }
    session.pool.stats.clients_idle.inc();
    let auth_ok_len = session.io.to_client.len();
    if let Err(e) = session.login(login).await {
        session.pool.stats.clients_idle.dec();
        // AuthenticationOk stays: the client was authenticated, and learns
        // next why it cannot go on, as from Postgres.
        session.io.to_client.truncate(auth_ok_len);
        e.encode(&mut session.io.to_client);
        let _ = startup::send(&mut session.client, &session.io.to_client).await;
        return Err(SessionError::Refused(Box::new(e)));
    }
    Ok(())
}

/// Serves a client a binary upgrade handed over (see `handover.rs`): its
/// socket and the state the old process froze, taken over with its cancel
/// key and without a second login, then the relay as after a login.
pub async fn resume(
    frozen: crate::upgrade::FrozenClient,
    fd: std::os::fd::OwnedFd,
    state: Arc<State>,
) {
    let tcp = std::net::TcpStream::from(fd);
    let addr = tcp.peer_addr();
    let tcp = (tcp.set_nonblocking(true)).and_then(|()| TcpStream::from_std(tcp));
    let (Ok(addr), Ok(tcp)) = (addr, tcp) else {
        tracing::info!(user = %frozen.user, "a handed-over client left before it was resumed");
        return;
    };
    let span = tracing::info_span!("client", client = %addr, user = %frozen.user, database = %frozen.database);
    // Boxed, as a login is (see `serve`): freed once the client runs.
    let resumed = Box::pin(thaw(Stream::from(tcp), addr, frozen, state));
    let Some(client) = resumed.instrument(span.clone()).await else {
        return;
    };
    client.run().instrument(span).await;
}

/// What a resumed client counts against, checked as at a login.
struct Admitted {
    pool: Arc<crate::pool::Pool>,
    counted: Option<crate::pool::ClientCount>,
    permit: OwnedSemaphorePermit,
}

/// The checks a login makes, for a handed-over client: its user and
/// database still exist and the limits admit it.
async fn admit(
    state: &Arc<State>,
    frozen: &crate::upgrade::FrozenClient,
) -> Result<Admitted, PgError> {
    let user = match state.users().get(&frozen.user) {
        Some(user) => Some(user),
        None => {
            (state.auth_cache())
                .user(state.settings(), &frozen.database, &frozen.user)
                .await
        }
    };
    let Some(user) = user else {
        return Err(PgError::fatal(
            sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
            format!("pgharbor: user \"{}\" is no longer configured", frozen.user),
        ));
    };
    let config = state.config();
    let Some(db) = config.database_for(&frozen.database) else {
        return Err(PgError::fatal(
            sqlstate::INVALID_CATALOG_NAME,
            format!("database \"{}\" does not exist", frozen.database),
        ));
    };
    let pool = (state.pools()).get_or_create(&db, &user, &config.pool, &state.tls().server);
    drop(config);
    let counted = (state.pools().limits).admit_client(&pool.key, &pool.settings())?;
    let Ok(permit) = state.client_permits().clone().try_acquire_owned() else {
        return Err(too_many_clients(state.config().proxy.max_client_conn));
    };
    // The parameters clients are told come from the pool's first server.
    (pool.template_params().await).map_err(super::checkout::checkout_error)?;
    Ok(Admitted {
        pool,
        counted,
        permit,
    })
}

async fn thaw(
    mut stream: Stream,
    addr: SocketAddr,
    frozen: crate::upgrade::FrozenClient,
    state: Arc<State>,
) -> Option<Box<LoggedIn>> {
    let admitted = match admit(&state, &frozen).await {
        Ok(a) => a,
        Err(e) => {
            refuse(&mut stream, addr, StartupError::Refuse(e)).await;
            return None;
        }
    };
    let cancel = (state.cancel().register_key(frozen.pid, frozen.secret)).unwrap_or_else(|| {
        tracing::warn!(
            pid = frozen.pid,
            "cancel key taken here; the client's old key no longer cancels"
        );
        state.cancel().register()
    });
    let app = (frozen.login_params.iter())
        .find(|(k, _)| k == "application_name")
        .map_or("", |(_, v)| v.as_str());
    let login = LoginRequest::handed_over(&frozen.user, &frozen.database, app)?;
    let Admitted {
        pool,
        counted,
        permit,
    } = admitted;
    let local = frozen.local_addr.or_else(|| stream.local_addr().ok());
    let tls = stream.tls_description();
    let listed = (state.clients()).register(
        login.application_name(),
        pool.key.clone(),
        addr,
        local,
        tls,
        &cancel.slot,
    );
    let max_message = state.config().proxy.max_message_size;
    let io = Io::new(BytesMut::new(), BytesMut::new(), max_message);
    let mut session = Session::new(stream, pool, state, cancel, io);
    session.thaw(frozen).await;
    session.pool.stats.clients_idle.inc();
    tracing::info!("client resumed after the upgrade");
    Some(Box::new(LoggedIn {
        session,
        _listed: listed,
        _permit: permit,
        _counted: counted,
    }))
}

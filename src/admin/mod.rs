//! The admin console: database `pgharbor` (alias `pgbouncer`), for the users
//! in `proxy.admin_users`. It speaks the simple query protocol and answers
//! PgBouncer's commands with PgBouncer's column names, so psql, scripts and
//! exporters written for PgBouncer work.
//!
//! - `commands` parses a statement,
//! - `show` builds the SHOW result sets (the clients from
//!   `state::clients`, the servers from their pools, the keys from
//!   `config::keys`),
//! - this file runs one console session; the accept loop's task
//!   (`lib.rs`) sends it the clients that logged in to it.

mod commands;
mod show;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::startup::LoginRequest;
use crate::client::SessionError;
use crate::net::Stream;
use crate::pool::Pool;
use crate::protocol::frame::{read_cstr, split_message};
use crate::protocol::tag::{frontend, TxStatus};
use crate::protocol::{backend, sqlstate, PgError};
use crate::state::State;

pub use commands::{Command, Show};

/// Largest message the console accepts; commands are short.
const MAX_MESSAGE: usize = 1 << 20;
/// How often PAUSE looks whether the paused pools' servers came back.
const PAUSE_POLL: Duration = Duration::from_millis(20);

/// Serves one console client, after it authenticated (AuthenticationOk has
/// been sent). Non-admin users are refused with 42501.
pub async fn serve(
    mut stream: Stream,
    buf: BytesMut,
    login: LoginRequest,
    state: Arc<State>,
) -> Result<(), SessionError> {
    let is_admin = state
        .config()
        .proxy
        .admin_users
        .iter()
        .any(|u| u == login.user());
    if !is_admin {
        let e = PgError::fatal(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            format!(
                "pgharbor: user \"{}\" may not use the admin console",
                login.user()
            ),
        )
        .with_hint("add the user to proxy.admin_users, or connect to an application database");
        let mut out = BytesMut::new();
        e.encode(&mut out);
        let _ = crate::client::startup::send(&mut stream, &out).await;
        return Err(SessionError::Refused(Box::new(e)));
    }
    let cancel = state.cancel().register();
    let names = crate::pool::PoolKey {
        database: login.database().to_owned(),
        user: login.user().to_owned(),
    };
    let peer = stream.peer_addr().map_err(SessionError::ClientIo)?;
    let _listed = state.clients().register(
        login.application_name(),
        Arc::new(names),
        peer,
        stream.local_addr().ok(),
        stream.tls_description(),
        &cancel.slot,
    );
    let mut console = Console {
        stream,
        buf,
        out: BytesMut::new(),
        state,
        user: login.user().to_owned(),
        ext_failed: false,
    };
    greet(
        &mut console.out,
        &login,
        cancel.slot.pid(),
        cancel.slot.secret(),
    );
    console.run().await
}

/// ParameterStatus (fixed values, like PgBouncer's console), the cancel key
/// and the first ReadyForQuery.
fn greet(out: &mut BytesMut, login: &LoginRequest, pid: i32, secret: i32) {
    let app = login.params.get("application_name").unwrap_or("");
    let version = format!("{}/pgharbor", env!("CARGO_PKG_VERSION"));
    for (k, v) in [
        ("server_version", version.as_str()),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("IntervalStyle", "postgres"),
        ("TimeZone", "UTC"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("is_superuser", "off"),
        ("session_authorization", login.user()),
        ("application_name", app),
    ] {
        backend::parameter_status(out, k, v);
    }
    backend::backend_key_data(out, pid, secret);
    backend::ready_for_query(out, TxStatus::Idle.byte());
}

/// One console session.
struct Console {
    stream: Stream,
    /// Bytes read from the client, not yet handled.
    buf: BytesMut,
    /// Replies not yet written.
    out: BytesMut,
    state: Arc<State>,
    user: String,
    /// An extended-protocol message was refused; the rest up to Sync is
    /// skipped, as Postgres does after an error.
    ext_failed: bool,
}

/// What to do after a message.
enum Next {
    Continue,
    Close,
}

impl Console {
    async fn run(&mut self) -> Result<(), SessionError> {
        loop {
            loop {
                let msg = match split_message(&mut self.buf, MAX_MESSAGE) {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(e) => return self.fatal(PgError::protocol_violation(e)).await,
                };
                match self.message(&msg).await? {
                    Next::Continue => {}
                    Next::Close => {
                        self.flush().await?;
                        return Ok(());
                    }
                }
            }
            self.flush().await?;
            let read = tokio::select! {
                _ = self.state.shutdown().cancelled() => {
                    let e = PgError::fatal(sqlstate::ADMIN_SHUTDOWN, "pgharbor is shutting down");
                    return self.fatal(e).await;
                }
                r = self.stream.read_buf(&mut self.buf) => r,
            };
            match read {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(SessionError::ClientIo(e)),
            }
        }
    }

    async fn flush(&mut self) -> Result<(), SessionError> {
        if !self.out.is_empty() {
            crate::client::startup::send(&mut self.stream, &self.out)
                .await
                .map_err(SessionError::ClientIo)?;
            self.out.clear();
        }
        Ok(())
    }

    async fn fatal(&mut self, e: PgError) -> Result<(), SessionError> {
        e.encode(&mut self.out);
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
        Err(SessionError::Refused(Box::new(e)))
    }

    async fn message(&mut self, msg: &[u8]) -> Result<Next, SessionError> {
        let body = &msg[5..];
        match msg[0] {
            frontend::QUERY => {
                let text = match read_cstr(body) {
                    Ok((t, _)) => t.to_owned(),
                    Err(_) => String::from_utf8_lossy(body)
                        .trim_end_matches('\0')
                        .to_owned(),
                };
                self.query(&text).await?;
                backend::ready_for_query(&mut self.out, TxStatus::Idle.byte());
            }
            frontend::TERMINATE => return Ok(Next::Close),
            // Extended protocol: refuse once, skip to Sync.
            frontend::PARSE
            | frontend::BIND
            | frontend::DESCRIBE
            | frontend::EXECUTE
            | frontend::CLOSE => {
                if !self.ext_failed {
                    self.ext_failed = true;
                    PgError::error(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "pgharbor: the admin console speaks only the simple query protocol",
                    )
                    .with_hint(
                        "use psql, or your driver's simple_query / execute-without-parameters",
                    )
                    .encode(&mut self.out);
                }
            }
            frontend::FLUSH => {}
            frontend::SYNC => {
                self.ext_failed = false;
                backend::ready_for_query(&mut self.out, TxStatus::Idle.byte());
            }
            frontend::FUNCTION_CALL => {
                PgError::error(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "pgharbor: function calls are not supported on the admin console",
                )
                .encode(&mut self.out);
                backend::ready_for_query(&mut self.out, TxStatus::Idle.byte());
            }
            // Stray COPY data: there is no COPY here; ignore it.
            frontend::COPY_DATA | frontend::COPY_DONE | frontend::COPY_FAIL => {}
            tag => {
                let e = PgError::fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!(
                        "pgharbor: unexpected message type '{}' on the admin console",
                        char::from(tag).escape_default()
                    ),
                );
                self.fatal(e).await?;
                return Ok(Next::Close);
            }
        }
        Ok(Next::Continue)
    }

    /// Runs each statement of a Query; stops at the first error.
    async fn query(&mut self, text: &str) -> Result<(), SessionError> {
        let stmts = commands::split_statements(text);
        if stmts.is_empty() {
            backend::empty_query_response(&mut self.out);
            return Ok(());
        }
        for stmt in stmts {
            let result = match commands::parse(stmt) {
                Ok(cmd) => {
                    tracing::info!(admin = %self.user, command = ?cmd, "admin command");
                    self.execute(cmd).await?
                }
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                tracing::info!(admin = %self.user, statement = stmt, error = %e, "admin command failed");
                e.encode(&mut self.out);
                break;
            }
        }
        Ok(())
    }

    /// The outer error is the connection's, the inner one the command's.
    async fn execute(&mut self, cmd: Command) -> Result<Result<(), PgError>, SessionError> {
        let state = self.state.clone();
        let tag = match cmd {
            Command::Show(what) => {
                show::show(&state, what, &mut self.out);
                return Ok(Ok(()));
            }
            Command::Pause(db) => {
                let pools = match pools_of(&state, db.as_deref()) {
                    Ok(p) => p,
                    Err(e) => return Ok(Err(e)),
                };
                state.pools().pause(db.as_deref());
                self.wait_released(&pools).await?;
                "PAUSE"
            }
            Command::Resume(db) => {
                if let Err(e) = pools_of(&state, db.as_deref()) {
                    return Ok(Err(e));
                }
                state.pools().resume(db.as_deref());
                "RESUME"
            }
            Command::Reconnect(db) => {
                match pools_of(&state, db.as_deref()) {
                    Ok(pools) => pools.iter().for_each(|p| {
                        p.reconnect();
                    }),
                    Err(e) => return Ok(Err(e)),
                }
                "RECONNECT"
            }
            Command::Reload => match state.reload_from_file() {
                Ok(reloaded) => {
                    if !reloaded.needs_restart.is_empty() {
                        let keys = reloaded.needs_restart.join(", ");
                        PgError::notice(
                            sqlstate::SUCCESSFUL_COMPLETION,
                            format!("pgharbor: these settings need a restart and keep their running value: {keys}"),
                        )
                        .encode(&mut self.out);
                    }
                    "RELOAD"
                }
                Err(e) => {
                    return Ok(Err(PgError::error(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        format!("pgharbor: reload failed, keeping the running configuration: {e}"),
                    )))
                }
            },
            Command::Shutdown => {
                tracing::info!(admin = %self.user, "SHUTDOWN from the admin console");
                state.shutdown().cancel();
                "SHUTDOWN"
            }
            Command::Upgrade => {
                tracing::info!(admin = %self.user, "UPGRADE from the admin console");
                if let Err(e) = state.upgrade().await {
                    return Ok(Err(PgError::error(
                        sqlstate::SYSTEM_ERROR,
                        format!("pgharbor: upgrade failed, this process keeps serving: {e}"),
                    )));
                }
                "UPGRADE"
            }
        };
        backend::command_complete(&mut self.out, tag);
        Ok(Ok(()))
    }

    /// PAUSE returns, like PgBouncer's, once every server of the paused
    /// pools is back in the pool (running transactions finished). It waits
    /// as long as that takes; the admin may cancel by disconnecting, and
    /// shutdown ends the wait.
    async fn wait_released(&mut self, pools: &[Arc<Pool>]) -> Result<(), SessionError> {
        self.flush().await?;
        loop {
            let busy: i64 = pools
                .iter()
                .map(|p| p.stats.servers_active.get() + p.stats.servers_login.get())
                .sum();
            if busy <= 0 {
                return Ok(());
            }
            tokio::select! {
                _ = tokio::time::sleep(PAUSE_POLL) => {}
                _ = self.state.shutdown().cancelled() => return Ok(()),
                r = self.stream.read_buf(&mut self.buf) => match r {
                    // Later messages wait in `buf` until PAUSE is done.
                    Ok(n) if n > 0 => {}
                    Ok(_) => return Err(SessionError::ClientIo(std::io::ErrorKind::UnexpectedEof.into())),
                    Err(e) => return Err(SessionError::ClientIo(e)),
                },
            }
        }
    }
}

/// The pools of `db` (every pool when `None`). A configured database with
/// no pool yet is not an error: it has nothing to act on.
fn pools_of(state: &State, db: Option<&str>) -> Result<Vec<Arc<Pool>>, PgError> {
    let all = state.pools().all();
    let Some(db) = db else { return Ok(all) };
    let pools: Vec<_> = all.into_iter().filter(|p| p.key.database == db).collect();
    if pools.is_empty() && state.config().database(db).is_none() {
        return Err(PgError::error(
            sqlstate::INVALID_CATALOG_NAME,
            format!("pgharbor: no such database: {db}"),
        )
        .with_hint("SHOW DATABASES lists the configured databases"));
    }
    Ok(pools)
}

//! Taking a server for a client: the common case (an idle server at once,
//! its settings already the client's) without a nested future; waiting in
//! line, connecting, health checks and applying settings boxed apart, so
//! that their state is not part of every client's task (a task is as large
//! as its largest state).

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use super::session::{Session, SessionError};
use crate::pool::{CheckoutError, InLine, Permit, PooledServer, Retired, SlowCheckout, WaitEvent};
use crate::protocol::{sqlstate, PgError};
use crate::server::ServerError;

/// [`Session::finish_checkout`], boxed; `Some` ends the session.
type FinishingCheckout<'a> =
    Pin<Box<dyn Future<Output = Option<Result<(), SessionError>>> + Send + 'a>>;

impl Session {
    /// Borrows a server for this client and brings its settings in line.
    /// The common case (an idle server at once, its settings already the
    /// client's) runs without a nested future; waiting, connecting, health
    /// checks and applying settings are boxed, so their state is not part
    /// of every client task (a task is as large as its largest state).
    pub(super) async fn acquire_server(&mut self) -> Result<(), PgError> {
        match self.acquire_server_now(Instant::now()) {
            Ok(()) => Ok(()),
            Err(attempt) => Box::pin(self.acquire_server_slow(attempt)).await,
        }
    }

    /// The common case of [`Session::acquire_server`], without awaiting,
    /// with the clock read by the caller.
    /// `Err` hands what the fast checkout got to
    /// [`Session::acquire_server_slow`].
    pub(super) fn acquire_server_now(
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
    pub(super) async fn acquire_server_slow(
        &mut self,
        attempt: Result<PooledServer, SlowCheckout>,
    ) -> Result<(), PgError> {
        let mut pooled = match attempt {
            Ok(pooled) => pooled,
            Err(slow) => {
                let checkout = match slow {
                    SlowCheckout::Wait(line) => match self.wait_in(line).await {
                        Ok((permit, _)) => {
                            let slow = SlowCheckout::Permit(permit, None);
                            self.pool.checkout_slow(slow).await
                        }
                        Err(e) => Err(e),
                    },
                    slow => self.pool.checkout_slow(slow).await,
                };
                checkout.map_err(|e| self.checkout_failed(e))?
            }
        };
        self.pool.stats.clients_active.inc();
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
        self.cancel.slot.set_target(pooled.server.cancel_target());
        if self.state.metrics().listen_subscriptions.get() > 0 {
            // Someone listens: remember who holds this server, so a NOTIFY
            // it sends can carry the sending client's pid.
            self.state
                .listen()
                .note_server_pid(&pooled.server.key, self.cancel.slot.pid());
            self.listening.noted_sender = Some(pooled.server.key);
        }
        self.txn.status = pooled.server.status;
        // Its readiness was last asked for by another client.
        self.io.armed.server = false;
        self.server = Some(pooled);
    }

    /// Borrows a server if the client has none and one is free now;
    /// otherwise the rest of the checkout to await, whose `Some` ends the
    /// session. A plain function with the rest boxed: the awaiting
    /// caller's future, part of every client task, then holds a pointer
    /// rather than the checkout's state (awaited in place, at the two
    /// places that take a server, it made every client's task 384 bytes
    /// larger: 1,192 against 808).
    pub(super) fn ensure_server(&mut self) -> Option<FinishingCheckout<'_>> {
        if self.server.is_some() {
            return None;
        }
        // One clock reading for the checkout and the transaction's start.
        let now = Instant::now();
        match self.acquire_server_now(now) {
            Ok(()) => {
                self.txn.started.get_or_insert(now);
                None
            }
            Err(attempt) => Some(Box::pin(self.finish_checkout(now, attempt))),
        }
    }

    /// Finishes a checkout [`Session::ensure_server`] began at `now`;
    /// `Some` ends the session. The wait in line, the common case once
    /// clients outnumber servers, is awaited here, and the server it brings
    /// is taken at once when idle, fit and in sync. Connecting, health
    /// checks and settings are boxed apart, so that their state is not
    /// part of this future, boxed once per wait.
    async fn finish_checkout(
        &mut self,
        now: Instant,
        attempt: Result<PooledServer, SlowCheckout>,
    ) -> Option<Result<(), SessionError>> {
        let attempt = match attempt {
            Err(SlowCheckout::Wait(line)) => match self.wait_in(line).await {
                Ok((permit, then)) => self.pool.lend_now(permit, then),
                Err(e) => {
                    let e = self.checkout_failed(e);
                    return Some(self.send_fatal(e).await);
                }
            },
            other => other,
        };
        let attempt = match attempt {
            Ok(pooled) => match self.take_if_in_sync(pooled) {
                Ok(()) => {
                    self.txn.started.get_or_insert(now);
                    return None;
                }
                Err(pooled) => Ok(pooled),
            },
            other => other,
        };
        Box::pin(self.checkout_slow_path(now, attempt)).await
    }

    /// Waits in `line` for a server, shown as `waiting` by SHOW CLIENTS
    /// meanwhile, and told so after `query_wait_notify`.
    async fn wait_in(&mut self, mut line: InLine) -> Result<(Permit, Instant), CheckoutError> {
        self.cancel.slot.set_waiting(true);
        let waited = loop {
            match std::future::poll_fn(|cx| line.poll_event(cx)).await {
                WaitEvent::NoticeDue => self.tell_still_waiting(),
                WaitEvent::Done(waited) => break waited,
            }
        };
        self.cancel.slot.set_waiting(false);
        waited
    }

    /// The NOTICE of `query_wait_notify`: the client's request is queued,
    /// not lost. Sent as far as the socket takes it now; the rest goes
    /// before the reply.
    fn tell_still_waiting(&mut self) {
        let settings = self.pool.settings();
        let notice = PgError::notice(
            sqlstate::SUCCESSFUL_COMPLETION,
            format!(
                "pgharbor: no server connection is free in pool {} ({} of {} in use); \
                 the query waits for one, up to query_wait_timeout ({})",
                self.pool.key,
                self.pool.in_use(),
                settings.pool_size,
                humantime::format_duration(settings.query_wait_timeout),
            ),
        );
        drop(settings);
        notice.encode(&mut self.io.to_client);
        let _ = self.flush_client();
    }

    async fn checkout_slow_path(
        &mut self,
        now: Instant,
        attempt: Result<PooledServer, SlowCheckout>,
    ) -> Option<Result<(), SessionError>> {
        match self.acquire_server_slow(attempt).await {
            Ok(()) => {
                self.txn.started.get_or_insert(now);
                None
            }
            Err(e) => Some(self.send_fatal(e).await),
        }
    }
}

/// Settings errors keep the server's code when it names a client mistake.
fn leak_code(code: &str) -> &'static str {
    match code {
        sqlstate::INVALID_PARAMETER_VALUE => sqlstate::INVALID_PARAMETER_VALUE,
        sqlstate::UNDEFINED_OBJECT => sqlstate::UNDEFINED_OBJECT,
        sqlstate::INVALID_TEXT_REPRESENTATION => sqlstate::INVALID_TEXT_REPRESENTATION,
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
            let code = if f.code == sqlstate::INVALID_CATALOG_NAME {
                sqlstate::INVALID_CATALOG_NAME
            } else {
                sqlstate::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION
            };
            PgError::fatal(code, e.to_string())
        }
        CheckoutError::Connect {
            source: ServerError::NoMatchingServer { .. },
            ..
        } => PgError::fatal(
            sqlstate::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
            e.to_string(),
        )
        .with_hint(
            "a failover may be under way (no standby promoted yet); otherwise the database's \
             host list has no server of the kind target_session_attrs asks for",
        ),
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

//! The relay loop: client bytes to the server, server bytes to the client,
//! with the pinning decisions made per message tag. The server-side half
//! (scanning the server's replies, release at the end of a transaction) is in
//! `server_replies.rs`.
//!
//! Both sockets are driven through readiness (`readable`/`writable` plus
//! non-blocking reads and writes), so reading and writing in both directions
//! proceed together: a client pipelining a large batch can never deadlock
//! against a server that is busy sending results. Buffers are allocated only
//! while there is traffic, so an idle client costs a socket and a task.

use std::pin::Pin;
use std::time::Duration;

use super::buffers::{try_fill, try_flush};
use super::route::Flow;
use super::session::{Ending, Session, SessionError};
use super::timeouts::Passed;
use super::wait::{Event, Wait, Wants};
use crate::config::PoolMode;
use crate::protocol::{sqlstate, PgError};

/// Stop reading from a side while this much waits to be written to the other.
const HIGH_WATER: usize = 256 * 1024;

/// What a turn of the relay leaves to do after an event.
enum Turn {
    /// Wait for the next event.
    Next,
    /// Read and act on what the server sent.
    ReadServer,
    /// The client closed its connection.
    ClientLeft,
    /// End the session with this FATAL.
    Fatal(Box<PgError>),
    /// A binary upgrade: move the client to the new process.
    HandOver,
    /// The query ran past `query_timeout`: cancel it (`timeouts.rs`).
    CancelQuery,
    /// The cancelled query did not end: close its server, end the session.
    QueryStuck,
    /// The transaction ran past `transaction_timeout`: end the session.
    TransactionTimeout(Box<PgError>),
}

impl Session {
    fn at_safe_point(&self) -> bool {
        match self.mode {
            PoolMode::Transaction if self.txn.pinned.is_some() => self.txn.is_idle(),
            PoolMode::Transaction => self.server.is_none(),
            PoolMode::Session => self.txn.is_idle(),
        }
    }

    /// Runs until the client leaves, breaks the protocol, or shutdown.
    pub(super) async fn relay(&mut self) -> Result<(), SessionError> {
        // One future for the whole session: building (and dropping) a
        // cancellation future on every turn of the loop takes the token's
        // lock each time.
        let shutdown = self.state.shutdown().cancelled_owned();
        tokio::pin!(shutdown);
        self.flush_client()?;
        // One timer for the session's idle timeouts, made when first needed
        // and moved at each turn, rather than one per turn.
        let mut idle_timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
        let mut shutdown_armed = false;
        loop {
            let replay_armed = self.ext.replay.as_ref().is_some_and(|r| r.armed);
            let reading = !replay_armed && !self.ext.shape_wait;
            if !self.io.cbuf.is_empty() && self.io.to_server.len() < HIGH_WATER && reading {
                if let Flow::End(end) = self.process_client_input().await {
                    return end;
                }
            }
            let idle_timeout = self.arm_idle_timer(&mut idle_timer);
            let wants = self.wants(replay_armed, idle_timeout);
            let ev = Wait {
                wants,
                client: &self.client,
                server: self.server.as_ref().map(|p| &p.server.stream),
                listen: self.listening.listen.as_deref(),
                shutdown: shutdown.as_mut(),
                shutdown_armed: &mut shutdown_armed,
                idle_timer: idle_timer.as_mut().map(|t| t.as_mut()),
                listen_wait: None,
                cancelled: self.state.shutdown(),
                armed: &mut self.io.armed,
            }
            .await?;
            match self.on_event(ev)? {
                Turn::Next => {}
                Turn::ReadServer => {
                    if let Some(end) = self.on_server_readable().await {
                        return end;
                    }
                }
                Turn::ClientLeft => return Ok(()),
                Turn::Fatal(e) => return self.send_fatal(*e).await,
                Turn::HandOver => return self.hand_over().await,
                Turn::CancelQuery => {
                    if let Some(end) = Box::pin(self.cancel_slow_query()).await {
                        return end;
                    }
                }
                Turn::QueryStuck => return self.query_stuck().await,
                Turn::TransactionTimeout(e) => {
                    let whole = self.io.sscan.at_boundary();
                    return self.end_at_deadline(*e, whole).await;
                }
            }
        }
    }

    /// What this turn of the relay waits for.
    fn wants(&self, replay_armed: bool, idle_timeout: bool) -> Wants {
        let server_unsent = (self.server.as_ref()).is_some_and(|p| p.server.stream.has_unsent());
        Wants {
            client_write: !self.io.to_client.is_empty() || self.client.has_unsent(),
            server_read: self.io.to_client.len() < HIGH_WATER,
            server_write: !self.io.to_server.is_empty() || server_unsent,
            client_read: self.io.to_server.len() < HIGH_WATER && !replay_armed,
            shutdown: self.at_safe_point(),
            // As Postgres: only between transactions, never in the middle
            // of a command's replies (what the transaction itself notified
            // comes before its ReadyForQuery, `deliver_before_ready`).
            notify: self.listening.listen.is_some()
                && self.io.sscan.at_boundary()
                && !self.listening.pending_listens.holds_delivery()
                && self.io.to_client.len() < HIGH_WATER
                && (self.server.is_none() || self.txn.is_idle()),
            idle_timeout,
        }
    }

    /// Acts on what the wait brought; a server's reply is left to
    /// `on_server_readable`, which may await.
    fn on_event(&mut self, ev: Event) -> Result<Turn, SessionError> {
        match ev {
            Event::Shutdown if self.state.handover().is_open() => Ok(Turn::HandOver),
            Event::Shutdown => Ok(Turn::Fatal(Box::new(PgError::fatal(
                sqlstate::ADMIN_SHUTDOWN,
                "pgharbor is shutting down; reconnect to another instance",
            )))),
            Event::IdleTimeout => Ok(match self.passed_deadline() {
                None => Turn::Fatal(Box::new(self.idle_timeout_error())),
                Some(Passed::Query) => Turn::CancelQuery,
                Some(Passed::QueryStuck) => Turn::QueryStuck,
                Some(Passed::Transaction(e)) => Turn::TransactionTimeout(e),
            }),
            Event::ClientWritable => self.flush_client().map(|()| Turn::Next),
            Event::Notify => {
                if let Some(sub) = self.listening.listen.as_mut() {
                    sub.drain_into(&mut self.io.to_client);
                    if let Some(e) = sub.take_fatal() {
                        return Ok(Turn::Fatal(Box::new(e)));
                    }
                }
                self.flush_client().map(|()| Turn::Next)
            }
            Event::ServerWritable => self.flush_server().map(|()| Turn::Next),
            Event::ClientReadable => Ok(match self.read_client()? {
                true => Turn::Next,
                false => Turn::ClientLeft,
            }),
            Event::ServerReadable => Ok(Turn::ReadServer),
        }
    }

    /// Reads what the client sent; `false` at the end of its stream.
    fn read_client(&mut self) -> Result<bool, SessionError> {
        let n_before = self.io.cbuf.len();
        self.io.armed.client = false;
        let open = try_fill(&mut self.client, &mut self.io.cbuf).map_err(SessionError::ClientIo)?;
        let n = self.io.cbuf.len() - n_before;
        if n > 0 {
            self.pool.stats.bytes_received.inc_by(n as u64);
        }
        Ok(open)
    }

    /// The FATAL for the idle timeout that applies now.
    fn idle_timeout_error(&self) -> PgError {
        if self.server.is_none() {
            PgError::fatal(
                sqlstate::IDLE_SESSION_TIMEOUT,
                "pgharbor: closing idle client connection (client_idle_timeout)",
            )
        } else {
            PgError::fatal(
                sqlstate::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
                "pgharbor: terminating connection due to idle-in-transaction timeout (idle_transaction_timeout)",
            )
        }
    }

    /// Sets the idle timer for this turn's wait, if a timeout applies
    /// (`client_idle_timeout` with no server held, `idle_transaction_timeout`
    /// inside a transaction with nothing in flight). Read from the pool's
    /// settings at each turn rather than kept: what the relay keeps across
    /// its wait is part of every idle client's task.
    ///
    /// With `query_timeout` or `transaction_timeout` on, the same timer
    /// serves their deadlines too (`timeouts.rs`); while both are off,
    /// they cost this one load and branch.
    fn arm_idle_timer(&mut self, timer: &mut Option<Pin<Box<tokio::time::Sleep>>>) -> bool {
        let settings = self.pool.hot();
        let timeout = if self.server.is_none() {
            settings.client_idle_timeout()
        } else if self.txn.pending == 0 && self.txn.status.in_block() {
            settings.idle_transaction_timeout()
        } else {
            Duration::ZERO
        };
        if settings.deadlines() {
            let idle = (!timeout.is_zero()).then_some(timeout);
            return self.arm_deadlines(timer, idle);
        }
        if timeout.is_zero() {
            return false;
        }
        let at = tokio::time::Instant::now() + timeout;
        match timer.as_mut() {
            Some(t) => t.as_mut().reset(at),
            None => *timer = Some(Box::pin(tokio::time::sleep_until(at))),
        }
        true
    }

    pub(super) fn flush_server(&mut self) -> Result<(), SessionError> {
        if let Some(p) = self.server.as_mut() {
            if let Err(e) = try_flush(&mut p.server.stream, &mut self.io.to_server) {
                return Err(SessionError::ServerLost(Box::new(e.into())));
            }
        }
        Ok(())
    }

    pub(super) fn flush_client(&mut self) -> Result<(), SessionError> {
        let before = self.io.to_client.len();
        let r = try_flush(&mut self.client, &mut self.io.to_client).map_err(SessionError::ClientIo);
        let sent = before - self.io.to_client.len();
        if sent > 0 {
            self.pool.stats.bytes_sent.inc_by(sent as u64);
        }
        r
    }

    /// Sends a FATAL error and ends the session.
    pub(super) fn send_fatal(&mut self, e: PgError) -> Ending<'_> {
        Box::pin(async move {
            e.encode(&mut self.io.to_client);
            let _ = super::startup::send(&mut self.client, &self.io.to_client).await;
            self.io.to_client.clear();
            Err(SessionError::Refused(Box::new(e)))
        })
    }
}

//! `query_timeout` and `transaction_timeout`: the relay's one timer (the
//! idle timer of `relay.rs`) set to the earliest deadline that applies,
//! and what happens when one passes.
//!
//! Nothing here runs while both keys are 0: the relay asks
//! [`HotSettings::deadlines`](crate::pool::HotSettings::deadlines) (one
//! load and a branch per turn) and keeps no state. When one is set, each
//! turn notes where the client's work stands (a query started, answered,
//! a transaction begun or ended) and moves the timer only when the
//! earliest deadline changed: one timer per client, reset, never made
//! per query.
//!
//! A query past `query_timeout` is cancelled through the client's own
//! cancel slot, as a CancelRequest from the client would be: the forward
//! is counted in flight, and the relay waits for the server to confirm it
//! before it reads the client's next message, so the signal can end the
//! slow query or nothing (see `cancel/mod.rs`); in transaction mode the
//! server goes back only after the forward ended. The client gets
//! Postgres's own 57014. A query still running `CANCEL_GRACE` (5 s) after its
//! cancel (or whose cancel could not be confirmed) has its server closed,
//! and the client ends with 08006.
//!
//! A transaction past `transaction_timeout` ends the client as Postgres
//! 17's `transaction_timeout` does (`postgres.c`: FATAL, ERRCODE
//! 25P04 "terminating connection due to transaction timeout"; Postgres 15,
//! which the tests run, has no such setting, so the code and severity
//! follow its documentation). The session's `finish` then cancels a
//! running query and closes its server, or rolls an idle transaction
//! back: never committed, never lent with the transaction open.

use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::session::{Ending, Session, SessionError};
use crate::protocol::{sqlstate, PgError};

/// Which deadline passed.
pub(super) enum Passed {
    /// The query ran past `query_timeout`: cancel it.
    Query,
    /// Its cancel did not end it.
    QueryStuck,
    Transaction(Box<PgError>),
}

impl Session {
    /// [`Session::arm_idle_timer`] with `query_timeout` or
    /// `transaction_timeout` on: the timer is set to the earliest of the
    /// deadlines and the idle timeout (`idle`, from now).
    #[inline(never)]
    pub(super) fn arm_deadlines(
        &mut self,
        timer: &mut Option<Pin<Box<Sleep>>>,
        idle: Option<Duration>,
    ) -> bool {
        let now = Instant::now();
        let hot = self.pool.hot();
        let (qt, tt) = (hot.query_timeout(), hot.transaction_timeout());
        let d = self.deadlines.get_or_insert_with(Default::default);
        d.observe(&self.txn, self.server.is_some(), now);
        let due = [d.query_due(qt), d.txn_due(tt), idle.map(|i| now + i)]
            .into_iter()
            .flatten()
            .min();
        let Some(due) = due else {
            return false;
        };
        match timer.as_mut() {
            Some(t) if d.armed == Some(due) && !t.is_elapsed() => {}
            Some(t) => t.as_mut().reset(due),
            None => *timer = Some(Box::pin(tokio::time::sleep_until(due))),
        }
        d.armed = Some(due);
        true
    }

    /// The timer went off: which deadline passed, if one of the two did
    /// (`None`: the idle timeout).
    pub(super) fn passed_deadline(&mut self) -> Option<Passed> {
        let now = Instant::now();
        let hot = self.pool.hot();
        let (qt, tt) = (hot.query_timeout(), hot.transaction_timeout());
        let d = self.deadlines.as_deref_mut()?;
        // Set again at the next turn, whatever it finds.
        d.armed = None;
        if let Some((_, since)) = d.txn.filter(|_| d.txn_due(tt).is_some_and(|t| t <= now)) {
            self.pool.stats.transaction_timeouts.inc();
            let open = now.saturating_duration_since(since);
            tracing::warn!(
                pool = %self.pool.key,
                pid = self.cancel.slot.pid(),
                open_ms = open.as_millis() as u64,
                timeout = ?tt,
                "transaction open longer than transaction_timeout; ending the client"
            );
            // As Postgres 17: FATAL, 25P04 (ERRCODE_TRANSACTION_TIMEOUT).
            let e = PgError::fatal(
                sqlstate::TRANSACTION_TIMEOUT,
                format!("pgharbor: terminating connection due to transaction_timeout ({tt:?}); the transaction was rolled back"),
            )
            .with_hint("shorten the transaction, or raise transaction_timeout");
            return Some(Passed::Transaction(Box::new(e)));
        }
        match d.query_due(qt) {
            Some(t) if t <= now && d.cancelled.is_some() => Some(Passed::QueryStuck),
            Some(t) if t <= now => Some(Passed::Query),
            _ => None,
        }
    }

    /// Cancels the query that ran past `query_timeout`, and waits for the
    /// server to confirm the cancel before the relay goes on. A cancel
    /// that was sent and never confirmed may land later, on another query:
    /// the server is then closed at once (`Some`: the session ends).
    /// Boxed by its caller: a rare path kept out of the relay's future.
    pub(super) async fn cancel_slow_query(&mut self) -> Option<Result<(), SessionError>> {
        let timeout = self.pool.hot().query_timeout();
        let ran = (self.deadlines.as_deref())
            .and_then(|d| d.query)
            .map(|(_, since)| since.elapsed());
        self.pool.stats.query_timeouts.inc();
        tracing::warn!(
            pool = %self.pool.key,
            pid = self.cancel.slot.pid(),
            ran_ms = ran.map_or(0, |r| r.as_millis() as u64),
            ?timeout,
            "query running longer than query_timeout; cancelling it"
        );
        let slot = self.cancel.slot.clone();
        let sent = self.state.cancel().cancel_target_of(&slot).await;
        if let Some(d) = self.deadlines.as_deref_mut() {
            d.cancelled = Some(Instant::now());
        }
        match sent {
            Some(Err(crate::server::cancel::ForwardError::Unconfirmed(_))) => {
                Some(self.query_stuck().await)
            }
            _ => None,
        }
    }

    /// The query went on past its cancel (or the cancel was never
    /// confirmed): its server is closed, and the client ended with 08006.
    pub(super) fn query_stuck(&mut self) -> Ending<'_> {
        Box::pin(async move {
            let timeout = self.pool.hot().query_timeout();
            tracing::warn!(
                pool = %self.pool.key,
                pid = self.cancel.slot.pid(),
                ?timeout,
                "query did not end after its query_timeout cancel; closing its server"
            );
            let whole = self.io.sscan.at_boundary();
            self.hand_back_server(None, false).await;
            let e = PgError::fatal(
                sqlstate::CONNECTION_FAILURE,
                format!("pgharbor: query_timeout ({timeout:?}) passed and the server did not end the query after its cancel; the server connection was closed and any open transaction rolled back"),
            )
            .with_hint("reconnect and retry; check the server and the network to it");
            self.end_at_deadline(e, whole).await
        })
    }

    /// Ends the session with `e`, sent when `whole` (what the client got
    /// of the server's replies ends at a message's end), not in the middle
    /// of one of the server's messages (a long row passing through), where
    /// it would read as part of that message: then the connection just
    /// closes. The session's `finish` deals with the server.
    pub(super) fn end_at_deadline(&mut self, e: PgError, whole: bool) -> Ending<'_> {
        if whole {
            return self.send_fatal(e);
        }
        Box::pin(async move {
            let _ = super::startup::send(&mut self.client, &self.io.to_client).await;
            self.io.to_client.clear();
            Err(SessionError::Refused(Box::new(e)))
        })
    }
}

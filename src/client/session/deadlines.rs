//! The clocks of `query_timeout` and `transaction_timeout` for one
//! client: where its work stood at the relay's last turn, and when each
//! deadline passes. What the relay does with them is in `timeouts.rs`.

use std::time::Duration;

use tokio::time::Instant;

use super::TxnState;

/// How long a cancelled query may take to end before its server is
/// closed: the cancel's own bound, and a margin for the server to answer.
const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// Where the client's work stood at the last turn, for the deadlines.
#[derive(Default)]
pub(in crate::client) struct Deadlines {
    /// The query running now: the client's count of ReadyForQuery
    /// messages when it began (the next one ends it), and when.
    pub(in crate::client) query: Option<(u32, Instant)>,
    /// When the running query's cancel was sent.
    pub(in crate::client) cancelled: Option<Instant>,
    /// The open transaction: its `TxnState::started` (which a new
    /// transaction changes), and when the relay first saw it open.
    pub(in crate::client) txn: Option<(Option<std::time::Instant>, Instant)>,
    /// The deadline the timer is set to.
    pub(in crate::client) armed: Option<Instant>,
}

impl Deadlines {
    /// Notes where the work stands at `now`: a query or transaction
    /// seen for the first time starts its clock.
    pub(in crate::client) fn observe(&mut self, t: &TxnState, held: bool, now: Instant) {
        // An extended-protocol group runs once its Sync is sent: before
        // that the server may be waiting for the client's next message.
        let running = held && (t.pending > 0 || t.copy_in);
        self.query = match self.query {
            Some((readies, since)) if running && readies == t.readies => Some((readies, since)),
            _ => {
                self.cancelled = None;
                running.then_some((t.readies, now))
            }
        };
        let open = held && !t.is_idle();
        self.txn = match self.txn {
            Some((started, since)) if open && started == t.started => Some((started, since)),
            _ => open.then_some((t.started, now)),
        };
    }

    /// When the query's deadline passes: its timeout, or once cancelled,
    /// the grace after the cancel.
    pub(in crate::client) fn query_due(&self, timeout: Duration) -> Option<Instant> {
        let (_, since) = self.query?;
        match self.cancelled {
            Some(at) => Some(at + CANCEL_GRACE),
            None if timeout.is_zero() => None,
            None => Some(since + timeout),
        }
    }

    pub(in crate::client) fn txn_due(&self, timeout: Duration) -> Option<Instant> {
        let (_, since) = self.txn?;
        (!timeout.is_zero()).then(|| since + timeout)
    }
}

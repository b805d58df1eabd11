//! The COPY sub-protocol in the count of owed ReadyForQuery messages.
//!
//! While the server reads COPY FROM STDIN data (from its CopyInResponse to
//! the client's CopyDone or CopyFail), Postgres ignores Sync and Flush: a
//! Sync read then is owed no ReadyForQuery. Drivers send a COPY's
//! Bind/Execute/Sync together and the data after the CopyInResponse
//! (tokio-postgres, libpq in extended mode), so the relay has counted the
//! Sync before it learns that a COPY began: the Syncs counted after the
//! COPY's message, up to the client's CopyDone or CopyFail, are taken back
//! when the CopyInResponse arrives, and those sent while the COPY still runs
//! on both sides are not counted.
//!
//! An error ends the COPY on the server (it then skips to the next Sync in
//! the extended protocol, and discards the CopyData still coming): Syncs the
//! client sends after pgharbor saw the error are counted again. Which of the
//! Syncs sent between the failing row and that moment the server read as
//! COPY data cannot be known from outside; drivers send none there.
//!
//! COPY TO STDOUT needs nothing: the server reads no client message while it
//! sends CopyOutResponse, CopyData and CopyDone. COPY BOTH (CopyBothResponse)
//! exists only on replication connections, which are not pooled.

use std::collections::VecDeque;

use super::TxnState;

/// CopyDone/CopyFail messages remembered ahead of their CopyInResponse:
/// more than any client pipelines; further ones are not tracked.
const MAX_COPY_ENDS: usize = 16;

/// For each CopyDone/CopyFail sent while no COPY was known to run, how
/// many of the owed messages were sent before it.
#[derive(Debug, Default)]
pub(in crate::client) struct CopyEnds(VecDeque<u32>);

impl TxnState {
    /// The server will read a Sync or Flush sent now as part of COPY data
    /// and ignore it: it owes it nothing, and the bookkeeping skips it.
    #[inline]
    pub(crate) fn copy_ignores(&self) -> bool {
        self.copy_in && self.server_copy_in
    }

    /// A Sync, FunctionCall or Query (`query`) goes to the server: its
    /// ReadyForQuery is owed.
    #[inline]
    pub(crate) fn ready_sent(&mut self, query: bool) {
        if query && self.pending < u32::BITS {
            self.ready_queries |= 1 << self.pending;
        }
        self.pending += 1;
        self.unsynced = false;
    }

    /// A ReadyForQuery came: the oldest owed one.
    #[inline]
    pub(crate) fn ready_answered(&mut self) {
        self.pending = self.pending.saturating_sub(1);
        self.readies = self.readies.wrapping_add(1);
        self.ready_queries >>= 1;
        if let Some(CopyEnds(ends)) = self.copy_ends.as_deref_mut() {
            // A copy end sent before every message still owed lies behind
            // the server now; the others have one message less before them.
            ends.retain(|&e| e > 0);
            ends.iter_mut().for_each(|e| *e -= 1);
            if ends.is_empty() {
                self.copy_ends = None;
            }
        }
    }

    /// The client sends CopyDone or CopyFail.
    pub(crate) fn copy_end_sent(&mut self) {
        if self.copy_in {
            self.copy_in = false;
            return;
        }
        // Sent ahead of the server's CopyInResponse (or with no COPY at
        // all, which the server ignores): where it lies tells which Syncs
        // the COPY will read.
        let pending = self.pending;
        let CopyEnds(ends) = self.copy_ends.get_or_insert_with(Default::default).as_mut();
        if ends.len() < MAX_COPY_ENDS {
            ends.push_back(pending);
        }
    }

    /// The server sent CopyInResponse for the oldest message it has not
    /// finished (a Query, or an Execute before its Sync). Returns how many
    /// of the owed messages it will read as COPY data: the Syncs sent after
    /// that message up to the client's CopyDone or CopyFail, or up to now
    /// if the client has not sent one yet (it is then in the COPY, and its
    /// Syncs are not counted until it ends it). They are owed nothing now.
    pub(crate) fn copy_in_started(&mut self) -> u32 {
        self.server_copy_in = true;
        // 1 when the COPY's message is a Query: it is itself owed a
        // ReadyForQuery, and the Syncs read as data come after it.
        let query = self.ready_queries & 1;
        let end = loop {
            match self.copy_ends.as_deref_mut().and_then(|e| e.0.pop_front()) {
                // Sent before the COPY's Query: it ended nothing.
                Some(e) if e < query => continue,
                other => break other,
            }
        };
        let ignored = match end {
            Some(e) => e - query,
            None => {
                self.copy_in = true;
                self.pending.saturating_sub(query)
            }
        }
        .min(self.pending.saturating_sub(query));
        self.pending -= ignored;
        let kept_low = self.ready_queries & query;
        let above = self.ready_queries.checked_shr(query + ignored).unwrap_or(0);
        self.ready_queries = kept_low | above.checked_shl(query).unwrap_or(0);
        if let Some(CopyEnds(ends)) = self.copy_ends.as_deref_mut() {
            ends.iter_mut().for_each(|e| *e = e.saturating_sub(ignored));
            if ends.is_empty() {
                self.copy_ends = None;
            }
        }
        if query == 0 && self.pending == 0 {
            // The COPY's Execute waits for a Sync that is yet to come.
            self.unsynced = true;
        }
        ignored
    }

    /// The server's COPY FROM STDIN ended: CommandComplete (`completed`) or
    /// ErrorResponse. After an error the client may still be sending data
    /// (`copy_in` stays until its CopyDone or CopyFail, so the server stays
    /// with it), but the server reads no more of it as COPY data.
    pub(crate) fn copy_in_ended(&mut self, completed: bool) {
        self.server_copy_in = false;
        if completed {
            // The server read the client's copy end, wherever it was.
            self.copy_in = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::tag::TxStatus;

    fn txn() -> TxnState {
        TxnState {
            status: TxStatus::Idle,
            ..TxnState::default()
        }
    }

    #[test]
    fn a_sync_sent_with_the_copys_execute_is_taken_back() {
        // tokio-postgres: Bind/Execute/Sync, then data after CopyInResponse.
        let mut t = txn();
        t.unsynced = true;
        t.ready_sent(false);
        assert_eq!(t.copy_in_started(), 1);
        assert_eq!(t.pending, 0);
        assert!(t.unsynced && t.copy_in && t.copy_ignores());
        t.copy_end_sent();
        assert!(!t.copy_ignores());
        t.ready_sent(false);
        t.copy_in_ended(true);
        t.ready_answered();
        assert!(t.is_idle());
    }

    #[test]
    fn a_pipelined_copy_takes_back_only_the_syncs_before_its_copy_done() {
        // Bind/Execute/Sync/CopyData/CopyDone/Sync/Close/Sync in one write.
        let mut t = txn();
        t.ready_sent(false);
        t.copy_end_sent();
        t.ready_sent(false);
        t.ready_sent(false);
        assert_eq!(t.copy_in_started(), 1);
        assert_eq!(t.pending, 2);
        assert!(!t.copy_in && !t.unsynced);
        t.copy_in_ended(true);
        t.ready_answered();
        t.ready_answered();
        assert!(t.is_idle());
        assert!(t.copy_ends.is_none());
    }

    #[test]
    fn a_query_copy_keeps_its_own_ready_for_query() {
        let mut t = txn();
        t.ready_sent(true);
        assert_eq!(t.copy_in_started(), 0);
        assert_eq!(t.pending, 1);
        // A Sync or Flush sent during the COPY is not counted.
        assert!(t.copy_ignores());
        t.copy_end_sent();
        t.copy_in_ended(true);
        t.ready_answered();
        assert!(t.is_idle());
        // Pipelined: Query, Sync (read as data), CopyDone, Query.
        t.ready_sent(true);
        t.ready_sent(false);
        t.copy_end_sent();
        t.ready_sent(true);
        assert_eq!(t.copy_in_started(), 1);
        assert_eq!(t.pending, 2);
        assert_eq!(t.ready_queries, 0b11, "both remaining are Queries");
    }

    #[test]
    fn an_error_ends_the_copy_and_later_syncs_count_again() {
        let mut t = txn();
        t.ready_sent(false);
        t.copy_in_started();
        t.copy_in_ended(false);
        assert!(
            t.copy_in && !t.copy_ignores(),
            "the server stays till CopyFail"
        );
        assert!(!t.is_idle());
        t.copy_end_sent();
        assert!(t.copy_ends.is_none(), "the client's own copy end");
        t.ready_sent(false);
        t.ready_answered();
        assert!(t.is_idle());
    }

    #[test]
    fn a_copy_end_the_server_ignored_is_forgotten() {
        // A COPY that failed before CopyInResponse, its data pipelined.
        let mut t = txn();
        t.ready_sent(false);
        t.copy_end_sent();
        t.ready_sent(false);
        t.ready_answered();
        assert!(t.copy_ends.is_some());
        t.ready_answered();
        assert!(t.copy_ends.is_none());
        // A later COPY is not misled by it.
        t.ready_sent(false);
        assert_eq!(t.copy_in_started(), 1);
    }
}

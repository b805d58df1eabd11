//! Which client messages the relay reads whole before it routes them
//! (`route.rs`), and which message types a client may send at all.

use crate::protocol::tag::frontend;

/// Message types a client may send after login.
pub(super) fn is_frontend_tag(tag: u8) -> bool {
    matches!(
        tag,
        frontend::QUERY
            | frontend::PARSE
            | frontend::BIND
            | frontend::EXECUTE
            | frontend::DESCRIBE
            | frontend::CLOSE
            | frontend::FLUSH
            | frontend::SYNC
            | frontend::FUNCTION_CALL
            | frontend::COPY_DATA
            | frontend::COPY_DONE
            | frontend::COPY_FAIL
            | frontend::TERMINATE
            | frontend::PASSWORD
    )
}

/// Which client messages the relay must see whole before it routes them;
/// the others pass as they arrive, read no further than their header.
#[derive(Clone, Copy)]
pub(super) struct WholeMessages {
    pub(super) transaction_mode: bool,
    /// No server is held: Sync and Flush are answered here.
    pub(super) no_server: bool,
    /// Messages are dropped up to Sync (see [`Route::Skip`]).
    pub(super) skipping: bool,
    /// A Bind or Describe may name a statement pgharbor renamed or
    /// answers for: the client has named statements or LISTEN statements,
    /// or its unnamed statement was parsed on another server (`unnamed.rs`),
    /// or a Close of one it had may yet be skipped (then it still has it).
    /// Also while a Bind may bind a statement that notifies, or bind
    /// again a portal that does (`session/notify_portals.rs`).
    /// Without, it passes as sent (drivers that use only the unnamed
    /// statement: pgbench -M extended, libpq's PQexecParams).
    pub(super) names: bool,
    /// An Execute may name a LISTEN portal, or a portal that notifies.
    pub(super) local_portals: bool,
}

impl WholeMessages {
    pub(super) fn wanted(self, tag: u8) -> bool {
        if !self.transaction_mode {
            // In session mode a Query is read whole only for the DROP
            // DATABASE retry (`replay.rs`).
            return matches!(tag, frontend::TERMINATE | frontend::QUERY);
        }
        match tag {
            frontend::TERMINATE | frontend::PARSE | frontend::CLOSE | frontend::QUERY => true,
            frontend::BIND | frontend::DESCRIBE => self.names,
            frontend::SYNC => self.no_server || self.skipping,
            frontend::FLUSH => self.no_server,
            // Copy messages with no server held belong to no COPY.
            frontend::COPY_DATA | frontend::COPY_DONE | frontend::COPY_FAIL => self.no_server,
            frontend::EXECUTE => self.local_portals,
            _ => false,
        }
    }
}

//! The client's unnamed statement in transaction mode.
//!
//! On Postgres the unnamed statement belongs to the session: it lives
//! until the next unnamed Parse, a Close of it, or a simple Query, which
//! destroys it. In transaction mode the server a client holds may carry
//! another client's unnamed statement, so a Bind or Describe of "" is
//! looked at whole whenever the client's own unnamed statement was not
//! parsed on the server it holds now: with none, pgharbor gives Postgres's
//! 26000 itself; with one from an earlier server, it prepares it again on
//! this one first. A driver that parses "" before each Bind (pgbench
//! -M extended, libpq's PQexecParams) binds in the same hold, so its Binds
//! pass as sent.
//!
//! Every unnamed Parse's reply is followed (`Expectations`), so that
//! pgharbor knows its outcome as Postgres does: a ParseComplete
//! makes it the statement on the server held now; an error leaves none
//! (Postgres drops the previous unnamed statement before it parses a new
//! one); a Parse the server skips after an earlier error of its Sync
//! group changes nothing, so what the statement was before comes back.
//! Each change is one event with its own generation, so an outcome that
//! comes after later changes undoes only what is still its own, and the
//! snapshot a later Parse took of it (`Expectations::patch_unnamed`).
//! Known limit: an unnamed Parse that pgharbor rewrote (a DEALLOCATE,
//! DISCARD or EXECUTE in its text) is taken as parsed once answered.

use bytes::BytesMut;

use crate::protocol::tag::frontend;
use crate::protocol::{sqlstate, PgError};

/// What pgharbor knows of the client's unnamed statement.
#[derive(Debug, Default, Clone)]
pub(super) struct UnnamedStatement {
    /// The client has an unnamed statement (as Postgres would).
    pub exists: bool,
    /// It was parsed on the server the client holds now (cleared when
    /// the server is released).
    pub here: bool,
    /// The notifications running it sends, read from its text when it was
    /// parsed while some client listened (`session/notify_portals.rs`).
    pub notify: Option<Box<crate::listen::NotifyTemplate>>,
    /// The client's last unnamed Parse, whole, to prepare it again on
    /// another server. Reused: no allocation per Parse after the first
    /// (unless a longer text comes).
    parse: BytesMut,
    /// The event (a Parse, a Parse again, a destruction) that made it
    /// what it is: an outcome reported for an older one is stale.
    generation: u32,
    /// Events so far. Never restored with a snapshot, so that a
    /// generation names one event.
    events: u32,
}

impl UnnamedStatement {
    /// An unnamed Parse (`msg`, whole), which sends `notify`, goes to the
    /// server held now; its generation.
    #[inline]
    pub(super) fn parsed(
        &mut self,
        msg: &[u8],
        notify: Option<Box<crate::listen::NotifyTemplate>>,
    ) -> u32 {
        self.notify = notify;
        self.parse.clear();
        self.parse.extend_from_slice(msg);
        self.exists = true;
        self.here = true;
        self.next_event()
    }

    #[inline]
    fn next_event(&mut self) -> u32 {
        self.events = self.events.wrapping_add(1);
        self.generation = self.events;
        self.generation
    }

    /// The event that made it what it is.
    pub(super) fn generation(&self) -> u32 {
        self.generation
    }

    /// Its Parse was sent again to the server held now. `settled`: the
    /// Parse cannot be skipped; otherwise a Bind of it is looked at
    /// until then (see `Undo::unnamed`). Its generation.
    pub(super) fn prepared_again(&mut self, settled: bool) -> u32 {
        self.here = settled;
        self.next_event()
    }

    /// The server answered the Parse `generation` with ParseComplete: the
    /// statement is on the server held now. `false` when it changed since
    /// (a later Parse's snapshot is then what to correct).
    #[inline]
    pub(super) fn confirmed(&mut self, generation: u32) -> bool {
        if self.generation != generation {
            return false;
        }
        self.here = true;
        true
    }

    /// The Parse `generation` failed: with `injected` (pgharbor prepared
    /// it again) the client still has it, as on Postgres, but this server
    /// does not; otherwise Postgres dropped it. `false` when it changed
    /// since (a later Parse's snapshot is then what to correct).
    pub(super) fn failed(&mut self, generation: u32, injected: bool) -> bool {
        if self.generation != generation {
            return false;
        }
        self.here = false;
        if !injected {
            self.exists = false;
        }
        true
    }

    /// The Parse `generation`, made while it was `before`, was skipped by
    /// the server: it is `before` again. When it changed since, `before`
    /// is given back (a later Parse's snapshot is then what to correct).
    pub(super) fn skipped(&mut self, generation: u32, before: UnnamedStatement) -> Option<Self> {
        if self.generation != generation {
            return Some(before);
        }
        let events = self.events;
        *self = before;
        self.events = events;
        None
    }

    /// A simple Query or a Close of it destroyed it (on the server too).
    #[inline]
    pub(super) fn destroyed(&mut self) {
        self.notify = None;
        self.exists = false;
        self.here = false;
        self.next_event();
    }

    /// The Parse to send before a Bind or Describe of it on a server
    /// that lacks it.
    pub(super) fn parse_message(&self) -> &[u8] {
        &self.parse
    }
}

/// Whether a Bind or Describe `body` names the unnamed statement.
#[inline]
pub(super) fn names_unnamed_statement(tag: u8, body: &[u8]) -> bool {
    match tag {
        // Portal name, then the statement's: empty when its NUL follows.
        frontend::BIND => memchr::memchr(0, body).is_some_and(|end| body.get(end + 1) == Some(&0)),
        frontend::DESCRIBE => body.starts_with(b"S\0"),
        _ => false,
    }
}

/// Postgres's error for a Bind or Describe of a missing unnamed statement.
pub(super) fn missing_unnamed_statement() -> PgError {
    PgError::error(
        sqlstate::INVALID_SQL_STATEMENT_NAME,
        "unnamed prepared statement does not exist",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_bind_or_describe_of_the_unnamed_statement_names_it() {
        assert!(names_unnamed_statement(frontend::BIND, b"\0\0\0\0"));
        assert!(names_unnamed_statement(frontend::BIND, b"portal\0\0\0\0"));
        assert!(!names_unnamed_statement(frontend::BIND, b"\0s1\0\0\0"));
        assert!(!names_unnamed_statement(frontend::BIND, b"no-nul"));
        assert!(names_unnamed_statement(frontend::DESCRIBE, b"S\0"));
        assert!(!names_unnamed_statement(frontend::DESCRIBE, b"P\0"));
        assert!(!names_unnamed_statement(frontend::DESCRIBE, b"Ss1\0"));
        assert!(!names_unnamed_statement(frontend::EXECUTE, b"\0\0"));
    }
}

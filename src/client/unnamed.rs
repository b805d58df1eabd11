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
//! An unnamed Parse sent after other messages of its Sync group waits for
//! its reply in the expectation queue with what the unnamed statement was
//! before it: when an earlier error makes the server skip it, that comes
//! back, as on Postgres. Known limits: an unnamed Parse that fails on the
//! server is still taken as the client's unnamed statement (its outcome
//! reaches the client in the counted path, unread); a later Bind on
//! another server then runs that text's Parse again, whose own error the
//! client gets. So is one skipped that pgharbor rewrote (a DEALLOCATE,
//! DISCARD or EXECUTE in its text, or session state).

use bytes::BytesMut;

use crate::protocol::{sqlstate, PgError};

/// What pgharbor knows of the client's unnamed statement.
#[derive(Debug, Default, Clone)]
pub struct UnnamedStatement {
    /// The client has an unnamed statement (as Postgres would).
    pub exists: bool,
    /// It was parsed on the server the client holds now (cleared when
    /// the server is released).
    pub here: bool,
    /// The client's last unnamed Parse, whole, to prepare it again on
    /// another server. Reused: no allocation per Parse after the first
    /// (unless a longer text comes).
    parse: BytesMut,
    /// Counts its Parses and destructions, so that undoing a skipped
    /// Parse never overrides a later one (`undo_skipped`).
    generation: u32,
}

impl UnnamedStatement {
    /// An unnamed Parse (`msg`, whole) goes to the server held now.
    #[inline]
    pub fn parsed(&mut self, msg: &[u8]) {
        self.parse.clear();
        self.parse.extend_from_slice(msg);
        self.exists = true;
        self.here = true;
        self.generation = self.generation.wrapping_add(1);
    }

    /// Its Parse was sent again to the server held now. `settled`: the
    /// Parse cannot be skipped; otherwise a Bind of it is looked at
    /// until then (see `Undo::unnamed`).
    pub fn prepared_again(&mut self, settled: bool) {
        self.here = settled;
        self.generation = self.generation.wrapping_add(1);
    }

    /// A Parse made while it was `before` was skipped by the server: it
    /// is `before` again, unless a later Parse or Query changed it since.
    pub fn undo_skipped(&mut self, before: UnnamedStatement) {
        if self.generation == before.generation.wrapping_add(1) {
            *self = before;
        }
    }

    /// A simple Query or a Close of it destroyed it (on the server too).
    #[inline]
    pub fn destroyed(&mut self) {
        self.exists = false;
        self.here = false;
        self.generation = self.generation.wrapping_add(1);
    }

    /// The Parse to send before a Bind or Describe of it on a server
    /// that lacks it.
    pub fn parse_message(&self) -> &[u8] {
        &self.parse
    }
}

/// Whether a Bind or Describe `body` names the unnamed statement.
#[inline]
pub(super) fn names_unnamed_statement(tag: u8, body: &[u8]) -> bool {
    match tag {
        // Portal name, then the statement's: empty when its NUL follows.
        b'B' => memchr::memchr(0, body).is_some_and(|end| body.get(end + 1) == Some(&0)),
        b'D' => body.starts_with(b"S\0"),
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
        assert!(names_unnamed_statement(b'B', b"\0\0\0\0"));
        assert!(names_unnamed_statement(b'B', b"portal\0\0\0\0"));
        assert!(!names_unnamed_statement(b'B', b"\0s1\0\0\0"));
        assert!(!names_unnamed_statement(b'B', b"no-nul"));
        assert!(names_unnamed_statement(b'D', b"S\0"));
        assert!(!names_unnamed_statement(b'D', b"P\0"));
        assert!(!names_unnamed_statement(b'D', b"Ss1\0"));
        assert!(!names_unnamed_statement(b'E', b"\0\0"));
    }
}

//! The relay's side of the client's unnamed statement in transaction
//! mode (see `unnamed.rs` for what is kept of it and why): an unnamed
//! Parse on its way to the server, and the statement prepared again on a
//! server that lacks it.

use super::expect::{Action, Reply, Undo};
use super::session::Session;
use super::unnamed::UnnamedStatement;
use crate::protocol::tag::frontend;

/// A Parse of the unnamed statement on its way: its generation and, when
/// an error of an earlier message of its group may make the server skip
/// it, what the statement was before (see `unnamed.rs`).
pub(super) struct UnnamedParse {
    generation: u32,
    before: Option<Box<UnnamedStatement>>,
}

impl Session {
    /// An unnamed Parse at `cbuf[at..at + len]` goes to the server: its
    /// generation, and what the client's unnamed statement was, when the
    /// Parse may yet be skipped after an error of an earlier message of
    /// its group.
    #[inline(always)]
    pub(super) fn note_unnamed_parse(&mut self, at: usize, len: usize) -> UnnamedParse {
        let before = self
            .ext
            .expect
            .group_has_earlier_messages()
            .then(|| Box::new(self.ext.unnamed.clone()));
        let skippable = before.is_some();
        let msg = &self.io.cbuf[at..at + len];
        let notify = self.unnamed_parse_notifies(msg);
        let generation = self.ext.unnamed.parsed(msg, notify);
        if skippable {
            // A Bind of it is looked at: passed in this group, held in a
            // later one until the Parse is answered, and after that
            // prepared again (one more Parse).
            self.ext.unnamed.here = false;
        }
        UnnamedParse { generation, before }
    }

    /// A Bind or Describe of the client's unnamed statement, parsed on an
    /// earlier server, at `cbuf[at..at + len]`: its Parse goes to this
    /// server first (its ParseComplete swallowed), then the message as sent.
    pub(super) fn prepare_unnamed_again(&mut self, tag: u8, at: usize, len: usize) {
        self.forward_ready(at);
        self.io
            .to_server
            .extend_from_slice(self.ext.unnamed.parse_message());
        // After other messages of its group, the Parse may be skipped:
        // then the server still lacks it (see `unnamed.rs`).
        let before = self
            .ext
            .expect
            .group_has_earlier_messages()
            .then(|| Box::new(self.ext.unnamed.clone()));
        let generation = self.ext.unnamed.prepared_again(before.is_none());
        self.push_unnamed_parse(Action::Swallow, UnnamedParse { generation, before });
        self.forward_ready(len);
        let reply = if tag == frontend::BIND {
            Reply::BindComplete
        } else {
            Reply::Describe
        };
        self.ext.expect.push(reply, Action::Forward);
        self.emit_due_synthesized();
    }

    /// Queues the reply of an unnamed Parse.
    pub(super) fn push_unnamed_parse(&mut self, action: Action, p: UnnamedParse) {
        let undo = p.before.map(|before| Undo {
            unnamed: Some(before),
            ..Undo::default()
        });
        self.ext
            .expect
            .push_unnamed_parse(action, undo, p.generation);
    }
}

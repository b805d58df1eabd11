//! How a server reply the expectation queue counts on moves it on: the
//! reply that completes the first queued entry, an error that makes the
//! server skip to the next Sync, and what each leaves to undo.

use std::sync::Arc;

use super::{ends_step, Action, Expectations, Front, Outcome, Reply, Undo};
use crate::client::unnamed::UnnamedStatement;
use crate::protocol::tag::backend;

impl Expectations {
    /// [`Expectations::on_server_message`] past its common case.
    #[inline(never)]
    pub(super) fn on_counted_reply(
        &mut self,
        tag: u8,
        undo: &mut Vec<Undo>,
        parsed: &mut Vec<Arc<str>>,
        unnamed: &mut UnnamedStatement,
    ) -> Outcome {
        if self.first_unnamed_parse.is_some()
            && matches!(tag, backend::PARSE_COMPLETE | backend::ERROR_RESPONSE)
        {
            self.settle_first_unnamed_parse(tag == backend::PARSE_COMPLETE, unnamed);
        }
        match self.front() {
            Front::Nothing => Outcome::Forward,
            Front::Ready => {
                if tag == backend::READY_FOR_QUERY {
                    *self.front_counts().0 -= 1;
                }
                Outcome::Forward
            }
            Front::Replies => {
                if tag == backend::ERROR_RESPONSE {
                    self.skip_to_sync(undo, unnamed, false);
                } else if ends_step(tag) {
                    *self.front_counts().1 -= 1;
                }
                Outcome::Forward
            }
            Front::Entry => self.on_entry_reply(tag, undo, parsed, unnamed),
        }
    }

    /// A reply for the first queued entry itself.
    fn on_entry_reply(
        &mut self,
        tag: u8,
        undo: &mut Vec<Undo>,
        parsed: &mut Vec<Arc<str>>,
        unnamed: &mut UnnamedStatement,
    ) -> Outcome {
        let Some(front) = self.queue.front() else {
            return Outcome::Forward;
        };
        let completes = match (front.reply, tag) {
            (Reply::ParseComplete, backend::PARSE_COMPLETE)
            | (Reply::BindComplete, backend::BIND_COMPLETE)
            | (Reply::CloseComplete, backend::CLOSE_COMPLETE)
            | (Reply::Describe, backend::ROW_DESCRIPTION | backend::NO_DATA)
            | (
                Reply::Execute,
                backend::COMMAND_COMPLETE
                | backend::EMPTY_QUERY_RESPONSE
                | backend::PORTAL_SUSPENDED,
            )
            | (Reply::Statement, backend::COMMAND_COMPLETE)
            | (Reply::Ready, backend::READY_FOR_QUERY) => true,
            (Reply::Ready, _) => false,
            // The ParameterDescription of a Describe pgharbor injected.
            (Reply::Describe, backend::PARAMETER_DESCRIPTION)
                if front.action == Action::Swallow =>
            {
                return Outcome::Swallow;
            }
            (_, backend::ERROR_RESPONSE) => {
                // The failed one's error goes to the client (even for an
                // injected Parse: it explains why the client's Bind could
                // not run), unless pgharbor gave the client its own.
                let aborted = front.action == Action::Abort;
                self.skip_to_sync(undo, unnamed, true);
                return if aborted {
                    Outcome::Swallow
                } else {
                    Outcome::Forward
                };
            }
            _ => false,
        };
        if !completes {
            return match (front.action, tag) {
                (Action::Replace, backend::ROW_DESCRIPTION | backend::DATA_ROW) => Outcome::Swallow,
                _ => Outcome::Forward,
            };
        }
        let Some(mut done) = self.queue.pop_front() else {
            return Outcome::Forward;
        };
        if done.action == Action::Replace {
            // Its reply is due now, in the place of the dropped one.
            done.action = Action::Synthesize;
            self.queue.push_front(done);
            return Outcome::Swallow;
        }
        if tag == backend::PARSE_COMPLETE {
            if let Some(generation) = done.unnamed_parse {
                if !unnamed.confirmed(generation) {
                    self.patch_unnamed(generation, |s| s.here = true);
                }
            }
            if let Some(name) = done.undo.and_then(|u| u.server_name) {
                parsed.push(name);
            }
        }
        match done.action {
            Action::Swallow | Action::Abort => Outcome::Swallow,
            _ => Outcome::Forward,
        }
    }

    /// An extended-protocol message failed: Postgres skips every message
    /// up to the next Sync, so what is expected of them is dropped (their
    /// undo collected) up to the next Sync's count. `front_failed`: the
    /// first queued entry is the message that failed, the rest skipped.
    fn skip_to_sync(
        &mut self,
        undo: &mut Vec<Undo>,
        unnamed: &mut UnnamedStatement,
        mut front_failed: bool,
    ) {
        loop {
            match self.queue.front() {
                // The next Sync comes before this entry, or is this entry
                // (one pgharbor injected): the rest is of later groups.
                Some(e) if e.readies > 0 || e.reply == Reply::Ready => return,
                Some(_) => {
                    let Some(mut e) = self.queue.pop_front() else {
                        return;
                    };
                    let failed = std::mem::take(&mut front_failed);
                    if let Some(generation) = e.unnamed_parse {
                        let before = e.undo.as_mut().and_then(|u| u.unnamed.take());
                        let injected = e.action == Action::Swallow;
                        self.unnamed_outcome(unnamed, generation, failed, injected, before);
                    }
                    if let Some(u) = e.undo {
                        undo.push(*u);
                    }
                }
                None => {
                    // With no Sync counted, the counted messages are in
                    // the failed group.
                    if self.tail_readies == 0 {
                        self.tail_replies = 0;
                        self.server_skipping = true;
                    }
                    return;
                }
            }
        }
    }
}

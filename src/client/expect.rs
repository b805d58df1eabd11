//! What the client expects back, in order, for the extended-protocol
//! messages sent on its behalf: lets pgharbor swallow the replies to messages
//! it injected and synthesize replies to messages it answered itself, each at
//! exactly the place Postgres would have put them.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::prepared::Statement;
use super::unnamed::UnnamedStatement;
use crate::listen::{ListenCommand, PendingListens};
use crate::protocol::backend::{close_complete, parse_complete};
use crate::protocol::tag::backend;

/// The kind of reply a message produces when it succeeds, by what ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reply {
    ParseComplete,
    BindComplete,
    CloseComplete,
    /// Describe: ends with RowDescription or NoData.
    Describe,
    /// Execute: ends with CommandComplete, EmptyQueryResponse or PortalSuspended.
    Execute,
    /// Sync, Query, FunctionCall: end with ReadyForQuery.
    Ready,
    /// One statement of a simple Query: ends with CommandComplete (rows,
    /// COPY data and notices come before it).
    Statement,
}

/// Ends the reply to one Parse, Bind, Close, Describe or Execute.
pub(super) fn ends_step(tag: u8) -> bool {
    matches!(
        tag,
        backend::PARSE_COMPLETE
            | backend::BIND_COMPLETE
            | backend::CLOSE_COMPLETE
            | backend::ROW_DESCRIPTION
            | backend::NO_DATA
            | backend::COMMAND_COMPLETE
            | backend::EMPTY_QUERY_RESPONSE
            | backend::PORTAL_SUSPENDED
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    /// A client message: its reply goes to the client.
    Forward,
    /// A message pgharbor injected: its reply is dropped.
    Swallow,
    /// A client message pgharbor answered itself: no server reply comes; the
    /// reply is synthesized when everything before it has been answered.
    Synthesize,
    /// A message pgharbor injected so that the server fails and skips to the
    /// next Sync as Postgres would after the error pgharbor already gave the
    /// client: its error is dropped.
    Abort,
    /// A statement pgharbor put in place of one it answers itself (a
    /// LISTEN inside a longer Query runs as `SELECT`): its row and its
    /// CommandComplete are dropped, and the local reply is given in its
    /// place; its error goes to the client, as the replaced statement's.
    Replace,
}

/// A reply pgharbor gives itself, already encoded, and the LISTEN/UNLISTEN
/// that takes effect (at the end of the transaction) once it is sent.
#[derive(Debug, Clone)]
pub(super) struct Local {
    pub bytes: Bytes,
    pub listen: Option<ListenCommand>,
}

/// A synthesized reply now due.
#[derive(Debug)]
pub(super) struct Synthesized {
    pub reply: Reply,
    pub local: Option<Box<Local>>,
}

/// Undo information for a named statement whose Parse never took effect.
#[derive(Debug, Clone, Default)]
pub(super) struct Undo {
    /// Drop from the server's prepared set (the server does not have it).
    pub server_name: Option<Arc<str>>,
    /// Drop from the client's statement map (Postgres would not have it).
    pub client_name: Option<String>,
    /// A Close of the name went just before the Parse: when the Parse is
    /// skipped, so was the Close, and the server still has the statement;
    /// when the Parse failed, it does not. Its list is then unsure (see
    /// `PreparedSet::forget_all`). Also set on the Close of a statement
    /// evicted from the list: skipped, it leaves the statement there.
    pub closed_first: bool,
    /// A Close of the client's statement (name and statement) that
    /// pgharbor answered: when it is skipped after an error of its group,
    /// the client keeps the statement, as on Postgres.
    pub restore: Option<(String, Arc<Statement>)>,
    /// An unnamed Parse sent after other messages of its group: what the
    /// client's unnamed statement was before it, again when it is skipped.
    pub unnamed: Option<Box<UnnamedStatement>>,
}

/// A message whose reply needs its own place in the order: swallowed,
/// given by pgharbor, or undoing something when it fails. The plain
/// messages sent before it since the previous such entry are counted in
/// it: first `readies` Sync/Query/FunctionCall messages, then `replies`
/// other messages (a Sync's count takes in the plain messages before it,
/// so they always come in this shape).
#[derive(Debug)]
pub(super) struct Expected {
    pub reply: Reply,
    pub action: Action,
    /// Boxed: rare (named Parses).
    pub undo: Option<Box<Undo>>,
    /// For `Synthesize`: the reply when it is not a plain ParseComplete or
    /// CloseComplete.
    pub local: Option<Box<Local>>,
    /// For a Describe of a named statement: the statement, whose result
    /// shape its reply tells (the client's own when `action` is
    /// `Forward`, only the server's when pgharbor injected it).
    pub describes: Option<Arc<Statement>>,
    /// For a Parse of the unnamed statement: its generation, so that its
    /// outcome updates the client's unnamed statement (`unnamed.rs`).
    unnamed_parse: Option<u32>,
    readies: u32,
    replies: u32,
}

/// How a server message relates to the queue.
#[derive(Debug)]
pub(super) enum Outcome {
    /// Forward the message.
    Forward,
    /// Drop the message.
    Swallow,
}

/// What the server's next reply answers.
enum Front {
    /// Nothing is expected.
    Nothing,
    /// A plain Sync, Query or FunctionCall: only its ReadyForQuery ends it.
    Ready,
    /// Plain messages, each ended by one of `ends_step`'s replies.
    Replies,
    /// The first queued entry itself.
    Entry,
}

/// The replies the client's messages will get, in order. Only entries that
/// need their own place are queued (see [`Expected`]); everything else is
/// counted. So a driver's plain Parse/Bind/Describe/Execute/Sync group
/// costs no allocation and no queue operation, and while a plain Sync is
/// next, the server's replies before its ReadyForQuery need no look at all
/// (`needs_each_reply`).
#[derive(Debug, Default)]
pub(super) struct Expectations {
    queue: VecDeque<Expected>,
    /// Plain Sync/Query/FunctionCall messages after the last queued entry.
    tail_readies: u32,
    /// Plain other messages after those, whose replies have not come.
    tail_replies: u32,
    /// The server reported an error in a group whose Sync has not been
    /// sent yet: like Postgres, it ignores every message up to that Sync.
    server_skipping: bool,
    /// The generation of an unnamed Parse of the client's sent while no
    /// reply was outstanding: the server's next ParseComplete or
    /// ErrorResponse is its reply, so it is only counted, without an
    /// entry of its own (the common case: pgbench -M extended, libpq's
    /// PQexecParams, one such Parse per statement).
    first_unnamed_parse: Option<u32>,
}

impl Expectations {
    /// Records the reply of a message just sent. Inlined: called for every
    /// message, nearly always with a reply to forward, which is two
    /// counters.
    #[inline]
    pub(super) fn push(&mut self, reply: Reply, action: Action) {
        if reply == Reply::Ready {
            self.server_skipping = false;
        }
        if action == Action::Forward {
            if reply == Reply::Ready {
                // The replies counted come before this ReadyForQuery, and
                // nothing waits on them in between.
                self.tail_readies += 1;
                self.tail_replies = 0;
            } else {
                self.tail_replies += 1;
            }
            return;
        }
        self.queue_entry(reply, action, None, None);
    }

    /// [`Expectations::push`] for a message whose effect is undone if the
    /// server skips or refuses it (see [`Undo`]): it gets a place of its own.
    pub(super) fn push_undo(&mut self, reply: Reply, action: Action, undo: Undo) {
        if reply == Reply::Ready {
            self.server_skipping = false;
        }
        self.queue_entry(reply, action, Some(Box::new(undo)), None);
    }

    /// [`Expectations::push`] or [`Expectations::push_undo`], as `undo` says.
    pub(super) fn push_with(&mut self, reply: Reply, action: Action, undo: Option<Undo>) {
        match undo {
            Some(undo) => self.push_undo(reply, action, undo),
            None => self.push(reply, action),
        }
    }

    /// Queues one statement of a simple Query: forwarded, or replaced by
    /// `local` (see [`Action::Replace`]). The Query's ReadyForQuery is
    /// pushed after its statements.
    pub(super) fn push_statement(&mut self, local: Option<Local>) {
        let action = if local.is_some() {
            Action::Replace
        } else {
            Action::Forward
        };
        self.queue_entry(Reply::Statement, action, None, local.map(Box::new));
    }

    /// Queues a Parse of the unnamed statement, of `generation`: its
    /// outcome is the client's unnamed statement's (see `unnamed.rs`).
    /// `undo`: it may be skipped after an error of its group.
    pub(super) fn push_unnamed_parse(
        &mut self,
        action: Action,
        undo: Option<Undo>,
        generation: u32,
    ) {
        if action == Action::Forward && undo.is_none() && self.is_empty() {
            self.push(Reply::ParseComplete, Action::Forward);
            self.first_unnamed_parse = Some(generation);
            return;
        }
        self.queue_entry(Reply::ParseComplete, action, undo.map(Box::new), None);
        if let Some(e) = self.queue.back_mut() {
            e.unnamed_parse = Some(generation);
        }
    }

    /// Queues a Describe of the named statement `st` (its server name).
    pub(super) fn push_describe(&mut self, action: Action, st: Arc<Statement>) {
        self.queue_entry(Reply::Describe, action, None, None);
        if let Some(e) = self.queue.back_mut() {
            e.describes = Some(st);
        }
    }

    /// The statement whose Describe the server's `T` or `n` now answers,
    /// and whether the client gets that reply.
    pub(super) fn describing(&self) -> Option<(&Arc<Statement>, bool)> {
        let e = self.queue.front()?;
        if e.readies > 0 || e.replies > 0 || e.reply != Reply::Describe {
            return None;
        }
        let st = e.describes.as_ref()?;
        Some((st, e.action == Action::Forward))
    }

    /// Whether a Parse or Close of the client's statement `client_name`
    /// waits for its reply in a Sync group before the message sent now:
    /// if the server skips it after an error of its group, what the name
    /// stands for is undone then (see `Undo`). An empty queue (every plain
    /// group) answers at once.
    pub(super) fn name_pending_in_earlier_group(&self, client_name: &str) -> bool {
        let pending = self.pending_in_group(|u| {
            u.client_name.as_deref() == Some(client_name)
                || u.restore.as_ref().is_some_and(|(n, _)| n == client_name)
        });
        pending == Some(true)
    }

    /// Whether a Parse pgharbor sent of the server statement
    /// `server_name` waits for its reply in a Sync group before the
    /// message sent now: if the server skips it after an error of its
    /// group, the server lacks the statement after all.
    pub(super) fn server_parse_pending_in_earlier_group(&self, server_name: &str) -> bool {
        let pending = self.pending_in_group(|u| u.server_name.as_deref() == Some(server_name));
        pending == Some(true)
    }

    /// Whether a Parse of the client's statement `client_name` waits for
    /// its reply (looked at only for an error naming a statement).
    pub(super) fn parse_pending(&self, client_name: &str) -> bool {
        self.queue.iter().any(|e| {
            e.reply == Reply::ParseComplete
                && e.undo
                    .as_ref()
                    .is_some_and(|u| u.client_name.as_deref() == Some(client_name))
        })
    }

    /// Whether an unnamed Parse that may be skipped (see `Undo::unnamed`)
    /// waits for its reply: `Some(true)` in an earlier Sync group than the
    /// message sent now, `Some(false)` in the same one.
    pub(super) fn unnamed_parse_pending(&self) -> Option<bool> {
        self.pending_in_group(|u| u.unnamed.is_some())
    }

    /// The last queued entry that `undoes`, if any: whether a Sync was
    /// sent after it.
    fn pending_in_group(&self, undoes: impl Fn(&Undo) -> bool) -> Option<bool> {
        if self.queue.is_empty() {
            return None;
        }
        let at = self
            .queue
            .iter()
            .rposition(|e| e.undo.as_deref().is_some_and(&undoes))?;
        Some(
            self.tail_readies > 0
                || self
                    .queue
                    .iter()
                    .skip(at + 1)
                    .any(|e| e.readies > 0 || e.reply == Reply::Ready),
        )
    }

    /// Whether a Sync sent before the message sent now still waits for
    /// its ReadyForQuery: the transaction's status may change before it.
    pub(super) fn sync_pending(&self) -> bool {
        self.tail_readies > 0
            || self
                .queue
                .iter()
                .any(|e| e.readies > 0 || e.reply == Reply::Ready)
    }

    /// Whether messages of the current Sync group went before the one
    /// sent now: an error of theirs makes the server skip it.
    #[inline]
    pub(super) fn group_has_earlier_messages(&self) -> bool {
        self.tail_replies > 0
            || (self.tail_readies == 0
                && self.queue.back().is_some_and(|e| e.reply != Reply::Ready))
    }

    /// The client's statements whose Close pgharbor answered and whose
    /// reply still waits its turn: an error of a message sent before the
    /// Close may name one of them.
    pub(super) fn closing(&self) -> impl Iterator<Item = &(String, Arc<Statement>)> {
        self.queue
            .iter()
            .filter_map(|e| e.undo.as_ref()?.restore.as_ref())
    }

    /// Queues a reply pgharbor gives itself, encoded in `local`.
    pub(super) fn push_local(&mut self, reply: Reply, local: Local) {
        self.queue_entry(reply, Action::Synthesize, None, Some(Box::new(local)));
    }

    fn queue_entry(
        &mut self,
        reply: Reply,
        action: Action,
        undo: Option<Box<Undo>>,
        local: Option<Box<Local>>,
    ) {
        self.queue.push_back(Expected {
            reply,
            action,
            undo,
            local,
            describes: None,
            unnamed_parse: None,
            readies: std::mem::take(&mut self.tail_readies),
            replies: std::mem::take(&mut self.tail_replies),
        });
    }

    /// No reply is outstanding.
    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.tail_readies == 0 && self.tail_replies == 0
    }

    /// See `server_skipping`: a message sent now gets no reply.
    #[inline]
    pub(super) fn server_skipping(&self) -> bool {
        self.server_skipping
    }

    pub(super) fn clear(&mut self) {
        self.server_skipping = false;
        self.first_unnamed_parse = None;
        self.queue.clear();
        self.tail_readies = 0;
        self.tail_replies = 0;
    }

    #[inline]
    fn front(&self) -> Front {
        let (readies, replies) = match self.queue.front() {
            Some(e) => (e.readies, e.replies),
            None => (self.tail_readies, self.tail_replies),
        };
        if readies > 0 {
            Front::Ready
        } else if replies > 0 {
            Front::Replies
        } else if self.queue.is_empty() {
            Front::Nothing
        } else {
            Front::Entry
        }
    }

    /// The counts the next reply is taken from.
    fn front_counts(&mut self) -> (&mut u32, &mut u32) {
        match self.queue.front_mut() {
            Some(e) => (&mut e.readies, &mut e.replies),
            None => (&mut self.tail_readies, &mut self.tail_replies),
        }
    }

    /// The server began COPY FROM STDIN for the message it is answering and
    /// reads the next `n` counted Syncs as COPY data, ignoring them (see
    /// `copy.rs`): they are owed no ReadyForQuery. Every reply before that
    /// message came, so it is in the first run of counted messages: absorbed
    /// by the run's first Sync when it has one (or counted as its Query). If
    /// none of the run's Syncs is left, the message's own reply (the COPY's
    /// CommandComplete or ErrorResponse) is counted in their place.
    pub(super) fn drop_ignored_syncs(&mut self, mut n: u32) {
        let Expectations {
            queue,
            tail_readies,
            tail_replies,
            ..
        } = self;
        let runs = queue
            .iter_mut()
            .map(|e| (&mut e.readies, &mut e.replies))
            .chain(std::iter::once((tail_readies, tail_replies)));
        for (i, (readies, replies)) in runs.enumerate() {
            if n == 0 {
                return;
            }
            let absorbed = i == 0 && *readies > 0;
            let taken = n.min(*readies);
            *readies -= taken;
            n -= taken;
            if absorbed && *readies == 0 {
                *replies += 1;
            }
        }
    }

    /// Whether the server's next message must be looked at whole to keep
    /// the queue in step: not while a plain Sync is next (or nothing is
    /// expected), when only ReadyForQuery and ErrorResponse matter, and the
    /// relay reads those anyway.
    #[inline]
    pub(super) fn needs_each_reply(&self) -> bool {
        // A ParseComplete settles `first_unnamed_parse`.
        self.first_unnamed_parse.is_some() || matches!(self.front(), Front::Replies | Front::Entry)
    }

    /// Whether the server's next messages answer a replaced statement, all
    /// of which must be looked at to be dropped.
    pub(super) fn replaces_next(&self) -> bool {
        matches!(self.front(), Front::Entry)
            && self
                .queue
                .front()
                .is_some_and(|e| e.action == Action::Replace)
    }

    /// Pops the synthesized replies now due (everything before them has
    /// been answered), in order. Inlined: asked after every message looked
    /// at, nearly always of an empty queue.
    #[inline]
    pub(super) fn due_synthesized(&mut self) -> Option<Synthesized> {
        if self.queue.is_empty() {
            return None;
        }
        self.pop_due_synthesized()
    }

    fn pop_due_synthesized(&mut self) -> Option<Synthesized> {
        match self.queue.front() {
            Some(e) if e.readies == 0 && e.replies == 0 && e.action == Action::Synthesize => {
                self.queue.pop_front().map(|e| Synthesized {
                    reply: e.reply,
                    local: e.local,
                })
            }
            _ => None,
        }
    }

    /// Accounts for a server message with `tag`; `undo` collects the
    /// statements whose Parse did not take effect.
    /// `parsed` collects the server names of Parses that succeeded;
    /// `unnamed` follows the outcome of unnamed Parses.
    /// Inlined: called for every message looked at whole, nearly always
    /// while a plain Sync is next, which is one counter.
    #[inline(always)]
    pub(super) fn on_server_message(
        &mut self,
        tag: u8,
        undo: &mut Vec<Undo>,
        parsed: &mut Vec<Arc<str>>,
        unnamed: &mut UnnamedStatement,
    ) -> Outcome {
        if self.first_unnamed_parse.is_none() {
            match self.front() {
                Front::Nothing => return Outcome::Forward,
                Front::Ready => {
                    if tag == backend::READY_FOR_QUERY {
                        *self.front_counts().0 -= 1;
                    }
                    return Outcome::Forward;
                }
                Front::Replies | Front::Entry => {}
            }
        }
        self.on_counted_reply(tag, undo, parsed, unnamed)
    }
}

/// A reply pgharbor gives in the server's place. A LISTEN/UNLISTEN answered
/// this way joins the transaction's pending ones.
pub(super) fn synthesize(out: &mut BytesMut, pending: &mut PendingListens, s: Synthesized) {
    if let Some(local) = s.local {
        out.extend_from_slice(&local.bytes);
        if let Some(cmd) = local.listen {
            pending.push(cmd);
        }
        return;
    }
    match s.reply {
        Reply::ParseComplete => parse_complete(out),
        Reply::CloseComplete => close_complete(out),
        // Other replies are synthesized only with their bytes (`local`).
        Reply::BindComplete
        | Reply::Describe
        | Reply::Execute
        | Reply::Ready
        | Reply::Statement => {}
    }
}

// How a reply the queue counts on moves it on.
#[path = "expect_replies.rs"]
mod replies;

// What the queue's replies tell of the unnamed statement.
#[path = "expect_unnamed.rs"]
mod unnamed_outcome;

#[cfg(test)]
#[path = "expect_tests.rs"]
mod tests;

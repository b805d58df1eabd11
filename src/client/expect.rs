//! What the client expects back, in order, for the extended-protocol
//! messages sent on its behalf: lets pgharbor swallow the replies to messages
//! it injected and synthesize replies to messages it answered itself, each at
//! exactly the place Postgres would have put them.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use crate::listen::ListenCommand;

/// The kind of reply a message produces when it succeeds, by what ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    ParseComplete,
    BindComplete,
    CloseComplete,
    /// Describe: ends with RowDescription or NoData.
    Describe,
    /// Execute: ends with CommandComplete, EmptyQueryResponse or PortalSuspended.
    Execute,
    /// Sync, Query, FunctionCall: end with ReadyForQuery.
    Ready,
    /// This many forwarded messages of the kinds above but `Ready`, each
    /// ended by one of their ending replies (whichever kind it is).
    Replies(u32),
}

impl Reply {
    /// Ends the reply to one Parse, Bind, Close, Describe or Execute.
    fn ends_step(tag: u8) -> bool {
        matches!(tag, b'1' | b'2' | b'3' | b'T' | b'n' | b'C' | b'I' | b's')
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
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
}

/// A reply pgharbor gives itself, already encoded, and the LISTEN/UNLISTEN
/// that takes effect (at the end of the transaction) once it is sent.
#[derive(Debug, Clone)]
pub struct Local {
    pub bytes: Bytes,
    pub listen: Option<ListenCommand>,
}

/// A synthesized reply now due.
#[derive(Debug)]
pub struct Synthesized {
    pub reply: Reply,
    pub local: Option<Box<Local>>,
}

/// Undo information for a named statement whose Parse never took effect.
#[derive(Debug, Clone)]
pub struct Undo {
    /// Drop from the server's prepared set (the server does not have it).
    pub server_name: Option<Arc<str>>,
    /// Drop from the client's statement map (Postgres would not have it).
    pub client_name: Option<String>,
}

#[derive(Debug)]
pub struct Expected {
    pub reply: Reply,
    pub action: Action,
    /// Boxed: rare (named Parses), and the queue's first allocation, which
    /// a client keeps while idle, is four of these.
    pub undo: Option<Box<Undo>>,
    /// For `Synthesize`: the reply when it is not a plain ParseComplete or
    /// CloseComplete.
    pub local: Option<Box<Local>>,
}

/// How a server message relates to the queue.
#[derive(Debug)]
pub enum Outcome {
    /// Forward the message.
    Forward,
    /// Drop the message.
    Swallow,
}

/// The queue holds an entry only where one is needed: a message whose
/// reply pgharbor swallows or gives itself, or whose failure undoes
/// something, and every Sync / Query. The plain forwarded messages before
/// such an entry are one `Replies(n)` entry; the ones after the last entry
/// are only counted (`unqueued`), and a Sync's `Ready` entry takes them in.
/// So a driver's plain Parse/Bind/Describe/Execute/Sync group is one entry,
/// and while the front is `Ready`, the server's replies before its
/// ReadyForQuery need no look at all (`needs_each_reply`).
#[derive(Debug, Default)]
pub struct Expectations {
    queue: VecDeque<Expected>,
    /// Plain forwarded messages sent after the last queued entry whose
    /// replies have not come yet.
    unqueued: u32,
}

impl Expectations {
    #[inline]
    pub fn push(&mut self, reply: Reply, action: Action, undo: Option<Undo>) {
        if action == Action::Forward && undo.is_none() {
            if reply != Reply::Ready {
                self.unqueued += 1;
                return;
            }
            // The replies counted come before this ReadyForQuery, and
            // nothing waits on them in between.
            self.unqueued = 0;
        } else {
            self.queue_unqueued();
        }
        self.queue.push_back(Expected {
            reply,
            action,
            undo: undo.map(Box::new),
            local: None,
        });
    }

    /// Queues a reply pgharbor gives itself, encoded in `local`.
    pub fn push_local(&mut self, reply: Reply, local: Local) {
        self.queue_unqueued();
        self.queue.push_back(Expected {
            reply,
            action: Action::Synthesize,
            undo: None,
            local: Some(Box::new(local)),
        });
    }

    /// An entry that must wait for the counted replies goes behind them.
    fn queue_unqueued(&mut self) {
        let n = std::mem::take(&mut self.unqueued);
        if n > 0 {
            self.queue.push_back(Expected {
                reply: Reply::Replies(n),
                action: Action::Forward,
                undo: None,
                local: None,
            });
        }
    }

    /// No reply is outstanding.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.unqueued == 0
    }

    pub fn clear(&mut self) {
        self.queue.clear();
        self.unqueued = 0;
    }

    /// Whether the server's next message must be looked at whole to keep
    /// the queue in step: not while the front waits only for a
    /// ReadyForQuery (or nothing is expected), when only ReadyForQuery and
    /// ErrorResponse matter, and the relay reads those anyway.
    #[inline]
    pub fn needs_each_reply(&self) -> bool {
        match self.queue.front() {
            Some(e) => e.reply != Reply::Ready,
            None => self.unqueued > 0,
        }
    }

    /// Pops the synthesized replies now due (everything before them has
    /// been answered), in order.
    pub fn due_synthesized(&mut self) -> Option<Synthesized> {
        match self.queue.front() {
            Some(e) if e.action == Action::Synthesize => {
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
    /// `parsed` collects the server names of Parses that succeeded.
    pub fn on_server_message(
        &mut self,
        tag: u8,
        undo: &mut Vec<Undo>,
        parsed: &mut Vec<Arc<str>>,
    ) -> Outcome {
        let Some(front) = self.queue.front_mut() else {
            if tag == b'E' {
                // The group failed: what it has not answered, it never will.
                self.unqueued = 0;
            } else if Reply::ends_step(tag) {
                self.unqueued = self.unqueued.saturating_sub(1);
            }
            return Outcome::Forward;
        };
        let completes = match (front.reply, tag) {
            (Reply::Replies(n), t) if n > 1 && Reply::ends_step(t) => {
                front.reply = Reply::Replies(n - 1);
                return Outcome::Forward;
            }
            (Reply::Replies(_), t) if Reply::ends_step(t) => true,
            (Reply::ParseComplete, b'1')
            | (Reply::BindComplete, b'2')
            | (Reply::CloseComplete, b'3')
            | (Reply::Describe, b'T' | b'n')
            | (Reply::Execute, b'C' | b'I' | b's')
            | (Reply::Ready, b'Z') => true,
            (Reply::Ready, _) => false,
            (_, b'E') => {
                // An extended-protocol message failed: Postgres skips every
                // message up to the next Sync. The failed one's error goes to
                // the client (even for an injected Parse: it explains why the
                // client's Bind could not run).
                let mut failed = self.queue.pop_front();
                let aborted = failed.as_ref().is_some_and(|e| e.action == Action::Abort);
                while let Some(e) = failed {
                    if let Some(u) = e.undo {
                        undo.push(*u);
                    }
                    failed = match self.queue.front() {
                        Some(n) if n.reply != Reply::Ready => self.queue.pop_front(),
                        _ => None,
                    };
                }
                if self.queue.is_empty() {
                    // No Sync followed: the counted messages are in the
                    // failed group, skipped.
                    self.unqueued = 0;
                }
                return if aborted {
                    Outcome::Swallow
                } else {
                    Outcome::Forward
                };
            }
            _ => false,
        };
        if !completes {
            return Outcome::Forward;
        }
        let Some(done) = self.queue.pop_front() else {
            return Outcome::Forward;
        };
        if tag == b'1' {
            if let Some(name) = done.undo.and_then(|u| u.server_name) {
                parsed.push(name);
            }
        }
        match done.action {
            Action::Swallow | Action::Abort => Outcome::Swallow,
            _ => Outcome::Forward,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injected_parse_is_swallowed_and_synthesized_replies_wait_their_turn() {
        let mut q = Expectations::default();
        let mut undo = Vec::new();
        q.push(Reply::Execute, Action::Forward, None);
        q.push(Reply::ParseComplete, Action::Synthesize, None);
        q.push(Reply::ParseComplete, Action::Swallow, None);
        q.push(Reply::BindComplete, Action::Forward, None);
        q.push(Reply::Ready, Action::Forward, None);
        assert!(q.due_synthesized().is_none());
        assert!(matches!(
            q.on_server_message(b'D', &mut undo, &mut Vec::new()),
            Outcome::Forward
        ));
        assert!(matches!(
            q.on_server_message(b'C', &mut undo, &mut Vec::new()),
            Outcome::Forward
        ));
        assert_eq!(
            q.due_synthesized().map(|s| s.reply),
            Some(Reply::ParseComplete)
        );
        assert!(q.due_synthesized().is_none());
        assert!(matches!(
            q.on_server_message(b'1', &mut undo, &mut Vec::new()),
            Outcome::Swallow
        ));
        assert!(matches!(
            q.on_server_message(b'2', &mut undo, &mut Vec::new()),
            Outcome::Forward
        ));
        assert!(matches!(
            q.on_server_message(b'Z', &mut undo, &mut Vec::new()),
            Outcome::Forward
        ));
        assert!(q.is_empty());
    }

    #[test]
    fn an_error_skips_to_the_sync_and_undoes_parses() {
        let mut q = Expectations::default();
        let mut undo = Vec::new();
        let u = |n: &str| Undo {
            server_name: Some(n.into()),
            client_name: Some(n.into()),
        };
        q.push(Reply::ParseComplete, Action::Forward, Some(u("a")));
        q.push(Reply::ParseComplete, Action::Synthesize, Some(u("b")));
        q.push(Reply::BindComplete, Action::Forward, None);
        q.push(Reply::Ready, Action::Forward, None);
        q.push(Reply::ParseComplete, Action::Forward, None);
        assert!(matches!(
            q.on_server_message(b'E', &mut undo, &mut Vec::new()),
            Outcome::Forward
        ));
        assert_eq!(undo.len(), 2);
        assert!(matches!(
            q.on_server_message(b'Z', &mut undo, &mut Vec::new()),
            Outcome::Forward
        ));
        assert!(matches!(
            q.on_server_message(b'1', &mut undo, &mut Vec::new()),
            Outcome::Forward
        ));
        assert!(q.is_empty());
    }

    #[test]
    fn a_plain_group_is_one_entry_and_its_replies_need_no_look() {
        let mut q = Expectations::default();
        let mut undo = Vec::new();
        for r in [
            Reply::ParseComplete,
            Reply::BindComplete,
            Reply::Describe,
            Reply::Execute,
        ] {
            q.push(r, Action::Forward, None);
        }
        assert!(!q.is_empty());
        q.push(Reply::Ready, Action::Forward, None);
        assert!(!q.needs_each_reply());
        // An error inside the group does not end it: its Sync does.
        for tag in [b'1', b'2', b'T', b'C', b'E'] {
            assert!(matches!(
                q.on_server_message(tag, &mut undo, &mut Vec::new()),
                Outcome::Forward
            ));
            assert!(!q.is_empty());
        }
        q.on_server_message(b'Z', &mut undo, &mut Vec::new());
        assert!(q.is_empty());
        assert!(!q.needs_each_reply());
    }

    #[test]
    fn a_synthesized_reply_waits_for_the_plain_messages_sent_before_it() {
        let mut q = Expectations::default();
        let mut undo = Vec::new();
        q.push(Reply::BindComplete, Action::Forward, None);
        q.push(Reply::Execute, Action::Forward, None);
        q.push(Reply::CloseComplete, Action::Synthesize, None);
        q.push(Reply::BindComplete, Action::Forward, None);
        assert!(q.needs_each_reply());
        q.on_server_message(b'2', &mut undo, &mut Vec::new());
        assert!(q.due_synthesized().is_none());
        q.on_server_message(b'D', &mut undo, &mut Vec::new());
        assert!(q.due_synthesized().is_none());
        q.on_server_message(b'C', &mut undo, &mut Vec::new());
        assert_eq!(
            q.due_synthesized().map(|s| s.reply),
            Some(Reply::CloseComplete)
        );
        // The Bind sent after it is counted until its reply comes.
        assert!(!q.is_empty());
        assert!(q.needs_each_reply());
        q.on_server_message(b'2', &mut undo, &mut Vec::new());
        assert!(q.is_empty());
    }

    #[test]
    fn an_error_before_any_sync_drops_the_count_of_the_skipped_messages() {
        let mut q = Expectations::default();
        let mut undo = Vec::new();
        q.push(Reply::BindComplete, Action::Forward, None);
        q.push(Reply::Execute, Action::Forward, None);
        q.on_server_message(b'E', &mut undo, &mut Vec::new());
        assert!(q.is_empty());
        assert!(!q.needs_each_reply());
        // The group's Sync is then the only reply to wait for.
        q.push(Reply::Ready, Action::Forward, None);
        q.on_server_message(b'Z', &mut undo, &mut Vec::new());
        assert!(q.is_empty());
    }
}

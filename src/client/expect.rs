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

#[derive(Debug, Default)]
pub struct Expectations {
    queue: VecDeque<Expected>,
}

impl Expectations {
    pub fn push(&mut self, reply: Reply, action: Action, undo: Option<Undo>) {
        self.queue.push_back(Expected {
            reply,
            action,
            undo: undo.map(Box::new),
            local: None,
        });
    }

    /// Queues a reply pgharbor gives itself, encoded in `local`.
    pub fn push_local(&mut self, reply: Reply, local: Local) {
        self.queue.push_back(Expected {
            reply,
            action: Action::Synthesize,
            undo: None,
            local: Some(Box::new(local)),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn clear(&mut self) {
        self.queue.clear();
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
        let Some(front) = self.queue.front() else {
            return Outcome::Forward;
        };
        let completes = match (front.reply, tag) {
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
}

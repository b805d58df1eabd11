//! Which client sent a notification, where pgharbor can know it.
//!
//! A NotificationResponse names the *backend* that ran NOTIFY: a pool server.
//! The relay tells the hub when a client starts and stops holding a server
//! ([`crate::listen::ListenHub::note_server_pid`] / `forget_server_pid`), and
//! which channels the statements it sent there notify
//! ([`crate::listen::ListenHub::note_notify`], read from the text by
//! `notify_scan`). A notification is delivered to listeners after the
//! sender's COMMIT, so by the time the listener reads it the server may be
//! back in the pool or lent to another client. Rewriting to the wrong client
//! would be worse than not rewriting (a driver drops "its own"
//! notifications), so the rule is strict. Among the clients that held that
//! server at any moment of the last [`WINDOW`]:
//! - if exactly one sent a statement notifying the channel, it is the sender;
//! - if none did (a trigger or a function sent it) and exactly one client
//!   held the server, it is the sender;
//! - otherwise the server's pid stays.
//!
//! So a client that notifies a channel by name gets its own pid back however
//! busy the pool is. What this cannot see: a trigger notifying a channel that
//! another recent holder of the same server notified by name in the window
//! would be put on that holder.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How far back a holder still counts as a possible sender.
pub(crate) const WINDOW: Duration = Duration::from_secs(2);

use super::notify_scan::NotifyTargets;

#[derive(Debug, Clone)]
struct Hold {
    client_pid: i32,
    until: Option<Instant>,
    /// The channels its statements notified on this server; boxed, since
    /// most holders notify nothing.
    notified: Option<Box<NotifyTargets>>,
}

impl Hold {
    fn notified(&self, channel: &str) -> bool {
        self.notified.as_ref().is_some_and(|n| n.covers(channel))
    }
}

#[derive(Debug, Default)]
pub(crate) struct Senders {
    map: Mutex<HashMap<(SocketAddr, i32), VecDeque<Hold>>>,
    calls: std::sync::atomic::AtomicU64,
}

/// The one client among `holds`, if they are all the same client.
fn only_client<'a>(mut holds: impl Iterator<Item = &'a Hold>) -> Option<i32> {
    let first = holds.next()?.client_pid;
    holds.all(|h| h.client_pid == first).then_some(first)
}

fn prune(holds: &mut VecDeque<Hold>, now: Instant) {
    holds.retain(|h| h.until.is_none_or(|u| now.duration_since(u) <= WINDOW));
}

impl Senders {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(SocketAddr, i32), VecDeque<Hold>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `client_pid` holds the server `(addr, backend_pid)` from now on.
    pub(crate) fn note(&self, addr: SocketAddr, backend_pid: i32, client_pid: i32) {
        let now = Instant::now();
        let mut map = self.lock();
        let holds = map.entry((addr, backend_pid)).or_default();
        for h in holds.iter_mut() {
            h.until.get_or_insert(now);
        }
        prune(holds, now);
        holds.push_back(Hold {
            client_pid,
            until: None,
            notified: None,
        });
        // Now and then, sweep servers nobody mentioned for a while.
        if self
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .is_multiple_of(4096)
        {
            map.retain(|_, h| {
                prune(h, now);
                !h.is_empty()
            });
        }
    }

    /// The server went back to the pool (or was closed).
    pub(crate) fn forget(&self, addr: SocketAddr, backend_pid: i32) {
        let now = Instant::now();
        let mut map = self.lock();
        if let Some(holds) = map.get_mut(&(addr, backend_pid)) {
            for h in holds.iter_mut() {
                h.until.get_or_insert(now);
            }
            prune(holds, now);
            if holds.is_empty() {
                map.remove(&(addr, backend_pid));
            }
        }
    }

    /// `client_pid`, which holds the server now, sent it statements that
    /// notify `targets`.
    pub(crate) fn note_notify(
        &self,
        addr: SocketAddr,
        backend_pid: i32,
        client_pid: i32,
        targets: NotifyTargets,
    ) {
        let mut map = self.lock();
        let holds = map.entry((addr, backend_pid)).or_default();
        let open = holds
            .iter_mut()
            .rev()
            .find(|h| h.client_pid == client_pid && h.until.is_none());
        let Some(hold) = open else {
            return;
        };
        let notified = hold.notified.get_or_insert_with(Default::default);
        notified.any |= targets.any;
        for c in targets.channels {
            if !notified.channels.contains(&c) {
                notified.channels.push(c);
            }
        }
    }

    /// The client pid to put in a notification on `channel` from that
    /// server, if certain.
    pub(crate) fn sender(&self, addr: SocketAddr, backend_pid: i32, channel: &str) -> Option<i32> {
        let now = Instant::now();
        let mut map = self.lock();
        let holds = map.get_mut(&(addr, backend_pid))?;
        prune(holds, now);
        if holds.iter().any(|h| h.notified(channel)) {
            return only_client(holds.iter().filter(|h| h.notified(channel)));
        }
        only_client(holds.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_only_when_one_client_held_the_server_recently() {
        let s = Senders::default();
        let a: SocketAddr = "127.0.0.1:5432".parse().unwrap();
        assert_eq!(s.sender(a, 10, "ch"), None);
        s.note(a, 10, 1001);
        assert_eq!(s.sender(a, 10, "ch"), Some(1001));
        s.forget(a, 10);
        // Returned just now: still the only recent holder.
        assert_eq!(s.sender(a, 10, "ch"), Some(1001));
        // Another client took it: ambiguous, keep the server's pid.
        s.note(a, 10, 1002);
        assert_eq!(s.sender(a, 10, "ch"), None);
        // Same client again is not ambiguous.
        let b: SocketAddr = "127.0.0.2:5432".parse().unwrap();
        s.note(b, 10, 7);
        s.forget(b, 10);
        s.note(b, 10, 7);
        assert_eq!(s.sender(b, 10, "ch"), Some(7));
        // Other servers and other hosts are independent.
        assert_eq!(s.sender(a, 11, "ch"), None);
    }

    #[test]
    fn a_client_that_notified_the_channel_by_name_is_the_sender_however_busy_the_server() {
        let s = Senders::default();
        let a: SocketAddr = "127.0.0.1:5432".parse().unwrap();
        let to = |c: &str| NotifyTargets {
            channels: vec![c.into()],
            any: false,
        };
        s.note(a, 10, 1);
        s.note_notify(a, 10, 1, to("one"));
        s.forget(a, 10);
        s.note(a, 10, 2);
        s.note_notify(a, 10, 2, to("two"));
        s.forget(a, 10);
        s.note(a, 10, 3);
        assert_eq!(s.sender(a, 10, "one"), Some(1));
        assert_eq!(s.sender(a, 10, "two"), Some(2));
        // Nobody named it (a trigger): three holders, so nobody is sure.
        assert_eq!(s.sender(a, 10, "three"), None);
        // Two named it: ambiguous.
        s.note_notify(a, 10, 3, to("one"));
        assert_eq!(s.sender(a, 10, "one"), None);
        // A channel that could not be read counts for every channel.
        s.note_notify(
            a,
            10,
            3,
            NotifyTargets {
                channels: vec![],
                any: true,
            },
        );
        assert_eq!(s.sender(a, 10, "two"), None);
        // Only the open hold of the client that holds the server is marked.
        let b: SocketAddr = "127.0.0.2:5432".parse().unwrap();
        s.note_notify(b, 10, 9, to("x"));
        assert_eq!(s.sender(b, 10, "x"), None);
    }
}

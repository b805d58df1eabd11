//! Which client sent a notification, where pgharbor can know it.
//!
//! A NotificationResponse names the *backend* that ran NOTIFY: a pool server.
//! The relay tells the hub when a client starts and stops holding a server
//! ([`crate::listen::ListenHub::note_server_pid`] / `forget_server_pid`),
//! which notifications the statements it sent there send
//! ([`crate::listen::ListenHub::note_notify`], read from the text by
//! `notify_scan`), and how each transaction that sent some ended
//! ([`crate::listen::ListenHub::end_notify_transaction`]). A notification
//! is delivered to listeners after the sender's COMMIT, so by the time the
//! listener reads it the server may be back in the pool or lent to another
//! client. Rewriting to the wrong client would be worse than not rewriting
//! (a driver drops "its own" notifications), so the rule is strict.
//!
//! Postgres queues a transaction's notifications at its COMMIT, in the
//! order they were sent, one per distinct (channel, payload), and the
//! listener reads the queue in order. A server runs one transaction at a
//! time, so per server the notifications arrive in the order its holders
//! sent them. Each NOTIFY with a literal channel and payload is therefore
//! kept per server, in order, as a [`Sent`]: a notification is the first
//! kept one with its channel and payload, and the ones before it (sent
//! earlier, so heard already or never to be heard) are dropped with it.
//! Two clients sending the same channel and payload through one server
//! are told apart by that order. A transaction that rolled back takes its
//! notifications with it, and one on a channel nobody listens to is not
//! kept (`ListenHub::note_notify`): it would never be heard.
//!
//! A notification no kept NOTIFY names (a trigger, a function, a payload
//! that is not a literal) falls back on the holders: among the clients
//! that held that server at any moment of the last [`WINDOW`]:
//! - if exactly one sent a statement notifying the channel, it is the sender;
//! - if none did and exactly one client held the server, it is the sender;
//! - otherwise the server's pid stays.
//!
//! What this cannot see: a kept NOTIFY that sent nothing although its
//! transaction committed (`SELECT pg_notify('c', 'p') WHERE false`, a
//! statement after `ROLLBACK TO SAVEPOINT`, a channel unlistened before
//! the COMMIT) may be taken, until it is dropped, for an identical
//! notification sent later through the same server.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How far back a holder still counts as a possible sender.
pub(crate) const WINDOW: Duration = Duration::from_secs(2);

/// How long a NOTIFY is kept after its transaction ended: the listener
/// connection hears it well before, unless nobody listened to its channel.
const KEEP: Duration = Duration::from_secs(10);

/// At most this many NOTIFYs are kept per server (the oldest go first).
const MAX_SENT: usize = 1024;

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

/// One notification a client's statement sends through a server.
#[derive(Debug)]
struct Sent {
    client_pid: i32,
    /// `None`: not a literal (`pg_notify($1, …)`), so any channel.
    channel: Option<Box<str>>,
    /// `None`: not a literal, so any payload (and perhaps several
    /// notifications).
    payload: Option<Box<str>>,
    /// When its transaction ended; `None` while it is open.
    ended: Option<Instant>,
}

impl Sent {
    fn is(&self, channel: &str, payload: &[u8]) -> bool {
        self.channel.as_deref() == Some(channel)
            && self.payload.as_deref().map(str::as_bytes) == Some(payload)
    }

    fn may_be(&self, channel: &str, payload: &[u8]) -> bool {
        self.channel.as_deref().is_none_or(|c| c == channel)
            && (self.payload.as_deref()).is_none_or(|p| p.as_bytes() == payload)
    }
}

/// What the hub knows of one server.
#[derive(Debug, Default)]
struct ServerSenders {
    holds: VecDeque<Hold>,
    sent: VecDeque<Sent>,
}

impl ServerSenders {
    fn prune(&mut self, now: Instant) {
        (self.holds).retain(|h| h.until.is_none_or(|u| now.duration_since(u) <= WINDOW));
        (self.sent).retain(|s| s.ended.is_none_or(|u| now.duration_since(u) <= KEEP));
    }

    fn is_empty(&self) -> bool {
        self.holds.is_empty() && self.sent.is_empty()
    }

    /// Every hold ends now.
    fn end_holds(&mut self, now: Instant) {
        for h in self.holds.iter_mut() {
            h.until.get_or_insert(now);
        }
    }

    /// The kept NOTIFY a notification on `channel` with `payload` is, taken
    /// with the ones before it: `Some(None)` when an earlier one of another
    /// client, whose payload is not known, may have sent it instead.
    /// `None` when no kept NOTIFY is it.
    fn take_sent(&mut self, channel: &str, payload: &[u8]) -> Option<Option<i32>> {
        let at = self.sent.iter().position(|s| s.is(channel, payload))?;
        let who = self.sent[at].client_pid;
        let doubt =
            (self.sent.iter().take(at)).any(|s| s.client_pid != who && s.may_be(channel, payload));
        self.sent.drain(..=at);
        Some((!doubt).then_some(who))
    }
}

#[derive(Debug, Default)]
pub(crate) struct Senders {
    map: Mutex<HashMap<(SocketAddr, i32), ServerSenders>>,
    calls: std::sync::atomic::AtomicU64,
}

/// The one client among `holds`, if they are all the same client.
fn only_client<'a>(mut holds: impl Iterator<Item = &'a Hold>) -> Option<i32> {
    let first = holds.next()?.client_pid;
    holds.all(|h| h.client_pid == first).then_some(first)
}

impl Senders {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(SocketAddr, i32), ServerSenders>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `client_pid` holds the server `(addr, backend_pid)` from now on.
    pub(crate) fn note(&self, addr: SocketAddr, backend_pid: i32, client_pid: i32) {
        let now = Instant::now();
        let mut map = self.lock();
        let server = map.entry((addr, backend_pid)).or_default();
        server.end_holds(now);
        server.prune(now);
        server.holds.push_back(Hold {
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
            map.retain(|_, s| {
                s.prune(now);
                !s.is_empty()
            });
        }
    }

    /// The server went back to the pool (or was closed). A transaction
    /// still open there (the server was lost, the client left) never
    /// committed what it sent.
    pub(crate) fn forget(&self, addr: SocketAddr, backend_pid: i32) {
        let now = Instant::now();
        let mut map = self.lock();
        if let Some(server) = map.get_mut(&(addr, backend_pid)) {
            server.end_holds(now);
            server.sent.retain(|s| s.ended.is_some());
            server.prune(now);
            if server.is_empty() {
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
        let server = map.entry((addr, backend_pid)).or_default();
        let open = (server.holds.iter_mut().rev())
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
        let unread = targets.any.then_some((None, None));
        let sent = (targets.sent.into_iter()).map(|(c, p)| (Some(c), p));
        for (channel, payload) in sent.chain(unread) {
            // Postgres sends one notification per distinct channel and
            // payload in a transaction.
            let again = (server.sent.iter().rev()).any(|s| {
                s.ended.is_none()
                    && s.client_pid == client_pid
                    && s.channel == channel
                    && s.payload == payload
            });
            if again {
                continue;
            }
            if server.sent.len() == MAX_SENT {
                server.sent.pop_front();
            }
            server.sent.push_back(Sent {
                client_pid,
                channel,
                payload,
                ended: None,
            });
        }
    }

    /// The transaction of `client_pid` on that server ended: what it sent
    /// is kept if it committed, dropped otherwise.
    pub(crate) fn end_transaction(
        &self,
        addr: SocketAddr,
        backend_pid: i32,
        client_pid: i32,
        committed: bool,
    ) {
        let now = Instant::now();
        let mut map = self.lock();
        let Some(server) = map.get_mut(&(addr, backend_pid)) else {
            return;
        };
        let open = |s: &Sent| s.ended.is_none() && s.client_pid == client_pid;
        if committed {
            server
                .sent
                .iter_mut()
                .filter(|s| open(s))
                .for_each(|s| s.ended = Some(now));
        } else {
            server.sent.retain(|s| !open(s));
        }
    }

    /// The client pid to put in a notification on `channel` with `payload`
    /// from that server, if certain.
    pub(crate) fn sender(
        &self,
        addr: SocketAddr,
        backend_pid: i32,
        channel: &str,
        payload: &[u8],
    ) -> Option<i32> {
        let now = Instant::now();
        let mut map = self.lock();
        let server = map.get_mut(&(addr, backend_pid))?;
        server.prune(now);
        if let Some(found) = server.take_sent(channel, payload) {
            return found;
        }
        let holds = &server.holds;
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
        assert_eq!(s.sender(a, 10, "ch", b""), None);
        s.note(a, 10, 1001);
        assert_eq!(s.sender(a, 10, "ch", b""), Some(1001));
        s.forget(a, 10);
        // Returned just now: still the only recent holder.
        assert_eq!(s.sender(a, 10, "ch", b""), Some(1001));
        // Another client took it: ambiguous, keep the server's pid.
        s.note(a, 10, 1002);
        assert_eq!(s.sender(a, 10, "ch", b""), None);
        // Same client again is not ambiguous.
        let b: SocketAddr = "127.0.0.2:5432".parse().unwrap();
        s.note(b, 10, 7);
        s.forget(b, 10);
        s.note(b, 10, 7);
        assert_eq!(s.sender(b, 10, "ch", b""), Some(7));
        // Other servers and other hosts are independent.
        assert_eq!(s.sender(a, 11, "ch", b""), None);
    }

    #[test]
    fn a_client_that_notified_the_channel_by_name_is_the_sender_however_busy_the_server() {
        let s = Senders::default();
        let a: SocketAddr = "127.0.0.1:5432".parse().unwrap();
        let to = |c: &str| NotifyTargets {
            channels: vec![c.into()],
            any: false,
            sent: vec![],
        };
        s.note(a, 10, 1);
        s.note_notify(a, 10, 1, to("one"));
        s.forget(a, 10);
        s.note(a, 10, 2);
        s.note_notify(a, 10, 2, to("two"));
        s.forget(a, 10);
        s.note(a, 10, 3);
        assert_eq!(s.sender(a, 10, "one", b""), Some(1));
        assert_eq!(s.sender(a, 10, "two", b""), Some(2));
        // Nobody named it (a trigger): three holders, so nobody is sure.
        assert_eq!(s.sender(a, 10, "three", b""), None);
        // Two named it: ambiguous.
        s.note_notify(a, 10, 3, to("one"));
        assert_eq!(s.sender(a, 10, "one", b""), None);
        // A channel that could not be read counts for every channel.
        s.note_notify(
            a,
            10,
            3,
            NotifyTargets {
                channels: vec![],
                any: true,
                sent: vec![],
            },
        );
        assert_eq!(s.sender(a, 10, "two", b""), None);
        // Only the open hold of the client that holds the server is marked.
        let b: SocketAddr = "127.0.0.2:5432".parse().unwrap();
        s.note_notify(b, 10, 9, to("x"));
        assert_eq!(s.sender(b, 10, "x", b""), None);
    }

    fn notify(channel: &str, payload: Option<&str>) -> NotifyTargets {
        NotifyTargets {
            channels: vec![channel.into()],
            any: false,
            sent: vec![(channel.into(), payload.map(Into::into))],
        }
    }

    /// `client` holds server 10 for one transaction that sends `targets`.
    fn transaction(s: &Senders, client: i32, targets: NotifyTargets, committed: bool) {
        let a: SocketAddr = "127.0.0.1:5432".parse().unwrap();
        s.note(a, 10, client);
        s.note_notify(a, 10, client, targets);
        s.end_transaction(a, 10, client, committed);
        s.forget(a, 10);
    }

    #[test]
    fn the_same_notification_from_two_clients_through_one_server_goes_by_commit_order() {
        let s = Senders::default();
        let a: SocketAddr = "127.0.0.1:5432".parse().unwrap();
        for client in [1, 2, 1, 3] {
            transaction(&s, client, notify("ch", Some("same")), true);
        }
        let got: Vec<_> = (0..4).map(|_| s.sender(a, 10, "ch", b"same")).collect();
        assert_eq!(got, [Some(1), Some(2), Some(1), Some(3)]);
    }

    #[test]
    fn a_payload_tells_the_sender_among_clients_notifying_one_channel() {
        let s = Senders::default();
        let a: SocketAddr = "127.0.0.1:5432".parse().unwrap();
        transaction(&s, 1, notify("ch", Some("one")), true);
        transaction(&s, 2, notify("ch", Some("two")), true);
        // The holders' rule alone could not tell: both named the channel.
        assert_eq!(s.sender(a, 10, "ch", b"two"), Some(2));
        // Heard after a later one: never to come, as the order says.
        assert_eq!(s.sender(a, 10, "ch", b"one"), None);
    }

    #[test]
    fn a_rolled_back_notification_is_never_taken_for_a_later_one() {
        let s = Senders::default();
        let a: SocketAddr = "127.0.0.1:5432".parse().unwrap();
        transaction(&s, 1, notify("ch", Some("x")), false);
        transaction(&s, 2, notify("ch", Some("x")), true);
        assert_eq!(s.sender(a, 10, "ch", b"x"), Some(2));
        // One transaction sends one notification per channel and payload.
        s.note(a, 10, 3);
        s.note_notify(a, 10, 3, notify("ch", Some("y")));
        s.note_notify(a, 10, 3, notify("ch", Some("y")));
        s.end_transaction(a, 10, 3, true);
        s.forget(a, 10);
        transaction(&s, 4, notify("ch", Some("y")), true);
        assert_eq!(s.sender(a, 10, "ch", b"y"), Some(3));
        assert_eq!(s.sender(a, 10, "ch", b"y"), Some(4));
    }

    #[test]
    fn an_earlier_payload_not_known_makes_the_sender_uncertain() {
        let s = Senders::default();
        let a: SocketAddr = "127.0.0.1:5432".parse().unwrap();
        transaction(&s, 1, notify("ch", None), true);
        transaction(&s, 2, notify("ch", Some("x")), true);
        assert_eq!(s.sender(a, 10, "ch", b"x"), None);
        // The same client's own is no doubt.
        transaction(&s, 5, notify("ch", None), true);
        transaction(&s, 5, notify("ch", Some("x")), true);
        assert_eq!(s.sender(a, 10, "ch", b"x"), Some(5));
    }
}

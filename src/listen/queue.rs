//! One client's bounded notification queue and its overflow policy.
//!
//! The listener task pushes without ever waiting (a short std mutex, never
//! held across an await); the client's relay drains. The queue holds at most
//! `capacity` entries — notifications and overflow markers together — so a
//! client that never reads costs at most `capacity` messages, whatever flows.
//!
//! Overflow, `marker` policy: a notification that does not fit is dropped and
//! its channel remembered. Markers are placed at the gap: as soon as there is
//! room (at the next push or the next drain) one marker per remembered channel
//! enters the queue *before* any later notification, so the application sees
//! "you missed something on channel X" at the point where it missed it.
//! `disconnect` policy: the first notification that does not fit empties the
//! queue and flags the client for a FATAL.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;

use crate::config::OverflowPolicy;
use crate::metrics::Metrics;

/// A queued item; markers are encoded only when drained.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Notification(Bytes),
    Marker(String),
}

#[derive(Debug, Default)]
struct Inner {
    entries: VecDeque<Entry>,
    /// Channels that lost notifications and still owe a marker, in the order
    /// they overflowed (a channel at most once).
    owed: Vec<String>,
    /// Channels whose marker is queued and not yet drained: a later loss on
    /// them is covered by that marker (the client reads it after the loss).
    marked: Vec<String>,
    /// The disconnect policy fired.
    fatal: bool,
    fatal_taken: bool,
}

/// What a push did, for the caller's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    Queued,
    /// Dropped; `new_overflow` is true when this started an overflow episode.
    Dropped {
        new_overflow: bool,
    },
    /// Dropped because the client is (now) flagged for disconnection.
    Fatal,
}

#[derive(Debug)]
pub(crate) struct Queue {
    inner: Mutex<Inner>,
    notify: Notify,
    capacity: usize,
    policy: OverflowPolicy,
}

impl Queue {
    pub(crate) fn new(capacity: usize, policy: OverflowPolicy) -> Queue {
        Queue {
            inner: Mutex::new(Inner::default()),
            notify: Notify::new(),
            capacity: capacity.max(1),
            policy,
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves owed markers into the queue while there is room.
    fn place_markers(inner: &mut Inner, capacity: usize) {
        let room = capacity.saturating_sub(inner.entries.len());
        let n = room.min(inner.owed.len());
        let placed: Vec<String> = inner.owed.drain(..n).collect();
        for ch in placed {
            inner.marked.push(ch.clone());
            inner.entries.push_back(Entry::Marker(ch));
        }
    }

    /// Queues a notification for `channel` without waiting.
    pub(crate) fn push(&self, channel: &str, msg: Bytes) -> Pushed {
        let result = {
            let mut inner = self.lock();
            if inner.fatal {
                return Pushed::Fatal;
            }
            Self::place_markers(&mut inner, self.capacity);
            if inner.owed.is_empty() && inner.entries.len() < self.capacity {
                inner.entries.push_back(Entry::Notification(msg));
                Pushed::Queued
            } else {
                match self.policy {
                    OverflowPolicy::Disconnect => {
                        inner.fatal = true;
                        inner.entries = VecDeque::new();
                        inner.owed = Vec::new();
                        inner.marked = Vec::new();
                        Pushed::Fatal
                    }
                    OverflowPolicy::Marker => {
                        let new_overflow = inner.owed.is_empty();
                        if !inner.owed.iter().any(|c| c == channel)
                            && !inner.marked.iter().any(|c| c == channel)
                        {
                            inner.owed.push(channel.to_owned());
                        }
                        Pushed::Dropped { new_overflow }
                    }
                }
            }
        };
        if matches!(result, Pushed::Queued | Pushed::Fatal) {
            self.notify.notify_one();
        }
        result
    }

    /// Owes a marker for each channel (notifications may have been missed,
    /// e.g. the listener connection was lost), whatever the policy.
    pub(crate) fn owe_markers<'a>(&self, channels: impl IntoIterator<Item = &'a str>) {
        {
            let mut inner = self.lock();
            if inner.fatal {
                return;
            }
            for ch in channels {
                if !inner.owed.iter().any(|c| c == ch) && !inner.marked.iter().any(|c| c == ch) {
                    inner.owed.push(ch.to_owned());
                }
            }
            Self::place_markers(&mut inner, self.capacity);
        }
        self.notify.notify_one();
    }

    /// An UNLISTEN, or a subscription made ahead of its COMMIT that did
    /// not take effect: what was queued for `channel` goes, as if never
    /// heard.
    pub(crate) fn drop_channel(&self, channel: &str) {
        self.keep_channels(|c| c != channel);
    }

    /// Drops what is queued (and owed) for every channel `keep` refuses.
    pub(crate) fn keep_channels(&self, keep: impl Fn(&str) -> bool) {
        let mut inner = self.lock();
        inner.owed.retain(|c| keep(c));
        inner.entries.retain(|e| match e {
            // NotificationResponse: tag, length, sender pid, channel.
            Entry::Notification(b) => {
                let name = b.get(9..).and_then(|r| r.split(|&c| c == 0).next());
                name.and_then(|n| std::str::from_utf8(n).ok())
                    .is_none_or(&keep)
            }
            Entry::Marker(c) => keep(c),
        });
    }

    /// After UNLISTEN: the channel no longer owes a marker. What is queued
    /// for it waits for the end of the client's transaction or command
    /// (`Subscriber::drop_unlistened`): a LISTEN after it may keep it.
    pub(crate) fn forget_channel(&self, channel: &str) {
        self.lock().owed.retain(|c| c != channel);
    }

    /// Appends everything queued (and owed markers) to `out`; returns the
    /// number of messages and how many of them were notifications.
    pub(crate) fn drain_into(&self, out: &mut BytesMut, overflow_payload: &str) -> (usize, usize) {
        let entries = {
            let mut inner = self.lock();
            if inner.fatal {
                return (0, 0);
            }
            let mut taken = std::mem::take(&mut inner.entries);
            inner.marked.clear();
            // The queue is now empty: every owed marker fits after what was
            // queued, which is exactly where the gap was.
            taken.extend(inner.owed.drain(..).map(Entry::Marker));
            taken
        };
        let mut notifications = 0;
        let n = entries.len();
        for e in entries {
            match e {
                Entry::Notification(b) => {
                    notifications += 1;
                    out.extend_from_slice(&b);
                }
                Entry::Marker(ch) => {
                    crate::protocol::backend::notification(out, 0, &ch, overflow_payload)
                }
            }
        }
        (n, notifications)
    }

    /// Something to drain (or a FATAL to take).
    pub(crate) fn has_pending(&self) -> bool {
        let inner = self.lock();
        (inner.fatal && !inner.fatal_taken) || !inner.entries.is_empty() || !inner.owed.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// True once, when the disconnect policy has fired.
    pub(crate) fn take_fatal(&self) -> bool {
        let mut inner = self.lock();
        if inner.fatal && !inner.fatal_taken {
            inner.fatal_taken = true;
            true
        } else {
            false
        }
    }

    /// Resolves when something is pending. Cancel-safe: a wake-up that is
    /// lost with a dropped future is recovered by the `has_pending` check.
    pub(crate) async fn ready(&self) {
        loop {
            let notified = self.notify.notified();
            if self.has_pending() {
                return;
            }
            notified.await;
        }
    }

    /// Counts a push in the metrics.
    pub(crate) fn count(metrics: &Metrics, pushed: Pushed) {
        match pushed {
            Pushed::Queued => {}
            Pushed::Dropped { new_overflow } => {
                metrics.listen_dropped.inc();
                if new_overflow {
                    metrics.listen_overflows.inc();
                }
            }
            Pushed::Fatal => metrics.listen_dropped.inc(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ch: &str, payload: &str) -> Bytes {
        let mut b = BytesMut::new();
        crate::protocol::backend::notification(&mut b, 7, ch, payload);
        b.freeze()
    }

    /// Splits drained bytes into (pid, channel, payload).
    fn decode(mut buf: &[u8]) -> Vec<(i32, String, String)> {
        let mut out = Vec::new();
        while !buf.is_empty() {
            assert_eq!(buf[0], crate::protocol::tag::backend::NOTIFICATION_RESPONSE);
            let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            let body = &buf[5..len + 1];
            let pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
            let mut parts = body[4..].split(|&b| b == 0);
            let ch = String::from_utf8(parts.next().unwrap().to_vec()).unwrap();
            let p = String::from_utf8(parts.next().unwrap().to_vec()).unwrap();
            out.push((pid, ch, p));
            buf = &buf[len + 1..];
        }
        out
    }

    #[test]
    fn dropping_a_channel_keeps_the_others_in_order() {
        let q = Queue::new(3, OverflowPolicy::Marker);
        q.push("a", msg("a", "1"));
        q.push("ab", msg("ab", "1"));
        q.push("a", msg("a", "2"));
        q.push("a", msg("a", "3")); // dropped, marker owed
        q.drop_channel("a");
        let mut out = BytesMut::new();
        assert_eq!(q.drain_into(&mut out, "OVF"), (1, 1));
        assert_eq!(decode(&out), vec![(7, "ab".into(), "1".into())]);
    }

    #[test]
    fn marker_policy_drops_and_marks_once_per_channel_at_the_gap() {
        let q = Queue::new(3, OverflowPolicy::Marker);
        assert_eq!(q.push("a", msg("a", "1")), Pushed::Queued);
        assert_eq!(q.push("b", msg("b", "1")), Pushed::Queued);
        assert_eq!(q.push("a", msg("a", "2")), Pushed::Queued);
        assert_eq!(
            q.push("a", msg("a", "3")),
            Pushed::Dropped { new_overflow: true }
        );
        assert_eq!(
            q.push("b", msg("b", "2")),
            Pushed::Dropped {
                new_overflow: false
            }
        );
        assert_eq!(
            q.push("a", msg("a", "4")),
            Pushed::Dropped {
                new_overflow: false
            }
        );
        assert_eq!(q.len(), 3);
        assert!(q.has_pending());
        let mut out = BytesMut::new();
        assert_eq!(q.drain_into(&mut out, "OVF"), (5, 3));
        let got = decode(&out);
        assert_eq!(
            got,
            vec![
                (7, "a".into(), "1".into()),
                (7, "b".into(), "1".into()),
                (7, "a".into(), "2".into()),
                (0, "a".into(), "OVF".into()),
                (0, "b".into(), "OVF".into()),
            ]
        );
        assert!(!q.has_pending());
        // Room again: a new overflow episode starts afresh.
        assert_eq!(q.push("a", msg("a", "5")), Pushed::Queued);
        let mut out = BytesMut::new();
        assert_eq!(q.drain_into(&mut out, "OVF"), (1, 1));
    }

    #[test]
    fn markers_come_before_later_notifications_and_count_against_capacity() {
        let q = Queue::new(2, OverflowPolicy::Marker);
        q.push("a", msg("a", "1"));
        q.push("a", msg("a", "2"));
        q.push("a", msg("a", "3")); // dropped, marker owed
        q.push("b", msg("b", "1")); // dropped, marker owed
                                    // The client reads only the first one (simulated: take everything,
                                    // then the queue refills).
        let mut out = BytesMut::new();
        q.drain_into(&mut out, "OVF");
        assert_eq!(decode(&out).len(), 4);
        // Overflow again, then room appears through a push after a drain.
        q.push("a", msg("a", "4"));
        q.push("a", msg("a", "5"));
        q.push("c", msg("c", "1")); // dropped
        let mut out = BytesMut::new();
        q.drain_into(&mut out, "OVF");
        q.push("a", msg("a", "6"));
        let mut out2 = BytesMut::new();
        q.drain_into(&mut out2, "OVF");
        let got: Vec<_> = decode(&out)
            .into_iter()
            .map(|(_, c, p)| c + ":" + &p)
            .collect();
        assert_eq!(got, vec!["a:4", "a:5", "c:OVF"]);
        let got: Vec<_> = decode(&out2)
            .into_iter()
            .map(|(_, c, p)| c + ":" + &p)
            .collect();
        assert_eq!(got, vec!["a:6"]);
    }

    #[test]
    fn owed_markers_are_placed_when_a_push_finds_room() {
        let q = Queue::new(2, OverflowPolicy::Marker);
        q.owe_markers(["x", "y", "z"]); // two fit now, one is owed
        assert_eq!(q.len(), 2);
        assert!(matches!(
            q.push("x", msg("x", "late")),
            Pushed::Dropped { .. }
        ));
        let mut out = BytesMut::new();
        let got: Vec<_> = {
            q.drain_into(&mut out, "OVF");
            decode(&out).into_iter().map(|(p, c, _)| (p, c)).collect()
        };
        assert_eq!(got, vec![(0, "x".into()), (0, "y".into()), (0, "z".into())]);
    }

    #[test]
    fn disconnect_policy_flags_once_and_frees_the_queue() {
        let q = Queue::new(2, OverflowPolicy::Disconnect);
        q.push("a", msg("a", "1"));
        q.push("a", msg("a", "2"));
        assert_eq!(q.push("a", msg("a", "3")), Pushed::Fatal);
        assert_eq!(q.len(), 0);
        assert!(q.has_pending());
        assert_eq!(q.push("a", msg("a", "4")), Pushed::Fatal);
        let mut out = BytesMut::new();
        assert_eq!(q.drain_into(&mut out, "OVF"), (0, 0));
        assert!(q.take_fatal());
        assert!(!q.take_fatal());
        assert!(!q.has_pending());
    }

    #[tokio::test]
    async fn ready_wakes_on_push_and_is_cancel_safe() {
        let q = std::sync::Arc::new(Queue::new(4, OverflowPolicy::Marker));
        // A dropped, never-completed ready() loses nothing.
        let r = tokio::time::timeout(std::time::Duration::from_millis(10), q.ready()).await;
        assert!(r.is_err());
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.ready().await });
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        q.push("a", msg("a", "1"));
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
        // Already pending: resolves at once.
        q.ready().await;
    }
}

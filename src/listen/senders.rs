//! Which client sent a notification, where pgharbor can know it.
//!
//! A NotificationResponse names the *backend* that ran NOTIFY: a pool server.
//! The relay tells the hub when a client starts and stops holding a server
//! ([`crate::listen::ListenHub::note_server_pid`] / `forget_server_pid`). A
//! notification is delivered to listeners after the sender's COMMIT, so by the
//! time the listener reads it the server may be back in the pool or lent to
//! another client. Rewriting to the wrong client would be worse than not
//! rewriting (a driver drops "its own" notifications), so the rule is strict:
//! the pid is rewritten only when exactly one client held that server at any
//! moment of the last [`WINDOW`]; otherwise the server's pid stays. With a
//! busy pool (servers changing hands every few ms) most notifications keep the
//! server's pid; a client that holds its server (a long transaction, a quiet
//! pool) gets its own pid back.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How far back a holder still counts as a possible sender.
pub(crate) const WINDOW: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy)]
struct Hold {
    client_pid: i32,
    until: Option<Instant>,
}

#[derive(Debug, Default)]
pub(crate) struct Senders {
    map: Mutex<HashMap<(SocketAddr, i32), VecDeque<Hold>>>,
    calls: std::sync::atomic::AtomicU64,
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
        });
        // Now and then, sweep servers nobody mentioned for a while.
        if self
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % 4096
            == 0
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

    /// The client pid to put in a notification from that server, if certain.
    pub(crate) fn sender(&self, addr: SocketAddr, backend_pid: i32) -> Option<i32> {
        let now = Instant::now();
        let mut map = self.lock();
        let holds = map.get_mut(&(addr, backend_pid))?;
        prune(holds, now);
        let first = holds.front()?.client_pid;
        holds.iter().all(|h| h.client_pid == first).then_some(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_only_when_one_client_held_the_server_recently() {
        let s = Senders::default();
        let a: SocketAddr = "127.0.0.1:5432".parse().unwrap();
        assert_eq!(s.sender(a, 10), None);
        s.note(a, 10, 1001);
        assert_eq!(s.sender(a, 10), Some(1001));
        s.forget(a, 10);
        // Returned just now: still the only recent holder.
        assert_eq!(s.sender(a, 10), Some(1001));
        // Another client took it: ambiguous, keep the server's pid.
        s.note(a, 10, 1002);
        assert_eq!(s.sender(a, 10), None);
        // Same client again is not ambiguous.
        let b: SocketAddr = "127.0.0.2:5432".parse().unwrap();
        s.note(b, 10, 7);
        s.forget(b, 10);
        s.note(b, 10, 7);
        assert_eq!(s.sender(b, 10), Some(7));
        // Other servers and other hosts are independent.
        assert_eq!(s.sender(a, 11), None);
    }
}

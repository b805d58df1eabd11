//! One client's cancel key and the server running its work right now, with
//! the count of cancels in flight toward that server (see the module doc
//! for why `clear_target` waits for them).

use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;

use crate::id_map::IdMap;
use crate::server::cancel::CancelTarget;
use crate::server::ServerKey;

/// One client's cancel slot. The session updates it when it borrows and
/// returns a server; cancel forwarders read it.
pub struct CancelSlot {
    /// The process id the client was given: one pgharbor issued, or in
    /// session mode its server's own ([`CancelHandle::adopt_pid`]). Set
    /// before the client learns it and not changed after.
    pub(super) pid: AtomicI32,
    pub(super) secret: i32,
    state: Mutex<SlotState>,
    /// Woken when the last in-flight forward ends (`clear_target` waits).
    forwards_done: Notify,
    /// When the client began to wait in line for a server, in
    /// microseconds since the Unix epoch; 0 while it does not wait. Shown
    /// by SHOW CLIENTS; written only by a client that has to wait.
    waiting_since_us: AtomicU64,
}

#[derive(Default)]
struct SlotState {
    /// The server running this client's work right now, if any.
    target: Option<CancelTarget>,
    /// Cancels read from `target` and not yet delivered.
    in_flight: u32,
    /// A forward to `target` was sent but never confirmed: its signal may
    /// still arrive, so the server must not serve another client.
    unconfirmed: bool,
}

/// What the session may do with the server it is giving back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum AfterCancels {
    /// No cancel for this server can still arrive.
    Reusable,
    /// A cancel may still arrive: close the server.
    Close,
}

impl CancelSlot {
    pub(super) fn new(pid: i32, secret: i32) -> CancelSlot {
        CancelSlot {
            pid: AtomicI32::new(pid),
            secret,
            state: Mutex::new(SlotState::default()),
            forwards_done: Notify::new(),
            waiting_since_us: AtomicU64::new(0),
        }
    }

    /// The client waits in line for a server from now on (`true`), or no
    /// longer does.
    pub fn set_waiting(&self, waiting: bool) {
        let since = match waiting {
            true => (SystemTime::now().duration_since(SystemTime::UNIX_EPOCH))
                .map_or(1, |d| d.as_micros().max(1) as u64),
            false => 0,
        };
        self.waiting_since_us.store(since, Ordering::Relaxed);
    }

    /// Since when the client waits in line for a server, if it does.
    pub fn waiting_since(&self) -> Option<SystemTime> {
        match self.waiting_since_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(SystemTime::UNIX_EPOCH + Duration::from_micros(us)),
        }
    }

    /// The process id the client was given in BackendKeyData.
    pub fn pid(&self) -> i32 {
        self.pid.load(Ordering::Relaxed)
    }

    pub fn secret(&self) -> i32 {
        self.secret
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The server running this client's work right now (admin console).
    pub fn target(&self) -> Option<ServerKey> {
        self.lock().target.as_ref().map(|t| t.key)
    }

    /// The client now has work running on `target`'s server.
    pub fn set_target(&self, target: CancelTarget) {
        let mut s = self.lock();
        s.target = Some(target);
        s.unconfirmed = false;
    }

    /// The client is about to give its server back: no new cancel may pick
    /// it up, and any cancel already on its way must land first, so that it
    /// cannot reach the next borrower's query. Waits at most about
    /// [`super::FORWARD_TIMEOUT`] (the forwards' own bound).
    pub async fn clear_target(&self) -> AfterCancels {
        if let Some(after) = self.try_clear_target() {
            return after;
        }
        // Boxed: cancels in flight at the end of a transaction are rare,
        // and this future is part of every client task's.
        Box::pin(async {
            loop {
                // Registered before the count is read again, so the last
                // forward's notification cannot slip in between.
                let notified = self.forwards_done.notified();
                if let Some(after) = self.try_clear_target() {
                    return after;
                }
                notified.await;
            }
        })
        .await
    }

    /// Clears the target; `Some` unless cancels are still in flight.
    fn try_clear_target(&self) -> Option<AfterCancels> {
        let mut s = self.lock();
        s.target = None;
        if s.in_flight > 0 {
            return None;
        }
        Some(if std::mem::take(&mut s.unconfirmed) {
            AfterCancels::Close
        } else {
            AfterCancels::Reusable
        })
    }

    /// The target if a cancel may be sent now; the guard counts the cancel
    /// in flight until it is dropped.
    pub(super) fn begin_forward(self: &Arc<Self>) -> Option<(CancelTarget, InFlight)> {
        let mut s = self.lock();
        let t = s.target.clone()?;
        s.in_flight += 1;
        let guard = InFlight {
            slot: self.clone(),
            confirmed: false,
        };
        Some((t, guard))
    }
}

/// One forward in flight on a slot. Dropping it ends the forward, also when
/// the forwarding task is dropped half-way (then it counts as unconfirmed),
/// so `clear_target` can never wait forever.
pub(super) struct InFlight {
    slot: Arc<CancelSlot>,
    /// The server closed the cancel connection: the signal was sent.
    pub(super) confirmed: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.slot.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        if !self.confirmed {
            s.unconfirmed = true;
        }
        if s.in_flight == 0 {
            self.slot.forwards_done.notify_waiters();
        }
    }
}

const SHARDS: usize = 16;

/// The live slots by process id, in shards so that logins and cancels of
/// different clients rarely wait for one lock.
pub(super) struct SlotTable {
    shards: Vec<Mutex<IdMap<i32, Arc<CancelSlot>>>>,
}

impl SlotTable {
    pub(super) fn new() -> SlotTable {
        SlotTable {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    pub(super) fn shard(&self, pid: i32) -> std::sync::MutexGuard<'_, IdMap<i32, Arc<CancelSlot>>> {
        self.shards[(pid as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// Removes the slot from the table when the client session ends.
pub struct CancelHandle {
    pub slot: Arc<CancelSlot>,
    pub(super) table: Arc<SlotTable>,
}

impl CancelHandle {
    /// Gives the client `pid` instead of the one issued, if no other live
    /// client has it: in session mode a client's key carries its server's
    /// real process id, so `pg_backend_pid()`, `pg_terminate_backend` and
    /// the sender pid of a notification agree with BackendKeyData as they
    /// do on Postgres. Call before the client is told its key. `false`
    /// (the issued pid stays) when the pid is taken, e.g. by a session on
    /// another host whose backend has the same pid.
    pub fn adopt_pid(&self, pid: i32) -> bool {
        let old = self.slot.pid();
        if pid <= 0 || pid == old {
            return pid == old;
        }
        match self.table.shard(pid).entry(pid) {
            Entry::Occupied(_) => return false,
            Entry::Vacant(v) => v.insert(self.slot.clone()),
        };
        self.slot.pid.store(pid, Ordering::Relaxed);
        self.table.shard(old).remove(&old);
        true
    }
}

impl Drop for CancelHandle {
    fn drop(&mut self) {
        let pid = self.slot.pid();
        self.table.shard(pid).remove(&pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cancel::registry::CancelRegistry;
    use crate::metrics::Metrics;
    use crate::server::cancel::tests::server_key;
    use std::collections::HashMap;
    use std::time::Duration;

    #[tokio::test]
    async fn clear_target_waits_for_forwards_and_reports_unconfirmed_ones() {
        let reg = Arc::new(CancelRegistry::new(
            1,
            HashMap::new(),
            Arc::new(Metrics::new()),
        ));
        let h = reg.register();
        let addr = "127.0.0.1:9".parse().unwrap();
        h.slot.set_target(server_key(addr));
        assert_eq!(h.slot.clear_target().await, AfterCancels::Reusable);
        assert!(h.slot.begin_forward().is_none(), "no target once cleared");

        h.slot.set_target(server_key(addr));
        let (_, mut guard) = h.slot.begin_forward().unwrap();
        let slot = h.slot.clone();
        let waiter = tokio::spawn(async move { slot.clear_target().await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "must wait for the forward");
        guard.confirmed = true;
        drop(guard);
        assert_eq!(waiter.await.unwrap(), AfterCancels::Reusable);

        h.slot.set_target(server_key(addr));
        let (_, guard) = h.slot.begin_forward().unwrap();
        drop(guard); // dropped half-way: never confirmed
        assert_eq!(h.slot.clear_target().await, AfterCancels::Close);
        h.slot.set_target(server_key(addr));
        assert_eq!(h.slot.clear_target().await, AfterCancels::Reusable);
    }
}

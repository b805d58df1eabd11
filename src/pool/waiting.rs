//! The clients waiting for a server of one pool: their order and waiting
//! times (SHOW POOLS maxwait), and `query_wait_timeout`.
//!
//! The timeout is kept by one timer task per pool instead of a timer per
//! waiting client. All waiters of a pool share the same timeout, so the
//! earliest deadline is the oldest waiter's; the task sleeps until it and
//! wakes whoever is past theirs. A timer per wait cost ~800 instructions
//! per transaction once clients outnumber servers (tokio's timer wheel
//! insert and remove under its lock, the clock reads, the larger boxed
//! future), which is most transactions at 64 or 500 clients on a pool of
//! 20.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use tokio::sync::OwnedSemaphorePermit;

use super::{CheckoutError, Pool, PoolKey};

/// Longest sleep of the timer task, so it notices a closed or dropped pool.
const PERIOD: Duration = Duration::from_secs(1);

struct Waiter {
    id: u64,
    since: Instant,
    /// Woken when the wait times out; left by the waiter's last poll.
    waker: Option<Waker>,
    expired: bool,
}

/// Waiting clients by ticket, oldest first. Tickets are handed out under
/// the list's lock, so the list stays sorted by ticket; the semaphore
/// serves waiters in that same order, so the one leaving is nearly always
/// the first. (With hundreds of clients waiting on a pool of 20, a search
/// from the front cost ~950 instructions per transaction.)
#[derive(Default)]
pub(super) struct WaitingList {
    next_ticket: u64,
    waiting: VecDeque<Waiter>,
}

impl WaitingList {
    /// A ticket for a client that starts waiting at `since`, and whether
    /// the list was empty (the timer task then has no deadline to wake at,
    /// and must be told).
    pub(super) fn join(&mut self, since: Instant) -> (u64, bool) {
        let id = self.next_ticket;
        self.next_ticket += 1;
        let was_empty = self.waiting.is_empty();
        self.waiting.push_back(Waiter {
            id,
            since,
            waker: None,
            expired: false,
        });
        (id, was_empty)
    }

    pub(super) fn leave(&mut self, id: u64) {
        if self.waiting.front().is_some_and(|w| w.id == id) {
            self.waiting.pop_front();
        } else if let Some(i) = self.find(id) {
            // Left out of turn: its wait timed out or was abandoned.
            self.waiting.remove(i);
        }
    }

    fn find(&self, id: u64) -> Option<usize> {
        // A wait parks first just after joining, at the back.
        match self.waiting.back() {
            Some(w) if w.id == id => Some(self.waiting.len() - 1),
            _ => self.waiting.binary_search_by_key(&id, |w| w.id).ok(),
        }
    }

    /// True if `id`'s wait has timed out; otherwise `waker` is kept, to be
    /// woken when it does.
    pub(super) fn park(&mut self, id: u64, waker: &Waker) -> bool {
        let Some(i) = self.find(id) else {
            return false;
        };
        let w = &mut self.waiting[i];
        if w.expired {
            return true;
        }
        match &mut w.waker {
            Some(kept) if kept.will_wake(waker) => {}
            slot => *slot = Some(waker.clone()),
        }
        false
    }

    /// Marks and wakes the waiters waiting `timeout` or longer at `now`;
    /// returns the next deadline, if anyone else waits.
    pub(super) fn expire(&mut self, now: Instant, timeout: Duration) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for w in self.waiting.iter_mut().filter(|w| !w.expired) {
            let deadline = w.since + timeout;
            if deadline <= now {
                w.expired = true;
                if let Some(waker) = w.waker.take() {
                    waker.wake();
                }
            } else {
                next = Some(next.map_or(deadline, |n| n.min(deadline)));
            }
        }
        next
    }

    /// How long the client waiting longest has waited at `now`.
    pub(super) fn longest(&self, now: Instant) -> Duration {
        self.waiting
            .iter()
            .map(|w| now.saturating_duration_since(w.since))
            .max()
            .unwrap_or_default()
    }
}

/// A client's place in [`Pool::waiting`], left when dropped (also
/// when the waiting checkout is abandoned).
struct WaitTicket<'a> {
    pool: &'a Pool,
    id: u64,
}

impl Drop for WaitTicket<'_> {
    fn drop(&mut self) {
        self.pool.waiting_list().leave(self.id);
    }
}

impl Pool {
    fn waiting_list(&self) -> std::sync::MutexGuard<'_, WaitingList> {
        // A panic while holding this lock cannot leave the list inconsistent.
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait_ticket(&self, started: Instant) -> WaitTicket<'_> {
        let (id, first) = self.waiting_list().join(started);
        if first {
            self.wait_timer.notify_one();
        }
        WaitTicket { pool: self, id }
    }

    /// How long the client waiting longest for a server has waited so far
    /// (zero when nobody waits).
    pub fn max_wait(&self, now: Instant) -> Duration {
        self.waiting_list().longest(now)
    }

    /// Waits in line for a permit, listed as waiting since `started`.
    /// `query_wait_timeout` is kept by the pool's wait timer, which wakes
    /// this wait through the waiting list.
    pub(super) async fn acquire_permit(
        &self,
        started: Instant,
    ) -> Result<OwnedSemaphorePermit, CheckoutError> {
        let ticket = self.wait_ticket(started);
        if self.is_paused() {
            return Box::pin(self.acquire_permit_paused()).await;
        }
        let mut acquire = std::pin::pin!(self.permits.clone().acquire_owned());
        let outcome = std::future::poll_fn(|cx| {
            // The permit first: one handed over as the wait expires is kept.
            if let Poll::Ready(r) = acquire.as_mut().poll(cx) {
                return Poll::Ready(Some(r));
            }
            if self.waiting_list().park(ticket.id, cx.waker()) {
                Poll::Ready(None)
            } else {
                Poll::Pending
            }
        })
        .await;
        match outcome {
            Some(Ok(p)) => Ok(p),
            Some(Err(_)) => Err(CheckoutError::Closed(PoolKey::clone(&self.key))),
            None => Err(self.wait_timed_out()),
        }
    }

    /// [`Pool::acquire_permit`] while PAUSEd: waits for RESUME, then in
    /// line, both within `query_wait_timeout`. (The wait for RESUME is not
    /// entered when not paused: a PAUSE after that check is the same race
    /// as a PAUSE after the wait for RESUME ends.)
    async fn acquire_permit_paused(&self) -> Result<OwnedSemaphorePermit, CheckoutError> {
        let wait = async {
            let mut paused = self.paused.subscribe();
            let _ = paused.wait_for(|p| !*p).await;
            self.permits.clone().acquire_owned().await
        };
        match tokio::time::timeout(self.settings.query_wait_timeout, wait).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(CheckoutError::Closed(PoolKey::clone(&self.key))),
            Err(_) => Err(self.wait_timed_out()),
        }
    }

    fn wait_timed_out(&self) -> CheckoutError {
        CheckoutError::Timeout {
            key: PoolKey::clone(&self.key),
            timeout: self.settings.query_wait_timeout,
            in_use: self.in_use(),
            size: self.settings.pool_size,
        }
    }
}

/// Starts the pool's `query_wait_timeout` timer (see the module comment).
pub(super) fn spawn_timer(pool: &Arc<Pool>) {
    let weak: Weak<Pool> = Arc::downgrade(pool);
    let wake = pool.wait_timer.clone();
    tokio::spawn(async move {
        loop {
            let now = Instant::now();
            let next = {
                let Some(pool) = Pool::live(&weak) else {
                    return;
                };
                let next = pool
                    .waiting_list()
                    .expire(now, pool.settings.query_wait_timeout);
                next
            };
            let until = next.map_or(now + PERIOD, |d| d.min(now + PERIOD));
            tokio::select! {
                _ = tokio::time::sleep_until(until.into()) => {}
                _ = wake.notified() => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    fn ids(list: &WaitingList) -> Vec<u64> {
        list.waiting.iter().map(|w| w.id).collect()
    }

    #[test]
    fn waiters_leave_in_turn_or_out_of_turn() {
        let now = Instant::now();
        let mut list = WaitingList::default();
        let tickets: Vec<(u64, bool)> = (0..5).map(|_| list.join(now)).collect();
        assert_eq!(
            tickets,
            [(0, true), (1, false), (2, false), (3, false), (4, false)]
        );
        list.leave(0);
        assert_eq!(ids(&list), [1, 2, 3, 4]);
        // A wait that timed out leaves from the middle.
        list.leave(3);
        assert_eq!(ids(&list), [1, 2, 4]);
        // Leaving twice, or with a ticket never handed out, changes nothing.
        list.leave(3);
        list.leave(99);
        assert_eq!(ids(&list), [1, 2, 4]);
        assert_eq!(list.join(now), (5, false));
        list.leave(4);
        list.leave(1);
        list.leave(2);
        assert_eq!(ids(&list), [5]);
        list.leave(5);
        assert!(list.join(now).1, "the list was empty again");
    }

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_wait_expires_at_its_deadline_and_wakes_its_waiter_once() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(10);
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut list = WaitingList::default();
        let (first, _) = list.join(t0);
        let (second, _) = list.join(t0 + Duration::from_secs(3));
        assert!(!list.park(first, &waker));
        assert!(!list.park(second, &waker));

        // Before any deadline: nobody expires; the next deadline is the oldest's.
        let next = list.expire(t0 + Duration::from_secs(5), timeout);
        assert_eq!(next, Some(t0 + timeout));
        assert_eq!(counter.0.load(Ordering::SeqCst), 0);

        // At the first deadline only the first waiter expires, woken once.
        let next = list.expire(t0 + timeout, timeout);
        assert_eq!(next, Some(t0 + Duration::from_secs(13)));
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert!(list.park(first, &waker), "the first wait timed out");
        assert!(!list.park(second, &waker), "the second still waits");
        list.expire(t0 + Duration::from_secs(11), timeout);
        assert_eq!(counter.0.load(Ordering::SeqCst), 1, "no second wake");

        // Once the expired waiter leaves, maxwait counts the other one.
        list.leave(first);
        assert_eq!(
            list.longest(t0 + Duration::from_secs(12)),
            Duration::from_secs(9)
        );
        assert!(list.expire(t0 + Duration::from_secs(13), timeout).is_none());
        assert_eq!(counter.0.load(Ordering::SeqCst), 2);
    }
}

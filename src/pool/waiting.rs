//! Permits and waiting for them, over the pool's slots (`slots.rs`): the
//! [`Permit`] a lent server carries, the place in line a client awaits,
//! PAUSE / RESUME, and the `query_wait_timeout` and `query_wait_notify`
//! timer.
//!
//! The timeout is kept by one timer task per pool instead of a timer per
//! waiting client. All waiters of a pool share the same timeout, so the
//! earliest deadline is the oldest waiter's; the task sleeps until it and
//! wakes whoever is past theirs. A timer per wait was a large part of a
//! transaction's cost once clients outnumber servers (tokio's timer wheel
//! insert and remove under its lock, the clock reads, the larger boxed
//! future), which is most transactions at 64 or 500 clients on a pool of
//! 20.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::slots::{Polled, Slots};
use super::{CheckoutError, Pool, PoolKey};

/// Longest sleep of the timer task, so it notices a closed or dropped pool.
const PERIOD: Duration = Duration::from_secs(1);

/// The right to hold one of the pool's servers; given back when dropped
/// (to the first waiting client, if any).
pub(crate) struct Permit {
    pub(super) pool: Arc<Pool>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        // Woken once the lock is released.
        let woken = self.pool.slots().give_back();
        wake_all(woken);
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("pool", &self.pool.key)
            .finish()
    }
}

/// A client's place in line, and its wait: a permit and the clock as the
/// wait ended (the wait counted in `pgharbor_pool_wait_seconds`), or the
/// reason there is none. Dropped before its wait ends (the client left),
/// it leaves the line, passing on a permit granted meanwhile. Counted in
/// `pgharbor_pool_clients_waiting` while it exists.
pub(crate) struct InLine {
    pool: Arc<Pool>,
    id: u64,
    /// When the wait began.
    since: Instant,
    /// The ticket left the line (it does as its wait ends).
    done: bool,
}

impl Drop for InLine {
    fn drop(&mut self) {
        self.pool.stats.clients_waiting.dec();
        if !self.done {
            let woken = self.pool.slots().leave(self.id);
            wake_all(woken);
        }
    }
}

/// What a wait in line comes to next.
pub(crate) enum WaitEvent {
    /// The client has waited `query_wait_notify`: it is to be told, and
    /// the wait goes on (the line is polled again).
    NoticeDue,
    /// The wait is over: a permit, or why there is none.
    Done(Result<(Permit, Instant), CheckoutError>),
}

impl InLine {
    /// Polls the wait; [`WaitEvent::NoticeDue`] comes at most once.
    pub(crate) fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<WaitEvent> {
        let (polled, woken) = self.pool.slots().poll(self.id, cx.waker());
        wake_all(woken);
        let out = match polled {
            Polled::Pending => return Poll::Pending,
            Polled::NoticeDue => return Poll::Ready(WaitEvent::NoticeDue),
            Polled::Granted => {
                let now = Instant::now();
                self.pool
                    .stats
                    .wait_seconds
                    .observe(now.saturating_duration_since(self.since).as_secs_f64());
                Ok((
                    Permit {
                        pool: self.pool.clone(),
                    },
                    now,
                ))
            }
            Polled::Expired => Err(self.pool.wait_timed_out()),
            Polled::Closed => Err(self.pool.closed_error()),
        };
        self.done = true;
        Poll::Ready(WaitEvent::Done(out))
    }
}

/// The wait alone, for waiters with nobody to tell: a due notice is
/// passed over.
impl Future for InLine {
    type Output = Result<(Permit, Instant), CheckoutError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let line = self.get_mut();
        loop {
            match line.poll_event(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(WaitEvent::NoticeDue) => continue,
                Poll::Ready(WaitEvent::Done(out)) => return Poll::Ready(out),
            }
        }
    }
}

impl Pool {
    pub(super) fn slots(&self) -> MutexGuard<'_, Slots> {
        // A panic while holding this lock cannot leave the slots
        // inconsistent: every method changes them in one step.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A permit now, if one is free and nobody waits (and not PAUSEd).
    pub(super) fn try_permit(self: &Arc<Self>) -> Option<Permit> {
        self.slots()
            .try_take()
            .then(|| Permit { pool: self.clone() })
    }

    /// A permit now, as [`Pool::try_permit`], or a place in line, listed
    /// as waiting since `since` (SHOW POOLS maxwait); both under one lock,
    /// so a permit given back in between cannot be missed.
    pub(crate) fn permit_or_line(self: &Arc<Self>, since: Instant) -> Result<Permit, InLine> {
        let (id, first) = {
            let mut slots = self.slots();
            if slots.try_take() {
                return Ok(Permit { pool: self.clone() });
            }
            slots.join(since)
        };
        if first {
            self.wait_timer.notify_one();
        }
        self.stats.clients_waiting.inc();
        Err(InLine {
            pool: self.clone(),
            id,
            since,
            done: false,
        })
    }

    /// How long the client waiting longest for a server has waited so far
    /// (zero when nobody waits).
    pub fn max_wait(&self, now: Instant) -> Duration {
        self.slots().longest(now)
    }

    pub(super) fn wait_timed_out(&self) -> CheckoutError {
        CheckoutError::Timeout {
            key: PoolKey::clone(&self.key),
            timeout: self.settings().query_wait_timeout,
            in_use: self.in_use(),
            size: self.slots().size(),
        }
    }

    pub fn pause(&self) {
        let woken = self.slots().set_paused(true);
        wake_all(woken);
    }

    /// RESUME: permits freed while paused go to the waiting clients.
    pub fn resume(&self) {
        let woken = self.slots().set_paused(false);
        wake_all(woken);
    }

    pub fn is_paused(&self) -> bool {
        self.slots().is_paused()
    }

    /// Lends no more: waiting clients are told the pool is closing.
    pub(super) fn close_slots(&self) {
        let woken = self.slots().close();
        wake_all(woken);
    }
}

/// Wakes what a change to the slots returned, once their lock is released.
pub(super) fn wake_all(wakers: impl IntoIterator<Item = Waker>) {
    wakers.into_iter().for_each(Waker::wake);
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
                let settings = pool.settings();
                let (timeout, notify) = (settings.query_wait_timeout, settings.query_wait_notify);
                let (woken, next) = pool.slots().expire(now, timeout, notify);
                wake_all(woken);
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

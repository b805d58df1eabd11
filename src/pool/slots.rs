//! The pool's servers as permits, and the clients waiting for one, under
//! one lock: who may hold a server, in which order waiting clients get
//! one, PAUSE, and `query_wait_timeout` expiry (see `waiting.rs`).
//!
//! A permit given back goes straight to the first waiting client (marked
//! granted and woken), never through a free count a newcomer could take
//! first; a client that finds a permit free takes it only when nobody
//! waits. This replaces a tokio semaphore beside a separate list of
//! waiting clients for SHOW POOLS: one lock per checkout and per return
//! instead of two, and a wait whose state is a ticket number (measured
//! with `bench/marginal.sh -c 64`, where most transactions wait).

use std::collections::VecDeque;
use std::task::Waker;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    /// A permit was handed to this waiter; it has not collected it yet.
    Granted,
    /// `query_wait_timeout` passed first.
    Expired,
}

struct Waiter {
    id: u64,
    since: Instant,
    /// Left by the waiter's last poll; woken on grant, expiry, or when
    /// its notice falls due.
    waker: Option<Waker>,
    state: State,
    notice: Notice,
}

/// The NOTICE a client waiting `query_wait_notify` gets, once per wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Notice {
    NotYet,
    /// Its time came; the waiter sends it at its next poll.
    Due,
    Sent,
}

/// What a waiter finds when it looks at its ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Polled {
    /// The permit is the waiter's now.
    Granted,
    Expired,
    Closed,
    Pending,
    /// Still waiting, for `query_wait_notify` so far: the client is to be
    /// told (once), and the wait goes on.
    NoticeDue,
}

/// Permits and waiting clients. Tickets are handed out under the lock, so
/// the list stays sorted by ticket.
pub(super) struct Slots {
    /// The pool's size (`pool_size`); a RELOAD may change it.
    size: usize,
    /// Permits held by clients or granted to a waiter not yet back. Above
    /// `size` after a RELOAD shrank the pool: permits given back are then
    /// absorbed until it is within `size` again.
    held: usize,
    paused: bool,
    closed: bool,
    next_ticket: u64,
    waiting: VecDeque<Waiter>,
}

impl Slots {
    pub(super) fn new(size: usize) -> Slots {
        Slots {
            size,
            held: 0,
            paused: false,
            closed: false,
            next_ticket: 0,
            waiting: VecDeque::new(),
        }
    }

    /// Takes a free permit, if there is one and the pool lends now. Free
    /// permits while someone waits exist only during PAUSE (a permit given
    /// back otherwise goes to the first waiter), so this never jumps the
    /// line.
    pub(super) fn try_take(&mut self) -> bool {
        if self.held >= self.size || self.paused || self.closed {
            return false;
        }
        self.held += 1;
        true
    }

    /// A ticket for a client that starts waiting at `since`, and whether
    /// nobody else waited (the timer task then has no deadline to wake at,
    /// and must be told).
    pub(super) fn join(&mut self, since: Instant) -> (u64, bool) {
        let id = self.next_ticket;
        self.next_ticket += 1;
        let was_empty = self.waiting.is_empty();
        self.waiting.push_back(Waiter {
            id,
            since,
            waker: None,
            state: State::Waiting,
            notice: Notice::NotYet,
        });
        (id, was_empty)
    }

    fn find(&self, id: u64) -> Option<usize> {
        // Grants go in ticket order, so the one looking is nearly always
        // the first; a wait parks first just after joining, at the back.
        match (self.waiting.front(), self.waiting.back()) {
            (Some(w), _) if w.id == id => Some(0),
            (_, Some(w)) if w.id == id => Some(self.waiting.len() - 1),
            _ => self.waiting.binary_search_by_key(&id, |w| w.id).ok(),
        }
    }

    /// Looks at ticket `id`: a granted permit, an expiry or a closed pool
    /// ends the wait (the ticket leaves the list); otherwise `waker` is
    /// kept, to be woken when one of those happens. A permit granted to a
    /// pool that closed meanwhile is given back. The waker returned, if
    /// any, is to be woken once the lock is released.
    pub(super) fn poll(&mut self, id: u64, waker: &Waker) -> (Polled, Option<Waker>) {
        let Some(i) = self.find(id) else {
            return (Polled::Closed, None);
        };
        let w = &mut self.waiting[i];
        let polled = match w.state {
            State::Granted if self.closed => {
                self.waiting.remove(i);
                return (Polled::Closed, self.give_back());
            }
            _ if self.closed => Polled::Closed,
            State::Granted => Polled::Granted,
            State::Expired => Polled::Expired,
            State::Waiting => {
                match &mut w.waker {
                    Some(kept) if kept.will_wake(waker) => {}
                    slot => *slot = Some(waker.clone()),
                }
                if w.notice == Notice::Due {
                    w.notice = Notice::Sent;
                    return (Polled::NoticeDue, None);
                }
                return (Polled::Pending, None);
            }
        };
        self.waiting.remove(i);
        (polled, None)
    }

    /// The waiter holding ticket `id` gave up (its client left, or its
    /// checkout was dropped). A permit already granted to it goes on.
    pub(super) fn leave(&mut self, id: u64) -> Option<Waker> {
        let i = self.find(id)?;
        let w = self.waiting.remove(i)?;
        (w.state == State::Granted)
            .then(|| self.give_back())
            .flatten()
    }

    /// A permit comes back: to the first waiter, unless PAUSEd, nobody
    /// waits, or the pool is over its size. Returns the waker of the
    /// waiter that got it.
    pub(super) fn give_back(&mut self) -> Option<Waker> {
        self.held = self.held.saturating_sub(1);
        self.grant_next()
    }

    /// A free permit to the first waiter, if there is both.
    fn grant_next(&mut self) -> Option<Waker> {
        if self.paused || self.closed || self.held >= self.size {
            return None;
        }
        let w = self
            .waiting
            .iter_mut()
            .find(|w| w.state == State::Waiting)?;
        w.state = State::Granted;
        self.held += 1;
        // A waiter that never parked yet finds the grant at its first poll.
        Some(w.waker.take().unwrap_or_else(|| Waker::noop().clone()))
    }

    /// Free permits to the waiters, in order, as long as there are both.
    fn grant_free(&mut self) -> Vec<Waker> {
        std::iter::from_fn(|| self.grant_next()).collect()
    }

    /// A RELOAD changed `pool_size`: a larger pool grants its new permits
    /// to the waiters at once (their wakers are returned); a smaller one
    /// absorbs permits as they come back.
    pub(super) fn resize(&mut self, size: usize) -> Vec<Waker> {
        self.size = size;
        self.grant_free()
    }

    /// More permits are held than the pool's size (it shrank): the server
    /// coming back with one is to be closed rather than kept.
    pub(super) fn over_size(&self) -> bool {
        self.held > self.size
    }

    pub(super) fn size(&self) -> usize {
        self.size
    }

    pub(super) fn is_paused(&self) -> bool {
        self.paused
    }

    /// PAUSE (`true`) or RESUME. On RESUME the permits freed meanwhile go
    /// to the waiters, in order; their wakers are returned.
    pub(super) fn set_paused(&mut self, paused: bool) -> Vec<Waker> {
        self.paused = paused;
        self.grant_free()
    }

    /// Lends no more; every waiter is woken to find the pool closed.
    pub(super) fn close(&mut self) -> Vec<Waker> {
        self.closed = true;
        self.waiting
            .iter_mut()
            .filter_map(|w| w.waker.take())
            .collect()
    }

    /// Permits held (by clients, or granted to a waiter not yet back).
    pub(super) fn in_use(&self) -> usize {
        self.held
    }

    /// Marks and returns the wakers of the waiters waiting `timeout` or
    /// longer at `now`, and of those whose `notify` (zero: none) fell due,
    /// and the next deadline of either kind, if anyone else waits.
    pub(super) fn expire(
        &mut self,
        now: Instant,
        timeout: Duration,
        notify: Duration,
    ) -> (Vec<Waker>, Option<Instant>) {
        let mut next: Option<Instant> = None;
        let mut soonest = |at: Instant| next = Some(next.map_or(at, |n: Instant| n.min(at)));
        let mut woken = Vec::new();
        for w in self
            .waiting
            .iter_mut()
            .filter(|w| w.state == State::Waiting)
        {
            let deadline = w.since + timeout;
            if deadline <= now {
                w.state = State::Expired;
                woken.extend(w.waker.take());
                continue;
            }
            soonest(deadline);
            if notify.is_zero() || w.notice != Notice::NotYet {
                continue;
            }
            let due = w.since + notify;
            if due <= now {
                w.notice = Notice::Due;
                woken.extend(w.waker.take());
            } else {
                soonest(due);
            }
        }
        (woken, next)
    }

    /// How long the client waiting longest has waited at `now`.
    pub(super) fn longest(&self, now: Instant) -> Duration {
        self.waiting
            .iter()
            .filter(|w| w.state == State::Waiting)
            .map(|w| now.saturating_duration_since(w.since))
            .max()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting() -> (Arc<CountingWaker>, Waker) {
        let c = Arc::new(CountingWaker(AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

    fn ids(s: &Slots) -> Vec<u64> {
        s.waiting.iter().map(|w| w.id).collect()
    }

    #[test]
    fn a_returned_permit_goes_to_the_first_waiter_not_to_a_newcomer() {
        let now = Instant::now();
        let (_, waker) = counting();
        let mut s = Slots::new(1);
        assert!(s.try_take());
        assert!(!s.try_take(), "one permit only");
        let (a, first) = s.join(now);
        let (b, _) = s.join(now);
        assert!(first);
        assert_eq!(s.poll(a, &waker).0, Polled::Pending);
        assert_eq!(s.poll(b, &waker).0, Polled::Pending);
        // The holder gives its permit back: the first waiter gets it.
        assert!(s.give_back().is_some());
        assert!(!s.try_take(), "a newcomer does not jump the line");
        assert_eq!(s.in_use(), 1, "granted counts as held");
        assert_eq!(s.poll(b, &waker).0, Polled::Pending, "not b's turn");
        assert_eq!(s.poll(a, &waker).0, Polled::Granted);
        assert_eq!(ids(&s), [b]);
        // a is done: b gets it, then nobody waits and the permit is free.
        assert!(s.give_back().is_some());
        assert_eq!(s.poll(b, &waker).0, Polled::Granted);
        assert!(s.give_back().is_none());
        assert_eq!(s.in_use(), 0);
        assert!(s.try_take());
    }

    #[test]
    fn a_grant_wakes_the_parked_waiter() {
        let (count, waker) = counting();
        let mut s = Slots::new(1);
        assert!(s.try_take());
        let (a, _) = s.join(Instant::now());
        assert_eq!(s.poll(a, &waker).0, Polled::Pending);
        s.give_back().expect("a waker").wake();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(s.poll(a, &waker).0, Polled::Granted);
    }

    #[test]
    fn a_waiter_that_leaves_after_its_grant_passes_the_permit_on() {
        let now = Instant::now();
        let (_, waker) = counting();
        let mut s = Slots::new(1);
        assert!(s.try_take());
        let (a, _) = s.join(now);
        let (b, _) = s.join(now);
        assert!(s.give_back().is_some());
        // a's client went away before collecting its permit.
        assert!(s.leave(a).is_some(), "b is woken");
        assert_eq!(s.poll(b, &waker).0, Polled::Granted);
        // Leaving twice, or with a ticket never handed out, changes nothing.
        assert!(s.leave(a).is_none());
        assert!(s.leave(99).is_none());
        assert_eq!(s.in_use(), 1);
    }

    #[test]
    fn pause_holds_returned_permits_and_resume_hands_them_out_in_order() {
        let now = Instant::now();
        let (_, waker) = counting();
        let mut s = Slots::new(2);
        assert!(s.try_take());
        assert!(s.try_take());
        assert!(s.set_paused(true).is_empty());
        assert!(s.is_paused());
        let (a, _) = s.join(now);
        let (b, _) = s.join(now);
        let (c, _) = s.join(now);
        assert!(s.give_back().is_none(), "no grant while paused");
        assert!(s.give_back().is_none());
        assert!(!s.try_take(), "nor a free permit");
        assert_eq!(s.poll(a, &waker).0, Polled::Pending);
        let woken = s.set_paused(false);
        assert_eq!(woken.len(), 2, "one grant per free permit");
        assert_eq!(s.poll(a, &waker).0, Polled::Granted);
        assert_eq!(s.poll(b, &waker).0, Polled::Granted);
        assert_eq!(s.poll(c, &waker).0, Polled::Pending);
    }

    #[test]
    fn a_wait_expires_at_its_deadline_and_wakes_its_waiter_once() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(10);
        let (count, waker) = counting();
        let mut s = Slots::new(1);
        assert!(s.try_take());
        let (first, _) = s.join(t0);
        let (second, _) = s.join(t0 + Duration::from_secs(3));
        assert_eq!(s.poll(first, &waker).0, Polled::Pending);
        assert_eq!(s.poll(second, &waker).0, Polled::Pending);

        // Before any deadline: nobody expires; the next deadline is the oldest's.
        let (woken, next) = s.expire(t0 + Duration::from_secs(5), timeout, Duration::ZERO);
        assert!(woken.is_empty());
        assert_eq!(next, Some(t0 + timeout));

        // At the first deadline only the first waiter expires, woken once.
        let (woken, next) = s.expire(t0 + timeout, timeout, Duration::ZERO);
        woken.into_iter().for_each(Waker::wake);
        assert_eq!(next, Some(t0 + Duration::from_secs(13)));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        let (woken, _) = s.expire(t0 + Duration::from_secs(11), timeout, Duration::ZERO);
        assert!(woken.is_empty(), "no second wake");
        // An expired waiter is not granted a permit; maxwait counts the other.
        assert!(s.give_back().is_some());
        assert_eq!(
            s.longest(t0 + Duration::from_secs(12)),
            Duration::ZERO,
            "the second holds a grant now"
        );
        assert_eq!(s.poll(first, &waker).0, Polled::Expired);
        assert_eq!(s.poll(second, &waker).0, Polled::Granted);
        assert!(s.waiting.is_empty());
    }

    #[test]
    fn a_waiter_is_told_once_after_query_wait_notify_and_keeps_its_place() {
        let t0 = Instant::now();
        let (timeout, notify) = (Duration::from_secs(10), Duration::from_secs(2));
        let (count, waker) = counting();
        let mut s = Slots::new(1);
        assert!(s.try_take());
        let (first, _) = s.join(t0);
        let (second, _) = s.join(t0 + Duration::from_secs(1));
        assert_eq!(s.poll(first, &waker).0, Polled::Pending);
        assert_eq!(s.poll(second, &waker).0, Polled::Pending);

        // The first notice is the next deadline, before any expiry.
        let (woken, next) = s.expire(t0 + Duration::from_secs(1), timeout, notify);
        assert!(woken.is_empty());
        assert_eq!(next, Some(t0 + notify));
        // Due for the first waiter only: woken, told at its poll, once.
        let (woken, next) = s.expire(t0 + notify, timeout, notify);
        woken.into_iter().for_each(Waker::wake);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(next, Some(t0 + Duration::from_secs(3)));
        assert_eq!(s.poll(first, &waker).0, Polled::NoticeDue);
        assert_eq!(s.poll(first, &waker).0, Polled::Pending, "told once");
        let (woken, _) = s.expire(t0 + Duration::from_secs(4), timeout, notify);
        assert_eq!(woken.len(), 1, "the second waiter's turn");
        // The first in line still gets the permit first.
        assert!(s.give_back().is_some());
        assert_eq!(s.poll(first, &waker).0, Polled::Granted);
        // The second's notice fell due, but a grant came before its poll:
        // the grant is what it finds.
        assert!(s.give_back().is_some());
        assert_eq!(s.poll(second, &waker).0, Polled::Granted);
    }

    #[test]
    fn no_notice_when_query_wait_notify_is_zero() {
        let t0 = Instant::now();
        let (_, waker) = counting();
        let mut s = Slots::new(0);
        let (id, _) = s.join(t0);
        let (woken, next) = s.expire(
            t0 + Duration::from_secs(60),
            Duration::from_secs(120),
            Duration::ZERO,
        );
        assert!(woken.is_empty());
        assert_eq!(next, Some(t0 + Duration::from_secs(120)));
        assert_eq!(s.poll(id, &waker).0, Polled::Pending);
    }

    #[test]
    fn longest_wait_is_the_oldest_waiting_client() {
        let t0 = Instant::now();
        let mut s = Slots::new(0);
        assert_eq!(s.longest(t0), Duration::ZERO);
        s.join(t0);
        s.join(t0 + Duration::from_secs(2));
        assert_eq!(
            s.longest(t0 + Duration::from_secs(5)),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn a_larger_size_grants_the_new_permits_to_waiters_at_once() {
        let now = Instant::now();
        let (_, waker) = counting();
        let mut s = Slots::new(1);
        assert!(s.try_take());
        let (a, _) = s.join(now);
        let (b, _) = s.join(now);
        let (c, _) = s.join(now);
        assert_eq!(s.resize(3).len(), 2, "two new permits, two waiters woken");
        assert_eq!(s.poll(a, &waker).0, Polled::Granted);
        assert_eq!(s.poll(b, &waker).0, Polled::Granted);
        assert_eq!(s.poll(c, &waker).0, Polled::Pending);
        assert_eq!(s.in_use(), 3);
    }

    #[test]
    fn a_smaller_size_absorbs_returned_permits_until_within_it() {
        let now = Instant::now();
        let (_, waker) = counting();
        let mut s = Slots::new(3);
        assert!(s.try_take() && s.try_take() && s.try_take());
        let (a, _) = s.join(now);
        assert!(s.resize(1).is_empty());
        assert!(s.over_size());
        // Two permits come back and are absorbed: nobody is granted one.
        assert!(s.give_back().is_none());
        assert!(s.give_back().is_none());
        assert!(!s.over_size());
        assert_eq!(s.poll(a, &waker).0, Polled::Pending);
        // The third goes to the waiter, as in a pool of one.
        assert!(s.give_back().is_some());
        assert_eq!(s.poll(a, &waker).0, Polled::Granted);
        assert!(!s.try_take());
    }

    #[test]
    fn close_wakes_every_waiter_and_grants_nothing_more() {
        let (count, waker) = counting();
        let mut s = Slots::new(1);
        assert!(s.try_take());
        let (a, _) = s.join(Instant::now());
        let (b, _) = s.join(Instant::now());
        assert_eq!(s.poll(a, &waker).0, Polled::Pending);
        assert_eq!(s.poll(b, &waker).0, Polled::Pending);
        s.close().into_iter().for_each(Waker::wake);
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        assert!(s.give_back().is_none());
        assert!(!s.try_take());
        assert_eq!(s.poll(a, &waker).0, Polled::Closed);
        assert_eq!(s.poll(b, &waker).0, Polled::Closed);
    }
}

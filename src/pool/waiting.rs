//! The clients waiting for a server of one pool, for SHOW POOLS maxwait.

use std::collections::VecDeque;
use std::time::Instant;

/// Waiting clients by ticket, oldest first. Tickets are handed out under
/// the list's lock, so the list stays sorted by ticket; the semaphore
/// serves waiters in that same order, so the one leaving is nearly always
/// the first. With hundreds of clients waiting on a pool of 20, a search
/// from the front cost ~950 instructions per transaction.
#[derive(Default)]
pub(super) struct WaitingList {
    next_ticket: u64,
    pub(super) waiting: VecDeque<(u64, Instant)>,
}

impl WaitingList {
    pub(super) fn join(&mut self, started: Instant) -> u64 {
        let id = self.next_ticket;
        self.next_ticket += 1;
        self.waiting.push_back((id, started));
        id
    }

    pub(super) fn leave(&mut self, id: u64) {
        if self.waiting.front().is_some_and(|(first, _)| *first == id) {
            self.waiting.pop_front();
        } else if let Ok(i) = self.waiting.binary_search_by_key(&id, |(t, _)| *t) {
            // Left out of turn: its wait timed out or was abandoned.
            self.waiting.remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &WaitingList) -> Vec<u64> {
        list.waiting.iter().map(|(id, _)| *id).collect()
    }

    #[test]
    fn waiters_leave_in_turn_or_out_of_turn() {
        let now = Instant::now();
        let mut list = WaitingList::default();
        let tickets: Vec<u64> = (0..5).map(|_| list.join(now)).collect();
        assert_eq!(tickets, [0, 1, 2, 3, 4]);
        list.leave(0);
        assert_eq!(ids(&list), [1, 2, 3, 4]);
        // A wait that timed out leaves from the middle.
        list.leave(3);
        assert_eq!(ids(&list), [1, 2, 4]);
        // Leaving twice, or with a ticket never handed out, changes nothing.
        list.leave(3);
        list.leave(99);
        assert_eq!(ids(&list), [1, 2, 4]);
        assert_eq!(list.join(now), 5);
        list.leave(4);
        list.leave(1);
        list.leave(2);
        assert_eq!(ids(&list), [5]);
    }
}

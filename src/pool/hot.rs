//! The few pool settings the relay reads at every turn, kept as atomics.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::config::PoolDefaults;

/// The few settings read on the way of every transaction (each turn of a
/// client's relay, each checkout), as plain atomics beside the swapped
/// [`PoolDefaults`]: a relaxed load is one instruction where an `ArcSwap`
/// load is about fifty. Nanoseconds.
pub struct HotSettings {
    client_idle_timeout: AtomicU64,
    idle_transaction_timeout: AtomicU64,
    server_check_delay: AtomicU64,
    query_timeout: AtomicU64,
    transaction_timeout: AtomicU64,
    /// `query_timeout` or `transaction_timeout` is set: the one load the
    /// relay makes for them while both are off.
    deadlines: AtomicBool,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn has_deadlines(s: &PoolDefaults) -> bool {
    !s.query_timeout.is_zero() || !s.transaction_timeout.is_zero()
}

impl HotSettings {
    pub(super) fn of(s: &PoolDefaults) -> HotSettings {
        HotSettings {
            client_idle_timeout: AtomicU64::new(nanos(s.client_idle_timeout)),
            idle_transaction_timeout: AtomicU64::new(nanos(s.idle_transaction_timeout)),
            server_check_delay: AtomicU64::new(nanos(s.server_check_delay)),
            query_timeout: AtomicU64::new(nanos(s.query_timeout)),
            transaction_timeout: AtomicU64::new(nanos(s.transaction_timeout)),
            deadlines: AtomicBool::new(has_deadlines(s)),
        }
    }

    /// Takes a RELOAD's values.
    pub(super) fn store(&self, s: &PoolDefaults) {
        let set = |a: &AtomicU64, d| a.store(nanos(d), Ordering::Relaxed);
        set(&self.client_idle_timeout, s.client_idle_timeout);
        set(&self.idle_transaction_timeout, s.idle_transaction_timeout);
        set(&self.server_check_delay, s.server_check_delay);
        set(&self.query_timeout, s.query_timeout);
        set(&self.transaction_timeout, s.transaction_timeout);
        self.deadlines.store(has_deadlines(s), Ordering::Relaxed);
    }

    /// `query_timeout` or `transaction_timeout` is on.
    #[inline]
    pub fn deadlines(&self) -> bool {
        self.deadlines.load(Ordering::Relaxed)
    }

    pub fn query_timeout(&self) -> Duration {
        Duration::from_nanos(self.query_timeout.load(Ordering::Relaxed))
    }

    pub fn transaction_timeout(&self) -> Duration {
        Duration::from_nanos(self.transaction_timeout.load(Ordering::Relaxed))
    }

    pub fn client_idle_timeout(&self) -> Duration {
        Duration::from_nanos(self.client_idle_timeout.load(Ordering::Relaxed))
    }

    pub fn idle_transaction_timeout(&self) -> Duration {
        Duration::from_nanos(self.idle_transaction_timeout.load(Ordering::Relaxed))
    }

    pub fn server_check_delay(&self) -> Duration {
        Duration::from_nanos(self.server_check_delay.load(Ordering::Relaxed))
    }
}

//! A RELOAD reaching pools already open: new settings at once, a new size
//! (grown at once, shrunk as servers come back), a new server target
//! (servers to the old one closed, idle ones now and busy ones when given
//! back), or the pool retired because its database or user is gone.
//!
//! Nothing here cuts a transaction: a server lent to a client stays with it
//! until the client gives it back at the end of its transaction.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::waiting::wake_all;
use super::Pool;
use crate::config::PoolDefaults;
use crate::server::{Server, ServerTarget};

/// Why a RELOAD closed a pool: what its clients are told as they next ask
/// for a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retired {
    DatabaseRemoved(String),
    UserRemoved(String),
}

impl std::fmt::Display for Retired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Retired::DatabaseRemoved(db) => write!(
                f,
                "database \"{db}\" was removed from the configuration (RELOAD); this connection ends"
            ),
            Retired::UserRemoved(user) => write!(
                f,
                "user \"{user}\" was removed from the configuration (RELOAD); this connection ends"
            ),
        }
    }
}

/// What [`Pool::apply`] changed.
#[derive(Debug, Default)]
pub struct Applied {
    pub resized: bool,
    /// The target the pool left, when its host, port or database changed.
    pub moved_from: Option<Arc<ServerTarget>>,
}

impl Pool {
    /// Takes a RELOAD's settings and server target. Open servers keep
    /// their connections unless the target's host, port or database
    /// changed.
    pub fn apply(&self, settings: PoolDefaults, target: ServerTarget) -> Applied {
        let old = self.target.swap(Arc::new(target));
        let new = self.target.load();
        let retargeted = old.endpoints != new.endpoints
            || old.session_attrs != new.session_attrs
            || old.dbname != new.dbname;
        drop(new);
        if retargeted {
            // Servers opened before this generation close when seen; the
            // parameters told at login come from the new server.
            self.reconnect();
            *self.template.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        let size = settings.pool_size;
        self.hot.store(&settings);
        self.settings.store(Arc::new(settings));
        let resized = self.resize(size);
        Applied {
            resized,
            moved_from: retargeted.then_some(old),
        }
    }

    /// A new `pool_size`: waiting clients get the new permits at once; a
    /// smaller pool closes idle servers beyond its size now, and busy ones
    /// as they are given back (see [`Pool::put_idle`]).
    fn resize(&self, size: usize) -> bool {
        let (woken, room) = {
            let mut slots = self.slots();
            if slots.size() == size {
                return false;
            }
            let woken = slots.resize(size);
            let over = slots.over_size();
            // Under the slots lock, as `above_size` clears it: a clear
            // that saw the old size can never undo this newer shrink.
            if over {
                self.shrinking.store(true, Ordering::Release);
            }
            (woken, size.saturating_sub(slots.in_use()))
        };
        wake_all(woken);
        self.stats.pool_size.set(size as i64);
        let closed = self.trim_idle(room);
        tracing::info!(pool = %self.key, pool_size = size, idle_closed = closed, "pool resized by RELOAD");
        true
    }

    /// Closes idle servers beyond `keep`, the least recently used first.
    fn trim_idle(&self, keep: usize) -> usize {
        let closed: Vec<Box<Server>> = {
            let mut idle = self.idle_list();
            let excess = idle.len().saturating_sub(keep);
            // The list ends with the most recently used.
            idle.drain(..excess).collect()
        };
        self.stats.servers_idle.sub(closed.len() as i64);
        closed.len()
    }

    /// Whether a server given back now is to be closed because the pool
    /// is above its size. Cheap while the pool never shrank: one atomic
    /// load per release.
    pub(super) fn above_size(&self) -> bool {
        if !self.shrinking.load(Ordering::Acquire) {
            return false;
        }
        let slots = self.slots();
        let over = slots.over_size();
        if !over {
            self.shrinking.store(false, Ordering::Release);
        }
        over
    }

    /// Closes the pool for good: its database or user left the
    /// configuration. Clients in a transaction finish it; their server is
    /// closed when given back, and each client is told `why` when it next
    /// asks for a server.
    pub fn retire(&self, why: Retired) {
        tracing::info!(pool = %self.key, reason = %why, "pool closed by RELOAD");
        let _ = self.retired.set(why);
        self.close();
    }

    /// What a client asking for a server of this closed pool is told.
    pub(super) fn closed_error(&self) -> super::CheckoutError {
        match self.retired.get() {
            Some(why) => super::CheckoutError::Retired(why.clone()),
            None => super::CheckoutError::Closed(super::PoolKey::clone(&self.key)),
        }
    }
}

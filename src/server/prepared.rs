//! The statements a server holds under pgharbor's names (transaction
//! mode), and the names some server of the instance has accepted. What the
//! names mean, and when they are prepared, is the relay's business
//! (`client/prepared.rs`).

use std::collections::HashMap;
use std::sync::Arc;

/// The hasher of the set looked up on every Bind of a named statement
/// (see `client/prepared.rs`, whose maps use it for the same reason).
type FastHash = foldhash::fast::RandomState;

/// One statement a server has prepared.
#[derive(Debug)]
struct Prepared {
    /// Last use, for the LRU.
    tick: u64,
    /// Its result shape on this server (`client::prepared::row_shape`), 0
    /// until a Describe
    /// of it was answered there.
    shape: u64,
}

/// What a server has prepared, bounded, least recently used evicted first.
#[derive(Debug, Default)]
pub struct PreparedSet {
    used: HashMap<Arc<str>, Prepared, FastHash>,
    tick: u64,
    /// The server may hold statements missing from `used` (a client's
    /// DEALLOCATE ALL or DISCARD ALL reached it, which may have failed):
    /// each Parse pgharbor sends it under a proxy name is preceded by a
    /// Close of that name, so that it cannot fail with 42P05.
    unsure: bool,
}

impl PreparedSet {
    /// True (and marks it used) if the server has `name`.
    pub fn touch(&mut self, name: &Arc<str>) -> bool {
        self.tick += 1;
        match self.used.get_mut(name) {
            Some(p) => {
                p.tick = self.tick;
                true
            }
            None => false,
        }
    }

    /// [`PreparedSet::touch`], with the statement's shape on this server
    /// (0 when unknown); `None` if the server lacks it.
    pub fn touch_shape(&mut self, name: &str) -> Option<u64> {
        self.tick += 1;
        let p = self.used.get_mut(name)?;
        p.tick = self.tick;
        Some(p.shape)
    }

    /// A Describe of `name` was answered on this server with `shape`.
    pub fn set_shape(&mut self, name: &str, shape: u64) {
        if let Some(p) = self.used.get_mut(name) {
            p.shape = shape;
        }
    }

    /// Records `name`; returns the statement to close if over `cap`.
    pub fn insert(&mut self, name: Arc<str>, cap: usize) -> Option<Arc<str>> {
        self.tick += 1;
        let tick = self.tick;
        self.used.insert(name.clone(), Prepared { tick, shape: 0 });
        if self.used.len() <= cap.max(1) {
            return None;
        }
        let victim = self
            .used
            .iter()
            .filter(|(n, _)| **n != name)
            .min_by_key(|(_, p)| p.tick)
            .map(|(n, _)| n.clone())?;
        self.used.remove(&victim);
        Some(victim)
    }

    pub fn remove(&mut self, name: &str) {
        self.used.remove(name);
    }

    /// The server's session was reset: it has no statements.
    pub fn clear(&mut self) {
        self.used.clear();
        self.unsure = false;
    }

    /// Something that may drop the server's statements reached it: none is
    /// assumed there, and a Parse under a proxy name is sent after a Close.
    pub fn forget_all(&mut self) {
        self.used.clear();
        self.unsure = true;
    }

    /// The server may hold a statement missing from the list: each Parse
    /// under a proxy name is sent after a Close of it from now on.
    pub fn mark_unsure(&mut self) {
        self.unsure = true;
    }

    /// See [`PreparedSet::forget_all`].
    pub fn is_unsure(&self) -> bool {
        self.unsure
    }

    pub fn len(&self) -> usize {
        self.used.len()
    }

    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }
}

/// Statements some server of this instance has accepted (bounded: when full
/// it starts over, which only costs a round trip later).
#[derive(Default)]
pub struct KnownStatements {
    set: std::sync::RwLock<std::collections::HashSet<Arc<str>>>,
}

const MAX_KNOWN_STATEMENTS: usize = 100_000;

impl KnownStatements {
    pub fn contains(&self, name: &str) -> bool {
        self.set
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(name)
    }

    /// A Parse of `name` failed: its text may fail again (an object it
    /// names was dropped), so it is no longer answered without a server.
    pub fn remove(&self, name: &str) {
        if self.contains(name) {
            let mut set = self.set.write().unwrap_or_else(|e| e.into_inner());
            set.remove(name);
        }
    }

    pub fn insert(&self, name: Arc<str>) {
        if self.contains(&name) {
            return;
        }
        let mut set = self.set.write().unwrap_or_else(|e| e.into_inner());
        if set.len() >= MAX_KNOWN_STATEMENTS {
            set.clear();
        }
        set.insert(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_evicts_the_least_recently_used() {
        let mut s = PreparedSet::default();
        let n = |x: &str| -> Arc<str> { x.into() };
        assert_eq!(s.insert(n("a"), 2), None);
        assert_eq!(s.insert(n("b"), 2), None);
        assert!(s.touch(&n("a")));
        assert_eq!(s.insert(n("c"), 2), Some(n("b")));
        assert!(s.touch(&n("a")) && s.touch(&n("c")) && !s.touch(&n("b")));
    }
}

//! The parameter maps a pool's clients are told at login (ParameterStatus).
//!
//! Clients with the same settings share one map, and the map a server
//! produced for a client's startup settings is remembered: the next client
//! with the same settings (the next connection of the same application) is
//! told the same without a server. With a new connection per transaction
//! that was a checkout, a release and two copies of the map per login.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Weak};

use super::Pool;

/// Parameter name to value, as a server reports them.
pub type Params = BTreeMap<String, String>;

/// Startup settings: known, writable parameters under the names the
/// server reports them by, with the client's values, in the client's order.
pub type Settings = Vec<(String, String)>;

/// How many distinct maps, and how many sets of startup settings, a pool
/// remembers.
const REMEMBERED: usize = 8;

#[derive(Default)]
pub(super) struct ParamMaps {
    /// Maps clients hold now, most recent first (weak: a map nobody holds
    /// is forgotten).
    recent: VecDeque<Weak<Params>>,
    /// Startup settings a server applied, and the map it produced; most
    /// recent first.
    settled: VecDeque<(Settings, Arc<Params>)>,
}

impl Pool {
    /// The map to keep for a client whose parameters are `params`: an equal
    /// one another client already holds, if there is one among the last
    /// [`REMEMBERED`] distinct maps, else `params` itself. Clients with
    /// the same settings (one application, one driver) then cost the memory
    /// once, and checkout recognizes a server already synced to their map
    /// by pointer instead of comparing every parameter.
    pub fn share_params(&self, params: Arc<Params>) -> Arc<Params> {
        let mut maps = self.params.lock().unwrap_or_else(|e| e.into_inner());
        share(&mut maps.recent, params)
    }

    /// The map a server produced for a client with these startup
    /// `settings`, if one did recently.
    pub fn settled_params(&self, settings: &[(String, String)]) -> Option<Arc<Params>> {
        let maps = self.params.lock().unwrap_or_else(|e| e.into_inner());
        maps.settled
            .iter()
            .find(|(s, _)| s.as_slice() == settings)
            .map(|(_, m)| m.clone())
    }

    /// Remembers the map a server produced for these startup `settings`.
    pub fn remember_settled(&self, settings: Settings, params: Arc<Params>) {
        let mut maps = self.params.lock().unwrap_or_else(|e| e.into_inner());
        if maps.settled.iter().any(|(s, _)| *s == settings) {
            return;
        }
        if maps.settled.len() == REMEMBERED {
            maps.settled.pop_back();
        }
        maps.settled.push_front((settings, params));
    }

    /// Forgets the settled maps (RECONNECT: the next logins ask a server
    /// again).
    pub(super) fn forget_settled(&self) {
        self.params
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .settled
            .clear();
    }
}

/// [`Pool::share_params`] on its list of recent maps.
fn share<T: PartialEq>(recent: &mut VecDeque<Weak<T>>, value: Arc<T>) -> Arc<T> {
    recent.retain(|w| w.strong_count() > 0);
    if let Some(m) = recent
        .iter()
        .find_map(|w| w.upgrade().filter(|m| **m == *value))
    {
        return m;
    }
    if recent.len() == REMEMBERED {
        recent.pop_back();
    }
    recent.push_front(Arc::downgrade(&value));
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(k: &str, v: &str) -> Arc<Params> {
        Arc::new(BTreeMap::from([(k.to_string(), v.to_string())]))
    }

    #[test]
    fn equal_parameter_maps_are_shared_and_the_list_stays_bounded() {
        let mut recent = VecDeque::new();
        let a = share(&mut recent, map("a", "1"));
        let b = share(&mut recent, map("a", "1"));
        assert!(Arc::ptr_eq(&a, &b));
        let c = share(&mut recent, map("a", "2"));
        assert!(!Arc::ptr_eq(&a, &c));
        let kept: Vec<_> = (0..20)
            .map(|i| share(&mut recent, map("n", &i.to_string())))
            .collect();
        assert_eq!(recent.len(), REMEMBERED);
        drop((a, b, c, kept));
        // Maps nobody holds any more are forgotten at the next login.
        share(&mut recent, map("z", ""));
        assert_eq!(recent.len(), 1);
    }
}

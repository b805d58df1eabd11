//! The parameter maps a pool's clients are told at login (ParameterStatus).
//!
//! Clients with the same settings share one map, and the map a server
//! produced for a client's startup settings is remembered: the next client
//! with the same settings (the next connection of the same application) is
//! told the same without a server. With a new connection per transaction
//! that was a checkout, a release and two copies of the map per login.
//! A shared map's ParameterStatus messages are encoded once, when it is
//! first shared, and copied as they are into each login's reply.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, LazyLock, Weak};

use bytes::{Bytes, BytesMut};

use super::Pool;
use crate::protocol::backend;

/// Parameter name to value, as a server reports them.
pub(super) type Params = BTreeMap<String, String>;

/// Startup settings: known, writable parameters under the names the
/// server reports them by, with the client's values, in the client's order.
pub(super) type Settings = Vec<(String, String)>;

/// How many distinct maps, and how many sets of startup settings, a pool
/// remembers.
const REMEMBERED: usize = 8;

#[derive(Default)]
pub(super) struct ParamMaps {
    /// Maps clients hold now, most recent first (weak: a map nobody holds
    /// is forgotten).
    recent: VecDeque<Recent>,
    /// Startup settings a server applied, and the map it produced; most
    /// recent first.
    settled: VecDeque<(Settings, Arc<Params>)>,
}

/// An empty map, for a client until its login gives it one: one shared
/// allocation rather than one per client.
pub fn no_params() -> Arc<Params> {
    static EMPTY: LazyLock<Arc<Params>> = LazyLock::new(Arc::default);
    EMPTY.clone()
}

/// A map clients hold, with its ParameterStatus messages.
struct Recent {
    map: Weak<Params>,
    status: Bytes,
}

/// A map to keep for a client, and the ParameterStatus messages that tell
/// it to the client.
pub struct SharedParams {
    pub map: Arc<Params>,
    pub status: Bytes,
}

impl Pool {
    /// The map to keep for a client whose parameters are `params`: an equal
    /// one another client already holds, if there is one among the last
    /// [`REMEMBERED`] distinct maps, else `params` itself. Clients with
    /// the same settings (one application, one driver) then cost the memory
    /// once, and checkout recognizes a server already synced to their map
    /// by pointer instead of comparing every parameter.
    pub fn share_params(&self, params: &Arc<Params>) -> SharedParams {
        let mut maps = self.params.lock().unwrap_or_else(|e| e.into_inner());
        share(&mut maps.recent, params)
    }

    /// The map a server produced for a client with these startup
    /// `settings`, if one did recently.
    pub fn settled_params(&self, settings: &[(&str, &str)]) -> Option<Arc<Params>> {
        let maps = self.params.lock().unwrap_or_else(|e| e.into_inner());
        maps.settled
            .iter()
            .find(|(s, _)| same_settings(s, settings))
            .map(|(_, m)| m.clone())
    }

    /// Remembers the map a server produced for these startup `settings`.
    pub fn remember_settled(&self, settings: &[(&str, &str)], params: Arc<Params>) {
        let mut maps = self.params.lock().unwrap_or_else(|e| e.into_inner());
        if maps.settled.iter().any(|(s, _)| same_settings(s, settings)) {
            return;
        }
        if maps.settled.len() == REMEMBERED {
            maps.settled.pop_back();
        }
        let owned = settings.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        maps.settled.push_front((owned.collect(), params));
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
fn share(recent: &mut VecDeque<Recent>, value: &Arc<Params>) -> SharedParams {
    recent.retain(|r| r.map.strong_count() > 0);
    let found = recent.iter().find_map(|r| {
        let map = r.map.upgrade()?;
        // By pointer first: most logins bring a map that is already shared
        // (the template's, or a remembered one).
        (Arc::ptr_eq(&map, value) || *map == **value).then(|| SharedParams {
            map,
            status: r.status.clone(),
        })
    });
    if let Some(shared) = found {
        return shared;
    }
    if recent.len() == REMEMBERED {
        recent.pop_back();
    }
    let status = encode_status(value);
    recent.push_front(Recent {
        map: Arc::downgrade(value),
        status: status.clone(),
    });
    SharedParams {
        map: value.clone(),
        status,
    }
}

/// Remembered settings against a login's, pair by pair in order.
fn same_settings(remembered: &Settings, settings: &[(&str, &str)]) -> bool {
    remembered.len() == settings.len()
        && remembered
            .iter()
            .zip(settings)
            .all(|((k, v), (k2, v2))| k == k2 && v == v2)
}

/// One ParameterStatus message per parameter, in the map's order.
fn encode_status(map: &Params) -> Bytes {
    let len = map.iter().map(|(k, v)| 7 + k.len() + v.len()).sum();
    let mut out = BytesMut::with_capacity(len);
    for (k, v) in map {
        backend::parameter_status(&mut out, k, v);
    }
    out.freeze()
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
        let a = share(&mut recent, &map("a", "1")).map;
        let b = share(&mut recent, &map("a", "1")).map;
        assert!(Arc::ptr_eq(&a, &b));
        let c = share(&mut recent, &map("a", "2")).map;
        assert!(!Arc::ptr_eq(&a, &c));
        let kept: Vec<_> = (0..20)
            .map(|i| share(&mut recent, &map("n", &i.to_string())))
            .collect();
        assert_eq!(recent.len(), REMEMBERED);
        drop((a, b, c, kept));
        // Maps nobody holds any more are forgotten at the next login.
        share(&mut recent, &map("z", ""));
        assert_eq!(recent.len(), 1);
    }

    #[test]
    fn a_shared_map_comes_with_its_parameter_status_messages() {
        let mut recent = VecDeque::new();
        let m = Arc::new(BTreeMap::from([
            ("TimeZone".to_string(), "UTC".to_string()),
            ("application_name".to_string(), "app".to_string()),
        ]));
        let first = share(&mut recent, &m);
        let mut expected = BytesMut::new();
        backend::parameter_status(&mut expected, "TimeZone", "UTC");
        backend::parameter_status(&mut expected, "application_name", "app");
        assert_eq!(first.status, expected.freeze());
        // An equal map from another login gets the same messages, not a
        // second encoding.
        let equal = Arc::new((*m).clone());
        let second = share(&mut recent, &equal);
        assert!(Arc::ptr_eq(&second.map, &m));
        assert_eq!(second.status.as_ptr(), first.status.as_ptr());
    }
}

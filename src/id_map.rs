//! Hash maps keyed by ids this instance assigns itself (client ids, cancel
//! keys' process ids).
//!
//! The standard map hashes with SipHash, which guards against keys chosen
//! to collide. These keys are counters no client chooses, so one multiply
//! spreads them well enough, and a login and its logout (two registries,
//! an insert and a remove in each) skip SipHash altogether.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A map from an id this instance assigned.
pub(crate) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Fibonacci hashing: the id times 2^64 / φ, so that consecutive ids land
/// in different buckets and differ in the top bits the map's probe reads.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

const PHI: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by integer keys; kept correct for any other key.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(PHI);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_i32(&mut self, n: i32) {
        self.write_u64(u64::from(n as u32));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(PHI);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn consecutive_ids_differ_in_their_top_bits() {
        // The map's probe compares the top 7 bits; ids that shared them
        // would all look alike to it.
        let b = BuildHasherDefault::<IdHasher>::default();
        let tops: std::collections::HashSet<u64> =
            (1u64..=64).map(|id| b.hash_one(id) >> 57).collect();
        assert!(tops.len() > 32, "only {} distinct top bits", tops.len());
        assert_ne!(b.hash_one(1i32), b.hash_one(2i32));
    }

    #[test]
    fn a_map_keyed_by_ids_finds_what_it_holds() {
        let mut m: IdMap<i32, u32> = IdMap::default();
        for id in 0..10_000 {
            m.insert(id << 4, id as u32);
        }
        assert!((0..10_000).all(|id| m.get(&(id << 4)) == Some(&(id as u32))));
        assert_eq!(m.get(&3), None);
    }
}

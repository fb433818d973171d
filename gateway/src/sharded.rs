//! A map split into independently locked shards, for the per-tenant state every call touches
//! (token buckets, usage counters, directory answers): a call locks one shard for a few
//! instructions and never across an `.await`, so tenants rarely contend with each other.

use std::{
    collections::HashMap,
    hash::{BuildHasher, Hash, RandomState},
    sync::Mutex,
};

const SHARDS: usize = 16;

pub struct Sharded<K, V> {
    shards: [Mutex<HashMap<K, V>>; SHARDS],
    hasher: RandomState,
    /// Entries one shard holds at most; [`Sharded::with`] callers evict beyond it.
    per_shard: usize,
}

impl<K: Hash + Eq, V> Sharded<K, V> {
    /// A map meant to hold at most about `capacity` entries.
    pub fn with_capacity(capacity: usize) -> Sharded<K, V> {
        Sharded {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            hasher: RandomState::new(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    /// How many entries one shard may hold before room is made.
    #[cfg(test)]
    pub fn per_shard(&self) -> usize {
        self.per_shard
    }

    /// Runs `f` on the shard that holds `key`, under that shard's lock only.
    pub fn with<Q, R>(&self, key: &Q, f: impl FnOnce(&mut HashMap<K, V>) -> R) -> R
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + ?Sized,
    {
        let index = (self.hasher.hash_one(key) as usize) % SHARDS;
        let mut shard = self.shards[index].lock().expect("shard lock");
        f(&mut shard)
    }

    /// Makes room for one more entry in `shard` (as [`Sharded::with`] hands it out) if it is
    /// full: drops the entries `keep` lets go (it may bring them up to date as it looks at
    /// them); if that is not enough, drops every entry but those `pinned` holds on to.
    pub fn make_room(
        &self,
        shard: &mut HashMap<K, V>,
        mut keep: impl FnMut(&mut V) -> bool,
        pinned: impl Fn(&V) -> bool,
    ) {
        if shard.len() < self.per_shard {
            return;
        }
        shard.retain(|_, value| keep(value));
        if shard.len() >= self.per_shard {
            shard.retain(|_, value| pinned(value));
        }
    }

    /// Runs `f` on every shard in turn (one lock at a time).
    pub fn each(&self, mut f: impl FnMut(&mut HashMap<K, V>)) {
        for shard in &self.shards {
            f(&mut shard.lock().expect("shard lock"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_land_in_one_shard_each() {
        let map: Sharded<String, u32> = Sharded::with_capacity(64);
        for i in 0..100 {
            map.with(&format!("t{i}"), |shard| shard.insert(format!("t{i}"), i));
        }
        let mut total = 0;
        map.each(|shard| total += shard.len());
        assert_eq!(total, 100);
        assert_eq!(map.with("t42", |shard| shard.get("t42").copied()), Some(42));
        assert_eq!(map.per_shard(), 4);
    }

    #[test]
    fn room_is_made_from_what_is_let_go_then_from_all_but_the_pinned() {
        let map: Sharded<u32, u32> = Sharded::with_capacity(16 * 4);
        let mut shard: HashMap<u32, u32> = (0..4).map(|i| (i, i)).collect();
        map.make_room(&mut shard, |value| *value != 1, |_| false);
        assert_eq!(shard.len(), 3, "one let go is room enough");
        shard.insert(1, 1);
        map.make_room(&mut shard, |_| true, |value| *value >= 2);
        let mut left: Vec<u32> = shard.into_keys().collect();
        left.sort();
        assert_eq!(left, [2, 3], "none let go: all but the pinned");
    }
}

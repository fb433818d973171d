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

    /// How many entries one shard may hold before the caller must make room.
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
}

//! A map split into independently locked shards, for the per-tenant state every call touches
//! (token buckets, usage counters, directory answers): a call locks one shard for a few
//! instructions and never across an `.await`, so tenants rarely contend with each other.

use std::{
    collections::HashMap,
    hash::{BuildHasher, Hash, RandomState},
    sync::Mutex,
};

pub const SHARDS: usize = 16;

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
    /// them); if that is not enough, drops the lowest-ranked quarter of the rest (ties with the
    /// last one dropped go too), never an entry `rank` gives no rank. So a flood of new keys
    /// costs the entries already there a fraction at a time, and the least valuable first.
    /// Returns whether there is room now (not so when every entry is pinned).
    pub fn make_room<R: Ord>(
        &self,
        shard: &mut HashMap<K, V>,
        mut keep: impl FnMut(&mut V) -> bool,
        rank: impl Fn(&V) -> Option<R>,
    ) -> bool {
        if shard.len() < self.per_shard {
            return true;
        }
        shard.retain(|_, value| keep(value));
        if shard.len() < self.per_shard {
            return true;
        }
        let mut ranks: Vec<R> = shard.values().filter_map(&rank).collect();
        let drop = (self.per_shard / 4).max(1).min(ranks.len());
        if drop == 0 {
            return false;
        }
        let (_, last_dropped, _) = ranks.select_nth_unstable(drop - 1);
        let last_dropped = &*last_dropped;
        shard.retain(|_, value| rank(value).is_none_or(|rank| rank > *last_dropped));
        shard.len() < self.per_shard
    }

    /// Runs `f` on every shard in turn (one lock at a time).
    #[cfg(test)]
    pub fn each(&self, mut f: impl FnMut(&mut HashMap<K, V>)) {
        for shard in &self.shards {
            f(&mut shard.lock().expect("shard lock"));
        }
    }

    /// Runs `f` on the `index`th shard (modulo [`SHARDS`]), under its lock only: for walks
    /// that resume where they stopped rather than always starting at the first shard.
    pub fn with_shard<R>(&self, index: usize, f: impl FnOnce(&mut HashMap<K, V>) -> R) -> R {
        f(&mut self.shards[index % SHARDS].lock().expect("shard lock"))
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

        assert_eq!(
            map.with_shard(SHARDS + 3, |shard| shard.len()),
            map.with_shard(3, |shard| shard.len())
        );
    }

    #[test]
    fn room_is_made_from_what_is_let_go_then_from_the_lowest_ranked() {
        let map: Sharded<u32, u32> = Sharded::with_capacity(16 * 8);
        let full = || (0..8).map(|i| (i, i)).collect::<HashMap<u32, u32>>();
        let mut shard = full();
        assert!(map.make_room(&mut shard, |value| *value != 1, |_| Some(0)));
        assert_eq!(shard.len(), 7, "one let go is room enough");

        // None let go: the lowest-ranked quarter goes, never a pinned one.
        let mut shard = full();
        let rank = |value: &u32| (*value >= 1).then_some(*value);
        assert!(map.make_room(&mut shard, |_| true, rank));
        let mut left: Vec<u32> = shard.into_keys().collect();
        left.sort();
        assert_eq!(left, [0, 3, 4, 5, 6, 7]);

        // Everything pinned: no room, nothing dropped.
        let mut shard = full();
        assert!(!map.make_room(&mut shard, |_| true, |_| None::<u32>));
        assert_eq!(shard.len(), 8);

        // Ties with the last one dropped go too.
        let mut shard = full();
        assert!(map.make_room(&mut shard, |_| true, |_| Some(())));
        assert!(shard.is_empty());
    }
}

//! Answers the gateway asks identity for and remembers: by key, for as long as each answer
//! says, with one lookup per key in flight at a time (callers arriving meanwhile wait for it).
//! Lookups run in their own task, so a client that goes away does not abandon them, and the
//! next caller does not start another. The tenant directory (`tenants.rs`) and the API-key
//! verifier (`auth.rs`) remember their answers here.

use std::{
    borrow::Borrow,
    collections::HashMap,
    hash::Hash,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};

use crate::sharded::Sharded;

type Lookup<A> = Shared<BoxFuture<'static, Result<A, String>>>;

#[derive(Clone)]
enum Entry<A: Clone> {
    Known { answer: A, until: Instant },
    Fetching { stale: Option<A>, lookup: Lookup<A> },
}

enum Step<A: Clone> {
    Hit(A),
    Wait(Option<A>, Lookup<A>),
}

/// How long an answer is believed.
type BelieveFor<A> = Box<dyn Fn(&A) -> Duration + Send + Sync>;

/// Answers of type `A` by key `K`.
pub struct LookupCache<K, A: Clone> {
    entries: Sharded<K, Entry<A>>,
    believe_for: BelieveFor<A>,
    /// How long the previous answer stands in when a lookup fails; `None`: it does not.
    stand_in: Option<Duration>,
}

impl<K, A> LookupCache<K, A>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    A: Clone + Send + Sync + 'static,
{
    /// A cache of about `capacity` answers, each believed for `believe_for(answer)`; when a
    /// lookup fails, the previous answer stands in for `stand_in` more, if given.
    pub fn new(
        capacity: usize,
        believe_for: impl Fn(&A) -> Duration + Send + Sync + 'static,
        stand_in: Option<Duration>,
    ) -> Arc<LookupCache<K, A>> {
        Arc::new(LookupCache {
            entries: Sharded::with_capacity(capacity),
            believe_for: Box::new(believe_for),
            stand_in,
        })
    }

    /// The remembered answer for `key`, or the answer of `fetch` (started at most once at a
    /// time per key).
    pub async fn get<Q>(
        self: &Arc<Self>,
        key: &Q,
        fetch: impl FnOnce() -> BoxFuture<'static, Result<A, String>>,
    ) -> Result<A, String>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let now = Instant::now();
        let (stale, lookup) = match self.entries.with(key, |shard| match shard.get(key) {
            Some(Entry::Known { answer, until }) if now < *until => Step::Hit(answer.clone()),
            Some(Entry::Fetching { stale, lookup }) => Step::Wait(stale.clone(), lookup.clone()),
            Some(Entry::Known { answer, .. }) => {
                let stale = self.stand_in.map(|_| answer.clone());
                Step::Wait(stale.clone(), self.start(shard, key, stale, fetch, now))
            }
            None => Step::Wait(None, self.start(shard, key, None, fetch, now)),
        }) {
            Step::Hit(answer) => return Ok(answer),
            Step::Wait(stale, lookup) => (stale, lookup),
        };
        match lookup.await {
            Ok(answer) => Ok(answer),
            Err(error) => stale.ok_or(error),
        }
    }

    /// Starts the lookup of `key` in its own task and records it in `shard` (locked by the
    /// caller), making room first if the shard is full.
    fn start<Q>(
        self: &Arc<Self>,
        shard: &mut HashMap<K, Entry<A>>,
        key: &Q,
        stale: Option<A>,
        fetch: impl FnOnce() -> BoxFuture<'static, Result<A, String>>,
        now: Instant,
    ) -> Lookup<A>
    where
        Q: ToOwned<Owned = K> + ?Sized,
    {
        // Expired answers go first, then every answer; lookups in flight stay.
        self.entries.make_room(
            shard,
            |entry| match entry {
                Entry::Known { until, .. } => now < *until,
                Entry::Fetching { .. } => true,
            },
            |entry| matches!(entry, Entry::Fetching { .. }),
        );
        let cache = self.clone();
        let owned_key = key.to_owned();
        let fallback = stale.clone();
        let fetch = fetch();
        let task = tokio::spawn(async move {
            // Completed whatever happens, or the key would wait on this lookup forever.
            let result = std::panic::AssertUnwindSafe(fetch)
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Err("the lookup panicked".to_owned()));
            cache.complete(owned_key, &result, fallback);
            result
        });
        let lookup = async move { task.await.unwrap_or_else(|e| Err(e.to_string())) }
            .boxed()
            .shared();
        shard.insert(
            key.to_owned(),
            Entry::Fetching {
                stale,
                lookup: lookup.clone(),
            },
        );
        lookup
    }

    /// Remembers the outcome of a lookup of `key` (`stale`: the answer that stands in if it
    /// failed). Also for answers learnt on the side, such as a tenant found by its domain.
    pub fn complete(&self, key: K, result: &Result<A, String>, stale: Option<A>) {
        let now = Instant::now();
        let entry = match (result, stale.zip(self.stand_in)) {
            (Ok(answer), _) => Entry::Known {
                answer: answer.clone(),
                until: now + (self.believe_for)(answer),
            },
            (Err(_), Some((stale, stand_in))) => Entry::Known {
                answer: stale,
                until: now + stand_in,
            },
            (Err(_), None) => {
                self.entries.with(&key, |shard| shard.remove(&key));
                return;
            }
        };
        self.entries
            .with(&key, |shard| shard.insert(key.clone(), entry));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn counting(
        calls: Arc<AtomicUsize>,
        answer: Result<u32, String>,
    ) -> impl FnOnce() -> BoxFuture<'static, Result<u32, String>> {
        move || {
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                answer
            }
            .boxed()
        }
    }

    #[tokio::test]
    async fn one_lookup_per_key_in_flight_and_answers_believed_as_long_as_they_say() {
        let cache: Arc<LookupCache<&str, u32>> =
            LookupCache::new(64, |answer| Duration::from_millis(u64::from(*answer)), None);
        let calls = Arc::new(AtomicUsize::new(0));
        let waiting: Vec<_> = (0..20)
            .map(|_| {
                let cache = cache.clone();
                let fetch = counting(calls.clone(), Ok(200));
                tokio::spawn(async move { cache.get(&"k", fetch).await })
            })
            .collect();
        for waiter in waiting {
            assert_eq!(waiter.await.unwrap(), Ok(200));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Remembered for 200 ms: no second lookup meanwhile.
        assert_eq!(
            cache.get(&"k", counting(calls.clone(), Ok(1))).await,
            Ok(200)
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(cache.get(&"k", counting(calls.clone(), Ok(1))).await, Ok(1));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_lookup_is_not_remembered_and_stands_in_only_if_asked_to() {
        for stand_in in [None, Some(Duration::from_secs(1))] {
            let cache: Arc<LookupCache<&str, u32>> =
                LookupCache::new(64, |_| Duration::ZERO, stand_in);
            let calls = Arc::new(AtomicUsize::new(0));
            assert_eq!(cache.get(&"k", counting(calls.clone(), Ok(7))).await, Ok(7));
            let failed = cache
                .get(&"k", counting(calls.clone(), Err("down".into())))
                .await;
            assert_eq!(
                failed,
                if stand_in.is_some() {
                    Ok(7)
                } else {
                    Err("down".into())
                }
            );
            let next = cache.get(&"k", counting(calls.clone(), Ok(8))).await;
            assert_eq!(next, if stand_in.is_some() { Ok(7) } else { Ok(8) });
        }
    }
}

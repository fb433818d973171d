//! Answers the gateway asks identity for and remembers: by key, for as long as each answer
//! says, with one lookup per key in flight at a time (callers arriving meanwhile wait for it).
//! Lookups run in their own task, so a client that goes away does not abandon them, and the
//! next caller does not start another. A caller may make starting a lookup conditional (a
//! place among bounded lookups, a client's rate); a refusal changes nothing anyone else sees.
//! When a lookup fails, the previous answer may stand in for a moment at a time, up to an
//! age limit. The tenant directory (`tenants.rs`) and the API-key verifier (`auth.rs`)
//! remember their answers here.

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
type Fetch<A> = BoxFuture<'static, Result<A, String>>;

#[derive(Clone)]
enum Entry<A: Clone> {
    Known {
        answer: A,
        until: Instant,
        /// When identity was asked for the answer (a stand-in keeps its original time): the
        /// answer is as of then, and is believed and stands in counting from then.
        received: Instant,
    },
    Fetching {
        stale: Option<Stale<A>>,
        lookup: Lookup<A>,
    },
}

/// A previous answer that may stand in while a lookup fails.
#[derive(Clone)]
struct Stale<A> {
    answer: A,
    received: Instant,
}

enum Step<A: Clone, E> {
    Hit(A),
    Wait(Option<A>, Lookup<A>),
    Refused(E),
}

/// Why [`LookupCache::get_admitted`] has no answer.
#[derive(Debug, PartialEq)]
pub enum NoAnswer<E> {
    /// No lookup was started: the caller's admission refused it.
    Refused(E),
    /// The lookup failed.
    Failed(String),
}

/// How a previous answer stands in when a lookup fails.
#[derive(Clone, Copy, Debug)]
pub struct StandIn {
    /// For how long after each failed lookup (the next caller then tries again).
    pub each: Duration,
    /// Never beyond this age, counted from when identity gave the answer: an outage may keep
    /// an answer alive for a while, not forever.
    pub max_age: Duration,
}

/// How long an answer is believed.
type BelieveFor<A> = Box<dyn Fn(&A) -> Duration + Send + Sync>;

/// Answers of type `A` by key `K`.
pub struct LookupCache<K, A: Clone> {
    entries: Sharded<K, Entry<A>>,
    believe_for: BelieveFor<A>,
    /// `None`: a previous answer does not stand in for a failed lookup.
    stand_in: Option<StandIn>,
}

impl<K, A> LookupCache<K, A>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    A: Clone + Send + Sync + 'static,
{
    /// A cache of about `capacity` answers, each believed for `believe_for(answer)`; when a
    /// lookup fails, the previous answer stands in as `stand_in` says, if given.
    pub fn new(
        capacity: usize,
        believe_for: impl Fn(&A) -> Duration + Send + Sync + 'static,
        stand_in: Option<StandIn>,
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
        fetch: impl FnOnce() -> Fetch<A>,
    ) -> Result<A, String>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let fetch = || Ok::<_, std::convert::Infallible>(fetch());
        self.get_admitted(key, fetch)
            .await
            .map_err(|no_answer| match no_answer {
                NoAnswer::Failed(error) => error,
                NoAnswer::Refused(never) => match never {},
            })
    }

    /// As [`LookupCache::get`], but a lookup starts only if `admit` hands out its fetch; when
    /// it refuses, nothing about `key` changes (a lookup someone else may be waiting on is
    /// neither started nor failed by it), and a stand-in answer still within its age is
    /// returned if there is one. Callers arriving while a lookup is in flight wait for it
    /// without being asked.
    pub async fn get_admitted<Q, E>(
        self: &Arc<Self>,
        key: &Q,
        admit: impl FnOnce() -> Result<Fetch<A>, E>,
    ) -> Result<A, NoAnswer<E>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let now = Instant::now();
        let step = self.entries.with(key, |shard| {
            let stale = match shard.get(key) {
                Some(Entry::Known { answer, until, .. }) if now < *until => {
                    return Step::Hit(answer.clone());
                }
                Some(Entry::Fetching { stale, lookup }) => {
                    let stale = stale.as_ref().map(|stale| stale.answer.clone());
                    return Step::Wait(stale, lookup.clone());
                }
                Some(Entry::Known {
                    answer, received, ..
                }) => self.stale(answer, *received, now),
                None => None,
            };
            match admit() {
                Ok(fetch) => {
                    let answer = stale.as_ref().map(|stale| stale.answer.clone());
                    Step::Wait(answer, self.start(shard, key, stale, fetch, now))
                }
                Err(refusal) => match stale {
                    Some(stale) => Step::Hit(stale.answer),
                    None => Step::Refused(refusal),
                },
            }
        });
        let (stale, lookup) = match step {
            Step::Hit(answer) => return Ok(answer),
            Step::Refused(refusal) => return Err(NoAnswer::Refused(refusal)),
            Step::Wait(stale, lookup) => (stale, lookup),
        };
        match lookup.await {
            Ok(answer) => Ok(answer),
            Err(error) => stale.ok_or(NoAnswer::Failed(error)),
        }
    }

    /// `answer`, given at `received`, as a stand-in at `now` if it may still stand in.
    fn stale(&self, answer: &A, received: Instant, now: Instant) -> Option<Stale<A>> {
        let stand_in = self.stand_in?;
        (now.saturating_duration_since(received) < stand_in.max_age).then(|| Stale {
            answer: answer.clone(),
            received,
        })
    }

    /// Starts the lookup of `key` in its own task and records it in `shard` (locked by the
    /// caller), making room first if the shard is full.
    fn start<Q>(
        self: &Arc<Self>,
        shard: &mut HashMap<K, Entry<A>>,
        key: &Q,
        stale: Option<Stale<A>>,
        fetch: Fetch<A>,
        now: Instant,
    ) -> Lookup<A>
    where
        Q: ToOwned<Owned = K> + ?Sized,
    {
        // Expired answers go first, then those expiring soonest; lookups in flight stay.
        self.entries.make_room(
            shard,
            |entry| match entry {
                Entry::Known { until, .. } => now < *until,
                Entry::Fetching { .. } => true,
            },
            |entry| match entry {
                Entry::Known { until, .. } => Some(*until),
                Entry::Fetching { .. } => None,
            },
        );
        let cache = self.clone();
        let owned_key = key.to_owned();
        let fallback = stale.clone();
        let task = tokio::spawn(async move {
            // Completed whatever happens, or the key would wait on this lookup forever.
            let result = std::panic::AssertUnwindSafe(fetch)
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Err("the lookup panicked".to_owned()));
            cache.complete(owned_key, &result, fallback, now);
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

    /// Remembers `answer` for `key`, learnt on the side (a tenant found by its domain, say)
    /// from identity asked at `asked`.
    pub fn remember(&self, key: K, answer: A, asked: Instant) {
        self.complete(key, &Ok(answer), None, asked);
    }

    /// Remembers the outcome of a lookup of `key` asked at `asked` (`stale`: the answer that
    /// stands in if it failed, while it is young enough), unless an answer asked for later is
    /// known already: lookups of one key by two routes (a tenant by id and by its domain)
    /// race, and a slow answer read before a change must not replace one read after it.
    fn complete(
        &self,
        key: K,
        result: &Result<A, String>,
        stale: Option<Stale<A>>,
        asked: Instant,
    ) {
        let now = Instant::now();
        let entry = match result {
            Ok(answer) => Some(Entry::Known {
                answer: answer.clone(),
                until: asked + (self.believe_for)(answer),
                received: asked,
            }),
            Err(_) => stale
                .and_then(|stale| self.stale(&stale.answer, stale.received, now))
                .zip(self.stand_in)
                .map(|(stale, stand_in)| Entry::Known {
                    answer: stale.answer,
                    until: now + stand_in.each,
                    received: stale.received,
                }),
        };
        self.entries.with(&key, |shard| {
            let newer_known = matches!(
                shard.get(&key),
                Some(Entry::Known { received, .. }) if *received > asked
            );
            if newer_known {
                return;
            }
            match entry {
                Some(entry) => shard.insert(key.clone(), entry),
                None => shard.remove(&key),
            };
        });
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
        let one_second = StandIn {
            each: Duration::from_secs(1),
            max_age: Duration::from_secs(60),
        };
        for stand_in in [None, Some(one_second)] {
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

    #[tokio::test]
    async fn a_stand_in_ages_out_however_often_lookups_fail() {
        let stand_in = StandIn {
            each: Duration::from_millis(10),
            max_age: Duration::from_millis(150),
        };
        let cache: Arc<LookupCache<&str, u32>> =
            LookupCache::new(64, |_| Duration::ZERO, Some(stand_in));
        let calls = Arc::new(AtomicUsize::new(0));
        assert_eq!(cache.get(&"k", counting(calls.clone(), Ok(7))).await, Ok(7));
        let down = || counting(calls.clone(), Err("down".into()));
        // Each failed lookup (20 ms) lets the old answer stand for 10 ms more...
        for _ in 0..3 {
            assert_eq!(cache.get(&"k", down()).await, Ok(7));
        }
        // ...but not past 150 ms after identity gave it.
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(cache.get(&"k", down()).await, Err("down".into()));
        assert_eq!(cache.get(&"k", down()).await, Err("down".into()));
    }

    #[tokio::test]
    async fn a_refused_admission_starts_nothing_and_fails_no_one_elses_lookup() {
        let cache: Arc<LookupCache<&str, u32>> =
            LookupCache::new(64, |_| Duration::from_secs(60), None);
        let calls = Arc::new(AtomicUsize::new(0));
        let refuse = || Err::<Fetch<u32>, _>("busy");

        // Nothing known: refused, and nothing recorded, so the next caller looks it up.
        assert_eq!(
            cache.get_admitted(&"k", refuse).await,
            Err(NoAnswer::Refused("busy"))
        );
        let in_flight = {
            let cache = cache.clone();
            let fetch = counting(calls.clone(), Ok(5));
            tokio::spawn(async move { cache.get(&"k", fetch).await })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        // A lookup in flight: a refused caller waits for it rather than failing it.
        assert_eq!(cache.get_admitted(&"k", refuse).await, Ok(5));
        assert_eq!(in_flight.await.unwrap(), Ok(5));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    /// A lookup asked before an answer learnt on the side, and answered after it, does not
    /// replace it; an answer learnt on the side asked for earlier does not replace a lookup's.
    #[tokio::test]
    async fn an_answer_asked_for_later_is_never_replaced_by_an_older_one() {
        let cache: Arc<LookupCache<&str, u32>> =
            LookupCache::new(64, |_| Duration::from_secs(60), None);
        let calls = Arc::new(AtomicUsize::new(0));
        let slow = {
            let cache = cache.clone();
            let fetch = counting(calls.clone(), Ok(1)); // asked now, answers in 20 ms
            tokio::spawn(async move { cache.get(&"k", fetch).await })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        cache.remember("k", 2, Instant::now());
        assert_eq!(slow.await.unwrap(), Ok(1));
        assert_eq!(cache.get(&"k", counting(calls.clone(), Ok(3))).await, Ok(2));
        let long_ago = Instant::now() - Duration::from_secs(1);
        cache.remember("k", 4, long_ago);
        assert_eq!(cache.get(&"k", counting(calls.clone(), Ok(3))).await, Ok(2));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}

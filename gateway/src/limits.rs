//! Request rates: a token bucket per tenant that refills at the plan's `requests_per_second`
//! and holds at most `request_burst` tokens, each call taking one; and the same per client
//! address for public calls, which anyone can make, credential or not.
//!
//! The clock is a parameter (`now`), so the arithmetic is tested without sleeping. Memory is
//! bounded: a bucket that has refilled to its capacity is the same as a new one, so such
//! buckets are what gets dropped when a shard is full. A bucket still draining is never
//! dropped (its key would come back with a fresh burst): when a shard holds only those, new
//! client addresses share one overflow bucket until room comes back, so a flood of more
//! addresses than the map holds gains one rate between them, not a burst each. Tenants never
//! share: only verified credentials name one, so their map is bounded by the tenants there
//! are, and a tenant sharing a bucket would be refused for calls others made.

use std::{
    collections::HashMap,
    hash::Hash,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use palisade_tenancy::TenantId;

use crate::sharded::Sharded;

/// Buckets kept at once, across all shards, before refilled ones are dropped (past it, with
/// none refilled, client addresses share the overflow bucket and tenants' map grows).
const MAX_BUCKETS: usize = 65_536;

/// A tenant's rate: `per_second` tokens added per second, at most `burst` held.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

impl Rate {
    /// The rate of a plan's limits; `None` when either is -1 (unlimited).
    pub fn of_limits(requests_per_second: i64, request_burst: i64) -> Option<Rate> {
        if requests_per_second < 0 || request_burst < 0 {
            return None;
        }
        Some(Rate {
            per_second: requests_per_second as f64,
            // A bucket smaller than one token would refuse every call, even at the rate.
            burst: (request_burst as f64).max(1.0),
        })
    }
}

#[derive(Clone, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Bucket {
        Bucket {
            tokens: rate.burst,
            updated: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        // `min` also applies a smaller burst at once when the tenant's plan shrinks.
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        self.updated = self.updated.max(now);
    }

    /// Takes one token, or says how long until one is there (`None`: never, a zero rate).
    fn take(&mut self, rate: Rate, now: Instant) -> Result<(), Option<Duration>> {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        if rate.per_second <= 0.0 {
            return Err(None);
        }
        Err(Some(Duration::from_secs_f64(
            (1.0 - self.tokens) / rate.per_second,
        )))
    }

    fn is_full(&self, rate_burst: f64) -> bool {
        self.tokens >= rate_burst
    }
}

/// A bucket per key: per tenant or per [`ClientKey`].
pub struct RateLimiter<K> {
    buckets: Sharded<K, (Bucket, Rate)>,
    /// The bucket of keys that found their shard full of draining buckets; `None` for keys
    /// that never share (their shard grows instead).
    overflow: Option<Mutex<Option<Bucket>>>,
}

impl RateLimiter<TenantId> {
    pub fn for_tenants() -> RateLimiter<TenantId> {
        RateLimiter::with_capacity(MAX_BUCKETS, false)
    }
}

impl RateLimiter<ClientKey> {
    pub fn for_clients() -> RateLimiter<ClientKey> {
        RateLimiter::with_capacity(MAX_BUCKETS, true)
    }
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    fn with_capacity(capacity: usize, share_when_full: bool) -> RateLimiter<K> {
        RateLimiter {
            buckets: Sharded::with_capacity(capacity),
            overflow: share_when_full.then(|| Mutex::new(None)),
        }
    }

    /// Lets one call of `key` through at `now`, or says how long until one may pass.
    pub fn check(&self, key: &K, rate: Rate, now: Instant) -> Result<(), Option<Duration>> {
        self.buckets.with(key, |shard| {
            if let Some((bucket, last_rate)) = shard.get_mut(key) {
                *last_rate = rate;
                return bucket.take(rate, now);
            }
            if !self.make_room(shard, now)
                && let Some(overflow) = &self.overflow
            {
                let mut overflow = overflow.lock().expect("overflow lock");
                return overflow
                    .get_or_insert_with(|| Bucket::full(rate, now))
                    .take(rate, now);
            }
            let mut bucket = Bucket::full(rate, now);
            let taken = bucket.take(rate, now);
            shard.insert(key.clone(), (bucket, rate));
            taken
        })
    }

    /// Gives back a call taken from `key`'s own bucket, for work that turned out not to be
    /// the client's doing. A call taken from the shared bucket is not given back: the key
    /// found no room of its own, which happens only in a flood.
    pub fn give_back(&self, key: &K, rate: Rate) {
        self.buckets.with(key, |shard| {
            if let Some((bucket, _)) = shard.get_mut(key) {
                bucket.tokens = (bucket.tokens + 1.0).min(rate.burst);
            }
        });
    }

    /// Makes room in a full shard by dropping the buckets that have refilled (nothing is
    /// lost: a new bucket starts full). Returns whether there is room now.
    fn make_room(&self, shard: &mut HashMap<K, (Bucket, Rate)>, now: Instant) -> bool {
        self.buckets.make_room(
            shard,
            |(bucket, rate)| {
                bucket.refill(*rate, now);
                !bucket.is_full(rate.burst)
            },
            |_| None::<()>,
        )
    }
}

/// Who a public call is counted against: its client's address, or for
/// IPv6 the address's /64 network, since one host usually holds a whole /64 and could
/// otherwise take a fresh bucket per call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    pub fn of(address: IpAddr) -> ClientKey {
        match address.to_canonical() {
            IpAddr::V6(v6) => {
                let network = u128::from(v6) & !((1u128 << 64) - 1);
                ClientKey(IpAddr::V6(network.into()))
            }
            v4 => ClientKey(v4),
        }
    }
}

impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V6(network) => write!(f, "{network}/64"),
            v4 => write!(f, "{v4}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(id: &str) -> TenantId {
        TenantId::parse(id).unwrap()
    }

    const RATE: Rate = Rate {
        per_second: 2.0,
        burst: 3.0,
    };

    #[test]
    fn a_burst_then_the_rate() {
        let limiter = RateLimiter::for_tenants();
        let t0 = Instant::now();
        let acme = tenant("acme");
        for _ in 0..3 {
            assert_eq!(limiter.check(&acme, RATE, t0), Ok(()));
        }
        // Empty: the next token comes after half a second at 2 per second.
        assert_eq!(
            limiter.check(&acme, RATE, t0),
            Err(Some(Duration::from_millis(500)))
        );
        let t1 = t0 + Duration::from_millis(250);
        assert_eq!(
            limiter.check(&acme, RATE, t1),
            Err(Some(Duration::from_millis(250)))
        );
        let t2 = t0 + Duration::from_millis(500);
        assert_eq!(limiter.check(&acme, RATE, t2), Ok(()));
        assert!(limiter.check(&acme, RATE, t2).is_err());
        // A long pause refills to the burst, never beyond.
        let t3 = t2 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(limiter.check(&acme, RATE, t3), Ok(()));
        }
        assert!(limiter.check(&acme, RATE, t3).is_err());
    }

    #[test]
    fn a_call_given_back_passes_again_within_the_burst() {
        let limiter = RateLimiter::for_tenants();
        let now = Instant::now();
        let acme = tenant("acme");
        limiter.give_back(&acme, RATE);
        for _ in 0..3 {
            limiter.check(&acme, RATE, now).unwrap();
        }
        assert!(limiter.check(&acme, RATE, now).is_err());
        limiter.give_back(&acme, RATE);
        assert_eq!(limiter.check(&acme, RATE, now), Ok(()));
        assert!(limiter.check(&acme, RATE, now).is_err());
        // Never beyond the burst.
        for _ in 0..5 {
            limiter.give_back(&acme, RATE);
        }
        for _ in 0..3 {
            limiter.check(&acme, RATE, now).unwrap();
        }
        assert!(limiter.check(&acme, RATE, now).is_err());
    }

    #[test]
    fn tenants_do_not_share_a_bucket() {
        let limiter = RateLimiter::for_tenants();
        let now = Instant::now();
        for _ in 0..3 {
            limiter.check(&tenant("acme"), RATE, now).unwrap();
        }
        assert!(limiter.check(&tenant("acme"), RATE, now).is_err());
        assert_eq!(limiter.check(&tenant("globex"), RATE, now), Ok(()));
    }

    #[test]
    fn a_clock_going_backwards_adds_nothing() {
        let limiter = RateLimiter::for_tenants();
        let t0 = Instant::now() + Duration::from_secs(10);
        let acme = tenant("acme");
        for _ in 0..3 {
            limiter.check(&acme, RATE, t0).unwrap();
        }
        let earlier = t0 - Duration::from_secs(5);
        assert!(limiter.check(&acme, RATE, earlier).is_err());
    }

    #[test]
    fn limits_map_to_rates() {
        assert_eq!(Rate::of_limits(-1, 20), None);
        assert_eq!(Rate::of_limits(10, -1), None);
        assert_eq!(
            Rate::of_limits(10, 0),
            Some(Rate {
                per_second: 10.0,
                burst: 1.0
            })
        );
        // A zero rate lets the burst through once and then never again.
        let limiter = RateLimiter::for_tenants();
        let now = Instant::now();
        let zero = Rate::of_limits(0, 1).unwrap();
        assert_eq!(limiter.check(&tenant("acme"), zero, now), Ok(()));
        assert_eq!(
            limiter.check(&tenant("acme"), zero, now + Duration::from_secs(3600)),
            Err(None)
        );
    }

    fn client(i: u32) -> ClientKey {
        ClientKey::of(IpAddr::V4(i.into()))
    }

    #[test]
    fn memory_stays_bounded() {
        let limiter = RateLimiter::with_capacity(32, true);
        let now = Instant::now();
        for i in 0..1_000 {
            let _ = limiter.check(&client(i), RATE, now);
        }
        let mut total = 0;
        limiter.buckets.each(|shard| total += shard.len());
        assert!(total <= 32, "{total} buckets");
    }

    #[test]
    fn refilled_buckets_are_dropped_and_draining_ones_kept() {
        let now = Instant::now();
        let mut shard = HashMap::new();
        let mut draining = Bucket::full(RATE, now);
        draining.take(RATE, now).unwrap();
        shard.insert(tenant("acme"), (draining, RATE));
        shard.insert(tenant("globex"), (Bucket::full(RATE, now), RATE));
        let limiter = RateLimiter::with_capacity(32, false);
        assert!(limiter.make_room(&mut shard, now));
        // globex's full bucket is the same as none; acme keeps its debt.
        assert_eq!(shard.len(), 1);
        assert!(shard.contains_key(&tenant("acme")));
        // Once acme has refilled too, it goes as well (when the shard is full again).
        shard.insert(tenant("globex"), (Bucket::full(RATE, now), RATE));
        assert!(limiter.make_room(&mut shard, now + Duration::from_secs(1)));
        assert!(shard.is_empty());
        // Both draining: neither goes, and there is no room.
        let mut shard = HashMap::new();
        for name in ["acme", "globex"] {
            let mut bucket = Bucket::full(RATE, now);
            bucket.take(RATE, now).unwrap();
            shard.insert(tenant(name), (bucket, RATE));
        }
        assert!(!limiter.make_room(&mut shard, now));
        assert_eq!(shard.len(), 2);
    }

    #[test]
    fn clients_finding_no_room_share_one_bucket_rather_than_a_burst_each() {
        let limiter = RateLimiter::with_capacity(16, true);
        let now = Instant::now();
        let allowed = (0..1_000)
            .filter(|i| limiter.check(&client(*i), RATE, now).is_ok())
            .count();
        // One bucket per shard place, each first call taking a token from a full bucket,
        // then the overflow bucket's burst, whatever the number of keys.
        let mut total = 0;
        limiter.buckets.each(|shard| total += shard.len());
        assert_eq!(total, 16);
        assert_eq!(allowed, 16 + 3);
    }

    #[test]
    fn tenants_finding_no_room_still_get_their_own_bucket() {
        let limiter = RateLimiter::with_capacity(16, false);
        let now = Instant::now();
        let tenants: Vec<TenantId> = (0..100).map(|i| tenant(&format!("t{i:03}"))).collect();
        for tenant in &tenants {
            limiter.check(tenant, RATE, now).unwrap();
        }
        // Every tenant's bucket is draining and kept, each with its own burst left.
        for tenant in &tenants {
            for _ in 0..2 {
                limiter.check(tenant, RATE, now).unwrap();
            }
            assert!(limiter.check(tenant, RATE, now).is_err());
        }
    }

    #[test]
    fn clients_are_keyed_by_address_and_ipv6_hosts_by_their_64() {
        let key = |text: &str| ClientKey::of(text.parse().unwrap());
        assert_eq!(key("192.0.2.7").to_string(), "192.0.2.7");
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
        // An IPv4 client seen through a dual-stack socket is the same client.
        assert_eq!(key("::ffff:192.0.2.7"), key("192.0.2.7"));
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:bbbb::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("2001:db8:1:2:aaaa::1").to_string(), "2001:db8:1:2::/64");

        let limiter = RateLimiter::for_clients();
        let now = Instant::now();
        for _ in 0..3 {
            limiter.check(&key("2001:db8::1"), RATE, now).unwrap();
        }
        assert!(limiter.check(&key("2001:db8::2"), RATE, now).is_err());
        assert_eq!(limiter.check(&key("192.0.2.7"), RATE, now), Ok(()));
    }
}

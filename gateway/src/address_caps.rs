//! Open public connections per client address, capped, so that one address cannot hold every
//! one of the gateway's connection slots. A connection only has to make one call (any call,
//! even a refused one) to outlive the first-call deadline, and then lives for the idle
//! timeout; without a cap per address, one client could fill all of them in seconds.
//!
//! Addresses are counted as the public-call rate counts them: IPv4 per address, IPv6 per /64
//! ([`ClientKey`]). Trusted proxies (`--trusted-proxies`) are not capped: their connections
//! carry many clients. This stops one address, not an attacker with many (ten IPv4
//! addresses, or a /56 of IPv6, fill every slot); the per-call limits still hold for those.
//! Refusals are counted (`palisade_gateway_throttled_total{reason="connections_per_address"}`)
//! and logged at most once a minute, so a NAT or a balancer that hides clients' addresses
//! behind the cap shows up.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use palisade_telemetry::LabeledCounter;

use crate::{forwarded::TrustedProxies, limits::ClientKey};

/// At most one warning per this long about refused connections.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The default cap: a tenth of the gateway's connections, far beyond what one browser or
/// service opens, room for a few hundred users behind one NAT address.
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 1_000;

/// Counts open connections per client address.
#[derive(Clone)]
pub struct AddressCaps {
    limit: usize,
    trusted: Arc<TrustedProxies>,
    open: Arc<Mutex<HashMap<ClientKey, usize>>>,
    refused: LabeledCounter,
    last_warning: Arc<Mutex<Option<Instant>>>,
}

/// A connection's place in its address's count, given back when dropped.
pub struct AddressSlot {
    key: ClientKey,
    open: Arc<Mutex<HashMap<ClientKey, usize>>>,
}

impl AddressCaps {
    /// At most `limit` open connections per address; 0 is no cap. Refusals are counted in
    /// `refused`.
    pub fn new(limit: usize, trusted: Arc<TrustedProxies>, refused: LabeledCounter) -> AddressCaps {
        AddressCaps {
            limit,
            trusted,
            open: Arc::default(),
            refused,
            last_warning: Arc::default(),
        }
    }

    /// A place for a new connection from `peer`: `Ok(None)` when its address is not counted
    /// (no cap, or a trusted proxy), `Err(())` when the address already holds `limit`.
    pub fn admit(&self, peer: IpAddr) -> Result<Option<AddressSlot>, ()> {
        if self.limit == 0 || self.trusted.trusts(peer) {
            return Ok(None);
        }
        let key = ClientKey::of(peer);
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = open.entry(key).or_insert(0);
        if *count >= self.limit {
            drop(open);
            self.refuse(key);
            return Err(());
        }
        *count += 1;
        Ok(Some(AddressSlot {
            key,
            open: self.open.clone(),
        }))
    }

    fn refuse(&self, key: ClientKey) {
        self.refused.inc("connections_per_address");
        let now = Instant::now();
        let mut last = (self.last_warning.lock()).unwrap_or_else(|poisoned| poisoned.into_inner());
        if last.is_none_or(|at| now.duration_since(at) >= WARN_EVERY) {
            *last = Some(now);
            tracing::warn!(
                client = %key,
                limit = self.limit,
                "connection refused: its address holds --max-connections-per-address \
                 (behind a NAT or a balancer that hides clients' addresses, raise it or set 0)"
            );
        }
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            // Only addresses with open connections take room in the map.
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(limit: usize, trusted: &[&str]) -> AddressCaps {
        let blocks = trusted.iter().map(|block| block.parse().unwrap()).collect();
        let metrics = palisade_telemetry::ComponentMetrics::new("gateway");
        let refused = metrics.labeled_counter("refused", "refused connections", "reason");
        AddressCaps::new(limit, Arc::new(TrustedProxies::new(blocks)), refused)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_address_holds_at_most_the_limit_until_one_closes() {
        let caps = caps(2, &[]);
        let first = caps.admit(ip("192.0.2.1")).unwrap();
        let second = caps.admit(ip("192.0.2.1")).unwrap();
        assert!(first.is_some() && second.is_some());
        assert!(caps.admit(ip("192.0.2.1")).is_err());
        // Another address has its own count.
        assert!(caps.admit(ip("192.0.2.2")).unwrap().is_some());
        drop(first);
        assert!(caps.admit(ip("192.0.2.1")).unwrap().is_some());
        drop(second);
        assert!(
            caps.open.lock().unwrap().is_empty(),
            "closed addresses leave the map"
        );
    }

    #[test]
    fn ipv6_counts_per_64_and_ipv4_mapped_as_ipv4() {
        let caps = caps(1, &[]);
        let _held = caps.admit(ip("2001:db8:1:2::1")).unwrap();
        assert!(caps.admit(ip("2001:db8:1:2::ffff")).is_err());
        assert!(caps.admit(ip("2001:db8:1:3::1")).unwrap().is_some());
        let _v4 = caps.admit(ip("192.0.2.9")).unwrap();
        assert!(caps.admit(ip("::ffff:192.0.2.9")).is_err());
    }

    #[test]
    fn trusted_proxies_and_no_limit_are_not_counted() {
        let proxied = caps(1, &["10.0.0.0/8"]);
        for _ in 0..3 {
            assert!(proxied.admit(ip("10.1.2.3")).unwrap().is_none());
        }
        let unlimited = caps(0, &[]);
        for _ in 0..3 {
            assert!(unlimited.admit(ip("192.0.2.1")).unwrap().is_none());
        }
    }
}

//! The tenant directory: what the gateway enforces for each tenant (state, rate, monthly
//! quota), from identity's `EdgeService.ResolveTenant`, cached.
//!
//! Answers are kept for a configurable TTL, per tenant id and per host name; "no such tenant"
//! for a shorter time, so that junk `Host` headers cost identity one call per name and a few
//! seconds rather than one per request. One lookup per key is in flight at a time (callers
//! arriving meanwhile wait for it), and lookups run in their own task, so a client that goes
//! away does not abandon them. When identity cannot answer, the previous answer stands for a
//! second more: a brief identity outage must not take down calls it has no part in.
//!
//! Host names map to tenants two ways: `<tenant_id>.<base domain>` when a base domain is
//! configured (`palisade serve gateway --tenant-base-domain`), and a tenant's own `domain`.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use palisade_grpc::{ApiError, MeshChannel, time::micros};
use palisade_proto::palisade::identity::v1::{
    EdgeTenant as EdgeTenantProto, ResolveTenantRequest, TenantState,
    edge_service_client::EdgeServiceClient, resolve_tenant_request::Key,
};
use palisade_tenancy::TenantId;
use tokio::sync::Semaphore;
use tonic::Code;

use crate::{limits::Rate, sharded::Sharded};

/// Answers kept at once, per map (ids, host names).
const MAX_ENTRIES: usize = 16_384;
/// How long "no such tenant" is believed (at most the TTL).
const NEGATIVE_TTL: Duration = Duration::from_secs(2);
/// How long a previous answer stands in after a failed lookup, before the next attempt.
const STALE_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// How long a lookup waits for identity; everyone waiting on it waits at most this long.
const IDENTITY_TIMEOUT: Duration = Duration::from_secs(5);
/// Host-name lookups in flight at once; beyond it a host resolves to no tenant, so a flood of
/// distinct junk names cannot queue up calls to identity.
const MAX_HOST_LOOKUPS: usize = 16;

/// A tenant as the gateway enforces it.
#[derive(Clone, Debug, PartialEq)]
pub struct EdgeTenant {
    pub id: TenantId,
    pub state: TenantState,
    /// `None`: no rate limit.
    pub rate: Option<Rate>,
    /// API calls allowed per month; `None`: unlimited.
    pub monthly_calls: Option<i64>,
    /// Calls identity had counted this month when it answered.
    pub calls_used: i64,
    /// The end of the current month, in microseconds since the epoch.
    pub period_end: i64,
}

impl EdgeTenant {
    fn from_proto(proto: EdgeTenantProto) -> Result<EdgeTenant, String> {
        let id = TenantId::parse(&proto.tenant_id).map_err(|e| e.to_string())?;
        Ok(EdgeTenant {
            state: proto.state(),
            id,
            rate: Rate::of_limits(proto.requests_per_second, proto.request_burst),
            monthly_calls: (proto.api_calls_per_month >= 0).then_some(proto.api_calls_per_month),
            calls_used: proto.api_calls_used,
            period_end: proto.period_end.as_ref().map_or(i64::MAX, micros),
        })
    }
}

/// What a host name can name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostKey {
    /// `<tenant_id>.<base domain>`.
    Tenant(TenantId),
    /// Any other DNS name: perhaps some tenant's `domain`.
    Domain(String),
}

/// The tenant key of a request's `:authority` or `Host`: the port stripped, lower-cased, a
/// trailing dot dropped. IP addresses, single-label names (`localhost`) and malformed names
/// name no tenant; neither does the base domain itself.
pub fn host_key(raw: &str, base_domain: Option<&str>) -> Option<HostKey> {
    let raw = raw.trim();
    if raw.starts_with('[') {
        return None; // an IPv6 literal
    }
    let host = match raw.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        Some(_) => return None,
        None => raw,
    };
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let dns_name = host.len() <= 253
        && host.contains('.')
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if !dns_name || host.parse::<std::net::Ipv4Addr>().is_ok() {
        return None;
    }
    if let Some(base) = base_domain {
        if host == base {
            return None;
        }
        if let Some(label) = host.strip_suffix(base).and_then(|h| h.strip_suffix('.'))
            && !label.contains('.')
            && let Ok(tenant) = TenantId::parse(label)
        {
            return Some(HostKey::Tenant(tenant));
        }
    }
    Some(HostKey::Domain(host))
}

/// The host name a REST or gRPC-Web request was addressed to, kept by the edge in the
/// extensions of the gRPC call it becomes (which has no `Host` of its own).
#[derive(Clone, Debug)]
pub struct ClientHost(pub String);

/// The host name a request was addressed to: as the edge kept it, else `:authority` (HTTP/2),
/// else `Host` (HTTP/1.1).
pub fn request_host<B>(request: &http::Request<B>) -> Option<&str> {
    if let Some(ClientHost(host)) = request.extensions().get::<ClientHost>() {
        return Some(host);
    }
    request
        .uri()
        .authority()
        .map(|authority| authority.as_str())
        .or_else(|| {
            let host = request.headers().get(http::header::HOST)?;
            host.to_str().ok()
        })
}

/// A base domain as configured, in the form [`host_key`] compares with.
pub fn normalize_base_domain(base: &str) -> Option<String> {
    let base = base.trim().trim_matches('.').to_ascii_lowercase();
    (!base.is_empty()).then_some(base)
}

/// `None`: identity knows no such tenant.
type Answer = Option<Arc<EdgeTenant>>;
type Lookup = Shared<BoxFuture<'static, Result<Answer, String>>>;

#[derive(Clone)]
enum Entry {
    Known {
        answer: Answer,
        until: Instant,
    },
    Fetching {
        stale: Option<Answer>,
        lookup: Lookup,
    },
}

/// Answers by key, with one lookup per key in flight.
struct Cache {
    entries: Sharded<String, Entry>,
    ttl: Duration,
    negative_ttl: Duration,
}

impl Cache {
    fn new(ttl: Duration) -> Arc<Cache> {
        Arc::new(Cache {
            entries: Sharded::with_capacity(MAX_ENTRIES),
            ttl,
            negative_ttl: ttl.min(NEGATIVE_TTL),
        })
    }

    /// The cached answer for `key`, or the answer of `fetch` (started at most once at a time).
    async fn get(
        self: &Arc<Self>,
        key: &str,
        fetch: impl FnOnce() -> BoxFuture<'static, Result<Answer, String>>,
    ) -> Result<Answer, String> {
        let now = Instant::now();
        let (stale, lookup) = match self.entries.with(key, |shard| match shard.get(key) {
            Some(Entry::Known { answer, until }) if now < *until => Step::Hit(answer.clone()),
            Some(Entry::Fetching { stale, lookup }) => Step::Wait(stale.clone(), lookup.clone()),
            Some(Entry::Known { answer, .. }) => {
                let stale = Some(answer.clone());
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
    fn start(
        self: &Arc<Self>,
        shard: &mut HashMap<String, Entry>,
        key: &str,
        stale: Option<Answer>,
        fetch: impl FnOnce() -> BoxFuture<'static, Result<Answer, String>>,
        now: Instant,
    ) -> Lookup {
        if shard.len() >= self.entries.per_shard() {
            shard.retain(|_, entry| match entry {
                Entry::Known { until, .. } => now < *until,
                Entry::Fetching { .. } => true,
            });
            if shard.len() >= self.entries.per_shard() {
                shard.retain(|_, entry| matches!(entry, Entry::Fetching { .. }));
            }
        }
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

    fn complete(&self, key: String, result: &Result<Answer, String>, stale: Option<Answer>) {
        let now = Instant::now();
        let entry = match (result, stale) {
            (Ok(answer), _) => Entry::Known {
                answer: answer.clone(),
                until: now
                    + if answer.is_some() {
                        self.ttl
                    } else {
                        self.negative_ttl
                    },
            },
            (Err(_), Some(stale)) => Entry::Known {
                answer: stale,
                until: now + STALE_AFTER_FAILURE,
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

enum Step {
    Hit(Answer),
    Wait(Option<Answer>, Lookup),
}

/// Where the gateway learns what to enforce for a tenant.
pub struct TenantDirectory {
    identity: EdgeServiceClient<MeshChannel>,
    by_id: Arc<Cache>,
    by_domain: Arc<Cache>,
    base_domain: Option<String>,
    host_lookups: Arc<Semaphore>,
}

impl TenantDirectory {
    /// A directory asking identity over `identity`, believing answers for `ttl`.
    pub fn new(identity: MeshChannel, ttl: Duration, base_domain: Option<&str>) -> TenantDirectory {
        TenantDirectory {
            identity: EdgeServiceClient::new(identity),
            by_id: Cache::new(ttl),
            by_domain: Cache::new(ttl),
            base_domain: base_domain.and_then(normalize_base_domain),
            host_lookups: Arc::new(Semaphore::new(MAX_HOST_LOOKUPS)),
        }
    }

    /// The tenant with id `id`; `None` if identity knows no such tenant. O(1) without awaiting
    /// anything while the answer is cached.
    pub async fn by_id(&self, id: &TenantId) -> Result<Option<Arc<EdgeTenant>>, ApiError> {
        // The lookup is built only on a miss: a hit allocates nothing.
        let lookup = || resolve(self.identity.clone(), Key::TenantId(id.to_string()), None);
        self.by_id
            .get(id.as_str(), || lookup().boxed())
            .await
            .map_err(|error| {
                tracing::warn!(tenant = %id, %error, "tenant lookup failed");
                ApiError::Unavailable {
                    message: "cannot check the tenant right now".to_owned(),
                }
            })
    }

    /// The tenant a request's host name (`:authority` or `Host`) names, if any. Never fails:
    /// a host that cannot be resolved now names no tenant.
    pub async fn by_host(&self, host: &str) -> Option<Arc<EdgeTenant>> {
        let (cache, cache_key, key, remember) = match host_key(host, self.base_domain.as_deref())? {
            HostKey::Tenant(id) => (
                &self.by_id,
                id.to_string(),
                Key::TenantId(id.to_string()),
                None,
            ),
            HostKey::Domain(domain) => (
                &self.by_domain,
                domain.clone(),
                Key::Domain(domain),
                Some(self.by_id.clone()),
            ),
        };
        let answer = cache
            .get(&cache_key, || {
                let identity = self.identity.clone();
                let permits = self.host_lookups.clone();
                async move {
                    // Anyone can send any host name: lookups for them are bounded, and one
                    // refused here is not cached, so the name is tried again next time.
                    let _permit = permits
                        .try_acquire_owned()
                        .map_err(|_| "too many host lookups at once".to_owned())?;
                    resolve(identity, key, remember).await
                }
                .boxed()
            })
            .await;
        answer
            .inspect_err(|error| tracing::debug!(host = %cache_key, %error, "host lookup failed"))
            .ok()
            .flatten()
    }
}

/// Asks identity; a tenant found by domain is remembered by id as well.
async fn resolve(
    mut identity: EdgeServiceClient<MeshChannel>,
    key: Key,
    by_id: Option<Arc<Cache>>,
) -> Result<Answer, String> {
    let request = ResolveTenantRequest { key: Some(key) };
    let answer = tokio::time::timeout(IDENTITY_TIMEOUT, identity.resolve_tenant(request))
        .await
        .map_err(|_| "identity did not answer in time".to_owned())?;
    let answer = match answer {
        Ok(response) => EdgeTenant::from_proto(response.into_inner()).map(Arc::new)?,
        // A malformed name or id is as unknown as a missing one.
        Err(status) if matches!(status.code(), Code::NotFound | Code::InvalidArgument) => {
            return Ok(None);
        }
        Err(status) => return Err(format!("{:?}: {}", status.code(), status.message())),
    };
    if let Some(by_id) = by_id {
        by_id.complete(answer.id.to_string(), &Ok(Some(answer.clone())), None);
    }
    Ok(Some(answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(id: &str) -> Option<HostKey> {
        Some(HostKey::Tenant(TenantId::parse(id).unwrap()))
    }

    fn domain(name: &str) -> Option<HostKey> {
        Some(HostKey::Domain(name.to_owned()))
    }

    #[test]
    fn host_names_map_to_tenants() {
        let base = Some("tenants.example.com");
        let cases = [
            ("acme.tenants.example.com", tenant("acme")),
            ("ACME.Tenants.Example.com:8443", tenant("acme")),
            ("acme.tenants.example.com.", tenant("acme")),
            // Not a tenant id (too short), so perhaps someone's domain.
            ("ab.tenants.example.com", domain("ab.tenants.example.com")),
            ("a.b.tenants.example.com", domain("a.b.tenants.example.com")),
            ("tenants.example.com", None),
            ("api.acme.io", domain("api.acme.io")),
            ("API.Acme.IO:443", domain("api.acme.io")),
            ("xtenants.example.com", domain("xtenants.example.com")),
            ("127.0.0.1:7900", None),
            ("[::1]:7900", None),
            ("localhost:7900", None),
            ("", None),
            ("acme..io", None),
            ("acme.io:https", None),
            ("acme_corp.io", None),
            ("münchen.de", None),
        ];
        for (raw, expected) in cases {
            assert_eq!(host_key(raw, base), expected, "{raw:?}");
        }
        // Without a base domain, every name is only a possible domain.
        assert_eq!(
            host_key("acme.tenants.example.com", None),
            domain("acme.tenants.example.com")
        );
        assert_eq!(
            normalize_base_domain(".Tenants.Example.com."),
            Some("tenants.example.com".to_owned())
        );
        assert_eq!(normalize_base_domain("  "), None);
    }

    fn edge_tenant(id: &str) -> Answer {
        Some(Arc::new(EdgeTenant {
            id: TenantId::parse(id).unwrap(),
            state: TenantState::Active,
            rate: None,
            monthly_calls: None,
            calls_used: 0,
            period_end: i64::MAX,
        }))
    }

    #[tokio::test]
    async fn one_lookup_per_key_and_answers_are_kept() {
        let cache = Cache::new(Duration::from_secs(60));
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let fetch = |calls: Arc<std::sync::atomic::AtomicUsize>| {
            move || {
                async move {
                    calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    Ok(edge_tenant("acme"))
                }
                .boxed()
            }
        };
        let (a, b) = tokio::join!(
            cache.get("acme", fetch(calls.clone())),
            cache.get("acme", fetch(calls.clone()))
        );
        assert_eq!(a.unwrap(), edge_tenant("acme"));
        assert_eq!(b.unwrap(), edge_tenant("acme"));
        assert_eq!(
            cache.get("acme", fetch(calls.clone())).await.unwrap(),
            edge_tenant("acme")
        );
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failed_lookup_keeps_the_previous_answer() {
        let cache = Cache::new(Duration::ZERO);
        let found = cache
            .get("acme", || async { Ok(edge_tenant("acme")) }.boxed())
            .await;
        assert_eq!(found.unwrap(), edge_tenant("acme"));
        // Expired at once (TTL zero); identity is down now.
        let stale = cache
            .get("acme", || {
                async { Err("identity is down".to_owned()) }.boxed()
            })
            .await;
        assert_eq!(stale.unwrap(), edge_tenant("acme"));
        // Without a previous answer, the failure is the caller's.
        let unknown = cache
            .get("globex", || {
                async { Err("identity is down".to_owned()) }.boxed()
            })
            .await;
        assert!(unknown.is_err());
    }
}

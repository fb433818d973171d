//! The tenant directory: what the gateway enforces for each tenant (state, rate, monthly
//! quota), from identity's `EdgeService.ResolveTenant`, cached.
//!
//! Answers are kept for a configurable TTL, per tenant id and per host name; "no such tenant"
//! for a shorter time, so that junk `Host` headers cost identity one call per name and a few
//! seconds rather than one per request. One lookup per key is in flight at a time, in a task of
//! its own (`lookups.rs`). When identity cannot answer, the previous answer stands for a
//! second more at a time, for at most `MAX_STALE` past the TTL: a brief identity outage must
//! not take down calls it has no part in, and a long one must not keep a suspended tenant in
//! service on an old answer.
//!
//! Host names map to tenants two ways: `<tenant_id>.<base domain>` when a base domain is
//! configured (`palisade serve gateway --tenant-base-domain`), and a tenant's own `domain`.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures::FutureExt;
use palisade_grpc::{ApiError, MeshChannel, time::micros};
use palisade_proto::palisade::identity::v1::{
    EdgeTenant as EdgeTenantProto, ResolveTenantRequest, TenantState,
    edge_service_client::EdgeServiceClient, resolve_tenant_request::Key,
};
use palisade_tenancy::TenantId;
use tokio::sync::Semaphore;
use tonic::Code;

use crate::{
    limits::Rate,
    lookups::{LookupCache, StandIn},
};

/// Answers kept at once, per map (ids, host names).
const MAX_ENTRIES: usize = 16_384;
/// How long "no such tenant" is believed (at most the TTL).
const NEGATIVE_TTL: Duration = Duration::from_secs(2);
/// How long a previous answer stands in after a failed lookup, before the next attempt.
const STALE_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// How long past its TTL a previous answer may stand in, however many lookups fail.
const MAX_STALE: Duration = Duration::from_secs(30);
/// How long a lookup waits for identity; everyone waiting on it waits at most this long.
const IDENTITY_TIMEOUT: Duration = Duration::from_secs(5);
/// Host-name lookups in flight at once; beyond it a host not cached resolves to no tenant, so
/// a flood of distinct junk names cannot queue up calls to identity.
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
type Cache = LookupCache<String, Answer>;

/// Tenant answers kept for `ttl`, "no such tenant" for at most `NEGATIVE_TTL`.
fn cache(ttl: Duration) -> Arc<Cache> {
    let negative_ttl = ttl.min(NEGATIVE_TTL);
    LookupCache::new(
        MAX_ENTRIES,
        move |answer: &Answer| {
            if answer.is_some() { ttl } else { negative_ttl }
        },
        Some(StandIn {
            each: STALE_AFTER_FAILURE,
            max_age: ttl + MAX_STALE,
        }),
    )
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
            by_id: cache(ttl),
            by_domain: cache(ttl),
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
        let identity = self.identity.clone();
        let permits = &self.host_lookups;
        let answer = cache
            .get_admitted(&cache_key, || {
                // Anyone can send any host name: lookups for them are bounded. A name refused
                // a place starts no lookup, so it neither fails nor holds up the lookup a
                // signed-in call of that tenant may be waiting on, and is tried again next time.
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    return Err("too many host lookups at once");
                };
                Ok(async move {
                    let _permit = permit;
                    resolve(identity, key, remember).await
                }
                .boxed())
            })
            .await;
        answer
            .inspect_err(|error| tracing::debug!(host = %cache_key, ?error, "host lookup failed"))
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
    let asked = Instant::now();
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
        by_id.remember(answer.id.to_string(), Some(answer.clone()), asked);
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
}

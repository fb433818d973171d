//! The per-request path through the gateway, in the order a request meets it:
//! strip client context → request id → local services (health, reflection) → method policy
//! (internal methods are never routed) → deadline (`deadline.rs`; read before anything is
//! charged, so a malformed `grpc-timeout` costs no quota, and counted from the call's arrival:
//! it bounds the steps below, and the backend gets what is left) → authentication → for a
//! public call, its client's rate → the credential's tenant: in service, within its rate,
//! within its monthly quota (the call is counted) — or, for a public call without a credential
//! (or with one whose tenant is out of rate or quota), the tenant its host name names →
//! tenant context → message size → backend.
//!
//! Rates and quotas apply to calls made with a tenant's credential. Public calls are not
//! charged to the tenant their host names: anyone can make them, so charging them would let
//! strangers use up a tenant's quota. For the same reason a public call made with a
//! credential whose tenant is out of rate or quota is not refused: it is made as a stranger's.
//! A user can always sign out.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http::{HeaderValue, Request, Response};
use palisade_grpc::{
    ApiError, MethodPolicies, ServedTenant, ServingHandle, add_public_reflection, time::now_micros,
};
use palisade_proto::palisade::identity::v1::TenantState;
use palisade_telemetry::LabeledCounter;
use palisade_tenancy::{
    ClientOrigin, HEADER_REQUEST_ID, RequestId, TenantContext, TenantId, strip_client_context,
    write_context, write_origin,
};
use tonic::{Status, body::Body, service::Routes};
use tower::ServiceExt;

use crate::{
    auth::{ApiKeyVerifier, ClientBudget, presented_api_key},
    backends::Backends,
    deadline,
    limits::{ClientKey, Rate, RateLimiter},
    message_limit,
    response_end::EndsWithStatus,
    tenants::{TenantDirectory, request_host},
    usage::UsageMeter,
};

/// What the gateway enforces per tenant (and, for public calls, per client), and the counter
/// of what it refused.
pub struct TenantLimits {
    pub directory: TenantDirectory,
    pub rates: RateLimiter<TenantId>,
    pub usage: Arc<UsageMeter>,
    /// The rate of public calls (`Login`, `RefreshToken`, ...), credential or not, and
    /// reflection streams each client address may make; `None` is unlimited.
    pub public_rate: Option<Rate>,
    pub clients: RateLimiter<ClientKey>,
    /// The access-token verifications each client address may have, at the same rate (only
    /// tokens that fail keep theirs): an Ed25519 verification is work anyone can ask for with
    /// made-up tokens. Apart from `clients`, so a client busy with public calls can still
    /// present its new tokens.
    pub token_verifications: RateLimiter<ClientKey>,
    /// Refusals by reason (`tenant_suspended`, `tenant_not_active`, `rate_limited`,
    /// `quota_exceeded`, `client_rate_limited`).
    pub throttled: LabeledCounter,
}

/// The gateway's request path for gRPC calls: native ones, and those that REST and gRPC-Web
/// requests are translated into (see `edge.rs`); cheap to clone (one per connection).
#[derive(Clone)]
pub struct Proxy {
    backends: Arc<Backends>,
    verifier: Arc<ApiKeyVerifier>,
    limits: Arc<TenantLimits>,
    policies: Arc<MethodPolicies>,
    local: Routes,
    /// The deadline of a unary call whose client set none.
    default_deadline: Duration,
}

impl Proxy {
    /// The proxy and the handle of the gateway's own health status.
    pub async fn new(
        backends: Arc<Backends>,
        verifier: Arc<ApiKeyVerifier>,
        limits: Arc<TenantLimits>,
        default_deadline: Duration,
    ) -> Result<(Proxy, ServingHandle), palisade_grpc::Error> {
        let (reporter, health) = tonic_health::server::health_reporter();
        let serving = ServingHandle::for_reporter(reporter);
        serving.set_serving(true).await;
        let policies = MethodPolicies::palisade()?;
        // The mesh's services, less those of internal methods only (not routed here), and
        // their files.
        let local = add_public_reflection(Routes::new(health), &policies.public_services())?;
        let proxy = Proxy {
            backends,
            verifier,
            limits,
            policies: Arc::new(policies),
            local,
            default_deadline,
        };
        Ok((proxy, serving))
    }

    /// The same proxy, calling components over `backends` (a connection worker's own).
    pub fn with_backends(&self, backends: Arc<Backends>) -> Proxy {
        Proxy {
            backends,
            ..self.clone()
        }
    }

    async fn handle<B>(self, mut request: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        strip_client_context(request.headers_mut());
        let request_id = request_id(request.headers());

        tracing::Span::current().record("request_id", request_id.0.as_str());
        let mut tenant = None;
        let mut response = match self.route(request, &request_id, &mut tenant).await {
            Ok(response) => response,
            Err(status) => status.into_http(),
        };
        if let Ok(value) = HeaderValue::from_str(&request_id.0) {
            response.headers_mut().insert(HEADER_REQUEST_ID, value);
        }
        // For the per-tenant request counter (bounded labels, see palisade-telemetry).
        let tenant = tenant.unwrap_or_else(|| "anonymous".to_owned());
        response.extensions_mut().insert(ServedTenant(tenant));
        response
    }

    /// The tenant context of the credential the request presents, if it presents one, paid
    /// for from `budget` as far as the gateway must work to judge it (see `ClientBudget`).
    async fn verify_credential(
        &self,
        headers: &http::HeaderMap,
        budget: &CredentialBudget<'_>,
    ) -> Result<Option<TenantContext>, ApiError> {
        let Some(key) = presented_api_key(headers)? else {
            return Ok(None);
        };
        self.verifier.verify(&key, budget).await.map(Some)
    }

    /// The tenant context a request is made in, once its client and tenant are admitted: the
    /// verified credential's, within its tenant's rate and quota; for a public method without
    /// one, or with one whose tenant is out of rate or quota, the tenant its host name names
    /// (if any). A public call is within its client's own rate first, credential or not.
    async fn admitted_context(
        &self,
        headers: &http::HeaderMap,
        origin: Option<&ClientOrigin>,
        host: Option<&str>,
        public: bool,
    ) -> Result<Option<TenantContext>, ApiError> {
        let budget = CredentialBudget {
            proxy: self,
            origin,
            paid_for_lookup: AtomicBool::new(false),
            verification_refused: AtomicBool::new(false),
        };
        let verified = match self.verify_credential(headers, &budget).await {
            Ok(verified) => verified,
            // A public method needs no credential, so one that does not verify is ignored
            // rather than refused: a client that sends its access token with every call must
            // still reach `RefreshToken` once that token has expired. So is a token left
            // unverified because its client's address has no verifications left (someone else
            // behind the same address may have spent them).
            Err(ApiError::Unauthenticated { .. }) if public => None,
            Err(_) if public && budget.verification_refused.load(Ordering::Relaxed) => None,
            Err(error) => return Err(error),
        };
        let charged = budget.paid_for_lookup.load(Ordering::Relaxed);
        // Whatever it carries: a credential of a tenant with a generous rate (or none) must
        // not let one client keep identity's password hashing busy with logins for everyone.
        if public && !charged {
            self.admit_client(origin, "public calls")?;
        }
        let context = match (verified, public) {
            (Some(context), _) => match self.admit(&context.tenant_id, public).await? {
                Admission::Admitted => Some(context),
                Admission::AsStranger => self.public_context(host).await,
            },
            (None, true) => self.public_context(host).await,
            (None, false) => {
                return Err(ApiError::Unauthenticated {
                    reason: "UNAUTHENTICATED",
                    message: "this method needs a credential: `authorization: Bearer <token>` or `authorization: ApiKey <key>`"
                        .to_owned(),
                });
            }
        };
        Ok(context)
    }

    /// The context of a public call made without a principal (its client already paid for
    /// it): no one's, or the tenant its host name names. The tenant only tells public calls
    /// such as `Login` whose they are.
    async fn public_context(&self, host: Option<&str>) -> Option<TenantContext> {
        self.limits
            .directory
            .by_host(host?)
            .await
            .map(|tenant| TenantContext {
                tenant_id: tenant.id.clone(),
                principal: None,
            })
    }

    async fn route<B>(
        &self,
        mut request: Request<B>,
        request_id: &RequestId,
        tenant: &mut Option<String>,
    ) -> Result<Response<Body>, Status>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // The call's deadline counts from here, not from when its backend is called.
        let arrived = Instant::now();
        let path = request.uri().path().to_owned();
        if path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.") {
            // Reflection needs no credential and answers with the whole mesh's descriptors,
            // so a client pays for each stream as for a public call. Health stays free for
            // probes.
            if path.starts_with("/grpc.reflection.") {
                self.admit_client(
                    request.extensions().get::<ClientOrigin>(),
                    "reflection streams",
                )?;
            }
            let response = self.local.clone().oneshot(request.map(Body::new)).await;
            return Ok(response.unwrap_or_else(|never: Infallible| match never {}));
        }
        let (Some(policy), Some(backend)) =
            (self.policies.get(&path), self.backends.for_path(&path))
        else {
            return Err(ApiError::Unimplemented {
                message: format!("unknown method {}", palisade_grpc::echoed(&path)),
            }
            .into());
        };
        if policy.internal {
            return Err(ApiError::PermissionDenied {
                reason: "INTERNAL_METHOD",
                message: format!("{path} is internal to the mesh"),
            }
            .into());
        }
        // The call's budget, read before anything is charged for it: the client's deadline,
        // else for a unary call the gateway's default (a streaming call lasts as long as its
        // client keeps it open).
        let budget = match deadline::client_deadline(request.headers())? {
            Some(deadline) => Some(deadline),
            None if policy.streaming => None,
            None => Some(self.default_deadline),
        };
        let deadline_error = |deadline: Duration| ApiError::DeadlineExceeded {
            message: format!("{path} did not complete within its deadline ({deadline:?})"),
        };
        let exceeded = |deadline: Duration| {
            tracing::info!(%path, ?deadline, "call exceeded its deadline");
            deadline_error(deadline)
        };
        // Within the budget too: a credential or a tenant looked up while identity is slow.
        let admitted = self.admitted_context(
            request.headers(),
            request.extensions().get::<ClientOrigin>(),
            request_host(&request),
            policy.public,
        );
        let context = match budget {
            Some(budget) => tokio::time::timeout_at((arrived + budget).into(), admitted)
                .await
                .map_err(|_| exceeded(budget))??,
            None => admitted.await?,
        };
        if let Some(context) = context.as_ref().filter(|c| c.principal.is_some()) {
            tracing::Span::current().record("palisade.tenant_id", context.tenant_id.as_str());
            *tenant = Some(context.tenant_id.to_string());
        }
        // Credentials stop at the edge; the mesh sees only the verified context.
        let origin = request.extensions().get::<ClientOrigin>().cloned();
        let headers = request.headers_mut();
        headers.remove(http::header::AUTHORIZATION);
        headers.remove("x-api-key");
        write_context(headers, context.as_ref(), Some(request_id));
        if let Some(origin) = &origin {
            write_origin(headers, origin);
        }

        // The message's size is known before any backend is asked, within the call's budget.
        let checked = message_limit::within_limit(request.map(Body::new));
        let mut request = match budget {
            Some(budget) => tokio::time::timeout_at((arrived + budget).into(), checked)
                .await
                .map_err(|_| exceeded(budget))??,
            None => checked.await?,
        };
        // Time spent here (a credential or a tenant looked up) comes out of the budget: the
        // backend learns what is left (`grpc-timeout`) and gives up its work when it passes.
        let mut deadline = None;
        if let Some(budget) = budget {
            let left =
                deadline::left(budget, arrived, Instant::now()).ok_or_else(|| exceeded(budget))?;
            (request.headers_mut()).insert(deadline::GRPC_TIMEOUT, deadline::header_value(left));
            deadline = Some((left, budget));
        }

        // The backend's span continues the gateway's (see `backends.rs`).
        palisade_telemetry::inject_current(request.headers_mut());
        let started = Instant::now();
        let call = backend.oneshot(request);
        let response = match deadline {
            // A unary response's headers come with its message, so this bounds the whole call;
            // a streaming one's are bounded here and the rest of its response below. Dropping
            // the call on expiry cancels it at the backend (RST_STREAM).
            Some((left, budget)) => tokio::time::timeout(left, call)
                .await
                .map_err(|_| exceeded(budget))?,
            None => call.await,
        };
        // The backend learns its deadline too, but a server stream's messages are sent until
        // it checks, and each client (curl, a browser) would have to cut the stream itself.
        let stream_deadline = (deadline.filter(|_| policy.streaming))
            .map(|(left, budget)| (started + left, Status::from(deadline_error(budget))));
        response
            .map_err(|error| match deadline {
                // The backend's own timer (the same deadline, in `grpc-timeout`) won the race.
                Some((left, budget)) if started.elapsed() >= left => exceeded(budget),
                _ => {
                    tracing::warn!(%path, %error, "backend call failed");
                    ApiError::Unavailable {
                        message: format!("the component serving {path} is unavailable"),
                    }
                }
            })
            .map(|response| {
                response.map(|body| Body::new(EndsWithStatus::new(body, stream_deadline)))
            })
            .map_err(Status::from)
    }
}

impl Proxy {
    /// What a credential's tenant must pass, in this order: it is in service (so a suspended
    /// tenant's tokens stop working within the directory's TTL), within its rate, and within
    /// its monthly quota, which then counts the call. O(1), without awaiting identity, while
    /// the directory's answer is cached.
    ///
    /// Anyone may make a `public` call without a credential, so a tenant out of rate or quota
    /// does not stop one made with its credential (a user signing out, revoking a token): it
    /// is made as a stranger's would be ([`Admission::AsStranger`]). A suspended tenant's
    /// credential is still refused.
    async fn admit(&self, tenant: &TenantId, public: bool) -> Result<Admission, ApiError> {
        let limits = &*self.limits;
        let as_stranger = |reason: &'static str| {
            tracing::debug!(%tenant, reason, "public call made as one without a credential");
            Ok(Admission::AsStranger)
        };
        let refuse = |reason: &'static str, error: ApiError| {
            limits.throttled.inc(reason);
            tracing::debug!(%tenant, reason, "call refused at the edge");
            error
        };
        let edge = limits.directory.by_id(tenant).await?;
        let refusal = match edge.as_ref().map(|edge| edge.state) {
            Some(TenantState::Active) => None,
            Some(TenantState::Suspended) => {
                Some(("tenant_suspended", "TENANT_SUSPENDED", "suspended"))
            }
            // Inactive, deleted since the credential was issued, or a state not known here.
            _ => Some(("tenant_not_active", "TENANT_NOT_ACTIVE", "not active")),
        };
        if let Some((label, reason, state)) = refusal {
            let message = format!("tenant {tenant} is {state}");
            return Err(refuse(
                label,
                ApiError::PermissionDenied { reason, message },
            ));
        }
        let edge = edge.expect("an active tenant exists");
        if let Some(rate) = edge.rate
            && let Err(wait) = limits.rates.check(tenant, rate, Instant::now())
        {
            if public {
                return as_stranger("rate_limited");
            }
            return Err(refuse("rate_limited", rate_limited(tenant, rate, wait)));
        }
        match limits.usage.admit(&edge, now_micros()) {
            Ok(()) => Ok(Admission::Admitted),
            Err(_) if public => as_stranger("quota_exceeded"),
            Err(error) => Err(refuse("quota_exceeded", error)),
        }
    }
}

/// What [`Proxy::admit`] lets a call with a credential do.
enum Admission {
    /// Go on in its tenant's context, counted in its quota.
    Admitted,
    /// Go on as a public call without a credential (its tenant is out of rate or quota).
    AsStranger,
}

impl Proxy {
    /// A public call pays its client's address's rate, whatever credential it carries: a
    /// client cannot flood `Login` (whose password hashing is what a flood makes scarce) or
    /// the other public methods for everyone else, with or without some tenant's token. An
    /// API key identity must be asked about, and a reflection stream, cost the same (`what`
    /// says which it is). Behind a proxy that hides clients' addresses, that proxy is one
    /// client; the rate is a setting for that reason.
    fn admit_client(&self, origin: Option<&ClientOrigin>, what: &str) -> Result<(), ApiError> {
        self.take_client_call(&self.limits.clients, origin, what)
    }

    /// Takes one call from the client's bucket in `limiter`, or refuses with how long until
    /// one is there.
    fn take_client_call(
        &self,
        limiter: &RateLimiter<ClientKey>,
        origin: Option<&ClientOrigin>,
        what: &str,
    ) -> Result<(), ApiError> {
        let Some((client, rate)) = self.client_rate(origin) else {
            return Ok(());
        };
        limiter
            .check(&client, rate, Instant::now())
            .map_err(|wait| {
                self.limits.throttled.inc("client_rate_limited");
                tracing::debug!(%client, what, "call refused at the edge");
                ApiError::ResourceExhausted {
                    reason: "CLIENT_RATE_LIMITED",
                    message: format!(
                        "client {client} is over its rate of {} calls per second for {what}",
                        rate.per_second
                    ),
                    subject: format!("clients/{client}"),
                    description: format!(
                        "public_calls_per_second: {}, public_call_burst: {}",
                        rate.per_second, rate.burst
                    ),
                    retry_after: wait,
                }
            })
    }

    /// The client a call is counted against and its rate; `None` when clients are not
    /// limited, or the call's address is unknown.
    fn client_rate(&self, origin: Option<&ClientOrigin>) -> Option<(ClientKey, Rate)> {
        let rate = self.limits.public_rate?;
        let address = origin?.ip.as_deref()?.parse().ok()?;
        Some((ClientKey::of(address), rate))
    }
}

/// One call's client, paying for the credential it presents.
struct CredentialBudget<'a> {
    proxy: &'a Proxy,
    origin: Option<&'a ClientOrigin>,
    // Atomic only so that the call's future, which holds them across awaits, is `Send`.
    paid_for_lookup: AtomicBool,
    verification_refused: AtomicBool,
}

impl ClientBudget for CredentialBudget<'_> {
    fn pay_for_lookup(&self) -> Result<(), ApiError> {
        self.paid_for_lookup.store(true, Ordering::Relaxed);
        self.proxy.admit_client(
            self.origin,
            "api keys it presents that the gateway must ask identity about",
        )
    }

    fn take_verification(&self) -> Result<(), ApiError> {
        let proxy = self.proxy;
        let taken = proxy.take_client_call(
            &proxy.limits.token_verifications,
            self.origin,
            "access tokens that fail to verify or have expired",
        );
        self.verification_refused
            .store(taken.is_err(), Ordering::Relaxed);
        taken
    }

    fn give_back_verification(&self) {
        if let Some((client, rate)) = self.proxy.client_rate(self.origin) {
            self.proxy
                .limits
                .token_verifications
                .give_back(&client, rate);
        }
    }
}

fn rate_limited(tenant: &TenantId, rate: Rate, wait: Option<Duration>) -> ApiError {
    ApiError::ResourceExhausted {
        reason: "RATE_LIMITED",
        message: format!(
            "tenant {tenant} is over its rate of {} requests per second",
            rate.per_second
        ),
        subject: format!("tenants/{tenant}"),
        description: format!(
            "requests_per_second: {}, request_burst: {}",
            rate.per_second, rate.burst
        ),
        retry_after: wait,
    }
}

/// The client's `x-request-id` if it is sane, else a new one: non-empty, at most 128
/// characters of those request ids are made of (letters, digits, `-_.:/+=`: UUIDs, ULIDs,
/// hex, base64, `host:counter`). It travels into logs, audit events and log viewers, where
/// quotes, angle brackets or spaces have no business.
pub fn request_id(headers: &http::HeaderMap) -> RequestId {
    headers
        .get(HEADER_REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .filter(|value| {
            !value.is_empty()
                && value.len() <= 128
                && (value.bytes()).all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=".contains(&b))
        })
        .map_or_else(RequestId::generate, |value| RequestId(value.to_owned()))
}

impl<B> tower::Service<Request<B>> for Proxy
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(request).await) })
    }
}

#[cfg(test)]
mod request_id_tests {
    use super::*;

    fn given(value: &str) -> String {
        let mut headers = http::HeaderMap::new();
        headers.insert(HEADER_REQUEST_ID, value.parse().unwrap());
        request_id(&headers).0
    }

    #[test]
    fn a_clients_request_id_is_kept_only_when_sane() {
        for kept in [
            "req-1",
            "0190b2c4-7e1f-7a44-9c3e-1f2a3b4c5d6e",
            "host:42",
            "aGk+Lw==",
        ] {
            assert_eq!(given(kept), kept);
        }
        for replaced in ["a\"b<script>", "two words", "x".repeat(129).as_str(), "a'b"] {
            assert_ne!(given(replaced), replaced);
        }
    }
}

//! Who decides whether a principal holds a permission: identity locally, every other
//! component through `AuthorizationService.Check` with a short-lived cache.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use palisade_proto::palisade::{
    common::v1::{Principal as WirePrincipal, PrincipalType},
    identity::v1::{CheckRequest, authorization_service_client::AuthorizationServiceClient},
};
use palisade_tenancy::{PrincipalKind, TenantContext, in_this_call};
use tonic::Status;
use tracing::Instrument;

use crate::{ApiError, MeshChannel};

/// The answer to a permission check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
    /// For a refusal that is not about the permission itself, the stable `ErrorInfo.reason`
    /// the caller's error carries, e.g. `TENANT_SUSPENDED`.
    pub refusal: Option<String>,
}

/// Decides permission checks for the policy layer.
pub trait Authorizer: Send + Sync + 'static {
    /// Whether the context's principal holds `permission`. Errors are failures to decide
    /// (identity unreachable), which the caller turns into `UNAVAILABLE`, never into "allowed".
    fn check(
        &self,
        context: &TenantContext,
        permission: &str,
    ) -> BoxFuture<'static, Result<Decision, Status>>;
}

type CacheKey = (TenantContext, String);

/// A question to identity on its way, which every caller asking the same one meanwhile awaits.
type Asking = Shared<BoxFuture<'static, Result<Decision, Status>>>;

/// Asks identity over mTLS and remembers answers for `ttl`, so a hot path pays one round trip
/// per principal and permission per TTL. A revoked grant therefore takes up to `ttl` to bite:
/// an answer counts from when identity was asked, and never replaces one asked for later.
/// Concurrent misses for one principal and permission share one question, so a caller that
/// joins one may get an answer asked up to `CHECK_TIMEOUT` before it arrived.
#[derive(Clone)]
pub struct RemoteAuthorizer {
    client: AuthorizationServiceClient<MeshChannel>,
    cache: Arc<Mutex<HashMap<CacheKey, (Decision, Instant)>>>,
    asking: Arc<Mutex<HashMap<CacheKey, Asking>>>,
    ttl: Duration,
}

/// A permission check that takes longer fails the call with `UNAVAILABLE` instead of hanging it.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Bounds memory under a flood of distinct principals: when full, expired answers go, and
/// if none has expired the cache is emptied.
const MAX_CACHED: usize = 10_000;

impl RemoteAuthorizer {
    pub fn new(identity: MeshChannel, ttl: Duration) -> RemoteAuthorizer {
        RemoteAuthorizer {
            client: AuthorizationServiceClient::new(identity),
            cache: Arc::default(),
            asking: Arc::default(),
            ttl,
        }
    }

    /// Keeps `decision`, asked of identity at `asked`, unless a later-asked answer is kept
    /// already: concurrent misses race, and a slow answer read before a revocation must not
    /// replace the refusal read after it.
    fn remember(&self, key: CacheKey, decision: &Decision, asked: Instant) {
        let mut cache = self.cache.lock().expect("authorizer cache lock");
        if cache.get(&key).is_some_and(|(_, kept)| *kept > asked) {
            return;
        }
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, (_, at)| at.elapsed() < self.ttl);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(key, (decision.clone(), asked));
    }

    fn cached(&self, key: &CacheKey) -> Option<Decision> {
        let cache = self.cache.lock().expect("authorizer cache lock");
        cache
            .get(key)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(decision, _)| decision.clone())
    }
}

impl Authorizer for RemoteAuthorizer {
    fn check(
        &self,
        context: &TenantContext,
        permission: &str,
    ) -> BoxFuture<'static, Result<Decision, Status>> {
        let key = (context.clone(), permission.to_owned());
        if let Some(decision) = self.cached(&key) {
            return Box::pin(async move { Ok(decision) });
        }
        let mut asking = self.asking.lock().expect("authorizer asking lock");
        if let Some(question) = asking.get(&key) {
            return question.clone().boxed();
        }
        // The question runs in a task of its own, so it is answered, remembered and forgotten
        // as asking even when every caller awaiting it has gone away (a short deadline, a reset
        // stream); identity's answer is bounded by `CHECK_TIMEOUT`. It is part of the first
        // caller's call: its tenant scope, request id and trace.
        let question = in_this_call(self.clone().ask(key.clone()));
        let task = tokio::spawn(question.instrument(tracing::Span::current()));
        let question = async move { task.await.unwrap_or_else(|_| Err(unavailable())) }
            .boxed()
            .shared();
        asking.insert(key, question.clone());
        question.boxed()
    }
}

impl RemoteAuthorizer {
    /// Asks identity, remembers its answer and stops counting the question as asking, however
    /// the asking ends (a panic, a runtime shutting down): a question left as asking would
    /// answer every later caller with its failure.
    async fn ask(self, key: CacheKey) -> Result<Decision, Status> {
        let _asked = Forget {
            asking: &self.asking,
            key: &key,
        };
        let asked = Instant::now();
        let answer = self.ask_identity(&key).await;
        if let Ok(decision) = &answer {
            self.remember(key.clone(), decision, asked);
        }
        answer
    }

    async fn ask_identity(&self, (context, permission): &CacheKey) -> Result<Decision, Status> {
        let principal = context.principal.as_ref().map(|p| WirePrincipal {
            tenant_id: context.tenant_id.to_string(),
            id: p.id.clone(),
            r#type: principal_type(p.kind) as i32,
            session_id: p.session_id.clone().unwrap_or_default(),
        });
        let mut request = tonic::Request::new(CheckRequest {
            principal,
            permission: permission.clone(),
            resource: String::new(),
        });
        request.set_timeout(CHECK_TIMEOUT);
        let response = self.client.clone().check(request).await.map_err(|status| {
            tracing::warn!(code = ?status.code(), "permission check failed");
            unavailable()
        })?;
        let response = response.into_inner();
        Ok(Decision {
            allowed: response.allowed,
            reason: response.reason,
            refusal: (!response.refusal_reason.is_empty()).then_some(response.refusal_reason),
        })
    }
}

/// A check that could not be decided: never "allowed".
fn unavailable() -> Status {
    Status::from(ApiError::Unavailable {
        message: "permission check unavailable".to_owned(),
    })
}

/// Removes a question from those asking when dropped.
struct Forget<'a> {
    asking: &'a Mutex<HashMap<CacheKey, Asking>>,
    key: &'a CacheKey,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if let Ok(mut asking) = self.asking.lock() {
            asking.remove(self.key);
        }
    }
}

/// The wire enum of a principal kind.
pub fn principal_type(kind: PrincipalKind) -> PrincipalType {
    match kind {
        PrincipalKind::User => PrincipalType::User,
        PrincipalKind::ApiKey => PrincipalType::ApiKey,
        PrincipalKind::Service => PrincipalType::Service,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use palisade_proto::palisade::identity::v1::{
        BatchCheckRequest, BatchCheckResponse, CheckResponse,
        authorization_service_server::{AuthorizationService, AuthorizationServiceServer},
    };
    use palisade_tenancy::{Principal, TenantId};
    use tonic::{Request, Response};
    use tower::Layer;

    use super::*;

    /// An identity that takes `delay` over every check, grants it, and counts the checks.
    struct SlowIdentity {
        delay: Duration,
        checks: Arc<AtomicUsize>,
    }

    #[tonic::async_trait]
    impl AuthorizationService for SlowIdentity {
        async fn check(&self, _: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
            let number = self.checks.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(self.delay).await;
            Ok(Response::new(CheckResponse {
                allowed: true,
                reason: format!("granted by check {number}"),
                refusal_reason: String::new(),
            }))
        }

        async fn batch_check(
            &self,
            _: Request<BatchCheckRequest>,
        ) -> Result<Response<BatchCheckResponse>, Status> {
            Err(Status::unimplemented("not here"))
        }
    }

    /// An authorizer in front of a `SlowIdentity` served on port 0, and that identity's count.
    async fn authorizer_before(delay: Duration) -> (RemoteAuthorizer, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let checks = Arc::new(AtomicUsize::new(0));
        let identity = SlowIdentity {
            delay,
            checks: checks.clone(),
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AuthorizationServiceServer::new(identity))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .unwrap()
            .connect_lazy();
        let metrics = palisade_telemetry::ComponentMetrics::new("compliance");
        let channel = crate::ClientObserveLayer::new("compliance", metrics.rpc.client.clone())
            .layer(palisade_tenancy::PropagateContext::new(channel));
        let authorizer = RemoteAuthorizer::new(channel, Duration::from_secs(60));
        (authorizer, checks)
    }

    fn ada() -> TenantContext {
        TenantContext {
            tenant_id: TenantId::parse("acme").unwrap(),
            principal: Some(Principal::new("ada", PrincipalKind::User)),
        }
    }

    const PERMISSION: &str = "compliance.audit.list";

    #[tokio::test]
    async fn concurrent_misses_share_one_question() {
        let (authorizer, checks) = authorizer_before(Duration::from_millis(200)).await;

        let callers: Vec<_> = (0..10)
            .map(|_| tokio::spawn(authorizer.check(&ada(), PERMISSION)))
            .collect();
        for caller in callers {
            let decision = caller.await.unwrap().unwrap();
            assert_eq!(decision.reason, "granted by check 1");
        }
        assert_eq!(checks.load(Ordering::SeqCst), 1);
        assert!(authorizer.asking.lock().unwrap().is_empty());

        let again = authorizer.check(&ada(), PERMISSION).await.unwrap();
        assert_eq!(again.reason, "granted by check 1", "from the cache");
        assert_eq!(checks.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_question_whose_callers_went_away_is_still_answered() {
        let (authorizer, checks) = authorizer_before(Duration::from_millis(200)).await;

        let gave_up = tokio::time::timeout(
            Duration::from_millis(50),
            authorizer.check(&ada(), PERMISSION),
        )
        .await;
        assert!(gave_up.is_err(), "the caller's deadline came first");
        tokio::time::sleep(Duration::from_millis(400)).await;

        let kept = authorizer.cached(&(ada(), PERMISSION.to_owned()));
        assert_eq!(kept.map(|d| d.reason), Some("granted by check 1".into()));
        assert!(authorizer.asking.lock().unwrap().is_empty());
        assert_eq!(checks.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_answer_never_replaces_one_asked_for_later() {
        let (authorizer, _) = authorizer_before(Duration::ZERO).await;
        let key = (ada(), PERMISSION.to_owned());
        let decision = |allowed: bool, reason: &str| Decision {
            allowed,
            reason: reason.to_owned(),
            refusal: None,
        };
        let before_revocation = Instant::now();
        let after_revocation = before_revocation + Duration::from_millis(1);

        authorizer.remember(key.clone(), &decision(false, "revoked"), after_revocation);
        authorizer.remember(key.clone(), &decision(true, "granted"), before_revocation);

        assert_eq!(
            authorizer.cached(&key).map(|d| d.reason),
            Some("revoked".into())
        );
    }
}

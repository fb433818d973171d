//! Edge authentication: the credential a client presents becomes a tenant context.
//!
//! Access tokens come as `authorization: Bearer <jwt>` and are verified locally
//! (`access_tokens.rs`). API keys come as `authorization: ApiKey pal_…`
//! or `x-api-key: pal_…` and are verified by identity (`ApiKeyService.VerifyApiKey`, an
//! internal method only the gateway may call). Identity's answers are remembered by the
//! SHA-256 of the key for a short TTL: acceptances (never past the key's expiry) in a map of
//! their own, and refusals (`lookups.rs`), so a client repeating a bad key costs identity one
//! call per TTL (a disabled owner's key excepted: it may work again any moment, so it is
//! asked about each time, one call per key at a time). Strings not shaped like a key are refused without asking. One call per key is
//! in flight at a time, at most `MAX_KEY_LOOKUPS` in all, with `MAX_KEYS_VERIFYING` keys
//! waiting or asking; beyond that a key is not verified now (`UNAVAILABLE`). So a flood of
//! made-up keys costs identity at most `MAX_KEY_LOOKUPS` calls at a time and cannot push
//! genuine keys out of the cache; keys verified recently and access tokens pass, while keys
//! not seen for a TTL may be refused as unavailable until the flood ends.
//!
//! The two are told apart by shape: a JWT has three dot-separated parts, an API key has no
//! dot, and a scheme presenting the other kind is refused.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use futures::FutureExt;
use http::HeaderMap;
use palisade_grpc::{ApiError, MeshChannel};
use palisade_proto::palisade::{
    common::v1::PrincipalType,
    identity::v1::{VerifyApiKeyRequest, api_key_service_client::ApiKeyServiceClient},
};
use palisade_tenancy::{Principal, PrincipalKind, TenantContext, TenantId};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tonic::Code;
use tonic_types::StatusExt;

use crate::{
    access_tokens::{TokenVerifier, cannot_verify},
    jwks::Jwks,
    lookups::{LookupCache, NoAnswer},
    sharded::Sharded,
};

const MAX_CACHED: usize = 10_000;
/// How long verifying one key at identity may take, waiting for a place included.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(5);
/// `VerifyApiKey` calls in flight at once.
const MAX_KEY_LOOKUPS: usize = 32;
/// Keys being verified at once, waiting for a call or in one.
const MAX_KEYS_VERIFYING: usize = 256;
/// Why a key was not verified when `MAX_KEYS_VERIFYING` were already.
const TOO_MANY_LOOKUPS: &str = "too many api keys are being verified at once";
/// How long a refusal for the tenant's state (suspended, say) is believed, at most the TTL.
const TENANT_REFUSAL_TTL: Duration = Duration::from_secs(2);

/// Reads the credential a client presented, if any: an access token (`Bearer`) or an API key.
pub fn presented_api_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let api_key = |key: &str| {
        let key = key.trim();
        if looks_like_jwt(key) {
            Err(ApiError::Unauthenticated {
                reason: "MALFORMED_CREDENTIAL",
                message: "an access token goes in `authorization: Bearer <token>`".to_owned(),
            })
        } else {
            Ok(Some(key.to_owned()))
        }
    };
    // With two credentials (one of each header, or either header twice) the principal a call
    // runs as would hang on header order: RFC 6750 §2 allows one method per request.
    let presented = headers.get_all("x-api-key").iter().count()
        + headers.get_all(http::header::AUTHORIZATION).iter().count();
    if presented > 1 {
        return Err(ApiError::Unauthenticated {
            reason: "MALFORMED_CREDENTIAL",
            message: "send one credential: either `authorization` or `x-api-key`, once".to_owned(),
        });
    }
    if let Some(value) = headers.get("x-api-key") {
        return api_key(value.to_str().map_err(|_| malformed())?);
    }
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| malformed())?;
    match value.split_once(' ') {
        Some((scheme, key)) if scheme.eq_ignore_ascii_case("apikey") => api_key(key),
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            let token = token.trim();
            if looks_like_jwt(token) {
                Ok(Some(token.to_owned()))
            } else {
                Err(ApiError::Unauthenticated {
                    reason: "MALFORMED_CREDENTIAL",
                    message: "a bearer token must be a JWT; API keys go in `authorization: ApiKey <key>`"
                        .to_owned(),
                })
            }
        }
        _ => Err(ApiError::Unauthenticated {
            reason: "UNSUPPORTED_CREDENTIAL",
            message: "use `authorization: Bearer <token>`, `authorization: ApiKey <key>` or `x-api-key: <key>`"
                .to_owned(),
        }),
    }
}

/// What identity's `UNAUTHENTICATED` answer about a key means.
fn refusal(status: &tonic::Status) -> KeyAnswer {
    let message = status.message().to_owned();
    let details = status.get_error_details();
    match details.error_info().map(|info| info.reason.as_str()) {
        Some("TENANT_SUSPENDED") => KeyAnswer::TenantRefused {
            reason: "TENANT_SUSPENDED",
            message,
        },
        Some("TENANT_NOT_ACTIVE") => KeyAnswer::TenantRefused {
            reason: "TENANT_NOT_ACTIVE",
            message,
        },
        Some("API_KEY_OWNER_NOT_ACTIVE") => KeyAnswer::OwnerNotActive { message },
        _ => KeyAnswer::Invalid { message },
    }
}

fn looks_like_jwt(credential: &str) -> bool {
    credential.split('.').count() == 3
}

fn malformed() -> ApiError {
    ApiError::Unauthenticated {
        reason: "MALFORMED_CREDENTIAL",
        message: "the credential header is not valid ascii".to_owned(),
    }
}

/// Verifies the credentials `presented_api_key` returns: access tokens locally, API keys by
/// asking identity. (The name predates access tokens; the proxy calls it for both.)
pub struct ApiKeyVerifier {
    identity: ApiKeyServiceClient<MeshChannel>,
    /// Keys identity accepted, by SHA-256, and until when they are trusted. Kept apart from
    /// `answers`, which anyone can fill with made-up keys, so those never push genuine keys
    /// out; only keys identity accepted land here.
    accepted: Arc<Accepted>,
    /// Identity's latest answers by the SHA-256 of the key: refusals, and the lookups in
    /// flight (one per key).
    answers: Arc<LookupCache<[u8; 32], KeyAnswer>>,
    lookups: KeyLookups,
    ttl: Duration,
    tokens: TokenVerifier,
}

/// What a client pays for credentials the gateway must work to judge: anyone can send
/// made-up ones, and each costs an identity lookup (an API key) or an Ed25519 verification
/// (an access token).
pub trait ClientBudget {
    /// Pays for asking identity about an API key, as for a public call, or refuses.
    fn pay_for_lookup(&self) -> Result<(), ApiError>;
    /// Takes one of the client's access-token verifications, or refuses.
    fn take_verification(&self) -> Result<(), ApiError>;
    /// Gives back the verification taken for a token that turned out genuine and unexpired:
    /// only tokens that fail to verify (or have expired) cost their client.
    fn give_back_verification(&self);
}

/// Keys identity accepted, by SHA-256: the context each stands for and until when it is trusted.
type Accepted = Sharded<[u8; 32], (TenantContext, Instant)>;

/// The bounds on asking identity about keys.
struct KeyLookups {
    /// Places for keys being verified (waiting or asking); a key finding none is not verified
    /// now (`UNAVAILABLE`), so a flood costs neither unbounded memory nor waits behind it.
    places: Arc<Semaphore>,
    /// Calls to identity in flight; further keys wait their turn (within `VERIFY_TIMEOUT`).
    asking: Arc<Semaphore>,
}

/// What the gateway knows of a key before asking identity.
enum Trust {
    /// Accepted, and trusted still.
    Trusted(TenantContext),
    /// Accepted once, but trusted no longer: to be asked about again. (Lapsed entries are the
    /// first `accepted` drops when full.)
    Lapsed,
    Unknown,
}

/// What identity answered for an API key.
#[derive(Clone, Debug)]
enum KeyAnswer {
    /// A key standing for `context`, to be trusted `until` (the cache TTL from when identity
    /// was asked, never past the key's own expiry).
    Accepted {
        context: TenantContext,
        until: Instant,
    },
    /// A genuine key of a tenant out of service: refused as the proxy refuses a cached key of
    /// that tenant. Believed briefly, as the tenant may be reactivated.
    TenantRefused {
        reason: &'static str,
        message: String,
    },
    /// A user's key whose owner is disabled: refused as an invalid key, not remembered, as the
    /// owner may be enabled again any moment.
    OwnerNotActive { message: String },
    /// No key identity accepts (unknown, revoked, expired, a wrong secret); that never changes.
    Invalid { message: String },
}

impl ApiKeyVerifier {
    /// Identity's answers about keys are believed for `ttl`; the JWKS is fetched every
    /// `jwks_refresh`.
    pub fn new(identity: MeshChannel, ttl: Duration, jwks_refresh: Duration) -> ApiKeyVerifier {
        let tenant_refusal_ttl = ttl.min(TENANT_REFUSAL_TTL);
        ApiKeyVerifier {
            identity: ApiKeyServiceClient::new(identity.clone()),
            accepted: Arc::new(Sharded::with_capacity(MAX_CACHED)),
            answers: LookupCache::new(
                MAX_CACHED,
                move |answer: &KeyAnswer| match answer {
                    // Remembered in `accepted` instead.
                    KeyAnswer::Accepted { .. } => Duration::ZERO,
                    KeyAnswer::TenantRefused { .. } => tenant_refusal_ttl,
                    KeyAnswer::OwnerNotActive { .. } => Duration::ZERO,
                    KeyAnswer::Invalid { .. } => ttl,
                },
                // A key identity could not be asked about is not trusted on an old answer.
                None,
            ),
            lookups: KeyLookups {
                places: Arc::new(Semaphore::new(MAX_KEYS_VERIFYING)),
                asking: Arc::new(Semaphore::new(MAX_KEY_LOOKUPS)),
            },
            ttl,
            tokens: TokenVerifier::new(Jwks::new(identity, jwks_refresh), MAX_CACHED),
        }
    }

    /// The tenant context the credential stands for. The client pays from `budget` before
    /// identity is asked about an API key (one neither trusted nor refused recently, nor
    /// accepted last time it was asked about), and for an access token, not verified before,
    /// that fails to verify: a refusal of the payment is the answer, so a client presenting
    /// made-up credentials pays for the work they cost.
    pub async fn verify(
        &self,
        key: &str,
        budget: &impl ClientBudget,
    ) -> Result<TenantContext, ApiError> {
        if looks_like_jwt(key) {
            return self.tokens.verify(key, budget).await;
        }
        if !looks_like_api_key(key) {
            return Err(invalid_api_key(
                "the api key is invalid, expired or revoked".to_owned(),
            ));
        }
        let fingerprint: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        if let Trust::Trusted(context) = self.trusted(&fingerprint) {
            return Ok(context);
        }
        let answer = self
            .answers
            .get_admitted(&fingerprint, || {
                // Anyone can present any well-formed key, and each unknown one costs identity
                // a lookup: a flood of them is bounded here, not at identity.
                let place = self
                    .lookups
                    .places
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| {
                        tracing::debug!("api key not verified: {TOO_MANY_LOOKUPS}");
                        cannot_verify()
                    })?;
                // A key identity accepted before is one the client holds, not made up: asking
                // again when its trust lapses is the gateway's doing, not charged to the client.
                // Read here, where no lookup of the key can end meanwhile.
                let accepted_before = !matches!(self.trusted(&fingerprint), Trust::Unknown);
                if !accepted_before {
                    budget.pay_for_lookup()?;
                }
                let ask = ask_identity(
                    self.identity.clone(),
                    self.lookups.asking.clone(),
                    key.to_owned(),
                    self.ttl,
                );
                let accepted = self.accepted.clone();
                Ok(async move {
                    let _place = place;
                    let answer = ask.await;
                    // Remembered here, by the one lookup of the key in flight, so answers land
                    // in the order identity gave them: a caller resuming late cannot put back
                    // a key that a later lookup found revoked.
                    if let Ok(answer) = &answer {
                        remember(&accepted, fingerprint, answer);
                    }
                    answer
                }
                .boxed())
            })
            .await
            .map_err(|no_answer| match no_answer {
                NoAnswer::Refused(error) => error,
                NoAnswer::Failed(error) => {
                    tracing::warn!(%error, "api key verification failed");
                    cannot_verify()
                }
            })?;
        match answer {
            KeyAnswer::Accepted { context, .. } => Ok(context),
            KeyAnswer::TenantRefused { reason, message } => {
                Err(ApiError::PermissionDenied { reason, message })
            }
            KeyAnswer::OwnerNotActive { message } | KeyAnswer::Invalid { message } => {
                Err(invalid_api_key(message))
            }
        }
    }

    /// Whether identity accepted the key, and whether that still stands.
    fn trusted(&self, fingerprint: &[u8; 32]) -> Trust {
        let now = Instant::now();
        self.accepted
            .with(fingerprint, |shard| match shard.get(fingerprint) {
                Some((context, until)) if now < *until => Trust::Trusted(context.clone()),
                Some(_) => Trust::Lapsed,
                None => Trust::Unknown,
            })
    }
}

/// Keeps identity's `answer` about the key `fingerprint` in `accepted`: trusted until its time
/// if accepted; otherwise (revoked, expired, its owner or tenant out of service) dropped, so
/// asking about it again is charged to the client from now on and the free re-check happens
/// once per acceptance, however often the client presents the key.
fn remember(accepted: &Accepted, fingerprint: [u8; 32], answer: &KeyAnswer) {
    let now = Instant::now();
    accepted.with(&fingerprint, |shard| match answer {
        KeyAnswer::Accepted { context, until } => {
            // Expired keys go first, then those trusted for the shortest time.
            accepted.make_room(shard, |(_, until)| now < *until, |(_, until)| Some(*until));
            shard.insert(fingerprint, (context.clone(), *until));
        }
        _ => {
            shard.remove(&fingerprint);
        }
    });
}

/// Whether `key` has the shape of an API key, `pal_<32 hex digits>_<64 hex digits>` (the
/// format identity mints, `services/identity/src/api_keys.rs`); anything else is refused
/// without asking.
fn looks_like_api_key(key: &str) -> bool {
    let hex =
        |part: &str, len: usize| part.len() == len && part.bytes().all(|b| b.is_ascii_hexdigit());
    key.strip_prefix("pal_")
        .and_then(|rest| rest.split_once('_'))
        .is_some_and(|(id, secret)| hex(id, 32) && hex(secret, 64))
}

fn invalid_api_key(message: String) -> ApiError {
    ApiError::Unauthenticated {
        reason: "INVALID_API_KEY",
        message,
    }
}

/// Asks identity about `key`, once one of the `asking` calls is free; an error when it
/// cannot answer (in time).
async fn ask_identity(
    mut identity: ApiKeyServiceClient<MeshChannel>,
    asking: Arc<Semaphore>,
    key: String,
    ttl: Duration,
) -> Result<KeyAnswer, String> {
    let (asked_at, answered) = tokio::time::timeout(VERIFY_TIMEOUT, async {
        let _permit = asking.acquire().await.map_err(|error| error.to_string())?;
        let asked_at = Instant::now();
        let answered = identity.verify_api_key(VerifyApiKeyRequest { key }).await;
        Ok::<_, String>((asked_at, answered))
    })
    .await
    .map_err(|_| "identity did not verify the key in time".to_owned())??;
    let response = match answered {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == Code::Unauthenticated => return Ok(refusal(&status)),
        Err(status) => return Err(format!("{:?}: {}", status.code(), status.message())),
    };
    // Trusted for the TTL from when identity was asked (what it answered held then, not
    // when the answer arrived) and never past the key's expiry.
    let (now, wall_clock) = (Instant::now(), SystemTime::now());
    let key_left = response
        .expire_time
        .and_then(|expire| SystemTime::try_from(expire).ok())
        .map(|expire| expire.duration_since(wall_clock).unwrap_or(Duration::ZERO))
        .unwrap_or(Duration::ZERO);
    let until = [asked_at.checked_add(ttl), now.checked_add(key_left)]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now);
    let principal = response
        .principal
        .ok_or("identity verified a key without a principal")?;
    let tenant_id = TenantId::parse(&principal.tenant_id).map_err(|error| error.to_string())?;
    let kind = match principal.r#type() {
        PrincipalType::User => PrincipalKind::User,
        PrincipalType::Service => PrincipalKind::Service,
        _ => PrincipalKind::ApiKey,
    };
    Ok(KeyAnswer::Accepted {
        context: TenantContext {
            tenant_id,
            principal: Some(Principal::new(principal.id, kind)),
        },
        until,
    })
}

#[cfg(test)]
mod tests;

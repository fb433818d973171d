//! Edge authentication: the credential a client presents becomes a tenant context.
//!
//! Access tokens come as `authorization: Bearer <jwt>` and are verified here, locally: an
//! Ed25519 signature (JWS `EdDSA`) by a key identity publishes (`jwks.rs`), an `exp` in the
//! future and the identity issuer. API keys come as `authorization: ApiKey pal_…`
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
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use futures::FutureExt;
use http::HeaderMap;
use palisade_grpc::{ApiError, MeshChannel};
use palisade_proto::palisade::{
    common::v1::PrincipalType,
    identity::v1::{VerifyApiKeyRequest, api_key_service_client::ApiKeyServiceClient},
};
use palisade_tenancy::{Principal, PrincipalKind, TenantContext, TenantId};
use ring::signature::{ED25519, UnparsedPublicKey};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tonic::Code;
use tonic_types::StatusExt;

use crate::{
    jwks::Jwks,
    lookups::{LookupCache, NoAnswer},
    sharded::Sharded,
};

const MAX_CACHED: usize = 10_000;
/// The `iss` identity puts in its access tokens.
const ISSUER: &str = "palisade-identity";
/// Tolerated clock difference between identity and the gateway when checking `exp`.
const EXPIRY_LEEWAY_SECS: i64 = 30;
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
    accepted: Sharded<[u8; 32], (TenantContext, Instant)>,
    /// Identity's latest answers by the SHA-256 of the key: refusals, and the lookups in
    /// flight (one per key).
    answers: Arc<LookupCache<[u8; 32], KeyAnswer>>,
    lookups: KeyLookups,
    ttl: Duration,
    tokens: TokenVerifier,
}

/// The bounds on asking identity about keys.
struct KeyLookups {
    /// Places for keys being verified (waiting or asking); a key finding none is not verified
    /// now (`UNAVAILABLE`), so a flood costs neither unbounded memory nor waits behind it.
    places: Arc<Semaphore>,
    /// Calls to identity in flight; further keys wait their turn (within `VERIFY_TIMEOUT`).
    asking: Arc<Semaphore>,
}

/// What identity answered for an API key.
#[derive(Clone, Debug)]
enum KeyAnswer {
    /// A key standing for `context`, to be trusted for `trust` (the cache TTL, never past the
    /// key's own expiry).
    Accepted {
        context: TenantContext,
        trust: Duration,
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
            accepted: Sharded::with_capacity(MAX_CACHED),
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
            tokens: TokenVerifier {
                jwks: Jwks::new(identity, jwks_refresh),
                verified: Sharded::with_capacity(MAX_CACHED),
            },
        }
    }

    /// The tenant context the credential stands for. `admit` is asked before identity is
    /// (only for an API key neither trusted nor refused recently): its refusal is the answer,
    /// so a client presenting made-up keys pays for the lookups they cost.
    pub async fn verify(
        &self,
        key: &str,
        admit: impl FnOnce() -> Result<(), ApiError>,
    ) -> Result<TenantContext, ApiError> {
        if looks_like_jwt(key) {
            return self.tokens.verify(key).await;
        }
        if !looks_like_api_key(key) {
            return Err(invalid_api_key(
                "the api key is invalid, expired or revoked".to_owned(),
            ));
        }
        let fingerprint: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        if let Some(context) = self.trusted(&fingerprint) {
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
                admit()?;
                let ask = ask_identity(
                    self.identity.clone(),
                    self.lookups.asking.clone(),
                    key.to_owned(),
                    self.ttl,
                );
                Ok(async move {
                    let _place = place;
                    ask.await
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
            KeyAnswer::Accepted { context, trust } => {
                self.trust(fingerprint, &context, Instant::now() + trust);
                Ok(context)
            }
            KeyAnswer::TenantRefused { reason, message } => {
                Err(ApiError::PermissionDenied { reason, message })
            }
            KeyAnswer::OwnerNotActive { message } | KeyAnswer::Invalid { message } => {
                Err(invalid_api_key(message))
            }
        }
    }

    /// The context of an accepted key, while it is trusted.
    fn trusted(&self, fingerprint: &[u8; 32]) -> Option<TenantContext> {
        let now = Instant::now();
        self.accepted.with(fingerprint, |shard| {
            shard
                .get(fingerprint)
                .filter(|(_, until)| now < *until)
                .map(|(context, _)| context.clone())
        })
    }

    fn trust(&self, fingerprint: [u8; 32], context: &TenantContext, until: Instant) {
        let now = Instant::now();
        self.accepted.with(&fingerprint, |shard| {
            // Expired keys go first, then those trusted for the shortest time.
            self.accepted
                .make_room(shard, |(_, until)| now < *until, |(_, until)| Some(*until));
            shard.insert(fingerprint, (context.clone(), until));
        });
    }
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
    let asked = tokio::time::timeout(VERIFY_TIMEOUT, async {
        let _permit = asking.acquire().await.map_err(|error| error.to_string())?;
        Ok::<_, String>(identity.verify_api_key(VerifyApiKeyRequest { key }).await)
    })
    .await
    .map_err(|_| "identity did not verify the key in time".to_owned())?;
    let response = match asked? {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == Code::Unauthenticated => return Ok(refusal(&status)),
        Err(status) => return Err(format!("{:?}: {}", status.code(), status.message())),
    };
    let key_lifetime = response
        .expire_time
        .and_then(|expire| SystemTime::try_from(expire).ok())
        .map(|expire| {
            expire
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
        })
        .unwrap_or(Duration::ZERO);
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
        trust: ttl.min(key_lifetime),
    })
}

/// Verifies access tokens against identity's published keys.
struct TokenVerifier {
    jwks: Jwks,
    /// Tokens whose signature verified, by SHA-256: a client sends the same token with every
    /// call, and hashing it costs far less than an Ed25519 verification and the JSON decoding.
    verified: Sharded<[u8; 32], VerifiedToken>,
}

/// What a verified token stands for, and what must still hold for it to stand.
struct VerifiedToken {
    context: TenantContext,
    kid: String,
    exp: i64,
}

impl VerifiedToken {
    /// Whether the token is unexpired at `now` (seconds), allowing for clock differences.
    fn unexpired(&self, now: i64) -> bool {
        self.exp + EXPIRY_LEEWAY_SECS > now
    }
}

impl TokenVerifier {
    async fn verify(&self, token: &str) -> Result<TenantContext, ApiError> {
        let fingerprint: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(context) = self.cached(&fingerprint) {
            return Ok(context);
        }
        let (context, kid, exp) = self.verify_signed(token).await?;
        let now = unix_now();
        self.verified.with(&fingerprint, |shard| {
            // Expired tokens go first, then those expiring soonest.
            self.verified
                .make_room(shard, |token| token.unexpired(now), |token| Some(token.exp));
            let token = VerifiedToken {
                context: context.clone(),
                kid,
                exp,
            };
            shard.insert(fingerprint, token);
        });
        Ok(context)
    }

    /// A token verified before, while it is unexpired and its key still published (a key
    /// identity retires stops its cached tokens at the next JWKS refresh, as it stops new ones).
    /// Anything else is verified afresh, which gives the precise refusal.
    fn cached(&self, fingerprint: &[u8; 32]) -> Option<TenantContext> {
        let now = unix_now();
        self.verified.with(fingerprint, |shard| {
            let token = shard.get(fingerprint)?;
            (token.unexpired(now) && self.jwks.publishes(&token.kid)).then(|| token.context.clone())
        })
    }

    /// Checks the token's signature and claims: its context, `kid` and `exp`.
    async fn verify_signed(&self, token: &str) -> Result<(TenantContext, String, i64), ApiError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid_token());
        };
        let header = decode_json(header)?;
        if header["alg"] != "EdDSA" {
            return Err(invalid_token());
        }
        let kid = header["kid"].as_str().ok_or_else(invalid_token)?;
        let key = self.jwks.key(kid).await?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| invalid_token())?;
        let signing_input = &token[..header_and_payload_len(token)];
        UnparsedPublicKey::new(&ED25519, key)
            .verify(signing_input.as_bytes(), &signature)
            .map_err(|_| invalid_token())?;
        let claims = decode_json(payload)?;
        let context = context_from_claims(&claims, unix_now())?;
        let exp = claims["exp"].as_i64().ok_or_else(invalid_token)?;
        Ok((context, kid.to_owned(), exp))
    }
}

fn header_and_payload_len(token: &str) -> usize {
    token.rfind('.').expect("three parts were checked")
}

fn decode_json(part: &str) -> Result<serde_json::Value, ApiError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| invalid_token())?;
    serde_json::from_slice(&bytes).map_err(|_| invalid_token())
}

/// The tenant context of a token whose signature has been verified: the issuer must be
/// identity, the token unexpired, and the principal a user of a valid tenant.
fn context_from_claims(claims: &serde_json::Value, now: i64) -> Result<TenantContext, ApiError> {
    let exp = claims["exp"].as_i64().ok_or_else(invalid_token)?;
    if claims["iss"] != ISSUER || claims["principal_type"] != "user" {
        return Err(invalid_token());
    }
    if exp + EXPIRY_LEEWAY_SECS <= now {
        return Err(ApiError::Unauthenticated {
            reason: "TOKEN_EXPIRED",
            message: "the access token has expired; refresh it".to_owned(),
        });
    }
    let tenant_id = claims["tenant"]
        .as_str()
        .and_then(|tenant| TenantId::parse(tenant).ok())
        .ok_or_else(invalid_token)?;
    let user = claims["sub"]
        .as_str()
        .filter(|sub| !sub.is_empty())
        .ok_or_else(invalid_token)?;
    // The session lets services refuse the token once its session ends (logout, revocation);
    // tokens from before sessions were named carry none.
    let session_id = match &claims["sid"] {
        serde_json::Value::Null => None,
        sid => Some(
            sid.as_str()
                .filter(|sid| uuid::Uuid::try_parse(sid).is_ok())
                .ok_or_else(invalid_token)?
                .to_owned(),
        ),
    };
    Ok(TenantContext {
        tenant_id,
        principal: Some(Principal {
            session_id,
            ..Principal::new(user, PrincipalKind::User)
        }),
    })
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64)
}

/// Identity could not be asked, so a credential can be neither accepted nor refused.
pub(crate) fn cannot_verify() -> ApiError {
    ApiError::Unavailable {
        message: "cannot verify credentials right now".to_owned(),
    }
}

pub(crate) fn invalid_token() -> ApiError {
    ApiError::Unauthenticated {
        reason: "INVALID_TOKEN",
        message: "the access token is invalid".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(key: &'static str, value: &'static str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(key, HeaderValue::from_static(value));
        map
    }

    #[test]
    fn only_strings_shaped_like_keys_are_asked_about() {
        let id = "0123456789abcdef0123456789ABCDEF";
        let secret = "f".repeat(64);
        assert!(looks_like_api_key(&format!("pal_{id}_{secret}")));
        for junk in [
            String::new(),
            "pal_".to_owned(),
            "pal_x_y".to_owned(),
            format!("pal_{id}_{secret}0"),
            format!("pal_{id}{secret}"),
            format!("pal_{}_{secret}", "g".repeat(32)),
            format!("key_{id}_{secret}"),
            format!("pal_{id}_{}", "é".repeat(32)),
        ] {
            assert!(!looks_like_api_key(&junk), "{junk}");
        }
    }

    #[test]
    fn reads_both_header_forms() {
        assert_eq!(
            presented_api_key(&headers("authorization", "ApiKey pal_x"))
                .unwrap()
                .as_deref(),
            Some("pal_x")
        );
        assert_eq!(
            presented_api_key(&headers("x-api-key", "pal_y"))
                .unwrap()
                .as_deref(),
            Some("pal_y")
        );
        assert_eq!(presented_api_key(&HeaderMap::new()).unwrap(), None);
        assert!(presented_api_key(&headers("authorization", "Basic dXNlcg==")).is_err());
        assert_eq!(
            presented_api_key(&headers("authorization", "Bearer a.b.c"))
                .unwrap()
                .as_deref(),
            Some("a.b.c")
        );
        // Each scheme takes only its own kind of credential.
        assert!(presented_api_key(&headers("authorization", "Bearer pal_x")).is_err());
        assert!(presented_api_key(&headers("authorization", "ApiKey a.b.c")).is_err());
        assert!(presented_api_key(&headers("x-api-key", "a.b.c")).is_err());
    }

    #[test]
    fn claims_are_checked() {
        let claims = |iss: &str, exp: i64, kind: &str| {
            serde_json::json!({
                "iss": iss, "sub": "u1", "tenant": "acme", "principal_type": kind,
                "roles": ["admin"], "iat": 0, "exp": exp, "jti": "j",
            })
        };
        let context = context_from_claims(&claims(ISSUER, 1_000, "user"), 900).unwrap();
        assert_eq!(context.tenant_id.as_str(), "acme");
        let principal = context.principal.unwrap();
        assert_eq!(
            (principal.id.as_str(), principal.kind),
            ("u1", PrincipalKind::User)
        );
        assert_eq!(principal.session_id, None, "a token from before sessions");
        let mut with_session = claims(ISSUER, 1_000, "user");
        with_session["sid"] = "0192f5a2-7c1e-7a4b-9d7e-0a1b2c3d4e5f".into();
        let principal = context_from_claims(&with_session, 900)
            .unwrap()
            .principal
            .unwrap();
        assert_eq!(
            principal.session_id.as_deref(),
            Some("0192f5a2-7c1e-7a4b-9d7e-0a1b2c3d4e5f")
        );
        with_session["sid"] = "not-a-session".into();
        assert!(context_from_claims(&with_session, 900).is_err());
        assert!(context_from_claims(&claims("someone-else", 1_000, "user"), 900).is_err());
        assert!(context_from_claims(&claims(ISSUER, 1_000, "service"), 900).is_err());
        assert!(
            context_from_claims(&claims(ISSUER, 1_000, "user"), 1_000 + EXPIRY_LEEWAY_SECS)
                .is_err()
        );
    }
}

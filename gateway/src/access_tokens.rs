//! Access tokens verified at the edge, without asking identity: an Ed25519 signature (JWS
//! `EdDSA`) by a key identity publishes (`jwks.rs`), an `exp` in the future and the identity
//! issuer. A token whose signature verified is remembered by its SHA-256 while its `kid` stays
//! published (an expired one, to be refused as expired without verifying it again).
//!
//! Anyone can make up tokens, and each one not remembered costs an Ed25519 verification, so
//! each takes one of its client's verifications (`ClientBudget`) before its signature is
//! checked, and gives it back if the token verifies and is unexpired: made-up tokens cost a
//! flooding client its rate, not the gateway a core, and genuine ones cost nothing (an expired
//! one its first check). It is taken once identity's key is at hand, so nothing is waited for
//! between taking and giving back: a genuine token waiting for a key fetch holds none, and a
//! call that goes away cannot keep one.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use palisade_grpc::ApiError;
use palisade_tenancy::{Principal, PrincipalKind, TenantContext, TenantId};
use ring::signature::{ED25519, UnparsedPublicKey};
use sha2::{Digest, Sha256};

use crate::{auth::ClientBudget, jwks::Jwks, sharded::Sharded};

/// The `iss` identity puts in its access tokens.
const ISSUER: &str = "palisade-identity";
/// Tolerated clock difference between identity and the gateway when checking `exp` and `nbf`.
const CLOCK_LEEWAY_SECS: i64 = 30;

/// Verifies access tokens against identity's published keys.
pub struct TokenVerifier {
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
        self.exp + CLOCK_LEEWAY_SECS > now
    }
}

impl TokenVerifier {
    /// A verifier remembering about `capacity` verified tokens.
    pub fn new(jwks: Jwks, capacity: usize) -> TokenVerifier {
        TokenVerifier {
            jwks,
            verified: Sharded::with_capacity(capacity),
        }
    }

    pub async fn verify(
        &self,
        token: &str,
        budget: &impl ClientBudget,
    ) -> Result<TenantContext, ApiError> {
        let fingerprint: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(known) = self.remembered(&fingerprint) {
            return known;
        }
        let (context, kid, exp) = self.verify_signed(token, budget).await?;
        let token = VerifiedToken { context, kid, exp };
        let now = unix_now();
        let unexpired = token.unexpired(now);
        let answer = if unexpired {
            // Only an unexpired token gives back its verification: an expired one may find no
            // room to be remembered, and a client resending it would have it verified free
            // each time.
            budget.give_back_verification();
            Ok(token.context.clone())
        } else {
            Err(token_expired())
        };
        self.verified.with(&fingerprint, |shard| {
            let verified = &self.verified;
            let keep = |token: &mut VerifiedToken| token.unexpired(now);
            // Expired tokens go first, then those expiring soonest. An expired one is kept
            // only where that costs no unexpired one its place: a client sending its expired
            // token again (to `RefreshToken`, say) is answered without a verification.
            let room = match unexpired {
                true => verified.make_room(shard, keep, |token| Some(token.exp)),
                false => verified.make_room(shard, keep, |_| None::<i64>),
            };
            if room {
                shard.insert(fingerprint, token);
            }
        });
        answer
    }

    /// The answer for a token whose signature verified before: its context while it is
    /// unexpired and its key still published (a key identity retires stops its remembered
    /// tokens at the next JWKS refresh, as it stops new ones), the refusal once it expired.
    /// Anything else is verified afresh, which gives the precise refusal.
    fn remembered(&self, fingerprint: &[u8; 32]) -> Option<Result<TenantContext, ApiError>> {
        let now = unix_now();
        self.verified.with(fingerprint, |shard| {
            let token = shard.get(fingerprint)?;
            if !token.unexpired(now) {
                return Some(Err(token_expired()));
            }
            (self.jwks.publishes(&token.kid)).then(|| Ok(token.context.clone()))
        })
    }

    /// Checks the token's signature and claims: its context, `kid` and `exp` (not yet
    /// checked against the clock). The signature's check is paid from `budget` (the caller
    /// gives it back for a token that verified and is unexpired).
    async fn verify_signed(
        &self,
        token: &str,
        budget: &impl ClientBudget,
    ) -> Result<(TenantContext, String, i64), ApiError> {
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
        budget.take_verification()?;
        let claims = signed_claims(token, &key, payload, signature)?;
        let context = context_from_claims(&claims, unix_now())?;
        let exp = claims["exp"].as_i64().ok_or_else(invalid_token)?;
        Ok((context, kid.to_owned(), exp))
    }
}

/// The claims of `token` (whose parts are `payload` and `signature`) once its signature
/// verifies with `key`.
fn signed_claims(
    token: &str,
    key: &[u8],
    payload: &str,
    signature: &str,
) -> Result<serde_json::Value, ApiError> {
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| invalid_token())?;
    let signing_input = &token[..header_and_payload_len(token)];
    UnparsedPublicKey::new(&ED25519, key)
        .verify(signing_input.as_bytes(), &signature)
        .map_err(|_| invalid_token())?;
    decode_json(payload)
}

fn header_and_payload_len(token: &str) -> usize {
    token.rfind('.').expect("three parts were checked")
}

fn decode_json(part: &str) -> Result<serde_json::Value, ApiError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| invalid_token())?;
    serde_json::from_slice(&bytes).map_err(|_| invalid_token())
}

/// The tenant context of a token whose signature has been verified: the issuer must be
/// identity, the token valid already (its expiry is the caller's to check) and the principal
/// a user of a valid tenant.
fn context_from_claims(claims: &serde_json::Value, now: i64) -> Result<TenantContext, ApiError> {
    if claims["exp"].as_i64().is_none()
        || claims["iss"] != ISSUER
        || claims["principal_type"] != "user"
    {
        return Err(invalid_token());
    }
    // Identity's tokens carry no `nbf`, but one that does is not valid before it (RFC 7519).
    let not_before = &claims["nbf"];
    if !not_before.is_null()
        && (not_before.as_i64()).is_none_or(|nbf| nbf > now + CLOCK_LEEWAY_SECS)
    {
        return Err(invalid_token());
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

fn token_expired() -> ApiError {
    ApiError::Unauthenticated {
        reason: "TOKEN_EXPIRED",
        message: "the access token has expired; refresh it".to_owned(),
    }
}

pub(crate) fn invalid_token() -> ApiError {
    ApiError::Unauthenticated {
        reason: "INVALID_TOKEN",
        message: "the access token is invalid".to_owned(),
    }
}

#[cfg(test)]
mod tests;

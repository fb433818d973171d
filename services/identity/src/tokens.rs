//! Access and refresh tokens. Access tokens are JWTs signed with Ed25519 (compact JWS, `alg`
//! `EdDSA`, RFC 8037), built by hand on `ring`: the format is small and fixed, and `ring` is
//! already the mesh's crypto provider. Refresh tokens are 256 random bits; only their SHA-256
//! is stored (like API keys, they need no password stretching).

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use palisade_grpc::ApiError;
use palisade_proto::palisade::identity::v1::Jwk;
use rand::RngCore;
use ring::{
    rand::SystemRandom,
    signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey},
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::users::UserRecord;

/// The `iss` of every access token; the gateway accepts no other.
pub const ISSUER: &str = "palisade-identity";
/// How long an access token is valid.
pub const ACCESS_TOKEN_TTL_MICROS: i64 = 15 * 60 * 1_000_000;
/// How long a refresh token is valid (each refresh issues a new one).
pub const REFRESH_TOKEN_TTL_MICROS: i64 = 30 * 24 * 3600 * 1_000_000;
/// How long a sign-in session (the token family of one login) lasts at most, however often it
/// is refreshed, unless configured otherwise: past it, the user signs in again (OWASP's
/// absolute session timeout). A stolen refresh token that is kept refreshed dies with it.
pub const DEFAULT_SESSION_MAX_LIFETIME: std::time::Duration =
    std::time::Duration::from_secs(90 * 24 * 3600);
const REFRESH_PREFIX: &str = "palrt_";

/// The claims of an access token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The user id.
    pub sub: String,
    pub tenant: String,
    /// Always `user`.
    pub principal_type: String,
    /// The user's roles when the token was issued; informational: permission checks read the
    /// current roles, so a revoked role takes effect at once.
    pub roles: Vec<String>,
    /// Seconds since the epoch.
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    /// The sign-in session (token family) the token was issued in; absent from tokens issued
    /// before sessions were named, which are then checked without one until they expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}

impl Claims {
    /// An access token for `user` in `session`, valid for [`ACCESS_TOKEN_TTL_MICROS`] or
    /// until the session ends (`session_end`, microseconds), whichever comes first.
    pub fn for_user(user: &UserRecord, session: &str, now: i64, session_end: i64) -> Claims {
        Claims {
            iss: ISSUER.to_owned(),
            sub: user.id.clone(),
            tenant: user.tenant_id.to_string(),
            principal_type: "user".to_owned(),
            roles: user.roles.clone(),
            iat: now / 1_000_000,
            exp: (now + ACCESS_TOKEN_TTL_MICROS).min(session_end) / 1_000_000,
            jti: uuid::Uuid::now_v7().to_string(),
            sid: Some(session.to_owned()),
        }
    }
}

/// The claims of `token` if it is an access token signed by one of `keys` and issued by
/// identity, whether or not it has expired; `None` for anything else.
pub fn verified_claims(token: &str, keys: &[SigningKeyRecord]) -> Option<Claims> {
    let (signing_input, signature) = token.rsplit_once('.')?;
    let (_, payload) = signing_input.split_once('.')?;
    let kid = claimed_kid(token)?;
    let key = keys.iter().find(|key| key.kid == kid)?;
    UnparsedPublicKey::new(&ED25519, &key.public_key)
        .verify(
            signing_input.as_bytes(),
            &URL_SAFE_NO_PAD.decode(signature).ok()?,
        )
        .ok()?;
    let claims: Claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    (claims.iss == ISSUER).then_some(claims)
}

/// The `kid` an `EdDSA` token's header names, unverified: what to look up before verifying.
pub fn claimed_kid(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
    if header["alg"] != "EdDSA" {
        return None;
    }
    header["kid"].as_str().map(str::to_owned)
}

/// Whether `token` has the shape of an access token: three base64url parts.
pub fn looks_like_access_token(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Whether `token` has the shape of a refresh token.
pub fn looks_like_refresh_token(token: &str) -> bool {
    token
        .strip_prefix(REFRESH_PREFIX)
        .is_some_and(|secret| secret.len() == 64 && secret.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A signing key: its PKCS#8 private key (as stored: sealed, see `sealing.rs`, or plain) and
/// the raw 32-byte public key. Its `Debug` leaves the private key out.
#[derive(Clone)]
pub struct SigningKeyRecord {
    pub kid: String,
    pub private_key: Vec<u8>,
    pub public_key: Vec<u8>,
    pub create_time: i64,
}

impl std::fmt::Debug for SigningKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeyRecord")
            .field("kid", &self.kid)
            .field("create_time", &self.create_time)
            .finish_non_exhaustive()
    }
}

impl SigningKeyRecord {
    /// A fresh Ed25519 key; its `kid` is its RFC 7638 JWK thumbprint.
    pub fn generate(now: i64) -> Result<SigningKeyRecord, ApiError> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| ApiError::internal("cannot generate an ed25519 key"))?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .map_err(|_| ApiError::internal("generated ed25519 key does not parse"))?;
        let public_key = pair.public_key().as_ref().to_vec();
        Ok(SigningKeyRecord {
            kid: thumbprint(&public_key),
            private_key: pkcs8.as_ref().to_vec(),
            public_key,
            create_time: now,
        })
    }

    pub fn jwk(&self) -> Jwk {
        Jwk {
            kty: "OKP".to_owned(),
            crv: "Ed25519".to_owned(),
            x: URL_SAFE_NO_PAD.encode(&self.public_key),
            kid: self.kid.clone(),
            alg: "EdDSA".to_owned(),
            r#use: "sig".to_owned(),
        }
    }
}

/// Signs access tokens with the current key.
pub struct Signer {
    kid: String,
    pair: Ed25519KeyPair,
}

impl Signer {
    /// The signer of key `kid`, from its PKCS#8 private key (opened, see `sealing.rs`).
    pub fn new(kid: &str, pkcs8: &[u8]) -> Result<Signer, ApiError> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
            .map_err(|_| ApiError::internal("stored signing key does not parse"))?;
        Ok(Signer {
            kid: kid.to_owned(),
            pair,
        })
    }

    /// The compact JWS `header.payload.signature` of `claims`.
    pub fn sign(&self, claims: &Claims) -> Result<String, ApiError> {
        let header = serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": self.kid});
        let payload = serde_json::to_vec(claims).map_err(ApiError::internal)?;
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let signature = self.pair.sign(signing_input.as_bytes());
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }
}

/// RFC 7638: base64url(SHA-256 of the canonical JSON of the required members).
fn thumbprint(public_key: &[u8]) -> String {
    let canonical = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(public_key)
    );
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// A new refresh token: the string for the client and the hash to store.
pub fn new_refresh_token() -> (String, Vec<u8>) {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let token = format!("{REFRESH_PREFIX}{}", hex::encode(secret));
    let hash = hash_refresh_token(&token);
    (token, hash)
}

pub fn hash_refresh_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Claims as a login issues them (long expired).
    fn claims() -> Claims {
        Claims {
            iss: ISSUER.into(),
            sub: "u".into(),
            tenant: "acme".into(),
            principal_type: "user".into(),
            roles: vec!["admin".into()],
            iat: 1,
            exp: 2,
            jti: "j".into(),
            sid: Some("s".into()),
        }
    }

    #[test]
    fn tokens_verify_with_the_published_key() {
        let key = SigningKeyRecord::generate(0).unwrap();
        let signer = Signer::new(&key.kid, &key.private_key).unwrap();
        let claims = claims();
        let token = signer.sign(&claims).unwrap();
        let (input, signature) = token.rsplit_once('.').unwrap();
        let jwk = key.jwk();
        let public = URL_SAFE_NO_PAD.decode(&jwk.x).unwrap();
        UnparsedPublicKey::new(&ED25519, public)
            .verify(
                input.as_bytes(),
                &URL_SAFE_NO_PAD.decode(signature).unwrap(),
            )
            .unwrap();
        let (header, payload) = input.split_once('.').unwrap();
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
        assert_eq!(header["kid"], jwk.kid.as_str());
        assert_eq!(header["alg"], "EdDSA");
        let decoded: Claims =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(decoded, claims);
    }

    #[test]
    fn only_genuine_tokens_verify_expired_or_not() {
        let key = SigningKeyRecord::generate(0).unwrap();
        let other = SigningKeyRecord::generate(0).unwrap();
        let signer = Signer::new(&key.kid, &key.private_key).unwrap();
        let claims = claims();
        let token = signer.sign(&claims).unwrap();
        assert!(looks_like_access_token(&token));
        assert_eq!(
            verified_claims(&token, std::slice::from_ref(&key)),
            Some(claims.clone())
        );
        assert_eq!(verified_claims(&token, &[other]), None, "unknown kid");
        let (input, _) = token.rsplit_once('.').unwrap();
        let (header, _) = input.split_once('.').unwrap();
        let forged_payload = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&Claims {
                sid: Some("another".into()),
                ..claims.clone()
            })
            .unwrap(),
        );
        let forged = format!(
            "{header}.{forged_payload}.{}",
            token.rsplit_once('.').unwrap().1
        );
        assert_eq!(
            verified_claims(&forged, std::slice::from_ref(&key)),
            None,
            "payload swapped"
        );
        let foreign = Signer::new(
            &key.kid,
            &SigningKeyRecord::generate(0).unwrap().private_key,
        )
        .unwrap()
        .sign(&claims)
        .unwrap();
        assert_eq!(
            verified_claims(&foreign, &[key]),
            None,
            "signed by another key, same kid"
        );
        assert!(!looks_like_access_token("a.b"));
        assert!(!looks_like_access_token("a.b.c d"));
    }

    #[test]
    fn refresh_tokens_are_random_and_hashed() {
        let (a, hash) = new_refresh_token();
        let (b, _) = new_refresh_token();
        assert_ne!(a, b);
        assert!(a.starts_with(REFRESH_PREFIX));
        assert!(looks_like_refresh_token(&a) && !looks_like_access_token(&a));
        assert!(!looks_like_refresh_token("palrt_xyz"));
        assert_eq!(hash_refresh_token(&a), hash);
    }
}

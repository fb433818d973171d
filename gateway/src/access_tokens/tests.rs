//! The verifier against a stand-in identity, with a client budget that counts.

use std::{
    sync::atomic::{AtomicIsize, AtomicUsize, Ordering},
    time::Duration,
};

use palisade_proto::palisade::identity::v1::Jwk;
use ring::{
    rand::SystemRandom,
    signature::{Ed25519KeyPair, KeyPair},
};

use super::*;
use crate::test_identity::{FakeAuth, channel_to};

/// A client's verifications, counted.
struct Budget {
    left: AtomicIsize,
    taken: AtomicUsize,
    given_back: AtomicUsize,
}

impl Budget {
    fn of(left: isize) -> Budget {
        Budget {
            left: AtomicIsize::new(left),
            taken: AtomicUsize::new(0),
            given_back: AtomicUsize::new(0),
        }
    }

    /// (taken, given back)
    fn counts(&self) -> (usize, usize) {
        (
            self.taken.load(Ordering::SeqCst),
            self.given_back.load(Ordering::SeqCst),
        )
    }
}

impl ClientBudget for Budget {
    fn pay_for_lookup(&self) -> Result<(), ApiError> {
        unreachable!("an access token is not looked up")
    }

    fn take_verification(&self) -> Result<(), ApiError> {
        if self.left.fetch_sub(1, Ordering::SeqCst) <= 0 {
            self.left.fetch_add(1, Ordering::SeqCst);
            return Err(spent());
        }
        self.taken.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn give_back_verification(&self) {
        self.left.fetch_add(1, Ordering::SeqCst);
        self.given_back.fetch_add(1, Ordering::SeqCst);
    }
}

fn spent() -> ApiError {
    ApiError::ResourceExhausted {
        reason: "CLIENT_RATE_LIMITED",
        message: "spent".into(),
        subject: "clients/test".into(),
        description: String::new(),
        retry_after: None,
    }
}

fn reason(result: Result<TenantContext, ApiError>) -> &'static str {
    match result {
        Err(ApiError::Unauthenticated { reason, .. })
        | Err(ApiError::ResourceExhausted { reason, .. }) => reason,
        Err(ApiError::Unavailable { .. }) => "UNAVAILABLE",
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Identity's signing key, as far as the tests go.
struct Signer {
    pair: Ed25519KeyPair,
    kid: &'static str,
}

impl Signer {
    fn new(kid: &'static str) -> Signer {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Signer {
            pair: Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap(),
            kid,
        }
    }

    fn jwk(&self) -> Jwk {
        Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            kid: self.kid.into(),
            x: URL_SAFE_NO_PAD.encode(self.pair.public_key().as_ref()),
            ..Jwk::default()
        }
    }

    /// An access token as identity signs them, expiring at `exp`.
    fn token(&self, exp: i64) -> String {
        let encode = |json: serde_json::Value| URL_SAFE_NO_PAD.encode(json.to_string());
        let header = encode(serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": self.kid}));
        let payload = encode(serde_json::json!({
            "iss": ISSUER, "sub": "u1", "tenant": "acme", "principal_type": "user", "exp": exp,
        }));
        let signing_input = format!("{header}.{payload}");
        let signature = self.pair.sign(signing_input.as_bytes());
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        )
    }
}

async fn verifier_of(signer: &Signer) -> TokenVerifier {
    let identity = FakeAuth::publishing(vec![signer.jwk()]).serve().await;
    TokenVerifier::new(Jwks::new(identity, Duration::from_secs(3600)), 100)
}

#[tokio::test]
async fn a_genuine_token_is_verified_once_and_costs_nothing() {
    let signer = Signer::new("k1");
    let verifier = verifier_of(&signer).await;
    let budget = Budget::of(1);
    let token = signer.token(unix_now() + 600);
    let context = verifier.verify(&token, &budget).await.unwrap();
    assert_eq!(context.tenant_id.as_str(), "acme");
    assert_eq!(budget.counts(), (1, 1));
    verifier.verify(&token, &budget).await.unwrap();
    assert_eq!(budget.counts(), (1, 1), "remembered, not verified again");
}

#[tokio::test]
async fn a_forged_token_keeps_what_it_took_and_a_spent_budget_verifies_nothing() {
    let signer = Signer::new("k1");
    let verifier = verifier_of(&signer).await;
    let budget = Budget::of(1);
    // Signed by another key under identity's key id.
    let forged = Signer::new("k1").token(unix_now() + 600);
    assert_eq!(
        reason(verifier.verify(&forged, &budget).await),
        "INVALID_TOKEN"
    );
    assert_eq!(budget.counts(), (1, 0));
    let genuine = signer.token(unix_now() + 600);
    let refused = verifier.verify(&genuine, &budget).await;
    assert_eq!(reason(refused), "CLIENT_RATE_LIMITED");
    assert_eq!(budget.counts(), (1, 0));
}

#[tokio::test]
async fn an_expired_token_is_refused_from_memory_once_verified() {
    let signer = Signer::new("k1");
    let verifier = verifier_of(&signer).await;
    let token = signer.token(unix_now() - 3600);
    let budget = Budget::of(1);
    assert_eq!(
        reason(verifier.verify(&token, &budget).await),
        "TOKEN_EXPIRED"
    );
    assert_eq!(
        budget.counts(),
        (1, 0),
        "its first check costs an expired token"
    );
    let spent = Budget::of(0);
    assert_eq!(
        reason(verifier.verify(&token, &spent).await),
        "TOKEN_EXPIRED"
    );
}

#[tokio::test]
async fn a_token_whose_key_cannot_be_fetched_costs_nothing() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = closed.local_addr().unwrap();
    drop(closed);
    let verifier = TokenVerifier::new(
        Jwks::new(channel_to(address), Duration::from_secs(3600)),
        100,
    );
    let budget = Budget::of(1);
    let token = Signer::new("k1").token(unix_now() + 600);
    assert_eq!(
        reason(verifier.verify(&token, &budget).await),
        "UNAVAILABLE"
    );
    assert_eq!(budget.counts(), (0, 0));
}

#[tokio::test]
async fn an_expired_token_takes_no_unexpired_ones_place() {
    let signer = Signer::new("k1");
    let identity = FakeAuth::publishing(vec![signer.jwk()]).serve().await;
    // One place per shard.
    let verifier = TokenVerifier::new(Jwks::new(identity, Duration::from_secs(3600)), 1);
    let budget = Budget::of(isize::MAX);
    let now = unix_now();
    let token = signer.token(now + 600);
    verifier.verify(&token, &budget).await.unwrap();
    // So many that some land in its shard (all but surely: 1 - (15/16)^200).
    for i in 0..200 {
        let expired = signer.token(now - 3600 - i);
        assert_eq!(
            reason(verifier.verify(&expired, &budget).await),
            "TOKEN_EXPIRED"
        );
    }
    let taken = budget.counts().0;
    verifier.verify(&token, &budget).await.unwrap();
    assert_eq!(budget.counts().0, taken, "still remembered");
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
    let mut no_expiry = claims(ISSUER, 1_000, "user");
    no_expiry["exp"] = serde_json::Value::Null;
    assert!(context_from_claims(&no_expiry, 900).is_err());
    let expired = VerifiedToken {
        context: TenantContext {
            tenant_id: TenantId::parse("acme").unwrap(),
            principal: None,
        },
        kid: "k".into(),
        exp: 1_000,
    };
    assert!(expired.unexpired(1_000 + CLOCK_LEEWAY_SECS - 1));
    assert!(!expired.unexpired(1_000 + CLOCK_LEEWAY_SECS));
    let mut not_yet = claims(ISSUER, 1_000, "user");
    not_yet["nbf"] = (900 + CLOCK_LEEWAY_SECS).into();
    assert!(
        context_from_claims(&not_yet, 900).is_ok(),
        "within the leeway"
    );
    not_yet["nbf"] = (901 + CLOCK_LEEWAY_SECS).into();
    assert!(context_from_claims(&not_yet, 900).is_err());
    not_yet["nbf"] = "soon".into();
    assert!(context_from_claims(&not_yet, 900).is_err());
}

//! Reading credentials from headers, and trusting identity's answers about API keys.

use std::sync::atomic::Ordering;

use http::HeaderValue;
use palisade_proto::palisade::{
    common::v1::Principal as WirePrincipal, identity::v1::VerifyApiKeyResponse,
};

use super::*;
use crate::test_identity::{FakeApiKeys, FakeAuth, serve};

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
fn two_credentials_are_refused_whichever_headers_carry_them() {
    let two = |first: (&'static str, &'static str), second: (&'static str, &'static str)| {
        let mut map = headers(first.0, first.1);
        map.append(second.0, HeaderValue::from_static(second.1));
        map
    };
    for map in [
        two(("authorization", "Bearer a.b.c"), ("x-api-key", "pal_x")),
        two(
            ("authorization", "ApiKey pal_x"),
            ("authorization", "ApiKey pal_y"),
        ),
        two(("x-api-key", "pal_x"), ("x-api-key", "pal_y")),
    ] {
        match presented_api_key(&map) {
            Err(ApiError::Unauthenticated { reason, .. }) => {
                assert_eq!(reason, "MALFORMED_CREDENTIAL")
            }
            other => panic!("{map:?}: {other:?}"),
        }
    }
}

/// A client whose lookups cost it nothing.
struct Free;

impl ClientBudget for Free {
    fn pay_for_lookup(&self) -> Result<(), ApiError> {
        Ok(())
    }
    fn take_verification(&self) -> Result<(), ApiError> {
        Ok(())
    }
    fn give_back_verification(&self) {}
}

/// Identity's acceptance of a key of acme's, valid for another hour.
fn accepted() -> VerifyApiKeyResponse {
    VerifyApiKeyResponse {
        principal: Some(WirePrincipal {
            tenant_id: "acme".into(),
            id: "0".repeat(32),
            r#type: PrincipalType::ApiKey as i32,
            session_id: String::new(),
        }),
        key_name: format!("tenants/acme/apiKeys/{}", "0".repeat(32)),
        expire_time: Some((SystemTime::now() + Duration::from_secs(3600)).into()),
    }
}

/// Identity said what held when it was asked: an answer that took a while to arrive is
/// trusted for the TTL from the asking, not from the arrival, so a key revoked meanwhile is
/// trusted no longer than the TTL says.
#[tokio::test]
async fn a_key_is_trusted_for_the_ttl_from_when_identity_was_asked() {
    const TTL: Duration = Duration::from_millis(1_500);
    // The first call (another key's, to open the connection) is answered at once, the rest
    // after a second.
    let keys = FakeApiKeys::new(|call| match call {
        0 => (Duration::ZERO, Ok(accepted())),
        _ => (Duration::from_secs(1), Ok(accepted())),
    });
    let calls = keys.calls();
    let identity = serve(FakeAuth::publishing(Vec::new()), keys).await;
    let verifier = ApiKeyVerifier::new(identity, TTL, Duration::from_secs(3600));
    let key = |secret: &str| format!("pal_{}_{}", "0".repeat(32), secret.repeat(64));
    verifier.verify(&key("e"), &Free).await.unwrap();
    let key = key("f");
    verifier.verify(&key, &Free).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    verifier.verify(&key, &Free).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2, "trusted within the TTL");
    // Past the TTL from the asking (about a second ago), well within it from the answer.
    tokio::time::sleep(Duration::from_secs(1)).await;
    verifier.verify(&key, &Free).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3, "asked again");
}

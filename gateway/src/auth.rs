//! Edge authentication: the credential a client presents becomes a tenant context.
//!
//! API keys come as `authorization: ApiKey pal_…` or `x-api-key: pal_…` and are verified by
//! identity (`ApiKeyService.VerifyApiKey`, an internal method only the gateway may call).
//! Verified keys are cached by the SHA-256 of the key for a short TTL.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use http::HeaderMap;
use palisade_grpc::{ApiError, MeshChannel};
use palisade_proto::palisade::{
    common::v1::PrincipalType,
    identity::v1::{VerifyApiKeyRequest, api_key_service_client::ApiKeyServiceClient},
};
use palisade_tenancy::{Principal, PrincipalKind, TenantContext, TenantId};
use sha2::{Digest, Sha256};
use tonic::Code;

const MAX_CACHED: usize = 10_000;

/// Reads the API key a client presented, if any.
pub fn presented_api_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    if let Some(value) = headers.get("x-api-key") {
        return value
            .to_str()
            .map(|key| Some(key.trim().to_owned()))
            .map_err(|_| malformed());
    }
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| malformed())?;
    match value.split_once(' ') {
        Some((scheme, key)) if scheme.eq_ignore_ascii_case("apikey") => {
            Ok(Some(key.trim().to_owned()))
        }
        _ => Err(ApiError::Unauthenticated {
            reason: "UNSUPPORTED_CREDENTIAL",
            message: "use `authorization: ApiKey <key>` or `x-api-key: <key>`".to_owned(),
        }),
    }
}

fn malformed() -> ApiError {
    ApiError::Unauthenticated {
        reason: "MALFORMED_CREDENTIAL",
        message: "the credential header is not valid ascii".to_owned(),
    }
}

pub struct ApiKeyVerifier {
    identity: ApiKeyServiceClient<MeshChannel>,
    cache: Mutex<HashMap<[u8; 32], (TenantContext, Instant)>>,
    ttl: Duration,
}

impl ApiKeyVerifier {
    pub fn new(identity: MeshChannel, ttl: Duration) -> ApiKeyVerifier {
        ApiKeyVerifier {
            identity: ApiKeyServiceClient::new(identity),
            cache: Mutex::default(),
            ttl,
        }
    }

    /// The tenant context the key stands for.
    pub async fn verify(&self, key: &str) -> Result<TenantContext, ApiError> {
        let fingerprint: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        if let Some(context) = self.cached(&fingerprint) {
            return Ok(context);
        }
        let response = self
            .identity
            .clone()
            .verify_api_key(VerifyApiKeyRequest {
                key: key.to_owned(),
            })
            .await
            .map_err(|status| match status.code() {
                Code::Unauthenticated => ApiError::Unauthenticated {
                    reason: "INVALID_API_KEY",
                    message: status.message().to_owned(),
                },
                code => {
                    tracing::warn!(?code, "api key verification failed");
                    ApiError::Unavailable {
                        message: "cannot verify credentials right now".to_owned(),
                    }
                }
            })?;
        let principal = response
            .into_inner()
            .principal
            .ok_or_else(|| ApiError::internal("identity verified a key without a principal"))?;
        let tenant_id = TenantId::parse(&principal.tenant_id).map_err(ApiError::internal)?;
        let kind = match principal.r#type() {
            PrincipalType::User => PrincipalKind::User,
            PrincipalType::Service => PrincipalKind::Service,
            _ => PrincipalKind::ApiKey,
        };
        let context = TenantContext {
            tenant_id,
            principal: Some(Principal {
                id: principal.id,
                kind,
            }),
        };
        let mut cache = self.cache.lock().expect("api key cache lock");
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(fingerprint, (context.clone(), Instant::now()));
        Ok(context)
    }

    fn cached(&self, fingerprint: &[u8; 32]) -> Option<TenantContext> {
        let cache = self.cache.lock().expect("api key cache lock");
        cache
            .get(fingerprint)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(context, _)| context.clone())
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
    }
}

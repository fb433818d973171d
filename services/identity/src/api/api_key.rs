//! `ApiKeyService`: verification for the gateway.

use palisade_grpc::{principal_type, time::timestamp};
use palisade_proto::palisade::{
    common::v1::Principal,
    identity::v1::{
        VerifyApiKeyRequest, VerifyApiKeyResponse, api_key_service_server::ApiKeyService,
    },
};
use palisade_tenancy::PrincipalKind;
use tonic::{Request, Response, Status};

use crate::authz::Authz;

pub struct ApiKeyApi {
    authz: std::sync::Arc<Authz>,
}

impl ApiKeyApi {
    pub fn new(authz: std::sync::Arc<Authz>) -> ApiKeyApi {
        ApiKeyApi { authz }
    }
}

#[tonic::async_trait]
impl ApiKeyService for ApiKeyApi {
    async fn verify_api_key(
        &self,
        request: Request<VerifyApiKeyRequest>,
    ) -> Result<Response<VerifyApiKeyResponse>, Status> {
        let key = self.authz.verify_api_key(&request.get_ref().key).await?;
        Ok(Response::new(VerifyApiKeyResponse {
            principal: Some(Principal {
                tenant_id: key.tenant_id.to_string(),
                id: key.id.clone(),
                r#type: principal_type(PrincipalKind::ApiKey) as i32,
            }),
            key_name: format!("tenants/{}/apiKeys/{}", key.tenant_id, key.id),
            expire_time: Some(timestamp(key.expire_time)),
        }))
    }
}

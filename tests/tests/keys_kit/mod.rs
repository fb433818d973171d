//! Helpers shared by the `identity_api_keys` suites (included with `mod keys_kit;`).

#![allow(dead_code)]

use crate::common::new_tenant;
use palisade_proto::palisade::identity::v1::{
    ApiKey, CreateApiKeyRequest, CreateApiKeyResponse, CreateUserRequest, ListUsersRequest,
    LoginRequest, Plan, User, api_key_service_client::ApiKeyServiceClient,
    auth_service_client::AuthServiceClient, tenant_service_client::TenantServiceClient,
    user_service_client::UserServiceClient,
};
use palisade_testkit::Mesh;
use tonic::{Code, transport::Channel};

pub const PASSWORD: &str = "correct horse battery staple";
pub const DAY: i64 = 86_400;
pub const READ_USERS: &[&str] = &["identity.users.get", "identity.users.list"];

pub fn with_bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}").parse().expect("tokens are ascii");
    request.metadata_mut().insert("authorization", value);
    request
}

pub fn new_user(tenant: &str, email: &str, roles: &[&str]) -> CreateUserRequest {
    CreateUserRequest {
        parent: format!("tenants/{tenant}"),
        user: Some(User {
            email: email.to_owned(),
            display_name: email.split('@').next().unwrap_or_default().to_owned(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            ..User::default()
        }),
        password: PASSWORD.to_owned(),
    }
}

/// Makes the tenant (as operator) and a user with `roles` in it, signs the user in, and
/// returns (access token, user name).
pub async fn signed_in_user(
    mesh: &Mesh,
    tenant: &str,
    email: &str,
    roles: &[&str],
) -> anyhow::Result<(String, String)> {
    let mut tenants = TenantServiceClient::new(mesh.gateway());
    let exists = tenants
        .create_tenant(mesh.as_operator(new_tenant(tenant, tenant, Plan::Professional)))
        .await;
    if let Err(status) = exists {
        anyhow::ensure!(status.code() == Code::AlreadyExists, "{status:?}");
    }
    UserServiceClient::new(mesh.gateway())
        .create_user(mesh.as_operator(new_user(tenant, email, roles)))
        .await?;
    let tokens = AuthServiceClient::new(mesh.gateway())
        .login(LoginRequest {
            tenant_id: tenant.to_owned(),
            email: email.to_owned(),
            password: PASSWORD.to_owned(),
        })
        .await?
        .into_inner();
    Ok((tokens.access_token, tokens.user))
}

pub fn key_request(
    tenant: &str,
    name: &str,
    scopes: &[&str],
    ttl_days: i64,
) -> CreateApiKeyRequest {
    CreateApiKeyRequest {
        parent: format!("tenants/{tenant}"),
        api_key: Some(ApiKey {
            display_name: name.to_owned(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            ..ApiKey::default()
        }),
        ttl: Some(prost_types::Duration {
            seconds: ttl_days * DAY,
            nanos: 0,
        }),
    }
}

pub fn list_users(tenant: &str) -> ListUsersRequest {
    ListUsersRequest {
        parent: format!("tenants/{tenant}"),
        ..Default::default()
    }
}

pub async fn create(
    keys: &mut ApiKeyServiceClient<Channel>,
    request: tonic::Request<CreateApiKeyRequest>,
) -> anyhow::Result<CreateApiKeyResponse> {
    Ok(keys.create_api_key(request).await?.into_inner())
}

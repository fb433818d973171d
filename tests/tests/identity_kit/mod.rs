//! Helpers shared by the tenant tests (`mod identity_kit;`): users and sign-in, tenant
//! updates, API keys planted in identity's database, and usage reports.

#![allow(dead_code)]

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use palisade_db::{Db, Scope};
use palisade_proto::palisade::identity::v1::{
    ApiKey, CreateApiKeyRequest, CreateUserRequest, GetJwksRequest, ListUsersRequest, LoginRequest,
    ReportUsageRequest, Tenant, TenantCalls, TenantState, UpdateTenantRequest, User,
    api_key_service_client::ApiKeyServiceClient, auth_service_client::AuthServiceClient,
};
use palisade_testkit::Mesh;
use prost_types::FieldMask;
use sha2::{Digest, Sha256};

pub const PASSWORD: &str = "correct horse battery staple";

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

pub fn with_bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}").parse().expect("tokens are ascii");
    request.metadata_mut().insert("authorization", value);
    request
}

/// An API key of acme, scoped to `scope`, that the user signed in with `token` makes for itself.
pub async fn own_key(mesh: &Mesh, token: &str, name: &str, scope: &str) -> anyhow::Result<String> {
    let request = CreateApiKeyRequest {
        parent: "tenants/acme".into(),
        api_key: Some(ApiKey {
            display_name: name.to_owned(),
            scopes: vec![scope.to_owned()],
            ..ApiKey::default()
        }),
        ttl: Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        }),
    };
    let created = ApiKeyServiceClient::new(mesh.gateway())
        .create_api_key(with_bearer(request, token))
        .await?;
    Ok(created.into_inner().key)
}

/// The `kid` in a JWT's header.
pub fn kid(token: &str) -> String {
    let header = token.split('.').next().expect("a header");
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).expect("base64url")).expect("json");
    header["kid"].as_str().expect("a kid").to_owned()
}

/// The key ids identity publishes now (`GetJwks`, through the gateway).
pub async fn published_kids(mesh: &Mesh) -> anyhow::Result<Vec<String>> {
    let jwks = AuthServiceClient::new(mesh.gateway())
        .get_jwks(GetJwksRequest {})
        .await?
        .into_inner();
    Ok(jwks.keys.into_iter().map(|key| key.kid).collect())
}

pub fn login_request(tenant: &str, email: &str) -> LoginRequest {
    LoginRequest {
        tenant_id: tenant.to_owned(),
        email: email.to_owned(),
        password: PASSWORD.to_owned(),
    }
}

/// (access token, refresh token) of a fresh login.
pub async fn login(mesh: &Mesh, tenant: &str, email: &str) -> anyhow::Result<(String, String)> {
    let tokens = AuthServiceClient::new(mesh.gateway())
        .login(login_request(tenant, email))
        .await?
        .into_inner();
    Ok((tokens.access_token, tokens.refresh_token))
}

pub fn update(tenant: Tenant, paths: &[&str]) -> UpdateTenantRequest {
    UpdateTenantRequest {
        tenant: Some(tenant),
        update_mask: Some(FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        }),
    }
}

pub fn state_change(tenant: &str, state: TenantState) -> UpdateTenantRequest {
    let tenant = Tenant {
        name: format!("tenants/{tenant}"),
        state: state as i32,
        ..Tenant::default()
    };
    update(tenant, &["state"])
}

pub async fn plant_api_key(
    db: &Db,
    tenant: &str,
    expire_in: Duration,
    revoked: bool,
) -> anyhow::Result<String> {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_micros() as i64;
    let expire = if expire_in.is_zero() {
        now - 1
    } else {
        now + expire_in.as_micros() as i64
    };
    // Beneath the API, work states its tenant scope as the store does (row-level security).
    let mut tx = db.begin_in(Scope::Tenant(tenant)).await?;
    sqlx::query(
        "INSERT INTO api_keys (id, tenant_id, display_name, secret_hash, scopes, create_time, \
         expire_time, revoke_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&id)
    .bind(tenant)
    .bind(format!("key {id}"))
    .bind(Sha256::digest(secret.as_bytes()).to_vec())
    .bind("identity.users.list identity.tenants.get identity.usage.get")
    .bind(now)
    .bind(expire)
    .bind(revoked.then_some(now))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(format!("pal_{id}_{secret}"))
}

pub const A_DAY: Duration = Duration::from_secs(86_400);

pub fn list_users(tenant: &str) -> ListUsersRequest {
    ListUsersRequest {
        parent: format!("tenants/{tenant}"),
        ..Default::default()
    }
}

/// The `(metric, used, limit)` triples of a usage report.
pub fn calls(tenant_id: &str, api_calls: i64) -> TenantCalls {
    TenantCalls {
        tenant_id: tenant_id.to_owned(),
        api_calls,
        count_time: None,
    }
}

pub fn report(batch_id: &str, entries: Vec<TenantCalls>) -> ReportUsageRequest {
    ReportUsageRequest {
        batch_id: batch_id.to_owned(),
        calls: entries,
    }
}

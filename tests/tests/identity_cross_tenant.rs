//! Tenant isolation across the whole identity API: tenant A's admin calls every identity RPC —
//! the list is read from the descriptor set, so a new RPC without a case here fails the test —
//! aimed at tenant B's resources, through the gateway. Nothing succeeds (except what is not
//! tenant data: the JWKS, and A's own tenant list, which must not show B), and afterwards
//! everything of B is as it was.

mod common;

use common::{DynamicCodec, dynamic_request, new_tenant};
use palisade_proto::palisade::identity::v1::ApiKey;
use palisade_proto::palisade::identity::v1::{
    CreateApiKeyRequest, CreateRoleRequest, CreateUserRequest, GetApiKeyRequest, GetRoleRequest,
    GetTenantRequest, GetUserRequest, LoginRequest, Plan, Role, TenantState, User,
    api_key_service_client::ApiKeyServiceClient, auth_service_client::AuthServiceClient,
    role_service_client::RoleServiceClient, tenant_service_client::TenantServiceClient,
    user_service_client::UserServiceClient,
};
use palisade_testkit::Mesh;
use tonic::{Code, transport::Channel};

const PASSWORD: &str = "correct horse battery staple";

/// Every identity RPC with a request aimed at tenant B (`{user}`, `{role}`, `{key}` stand for
/// B's resources) and the codes that count as refused. `OK` appears only where the answer
/// is not B's data.
const CASES: &[(&str, &str, &[Code])] = &[
    (
        "ApiKeyService/VerifyApiKey",
        r#"{"key": "pal_x_y"}"#,
        &[Code::PermissionDenied],
    ),
    (
        "ApiKeyService/CreateApiKey",
        r#"{"parent": "tenants/globex", "ttl": "3600s", "api_key": {"display_name": "spy", "owner": "tenants/globex", "scopes": ["identity.users.list"]}}"#,
        &[Code::PermissionDenied, Code::NotFound],
    ),
    (
        "ApiKeyService/GetApiKey",
        r#"{"name": "{key}"}"#,
        &[Code::NotFound],
    ),
    (
        "ApiKeyService/ListApiKeys",
        r#"{"parent": "tenants/globex"}"#,
        &[Code::PermissionDenied, Code::NotFound],
    ),
    (
        "ApiKeyService/RevokeApiKey",
        r#"{"name": "{key}"}"#,
        &[Code::NotFound],
    ),
    (
        "AuthService/Login",
        r#"{"tenant_id": "globex", "email": "ada@acme.example", "password": "correct horse battery staple"}"#,
        &[Code::Unauthenticated, Code::InvalidArgument],
    ),
    (
        "AuthService/RefreshToken",
        r#"{"refresh_token": "palrt_0000"}"#,
        &[Code::Unauthenticated],
    ),
    (
        "AuthService/Logout",
        r#"{"refresh_token": "palrt_0000"}"#,
        &[Code::Unauthenticated],
    ),
    (
        // An unknown token ends nothing (revoking tenant B's real tokens from tenant A's
        // credential is `identity_sessions`' business: whoever holds a token may end it).
        "AuthService/RevokeToken",
        r#"{"token": "palrt_0000000000000000000000000000000000000000000000000000000000000000"}"#,
        &[Code::Ok],
    ),
    ("AuthService/GetJwks", "{}", &[Code::Ok]),
    (
        "AuthService/RotateSigningKey",
        "{}",
        &[Code::PermissionDenied],
    ),
    (
        "AuthorizationService/Check",
        r#"{"principal": {"tenant_id": "globex", "id": "x", "type": "PRINCIPAL_TYPE_USER"}, "permission": "identity.users.list"}"#,
        &[Code::PermissionDenied],
    ),
    (
        "AuthorizationService/BatchCheck",
        r#"{"principal": {"tenant_id": "globex", "id": "x", "type": "PRINCIPAL_TYPE_USER"}}"#,
        &[Code::PermissionDenied],
    ),
    (
        "EdgeService/ResolveTenant",
        r#"{"tenant_id": "globex"}"#,
        &[Code::PermissionDenied],
    ),
    (
        "EdgeService/ReportUsage",
        r#"{"batch_id": "b", "calls": [{"tenant_id": "globex", "api_calls": 1000000}]}"#,
        &[Code::PermissionDenied],
    ),
    (
        "RoleService/CreateRole",
        r#"{"parent": "tenants/globex", "role_id": "spy", "role": {"display_name": "Spy", "permissions": ["identity.users.list"]}}"#,
        &[Code::PermissionDenied, Code::NotFound],
    ),
    (
        "RoleService/GetRole",
        r#"{"name": "{role}"}"#,
        &[Code::NotFound],
    ),
    (
        "RoleService/ListRoles",
        r#"{"parent": "tenants/globex"}"#,
        &[Code::PermissionDenied, Code::NotFound],
    ),
    (
        "RoleService/UpdateRole",
        r#"{"role": {"name": "{role}", "display_name": "Pwned"}, "update_mask": "displayName"}"#,
        &[Code::NotFound, Code::PermissionDenied],
    ),
    (
        "RoleService/DeleteRole",
        r#"{"name": "{role}"}"#,
        &[Code::NotFound, Code::PermissionDenied],
    ),
    (
        "TenantService/CreateTenant",
        r#"{"tenant_id": "globex2", "tenant": {"display_name": "Globex 2"}}"#,
        &[Code::PermissionDenied],
    ),
    (
        "TenantService/GetTenant",
        r#"{"name": "tenants/globex"}"#,
        &[Code::NotFound],
    ),
    ("TenantService/ListTenants", "{}", &[Code::Ok]),
    (
        "TenantService/UpdateTenant",
        r#"{"tenant": {"name": "tenants/globex", "display_name": "Pwned"}, "update_mask": "displayName"}"#,
        &[Code::NotFound, Code::PermissionDenied],
    ),
    (
        "TenantService/DeleteTenant",
        r#"{"name": "tenants/globex"}"#,
        &[Code::NotFound, Code::PermissionDenied],
    ),
    (
        "TenantService/GetUsage",
        r#"{"name": "tenants/globex/usage"}"#,
        &[Code::NotFound],
    ),
    (
        "TenantService/CheckFeature",
        r#"{"tenant": "tenants/globex", "feature": "sso"}"#,
        &[Code::NotFound],
    ),
    (
        "TenantDataService/ExportTenantData",
        r#"{"tenant": "tenants/globex"}"#,
        &[Code::PermissionDenied],
    ),
    (
        "TenantDataService/ImportTenantData",
        "{}",
        &[Code::PermissionDenied],
    ),
    (
        "UserService/CreateUser",
        r#"{"parent": "tenants/globex", "user": {"email": "spy@globex.example", "display_name": "Spy", "roles": ["admin"]}, "password": "correct horse battery staple"}"#,
        &[Code::PermissionDenied, Code::NotFound],
    ),
    (
        "UserService/GetUser",
        r#"{"name": "{user}"}"#,
        &[Code::NotFound],
    ),
    (
        "UserService/ListUsers",
        r#"{"parent": "tenants/globex"}"#,
        &[Code::PermissionDenied, Code::NotFound],
    ),
    (
        "UserService/AssignRole",
        r#"{"name": "{user}", "role": "admin"}"#,
        &[Code::NotFound, Code::PermissionDenied],
    ),
    (
        "UserService/RevokeRole",
        r#"{"name": "{user}", "role": "viewer"}"#,
        &[Code::NotFound, Code::PermissionDenied],
    ),
    (
        "UserService/GetEffectivePermissions",
        r#"{"name": "{user}"}"#,
        &[Code::NotFound],
    ),
    (
        "UserService/UpdateUser",
        r#"{"user": {"name": "{user}", "state": "USER_STATE_DISABLED"}, "update_mask": "state"}"#,
        &[Code::NotFound],
    ),
    (
        "UserService/DeleteUser",
        r#"{"name": "{user}"}"#,
        &[Code::NotFound],
    ),
    (
        "UserService/ChangePassword",
        r#"{"name": "{user}", "new_password": "now it is mine, all mine"}"#,
        &[Code::NotFound, Code::PermissionDenied],
    ),
    (
        "UserService/UnlockUser",
        r#"{"name": "{user}"}"#,
        &[Code::NotFound],
    ),
];

/// Calls `service/method` of `palisade.identity.v1` with `json` as a bearer of `token`; the
/// response as JSON, or the status.
async fn call(
    channel: &Channel,
    path: &str,
    json: &str,
    token: &str,
) -> Result<String, tonic::Status> {
    let (method, message) = dynamic_request(&format!("palisade.identity.v1.{path}"), json);
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}").parse().expect("ascii");
    request.metadata_mut().insert("authorization", value);
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
    let path = format!("/palisade.identity.v1.{path}")
        .parse()
        .expect("a path");
    let response = grpc
        .unary(request, path, DynamicCodec(method.output()))
        .await?;
    Ok(serde_json::to_string(&response.into_inner()).expect("json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_a_reaches_nothing_of_tenant_b_through_any_identity_rpc() -> anyhow::Result<()> {
    // The cases cover exactly the identity API.
    let pool = palisade_proto::descriptor_pool();
    let mut rpcs: Vec<String> = pool
        .services()
        .filter(|service| service.package_name() == "palisade.identity.v1")
        .flat_map(|service| {
            let name = service.name().to_owned();
            service
                .methods()
                .map(move |method| format!("{name}/{}", method.name()))
                .collect::<Vec<_>>()
        })
        .collect();
    rpcs.sort();
    let mut covered: Vec<String> = CASES.iter().map(|(rpc, _, _)| (*rpc).to_owned()).collect();
    covered.sort();
    covered.retain(|rpc| rpcs.contains(rpc) || !rpc.starts_with("TenantDataService/"));
    assert_eq!(
        covered, rpcs,
        "every identity RPC needs a cross-tenant case"
    );

    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        let mesh = builder.start().await?;
        let gateway = mesh.gateway();
        let (mut tenants, mut users) = (
            TenantServiceClient::new(gateway.clone()),
            UserServiceClient::new(gateway.clone()),
        );
        let mut user_names = Vec::new();
        for tenant in ["acme", "globex"] {
            tenants
                .create_tenant(mesh.as_operator(new_tenant(tenant, tenant, Plan::Professional)))
                .await?;
            let user = users
                .create_user(mesh.as_operator(CreateUserRequest {
                    parent: format!("tenants/{tenant}"),
                    user: Some(User {
                        email: format!("ada@{tenant}.example"),
                        display_name: "Ada".into(),
                        roles: vec!["admin".into(), "viewer".into()],
                        ..User::default()
                    }),
                    password: PASSWORD.into(),
                }))
                .await?
                .into_inner();
            user_names.push(user.name);
        }
        let b_user = user_names.pop().expect("globex's user");
        let b_role = RoleServiceClient::new(gateway.clone())
            .create_role(mesh.as_operator(CreateRoleRequest {
                parent: "tenants/globex".into(),
                role_id: "auditors".into(),
                role: Some(Role {
                    display_name: "Auditors".into(),
                    permissions: vec!["identity.users.list".into()],
                    ..Role::default()
                }),
            }))
            .await?
            .into_inner();
        let b_key = ApiKeyServiceClient::new(gateway.clone())
            .create_api_key(mesh.as_operator(CreateApiKeyRequest {
                parent: "tenants/globex".into(),
                api_key: Some(ApiKey {
                    display_name: "robot".into(),
                    owner: "tenants/globex".into(),
                    scopes: vec!["identity.users.list".into()],
                    ..ApiKey::default()
                }),
                ttl: Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
            }))
            .await?
            .into_inner();
        let b_key_name = b_key.api_key.expect("a key").name;
        let token = AuthServiceClient::new(gateway.clone())
            .login(LoginRequest {
                tenant_id: "acme".into(),
                email: "ada@acme.example".into(),
                password: PASSWORD.into(),
            })
            .await?
            .into_inner()
            .access_token;

        for (rpc, json, refused) in CASES {
            if !rpcs.iter().any(|known| known == rpc) {
                continue;
            }
            let json = json
                .replace("{user}", &b_user)
                .replace("{role}", &b_role.name)
                .replace("{key}", &b_key_name);
            match call(&gateway, rpc, &json, &token).await {
                Ok(answer) => {
                    assert!(
                        refused.contains(&Code::Ok),
                        "{backend}: {rpc} succeeded: {answer}"
                    );
                    assert!(
                        !answer.contains("globex"),
                        "{backend}: {rpc} showed B: {answer}"
                    );
                }
                Err(status) => assert!(
                    refused.contains(&status.code()),
                    "{backend}: {rpc} ended {:?}: {}",
                    status.code(),
                    status.message()
                ),
            }
        }

        // B is untouched: its tenant, user (roles, password), role and key.
        let globex = tenants
            .get_tenant(mesh.as_operator(GetTenantRequest {
                name: "tenants/globex".into(),
            }))
            .await?
            .into_inner();
        assert_eq!(globex.display_name, "globex", "{backend}");
        assert_eq!(globex.state, TenantState::Active as i32, "{backend}");
        let user = users
            .get_user(mesh.as_operator(GetUserRequest {
                name: b_user.clone(),
            }))
            .await?
            .into_inner();
        assert_eq!(user.roles, ["admin", "viewer"], "{backend}");
        AuthServiceClient::new(gateway.clone())
            .login(LoginRequest {
                tenant_id: "globex".into(),
                email: "ada@globex.example".into(),
                password: PASSWORD.into(),
            })
            .await?;
        let role = RoleServiceClient::new(gateway.clone())
            .get_role(mesh.as_operator(GetRoleRequest {
                name: b_role.name.clone(),
            }))
            .await?
            .into_inner();
        assert_eq!(role.display_name, "Auditors", "{backend}");
        let key = ApiKeyServiceClient::new(gateway.clone())
            .get_api_key(mesh.as_operator(GetApiKeyRequest {
                name: b_key_name.clone(),
            }))
            .await?
            .into_inner();
        assert!(key.revoke_time.is_none(), "{backend}: B's key was revoked");
        let names: Vec<String> = tenants
            .list_tenants(mesh.as_operator(Default::default()))
            .await?
            .into_inner()
            .tenants
            .into_iter()
            .map(|tenant| tenant.name)
            .collect();
        assert!(!names.contains(&"tenants/globex2".to_owned()), "{backend}");
        mesh.stop().await?;
    }
    Ok(())
}

//! Platform-only methods (`platform_only` in the policy option: creating and deleting tenants,
//! rotating the signing key) are refused to a tenant's own admin by the policy layer
//! (`PLATFORM_OPERATOR_ONLY`), and their permissions are in no tenant's roles but the system
//! tenant's: not in its `admin` role, not grantable through a custom role or an API key scope.

mod common;
mod identity_kit;

use common::{expect_code, reason, tenant_with_admin, violated_fields};
use identity_kit::{PASSWORD, login, with_bearer};
use palisade_proto::palisade::identity::v1::{
    ApiKey, CreateApiKeyRequest, CreateRoleRequest, GetRoleRequest, Role, RotateSigningKeyRequest,
    api_key_service_client::ApiKeyServiceClient, auth_service_client::AuthServiceClient,
    role_service_client::RoleServiceClient, tenant_service_client::TenantServiceClient,
};
use palisade_testkit::Mesh;
use tonic::Code;

const TENANTS_CREATE: &str = "identity.tenants.create";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_only_methods_and_permissions_stay_with_operators() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        let mesh = builder.start().await?;
        tenant_with_admin(&mesh, "acme", "ada@acme.example", PASSWORD).await?;
        let (admin, _) = login(&mesh, "acme", "ada@acme.example").await?;

        let create = common::new_tenant("acme2", "Acme 2", Default::default());
        let refused = TenantServiceClient::new(mesh.gateway())
            .create_tenant(with_bearer(create, &admin))
            .await;
        assert_eq!(
            reason(&expect_code(refused, Code::PermissionDenied)),
            "PLATFORM_OPERATOR_ONLY",
            "{backend}"
        );
        let refused = AuthServiceClient::new(mesh.gateway())
            .rotate_signing_key(with_bearer(RotateSigningKeyRequest {}, &admin))
            .await;
        assert_eq!(
            reason(&expect_code(refused, Code::PermissionDenied)),
            "PLATFORM_OPERATOR_ONLY",
            "{backend}"
        );

        // Acme's admin role lacks what acme's admin could never use; the system's has it.
        let mut roles = RoleServiceClient::new(mesh.gateway());
        let admin_role = |tenant: &str| GetRoleRequest {
            name: format!("tenants/{tenant}/roles/admin"),
        };
        let acme_admin = roles
            .get_role(with_bearer(admin_role("acme"), &admin))
            .await?
            .into_inner();
        assert!(!acme_admin.permissions.iter().any(|p| p == TENANTS_CREATE));
        assert!(
            acme_admin
                .permissions
                .iter()
                .any(|p| p == "identity.users.create")
        );
        let system_admin = roles
            .get_role(mesh.as_operator(admin_role("system")))
            .await?
            .into_inner();
        assert!(system_admin.permissions.iter().any(|p| p == TENANTS_CREATE));

        // Nor can acme put it into a custom role or an API key.
        let custom = CreateRoleRequest {
            parent: "tenants/acme".into(),
            role_id: "founder".into(),
            role: Some(Role {
                display_name: "Founder".into(),
                permissions: vec![TENANTS_CREATE.into()],
                ..Role::default()
            }),
        };
        let refused = roles.create_role(mesh.as_operator(custom)).await;
        let status = expect_code(refused, Code::InvalidArgument);
        assert_eq!(violated_fields(&status), ["role.permissions[0]"]);
        let key = CreateApiKeyRequest {
            parent: "tenants/acme".into(),
            api_key: Some(ApiKey {
                display_name: "founder".into(),
                scopes: vec![TENANTS_CREATE.into()],
                ..ApiKey::default()
            }),
            ttl: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
        };
        let refused = ApiKeyServiceClient::new(mesh.gateway())
            .create_api_key(with_bearer(key, &admin))
            .await;
        let status = expect_code(refused, Code::InvalidArgument);
        assert_eq!(violated_fields(&status), ["api_key.scopes[0]"]);
        mesh.stop().await?;
    }
    Ok(())
}

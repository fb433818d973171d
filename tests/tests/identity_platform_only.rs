//! Platform-only methods (`platform_only` in the policy option: creating and deleting tenants,
//! rotating the signing key) are refused to a tenant's own admin by the policy layer
//! (`PLATFORM_OPERATOR_ONLY`), whatever its roles grant; a tenant admin still creates admins.

mod common;
mod identity_kit;

use common::{expect_code, reason, tenant_with_admin};
use identity_kit::{PASSWORD, login, new_user, with_bearer};
use palisade_proto::palisade::identity::v1::{
    RotateSigningKeyRequest, auth_service_client::AuthServiceClient,
    tenant_service_client::TenantServiceClient, user_service_client::UserServiceClient,
};
use palisade_testkit::Mesh;
use tonic::Code;

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

        // The tenant's admin still holds its admin role's every permission, so it makes
        // admins and managers of its own tenant.
        let mut users = UserServiceClient::new(mesh.gateway());
        for (email, role) in [("bo@acme.example", "admin"), ("cy@acme.example", "manager")] {
            users
                .create_user(with_bearer(new_user("acme", email, &[role]), &admin))
                .await?;
        }
        mesh.stop().await?;
    }
    Ok(())
}

//! Custom roles follow the tenant's plan: moved to a plan without them, a tenant keeps its
//! roles and their assignments, but they grant nothing and cannot be handed out; moved back,
//! they grant again.

mod common;
mod roles_kit;

use common::{expect_code, reason};
use palisade_proto::palisade::identity::v1::{
    AssignRoleRequest, GetEffectivePermissionsRequest, ListUsersRequest, Plan, Tenant,
    UpdateTenantRequest, role_service_client::RoleServiceClient,
    tenant_service_client::TenantServiceClient, user_service_client::UserServiceClient,
};
use palisade_testkit::Mesh;
use prost_types::FieldMask;
use roles_kit::{login, new_role, new_user, populate, with_bearer};
use tonic::Code;

fn move_to(plan: Plan) -> UpdateTenantRequest {
    UpdateTenantRequest {
        tenant: Some(Tenant {
            name: "tenants/acme".into(),
            plan: plan as i32,
            ..Tenant::default()
        }),
        update_mask: Some(FieldMask {
            paths: vec!["plan".into()],
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_roles_grant_only_while_the_plan_has_them() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let people = populate(
            &mesh,
            &[
                ("acme", "ada@example.com", "admin"),
                ("acme", "rita@example.com", ""),
                ("acme", "bob@example.com", ""),
            ],
        )
        .await?;
        let (rita, bob) = (&people[1], &people[2]);
        let admin = login(mesh.gateway(), "acme", "ada@example.com").await?;
        let mut users = UserServiceClient::new(mesh.gateway());
        let mut tenants = TenantServiceClient::new(mesh.gateway());
        RoleServiceClient::new(mesh.gateway())
            .create_role(with_bearer(
                new_role("acme", "user-reader", &["identity.users.list"]),
                &admin,
            ))
            .await?;
        let assign = |user: &str| AssignRoleRequest {
            name: user.to_owned(),
            role: "user-reader".into(),
        };
        users
            .assign_role(with_bearer(assign(&rita.name), &admin))
            .await?;
        let reader = login(mesh.gateway(), "acme", "rita@example.com").await?;
        let list = || ListUsersRequest {
            parent: "tenants/acme".into(),
            ..Default::default()
        };
        let effective = || GetEffectivePermissionsRequest {
            name: rita.name.clone(),
        };
        users.list_users(with_bearer(list(), &reader)).await?;

        // Standard has no custom roles: the role stays assigned and grants nothing.
        tenants
            .update_tenant(mesh.as_operator(move_to(Plan::Standard)))
            .await?;
        let denied = users.list_users(with_bearer(list(), &reader)).await;
        assert_eq!(
            reason(&expect_code(denied, Code::PermissionDenied)),
            "PERMISSION_DENIED"
        );
        let held = users
            .get_effective_permissions(with_bearer(effective(), &admin))
            .await?
            .into_inner();
        assert_eq!(held.roles, ["user-reader"]);
        assert!(
            !held.permissions.contains(&"identity.users.list".to_owned()),
            "{:?}",
            held.permissions
        );
        // Nor can it be handed out, to an existing user or a new one.
        let assigned = users
            .assign_role(with_bearer(assign(&bob.name), &admin))
            .await;
        assert_eq!(
            reason(&expect_code(assigned, Code::FailedPrecondition)),
            "FEATURE_NOT_ENABLED"
        );
        let created = users
            .create_user(with_bearer(
                new_user("acme", "carl@example.com", &["user-reader"]),
                &admin,
            ))
            .await;
        assert_eq!(
            reason(&expect_code(created, Code::FailedPrecondition)),
            "FEATURE_NOT_ENABLED"
        );

        // Back on a plan with custom roles, the kept assignment grants again.
        tenants
            .update_tenant(mesh.as_operator(move_to(Plan::Professional)))
            .await?;
        users.list_users(with_bearer(list(), &reader)).await?;
        let held = users
            .get_effective_permissions(with_bearer(effective(), &admin))
            .await?
            .into_inner();
        assert!(held.permissions.contains(&"identity.users.list".to_owned()));
        users
            .assign_role(with_bearer(assign(&bob.name), &admin))
            .await?;
        mesh.stop().await?;
    }
    Ok(())
}

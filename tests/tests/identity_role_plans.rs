//! Custom roles follow the tenant's plan: moved to a plan without them, a tenant keeps its
//! roles and their assignments, but they grant nothing and cannot be handed out; moved back,
//! they grant again. Meanwhile their holders are still judged by them when someone takes
//! power over them.

mod common;
mod roles_kit;

use common::{expect_code, reason};
use palisade_proto::palisade::identity::v1::{
    AssignRoleRequest, ChangePasswordRequest, GetEffectivePermissionsRequest, ListUsersRequest,
    Plan, Tenant, UpdateTenantRequest, role_service_client::RoleServiceClient,
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

/// Power over a user is judged on every permission its roles name, custom ones too while they
/// grant nothing: a manager must not set the password of a user whose custom role makes it
/// more than a manager once the plan has custom roles again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switched_off_custom_roles_still_count_for_power_over_their_holders() -> anyhow::Result<()>
{
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let people = populate(
            &mesh,
            &[
                ("acme", "ada@example.com", "admin"),
                ("acme", "mo@example.com", "manager"),
                ("acme", "sam@example.com", ""),
            ],
        )
        .await?;
        let sam = &people[2];
        let admin = login(mesh.gateway(), "acme", "ada@example.com").await?;
        // Reading the audit log is beyond a manager.
        RoleServiceClient::new(mesh.gateway())
            .create_role(with_bearer(
                new_role("acme", "audit-lead", &["compliance.audit.list"]),
                &admin,
            ))
            .await?;
        let mut users = UserServiceClient::new(mesh.gateway());
        users
            .assign_role(with_bearer(
                AssignRoleRequest {
                    name: sam.name.clone(),
                    role: "audit-lead".into(),
                },
                &admin,
            ))
            .await?;
        TenantServiceClient::new(mesh.gateway())
            .update_tenant(mesh.as_operator(move_to(Plan::Standard)))
            .await?;

        let manager = login(mesh.gateway(), "acme", "mo@example.com").await?;
        let reset = ChangePasswordRequest {
            name: sam.name.clone(),
            current_password: String::new(),
            new_password: "chosen by the manager".into(),
        };
        let refused = users.change_password(with_bearer(reset, &manager)).await;
        assert_eq!(
            reason(&expect_code(refused, Code::PermissionDenied)),
            "ROLE_ESCALATION"
        );
        login(mesh.gateway(), "acme", "sam@example.com").await?;
        mesh.stop().await?;
    }
    Ok(())
}

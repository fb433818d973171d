//! The walls around roles: nobody puts into a role, or grants, permissions it does not hold
//! itself (not even by granting a role widened while the grant was being judged, nor by taking
//! over a user whose role widened meanwhile), and another tenant's principals neither read nor
//! change a tenant's roles.

mod common;
mod roles_kit;

use common::{
    expect_code, expect_judged_again, reason, until_a_call_waits_for_a_lock, violated_fields,
};
use palisade_proto::palisade::{
    compliance::v1::{ListAuditEventsRequest, audit_service_client::AuditServiceClient},
    identity::v1::{
        AssignRoleRequest, ChangePasswordRequest, DeleteRoleRequest,
        GetEffectivePermissionsRequest, GetRoleRequest, GetUserRequest, ListRolesRequest, Role,
        UpdateRoleRequest, role_service_client::RoleServiceClient,
        user_service_client::UserServiceClient,
    },
};
use palisade_testkit::{Component, Mesh};
use prost_types::FieldMask;
use roles_kit::{login, new_role, new_user, populate, with_bearer};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_passes_on_permissions_it_does_not_hold() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let people = populate(
            &mesh,
            &[
                ("acme", "ada@example.com", "admin"),
                ("acme", "mona@example.com", "manager"),
                ("acme", "vic@example.com", "viewer"),
            ],
        )
        .await?;
        let vic = &people[2];
        let admin = login(mesh.gateway(), "acme", "ada@example.com").await?;
        let manager = login(mesh.gateway(), "acme", "mona@example.com").await?;
        let mut roles = RoleServiceClient::new(mesh.gateway());
        let mut users = UserServiceClient::new(mesh.gateway());

        // A manager makes roles from its own permissions, not from the audit log's.
        roles
            .create_role(with_bearer(
                new_role("acme", "user-reader", &["identity.users.list"]),
                &manager,
            ))
            .await?;
        let escalation = roles
            .create_role(with_bearer(
                new_role("acme", "log-reader", &["compliance.audit.list"]),
                &manager,
            ))
            .await;
        assert_eq!(
            reason(&expect_code(escalation, Code::PermissionDenied)),
            "ROLE_ESCALATION"
        );
        let widen = roles
            .update_role(with_bearer(
                UpdateRoleRequest {
                    role: Some(Role {
                        name: "tenants/acme/roles/user-reader".into(),
                        permissions: vec![
                            "identity.users.list".into(),
                            "compliance.audit.list".into(),
                        ],
                        ..Role::default()
                    }),
                    update_mask: None,
                },
                &manager,
            ))
            .await;
        assert_eq!(
            reason(&expect_code(widen, Code::PermissionDenied)),
            "ROLE_ESCALATION"
        );

        // The admin's role: the manager neither assigns nor changes it.
        roles
            .create_role(with_bearer(
                new_role("acme", "log-reader", &["compliance.audit.list"]),
                &admin,
            ))
            .await?;
        let assign = users
            .assign_role(with_bearer(
                AssignRoleRequest {
                    name: vic.name.clone(),
                    role: "log-reader".into(),
                },
                &manager,
            ))
            .await;
        assert_eq!(
            reason(&expect_code(assign, Code::PermissionDenied)),
            "ROLE_ESCALATION"
        );
        let create_with = users
            .create_user(with_bearer(
                new_user("acme", "eve@example.com", &["log-reader"]),
                &manager,
            ))
            .await;
        assert_eq!(
            reason(&expect_code(create_with, Code::PermissionDenied)),
            "ROLE_ESCALATION"
        );
        let narrow = roles
            .update_role(with_bearer(
                UpdateRoleRequest {
                    role: Some(Role {
                        name: "tenants/acme/roles/log-reader".into(),
                        permissions: vec!["identity.users.list".into()],
                        ..Role::default()
                    }),
                    update_mask: Some(FieldMask {
                        paths: vec!["permissions".into()],
                    }),
                },
                &manager,
            ))
            .await;
        assert_eq!(
            reason(&expect_code(narrow, Code::PermissionDenied)),
            "ROLE_ESCALATION"
        );

        // The admin may: the viewer now reads the audit log through its custom role.
        users
            .assign_role(with_bearer(
                AssignRoleRequest {
                    name: vic.name.clone(),
                    role: "log-reader".into(),
                },
                &admin,
            ))
            .await?;
        let viewer = login(mesh.gateway(), "acme", "vic@example.com").await?;
        AuditServiceClient::new(mesh.gateway())
            .list_audit_events(with_bearer(
                ListAuditEventsRequest {
                    parent: "tenants/acme".into(),
                    ..Default::default()
                },
                &viewer,
            ))
            .await?;
        mesh.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenant_neither_reads_nor_changes_roles() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let people = populate(
            &mesh,
            &[
                ("acme", "ada@acme.example", "admin"),
                ("acme", "rita@acme.example", ""),
                ("globex", "gus@globex.example", "admin"),
            ],
        )
        .await?;
        let acme_user = &people[1];
        let gus = &people[2];
        let mut roles = RoleServiceClient::new(mesh.gateway());
        let mut users = UserServiceClient::new(mesh.gateway());
        let role = roles
            .create_role(mesh.as_operator(new_role(
                "acme",
                "user-reader",
                &["identity.users.list"],
            )))
            .await?
            .into_inner();
        let token = login(mesh.gateway(), "globex", "gus@globex.example").await?;

        for name in [role.name.clone(), "tenants/acme/roles/admin".into()] {
            let get = roles
                .get_role(with_bearer(GetRoleRequest { name: name.clone() }, &token))
                .await;
            expect_code(get, Code::NotFound);
            let delete = roles
                .delete_role(with_bearer(
                    DeleteRoleRequest { name: name.clone() },
                    &token,
                ))
                .await;
            expect_code(delete, Code::NotFound);
        }
        let list = roles
            .list_roles(with_bearer(
                ListRolesRequest {
                    parent: "tenants/acme".into(),
                    ..Default::default()
                },
                &token,
            ))
            .await;
        assert_eq!(
            reason(&expect_code(list, Code::PermissionDenied)),
            "CROSS_TENANT"
        );
        let create = roles
            .create_role(with_bearer(new_role("acme", "backdoor", &[]), &token))
            .await;
        assert_eq!(
            reason(&expect_code(create, Code::PermissionDenied)),
            "CROSS_TENANT"
        );
        let update = roles
            .update_role(with_bearer(
                UpdateRoleRequest {
                    role: Some(Role {
                        name: role.name.clone(),
                        permissions: vec!["identity.users.create".into()],
                        ..Role::default()
                    }),
                    update_mask: None,
                },
                &token,
            ))
            .await;
        expect_code(update, Code::NotFound);
        let effective = users
            .get_effective_permissions(with_bearer(
                GetEffectivePermissionsRequest {
                    name: acme_user.name.clone(),
                },
                &token,
            ))
            .await;
        expect_code(effective, Code::NotFound);
        // Role ids name roles of the user's own tenant: acme's role is unknown in globex.
        let borrow = users
            .assign_role(with_bearer(
                AssignRoleRequest {
                    name: gus.name.clone(),
                    role: "user-reader".into(),
                },
                &token,
            ))
            .await;
        assert_eq!(
            violated_fields(&expect_code(borrow, Code::InvalidArgument)),
            ["role"]
        );
        let unchanged = roles
            .get_role(mesh.as_operator(GetRoleRequest {
                name: role.name.clone(),
            }))
            .await?
            .into_inner();
        assert_eq!(unchanged, role);
        mesh.stop().await?;
    }
    Ok(())
}

/// A manager granting a custom role while an admin widens it past the manager's rights: the
/// grant was judged on the role as it was, so it is aborted (`CONCURRENT_CHANGE`), to be judged
/// again on retry, rather than handing out the wider role. The test holds the widening open
/// (the role's row locked, as `UpdateRole` locks it) while the grant runs, then commits it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_judged_before_its_role_widens_is_aborted() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        let mesh = builder.start().await?;
        let people = populate(
            &mesh,
            &[
                ("acme", "mo@acme.example", "manager"),
                ("acme", "bob@acme.example", "viewer"),
            ],
        )
        .await?;
        let bob = &people[1];
        RoleServiceClient::new(mesh.gateway())
            .create_role(mesh.as_operator(new_role("acme", "reporter", &["identity.users.get"])))
            .await?;
        let manager = login(mesh.gateway(), "acme", "mo@acme.example").await?;

        let db = mesh.unrestricted_db(Component::Identity).await?;
        let mut widening = widen_reporter(&db).await?;
        let granting = tokio::spawn({
            let mut users = UserServiceClient::new(mesh.gateway());
            let request = with_bearer(
                AssignRoleRequest {
                    name: bob.name.clone(),
                    role: "reporter".into(),
                },
                &manager,
            );
            async move { users.assign_role(request).await }
        });
        // The grant judged the role narrow and now waits for its row.
        until_a_call_waits_for_a_lock(&db, &mut widening, backend).await?;
        widening.commit().await?;
        let refused = granting
            .await?
            .expect_err("a grant wider than the manager's rights");
        expect_judged_again(&refused, backend, None);
        let bob_now = UserServiceClient::new(mesh.gateway())
            .get_user(mesh.as_operator(GetUserRequest {
                name: bob.name.clone(),
            }))
            .await?
            .into_inner();
        assert_eq!(bob_now.roles, ["viewer"], "{backend}");
        db.close().await;
        mesh.stop().await?;
    }
    Ok(())
}

/// The same race on power over a user: a manager resets the password of Bob, who holds a
/// custom role, while an admin widens that role beyond the manager's rights. The reset judged
/// Bob on the role as it was, so it is aborted (`CONCURRENT_CHANGE`) rather than taking over
/// a user who now holds more than the manager. The test holds the widening open (the role's
/// row locked, as `UpdateRole` locks it) while the reset runs, then commits it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_reset_judged_before_the_users_role_widens_is_aborted() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        let mesh = builder.start().await?;
        let people = populate(
            &mesh,
            &[
                ("acme", "mo@acme.example", "manager"),
                ("acme", "bob@acme.example", "viewer"),
            ],
        )
        .await?;
        let bob = &people[1];
        RoleServiceClient::new(mesh.gateway())
            .create_role(mesh.as_operator(new_role("acme", "reporter", &["identity.users.get"])))
            .await?;
        UserServiceClient::new(mesh.gateway())
            .assign_role(mesh.as_operator(AssignRoleRequest {
                name: bob.name.clone(),
                role: "reporter".into(),
            }))
            .await?;
        let manager = login(mesh.gateway(), "acme", "mo@acme.example").await?;

        let db = mesh.unrestricted_db(Component::Identity).await?;
        let mut widening = widen_reporter(&db).await?;
        let resetting = tokio::spawn({
            let mut users = UserServiceClient::new(mesh.gateway());
            let request = with_bearer(
                ChangePasswordRequest {
                    name: bob.name.clone(),
                    current_password: String::new(),
                    new_password: "chosen by the manager".into(),
                },
                &manager,
            );
            async move { users.change_password(request).await }
        });
        // The reset judged Bob's role narrow and now waits for it.
        until_a_call_waits_for_a_lock(&db, &mut widening, backend).await?;
        widening.commit().await?;
        let refused = resetting
            .await?
            .expect_err("a reset of a user with more rights than the manager");
        expect_judged_again(&refused, backend, Some("ROLE_ESCALATION"));
        // Bob's password is as it was.
        login(mesh.gateway(), "acme", "bob@acme.example").await?;
        db.close().await;
        mesh.stop().await?;
    }
    Ok(())
}

/// A permission a custom role stored before it left the catalogue (its method removed or made
/// internal by an upgrade) grants nothing, so nobody need hold it: the tenant's admin still
/// renames the role and makes users with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_permission_does_not_lock_a_role_away_from_its_tenant() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        let mesh = builder.start().await?;
        populate(&mesh, &[("acme", "ada@acme.example", "admin")]).await?;
        RoleServiceClient::new(mesh.gateway())
            .create_role(mesh.as_operator(new_role("acme", "reporter", &["identity.users.get"])))
            .await?;
        let db = mesh.unrestricted_db(Component::Identity).await?;
        sqlx::query(
            "INSERT INTO role_permissions (tenant_id, role_id, permission) \
             VALUES ('acme', 'reporter', 'identity.retired.method')",
        )
        .execute(db.pool())
        .await?;
        db.close().await;
        let admin = login(mesh.gateway(), "acme", "ada@acme.example").await?;

        let renamed = RoleServiceClient::new(mesh.gateway())
            .update_role(with_bearer(
                UpdateRoleRequest {
                    role: Some(Role {
                        name: "tenants/acme/roles/reporter".into(),
                        display_name: "Reporters".into(),
                        ..Role::default()
                    }),
                    update_mask: Some(FieldMask {
                        paths: vec!["display_name".into()],
                    }),
                },
                &admin,
            ))
            .await?
            .into_inner();
        assert_eq!(renamed.display_name, "Reporters", "{backend}");
        let made = UserServiceClient::new(mesh.gateway())
            .create_user(with_bearer(
                new_user("acme", "rita@acme.example", &["reporter"]),
                &admin,
            ))
            .await?
            .into_inner();
        assert_eq!(made.roles, ["reporter"], "{backend}");
        mesh.stop().await?;
    }
    Ok(())
}

/// Acme's custom role `reporter` widened beyond a manager's rights (`identity.tenants.update`
/// added), in a transaction the test holds open with the role's row locked, as `UpdateRole`
/// locks it.
async fn widen_reporter(
    db: &palisade_db::Db,
) -> anyhow::Result<sqlx::Transaction<'static, sqlx::Any>> {
    let mut widening = db.begin().await?;
    sqlx::query(
        "UPDATE roles SET update_time = update_time + 1 WHERE tenant_id = 'acme' AND id = 'reporter'",
    )
    .execute(&mut *widening)
    .await?;
    sqlx::query(
        "INSERT INTO role_permissions (tenant_id, role_id, permission) \
         VALUES ('acme', 'reporter', 'identity.tenants.update')",
    )
    .execute(&mut *widening)
    .await?;
    Ok(widening)
}

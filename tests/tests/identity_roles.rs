//! Custom roles through the gateway: a tenant admin makes a role from catalogue permissions,
//! users holding it may do exactly that, changes apply at once, roles in use stay, and bad
//! input names its fields.

mod common;
mod roles_kit;

use std::time::Duration;

use common::{expect_code, reason, violated_fields};
use palisade_proto::palisade::{
    compliance::v1::{ListAuditEventsRequest, audit_service_client::AuditServiceClient},
    identity::v1::{
        AssignRoleRequest, CreateRoleRequest, DeleteRoleRequest, GetRoleRequest, ListRolesRequest,
        ListUsersRequest, RevokeRoleRequest, Role, UpdateRoleRequest,
        role_service_client::RoleServiceClient, user_service_client::UserServiceClient,
    },
};
use palisade_testkit::{Component, Mesh, eventually, http_request};
use prost_types::FieldMask;
use roles_kit::{login, new_role, new_user, populate, with_bearer};
use tonic::Code;

fn ids(roles: &[Role]) -> Vec<String> {
    roles
        .iter()
        .map(|role| role.name.rsplit('/').next().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_role_grants_exactly_its_permissions_from_creation_to_deletion()
-> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let people = populate(
            &mesh,
            &[
                ("acme", "ada@example.com", "admin"),
                ("acme", "rita@example.com", ""),
            ],
        )
        .await?;
        let rita = &people[1];
        let admin = login(mesh.gateway(), "acme", "ada@example.com").await?;
        let mut roles = RoleServiceClient::new(mesh.gateway());
        let mut users = UserServiceClient::new(mesh.gateway());

        let created = roles
            .create_role(with_bearer(
                new_role(
                    "acme",
                    "user-reader",
                    &[
                        "identity.users.list",
                        "identity.users.get",
                        "identity.users.list",
                    ],
                ),
                &admin,
            ))
            .await?
            .into_inner();
        assert_eq!(created.name, "tenants/acme/roles/user-reader");
        assert_eq!(
            created.permissions,
            ["identity.users.get", "identity.users.list"]
        );
        assert!(!created.built_in);
        assert!(created.create_time.is_some());
        let fetched = roles
            .get_role(with_bearer(
                GetRoleRequest {
                    name: created.name.clone(),
                },
                &admin,
            ))
            .await?
            .into_inner();
        assert_eq!(fetched, created);
        let again = roles
            .create_role(with_bearer(new_role("acme", "user-reader", &[]), &admin))
            .await;
        expect_code(again, Code::AlreadyExists);
        let built_in_name = roles
            .create_role(with_bearer(new_role("acme", "viewer", &[]), &admin))
            .await;
        expect_code(built_in_name, Code::AlreadyExists);

        // The built-in roles come first, read-only, then the custom ones; pages resume across.
        let list = |filter: &str, page_size: i32, page_token: &str| ListRolesRequest {
            parent: "tenants/acme".into(),
            page_size,
            page_token: page_token.into(),
            filter: filter.into(),
        };
        let first = roles
            .list_roles(with_bearer(list("", 4, ""), &admin))
            .await?
            .into_inner();
        assert_eq!(
            ids(&first.roles),
            ["admin", "manager", "analyst", "auditor"]
        );
        assert!(first.roles.iter().all(|role| role.built_in));
        let second = roles
            .list_roles(with_bearer(list("", 4, &first.next_page_token), &admin))
            .await?
            .into_inner();
        assert_eq!(ids(&second.roles), ["viewer", "user-reader"]);
        assert!(second.next_page_token.is_empty());
        let custom = roles
            .list_roles(with_bearer(list("built_in = false", 0, ""), &admin))
            .await?
            .into_inner();
        assert_eq!(custom.roles, std::slice::from_ref(&created));
        let creators = roles
            .list_roles(with_bearer(
                list(r#"permission = "identity.users.create""#, 0, ""),
                &admin,
            ))
            .await?
            .into_inner();
        assert_eq!(ids(&creators.roles), ["admin", "manager"]);
        let readers = roles
            .list_roles(with_bearer(
                list(
                    r#"permission = "identity.users.list" AND built_in = false"#,
                    0,
                    "",
                ),
                &admin,
            ))
            .await?
            .into_inner();
        assert_eq!(ids(&readers.roles), ["user-reader"]);
        // A permission no role could hold is a mistake, as an unknown role is to ListUsers.
        let unknown = roles
            .list_roles(with_bearer(list(r#"permission = "nope.x""#, 0, ""), &admin))
            .await;
        assert_eq!(
            violated_fields(&expect_code(unknown, Code::InvalidArgument)),
            ["filter"]
        );

        // Built-in roles are read-only.
        let viewer = || Role {
            name: "tenants/acme/roles/viewer".into(),
            display_name: "Everything".into(),
            ..Role::default()
        };
        let update_built_in = roles
            .update_role(with_bearer(
                UpdateRoleRequest {
                    role: Some(viewer()),
                    update_mask: None,
                },
                &admin,
            ))
            .await;
        assert_eq!(
            reason(&expect_code(update_built_in, Code::FailedPrecondition)),
            "BUILT_IN_ROLE"
        );
        let delete_built_in = roles
            .delete_role(with_bearer(
                DeleteRoleRequest {
                    name: viewer().name,
                },
                &admin,
            ))
            .await;
        assert_eq!(
            reason(&expect_code(delete_built_in, Code::FailedPrecondition)),
            "BUILT_IN_ROLE"
        );

        // A user holding only the custom role lists users, and nothing more.
        users
            .assign_role(with_bearer(
                AssignRoleRequest {
                    name: rita.name.clone(),
                    role: "user-reader".into(),
                },
                &admin,
            ))
            .await?;
        let reader = login(mesh.gateway(), "acme", "rita@example.com").await?;
        let listed = users
            .list_users(with_bearer(
                ListUsersRequest {
                    parent: "tenants/acme".into(),
                    filter: r#"role = "user-reader""#.into(),
                    ..Default::default()
                },
                &reader,
            ))
            .await?
            .into_inner();
        assert_eq!(listed.users.len(), 1);
        assert_eq!(listed.users[0].roles, ["user-reader"]);
        let create = users
            .create_user(with_bearer(
                new_user("acme", "eve@example.com", &[]),
                &reader,
            ))
            .await;
        assert_eq!(
            reason(&expect_code(create, Code::PermissionDenied)),
            "PERMISSION_DENIED"
        );

        // A change to the role applies to its holders at once (only the masked field changes).
        let renamed = roles
            .update_role(with_bearer(
                UpdateRoleRequest {
                    role: Some(Role {
                        name: created.name.clone(),
                        display_name: "Reads users".into(),
                        permissions: vec!["identity.users.create".into()],
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
        assert_eq!(renamed.display_name, "Reads users");
        assert_eq!(renamed.permissions, created.permissions);
        // The same over REST: PATCH with an `updateMask` query parameter.
        let response = http_request(
            mesh.addr(Component::Gateway),
            "PATCH",
            "/v1/tenants/acme/roles/user-reader?updateMask=description",
            &[
                ("authorization", &format!("Bearer {admin}")),
                ("content-type", "application/json"),
            ],
            br#"{"description": "For the help desk", "displayName": "ignored"}"#,
        )
        .await?;
        assert_eq!(response.status, 200, "{}", response.text());
        let body: serde_json::Value = serde_json::from_slice(&response.body)?;
        assert_eq!(body["description"], "For the help desk");
        assert_eq!(body["displayName"], "Reads users");
        // The mask in proto names, as grpc-gateway clients send it, or in JSON names.
        for mask in ["display_name", "displayName"] {
            let response = http_request(
                mesh.addr(Component::Gateway),
                "PATCH",
                &format!("/v1/tenants/acme/roles/user-reader?updateMask={mask}"),
                &[
                    ("authorization", &format!("Bearer {admin}")),
                    ("content-type", "application/json"),
                ],
                br#"{"displayName": "Reads users"}"#,
            )
            .await?;
            assert_eq!(response.status, 200, "{mask}: {}", response.text());
        }
        roles
            .update_role(with_bearer(
                UpdateRoleRequest {
                    role: Some(Role {
                        name: created.name.clone(),
                        permissions: vec!["identity.users.get".into()],
                        ..Role::default()
                    }),
                    update_mask: Some(FieldMask {
                        paths: vec!["permissions".into()],
                    }),
                },
                &admin,
            ))
            .await?;
        let no_longer = users
            .list_users(with_bearer(
                ListUsersRequest {
                    parent: "tenants/acme".into(),
                    ..Default::default()
                },
                &reader,
            ))
            .await;
        expect_code(no_longer, Code::PermissionDenied);

        // A role in use stays; once nobody holds it, it goes.
        let delete = || DeleteRoleRequest {
            name: created.name.clone(),
        };
        let in_use = roles.delete_role(with_bearer(delete(), &admin)).await;
        assert_eq!(
            reason(&expect_code(in_use, Code::FailedPrecondition)),
            "ROLE_IN_USE"
        );
        users
            .revoke_role(with_bearer(
                RevokeRoleRequest {
                    name: rita.name.clone(),
                    role: "user-reader".into(),
                },
                &admin,
            ))
            .await?;
        roles.delete_role(with_bearer(delete(), &admin)).await?;
        let gone = roles
            .get_role(with_bearer(
                GetRoleRequest {
                    name: created.name.clone(),
                },
                &admin,
            ))
            .await;
        expect_code(gone, Code::NotFound);
        let assign_gone = users
            .assign_role(with_bearer(
                AssignRoleRequest {
                    name: rita.name.clone(),
                    role: "user-reader".into(),
                },
                &admin,
            ))
            .await;
        assert_eq!(
            violated_fields(&expect_code(assign_gone, Code::InvalidArgument)),
            ["role"]
        );

        // Each change is in the tenant's audit log, by the admin.
        let audit = AuditServiceClient::new(mesh.gateway());
        for action in [
            "identity.roles.create",
            "identity.roles.update",
            "identity.roles.delete",
        ] {
            let event = eventually(Duration::from_secs(10), || {
                let mut audit = audit.clone();
                let request = mesh.as_operator(ListAuditEventsRequest {
                    parent: "tenants/acme".into(),
                    filter: format!(r#"action = "{action}""#),
                    ..Default::default()
                });
                async move {
                    let events = audit.list_audit_events(request).await?.into_inner();
                    Ok(events.audit_events.into_iter().next())
                }
            })
            .await?;
            assert_eq!(event.resource, created.name, "{action}");
        }
        mesh.stop().await?;
    }
    Ok(())
}

/// Two admins change one role from the same read: with the etag it read, the second is told
/// the role changed (AIP-154) instead of putting back a permission the first took away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_update_with_a_stale_etag_is_aborted() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        populate(&mesh, &[("acme", "ada@example.com", "admin")]).await?;
        let mut roles = RoleServiceClient::new(mesh.gateway());
        let scopes = ["identity.users.list", "identity.users.get"];
        let read = roles
            .create_role(mesh.as_operator(new_role("acme", "reader", &scopes)))
            .await?
            .into_inner();
        let set_permissions = |permissions: &[&str], etag: &str| UpdateRoleRequest {
            role: Some(Role {
                name: read.name.clone(),
                permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
                etag: etag.to_owned(),
                ..Role::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["permissions".into()],
            }),
        };
        let narrowed = roles
            .update_role(mesh.as_operator(set_permissions(&scopes[..1], &read.etag)))
            .await?
            .into_inner();
        assert_ne!(narrowed.etag, read.etag);
        let stale = roles
            .update_role(mesh.as_operator(set_permissions(&scopes, &read.etag)))
            .await;
        assert_eq!(reason(&expect_code(stale, Code::Aborted)), "ETAG_MISMATCH");
        let now = roles
            .get_role(mesh.as_operator(GetRoleRequest {
                name: read.name.clone(),
            }))
            .await?
            .into_inner();
        assert_eq!(now.permissions, ["identity.users.list"]);
        assert_eq!(now.etag, narrowed.etag);
        roles
            .update_role(mesh.as_operator(set_permissions(&scopes, &now.etag)))
            .await?;
        mesh.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_role_input_names_the_fields() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let people = populate(
            &mesh,
            &[
                ("acme", "ada@example.com", "admin"),
                ("acme", "rita@example.com", ""),
            ],
        )
        .await?;
        let rita = &people[1];
        let mut roles = RoleServiceClient::new(mesh.gateway());
        let cases: Vec<(CreateRoleRequest, Vec<&str>)> = vec![
            (
                new_role(
                    "acme",
                    "Not_An_Id",
                    &["identity.users.list", "identity.users.*"],
                ),
                vec!["role_id", "role.permissions[1]"],
            ),
            (
                new_role("acme", "checker", &["identity.authorization.check"]),
                vec!["role.permissions[0]"],
            ),
            (new_role("acme", "ab", &[]), vec!["role_id"]),
            (
                CreateRoleRequest {
                    role: Some(Role::default()),
                    ..new_role("acme", "nameless", &[])
                },
                vec!["role.display_name"],
            ),
            (
                CreateRoleRequest {
                    role: None,
                    ..new_role("Not A Tenant", "no-role", &[])
                },
                vec!["parent", "role"],
            ),
        ];
        for (request, fields) in cases {
            let result = roles.create_role(mesh.as_operator(request.clone())).await;
            let status = expect_code(result, Code::InvalidArgument);
            assert_eq!(violated_fields(&status), fields, "{request:?}");
        }
        for name in [
            "tenants/acme/roles/X",
            "tenants/acme/users/admin",
            "roles/admin",
        ] {
            let result = roles
                .get_role(mesh.as_operator(GetRoleRequest { name: name.into() }))
                .await;
            assert_eq!(
                violated_fields(&expect_code(result, Code::InvalidArgument)),
                ["name"]
            );
        }
        roles
            .create_role(mesh.as_operator(new_role("acme", "user-reader", &[])))
            .await?;
        let bad_mask = roles
            .update_role(mesh.as_operator(UpdateRoleRequest {
                role: Some(Role {
                    name: "tenants/acme/roles/user-reader".into(),
                    ..Role::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["colour".into(), "display_name".into()],
                }),
            }))
            .await;
        assert_eq!(
            violated_fields(&expect_code(bad_mask, Code::InvalidArgument)),
            ["update_mask"]
        );
        let empty_name = roles
            .update_role(mesh.as_operator(UpdateRoleRequest {
                role: Some(Role {
                    name: "tenants/acme/roles/user-reader".into(),
                    permissions: vec!["nope".into()],
                    ..Role::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["*".into()],
                }),
            }))
            .await;
        assert_eq!(
            violated_fields(&expect_code(empty_name, Code::InvalidArgument)),
            ["role.display_name", "role.permissions[0]"]
        );
        let bad_filter = roles
            .list_roles(mesh.as_operator(ListRolesRequest {
                parent: "tenants/acme".into(),
                filter: "built_in = maybe".into(),
                ..Default::default()
            }))
            .await;
        assert_eq!(
            violated_fields(&expect_code(bad_filter, Code::InvalidArgument)),
            ["filter"]
        );
        let mut users = UserServiceClient::new(mesh.gateway());
        let unknown = users
            .assign_role(mesh.as_operator(AssignRoleRequest {
                name: rita.name.clone(),
                role: "ghost-role".into(),
            }))
            .await;
        assert_eq!(
            violated_fields(&expect_code(unknown, Code::InvalidArgument)),
            ["role"]
        );
        let unknown_filter = users
            .list_users(mesh.as_operator(ListUsersRequest {
                parent: "tenants/acme".into(),
                filter: r#"role = "ghost-role""#.into(),
                ..Default::default()
            }))
            .await;
        assert_eq!(
            violated_fields(&expect_code(unknown_filter, Code::InvalidArgument)),
            ["filter"]
        );
        // Too many roles to look up (more than either database takes as query parameters) is
        // bad input, told before any lookup.
        let hoarder: Vec<String> = (0..70_000).map(|n| format!("r{n:05}")).collect();
        let hoarder: Vec<&str> = hoarder.iter().map(String::as_str).collect();
        let too_many = users
            .create_user(mesh.as_operator(new_user("acme", "hoarder@example.com", &hoarder)))
            .await;
        assert_eq!(
            violated_fields(&expect_code(too_many, Code::InvalidArgument)),
            ["user.roles"]
        );
        mesh.stop().await?;
    }
    Ok(())
}

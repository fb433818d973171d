//! What a user may do: effective permissions (the union of its roles', through gRPC and REST)
//! and `BatchCheck`, which answers a mesh component pair by pair exactly as `Check` would.

mod common;
mod roles_kit;

use common::{expect_code, reason, violated_fields};
use palisade_proto::palisade::{
    common::v1::{Principal, PrincipalType},
    identity::v1::{
        AssignRoleRequest, BatchCheckItem, BatchCheckRequest, CheckRequest,
        GetEffectivePermissionsRequest, GetRoleRequest,
        authorization_service_client::AuthorizationServiceClient,
        role_service_client::RoleServiceClient, user_service_client::UserServiceClient,
    },
};
use palisade_testkit::{Component, Mesh, http_request};
use roles_kit::{login, new_role, populate, with_bearer};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn effective_permissions_are_the_union_of_the_roles() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let people = populate(
            &mesh,
            &[
                ("acme", "ada@example.com", "admin"),
                ("acme", "vic@example.com", "viewer"),
            ],
        )
        .await?;
        let vic = &people[1];
        let mut roles = RoleServiceClient::new(mesh.gateway());
        let mut users = UserServiceClient::new(mesh.gateway());
        for (role, permissions) in [
            (
                "user-maker",
                &["identity.users.create", "identity.users.list"][..],
            ),
            ("role-maker", &["identity.roles.create"][..]),
        ] {
            roles
                .create_role(mesh.as_operator(new_role("acme", role, permissions)))
                .await?;
            users
                .assign_role(mesh.as_operator(AssignRoleRequest {
                    name: vic.name.clone(),
                    role: role.into(),
                }))
                .await?;
        }
        let viewer = roles
            .get_role(mesh.as_operator(GetRoleRequest {
                name: "tenants/acme/roles/viewer".into(),
            }))
            .await?
            .into_inner();
        assert!(viewer.built_in);

        let token = login(mesh.gateway(), "acme", "vic@example.com").await?;
        let effective = users
            .get_effective_permissions(with_bearer(
                GetEffectivePermissionsRequest {
                    name: vic.name.clone(),
                },
                &token,
            ))
            .await?
            .into_inner();
        assert_eq!(effective.user, vic.name);
        assert_eq!(effective.roles, ["role-maker", "user-maker", "viewer"]);
        let mut expected = viewer.permissions.clone();
        expected.extend(
            [
                "identity.roles.create",
                "identity.users.changePassword",
                "identity.users.create",
            ]
            .map(str::to_owned),
        );
        expected.sort();
        expected.dedup();
        assert_eq!(effective.permissions, expected);

        // The same through REST, as a browser would ask.
        let response = http_request(
            mesh.addr(Component::Gateway),
            "GET",
            &format!("/v1/{}:effectivePermissions", vic.name),
            &[("authorization", &format!("Bearer {token}"))],
            b"",
        )
        .await?;
        assert_eq!(response.status, 200, "{}", response.text());
        let body: serde_json::Value = serde_json::from_slice(&response.body)?;
        assert_eq!(body["permissions"], serde_json::json!(expected));
        mesh.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_check_answers_each_pair_as_check_does() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let people = populate(
            &mesh,
            &[
                ("acme", "rita@example.com", ""),
                ("acme", "ada@example.com", "admin"),
            ],
        )
        .await?;
        let (rita, ada) = (&people[0], &people[1]);
        RoleServiceClient::new(mesh.gateway())
            .create_role(mesh.as_operator(new_role(
                "acme",
                "user-reader",
                &["identity.users.list"],
            )))
            .await?;
        UserServiceClient::new(mesh.gateway())
            .assign_role(mesh.as_operator(AssignRoleRequest {
                name: rita.name.clone(),
                role: "user-reader".into(),
            }))
            .await?;
        let principal = |id: &str| Principal {
            tenant_id: "acme".into(),
            id: id.into(),
            r#type: PrincipalType::User as i32,
            session_id: String::new(),
        };
        let rita_id = rita.name.rsplit('/').next().unwrap_or_default();
        let items: Vec<BatchCheckItem> = [
            ("identity.users.list", "tenants/acme"),
            ("identity.users.create", "tenants/acme"),
            ("identity.users.list", "tenants/globex"),
            ("compliance.audit.list", ""),
            ("identity.users.list", ""),
            ("identity.users.changePassword", ""),
        ]
        .into_iter()
        .map(|(permission, resource)| BatchCheckItem {
            permission: permission.into(),
            resource: resource.into(),
        })
        .collect();

        // Internal: a mesh component asks over mTLS; the gateway does not route it.
        let mut authz =
            AuthorizationServiceClient::new(mesh.direct(Component::Identity, "compliance").await?);
        let answers = authz
            .batch_check(BatchCheckRequest {
                principal: Some(principal(rita_id)),
                items: items.clone(),
            })
            .await?
            .into_inner()
            .results;
        let allowed: Vec<bool> = answers.iter().map(|answer| answer.allowed).collect();
        assert_eq!(allowed, [true, false, false, false, true, true]);
        for (item, answer) in items.iter().zip(&answers) {
            let single = authz
                .check(CheckRequest {
                    principal: Some(principal(rita_id)),
                    permission: item.permission.clone(),
                    resource: item.resource.clone(),
                })
                .await?
                .into_inner();
            assert_eq!(&single, answer, "{item:?}");
        }
        // A tenant's admin role names every permission, but those of platform-only methods
        // work only in the system tenant: Check answers as the method would.
        let ada_id = ada.name.rsplit('/').next().unwrap_or_default();
        let answers = authz
            .batch_check(BatchCheckRequest {
                principal: Some(principal(ada_id)),
                items: ["identity.users.create", "identity.tenants.create"]
                    .map(|permission| BatchCheckItem {
                        permission: permission.into(),
                        resource: String::new(),
                    })
                    .to_vec(),
            })
            .await?
            .into_inner()
            .results;
        let refusals: Vec<_> = (answers.iter())
            .map(|answer| (answer.allowed, answer.refusal_reason.as_str()))
            .collect();
        assert_eq!(refusals, [(true, ""), (false, "PLATFORM_OPERATOR_ONLY")]);

        let stranger = authz
            .batch_check(BatchCheckRequest {
                principal: Some(principal("nobody")),
                items: items.clone(),
            })
            .await?
            .into_inner()
            .results;
        assert!(
            stranger.iter().all(|answer| !answer.allowed),
            "{stranger:?}"
        );

        // A resource spelled unlike a resource name is refused, not answered as if it named
        // no tenant (another tenant's resource in disguise would be allowed).
        for disguised in [
            "Tenants/globex",
            "/tenants/globex",
            "tenants/acme/../globex",
        ] {
            let asked = authz
                .check(CheckRequest {
                    principal: Some(principal(rita_id)),
                    permission: "identity.users.list".into(),
                    resource: disguised.into(),
                })
                .await;
            assert_eq!(
                violated_fields(&expect_code(asked, Code::InvalidArgument)),
                ["resource"],
                "{disguised}"
            );
        }
        let mut disguised = items.clone();
        disguised[1].resource = "//identity.palisade.dev/tenants/globex".into();
        let asked = authz
            .batch_check(BatchCheckRequest {
                principal: Some(principal(rita_id)),
                items: disguised,
            })
            .await;
        assert_eq!(
            violated_fields(&expect_code(asked, Code::InvalidArgument)),
            ["items[1].resource"]
        );

        let too_many = authz
            .batch_check(BatchCheckRequest {
                principal: Some(principal(rita_id)),
                items: vec![items[0].clone(); 101],
            })
            .await;
        assert_eq!(
            violated_fields(&expect_code(too_many, Code::InvalidArgument)),
            ["items"]
        );
        let none = authz
            .batch_check(BatchCheckRequest {
                principal: None,
                items: Vec::new(),
            })
            .await;
        assert_eq!(
            violated_fields(&expect_code(none, Code::InvalidArgument)),
            [
                "principal.tenant_id",
                "principal.id",
                "principal.type",
                "items"
            ]
        );
        let blank = authz
            .batch_check(BatchCheckRequest {
                principal: Some(principal(rita_id)),
                items: vec![items[0].clone(), BatchCheckItem::default()],
            })
            .await;
        assert_eq!(
            violated_fields(&expect_code(blank, Code::InvalidArgument)),
            ["items[1].permission"]
        );
        let routed = AuthorizationServiceClient::new(mesh.gateway())
            .batch_check(mesh.as_operator(BatchCheckRequest {
                principal: Some(principal(rita_id)),
                items,
            }))
            .await;
        assert_eq!(
            reason(&expect_code(routed, Code::PermissionDenied)),
            "INTERNAL_METHOD"
        );
        mesh.stop().await?;
    }
    Ok(())
}

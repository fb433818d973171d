//! Users and roles through the gateway: an operator makes a tenant and its first admin, the
//! admin signs in and makes an analyst, roles decide what each may do, tenants stay apart, and
//! bad input names its fields.

mod common;

use std::time::Duration;

use common::{expect_code, new_tenant, reason, violated_fields};
use palisade_proto::palisade::{
    compliance::v1::{ListAuditEventsRequest, audit_service_client::AuditServiceClient},
    identity::v1::{
        AssignRoleRequest, CreateUserRequest, GetUserRequest, ListApiKeysRequest, ListUsersRequest,
        LoginRequest, Plan, RevokeRoleRequest, User, UserState,
        api_key_service_client::ApiKeyServiceClient, auth_service_client::AuthServiceClient,
        tenant_service_client::TenantServiceClient, user_service_client::UserServiceClient,
    },
};
use palisade_testkit::{Mesh, eventually};
use tonic::{Code, transport::Channel};

const PASSWORD: &str = "correct horse battery staple";

fn new_user(tenant: &str, email: &str, roles: &[&str]) -> CreateUserRequest {
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

fn with_bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}").parse().expect("tokens are ascii");
    request.metadata_mut().insert("authorization", value);
    request
}

async fn login(gateway: Channel, tenant: &str, email: &str) -> anyhow::Result<String> {
    let tokens = AuthServiceClient::new(gateway)
        .login(LoginRequest {
            tenant_id: tenant.to_owned(),
            email: email.to_owned(),
            password: PASSWORD.to_owned(),
        })
        .await?
        .into_inner();
    Ok(tokens.access_token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_signs_in_and_roles_decide_what_users_may_do() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let mut tenants = TenantServiceClient::new(mesh.gateway());
        let mut users = UserServiceClient::new(mesh.gateway());
        tenants
            .create_tenant(mesh.as_operator(new_tenant("acme", "Acme", Plan::Professional)))
            .await?;

        let admin = users
            .create_user(mesh.as_operator(new_user("acme", "Ada@Example.com", &["admin"])))
            .await?
            .into_inner();
        assert!(admin.name.starts_with("tenants/acme/users/"));
        assert_eq!(admin.email, "ada@example.com");
        assert_eq!(admin.state(), UserState::Active);
        assert_eq!(admin.roles, ["admin"]);

        let admin_token = login(mesh.gateway(), "acme", "ada@example.com").await?;
        let analyst = users
            .create_user(with_bearer(
                new_user("acme", "alan@example.com", &["analyst"]),
                &admin_token,
            ))
            .await?
            .into_inner();
        let fetched = users
            .get_user(with_bearer(
                GetUserRequest {
                    name: analyst.name.clone(),
                },
                &admin_token,
            ))
            .await?
            .into_inner();
        assert_eq!(fetched, analyst);

        // The analyst reads but does not manage users.
        let analyst_token = login(mesh.gateway(), "acme", "alan@example.com").await?;
        let denied = users
            .create_user(with_bearer(
                new_user("acme", "eve@example.com", &["admin"]),
                &analyst_token,
            ))
            .await;
        let denied = expect_code(denied, Code::PermissionDenied);
        assert_eq!(reason(&denied), "PERMISSION_DENIED");
        let listed = users
            .list_users(with_bearer(
                ListUsersRequest {
                    parent: "tenants/acme".into(),
                    ..Default::default()
                },
                &analyst_token,
            ))
            .await?
            .into_inner();
        assert_eq!(listed.users, [admin.clone(), analyst.clone()]);

        // Filters and pages.
        let list = |filter: &str, page_size: i32, page_token: &str| ListUsersRequest {
            parent: "tenants/acme".into(),
            filter: filter.into(),
            page_size,
            page_token: page_token.into(),
        };
        let by_role = users
            .list_users(with_bearer(
                list(r#"role = "analyst""#, 0, ""),
                &admin_token,
            ))
            .await?
            .into_inner();
        assert_eq!(by_role.users, std::slice::from_ref(&analyst));
        let by_email = users
            .list_users(mesh.as_operator(list(
                r#"email = "ADA@example.com" AND status = "USER_STATE_ACTIVE""#,
                0,
                "",
            )))
            .await?
            .into_inner();
        assert_eq!(by_email.users, std::slice::from_ref(&admin));
        // `state`, the resource's field, filters as `status` does.
        let by_state = users
            .list_users(mesh.as_operator(list(r#"state = "USER_STATE_ACTIVE""#, 0, "")))
            .await?
            .into_inner();
        assert!(by_state.users.contains(&admin) && by_state.users.contains(&analyst));
        let disabled = users
            .list_users(mesh.as_operator(list(r#"state = "USER_STATE_DISABLED""#, 0, "")))
            .await?
            .into_inner();
        assert!(disabled.users.is_empty(), "{:?}", disabled.users);
        let not_admin = users
            .list_users(mesh.as_operator(list(r#"role != "admin""#, 0, "")))
            .await?
            .into_inner();
        assert_eq!(not_admin.users, std::slice::from_ref(&analyst));
        let first = users
            .list_users(mesh.as_operator(list("", 1, "")))
            .await?
            .into_inner();
        assert_eq!(first.users, std::slice::from_ref(&admin));
        let second = users
            .list_users(mesh.as_operator(list("", 1, &first.next_page_token)))
            .await?
            .into_inner();
        assert_eq!(second.users, std::slice::from_ref(&analyst));
        assert!(second.next_page_token.is_empty());
        // A token belongs to its list: brought to another, it is refused, not read there.
        let elsewhere = ApiKeyServiceClient::new(mesh.gateway())
            .list_api_keys(mesh.as_operator(ListApiKeysRequest {
                parent: "tenants/acme".into(),
                page_token: first.next_page_token.clone(),
                ..Default::default()
            }))
            .await;
        let status = expect_code(elsewhere, Code::InvalidArgument);
        assert_eq!(violated_fields(&status), ["page_token"]);

        // Other components ask identity (`Check`) about users too: the admin reads the audit
        // log that compliance keeps, the analyst may not.
        let mut audit = AuditServiceClient::new(mesh.gateway());
        let acme_log = || ListAuditEventsRequest {
            parent: "tenants/acme".into(),
            ..Default::default()
        };
        audit
            .list_audit_events(with_bearer(acme_log(), &admin_token))
            .await?;
        let denied = audit
            .list_audit_events(with_bearer(acme_log(), &analyst_token))
            .await;
        expect_code(denied, Code::PermissionDenied);

        // Creating a user is audited in the tenant's log, by the admin, without the password.
        let event = eventually(Duration::from_secs(10), || {
            let mut audit = audit.clone();
            let request = mesh.as_operator(ListAuditEventsRequest {
                parent: "tenants/acme".into(),
                filter: r#"action = "identity.users.create""#.into(),
                ..Default::default()
            });
            let resource = analyst.name.clone();
            async move {
                let events = audit.list_audit_events(request).await?.into_inner();
                Ok(events
                    .audit_events
                    .into_iter()
                    .find(|event| event.resource == resource))
            }
        })
        .await?;
        assert_eq!(event.action, "identity.users.create");
        let actor = event.actor.expect("the admin acted");
        assert_eq!(format!("tenants/acme/users/{}", actor.id), admin.name);
        assert!(!format!("{:?}", event.attributes).contains(PASSWORD));
        mesh.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_admin_cannot_reach_another_tenants_users() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let mut tenants = TenantServiceClient::new(mesh.gateway());
        let mut users = UserServiceClient::new(mesh.gateway());
        for tenant in ["acme", "globex"] {
            tenants
                .create_tenant(mesh.as_operator(new_tenant(tenant, tenant, Plan::Professional)))
                .await?;
        }
        users
            .create_user(mesh.as_operator(new_user("acme", "ada@acme.example", &["admin"])))
            .await?;
        let globex_user = users
            .create_user(mesh.as_operator(new_user("globex", "gus@globex.example", &["admin"])))
            .await?
            .into_inner();
        let token = login(mesh.gateway(), "acme", "ada@acme.example").await?;

        let get = users
            .get_user(with_bearer(
                GetUserRequest {
                    name: globex_user.name.clone(),
                },
                &token,
            ))
            .await;
        expect_code(get, Code::NotFound);
        let list = users
            .list_users(with_bearer(
                ListUsersRequest {
                    parent: "tenants/globex".into(),
                    ..Default::default()
                },
                &token,
            ))
            .await;
        assert_eq!(
            reason(&expect_code(list, Code::PermissionDenied)),
            "CROSS_TENANT"
        );
        let create = users
            .create_user(with_bearer(
                new_user("globex", "mallory@acme.example", &["admin"]),
                &token,
            ))
            .await;
        assert_eq!(
            reason(&expect_code(create, Code::PermissionDenied)),
            "CROSS_TENANT"
        );
        // A user's credentials name its tenant: signing in to another tenant finds nobody.
        let elsewhere = AuthServiceClient::new(mesh.gateway())
            .login(LoginRequest {
                tenant_id: "globex".into(),
                email: "ada@acme.example".into(),
                password: PASSWORD.into(),
            })
            .await;
        expect_code(elsewhere, Code::Unauthenticated);
        mesh.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_user_input_names_the_fields() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        TenantServiceClient::new(mesh.gateway())
            .create_tenant(mesh.as_operator(new_tenant("acme", "Acme", Plan::Professional)))
            .await?;
        let mut users = UserServiceClient::new(mesh.gateway());
        let named = |display_name: &str| {
            let mut request = new_user("acme", "a@example.com", &[]);
            if let Some(user) = request.user.as_mut() {
                user.display_name = display_name.to_owned();
            }
            request
        };
        let cases: Vec<(CreateUserRequest, Vec<&str>)> = vec![
            (new_user("acme", "not-an-email", &[]), vec!["user.email"]),
            (new_user("acme", "a@b", &[]), vec!["user.email"]),
            (
                CreateUserRequest {
                    password: "too short".into(),
                    ..new_user("acme", "a@example.com", &[])
                },
                vec!["password"],
            ),
            (
                CreateUserRequest {
                    password: "x".repeat(129),
                    ..new_user("acme", "a@example.com", &[])
                },
                vec!["password"],
            ),
            // Long enough, but among the first an attacker tries.
            (
                CreateUserRequest {
                    password: "P@ssw0rd2024!".into(),
                    ..new_user("acme", "a@example.com", &[])
                },
                vec!["password"],
            ),
            (
                CreateUserRequest {
                    password: "grace hopper at acme".into(),
                    ..new_user("acme", "grace.hopper@example.com", &[])
                },
                vec!["password"],
            ),
            // A walk over the keyboard, rows run together.
            (
                CreateUserRequest {
                    password: "qwertyuiopasdfgh".into(),
                    ..new_user("acme", "a@example.com", &[])
                },
                vec!["password"],
            ),
            // Names blank to the eye, or that reorder the text around them.
            (named("\u{200b}\u{feff}"), vec!["user.display_name"]),
            (named("\u{202e}gnp.exe"), vec!["user.display_name"]),
            (named("a\u{7}b"), vec!["user.display_name"]),
            (
                new_user("acme", "a@example.com", &["viewer", "root"]),
                vec!["user.roles[1]"],
            ),
            (
                new_user("Not A Tenant!", "a@example.com", &[]),
                vec!["parent"],
            ),
            (
                CreateUserRequest {
                    user: None,
                    ..new_user("acme", "a@example.com", &[])
                },
                vec!["user"],
            ),
        ];
        for (request, fields) in cases {
            let result = users.create_user(mesh.as_operator(request.clone())).await;
            let status = expect_code(result, Code::InvalidArgument);
            assert_eq!(violated_fields(&status), fields, "{request:?}");
        }
        // An operator listing a tenant that does not exist is told so, not given no one.
        let missing = users
            .list_users(mesh.as_operator(ListUsersRequest {
                parent: "tenants/nobody".into(),
                ..Default::default()
            }))
            .await;
        expect_code(missing, Code::NotFound);
        let missing = ApiKeyServiceClient::new(mesh.gateway())
            .list_api_keys(mesh.as_operator(ListApiKeysRequest {
                parent: "tenants/nobody".into(),
                ..Default::default()
            }))
            .await;
        expect_code(missing, Code::NotFound);
        for name in ["tenants/acme/users/nobody", "users/x", "tenants/acme"] {
            let result = users
                .get_user(mesh.as_operator(GetUserRequest { name: name.into() }))
                .await;
            let status = expect_code(result, Code::InvalidArgument);
            assert_eq!(violated_fields(&status), ["name"]);
        }
        let unknown_role = users
            .list_users(mesh.as_operator(ListUsersRequest {
                parent: "tenants/acme".into(),
                filter: r#"role = "root""#.into(),
                ..Default::default()
            }))
            .await;
        assert_eq!(
            violated_fields(&expect_code(unknown_role, Code::InvalidArgument)),
            ["filter"]
        );
        users
            .create_user(mesh.as_operator(new_user("acme", "a@example.com", &[])))
            .await?;
        let again = users
            .create_user(mesh.as_operator(new_user("acme", "A@EXAMPLE.COM", &[])))
            .await;
        expect_code(again, Code::AlreadyExists);
        let nowhere = users
            .create_user(mesh.as_operator(new_user("nowhere", "a@example.com", &[])))
            .await;
        expect_code(nowhere, Code::NotFound);
        mesh.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_change_at_once_and_never_beyond_the_callers_rights() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        TenantServiceClient::new(mesh.gateway())
            .create_tenant(mesh.as_operator(new_tenant("acme", "Acme", Plan::Professional)))
            .await?;
        let mut users = UserServiceClient::new(mesh.gateway());
        for (email, role) in [
            ("ada@example.com", "admin"),
            ("mona@example.com", "manager"),
        ] {
            users
                .create_user(mesh.as_operator(new_user("acme", email, &[role])))
                .await?;
        }
        let admin = login(mesh.gateway(), "acme", "ada@example.com").await?;
        let manager = login(mesh.gateway(), "acme", "mona@example.com").await?;

        // A manager makes users, but not ones with more rights than its own.
        let escalation = users
            .create_user(with_bearer(
                new_user("acme", "eve@example.com", &["admin"]),
                &manager,
            ))
            .await;
        assert_eq!(
            reason(&expect_code(escalation, Code::PermissionDenied)),
            "ROLE_ESCALATION"
        );
        let vic = users
            .create_user(with_bearer(
                new_user("acme", "vic@example.com", &["viewer"]),
                &manager,
            ))
            .await?
            .into_inner();
        let assign = |role: &str| AssignRoleRequest {
            name: vic.name.clone(),
            role: role.to_owned(),
        };
        let revoke = |role: &str| RevokeRoleRequest {
            name: vic.name.clone(),
            role: role.to_owned(),
        };
        let promoted = users
            .assign_role(with_bearer(assign("analyst"), &manager))
            .await?
            .into_inner();
        assert_eq!(promoted.roles, ["analyst", "viewer"]);
        let escalation = users
            .assign_role(with_bearer(assign("admin"), &manager))
            .await;
        assert_eq!(
            reason(&expect_code(escalation, Code::PermissionDenied)),
            "ROLE_ESCALATION"
        );

        // Permission checks read the current roles: a token issued before a change follows it.
        let vic_token = login(mesh.gateway(), "acme", "vic@example.com").await?;
        let before = users
            .create_user(with_bearer(
                new_user("acme", "walt@example.com", &[]),
                &vic_token,
            ))
            .await;
        expect_code(before, Code::PermissionDenied);
        users
            .assign_role(with_bearer(assign("manager"), &admin))
            .await?;
        users
            .create_user(with_bearer(
                new_user("acme", "walt@example.com", &["viewer"]),
                &vic_token,
            ))
            .await?;
        let demoted = users
            .revoke_role(with_bearer(revoke("manager"), &admin))
            .await?
            .into_inner();
        assert_eq!(demoted.roles, ["analyst", "viewer"]);
        let after = users
            .create_user(with_bearer(
                new_user("acme", "xena@example.com", &[]),
                &vic_token,
            ))
            .await;
        expect_code(after, Code::PermissionDenied);

        // Assigning twice changes nothing; unknown roles and foreign users are refused.
        let again = users
            .assign_role(with_bearer(assign("analyst"), &admin))
            .await?
            .into_inner();
        assert_eq!(again.roles, ["analyst", "viewer"]);
        let unknown = users.assign_role(with_bearer(assign("root"), &admin)).await;
        assert_eq!(
            violated_fields(&expect_code(unknown, Code::InvalidArgument)),
            ["role"]
        );
        let foreign = users
            .assign_role(with_bearer(
                AssignRoleRequest {
                    name: vic.name.replace("tenants/acme/", "tenants/globex/"),
                    role: "viewer".into(),
                },
                &admin,
            ))
            .await;
        expect_code(foreign, Code::NotFound);

        let audit = AuditServiceClient::new(mesh.gateway());
        let revoked = eventually(Duration::from_secs(10), || {
            let mut audit = audit.clone();
            let request = mesh.as_operator(ListAuditEventsRequest {
                parent: "tenants/acme".into(),
                filter: r#"action = "identity.roles.revoke""#.into(),
                ..Default::default()
            });
            async move {
                let events = audit.list_audit_events(request).await?.into_inner();
                Ok(events.audit_events.into_iter().next())
            }
        })
        .await?;
        assert_eq!(revoked.resource, vic.name);
        assert_eq!(
            revoked.attributes.get("role").map(String::as_str),
            Some("manager")
        );
        mesh.stop().await?;
    }
    Ok(())
}

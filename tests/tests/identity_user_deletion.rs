//! `UserService.DeleteUser`: an admin deletes a user through the gateway (gRPC and REST); the
//! user's access token, refresh token, sign-in and API keys stop at once, its email is free
//! again, the deletion is audited and makes room under the `users` limit; nobody deletes itself
//! or a user with more rights.

mod common;
mod identity_kit;

use std::collections::HashMap;

use common::{audit_event, expect_code, new_tenant, reason, violated_fields};
use identity_kit::{list_users, login, login_request, new_user, own_key, update, with_bearer};
use palisade_proto::palisade::identity::v1::{
    ApiKey, CreateApiKeyRequest, DeleteUserRequest, GetUserRequest, Plan, RefreshTokenRequest,
    Tenant, User, api_key_service_client::ApiKeyServiceClient,
    auth_service_client::AuthServiceClient, tenant_service_client::TenantServiceClient,
    user_service_client::UserServiceClient,
};
use palisade_testkit::{Component, Mesh, http_request, with_api_key};
use tonic::Code;

fn delete(user: &User) -> DeleteUserRequest {
    DeleteUserRequest {
        name: user.name.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_user_is_gone_with_its_sessions_and_keys() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        let mesh = builder.start().await?;
        let mut tenants = TenantServiceClient::new(mesh.gateway());
        tenants
            .create_tenant(mesh.as_operator(new_tenant("acme", "Acme", Plan::Professional)))
            .await?;
        let mut users = UserServiceClient::new(mesh.gateway());
        let mut created = HashMap::new();
        for (email, role) in [
            ("ada@acme.example", "admin"),
            ("bob@acme.example", "manager"),
            ("cyd@acme.example", "manager"),
            ("vic@acme.example", "viewer"),
        ] {
            let user = users
                .create_user(mesh.as_operator(new_user("acme", email, &[role])))
                .await?
                .into_inner();
            created.insert(email, user);
        }
        let (ada, bob, cyd, vic) = (
            &created["ada@acme.example"],
            &created["bob@acme.example"],
            &created["cyd@acme.example"],
            &created["vic@acme.example"],
        );
        let (admin, _) = login(&mesh, "acme", &ada.email).await?;
        let (bob_token, bob_refresh) = login(&mesh, "acme", &bob.email).await?;
        let bob_key = own_key(&mesh, &bob_token, "bob's", "identity.users.list").await?;
        users
            .list_users(with_api_key(list_users("acme"), &bob_key))
            .await?;

        users.delete_user(with_bearer(delete(bob), &admin)).await?;

        let gone = users
            .get_user(with_bearer(
                GetUserRequest {
                    name: bob.name.clone(),
                },
                &admin,
            ))
            .await;
        expect_code(gone, Code::NotFound);
        let listed = users
            .list_users(with_bearer(list_users("acme"), &admin))
            .await?
            .into_inner();
        assert!(
            listed.users.iter().all(|user| user.name != bob.name),
            "{backend}: a deleted user is listed"
        );
        // Everything Bob held stops at once, the gateway's key cache notwithstanding; his
        // session is over, so his client is told to sign in again.
        let refused = users
            .list_users(with_bearer(list_users("acme"), &bob_token))
            .await;
        assert_eq!(
            reason(&expect_code(refused, Code::Unauthenticated)),
            "SESSION_REVOKED"
        );
        // His key went with him: a dead credential, as the gateway will say once it asks.
        let refused = users
            .list_users(with_api_key(list_users("acme"), &bob_key))
            .await;
        assert_eq!(
            reason(&expect_code(refused, Code::Unauthenticated)),
            "INVALID_API_KEY"
        );
        let mut auth = AuthServiceClient::new(mesh.gateway());
        let refused = auth
            .refresh_token(RefreshTokenRequest {
                refresh_token: bob_refresh,
            })
            .await;
        expect_code(refused, Code::Unauthenticated);
        let refused = auth.login(login_request("acme", &bob.email)).await;
        expect_code(refused, Code::Unauthenticated);

        let event = audit_event(&mesh, "identity.users.delete", |event| {
            event.resource == bob.name
        })
        .await?;
        assert_eq!(event.attributes["roles"], "manager", "{backend}");
        assert_eq!(event.attributes["revoked_sessions"], "1", "{backend}");
        assert_eq!(event.attributes["deleted_api_keys"], "1", "{backend}");

        // Deleting again finds nothing; the email is free, and the new Bob is someone else:
        // the old Bob's token does not work for him.
        let again = users.delete_user(with_bearer(delete(bob), &admin)).await;
        expect_code(again, Code::NotFound);
        let new_bob = users
            .create_user(with_bearer(
                new_user("acme", "bob@acme.example", &["viewer"]),
                &admin,
            ))
            .await?
            .into_inner();
        assert_ne!(new_bob.name, bob.name, "{backend}");
        let refused = users
            .list_users(with_bearer(list_users("acme"), &bob_token))
            .await;
        expect_code(refused, Code::Unauthenticated);

        // Nobody deletes itself, signed in or through its own key; a manager does not delete
        // an admin; a viewer deletes nobody; bad names are named.
        let own = users.delete_user(with_bearer(delete(ada), &admin)).await;
        assert_eq!(
            reason(&expect_code(own, Code::FailedPrecondition)),
            "OWN_ACCOUNT"
        );
        let ada_key = own_key(&mesh, &admin, "ada's", "identity.users.delete").await?;
        let through_own_key = users.delete_user(with_api_key(delete(ada), &ada_key)).await;
        assert_eq!(
            reason(&expect_code(through_own_key, Code::FailedPrecondition)),
            "OWN_ACCOUNT"
        );
        let (manager, _) = login(&mesh, "acme", &cyd.email).await?;
        let escalation = users.delete_user(with_bearer(delete(ada), &manager)).await;
        assert_eq!(
            reason(&expect_code(escalation, Code::PermissionDenied)),
            "ROLE_ESCALATION"
        );
        let (viewer, _) = login(&mesh, "acme", &vic.email).await?;
        let unpermitted = users.delete_user(with_bearer(delete(cyd), &viewer)).await;
        expect_code(unpermitted, Code::PermissionDenied);
        let bad = users
            .delete_user(with_bearer(
                DeleteUserRequest {
                    name: "tenants/acme/users/bob".into(),
                },
                &admin,
            ))
            .await;
        assert_eq!(
            violated_fields(&expect_code(bad, Code::InvalidArgument)),
            ["name"],
            "{backend}"
        );
        // Ada and Cyd are untouched by all of that.
        for user in [ada, cyd] {
            users
                .get_user(with_bearer(
                    GetUserRequest {
                        name: user.name.clone(),
                    },
                    &admin,
                ))
                .await?;
        }

        // Platform operators act on any tenant (the operator's key deletes Cyd), held to the
        // usual rule: a system manager does not remove a system admin.
        users.delete_user(mesh.as_operator(delete(cyd))).await?;
        let mut system_users = HashMap::new();
        for (email, role) in [("root@ops.example", "admin"), ("mo@ops.example", "manager")] {
            let user = users
                .create_user(mesh.as_operator(new_user("system", email, &[role])))
                .await?
                .into_inner();
            system_users.insert(role, user);
        }
        let (system_manager, _) = login(&mesh, "system", "mo@ops.example").await?;
        let escalation = users
            .delete_user(with_bearer(delete(&system_users["admin"]), &system_manager))
            .await;
        assert_eq!(
            reason(&expect_code(escalation, Code::PermissionDenied)),
            "ROLE_ESCALATION",
            "{backend}"
        );
        // Nor does it mint itself a system key of every permission to get round that; the
        // operator's own `*` key may.
        let all_permissions = |display_name: &str| CreateApiKeyRequest {
            parent: "tenants/system".into(),
            api_key: Some(ApiKey {
                display_name: display_name.to_owned(),
                // A key of the tenant itself, not of its creator.
                owner: "tenants/system".into(),
                scopes: vec!["*".into()],
                ..ApiKey::default()
            }),
            ttl: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
        };
        let mut keys = ApiKeyServiceClient::new(mesh.gateway());
        let minted = keys
            .create_api_key(with_bearer(all_permissions("mo's"), &system_manager))
            .await;
        assert_eq!(
            reason(&expect_code(minted, Code::PermissionDenied)),
            "SCOPE_ESCALATION",
            "{backend}"
        );
        keys.create_api_key(mesh.as_operator(all_permissions("ops")))
            .await?;
        // Nor in another tenant: there too it passes on only what it holds itself, so it makes
        // neither an acme key that reads the audit log nor an acme admin (compliance's rights).
        let elsewhere = CreateApiKeyRequest {
            parent: "tenants/acme".into(),
            api_key: Some(ApiKey {
                display_name: "mo's".into(),
                owner: "tenants/acme".into(),
                scopes: vec!["compliance.audit.list".into()],
                ..ApiKey::default()
            }),
            ..all_permissions("mo's")
        };
        let minted = keys
            .create_api_key(with_bearer(elsewhere, &system_manager))
            .await;
        assert_eq!(
            reason(&expect_code(minted, Code::PermissionDenied)),
            "SCOPE_ESCALATION",
            "{backend}"
        );
        let made = users
            .create_user(with_bearer(
                new_user("acme", "eve@acme.example", &["admin"]),
                &system_manager,
            ))
            .await;
        assert_eq!(
            reason(&expect_code(made, Code::PermissionDenied)),
            "ROLE_ESCALATION",
            "{backend}"
        );

        // At the `users` limit, a deletion (over REST) makes room.
        tenants
            .update_tenant(mesh.as_operator(update(
                Tenant {
                    name: "tenants/acme".into(),
                    limit_overrides: [("users".to_owned(), 3)].into(),
                    ..Tenant::default()
                },
                &["limit_overrides"],
            )))
            .await?;
        let full = users
            .create_user(with_bearer(
                new_user("acme", "dee@acme.example", &["viewer"]),
                &admin,
            ))
            .await;
        assert_eq!(
            reason(&expect_code(full, Code::ResourceExhausted)),
            "LIMIT_EXCEEDED"
        );
        let auth_header = format!("Bearer {admin}");
        let response = http_request(
            mesh.addr(Component::Gateway),
            "DELETE",
            &format!("/v1/{}", vic.name),
            &[("authorization", &auth_header)],
            b"",
        )
        .await?;
        assert_eq!(response.status, 200, "{backend}");
        assert_eq!(response.body, b"{}", "{backend}");
        users
            .create_user(with_bearer(
                new_user("acme", "dee@acme.example", &["viewer"]),
                &admin,
            ))
            .await?;
        mesh.stop().await?;
    }
    Ok(())
}

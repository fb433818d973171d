//! API keys through the gateway: a tenant admin mints a read-only key and the key can read but
//! not write, its secret is shown once, revoking it ends it within the gateway's cache period,
//! a demoted owner's key shrinks with its owner, and a key stops at its expiry. Bad input is
//! `identity_api_key_input`.

mod common;
mod keys_kit;

use std::time::Duration;

use common::{expect_code, reason};
use palisade_proto::palisade::{
    compliance::v1::{ListAuditEventsRequest, audit_service_client::AuditServiceClient},
    identity::v1::{
        ApiKeyState, AssignRoleRequest, CreateApiKeyRequest, GetApiKeyRequest, GetRoleRequest,
        ListApiKeysRequest, RevokeApiKeyRequest, RevokeRoleRequest, UpdateUserRequest, User,
        UserState, api_key_service_client::ApiKeyServiceClient,
        role_service_client::RoleServiceClient, user_service_client::UserServiceClient,
    },
};
use palisade_testkit::{Component, Mesh, eventually, http_request, with_api_key};
use prost_types::FieldMask;
use tonic::Code;

use keys_kit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_key_reads_is_shown_once_and_stops_when_revoked() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder
            .with_api_key_cache_ttl(Duration::from_millis(300))
            .start()
            .await?;
        let (admin, admin_name) =
            signed_in_user(&mesh, "acme", "ada@example.com", &["admin"]).await?;
        let mut keys = ApiKeyServiceClient::new(mesh.gateway());
        let mut users = UserServiceClient::new(mesh.gateway());

        let created = create(
            &mut keys,
            with_bearer(key_request("acme", "ci", READ_USERS, 30), &admin),
        )
        .await?;
        let key = created.api_key.clone().expect("the key");
        let secret = created.key.clone();
        assert!(secret.starts_with("pal_"), "{secret}");
        assert!(key.name.starts_with("tenants/acme/apiKeys/"));
        assert!(secret.contains(key.name.rsplit('/').next().unwrap_or("?")));
        assert_eq!(key.owner, admin_name);
        assert_eq!(key.state(), ApiKeyState::Active);
        assert_eq!(key.scopes, READ_USERS);
        assert!(key.last_use_time.is_none() && key.revoke_time.is_none());
        let lifetime = key.expire_time.unwrap().seconds - key.create_time.unwrap().seconds;
        assert!((30 * DAY - 1..=30 * DAY).contains(&lifetime), "{lifetime}");

        // The secret is shown once: reading the key again never returns it.
        let get = GetApiKeyRequest {
            name: key.name.clone(),
        };
        let fetched = keys
            .get_api_key(with_bearer(get.clone(), &admin))
            .await?
            .into_inner();
        assert_eq!(fetched, key);
        let listed = keys
            .list_api_keys(with_bearer(
                ListApiKeysRequest {
                    parent: "tenants/acme".into(),
                    ..Default::default()
                },
                &admin,
            ))
            .await?
            .into_inner();
        assert_eq!(listed.api_keys, std::slice::from_ref(&key));
        let secret_part = secret.rsplit('_').next().unwrap_or_default();
        let rest = http_request(
            mesh.addr(Component::Gateway),
            "GET",
            "/v1/tenants/acme/apiKeys",
            &[("authorization", &format!("Bearer {admin}"))],
            b"",
        )
        .await?;
        assert_eq!(rest.status, 200, "{}", rest.text());
        assert!(rest.text().contains(&key.name), "{}", rest.text());
        for shown in [format!("{fetched:?}"), format!("{listed:?}"), rest.text()] {
            assert!(!shown.contains(secret_part));
        }

        // Read-only: it lists users but may not create one.
        users
            .list_users(with_api_key(list_users("acme"), &secret))
            .await?;
        let denied = users
            .create_user(with_api_key(
                new_user("acme", "eve@example.com", &[]),
                &secret,
            ))
            .await;
        assert_eq!(
            reason(&expect_code(denied, Code::PermissionDenied)),
            "PERMISSION_DENIED"
        );
        let used = keys
            .get_api_key(with_bearer(get.clone(), &admin))
            .await?
            .into_inner();
        assert!(used.last_use_time.is_some(), "{used:?}");

        // Revoked, through REST; a second revoke changes nothing.
        let revoked = http_request(
            mesh.addr(Component::Gateway),
            "POST",
            &format!("/v1/{}:revoke", key.name),
            &[
                ("authorization", &format!("Bearer {admin}")),
                ("content-type", "application/json"),
            ],
            b"{}",
        )
        .await?;
        assert_eq!(revoked.status, 200, "{}", revoked.text());
        assert!(revoked.text().contains("API_KEY_STATE_REVOKED"));
        let revoke = RevokeApiKeyRequest {
            name: key.name.clone(),
            ..Default::default()
        };
        let again = keys
            .revoke_api_key(with_bearer(revoke.clone(), &admin))
            .await?
            .into_inner();
        assert_eq!(again.state(), ApiKeyState::Revoked);
        assert!(again.revoke_time.is_some());
        let third = keys
            .revoke_api_key(with_bearer(revoke, &admin))
            .await?
            .into_inner();
        assert_eq!(third, again);
        // The gateway may still hold the key as verified, but identity refuses it, and says
        // the credential is dead (as the gateway will), not that a permission is missing.
        let refused = eventually(Duration::from_secs(10), || {
            let mut users = users.clone();
            let request = with_api_key(list_users("acme"), &secret);
            async move { Ok(users.list_users(request).await.err()) }
        })
        .await?;
        assert_eq!(
            reason(&expect_code(Err::<(), _>(refused), Code::Unauthenticated)),
            "INVALID_API_KEY"
        );
        let by_state = |state: &str| ListApiKeysRequest {
            parent: "tenants/acme".into(),
            filter: format!("state = {state:?}"),
            ..Default::default()
        };
        let active = keys
            .list_api_keys(with_bearer(by_state("API_KEY_STATE_ACTIVE"), &admin))
            .await?
            .into_inner();
        assert!(active.api_keys.is_empty());
        let gone = keys
            .list_api_keys(with_bearer(by_state("API_KEY_STATE_REVOKED"), &admin))
            .await?
            .into_inner();
        assert_eq!(gone.api_keys.len(), 1);

        // Creating and revoking are audited, by the admin, never with the secret.
        let audit = AuditServiceClient::new(mesh.gateway());
        for action in ["identity.apikeys.create", "identity.apikeys.revoke"] {
            let events = eventually(Duration::from_secs(10), || {
                let mut audit = audit.clone();
                let request = mesh.as_operator(ListAuditEventsRequest {
                    parent: "tenants/acme".into(),
                    filter: format!("action = {action:?}"),
                    ..Default::default()
                });
                async move {
                    let events = audit.list_audit_events(request).await?.into_inner();
                    Ok((!events.audit_events.is_empty()).then_some(events.audit_events))
                }
            })
            .await?;
            assert_eq!(events.len(), 1, "{action}: {events:?}");
            assert_eq!(events[0].resource, key.name);
            let actor = events[0].actor.clone().expect("the admin acted");
            assert_eq!(format!("tenants/acme/users/{}", actor.id), admin_name);
            assert!(!format!("{events:?}").contains(secret_part));
            if action == "identity.apikeys.create" {
                // Times in RFC 3339, as the API shows them.
                let expiry = key.expire_time.expect("a key expires");
                assert_eq!(events[0].attributes["expire_time"], expiry.to_string());
            }
        }
        mesh.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_owners_key_loses_its_write_scope() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let (admin, _) = signed_in_user(&mesh, "acme", "ada@example.com", &["admin"]).await?;
        let (bob, bob_name) = signed_in_user(&mesh, "acme", "bob@example.com", &["admin"]).await?;
        let mut keys = ApiKeyServiceClient::new(mesh.gateway());
        let mut users = UserServiceClient::new(mesh.gateway());
        let scopes = ["identity.users.create", "identity.users.list"];
        let created = create(
            &mut keys,
            with_bearer(key_request("acme", "bob-ci", &scopes, 7), &bob),
        )
        .await?;
        users
            .create_user(with_api_key(
                new_user("acme", "cy@example.com", &[]),
                &created.key,
            ))
            .await?;

        users
            .assign_role(with_bearer(
                AssignRoleRequest {
                    name: bob_name.clone(),
                    role: "viewer".into(),
                },
                &admin,
            ))
            .await?;
        users
            .revoke_role(with_bearer(
                RevokeRoleRequest {
                    name: bob_name.clone(),
                    role: "admin".into(),
                },
                &admin,
            ))
            .await?;
        // The key still reads (its owner, a viewer, may), but writing stopped at once.
        users
            .list_users(with_api_key(list_users("acme"), &created.key))
            .await?;
        let denied = users
            .create_user(with_api_key(
                new_user("acme", "dee@example.com", &[]),
                &created.key,
            ))
            .await;
        expect_code(denied, Code::PermissionDenied);
        // The viewer cannot mint itself a key with the rights it lost.
        let denied = keys
            .create_api_key(with_bearer(
                key_request("acme", "bob-again", &scopes, 7),
                &bob,
            ))
            .await;
        expect_code(denied, Code::PermissionDenied);
        mesh.stop().await?;
    }
    Ok(())
}

/// A tenant admin's key may carry every permission the admin role names, platform-only ones
/// included (held, though usable only by operators), so that it can grant the admin role as
/// its owner can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_admins_key_can_grant_what_its_owner_grants() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let (ada, _) = signed_in_user(&mesh, "acme", "ada@example.com", &["admin"]).await?;
        let (_, bob_name) = signed_in_user(&mesh, "acme", "bob@example.com", &["viewer"]).await?;
        let admin_role = RoleServiceClient::new(mesh.gateway())
            .get_role(with_bearer(
                GetRoleRequest {
                    name: "tenants/acme/roles/admin".into(),
                },
                &ada,
            ))
            .await?
            .into_inner();
        assert!(
            (admin_role.permissions.iter()).any(|p| p == "identity.tenants.create"),
            "the admin role names platform-only permissions"
        );
        let scopes: Vec<&str> = admin_role.permissions.iter().map(String::as_str).collect();
        let mut keys = ApiKeyServiceClient::new(mesh.gateway());
        let created = create(
            &mut keys,
            with_bearer(key_request("acme", "ada-admin", &scopes, 7), &ada),
        )
        .await?;
        UserServiceClient::new(mesh.gateway())
            .assign_role(with_api_key(
                AssignRoleRequest {
                    name: bob_name,
                    role: "admin".into(),
                },
                &created.key,
            ))
            .await?;
        mesh.stop().await?;
    }
    Ok(())
}

/// A user's key stops with its owner, and is refused as an invalid key at once, as the gateway
/// refuses it once its cached verification lapses: its clients learn nothing of the owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_owners_key_is_refused_as_invalid_at_once() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let (bob, bob_name) = signed_in_user(&mesh, "acme", "bob@example.com", &["admin"]).await?;
        let mut keys = ApiKeyServiceClient::new(mesh.gateway());
        let mut users = UserServiceClient::new(mesh.gateway());
        let created = create(
            &mut keys,
            with_bearer(
                key_request("acme", "bob-ci", &["identity.users.list"], 7),
                &bob,
            ),
        )
        .await?;
        // Verified, and remembered by the gateway.
        users
            .list_users(with_api_key(list_users("acme"), &created.key))
            .await?;
        let bob_user = User {
            name: bob_name,
            state: UserState::Disabled as i32,
            ..User::default()
        };
        users
            .update_user(mesh.as_operator(UpdateUserRequest {
                user: Some(bob_user),
                update_mask: Some(FieldMask {
                    paths: vec!["state".into()],
                }),
            }))
            .await?;
        let refused = users
            .list_users(with_api_key(list_users("acme"), &created.key))
            .await;
        assert_eq!(
            reason(&expect_code(refused, Code::Unauthenticated)),
            "INVALID_API_KEY"
        );
        mesh.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_stops_at_its_expiry_though_the_gateway_cached_it() -> anyhow::Result<()> {
    // The default cache period (30 s) is far longer than this key lives.
    let mesh = Mesh::builder().start().await?;
    let (admin, _) = signed_in_user(&mesh, "acme", "ada@example.com", &["admin"]).await?;
    let mut keys = ApiKeyServiceClient::new(mesh.gateway());
    let mut users = UserServiceClient::new(mesh.gateway());
    let short_lived = CreateApiKeyRequest {
        ttl: Some(prost_types::Duration {
            seconds: 2,
            nanos: 0,
        }),
        ..key_request("acme", "brief", READ_USERS, 1)
    };
    let secret = create(&mut keys, with_bearer(short_lived, &admin))
        .await?
        .key;
    users
        .list_users(with_api_key(list_users("acme"), &secret))
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let expired = users
        .list_users(with_api_key(list_users("acme"), &secret))
        .await;
    assert_eq!(
        reason(&expect_code(expired, Code::Unauthenticated)),
        "INVALID_API_KEY"
    );
    mesh.stop().await
}

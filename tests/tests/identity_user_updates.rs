//! `UserService.UpdateUser`: an admin renames and disables a user through the gateway; the
//! disabled user's access token, refresh token, sign-in and API key stop at once and come back
//! when it is enabled; nobody changes a user with more rights, disables itself or revokes its
//! own roles, not even one promoted while the change was being judged; disabled users make room
//! under the `users` limit.

mod common;
mod identity_kit;

use std::{collections::HashMap, time::Duration};

use common::{
    audit_events_arrived, expect_code, expect_judged_again, new_tenant, reason,
    until_a_call_waits_for_a_lock, violated_fields,
};
use identity_kit::{list_users, login, login_request, new_user, own_key, update, with_bearer};
use palisade_proto::palisade::identity::v1::{
    GetUserRequest, Plan, RefreshTokenRequest, RevokeRoleRequest, Tenant, UpdateUserRequest, User,
    UserState, auth_service_client::AuthServiceClient, tenant_service_client::TenantServiceClient,
    user_service_client::UserServiceClient,
};
use palisade_testkit::{Component, Mesh, with_api_key};
use prost_types::FieldMask;
use tonic::Code;

fn change(user: &User, paths: &[&str], edit: impl FnOnce(&mut User)) -> UpdateUserRequest {
    let mut user = User {
        name: user.name.clone(),
        ..User::default()
    };
    edit(&mut user);
    UpdateUserRequest {
        user: Some(user),
        update_mask: Some(FieldMask {
            paths: paths.iter().map(|path| (*path).to_owned()).collect(),
        }),
    }
}

/// Tenant `acme` with one viewer, Bob, made by the operator; returns Bob.
async fn acme_with_bob(mesh: &Mesh) -> anyhow::Result<User> {
    TenantServiceClient::new(mesh.gateway())
        .create_tenant(mesh.as_operator(new_tenant("acme", "Acme", Plan::Professional)))
        .await?;
    let bob = UserServiceClient::new(mesh.gateway())
        .create_user(mesh.as_operator(new_user("acme", "bob@acme.example", &["viewer"])))
        .await?;
    Ok(bob.into_inner())
}

fn set_state(user: &User, state: UserState) -> UpdateUserRequest {
    change(user, &["state"], |user| user.state = state as i32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_user_is_refused_everywhere_until_enabled() -> anyhow::Result<()> {
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
        ] {
            let user = users
                .create_user(mesh.as_operator(new_user("acme", email, &[role])))
                .await?
                .into_inner();
            created.insert(email, user);
        }
        let (ada, bob, cyd) = (
            &created["ada@acme.example"],
            &created["bob@acme.example"],
            &created["cyd@acme.example"],
        );
        let (admin, _) = login(&mesh, "acme", &ada.email).await?;
        let (bob_token, bob_refresh) = login(&mesh, "acme", &bob.email).await?;
        let bob_key = own_key(&mesh, &bob_token, "bob's", "identity.users.list").await?;

        // A rename: trimmed, and the update time moves.
        let renamed = users
            .update_user(with_bearer(
                change(bob, &["display_name"], |user| {
                    user.display_name = "  Bob B.  ".into();
                    // Not in the mask: ignored.
                    user.state = UserState::Disabled as i32;
                }),
                &admin,
            ))
            .await?
            .into_inner();
        assert_eq!(renamed.display_name, "Bob B.", "{backend}");
        assert_eq!(renamed.state(), UserState::Active, "{backend}");
        let micros = |user: &User| {
            let time = user.update_time.expect("an update time");
            time.seconds * 1_000_000 + i64::from(time.nanos / 1_000)
        };
        assert!(micros(&renamed) > micros(bob), "{backend}");

        let disabled = users
            .update_user(with_bearer(set_state(bob, UserState::Disabled), &admin))
            .await?
            .into_inner();
        assert_eq!(disabled.state(), UserState::Disabled, "{backend}");
        let mut auth = AuthServiceClient::new(mesh.gateway());
        let refused = users
            .list_users(with_bearer(list_users("acme"), &bob_token))
            .await;
        expect_code(refused, Code::PermissionDenied);
        // Refused at the edge as any invalid key is (the gateway has not seen it yet), and
        // not remembered there: it works again as soon as Bob is enabled (below).
        let refused = users
            .list_users(with_api_key(list_users("acme"), &bob_key))
            .await;
        assert_eq!(
            reason(&expect_code(refused, Code::Unauthenticated)),
            "INVALID_API_KEY",
            "{backend}"
        );
        let refused = auth
            .refresh_token(RefreshTokenRequest {
                refresh_token: bob_refresh,
            })
            .await;
        expect_code(refused, Code::Unauthenticated);
        let refused = auth.login(login_request("acme", &bob.email)).await;
        assert!(refused.is_err(), "{backend}: a disabled user signs in");
        let events = audit_events_arrived(&mesh, "acme").await?;
        let event = events
            .iter()
            .find(|event| {
                event.action == "identity.users.update"
                    && event.attributes.get("state").map(String::as_str) == Some("disabled")
            })
            .expect("the disabling is audited");
        assert_eq!(event.resource, bob.name, "{backend}");
        assert_eq!(event.attributes["fields"], "state", "{backend}");
        assert_eq!(event.attributes["revoked_sessions"], "1", "{backend}");

        // Nobody disables itself; a manager does not touch an admin; bad masks are named.
        let own = users
            .update_user(with_bearer(set_state(ada, UserState::Disabled), &admin))
            .await;
        assert_eq!(
            reason(&expect_code(own, Code::FailedPrecondition)),
            "OWN_ACCOUNT"
        );
        // Not through one of its own keys either.
        let ada_key = own_key(&mesh, &admin, "ada's", "identity.users.update").await?;
        let through_own_key = users
            .update_user(with_api_key(set_state(ada, UserState::Disabled), &ada_key))
            .await;
        assert_eq!(
            reason(&expect_code(through_own_key, Code::FailedPrecondition)),
            "OWN_ACCOUNT"
        );
        // Nor takes a role from itself: the tenant's only admin would leave it without one.
        let demote = RevokeRoleRequest {
            name: ada.name.clone(),
            role: "admin".to_owned(),
        };
        let demoted = users.revoke_role(with_bearer(demote, &admin)).await;
        assert_eq!(
            reason(&expect_code(demoted, Code::FailedPrecondition)),
            "OWN_ACCOUNT"
        );
        let (manager, _) = login(&mesh, "acme", &cyd.email).await?;
        let escalation = users
            .update_user(with_bearer(set_state(ada, UserState::Disabled), &manager))
            .await;
        assert_eq!(
            reason(&expect_code(escalation, Code::PermissionDenied)),
            "ROLE_ESCALATION"
        );
        let bad = users
            .update_user(with_bearer(
                change(bob, &["email", "state"], |_| {}),
                &admin,
            ))
            .await;
        // The email is not changed here (nor anywhere): a new one is refused, reported with
        // the other bad fields.
        assert_eq!(
            violated_fields(&expect_code(bad, Code::InvalidArgument)),
            ["user.email", "user.state"],
            "{backend}"
        );

        // Enabled again, Bob signs in and his key works again.
        users
            .update_user(with_bearer(set_state(bob, UserState::Active), &admin))
            .await?;
        login(&mesh, "acme", &bob.email).await?;
        users
            .list_users(with_api_key(list_users("acme"), &bob_key))
            .await?;

        // At a limit of three users, a disabled one makes room and enabling it needs room.
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
        users
            .update_user(with_bearer(set_state(cyd, UserState::Disabled), &admin))
            .await?;
        users
            .create_user(with_bearer(
                new_user("acme", "dee@acme.example", &["viewer"]),
                &admin,
            ))
            .await?;
        let no_room = users
            .update_user(with_bearer(set_state(cyd, UserState::Active), &admin))
            .await;
        assert_eq!(
            reason(&expect_code(no_room, Code::ResourceExhausted)),
            "LIMIT_EXCEEDED"
        );
        mesh.stop().await?;
    }
    Ok(())
}

/// A rename that read the user before a disable committed must not write the old state back:
/// the test holds the disabling transaction open while the rename runs, then commits it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_racing_a_disable_keeps_the_user_disabled() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        let mesh = builder.start().await?;
        let bob = acme_with_bob(&mesh).await?;
        let mut users = UserServiceClient::new(mesh.gateway());
        let bob_id = bob.name.rsplit('/').next().expect("an id").to_owned();

        let db = mesh.unrestricted_db(Component::Identity).await?;
        let mut disabling = db.begin().await?;
        sqlx::query("UPDATE users SET state = 'disabled' WHERE tenant_id = 'acme' AND id = $1")
            .bind(&bob_id)
            .execute(&mut *disabling)
            .await?;
        let renaming = tokio::spawn({
            let mut users = users.clone();
            let request = mesh.as_operator(change(&bob, &["display_name"], |user| {
                user.display_name = "Bob B.".into();
            }));
            async move { users.update_user(request).await }
        });
        // Time for the rename to read Bob (active: the disable is not committed yet) and reach
        // its own transaction. Were it slower, the test would pass without racing.
        tokio::time::sleep(Duration::from_millis(500)).await;
        disabling.commit().await?;
        let renamed = renaming.await??.into_inner();
        assert_eq!(renamed.display_name, "Bob B.", "{backend}");
        assert_eq!(renamed.state(), UserState::Disabled, "{backend}");
        let stored = users
            .get_user(mesh.as_operator(GetUserRequest {
                name: bob.name.clone(),
            }))
            .await?
            .into_inner();
        assert_eq!(stored.state(), UserState::Disabled, "{backend}");
        db.close().await;
        mesh.stop().await?;
    }
    Ok(())
}

/// An update sending the etag it read is applied only to the user as read: a change in
/// between (here a disable the test commits while the rename waits for the user's lock, so
/// the rename read the user before it) aborts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_with_a_stale_etag_is_aborted() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        let mesh = builder.start().await?;
        let bob = acme_with_bob(&mesh).await?;
        let mut users = UserServiceClient::new(mesh.gateway());
        let rename = |read: &User, display_name: &str| {
            change(read, &["display_name"], |user| {
                user.display_name = display_name.into();
                user.etag = read.etag.clone();
            })
        };
        let renamed = users
            .update_user(mesh.as_operator(rename(&bob, "Bob B.")))
            .await?
            .into_inner();
        assert_ne!(renamed.etag, bob.etag, "{backend}");
        let stale = users
            .update_user(mesh.as_operator(rename(&bob, "Robert")))
            .await;
        let status = expect_code(stale, Code::Aborted);
        assert_eq!(reason(&status), "ETAG_MISMATCH", "{backend}");

        let db = mesh.unrestricted_db(Component::Identity).await?;
        let mut disabling = db.begin().await?;
        let bob_id = bob.name.rsplit('/').next().expect("an id").to_owned();
        sqlx::query("UPDATE users SET state = 'disabled' WHERE tenant_id = 'acme' AND id = $1")
            .bind(&bob_id)
            .execute(&mut *disabling)
            .await?;
        let racing = tokio::spawn({
            let mut users = users.clone();
            let request = mesh.as_operator(rename(&renamed, "Robert"));
            async move { users.update_user(request).await }
        });
        until_a_call_waits_for_a_lock(&db, &mut disabling, backend).await?;
        disabling.commit().await?;
        let status = expect_code(racing.await?, Code::Aborted);
        assert_eq!(reason(&status), "ETAG_MISMATCH", "{backend}");
        let stored = users
            .get_user(mesh.as_operator(GetUserRequest {
                name: bob.name.clone(),
            }))
            .await?
            .into_inner();
        assert_eq!(stored.display_name, "Bob B.", "{backend}");
        // With the current etag it applies.
        users
            .update_user(mesh.as_operator(rename(&stored, "Robert")))
            .await?;
        db.close().await;
        mesh.stop().await?;
    }
    Ok(())
}

/// A manager renaming a viewer while an admin makes that viewer an admin: the manager's right
/// was judged on the viewer, so the rename must not land on the admin. The test holds the role
/// change open (the user's row locked, as identity's own writes lock it) while the rename runs,
/// then commits it: the rename is aborted (`CONCURRENT_CHANGE`), to be judged again on retry.
/// On PostgreSQL the test commits once the rename waits for that lock, so the race is hit
/// every time; on SQLite after a pause, and a rename slower than that reads the admin and is
/// refused outright, which is as safe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_judged_before_a_promotion_is_aborted() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        let mesh = builder.start().await?;
        TenantServiceClient::new(mesh.gateway())
            .create_tenant(mesh.as_operator(new_tenant("acme", "Acme", Plan::Professional)))
            .await?;
        let mut users = UserServiceClient::new(mesh.gateway());
        users
            .create_user(mesh.as_operator(new_user("acme", "mo@acme.example", &["manager"])))
            .await?;
        let bob = users
            .create_user(mesh.as_operator(new_user("acme", "bob@acme.example", &["viewer"])))
            .await?
            .into_inner();
        let bob_id = bob.name.rsplit('/').next().expect("an id").to_owned();
        let (manager, _) = login(&mesh, "acme", "mo@acme.example").await?;

        let db = mesh.unrestricted_db(Component::Identity).await?;
        let mut promoting = db.begin().await?;
        sqlx::query(
            "UPDATE users SET display_name = display_name WHERE tenant_id = 'acme' AND id = $1",
        )
        .bind(&bob_id)
        .execute(&mut *promoting)
        .await?;
        sqlx::query(
            "INSERT INTO user_roles (user_id, tenant_id, role) VALUES ($1, 'acme', 'admin')",
        )
        .bind(&bob_id)
        .execute(&mut *promoting)
        .await?;
        let renaming = tokio::spawn({
            let mut users = users.clone();
            let request = with_bearer(
                change(&bob, &["display_name"], |user| {
                    user.display_name = "Bobby".into()
                }),
                &manager,
            );
            async move { users.update_user(request).await }
        });
        // The rename judged Bob a viewer and now waits for his row.
        until_a_call_waits_for_a_lock(&db, &mut promoting, backend).await?;
        promoting.commit().await?;
        let refused = renaming
            .await?
            .expect_err("a rename of an admin by a manager");
        expect_judged_again(&refused, backend, Some("ROLE_ESCALATION"));
        let stored = users
            .get_user(mesh.as_operator(GetUserRequest {
                name: bob.name.clone(),
            }))
            .await?
            .into_inner();
        assert_eq!(stored.display_name, bob.display_name, "{backend}");
        assert!(stored.roles.contains(&"admin".to_owned()), "{backend}");
        db.close().await;
        mesh.stop().await?;
    }
    Ok(())
}

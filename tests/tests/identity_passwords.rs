//! Password changes through the gateway: users change their own with the current one, holders
//! of `identity.users.update` set others' (never of accounts with more rights), every session
//! of the user ends, wrong guesses count towards the lockout, and no password reaches the audit
//! log.

mod common;

use std::time::Duration;

use common::{
    audit_event, expect_code, new_tenant, reason, until_a_call_waits_for_a_lock, violated_fields,
};
use palisade_proto::palisade::{
    compliance::v1::Outcome,
    identity::v1::{
        ApiKey, AuthTokens, ChangePasswordRequest, CreateApiKeyRequest, CreateUserRequest,
        GetUserRequest, LoginRequest, Plan, RefreshTokenRequest, User,
        api_key_service_client::ApiKeyServiceClient, auth_service_client::AuthServiceClient,
        tenant_service_client::TenantServiceClient, user_service_client::UserServiceClient,
    },
};
use palisade_testkit::{Component, Mesh, with_api_key};
use tonic::{Code, Status};

const PASSWORD: &str = "correct horse battery staple";
const NEW_PASSWORD: &str = "a brand new passphrase";
const RESET_PASSWORD: &str = "set by the manager";

fn with_bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}").parse().expect("tokens are ascii");
    request.metadata_mut().insert("authorization", value);
    request
}

/// Tenants with one user per (tenant, email, role); returns the users' names.
async fn populate(mesh: &Mesh, users: &[(&str, &str, &str)]) -> anyhow::Result<Vec<String>> {
    let mut made = Vec::new();
    let mut names = Vec::new();
    for (tenant, email, role) in users {
        if !made.contains(tenant) {
            TenantServiceClient::new(mesh.gateway())
                .create_tenant(mesh.as_operator(new_tenant(tenant, tenant, Plan::Professional)))
                .await?;
            made.push(tenant);
        }
        let user = UserServiceClient::new(mesh.gateway())
            .create_user(
                mesh.as_operator(CreateUserRequest {
                    parent: format!("tenants/{tenant}"),
                    user: Some(User {
                        email: (*email).to_owned(),
                        display_name: (*email).to_owned(),
                        roles: [role]
                            .iter()
                            .filter(|r| !r.is_empty())
                            .map(|r| (**r).to_owned())
                            .collect(),
                        ..User::default()
                    }),
                    password: PASSWORD.to_owned(),
                }),
            )
            .await?
            .into_inner();
        names.push(user.name);
    }
    Ok(names)
}

async fn login(
    mesh: &Mesh,
    tenant: &str,
    email: &str,
    password: &str,
) -> Result<AuthTokens, Status> {
    AuthServiceClient::new(mesh.gateway())
        .login(LoginRequest {
            tenant_id: tenant.to_owned(),
            email: email.to_owned(),
            password: password.to_owned(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn refresh(mesh: &Mesh, tokens: &AuthTokens) -> Result<AuthTokens, Status> {
    AuthServiceClient::new(mesh.gateway())
        .refresh_token(RefreshTokenRequest {
            refresh_token: tokens.refresh_token.clone(),
        })
        .await
        .map(tonic::Response::into_inner)
}

fn change(name: &str, current: &str, new: &str) -> ChangePasswordRequest {
    ChangePasswordRequest {
        name: name.to_owned(),
        current_password: current.to_owned(),
        new_password: new.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_ends_every_session_of_the_user() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let names = populate(
            &mesh,
            &[
                ("acme", "ada@example.com", "admin"),
                ("acme", "mona@example.com", "manager"),
                ("acme", "vic@example.com", "viewer"),
                ("acme", "rita@example.com", ""),
                ("globex", "gus@globex.example", "admin"),
            ],
        )
        .await?;
        let (ada, rita) = (&names[0], &names[3]);
        let mut users = UserServiceClient::new(mesh.gateway());

        // Rita holds no role, yet changes her own password, given the current one.
        let first = login(&mesh, "acme", "rita@example.com", PASSWORD).await?;
        let second = login(&mesh, "acme", "rita@example.com", PASSWORD).await?;
        let token = &second.access_token;
        let bad = users
            .change_password(with_bearer(change(rita, "", "short"), token))
            .await;
        assert_eq!(
            violated_fields(&expect_code(bad, Code::InvalidArgument)),
            ["new_password", "current_password"]
        );
        let over_long = change(rita, &"p".repeat(4097), "a brand new passphrase");
        let bad = users.change_password(with_bearer(over_long, token)).await;
        assert_eq!(
            violated_fields(&expect_code(bad, Code::InvalidArgument)),
            ["current_password"]
        );
        // A password made of the account's own email is refused here as at creation.
        let own_word = users
            .change_password(with_bearer(
                change(rita, PASSWORD, "rita-rita-2026!"),
                token,
            ))
            .await;
        assert_eq!(
            violated_fields(&expect_code(own_word, Code::InvalidArgument)),
            ["new_password"]
        );
        let wrong = users
            .change_password(with_bearer(
                change(rita, "not my password", NEW_PASSWORD),
                token,
            ))
            .await;
        assert_eq!(
            reason(&expect_code(wrong, Code::PermissionDenied)),
            "WRONG_PASSWORD"
        );
        let changed = users
            .change_password(with_bearer(change(rita, PASSWORD, NEW_PASSWORD), token))
            .await?
            .into_inner();
        assert_eq!(changed.revoked_sessions, 2);

        // The old password stops working, the new one works, earlier refresh tokens are dead.
        let old = login(&mesh, "acme", "rita@example.com", PASSWORD).await;
        expect_code(old, Code::Unauthenticated);
        let third = login(&mesh, "acme", "rita@example.com", NEW_PASSWORD).await?;
        for session in [&first, &second] {
            let refused = refresh(&mesh, session).await;
            assert_eq!(
                reason(&expect_code(refused, Code::Unauthenticated)),
                "INVALID_REFRESH_TOKEN"
            );
        }
        refresh(&mesh, &third).await?;
        // The access tokens of those sessions stop too (their sessions have ended).
        let stale = users
            .get_user(with_bearer(GetUserRequest { name: rita.clone() }, token))
            .await;
        assert_eq!(
            reason(&expect_code(stale, Code::Unauthenticated)),
            "SESSION_REVOKED"
        );

        // Others' passwords need `identity.users.update` and no fewer rights than the user's.
        let viewer = login(&mesh, "acme", "vic@example.com", PASSWORD).await?;
        let by_viewer = users
            .change_password(with_bearer(
                change(rita, "", RESET_PASSWORD),
                &viewer.access_token,
            ))
            .await;
        assert_eq!(
            reason(&expect_code(by_viewer, Code::PermissionDenied)),
            "PERMISSION_DENIED"
        );
        let manager = login(&mesh, "acme", "mona@example.com", PASSWORD).await?;
        let takeover = users
            .change_password(with_bearer(
                change(ada, "", RESET_PASSWORD),
                &manager.access_token,
            ))
            .await;
        assert_eq!(
            reason(&expect_code(takeover, Code::PermissionDenied)),
            "ROLE_ESCALATION"
        );
        let reset = users
            .change_password(with_bearer(
                change(rita, "", RESET_PASSWORD),
                &manager.access_token,
            ))
            .await?
            .into_inner();
        assert_eq!(reset.revoked_sessions, 1);
        let after_reset = refresh(&mesh, &third).await;
        expect_code(after_reset, Code::Unauthenticated);
        login(&mesh, "acme", "rita@example.com", RESET_PASSWORD).await?;

        // Even an admin gives its own current password: a stolen token alone changes nothing.
        let admin = login(&mesh, "acme", "ada@example.com", PASSWORD).await?;
        let own = users
            .change_password(with_bearer(
                change(ada, "", NEW_PASSWORD),
                &admin.access_token,
            ))
            .await;
        assert_eq!(
            violated_fields(&expect_code(own, Code::InvalidArgument)),
            ["current_password"]
        );
        // Another tenant's admin does not find acme's users.
        let foreign = login(&mesh, "globex", "gus@globex.example", PASSWORD).await?;
        let cross = users
            .change_password(with_bearer(
                change(rita, "", NEW_PASSWORD),
                &foreign.access_token,
            ))
            .await;
        expect_code(cross, Code::NotFound);

        // Audited, by whom and how, never with a password.
        let event = audit_event(&mesh, "identity.users.changePassword", |event| {
            event.outcome() == Outcome::Success
                && event.attributes.get("own_password").map(String::as_str) == Some("false")
        })
        .await?;
        assert_eq!(&event.resource, rita);
        assert_eq!(
            event.attributes.get("revoked_sessions").map(String::as_str),
            Some("1")
        );
        let recorded = format!("{event:?}");
        for secret in [PASSWORD, NEW_PASSWORD, RESET_PASSWORD] {
            assert!(!recorded.contains(secret), "{recorded}");
        }
        mesh.stop().await?;
    }
    Ok(())
}

/// A user's own API key acts as the user: it changes the user's password only with the current
/// one, as a session does (a leaked key must not become the account's password).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_own_key_needs_the_current_password_too() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let names = populate(&mesh, &[("acme", "ada@example.com", "admin")]).await?;
        let ada = &names[0];
        let tokens = login(&mesh, "acme", "ada@example.com", PASSWORD).await?;
        let scopes = ["identity.users.update", "identity.users.changePassword"];
        let key = ApiKeyServiceClient::new(mesh.gateway())
            .create_api_key(with_bearer(
                CreateApiKeyRequest {
                    parent: "tenants/acme".into(),
                    api_key: Some(ApiKey {
                        display_name: "ada's key".into(),
                        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
                        ..ApiKey::default()
                    }),
                    ttl: Some(prost_types::Duration {
                        seconds: 86_400,
                        nanos: 0,
                    }),
                },
                &tokens.access_token,
            ))
            .await?
            .into_inner();
        assert_eq!(key.api_key.unwrap().owner, *ada);
        let mut users = UserServiceClient::new(mesh.gateway());
        let without = users
            .change_password(with_api_key(change(ada, "", NEW_PASSWORD), &key.key))
            .await;
        assert_eq!(
            violated_fields(&expect_code(without, Code::InvalidArgument)),
            ["current_password"]
        );
        let wrong = users
            .change_password(with_api_key(
                change(ada, "not the password", NEW_PASSWORD),
                &key.key,
            ))
            .await;
        assert_eq!(
            reason(&expect_code(wrong, Code::PermissionDenied)),
            "WRONG_PASSWORD"
        );
        users
            .change_password(with_api_key(change(ada, PASSWORD, NEW_PASSWORD), &key.key))
            .await?;
        login(&mesh, "acme", "ada@example.com", NEW_PASSWORD).await?;
        mesh.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_current_passwords_count_towards_the_lockout() -> anyhow::Result<()> {
    let policy = palisade::LockoutPolicy {
        max_failures: 3,
        window: Duration::from_secs(600),
        lock_for: Duration::from_secs(600),
    };
    for builder in Mesh::each_backend() {
        let mesh = builder.with_login_lockout(policy).start().await?;
        let names = populate(&mesh, &[("acme", "rita@example.com", "")]).await?;
        let rita = &names[0];
        let tokens = login(&mesh, "acme", "rita@example.com", PASSWORD).await?;
        let mut users = UserServiceClient::new(mesh.gateway());
        for guess in ["guess number one", "guess number two", "guess number three"] {
            let wrong = users
                .change_password(with_bearer(
                    change(rita, guess, NEW_PASSWORD),
                    &tokens.access_token,
                ))
                .await;
            assert_eq!(
                reason(&expect_code(wrong, Code::PermissionDenied)),
                "WRONG_PASSWORD"
            );
        }
        // Locked: even the right password is refused, here and at login.
        let right = users
            .change_password(with_bearer(
                change(rita, PASSWORD, NEW_PASSWORD),
                &tokens.access_token,
            ))
            .await;
        assert_eq!(
            reason(&expect_code(right, Code::PermissionDenied)),
            "WRONG_PASSWORD"
        );
        let locked = login(&mesh, "acme", "rita@example.com", PASSWORD).await;
        expect_code(locked, Code::Unauthenticated);
        let lockout = audit_event(&mesh, "identity.auth.lockout", |_| true).await?;
        assert_eq!(&lockout.resource, rita);
        let refused = audit_event(&mesh, "identity.users.changePassword", |event| {
            event.outcome() == Outcome::Denied
        })
        .await?;
        assert_eq!(
            refused.attributes.get("reason").map(String::as_str),
            Some("wrong_password")
        );
        mesh.stop().await?;
    }
    Ok(())
}

/// A login that proved the old password while a change of it committed opens no session: the
/// change ended the sessions it saw, and one opened after it on the old password would outlive
/// it. The test holds a change open (the new hash written and the user's row locked, as
/// `ChangePassword`'s transaction holds them) while the login reads the old hash, then commits
/// it. On PostgreSQL the commit comes once the login waits for that lock, so the race is hit
/// every time; on SQLite after a pause (a login slower than that reads the new hash and is
/// refused all the same).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_racing_a_password_change_opens_no_session() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        let mesh = builder.start().await?;
        let names = populate(&mesh, &[("acme", "ada@acme.example", "viewer")]).await?;
        let ada_id = names[0].rsplit('/').next().expect("an id").to_owned();
        // A hash of NEW_PASSWORD, made by identity for another user.
        UserServiceClient::new(mesh.gateway())
            .create_user(mesh.as_operator(CreateUserRequest {
                parent: "tenants/acme".into(),
                user: Some(User {
                    email: "bob@acme.example".into(),
                    display_name: "Bob".into(),
                    ..User::default()
                }),
                password: NEW_PASSWORD.to_owned(),
            }))
            .await?;

        let db = mesh.unrestricted_db(Component::Identity).await?;
        let mut changing = db.begin().await?;
        sqlx::query(
            "UPDATE users SET password_hash = (SELECT password_hash FROM users \
             WHERE tenant_id = 'acme' AND email = 'bob@acme.example') \
             WHERE tenant_id = 'acme' AND id = $1",
        )
        .bind(&ada_id)
        .execute(&mut *changing)
        .await?;
        let logging_in = tokio::spawn({
            let gateway = mesh.gateway();
            async move {
                AuthServiceClient::new(gateway)
                    .login(LoginRequest {
                        tenant_id: "acme".into(),
                        email: "ada@acme.example".into(),
                        password: PASSWORD.to_owned(),
                    })
                    .await
            }
        });
        until_a_call_waits_for_a_lock(&db, &mut changing, backend).await?;
        changing.commit().await?;
        let refused = logging_in.await?;
        expect_code(refused, Code::Unauthenticated);
        let sessions: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM token_families WHERE tenant_id = 'acme' AND user_id = $1",
        )
        .bind(&ada_id)
        .fetch_one(db.pool())
        .await?;
        assert_eq!(sessions, 0, "{backend}");
        login(&mesh, "acme", "ada@acme.example", NEW_PASSWORD).await?;
        db.close().await;
        mesh.stop().await?;
    }
    Ok(())
}

//! Login lockout: ten wrong passwords in parallel lock the account exactly once, and only as
//! many of them as the limit allows are checked at all; the right password is then refused
//! until the lock ends, and works again afterwards. An admin who sets a locked user's password
//! lifts the lock at once, and a successful login forgets earlier failures. A user shows its
//! lock, while it lasts, as `lock_expire_time`. A right password
//! refused for another reason counts too, and the lock it sets is audited. `UnlockUser` lifts
//! a lock and keeps the password, for callers with power over the user, never the user itself.

mod common;

use std::time::{Duration, SystemTime};

use common::{audit_event, audit_events_arrived, expect_code, new_tenant, reason, rest};
use palisade::LockoutPolicy;
use palisade_proto::palisade::{
    compliance::v1::Outcome,
    identity::v1::{
        ChangePasswordRequest, CreateUserRequest, GetUserRequest, LoginRequest, Plan,
        UnlockUserRequest, UpdateUserRequest, User, UserState,
        auth_service_client::AuthServiceClient, tenant_service_client::TenantServiceClient,
        user_service_client::UserServiceClient,
    },
};
use palisade_testkit::{Mesh, eventually};
use prost_types::{FieldMask, Timestamp};
use tonic::{Code, transport::Channel};

const PASSWORD: &str = "correct horse battery staple";
/// Long enough that the ten parallel attempts' hashes (all of them hashed, on one low-priority
/// thread) end well within it on a busy machine; a 3 s lock ran out before them once.
const LOCK: Duration = Duration::from_secs(10);
/// A lock far longer than a test, after three failures.
const LOCKED_FOR_AN_HOUR_AFTER_THREE: LockoutPolicy = LockoutPolicy {
    max_failures: 3,
    window: Duration::from_secs(60),
    lock_for: Duration::from_secs(3600),
};

fn login(password: &str) -> LoginRequest {
    LoginRequest {
        tenant_id: "acme".into(),
        email: "ada@example.com".into(),
        password: password.into(),
    }
}

/// `count` wrong passwords for Ada, one after another, each refused.
async fn wrong_passwords(auth: &mut AuthServiceClient<Channel>, count: usize) {
    for i in 0..count {
        let wrong = auth
            .login(login(&format!("wrong password number {i}")))
            .await;
        expect_code(wrong, Code::Unauthenticated);
    }
}

/// The tenant `acme` with the user Ada (`ada@example.com`, password [`PASSWORD`]).
/// The user's `lock_expire_time`, read by the operator.
async fn lock_expire_time(mesh: &Mesh, user: &User) -> anyhow::Result<Option<Timestamp>> {
    let user = UserServiceClient::new(mesh.gateway())
        .get_user(mesh.as_operator(GetUserRequest {
            name: user.name.clone(),
        }))
        .await?;
    Ok(user.into_inner().lock_expire_time)
}

async fn acme_with_ada(mesh: &Mesh) -> anyhow::Result<User> {
    TenantServiceClient::new(mesh.gateway())
        .create_tenant(mesh.as_operator(new_tenant("acme", "Acme", Plan::Professional)))
        .await?;
    let create = CreateUserRequest {
        parent: "tenants/acme".into(),
        user: Some(User {
            email: "ada@example.com".into(),
            display_name: "Ada".into(),
            ..User::default()
        }),
        password: PASSWORD.into(),
    };
    let ada = UserServiceClient::new(mesh.gateway())
        .create_user(mesh.as_operator(create))
        .await?;
    Ok(ada.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_wrong_passwords_lock_the_account_exactly_once() -> anyhow::Result<()> {
    let policy = LockoutPolicy {
        max_failures: 5,
        window: Duration::from_secs(60),
        lock_for: LOCK,
    };
    for builder in Mesh::each_backend() {
        let mesh = builder.with_login_lockout(policy).start().await?;
        let ada = acme_with_ada(&mesh).await?;
        let auth = AuthServiceClient::new(mesh.gateway());

        let attempts: Vec<_> = (0..10)
            .map(|i| {
                let mut auth = auth.clone();
                tokio::spawn(async move {
                    auth.login(login(&format!("wrong password number {i}")))
                        .await
                })
            })
            .collect();
        for attempt in attempts {
            expect_code(attempt.await?, Code::Unauthenticated);
        }
        let locked_at = std::time::Instant::now();
        // Locked: the right password is refused too.
        expect_code(
            auth.clone().login(login(PASSWORD)).await,
            Code::Unauthenticated,
        );

        let (logins, lockouts) = eventually(Duration::from_secs(10), || async {
            let events = audit_events_arrived(&mesh, "acme").await?;
            let (logins, others): (Vec<_>, Vec<_>) =
                (events.into_iter()).partition(|e| e.action == "identity.auth.login");
            let lockouts: Vec<_> = (others.into_iter())
                .filter(|e| e.action == "identity.auth.lockout")
                .collect();
            // Ten wrong passwords and the refused right one are all audited as failures.
            Ok((logins.len() >= 11).then_some((logins, lockouts)))
        })
        .await?;
        assert_eq!(lockouts.len(), 1, "exactly one lockout: {lockouts:#?}");
        assert_eq!(lockouts[0].outcome(), Outcome::Denied);
        // Attempts in flight count before their password is checked: five of the ten parallel
        // guesses were checked (and wrong), the other five refused unchecked as locked, like
        // the right password after them.
        let reasons = |reason: &str| {
            (logins.iter())
                .filter(|e| e.attributes.get("reason").map(String::as_str) == Some(reason))
                .count()
        };
        assert_eq!(
            (reasons("wrong_password"), reasons("locked")),
            (5, 6),
            "{logins:#?}"
        );

        // The lock ends by itself; then the right password works again.
        tokio::time::sleep(LOCK.saturating_sub(locked_at.elapsed()) + Duration::from_millis(300))
            .await;
        // A lock run out is not shown, though no sign-in has cleared it yet.
        assert_eq!(lock_expire_time(&mesh, &ada).await?, None);
        let tokens = auth.clone().login(login(PASSWORD)).await?.into_inner();
        assert!(!tokens.access_token.is_empty());
        mesh.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_login_forgets_earlier_failures() -> anyhow::Result<()> {
    let policy = LOCKED_FOR_AN_HOUR_AFTER_THREE;
    for builder in Mesh::each_backend() {
        let mesh = builder.with_login_lockout(policy).start().await?;
        acme_with_ada(&mesh).await?;
        let mut auth = AuthServiceClient::new(mesh.gateway());
        // Two failures, a success, two more: never three in a row, so never locked.
        wrong_passwords(&mut auth, 2).await;
        auth.login(login(PASSWORD)).await?;
        wrong_passwords(&mut auth, 2).await;
        auth.login(login(PASSWORD)).await?;
        // The count still locks: three failures in a row do.
        wrong_passwords(&mut auth, 3).await;
        expect_code(auth.login(login(PASSWORD)).await, Code::Unauthenticated);
        mesh.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_who_sets_a_locked_users_password_unlocks_it() -> anyhow::Result<()> {
    // The lock outlasts the test: only the reset can lift it.
    let policy = LOCKED_FOR_AN_HOUR_AFTER_THREE;
    for builder in Mesh::each_backend() {
        let mesh = builder.with_login_lockout(policy).start().await?;
        let ada = acme_with_ada(&mesh).await?;
        assert_eq!(ada.lock_expire_time, None);
        let mut auth = AuthServiceClient::new(mesh.gateway());
        let before = SystemTime::now();
        wrong_passwords(&mut auth, 3).await;
        expect_code(auth.login(login(PASSWORD)).await, Code::Unauthenticated);
        // Admins see the lock and when it ends by itself.
        let ends = lock_expire_time(&mesh, &ada).await?.expect("ada is locked");
        let ends = SystemTime::try_from(ends)?;
        assert!(
            ends >= before + policy.lock_for && ends <= SystemTime::now() + policy.lock_for,
            "{ends:?}"
        );

        let reset = "a brand new passphrase";
        UserServiceClient::new(mesh.gateway())
            .change_password(mesh.as_operator(ChangePasswordRequest {
                name: ada.name.clone(),
                current_password: String::new(),
                new_password: reset.into(),
            }))
            .await?;
        assert_eq!(lock_expire_time(&mesh, &ada).await?, None);
        let tokens = auth.login(login(reset)).await?.into_inner();
        assert!(!tokens.access_token.is_empty());
        mesh.stop().await?;
    }
    Ok(())
}

/// A user of acme holding `role`, with the password [`PASSWORD`], and a request carrying an
/// access token of its.
async fn signed_in_member(
    mesh: &Mesh,
    email: &str,
    role: &str,
) -> anyhow::Result<(
    User,
    impl Fn(UnlockUserRequest) -> tonic::Request<UnlockUserRequest> + use<>,
)> {
    let create = CreateUserRequest {
        parent: "tenants/acme".into(),
        user: Some(User {
            email: email.into(),
            display_name: email.into(),
            roles: vec![role.into()],
            ..User::default()
        }),
        password: PASSWORD.into(),
    };
    let user = UserServiceClient::new(mesh.gateway())
        .create_user(mesh.as_operator(create))
        .await?
        .into_inner();
    let tokens = AuthServiceClient::new(mesh.gateway())
        .login(LoginRequest {
            tenant_id: "acme".into(),
            email: email.into(),
            password: PASSWORD.into(),
        })
        .await?
        .into_inner();
    let bearer: tonic::metadata::MetadataValue<_> =
        format!("Bearer {}", tokens.access_token).parse()?;
    let signed = move |message| {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", bearer.clone());
        request
    };
    Ok((user, signed))
}

fn unlock(user: &User) -> UnlockUserRequest {
    UnlockUserRequest {
        name: user.name.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_unlocks_a_locked_user_who_keeps_its_password() -> anyhow::Result<()> {
    // The lock outlasts the test: only the unlock can lift it.
    let policy = LOCKED_FOR_AN_HOUR_AFTER_THREE;
    for builder in Mesh::each_backend() {
        let mesh = builder.with_login_lockout(policy).start().await?;
        let ada = acme_with_ada(&mesh).await?;
        let (manager, as_manager) = signed_in_member(&mesh, "max@example.com", "manager").await?;
        let (admin, _) = signed_in_member(&mesh, "ann@example.com", "admin").await?;
        let (_, as_viewer) = signed_in_member(&mesh, "vic@example.com", "viewer").await?;
        let mut auth = AuthServiceClient::new(mesh.gateway());
        wrong_passwords(&mut auth, 3).await;
        expect_code(auth.login(login(PASSWORD)).await, Code::Unauthenticated);
        let mut users = UserServiceClient::new(mesh.gateway());

        // Without `identity.users.unlock`, nothing happens.
        let denied = expect_code(
            users.unlock_user(as_viewer(unlock(&ada))).await,
            Code::PermissionDenied,
        );
        assert_eq!(reason(&denied), "PERMISSION_DENIED", "{denied:?}");
        assert!(lock_expire_time(&mesh, &ada).await?.is_some());
        // Nobody unlocks itself, nor a user with more rights than its own.
        let own = expect_code(
            users.unlock_user(as_manager(unlock(&manager))).await,
            Code::PermissionDenied,
        );
        assert_eq!(reason(&own), "OWN_ACCOUNT", "{own:?}");
        let above = expect_code(
            users.unlock_user(as_manager(unlock(&admin))).await,
            Code::PermissionDenied,
        );
        assert_eq!(reason(&above), "ROLE_ESCALATION", "{above:?}");

        let unlocked = users
            .unlock_user(as_manager(unlock(&ada)))
            .await?
            .into_inner();
        assert_eq!(unlocked.name, ada.name);
        assert_eq!(unlocked.lock_expire_time, None);
        assert_eq!(lock_expire_time(&mesh, &ada).await?, None);
        // The same password as before the lock, and a fresh count of failures: two more wrong
        // ones do not lock again.
        wrong_passwords(&mut auth, 2).await;
        let tokens = auth.login(login(PASSWORD)).await?.into_inner();
        assert!(!tokens.access_token.is_empty());

        // Over REST too, as the operator.
        wrong_passwords(&mut auth, 3).await;
        assert!(lock_expire_time(&mesh, &ada).await?.is_some());
        let path = format!("/v1/{}:unlock", ada.name);
        let answer = rest(&mesh, "POST", &path, Some(mesh.operator_key()), "{}").await?;
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert!(answer.text().contains(&ada.name), "{}", answer.text());
        auth.login(login(PASSWORD)).await?;

        let event = audit_event(&mesh, "identity.users.unlock", |e| e.resource == ada.name).await?;
        assert_eq!(event.outcome(), Outcome::Success);
        assert_eq!(
            event.attributes.get("was_locked").map(String::as_str),
            Some("true")
        );
        assert_eq!(event.actor.map(|actor| actor.id), Some(user_id(&manager)));
        mesh.stop().await?;
    }
    Ok(())
}

/// The user id in a user's resource name.
fn user_id(user: &User) -> String {
    user.name.rsplit('/').next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_right_password_refused_for_a_disabled_user_counts_and_its_lock_is_audited()
-> anyhow::Result<()> {
    let policy = LOCKED_FOR_AN_HOUR_AFTER_THREE;
    for builder in Mesh::each_backend() {
        let mesh = builder.with_login_lockout(policy).start().await?;
        let ada = acme_with_ada(&mesh).await?;
        let mut users = UserServiceClient::new(mesh.gateway());
        let disable = UpdateUserRequest {
            user: Some(User {
                name: ada.name.clone(),
                state: UserState::Disabled as i32,
                ..User::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["state".into()],
            }),
        };
        users.update_user(mesh.as_operator(disable)).await?;

        let mut auth = AuthServiceClient::new(mesh.gateway());
        wrong_passwords(&mut auth, 2).await;
        // The third attempt reaches the limit, whatever refuses it.
        expect_code(auth.login(login(PASSWORD)).await, Code::Unauthenticated);

        let (logins, lockouts) = eventually(Duration::from_secs(10), || async {
            let events = audit_events_arrived(&mesh, "acme").await?;
            let logins: Vec<_> = (events.iter())
                .filter(|e| e.action == "identity.auth.login")
                .map(|e| e.attributes.get("reason").cloned().unwrap_or_default())
                .collect();
            let lockouts: Vec<_> = (events.into_iter())
                .filter(|e| e.action == "identity.auth.lockout")
                .collect();
            Ok((logins.len() >= 3 && !lockouts.is_empty()).then_some((logins, lockouts)))
        })
        .await?;
        assert_eq!(
            logins,
            ["wrong_password", "wrong_password", "not_active"],
            "in order"
        );
        assert_eq!(lockouts.len(), 1, "{lockouts:#?}");
        assert_eq!(lockouts[0].resource, ada.name);
        mesh.stop().await?;
    }
    Ok(())
}

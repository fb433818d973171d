//! Login lockout: ten wrong passwords in parallel lock the account exactly once; the right
//! password is then refused until the lock ends, and works again afterwards.

mod common;

use std::time::Duration;

use common::{audit_events_arrived, expect_code, new_tenant};
use palisade::LockoutPolicy;
use palisade_proto::palisade::{
    compliance::v1::Outcome,
    identity::v1::{
        CreateUserRequest, LoginRequest, Plan, User, auth_service_client::AuthServiceClient,
        tenant_service_client::TenantServiceClient, user_service_client::UserServiceClient,
    },
};
use palisade_testkit::{Mesh, eventually};
use tonic::Code;

const PASSWORD: &str = "correct horse battery staple";
const LOCK: Duration = Duration::from_secs(3);

fn login(password: &str) -> LoginRequest {
    LoginRequest {
        tenant_id: "acme".into(),
        email: "ada@example.com".into(),
        password: password.into(),
    }
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
        TenantServiceClient::new(mesh.gateway())
            .create_tenant(mesh.as_operator(new_tenant("acme", "Acme", Plan::Professional)))
            .await?;
        let user = User {
            email: "ada@example.com".into(),
            display_name: "Ada".into(),
            ..User::default()
        };
        let create = CreateUserRequest {
            parent: "tenants/acme".into(),
            user: Some(user),
            password: PASSWORD.into(),
        };
        UserServiceClient::new(mesh.gateway())
            .create_user(mesh.as_operator(create))
            .await?;
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

        let lockouts = eventually(Duration::from_secs(10), || async {
            let events = audit_events_arrived(&mesh, "acme").await?;
            let failures = events
                .iter()
                .filter(|e| e.action == "identity.auth.login")
                .count();
            let lockouts: Vec<_> = events
                .into_iter()
                .filter(|e| e.action == "identity.auth.lockout")
                .collect();
            // Ten wrong passwords and the refused right one are all audited as failures.
            Ok((failures >= 11).then_some(lockouts))
        })
        .await?;
        assert_eq!(lockouts.len(), 1, "exactly one lockout: {lockouts:#?}");
        assert_eq!(lockouts[0].outcome(), Outcome::Denied);

        // The lock ends by itself; then the right password works again.
        tokio::time::sleep(LOCK.saturating_sub(locked_at.elapsed()) + Duration::from_millis(300))
            .await;
        let tokens = auth.clone().login(login(PASSWORD)).await?.into_inner();
        assert!(!tokens.access_token.is_empty());
        mesh.stop().await?;
    }
    Ok(())
}

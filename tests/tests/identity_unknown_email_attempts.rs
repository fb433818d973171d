//! An unknown email's login attempts are claimed, counted and locked as a user's are, so that
//! they write what a known email's do, and take as long: identity keeps a digest of the email,
//! never the email, and the attempt that reaches the limit is audited as a lockout in the
//! tenant's log.

mod common;

use common::{audit_event, expect_code, tenant_with_admin};
use palisade_proto::palisade::identity::v1::{
    LoginRequest, auth_service_client::AuthServiceClient,
};
use palisade_testkit::{Component, Mesh};
use sha2::{Digest, Sha256};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_emails_attempts_are_counted_and_locked_as_a_users() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        let mesh = builder.start().await?;
        tenant_with_admin(
            &mesh,
            "acme",
            "ada@acme.example",
            "correct horse battery staple",
        )
        .await?;
        let mut auth = AuthServiceClient::new(mesh.gateway());
        for _ in 0..6 {
            let refused = auth
                .login(LoginRequest {
                    tenant_id: "acme".into(),
                    email: " Nobody@Acme.example".into(),
                    password: "a guess at a password".into(),
                })
                .await;
            expect_code(refused, Code::Unauthenticated);
        }

        let db = mesh.unrestricted_db(Component::Identity).await?;
        let rows: Vec<(String, String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT tenant_id, email_sha256, failed_logins, locked_until \
             FROM unknown_email_attempts",
        )
        .fetch_all(db.pool())
        .await?;
        db.close().await;
        let digest = hex::encode(Sha256::digest(b"nobody@acme.example"));
        assert_eq!(rows.len(), 1, "{backend}: {rows:?}");
        let (tenant, email, failures, locked_until) = &rows[0];
        assert_eq!(
            (tenant.as_str(), email, *failures),
            ("acme", &digest, 5),
            "{backend}"
        );
        assert!(locked_until.is_some(), "{backend}");

        let lockout = audit_event(&mesh, "identity.auth.lockout", |_| true).await?;
        assert_eq!(lockout.resource, "tenants/acme", "{backend}");
        mesh.stop().await?;
    }
    Ok(())
}

//! An unknown email's login attempts are claimed, counted and locked as a user's are, so that
//! they write what a known email's do, and take as long: identity keeps a digest of the email,
//! never the email, and the attempt that reaches the limit is audited as a lockout in the
//! tenant's log. Once locked, neither claim writes or locks a row (on PostgreSQL, a row a
//! transaction locked shows its id as `xmax`; such a commit waits for a WAL flush).

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
        // Past the lockout's 5, on an email without an account and on one with.
        for email in [" Nobody@Acme.example", "ada@acme.example"] {
            for _ in 0..7 {
                let refused = auth
                    .login(LoginRequest {
                        tenant_id: "acme".into(),
                        email: email.into(),
                        password: "a guess at a password".into(),
                    })
                    .await;
                expect_code(refused, Code::Unauthenticated);
            }
        }

        let db = mesh.unrestricted_db(Component::Identity).await?;
        let rows: Vec<(String, String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT tenant_id, email_sha256, failed_logins, locked_until \
             FROM unknown_email_attempts",
        )
        .fetch_all(db.pool())
        .await?;
        if backend == "postgres" {
            for table in ["unknown_email_attempts", "users"] {
                let sql = format!("SELECT xmax::text FROM {table} WHERE tenant_id = 'acme'");
                let locked_by: String = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .fetch_one(db.pool())
                    .await?;
                assert_eq!(locked_by, "0", "{table}: a refused claim locked the row");
            }
        }
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

        audit_event(&mesh, "identity.auth.lockout", |event| {
            event.resource == "tenants/acme"
        })
        .await?;
        mesh.stop().await?;
    }
    Ok(())
}

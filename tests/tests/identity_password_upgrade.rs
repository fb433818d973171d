//! A password hash made otherwise than identity makes them now (imported with a tenant's data,
//! or from before a change of parameters) is made again with identity's parameters when its
//! user signs in, also when two logins race to do it: both sign in, and the hash each stores
//! is the same.

mod common;

use argon2::{Algorithm, Argon2, Params, PasswordHasher, Version, password_hash::SaltString};
use common::{audit_event, tenant_with_admin};
use palisade_proto::palisade::identity::v1::{
    LoginRequest, auth_service_client::AuthServiceClient,
};
use palisade_testkit::{Component, Mesh};
use tonic::Code;

const PASSWORD: &str = "correct horse battery staple";
const CURRENT_PARAMETERS: &str = "$argon2id$v=19$m=19456,t=2,p=1$";

/// `password` hashed as identity never hashed: Argon2id with 1 MiB and one pass.
fn hash_with_old_parameters(password: &str) -> String {
    let salt = SaltString::encode_b64(b"a sixteen b salt").expect("a salt");
    let params = Params::new(1024, 1, 1, None).expect("parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .expect("a hash")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hash_with_old_parameters_is_upgraded_when_its_user_signs_in() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        let mesh = builder.start().await?;
        tenant_with_admin(&mesh, "acme", "ada@example.com", PASSWORD).await?;
        let old = hash_with_old_parameters(PASSWORD);
        let db = mesh.unrestricted_db(Component::Identity).await?;
        let stored_hash = || async {
            let hash: String = sqlx::query_scalar(
                "SELECT password_hash FROM users \
                 WHERE tenant_id = 'acme' AND email = 'ada@example.com'",
            )
            .fetch_one(db.pool())
            .await?;
            anyhow::Ok(hash)
        };
        sqlx::query(
            "UPDATE users SET password_hash = $1 \
             WHERE tenant_id = 'acme' AND email = 'ada@example.com'",
        )
        .bind(&old)
        .execute(db.pool())
        .await?;

        let login = |password: &str| LoginRequest {
            tenant_id: "acme".into(),
            email: "ada@example.com".into(),
            password: password.into(),
        };
        let mut auth = AuthServiceClient::new(mesh.gateway());
        // With one hashing thread (identity's default on 2 cores), both check the old hash
        // before either stores the new one: the thread takes their checks, then their
        // rehashes, in turn, and the second finds the first's. With more threads the logins
        // may not overlap so; both must sign in either way.
        let (mut one, mut other) = (auth.clone(), auth.clone());
        let (first, second) =
            tokio::join!(one.login(login(PASSWORD)), other.login(login(PASSWORD)));
        first?;
        second?;
        let upgraded = stored_hash().await?;
        assert!(
            upgraded.starts_with(CURRENT_PARAMETERS),
            "{backend}: {upgraded}"
        );

        // It is the same password's, and stays: the next login finds nothing to upgrade.
        auth.login(login(PASSWORD)).await?;
        let wrong = auth.login(login("not the password")).await.unwrap_err();
        assert_eq!(wrong.code(), Code::Unauthenticated, "{backend}");
        assert_eq!(stored_hash().await?, upgraded, "{backend}");
        let event = audit_event(&mesh, "identity.auth.login", |event| {
            event.attributes.contains_key("password_rehashed")
        })
        .await?;
        assert_eq!(event.attributes["password_rehashed"], "true", "{backend}");
        db.close().await;
        mesh.stop().await?;
    }
    Ok(())
}

//! Token-signing keys at rest: stored sealed under the deployment's key-encryption key, never
//! as plain PKCS#8; a key stored plain (before a KEK was configured) is sealed at the next start
//! and a new key signs from then on (the old one stays published for its tokens); the KEK
//! rotates (the old one as the previous one for a start), with a new signing key too; with
//! another KEK identity refuses to start rather than mint new keys.

mod common;

use common::tenant_with_admin;
use palisade_identity::KeySealer;
use palisade_proto::palisade::identity::v1::{
    GetJwksRequest, LoginRequest, auth_service_client::AuthServiceClient,
};
use palisade_testkit::{Component, Mesh};
use sqlx::Row;

const PASSWORD: &str = "correct horse battery staple";
const SEALED_PREFIX: &[u8] = b"palisade-sealed-v1:";

/// The `kid` in the header of an access token.
fn kid_of(token: &str) -> anyhow::Result<String> {
    use base64::Engine;
    let header = token.split('.').next().unwrap_or_default();
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header)?;
    let header: serde_json::Value = serde_json::from_slice(&header)?;
    Ok(header["kid"].as_str().unwrap_or_default().to_owned())
}

/// Every stored signing key: (kid, private key as stored).
async fn stored_keys(mesh: &Mesh) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    // signing_keys is platform data, outside row-level security.
    let db = mesh.service_db(Component::Identity).await?;
    let rows = sqlx::query("SELECT kid, private_key FROM signing_keys ORDER BY kid")
        .fetch_all(db.pool())
        .await?;
    db.close().await;
    rows.iter()
        .map(|row| Ok((row.try_get("kid")?, row.try_get("private_key")?)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_keys_are_sealed_at_rest() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        let mut mesh = builder.start().await?;
        tenant_with_admin(&mesh, "acme", "ada@example.com", PASSWORD).await?;
        let login = LoginRequest {
            tenant_id: "acme".into(),
            email: "ada@example.com".into(),
            password: PASSWORD.into(),
        };
        let mut auth = AuthServiceClient::new(mesh.gateway());
        auth.login(login.clone()).await?;

        let kek = mesh.certs_dir().join("identity-signing.kek");
        let sealer = KeySealer::from_file(&kek)?;
        let keys = stored_keys(&mesh).await?;
        assert!(!keys.is_empty(), "{backend}");
        for (kid, stored) in &keys {
            assert!(stored.starts_with(SEALED_PREFIX), "{backend}: {kid}");
            let pkcs8 = sealer.open(kid, stored)?;
            assert!(
                !stored.windows(pkcs8.len()).any(|w| w == pkcs8.as_slice()),
                "{backend}: the plain key is in the stored bytes"
            );
        }

        // A key stored plain, as before a KEK was configured: sealed when identity starts.
        mesh.stop_component(Component::Identity).await?;
        let (kid, stored) = &keys[0];
        let plain = sealer.open(kid, stored)?;
        let db = mesh.service_db(Component::Identity).await?;
        sqlx::query("UPDATE signing_keys SET private_key = $1 WHERE kid = $2")
            .bind(plain.clone())
            .bind(kid)
            .execute(db.pool())
            .await?;
        db.close().await;
        mesh.restart(Component::Identity).await?;
        let resealed = stored_keys(&mesh).await?;
        assert_eq!(
            resealed.len(),
            keys.len() + 1,
            "{backend}: a new key beside the old"
        );
        let old = resealed.iter().find(|(stored_kid, _)| stored_kid == kid);
        let old = &old.expect("the old key is kept").1;
        assert!(old.starts_with(SEALED_PREFIX), "{backend}");
        assert_eq!(sealer.open(kid, old)?, plain, "{backend}");
        // The old key is published for the tokens it signed; a new one signs.
        let jwks = auth.get_jwks(GetJwksRequest {}).await?.into_inner();
        assert!(jwks.keys.iter().any(|key| &key.kid == kid), "{backend}");
        let tokens = auth.login(login.clone()).await?.into_inner();
        let signing = kid_of(&tokens.access_token)?;
        assert_ne!(
            &signing, kid,
            "{backend}: the key once stored plain still signs"
        );

        // Rotating the KEK: the old one becomes the previous one beside a new one; at start the
        // keys are sealed again under the new one, which alone then opens them.
        mesh.stop_component(Component::Identity).await?;
        let previous = mesh.certs_dir().join("identity-signing.previous.kek");
        std::fs::rename(&kek, &previous)?;
        KeySealer::create_kek_file(&kek)?;
        mesh.restart(Component::Identity).await?;
        let new_sealer = KeySealer::from_file(&kek)?;
        let rotated = stored_keys(&mesh).await?;
        assert_eq!(rotated.len(), resealed.len() + 1, "{backend}");
        for (kid, stored) in &rotated {
            assert!(stored.starts_with(SEALED_PREFIX), "{backend}: {kid}");
            assert!(new_sealer.open(kid, stored).is_ok(), "{backend}: {kid}");
            assert!(
                sealer.open(kid, stored).is_err(),
                "{backend}: {kid} still opens with the old KEK"
            );
        }
        let tokens = auth.login(login.clone()).await?.into_inner();
        let after_kek_rotation = kid_of(&tokens.access_token)?;
        assert!(
            resealed.iter().all(|(kid, _)| *kid != after_kek_rotation),
            "{backend}: a key sealed under the old KEK still signs"
        );
        // The old KEK dropped: the keys open with the new one alone.
        mesh.stop_component(Component::Identity).await?;
        std::fs::remove_file(&previous)?;
        mesh.restart(Component::Identity).await?;
        assert_eq!(
            stored_keys(&mesh).await?,
            rotated,
            "{backend}: nothing left to reseal"
        );
        auth.login(login.clone()).await?;

        // Another KEK: the stored keys do not open, and identity says so instead of starting.
        mesh.stop_component(Component::Identity).await?;
        std::fs::remove_file(&kek)?;
        KeySealer::create_kek_file(&kek)?;
        let refused = mesh.restart(Component::Identity).await;
        let error = format!(
            "{:#}",
            refused.expect_err("identity started with another KEK")
        );
        assert!(error.contains("does not open"), "{backend}: {error}");
        mesh.stop().await?;
    }
    Ok(())
}

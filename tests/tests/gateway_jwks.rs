//! The gateway's copy of identity's JWKS: a signing key identity has stopped publishing stops
//! verifying access tokens once the copy is due for a refresh (not at the next rotation), and
//! tokens naming made-up key ids cost identity one fetch between them rather than one each.

mod common;
mod identity_kit;

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use common::{expect_code, reason, tenant_with_admin};
use identity_kit::{PASSWORD, kid, published_kids, with_bearer};
use palisade_proto::palisade::identity::v1::{
    GetUserRequest, RotateSigningKeyRequest, auth_service_client::AuthServiceClient,
    user_service_client::UserServiceClient,
};
use palisade_testkit::{Component, Mesh, eventually};
use tonic::Code;

/// How old the gateway lets its JWKS copy grow in these tests.
const JWKS_REFRESH: Duration = Duration::from_millis(300);
/// A token lives 15 minutes, and a superseded key stays published 2.5 minutes beyond that
/// (identity's `RotationPolicy::published_for`: a replica's check interval, the gateway's
/// leeway past `exp`, clock skew).
const RETIRED_AFTER_MICROS: i64 = 18 * 60 * 1_000_000;

/// A fresh access token of acme's admin.
async fn login(mesh: &Mesh) -> anyhow::Result<String> {
    Ok(identity_kit::login(mesh, "acme", "ada@example.com")
        .await?
        .0)
}

/// `GetJwks` calls identity has answered.
async fn jwks_fetches(mesh: &Mesh) -> anyhow::Result<u64> {
    mesh.unary_calls_handled(
        Component::Identity,
        "palisade.identity.v1.AuthService",
        "GetJwks",
        "OK",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_identity_retired_stops_verifying_at_the_gateway() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        let mesh = builder.with_jwks_refresh(JWKS_REFRESH).start().await?;
        let user = tenant_with_admin(&mesh, "acme", "ada@example.com", PASSWORD).await?;
        let get_user = |token: &str| {
            let request = with_bearer(
                GetUserRequest {
                    name: user.name.clone(),
                },
                token,
            );
            let mut users = UserServiceClient::new(mesh.gateway());
            async move { users.get_user(request).await }
        };
        let before = login(&mesh).await?;
        get_user(&before).await?;
        let mut auth = AuthServiceClient::new(mesh.gateway());
        let new_key = auth
            .rotate_signing_key(mesh.as_operator(RotateSigningKeyRequest {}))
            .await?
            .into_inner();
        let after = login(&mesh).await?;
        get_user(&after).await?;
        get_user(&before).await?;

        // Time passes for the keys: the new one has signed for longer than a token lives, so
        // identity stops publishing the old one.
        let db = mesh.unrestricted_db(Component::Identity).await?;
        sqlx::query("UPDATE signing_keys SET create_time = create_time - $1")
            .bind(RETIRED_AFTER_MICROS)
            .execute(db.pool())
            .await?;
        let published = published_kids(&mesh).await?;
        assert_eq!(published, std::slice::from_ref(&new_key.kid), "{backend}");
        assert_ne!(kid(&before), new_key.kid, "{backend}");

        let refused = eventually(Duration::from_secs(10), || async {
            Ok(get_user(&before).await.err())
        })
        .await?;
        assert_eq!(refused.code(), Code::Unauthenticated, "{backend}");
        assert_eq!(reason(&refused), "INVALID_TOKEN", "{backend}");
        get_user(&after).await?;
        mesh.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_key_ids_share_one_jwks_fetch_and_an_unanswered_one_is_unavailable()
-> anyhow::Result<()> {
    const FORGED: usize = 20;
    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        // The default refresh (a minute): only tokens make the gateway fetch here.
        let mut mesh = builder.start().await?;
        let user = tenant_with_admin(&mesh, "acme", "ada@example.com", PASSWORD).await?;
        let token = login(&mesh).await?;
        let made_up = |kid: &str| {
            let header = format!(r#"{{"alg":"EdDSA","kid":"{kid}"}}"#);
            format!("{}.e30.AA", URL_SAFE_NO_PAD.encode(header))
        };
        let get_user = |token: String| {
            let request = with_bearer(
                GetUserRequest {
                    name: user.name.clone(),
                },
                &token,
            );
            let mut users = UserServiceClient::new(mesh.gateway());
            async move { users.get_user(request).await }
        };
        get_user(token.clone()).await?;

        let fetches = jwks_fetches(&mesh).await?;
        let forged = (0..FORGED).map(|i| get_user(made_up(&format!("made-up-{i}"))));
        for refused in futures::future::join_all(forged).await {
            let status = expect_code(refused, Code::Unauthenticated);
            assert_eq!(reason(&status), "INVALID_TOKEN", "{backend}");
        }
        let fetched = jwks_fetches(&mesh).await? - fetches;
        // One fetch for the forged tokens that arrived together; at most two more for any that
        // arrived while it ran (a fetch answers only the tokens that arrived before it began).
        // Fetching per token would make twenty, a second apart.
        assert!((1..=3).contains(&fetched), "{backend}: {fetched} fetches");
        // The genuine token still passes.
        get_user(token.clone()).await?;

        // With identity away, a new kid is not called invalid: nobody could say.
        let late = with_bearer(
            GetUserRequest {
                name: user.name.clone(),
            },
            &made_up("made-up-late"),
        );
        mesh.stop_component(Component::Identity).await?;
        let refused = UserServiceClient::new(mesh.gateway()).get_user(late).await;
        let status = expect_code(refused, Code::Unavailable);
        assert!(
            status.message().contains("cannot verify credentials"),
            "{backend}: {status:?}"
        );
        mesh.stop().await?;
    }
    Ok(())
}

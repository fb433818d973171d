//! Signing-key rotation: after an operator rotates, new tokens carry the new key id, tokens
//! signed before still pass the gateway (the old key stays in the JWKS until they expire), and
//! only platform operators may rotate.

mod common;
mod identity_kit;

use common::{expect_code, reason, tenant_with_admin};
use identity_kit::{PASSWORD, kid, published_kids, with_bearer};
use palisade_proto::palisade::identity::v1::{
    GetUserRequest, LoginRequest, RotateSigningKeyRequest, auth_service_client::AuthServiceClient,
    user_service_client::UserServiceClient,
};
use palisade_testkit::Mesh;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_issued_tokens_working() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        let mesh = builder.start().await?;
        let user = tenant_with_admin(&mesh, "acme", "ada@example.com", PASSWORD).await?;
        let mut auth = AuthServiceClient::new(mesh.gateway());
        let login = || LoginRequest {
            tenant_id: "acme".into(),
            email: "ada@example.com".into(),
            password: PASSWORD.into(),
        };
        let before = auth.login(login()).await?.into_inner().access_token;
        let mut users = UserServiceClient::new(mesh.gateway());
        let get_user = || GetUserRequest {
            name: user.name.clone(),
        };
        users.get_user(with_bearer(get_user(), &before)).await?;

        // A tenant admin holds every tenant permission, but not this platform one.
        let refused = auth
            .rotate_signing_key(with_bearer(RotateSigningKeyRequest {}, &before))
            .await;
        let status = expect_code(refused, Code::PermissionDenied);
        assert_eq!(reason(&status), "PLATFORM_OPERATOR_ONLY", "{backend}");

        let new_key = auth
            .rotate_signing_key(mesh.as_operator(RotateSigningKeyRequest {}))
            .await?
            .into_inner();
        assert_ne!(new_key.kid, kid(&before), "{backend}");
        let published = published_kids(&mesh).await?;
        assert!(published.contains(&new_key.kid), "{backend}: {published:?}");
        assert!(
            published.contains(&kid(&before)),
            "{backend}: {published:?}"
        );

        let after = auth.login(login()).await?.into_inner().access_token;
        assert_eq!(kid(&after), new_key.kid, "{backend}");
        // The gateway learns the new key from the JWKS and still knows the old one.
        users.get_user(with_bearer(get_user(), &after)).await?;
        users.get_user(with_bearer(get_user(), &before)).await?;
        mesh.stop().await?;
    }
    Ok(())
}

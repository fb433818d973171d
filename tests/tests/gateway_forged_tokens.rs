//! Access tokens that fail to verify cost their client: each takes one of its address's
//! verifications (at the public-call rate) and only a genuine one gives it back, since an
//! Ed25519 verification is work anyone can ask of the gateway with made-up tokens. Once those
//! are spent, a token the gateway has not verified before is refused without being verified,
//! while one it verified before still passes, public calls keep their own rate and ignore the
//! token they carry: genuine clients pay nothing for their tokens.

mod common;
mod identity_kit;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use common::{expect_code, reason, tenant_with_admin};
use identity_kit::{PASSWORD, login, with_bearer};
use palisade_proto::palisade::identity::v1::{
    GetJwksRequest, GetUserRequest, User, auth_service_client::AuthServiceClient,
    user_service_client::UserServiceClient,
};
use palisade_testkit::Mesh;
use tonic::{Code, Status};

async fn get_user(mesh: &Mesh, user: &User, token: &str) -> Result<User, Status> {
    let request = with_bearer(
        GetUserRequest {
            name: user.name.clone(),
        },
        token,
    );
    let user = UserServiceClient::new(mesh.gateway())
        .get_user(request)
        .await?;
    Ok(user.into_inner())
}

/// `token` with a signature that is not its own: the header names identity's real key, so
/// the gateway must verify the signature to refuse it.
fn forged(token: &str, seed: u8) -> String {
    let signed = &token[..token.rfind('.').expect("a JWT")];
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode([seed; 64]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tokens_cost_their_client_and_genuine_ones_do_not() -> anyhow::Result<()> {
    const BURST: usize = 10;
    // No refill: what the client has left is what it was given, however long the calls take.
    let mesh = Mesh::builder()
        .with_public_call_rate(0, BURST as u32)
        .start()
        .await?;
    let user = tenant_with_admin(&mesh, "acme", "ada@example.com", PASSWORD).await?;
    let (used, _) = login(&mesh, "acme", "ada@example.com").await?;
    let (unseen, _) = login(&mesh, "acme", "ada@example.com").await?;
    // Tokens that verify cost nothing, however many calls carry them: each is verified once,
    // and gives back what its verification took.
    for _ in 0..2 * BURST {
        get_user(&mesh, &user, &used).await?;
    }

    let mut refused = 0;
    let spent = loop {
        match get_user(&mesh, &user, &forged(&used, refused as u8)).await {
            Err(status) if reason(&status) == "INVALID_TOKEN" => refused += 1,
            answer => break expect_code(answer, Code::ResourceExhausted),
        }
        assert!(refused <= BURST, "{refused} forged tokens were verified");
    };
    assert_eq!(refused, BURST);
    assert_eq!(reason(&spent), "CLIENT_RATE_LIMITED", "{spent:?}");
    // Any token not verified before is refused now, genuine or not; the one verified before
    // still passes.
    let not_verified = expect_code(
        get_user(&mesh, &user, &unseen).await,
        Code::ResourceExhausted,
    );
    assert_eq!(reason(&not_verified), "CLIENT_RATE_LIMITED");
    get_user(&mesh, &user, &used).await?;
    // Public calls are not charged for the forgeries, and one carrying a token the client
    // can no longer have verified goes on as if it carried none.
    let mut auth = AuthServiceClient::new(mesh.gateway());
    auth.get_jwks(GetJwksRequest {}).await?;
    auth.get_jwks(with_bearer(GetJwksRequest {}, &unseen))
        .await?;
    auth.get_jwks(with_bearer(GetJwksRequest {}, &forged(&used, 255)))
        .await?;
    mesh.stop().await?;
    Ok(())
}

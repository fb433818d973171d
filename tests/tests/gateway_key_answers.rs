//! What the gateway remembers of identity's answers about API keys: a client repeating a
//! made-up key, in a burst or one call after another, costs identity one `VerifyApiKey` call,
//! not one per request, and the answer stays the same refusal; what is not shaped like a key
//! costs identity nothing; genuine keys are unaffected.

use palisade_proto::palisade::identity::v1::{
    ListTenantsRequest, tenant_service_client::TenantServiceClient,
};
use palisade_testkit::{Component, Mesh, with_api_key};
use tonic::Code;

/// How many `VerifyApiKey` calls identity has refused.
async fn refused_verifications(mesh: &Mesh) -> anyhow::Result<u64> {
    mesh.unary_calls_handled(
        Component::Identity,
        "palisade.identity.v1.ApiKeyService",
        "VerifyApiKey",
        "Unauthenticated",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_made_up_key_costs_identity_one_call() -> anyhow::Result<()> {
    let mesh = Mesh::builder().start().await?;
    let tenants = TenantServiceClient::new(mesh.gateway());
    let call = |key: String| {
        let mut tenants = tenants.clone();
        async move {
            tenants
                .list_tenants(with_api_key(ListTenantsRequest::default(), &key))
                .await
        }
    };
    let made_up = |digit: char| format!("pal_{}_{}", "0".repeat(32), digit.to_string().repeat(64));

    let burst = futures::future::join_all((0..20).map(|_| call(made_up('a')))).await;
    for answer in burst
        .into_iter()
        .chain([call(made_up('a')).await, call(made_up('a')).await])
    {
        let status = answer.expect_err("a made-up key is refused");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    assert_eq!(refused_verifications(&mesh).await?, 1);
    let other = call(made_up('b')).await.expect_err("refused");
    assert_eq!(other.code(), Code::Unauthenticated);
    assert_eq!(refused_verifications(&mesh).await?, 2);

    // What is not shaped like a key is refused without asking.
    let junk = call("pal_not_a_key".to_owned()).await.expect_err("refused");
    assert_eq!(junk.code(), Code::Unauthenticated);
    assert_eq!(refused_verifications(&mesh).await?, 2);

    // The operator's genuine key works alongside.
    call(mesh.operator_key().to_owned()).await?;
    mesh.stop().await
}

//! What the gateway remembers of identity's answers about API keys: a client repeating a
//! made-up key, in a burst or one call after another, costs identity one `VerifyApiKey` call,
//! not one per request, and the answer stays the same refusal; what is not shaped like a key
//! costs identity nothing; genuine keys are unaffected. Asking identity about a key costs the
//! client a public call, unless identity accepted that key when last asked.

mod common;
mod identity_kit;

use std::time::Duration;

use common::{expect_code, new_tenant, reason};
use identity_kit::{login_request, new_user, own_key};
use palisade_proto::palisade::identity::v1::{
    GetJwksRequest, GetUserRequest, ListTenantsRequest, Plan, UpdateUserRequest, UserState,
    auth_service_client::AuthServiceClient, tenant_service_client::TenantServiceClient,
    user_service_client::UserServiceClient,
};
use palisade_testkit::{Component, Mesh, with_api_key};
use prost_types::FieldMask;
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

/// `request` as if a trusted balancer forwarded it for `client`.
fn forwarded_for<T>(mut request: tonic::Request<T>, client: &str) -> tonic::Request<T> {
    let client = client.parse().expect("an address");
    request.metadata_mut().insert("x-forwarded-for", client);
    request
}

/// `GetJwks` without a credential, as if forwarded for `client`.
fn jwks_request_from(client: &str) -> tonic::Request<GetJwksRequest> {
    forwarded_for(tonic::Request::new(GetJwksRequest {}), client)
}

/// How long the gateway trusts identity's answers about keys in the tests below.
const TTL: Duration = Duration::from_millis(200);

/// A mesh whose gateway trusts key answers for `TTL` and lets each client one public call a
/// second, believing `X-Forwarded-For` from loopback so each test client has its own rate.
async fn mesh_with_lapsing_keys() -> anyhow::Result<Mesh> {
    Mesh::builder()
        .with_public_call_rate(1, 1)
        .with_api_key_cache_ttl(TTL)
        .with_trusted_proxies(&["127.0.0.0/8"])
        .start()
        .await
}

/// A genuine key whose trust lapsed is asked about again at the gateway's cost, not its
/// client's; a made-up key on a public call costs the client that one call, not two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asking_again_about_a_genuine_key_costs_its_client_nothing() -> anyhow::Result<()> {
    let mesh = mesh_with_lapsing_keys().await?;
    let mut tenants = TenantServiceClient::new(mesh.gateway());
    let mut auth = AuthServiceClient::new(mesh.gateway());
    let accepted = || {
        mesh.unary_calls_handled(
            Component::Identity,
            "palisade.identity.v1.ApiKeyService",
            "VerifyApiKey",
            "OK",
        )
    };
    let key = mesh.operator_key().to_owned();
    let list =
        |client: &str| forwarded_for(with_api_key(ListTenantsRequest::default(), &key), client);

    // Identity accepts the key (asked from elsewhere); each time its trust lapses, it is
    // asked again.
    tenants
        .list_tenants(with_api_key(ListTenantsRequest::default(), &key))
        .await?;
    let before = accepted().await?;
    for _ in 0..3 {
        tokio::time::sleep(TTL + Duration::from_millis(50)).await;
        tenants.list_tenants(list("203.0.113.20")).await?;
    }
    assert_eq!(accepted().await? - before, 3);
    // None of that came out of the client's public calls: its one is still there.
    auth.get_jwks(jwks_request_from("203.0.113.20")).await?;
    let refused = expect_code(
        auth.get_jwks(jwks_request_from("203.0.113.20")).await,
        Code::ResourceExhausted,
    );
    assert_eq!(reason(&refused), "CLIENT_RATE_LIMITED");

    // A public call presenting a made-up key pays for asking about it, and that is all.
    let made_up = format!("pal_{}_{}", "0".repeat(32), "c".repeat(64));
    auth.get_jwks(forwarded_for(
        with_api_key(GetJwksRequest {}, &made_up),
        "203.0.113.21",
    ))
    .await?;
    expect_code(
        auth.get_jwks(jwks_request_from("203.0.113.21")).await,
        Code::ResourceExhausted,
    );
    mesh.stop().await
}

/// The free second look is once per acceptance: a key identity refuses on it (here, its owner
/// was disabled) costs its client a public call each time it is asked about again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_costs_its_client_again() -> anyhow::Result<()> {
    let mesh = mesh_with_lapsing_keys().await?;
    TenantServiceClient::new(mesh.gateway())
        .create_tenant(mesh.as_operator(new_tenant("acme", "Acme", Plan::Professional)))
        .await?;
    let mut users = UserServiceClient::new(mesh.gateway());
    let kim = users
        .create_user(mesh.as_operator(new_user("acme", "kim@acme.example", &["manager"])))
        .await?
        .into_inner();
    // Each setup call from a client of its own: the one under test starts with a full bucket.
    let token = AuthServiceClient::new(mesh.gateway())
        .login(forwarded_for(
            tonic::Request::new(login_request("acme", "kim@acme.example")),
            "203.0.113.31",
        ))
        .await?
        .into_inner()
        .access_token;
    let key = own_key(&mesh, &token, "kim's key", "identity.users.get").await?;
    let get_kim = || {
        with_api_key(
            GetUserRequest {
                name: kim.name.clone(),
            },
            &key,
        )
    };
    // Accepted (asked from elsewhere), then its owner is disabled.
    users
        .get_user(forwarded_for(get_kim(), "203.0.113.32"))
        .await?;
    let mut disabled = kim.clone();
    disabled.state = UserState::Disabled as i32;
    users
        .update_user(mesh.as_operator(UpdateUserRequest {
            user: Some(disabled),
            update_mask: Some(FieldMask {
                paths: vec!["state".into()],
            }),
        }))
        .await?;
    tokio::time::sleep(TTL + Duration::from_millis(50)).await;

    // The lapsed key's second look is free and refused; the next look costs the client its
    // one public call, and the one after that is over its rate.
    let mut codes = Vec::new();
    for _ in 0..3 {
        let status = users
            .get_user(forwarded_for(get_kim(), "203.0.113.30"))
            .await
            .expect_err("a disabled owner's key is refused");
        codes.push(status.code());
    }
    assert_eq!(
        codes,
        [
            Code::Unauthenticated,
            Code::Unauthenticated,
            Code::ResourceExhausted
        ]
    );
    mesh.stop().await
}

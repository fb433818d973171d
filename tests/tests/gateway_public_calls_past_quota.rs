//! Public calls (`Login`, `Logout`, `RefreshToken`, `RevokeToken`, …) are never refused for
//! their tenant's quota or rate, also when made with the tenant's credential: a user of a
//! tenant that has used its month's calls, or its second's, can still sign out. Such a call is made as one without a
//! credential would be, within its client's rate.

mod common;

use common::{expect_code, new_tenant, reason};
use palisade_proto::palisade::identity::v1::{
    AuthTokens, CreateUserRequest, GetUserRequest, LoginRequest, LogoutRequest, Plan,
    RefreshTokenRequest, RevokeTokenRequest, User, auth_service_client::AuthServiceClient,
    tenant_service_client::TenantServiceClient, user_service_client::UserServiceClient,
};
use palisade_testkit::Mesh;
use tonic::Code;

const PASSWORD: &str = "correct horse battery staple";
const EMAIL: &str = "ada@initech.example";

fn with_bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}").parse().expect("tokens are ascii");
    request.metadata_mut().insert("authorization", value);
    request
}

/// Tenant `initech` on the free plan with `limits` overriding it, and its admin (returned).
async fn tenant_with_limits(mesh: &Mesh, limits: &[(&str, i64)]) -> anyhow::Result<User> {
    let mut tenant = new_tenant("initech", "Initech", Plan::Free);
    if let Some(tenant) = tenant.tenant.as_mut() {
        tenant.limit_overrides = limits
            .iter()
            .map(|(limit, value)| ((*limit).to_owned(), *value))
            .collect();
    }
    TenantServiceClient::new(mesh.gateway())
        .create_tenant(mesh.as_operator(tenant))
        .await?;
    let admin = UserServiceClient::new(mesh.gateway())
        .create_user(mesh.as_operator(CreateUserRequest {
            parent: "tenants/initech".into(),
            user: Some(User {
                email: EMAIL.into(),
                display_name: "Ada".into(),
                roles: vec!["admin".into()],
                ..User::default()
            }),
            password: PASSWORD.into(),
        }))
        .await?
        .into_inner();
    Ok(admin)
}

/// Ends the session of `refresh_token` with `Logout`, sent with `signed_in`'s access token,
/// and checks that it ended: the refresh token is refused afterwards.
async fn sign_out(
    auth: &mut AuthServiceClient<tonic::transport::Channel>,
    signed_in: &AuthTokens,
    refresh_token: String,
) -> anyhow::Result<()> {
    let logout = LogoutRequest {
        refresh_token: refresh_token.clone(),
    };
    auth.logout(with_bearer(logout, &signed_in.access_token))
        .await?;
    let ended = auth
        .refresh_token(RefreshTokenRequest { refresh_token })
        .await;
    expect_code(ended, Code::Unauthenticated);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_of_a_tenant_past_its_quota_can_still_sign_out() -> anyhow::Result<()> {
    // Room for the public calls below before the last, which the client's rate refuses.
    let mesh = Mesh::builder().with_public_call_rate(1, 5).start().await?;
    let admin = tenant_with_limits(&mesh, &[("api_calls_per_month", 1)]).await?;
    let mut auth = AuthServiceClient::new(mesh.gateway());
    let login = LoginRequest {
        tenant_id: "initech".into(),
        email: EMAIL.into(),
        password: PASSWORD.into(),
    };
    let signed_in: AuthTokens = auth.login(login.clone()).await?.into_inner();
    let other_session = auth.login(login).await?.into_inner();

    // The month's one call, then the quota refuses.
    let mut users = UserServiceClient::new(mesh.gateway());
    let get_self = || {
        with_bearer(
            GetUserRequest {
                name: admin.name.clone(),
            },
            &signed_in.access_token,
        )
    };
    users.get_user(get_self()).await?;
    let refused = expect_code(users.get_user(get_self()).await, Code::ResourceExhausted);
    assert_eq!(reason(&refused), "QUOTA_EXCEEDED");

    // Logout, sent with the credential as clients send it with every call, ends the session.
    sign_out(&mut auth, &signed_in, other_session.refresh_token).await?;

    // Such calls are the client's to pay for: its rate, not the tenant's quota, refuses them.
    let refused = loop {
        let revoke = RevokeTokenRequest {
            token: signed_in.access_token.clone(),
        };
        if let Err(status) = auth
            .revoke_token(with_bearer(revoke, &signed_in.access_token))
            .await
        {
            break status;
        }
    };
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(reason(&refused), "CLIENT_RATE_LIMITED");
    mesh.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_of_a_tenant_past_its_rate_can_still_sign_out() -> anyhow::Result<()> {
    let mesh = Mesh::builder().start().await?;
    let admin =
        tenant_with_limits(&mesh, &[("requests_per_second", 1), ("request_burst", 1)]).await?;
    let mut auth = AuthServiceClient::new(mesh.gateway());
    let login = LoginRequest {
        tenant_id: "initech".into(),
        email: EMAIL.into(),
        password: PASSWORD.into(),
    };
    let signed_in = auth.login(login.clone()).await?.into_inner();
    let other_session = auth.login(login).await?.into_inner();
    let mut users = UserServiceClient::new(mesh.gateway());
    let get_self = || {
        with_bearer(
            GetUserRequest {
                name: admin.name.clone(),
            },
            &signed_in.access_token,
        )
    };
    // Until the tenant's rate refuses (its one token a second spent), then at once a Logout
    // with the same credential; should a second pass in between, the bucket has a token
    // again and the Logout passes on the tenant's rate, as it would have anyway.
    let refused = loop {
        if let Err(status) = users.get_user(get_self()).await {
            break status;
        }
    };
    assert_eq!(reason(&refused), "RATE_LIMITED", "{refused:?}");
    sign_out(&mut auth, &signed_in, other_session.refresh_token).await?;
    mesh.stop().await?;
    Ok(())
}

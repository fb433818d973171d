//! What the gateway enforces per tenant: its rate (a token bucket: RESOURCE_EXHAUSTED with
//! `QuotaFailure` and `RetryInfo` over gRPC, 429 with `Retry-After` over REST, `Retry-After`
//! on gRPC-Web's trailers-only answer) without touching other tenants, its monthly quota (the
//! calls reported to identity, as `GetUsage` shows), its state (a suspended tenant's tokens stop
//! working within the directory's TTL), and the host names that name it for public calls.

mod common;

use std::{collections::HashMap, time::Duration};

use common::{expect_code, reason, violated_fields};
use palisade_proto::palisade::identity::v1::{
    CreateTenantRequest, CreateUserRequest, GetJwksRequest, GetUsageRequest, GetUserRequest,
    LoginRequest, Plan, Tenant, TenantState, UpdateTenantRequest, User,
    auth_service_client::AuthServiceClient, tenant_service_client::TenantServiceClient,
    user_service_client::UserServiceClient,
};
use palisade_testkit::{Component, Mesh, eventually, http_request};
use prost::Message;
use tonic::{Code, Status, transport::Endpoint};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest,
};
use tonic_types::StatusExt;

const PASSWORD: &str = "correct horse battery staple";

/// Creates tenant `id` (free plan, with `limits` overriding it, and `domain`) and its admin,
/// signs the admin in and returns (access token, the admin's name).
async fn tenant_with_admin(
    mesh: &Mesh,
    id: &str,
    limits: &[(&str, i64)],
    domain: &str,
) -> anyhow::Result<(String, String)> {
    let tenant = Tenant {
        display_name: id.to_owned(),
        plan: Plan::Free as i32,
        domain: domain.to_owned(),
        limit_overrides: limits.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        ..Tenant::default()
    };
    TenantServiceClient::new(mesh.gateway())
        .create_tenant(mesh.as_operator(CreateTenantRequest {
            tenant: Some(tenant),
            tenant_id: id.to_owned(),
        }))
        .await?;
    let admin = UserServiceClient::new(mesh.gateway())
        .create_user(mesh.as_operator(CreateUserRequest {
            parent: format!("tenants/{id}"),
            user: Some(User {
                email: email(id),
                display_name: "Admin".into(),
                roles: vec!["admin".into()],
                ..User::default()
            }),
            password: PASSWORD.into(),
        }))
        .await?
        .into_inner();
    let tokens = AuthServiceClient::new(mesh.gateway())
        .login(LoginRequest {
            tenant_id: id.to_owned(),
            email: email(id),
            password: PASSWORD.into(),
        })
        .await?
        .into_inner();
    Ok((tokens.access_token, admin.name))
}

fn email(tenant: &str) -> String {
    format!("admin@{tenant}.example.com")
}

fn with_bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}").parse().expect("tokens are ascii");
    request.metadata_mut().insert("authorization", value);
    request
}

/// Reads the signed-in admin itself: a cheap call made with the tenant's credential.
async fn get_self(mesh: &Mesh, token: &str, name: &str) -> Result<User, Status> {
    let request = with_bearer(GetUserRequest { name: name.into() }, token);
    let user = UserServiceClient::new(mesh.gateway())
        .get_user(request)
        .await?;
    Ok(user.into_inner())
}

/// Calls `get_self` until the first refusal (at most `max` calls): (calls let through, refusal).
async fn until_refused(mesh: &Mesh, token: &str, name: &str, max: usize) -> (usize, Status) {
    for passed in 0..max {
        if let Err(status) = get_self(mesh, token, name).await {
            return (passed, status);
        }
    }
    panic!("{max} calls were all let through");
}

fn assert_exhausted(status: &Status, expected_reason: &str, tenant: &str) -> Duration {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(status), expected_reason);
    let details = status.get_error_details();
    let violations = &details.quota_failure().expect("a QuotaFailure").violations;
    assert_eq!(violations[0].subject, format!("tenants/{tenant}"));
    details
        .retry_info()
        .and_then(|info| info.retry_delay)
        .expect("a RetryInfo with a delay")
}

async fn rest_get(
    mesh: &Mesh,
    path: &str,
    token: &str,
) -> anyhow::Result<palisade_testkit::HttpResponse> {
    let auth = format!("Bearer {token}");
    http_request(
        mesh.addr(Component::Gateway),
        "GET",
        path,
        &[("authorization", &auth)],
        b"",
    )
    .await
}

/// A call refused for a malformed `grpc-timeout` is refused before it is charged: it uses up
/// none of its tenant's rate (nor, counted in the same step, its monthly quota).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_with_a_malformed_deadline_costs_no_rate() -> anyhow::Result<()> {
    let mesh = Mesh::builder().start().await?;
    let limits = [("requests_per_second", 1), ("request_burst", 3)];
    let (acme, acme_admin) = tenant_with_admin(&mesh, "acme", &limits, "").await?;
    for _ in 0..10 {
        let mut request = with_bearer(
            GetUserRequest {
                name: acme_admin.clone(),
            },
            &acme,
        );
        request
            .metadata_mut()
            .insert("grpc-timeout", "soon".parse()?);
        let refused = UserServiceClient::new(mesh.gateway())
            .get_user(request)
            .await;
        assert_eq!(
            violated_fields(&expect_code(refused, Code::InvalidArgument)),
            ["grpc-timeout"]
        );
    }
    get_self(&mesh, &acme, &acme_admin).await?;
    mesh.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_rate_is_refused_and_others_are_not() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let limits = [("requests_per_second", 2), ("request_burst", 3)];
        let (acme, acme_admin) = tenant_with_admin(&mesh, "acme", &limits, "").await?;
        let (globex, globex_admin) = tenant_with_admin(&mesh, "globex", &[], "").await?;

        // The burst passes, then the bucket is empty; the next token is at most 1/2 s away.
        let (passed, refused) = until_refused(&mesh, &acme, &acme_admin, 20).await;
        assert!(passed >= 3, "only {passed} calls passed");
        let retry = assert_exhausted(&refused, "RATE_LIMITED", "acme");
        assert!(
            retry > Duration::ZERO && retry <= Duration::from_millis(500),
            "{retry:?}"
        );
        // At the same moment, another tenant on the same gateway is unaffected.
        get_self(&mesh, &globex, &globex_admin).await?;

        // REST: 429, whole seconds in `Retry-After`, grpc-gateway's body with the details.
        let path = format!("/v1/{acme_admin}");
        let mut answer = rest_get(&mesh, &path, &acme).await?;
        for _ in 0..20 {
            if answer.status == 429 {
                break;
            }
            answer = rest_get(&mesh, &path, &acme).await?;
        }
        assert_eq!(answer.status, 429, "{}", answer.text());
        assert_eq!(answer.header("retry-after"), Some("1"));
        let body: serde_json::Value = serde_json::from_slice(&answer.body)?;
        assert_eq!(body["code"], Code::ResourceExhausted as i32);
        let types: Vec<&str> = body["details"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|detail| detail["@type"].as_str())
            .collect();
        assert!(
            types.contains(&"type.googleapis.com/google.rpc.QuotaFailure"),
            "{body}"
        );
        assert!(
            types.contains(&"type.googleapis.com/google.rpc.RetryInfo"),
            "{body}"
        );

        // gRPC-Web: the refusal stays a 200 with the status in the headers (what gRPC-Web
        // clients read), plus `Retry-After`.
        let mut answer = grpc_web_get_user(&mesh, &acme, &acme_admin).await?;
        for _ in 0..20 {
            if answer.header("grpc-status") == Some("8") {
                break;
            }
            answer = grpc_web_get_user(&mesh, &acme, &acme_admin).await?;
        }
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.header("grpc-status"),
            Some("8"),
            "{:?}",
            answer.headers
        );
        assert_eq!(answer.header("retry-after"), Some("1"));

        // Each refusal is counted by reason.
        let (_, metrics) = mesh.admin_get(Component::Gateway, "/metrics").await?;
        let line = metrics
            .lines()
            .find(|line| {
                line.starts_with("palisade_gateway_throttled_total")
                    && line.contains(r#"reason="rate_limited""#)
            })
            .unwrap_or_else(|| panic!("no rate_limited counter in {metrics}"));
        let count: f64 = line.rsplit(' ').next().unwrap().parse()?;
        assert!(count >= 3.0, "{line}");
        mesh.stop().await?;
    }
    Ok(())
}

async fn grpc_web_get_user(
    mesh: &Mesh,
    token: &str,
    name: &str,
) -> anyhow::Result<palisade_testkit::HttpResponse> {
    let message = GetUserRequest { name: name.into() }.encode_to_vec();
    let mut frame = vec![0];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    let auth = format!("Bearer {token}");
    http_request(
        mesh.addr(Component::Gateway),
        "POST",
        "/palisade.identity.v1.UserService/GetUser",
        &[
            ("content-type", "application/grpc-web+proto"),
            ("authorization", &auth),
        ],
        &frame,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_monthly_quota_is_refused_until_the_month_ends() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let limits = [("api_calls_per_month", 5)];
        let (token, admin) = tenant_with_admin(&mesh, "initech", &limits, "").await?;

        // Login is public and not charged: all five calls are the admin's.
        let (passed, refused) = until_refused(&mesh, &token, &admin, 20).await;
        assert_eq!(passed, 5);
        let retry = assert_exhausted(&refused, "QUOTA_EXCEEDED", "initech");
        assert!(
            retry > Duration::ZERO && retry <= Duration::from_secs(31 * 24 * 3600),
            "{retry:?}"
        );
        let again = expect_code(
            get_self(&mesh, &token, &admin).await,
            Code::ResourceExhausted,
        );
        assert_eq!(reason(&again), "QUOTA_EXCEEDED");

        // The calls reach identity's usage within about a second; refusals are not counted.
        let usage = TenantServiceClient::new(mesh.gateway());
        let calls = eventually(Duration::from_secs(10), || {
            let mut usage = usage.clone();
            let request = mesh.as_operator(GetUsageRequest {
                name: "tenants/initech/usage".into(),
            });
            async move {
                let metrics: HashMap<String, (i64, i64)> = usage
                    .get_usage(request)
                    .await?
                    .into_inner()
                    .metrics
                    .into_iter()
                    .map(|m| (m.metric, (m.used, m.limit)))
                    .collect();
                let calls = metrics["api_calls_per_month"];
                Ok((calls.0 >= 5).then_some(calls))
            }
        })
        .await?;
        assert_eq!(calls, (5, 5));
        mesh.stop().await?;
    }
    Ok(())
}

/// A gateway channel whose calls carry `host` as their `:authority`.
fn gateway_as(mesh: &Mesh, host: &str) -> anyhow::Result<tonic::transport::Channel> {
    let endpoint = Endpoint::from_shared(format!("http://{}", mesh.addr(Component::Gateway)))?
        .origin(format!("http://{host}").parse()?);
    Ok(endpoint.connect_lazy())
}

fn login(tenant_id: &str, email: &str) -> LoginRequest {
    LoginRequest {
        tenant_id: tenant_id.into(),
        email: email.into(),
        password: PASSWORD.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_takes_the_tenant_from_the_host_name() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder
            .with_tenant_base_domain("tenants.test")
            .start()
            .await?;
        let (_, admin) = tenant_with_admin(&mesh, "hooli", &[], "login.hooli.io").await?;
        tenant_with_admin(&mesh, "acme", &[], "").await?;
        let hooli = email("hooli");

        // The tenant's own domain (any case, any port) and `<tenant>.<base domain>`.
        for host in [
            "login.hooli.io",
            "LOGIN.Hooli.io:8443",
            "hooli.tenants.test",
        ] {
            let mut auth = AuthServiceClient::new(gateway_as(&mesh, host)?);
            let tokens = auth.login(login("", &hooli)).await?.into_inner();
            assert_eq!(tokens.user, admin, "{host}");
            // Naming the same tenant as the host is fine; another one is not.
            auth.login(login("hooli", &hooli)).await?;
            let status = expect_code(
                auth.login(login("acme", &hooli)).await,
                Code::InvalidArgument,
            );
            assert_eq!(violated_fields(&status), ["tenant_id"], "{host}");
        }
        // A host that names no tenant leaves the tenant to the request, as before.
        for host in ["nobody.example.com", "nobody.tenants.test", "127.0.0.1"] {
            let mut auth = AuthServiceClient::new(gateway_as(&mesh, host)?);
            let status = expect_code(auth.login(login("", &hooli)).await, Code::InvalidArgument);
            assert_eq!(violated_fields(&status), ["tenant_id"], "{host}");
            auth.login(login("hooli", &hooli)).await?;
        }

        // REST, with the HTTP/1.1 `Host` header.
        let body = serde_json::json!({"email": hooli, "password": PASSWORD}).to_string();
        let answer = http_request(
            mesh.addr(Component::Gateway),
            "POST",
            "/v1/auth:login",
            &[
                ("host", "login.hooli.io"),
                ("content-type", "application/json"),
            ],
            body.as_bytes(),
        )
        .await?;
        assert_eq!(answer.status, 200, "{}", answer.text());
        let tokens: serde_json::Value = serde_json::from_slice(&answer.body)?;
        assert_eq!(tokens["user"], admin.as_str());
        mesh.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_tenants_tokens_stop_working_within_the_cache_ttl() -> anyhow::Result<()> {
    const TTL: Duration = Duration::from_millis(300);
    for builder in Mesh::each_backend() {
        let mesh = builder.with_tenant_cache_ttl(TTL).start().await?;
        let (token, admin) = tenant_with_admin(&mesh, "umbrella", &[], "").await?;
        get_self(&mesh, &token, &admin).await?;

        let set_state = |state: TenantState| {
            mesh.as_operator(UpdateTenantRequest {
                tenant: Some(Tenant {
                    name: "tenants/umbrella".into(),
                    state: state as i32,
                    ..Tenant::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["state".into()],
                }),
            })
        };
        let mut tenants = TenantServiceClient::new(mesh.gateway());
        let mut jwks = AuthServiceClient::new(mesh.gateway());
        // A public call with the tenant's credential: only the gateway has a reason to refuse it.
        jwks.get_jwks(with_bearer(GetJwksRequest {}, &token))
            .await?;
        tenants
            .update_tenant(set_state(TenantState::Suspended))
            .await?;
        let suspended_at = std::time::Instant::now();
        let refused = eventually(Duration::from_secs(10), || {
            let mut jwks = jwks.clone();
            let request = with_bearer(GetJwksRequest {}, &token);
            async move { Ok(jwks.get_jwks(request).await.err()) }
        })
        .await?;
        // Within the TTL (plus the time a call takes on a busy machine).
        assert!(suspended_at.elapsed() < TTL + Duration::from_secs(2));
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert_eq!(reason(&refused), "TENANT_SUSPENDED");
        let status = expect_code(
            get_self(&mesh, &token, &admin).await,
            Code::PermissionDenied,
        );
        assert_eq!(reason(&status), "TENANT_SUSPENDED");

        // Active again: the same token works again.
        tenants
            .update_tenant(set_state(TenantState::Active))
            .await?;
        eventually(Duration::from_secs(10), || async {
            Ok(get_self(&mesh, &token, &admin).await.ok())
        })
        .await?;
        mesh.stop().await?;
    }
    Ok(())
}

/// Public calls without a credential pay no tenant's rate, so each client address has one:
/// over it, `Login` and the other public methods are refused with the client as the subject,
/// whatever credential they carry, while calls that need a credential pay only their tenant's
/// rate (once their key, if any, is trusted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_public_call_rate_is_refused_whatever_it_carries() -> anyhow::Result<()> {
    let mesh = Mesh::builder().with_public_call_rate(1, 3).start().await?;
    // Signs the admin in: one of the three public calls the burst allows.
    let (acme, acme_admin) = tenant_with_admin(&mesh, "acme", &[], "").await?;
    let mut auth = AuthServiceClient::new(mesh.gateway());
    let mut passed = 0;
    let refused = loop {
        match auth.get_jwks(GetJwksRequest {}).await {
            Ok(_) => passed += 1,
            Err(status) => break status,
        }
        assert!(passed < 10, "{passed} public calls were all let through");
    };
    assert!(passed <= 2, "{passed} calls passed after the login");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(reason(&refused), "CLIENT_RATE_LIMITED");
    // A credential does not lift it (its tenant's rate may be far higher, or unlimited).
    let with_token = auth
        .login(with_bearer(login("acme", &email("acme")), &acme))
        .await;
    assert_eq!(
        reason(&expect_code(with_token, Code::ResourceExhausted)),
        "CLIENT_RATE_LIMITED"
    );
    let details = refused.get_error_details();
    let violations = &details.quota_failure().expect("a QuotaFailure").violations;
    assert_eq!(violations[0].subject, "clients/127.0.0.1");
    let retry = details
        .retry_info()
        .and_then(|info| info.retry_delay)
        .expect("a RetryInfo with a delay");
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_secs(1),
        "{retry:?}"
    );

    // A client cannot pass for another by naming it: the gateway trusts no proxy here.
    let mut spoofed = tonic::Request::new(GetJwksRequest {});
    spoofed
        .metadata_mut()
        .insert("x-forwarded-for", "198.51.100.1".parse()?);
    let spoof_refused = expect_code(auth.get_jwks(spoofed).await, Code::ResourceExhausted);
    let details = spoof_refused.get_error_details();
    assert_eq!(
        details.quota_failure().expect("a QuotaFailure").violations[0].subject,
        "clients/127.0.0.1"
    );

    // Login shares the client's rate, over REST too (429 with `Retry-After`).
    let login_refused = expect_code(
        auth.login(login("acme", &email("acme"))).await,
        Code::ResourceExhausted,
    );
    assert_eq!(reason(&login_refused), "CLIENT_RATE_LIMITED");
    let body =
        serde_json::json!({"tenantId": "acme", "email": email("acme"), "password": PASSWORD});
    let answer = http_request(
        mesh.addr(Component::Gateway),
        "POST",
        "/v1/auth:login",
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    )
    .await?;
    assert_eq!(answer.status, 429, "{}", answer.text());
    assert_eq!(answer.header("retry-after"), Some("1"));

    // A made-up API key would cost identity a lookup, so the client pays for it as for a
    // public call, and over its rate is refused before identity is asked.
    let made_up = format!("pal_{}_{}", "a".repeat(32), "b".repeat(64));
    let mut request = tonic::Request::new(GetUserRequest {
        name: "tenants/acme/users/nobody".to_owned(),
    });
    request.metadata_mut().insert("x-api-key", made_up.parse()?);
    let key_refused = expect_code(
        UserServiceClient::new(mesh.gateway())
            .get_user(request)
            .await,
        Code::ResourceExhausted,
    );
    assert_eq!(reason(&key_refused), "CLIENT_RATE_LIMITED");
    // So does a reflection stream, which needs no credential and answers with the whole
    // mesh's descriptors.
    let reflection = ServerReflectionClient::new(mesh.gateway())
        .server_reflection_info(tokio_stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }]))
        .await;
    assert_eq!(
        reason(&expect_code(reflection, Code::ResourceExhausted)),
        "CLIENT_RATE_LIMITED"
    );

    // A call that needs its credential pays only its tenant's rate.
    UserServiceClient::new(mesh.gateway())
        .get_user(with_bearer(GetUserRequest { name: acme_admin }, &acme))
        .await?;

    // The client's bucket refills at its rate.
    tokio::time::sleep(retry + Duration::from_millis(50)).await;
    auth.get_jwks(GetJwksRequest {}).await?;

    let (_, metrics) = mesh.admin_get(Component::Gateway, "/metrics").await?;
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("palisade_gateway_throttled_total")
                && line.contains(r#"reason="client_rate_limited""#)),
        "{metrics}"
    );
    mesh.stop().await?;
    Ok(())
}

/// Behind a load balancer the gateway is told to trust, each client it forwards for has its
/// own public-call rate (and is the address audit records), read from `X-Forwarded-For`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_rate() -> anyhow::Result<()> {
    let mesh = Mesh::builder()
        .with_public_call_rate(1, 2)
        .with_trusted_proxies(&["127.0.0.0/8"])
        .start()
        .await?;
    let mut auth = AuthServiceClient::new(mesh.gateway());
    let forwarded_for = |chain: &str| -> anyhow::Result<tonic::Request<GetJwksRequest>> {
        let mut request = tonic::Request::new(GetJwksRequest {});
        request
            .metadata_mut()
            .insert("x-forwarded-for", chain.parse()?);
        Ok(request)
    };
    // The first entry is the client's own claim; the balancer appended what it saw.
    for _ in 0..2 {
        auth.get_jwks(forwarded_for("192.0.2.1, 203.0.113.7")?)
            .await?;
    }
    let refused = expect_code(
        auth.get_jwks(forwarded_for("192.0.2.2, 203.0.113.7")?)
            .await,
        Code::ResourceExhausted,
    );
    let details = refused.get_error_details();
    assert_eq!(
        details.quota_failure().expect("a QuotaFailure").violations[0].subject,
        "clients/203.0.113.7"
    );
    // Another client behind the same balancer is unaffected, and so is the balancer itself.
    auth.get_jwks(forwarded_for("203.0.113.8")?).await?;
    auth.get_jwks(GetJwksRequest {}).await?;
    mesh.stop().await?;
    Ok(())
}

//! No log line and no exported span ever contains a credential. Runs the real `palisade dev`
//! binary with debug logging and OTLP export, uses the operator key (both header forms) and a
//! forged key, creates a user and an API key (and uses it), signs in (with a wrong password, then the right one), uses the
//! access token and refreshes it, then searches everything the mesh wrote and sent for the
//! secrets.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use palisade_proto::palisade::identity::v1::{
    ApiKey, CreateApiKeyRequest, CreateTenantRequest, CreateUserRequest, GetTenantRequest,
    ListTenantsRequest, LoginRequest, RefreshTokenRequest, Tenant, User,
    api_key_service_client::ApiKeyServiceClient, auth_service_client::AuthServiceClient,
    tenant_service_client::TenantServiceClient, user_service_client::UserServiceClient,
};
use palisade_testkit::{eventually, free_port_base, otlp::OtlpReceiver, with_api_key};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_reach_logs_or_spans() -> anyhow::Result<()> {
    let (receiver, endpoint) = OtlpReceiver::start().await?;
    let dir = tempfile::tempdir()?;
    let base = free_port_base();
    let stdout = std::fs::File::create(dir.path().join("dev.out"))?;
    let stderr = std::fs::File::create(dir.path().join("dev.log"))?;
    let mut child = palisade_testkit::palisade_command(env!("CARGO_BIN_EXE_palisade"))
        .args(["dev", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--port-base", &base.to_string()])
        .env("RUST_LOG", "debug")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()?;
    let key_file = dir.path().join("data/operator-api-key");
    let up = eventually(Duration::from_secs(30), || async {
        let banner = std::fs::read_to_string(dir.path().join("dev.out")).unwrap_or_default();
        Ok(banner.contains("mesh is up").then_some(()))
    })
    .await;
    if up.is_err() {
        let _ = child.kill();
        anyhow::bail!(
            "palisade dev did not start:\n{}",
            std::fs::read_to_string(dir.path().join("dev.log"))?
        );
    }
    let key = std::fs::read_to_string(&key_file)?.trim().to_owned();
    let (_, secret) = key
        .strip_prefix("pal_")
        .and_then(|rest| rest.split_once('_'))
        .expect("pal_<id>_<secret>");
    let forged = format!("{}_{}", &key[..key.len() - 64], "f".repeat(64));

    let gateway = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{base}"))?
        .connect()
        .await?;
    let mut tenants = TenantServiceClient::new(gateway.clone());
    let tenant = Tenant {
        display_name: "Acme".into(),
        ..Tenant::default()
    };
    let create = CreateTenantRequest {
        tenant: Some(tenant),
        tenant_id: "acme".into(),
    };
    tenants.create_tenant(with_api_key(create, &key)).await?;
    let mut by_header = tonic::Request::new(ListTenantsRequest::default());
    by_header.metadata_mut().insert("x-api-key", key.parse()?);
    tenants.list_tenants(by_header).await?;
    let refused = tenants
        .list_tenants(with_api_key(ListTenantsRequest::default(), &forged))
        .await;
    assert_eq!(
        refused.map(drop).unwrap_err().code(),
        tonic::Code::Unauthenticated
    );

    let password = "a password nobody may log";
    let wrong_password = "a wrong password nobody may log";
    let create_user = CreateUserRequest {
        parent: "tenants/acme".into(),
        user: Some(User {
            email: "ada@example.com".into(),
            display_name: "Ada".into(),
            roles: vec!["viewer".into()],
            ..User::default()
        }),
        password: password.into(),
    };
    UserServiceClient::new(gateway.clone())
        .create_user(with_api_key(create_user, &key))
        .await?;
    // A key minted through the API: its secret is in the response only.
    let mut create_key = CreateApiKeyRequest {
        parent: "tenants/acme".into(),
        api_key: Some(ApiKey {
            display_name: "robot".into(),
            scopes: vec!["identity.tenants.get".into()],
            owner: "tenants/acme".into(),
            ..ApiKey::default()
        }),
        ttl: Some(Default::default()),
    };
    if let Some(ttl) = create_key.ttl.as_mut() {
        ttl.seconds = 3600;
    }
    let minted = ApiKeyServiceClient::new(gateway.clone())
        .create_api_key(with_api_key(create_key, &key))
        .await?
        .into_inner()
        .key;
    let get_acme = GetTenantRequest {
        name: "tenants/acme".into(),
    };
    tenants.get_tenant(with_api_key(get_acme, &minted)).await?;
    let mut auth = AuthServiceClient::new(gateway);
    let login = |password: &str| LoginRequest {
        tenant_id: "acme".into(),
        email: "ada@example.com".into(),
        password: password.into(),
    };
    let wrong = auth.login(login(wrong_password)).await;
    assert_eq!(
        wrong.map(drop).unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    let first = auth.login(login(password)).await?.into_inner();
    let mut by_token = tonic::Request::new(ListTenantsRequest::default());
    by_token.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", first.access_token).parse()?,
    );
    tenants.list_tenants(by_token).await?;
    let second = auth
        .refresh_token(RefreshTokenRequest {
            refresh_token: first.refresh_token.clone(),
        })
        .await?
        .into_inner();

    // SIGTERM: the mesh drains and flushes its spans on the way out.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    let exited = tokio::task::spawn_blocking(move || child.wait()).await??;
    assert!(exited.success(), "palisade dev exited with {exited}");

    let logs = std::fs::read_to_string(dir.path().join("dev.log"))?;
    let spans = format!("{:?}", receiver.spans());
    assert!(
        logs.contains("tenant created"),
        "the scenario was logged:\n{logs}"
    );
    assert!(
        spans.contains("palisade.identity.v1.TenantService/CreateTenant"),
        "the scenario was traced"
    );
    assert!(logs.contains("user signed in"), "the login was logged");
    let signature = |token: &str| token.rsplit('.').next().unwrap_or_default().to_owned();
    let (first_signature, second_signature) = (
        signature(&first.access_token),
        signature(&second.access_token),
    );
    for (what, needle) in [
        ("operator key", key.as_str()),
        ("operator secret", secret),
        ("forged key", forged.as_str()),
        ("minted api key", minted.as_str()),
        ("minted api key secret", &minted[minted.len() - 64..]),
        ("password", password),
        ("wrong password", wrong_password),
        ("access token signature", first_signature.as_str()),
        (
            "refreshed access token signature",
            second_signature.as_str(),
        ),
        ("refresh token", first.refresh_token.as_str()),
        ("rotated refresh token", second.refresh_token.as_str()),
    ] {
        assert!(!logs.contains(needle), "{what} appears in the logs");
        assert!(!spans.contains(needle), "{what} appears in a span");
    }
    Ok(())
}

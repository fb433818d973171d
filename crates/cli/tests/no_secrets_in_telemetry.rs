//! No log line and no exported span ever contains a credential. Runs the real `palisade dev`
//! binary with debug logging and OTLP export, uses the operator key (both header forms) and a
//! forged key, then searches everything the mesh wrote and sent for the secrets.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use palisade_proto::palisade::identity::v1::{
    CreateTenantRequest, ListTenantsRequest, Tenant, tenant_service_client::TenantServiceClient,
};
use palisade_testkit::{eventually, free_port_base, otlp::OtlpReceiver, with_api_key};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_reach_logs_or_spans() -> anyhow::Result<()> {
    let (receiver, endpoint) = OtlpReceiver::start().await?;
    let dir = tempfile::tempdir()?;
    let base = free_port_base();
    let stdout = std::fs::File::create(dir.path().join("dev.out"))?;
    let stderr = std::fs::File::create(dir.path().join("dev.log"))?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_palisade"))
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
    let mut tenants = TenantServiceClient::new(gateway);
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
    for (what, needle) in [
        ("operator key", key.as_str()),
        ("operator secret", secret),
        ("forged key", forged.as_str()),
    ] {
        assert!(!logs.contains(needle), "{what} appears in the logs");
        assert!(!spans.contains(needle), "{what} appears in a span");
    }
    Ok(())
}

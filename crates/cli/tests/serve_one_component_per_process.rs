//! The cluster shape on one machine: each component in its own `palisade serve` process, wired
//! only by flags, as the Helm chart runs them. A tenant created through the gateway is audited
//! by compliance in another process, and SIGTERM drains every process cleanly.

use std::{
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use palisade_proto::palisade::{
    compliance::v1::{ListAuditEventsRequest, audit_service_client::AuditServiceClient},
    identity::v1::{CreateTenantRequest, Tenant, tenant_service_client::TenantServiceClient},
};
use palisade_testkit::{eventually, with_api_key};

const COMPONENTS: [&str; 4] = ["identity", "compliance", "observability", "gateway"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_in_separate_processes_form_one_mesh() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    let status = palisade_testkit::palisade_command(env!("CARGO_BIN_EXE_palisade"))
        .args(["certs", "init", "--dir"])
        .arg(&certs)
        .status()?;
    assert!(status.success());
    // identity seals its token-signing keys with it (the others ignore the setting).
    std::fs::write(
        dir.path().join("signing.kek"),
        "c2lnbmluZy1rZXkga2VrIG9mIHRoaXMgdGVzdCBvbmw=\n",
    )?;
    let ports: Vec<(u16, u16)> = COMPONENTS
        .iter()
        .map(|_| (free_port(), free_port()))
        .collect();
    let url = |i: usize| format!("http://127.0.0.1:{}", ports[i].0);
    let mut children = Vec::new();
    for (i, component) in COMPONENTS.iter().enumerate() {
        children.push(Process::spawn(
            component,
            dir.path(),
            &certs,
            ports[i],
            [url(0), url(1), url(2), url(3)],
        )?);
    }
    // Identity prints the bootstrap key once on stdout.
    let key = eventually(Duration::from_secs(30), || async {
        let out = std::fs::read_to_string(dir.path().join("identity.out")).unwrap_or_default();
        Ok(out
            .split_whitespace()
            .find(|word| word.starts_with("pal_"))
            .map(str::to_owned))
    })
    .await?;

    let gateway = tonic::transport::Endpoint::from_shared(url(3))?.connect_lazy();
    let create = CreateTenantRequest {
        tenant: Some(Tenant {
            display_name: "Acme".into(),
            ..Tenant::default()
        }),
        tenant_id: "acme".into(),
    };
    let created = eventually(Duration::from_secs(20), || {
        let mut tenants = TenantServiceClient::new(gateway.clone());
        let request = with_api_key(create.clone(), &key);
        async move { Ok(tenants.create_tenant(request).await.ok()) }
    })
    .await?;
    assert_eq!(created.into_inner().name, "tenants/acme");
    let events = eventually(Duration::from_secs(20), || {
        let mut audit = AuditServiceClient::new(gateway.clone());
        let request = with_api_key(
            ListAuditEventsRequest {
                parent: "tenants/acme".into(),
                ..Default::default()
            },
            &key,
        );
        async move {
            let events = audit
                .list_audit_events(request)
                .await
                .map(|r| r.into_inner().audit_events)
                .unwrap_or_default();
            Ok((!events.is_empty()).then_some(events))
        }
    })
    .await?;
    assert_eq!(events[0].source, "identity");

    for child in &mut children {
        child.terminate()?;
    }
    for child in children {
        let (name, exit) = child.wait()?;
        assert!(exit.success(), "{name} exited with {exit}");
    }
    let identity_log = std::fs::read_to_string(dir.path().join("identity.log"))?;
    assert!(
        identity_log.contains("token signing key created")
            && !identity_log.contains("stored unsealed"),
        "identity should have sealed its signing key with the KEK file:\n{identity_log}"
    );
    Ok(())
}

struct Process {
    name: &'static str,
    child: Child,
}

impl Process {
    fn spawn(
        name: &'static str,
        dir: &Path,
        certs: &Path,
        (grpc, admin): (u16, u16),
        urls: [String; 4],
    ) -> anyhow::Result<Process> {
        let child = palisade_testkit::palisade_command(env!("CARGO_BIN_EXE_palisade"))
            .args(["serve", name])
            .args(["--listen", &format!("127.0.0.1:{grpc}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .arg("--certs-dir")
            .arg(certs)
            .arg("--data-dir")
            .arg(dir)
            .args(["--identity-url", &urls[0], "--compliance-url", &urls[1]])
            .args(["--observability-url", &urls[2], "--gateway-url", &urls[3]])
            .env("PALISADE_SIGNING_KEY_KEK_FILE", dir.join("signing.kek"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join(format!("{name}.out")))?)
            .stderr(std::fs::File::create(dir.join(format!("{name}.log")))?)
            .spawn()?;
        Ok(Process { name, child })
    }

    fn terminate(&mut self) -> anyhow::Result<()> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        Ok(())
    }

    fn wait(mut self) -> anyhow::Result<(&'static str, std::process::ExitStatus)> {
        Ok((self.name, self.child.wait()?))
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

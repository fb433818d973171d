//! API keys and tenant isolation: a tenant never sees, revokes or lists another tenant's keys;
//! platform operators see every tenant's and filter them by owner.

mod common;
mod keys_kit;

use common::{expect_code, reason};
use palisade_proto::palisade::identity::v1::{
    GetApiKeyRequest, ListApiKeysRequest, RevokeApiKeyRequest,
    api_key_service_client::ApiKeyServiceClient, user_service_client::UserServiceClient,
};
use palisade_testkit::{Mesh, with_api_key};
use tonic::Code;

use keys_kit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_never_see_each_others_keys() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let (acme, acme_admin) =
            signed_in_user(&mesh, "acme", "ada@acme.example", &["admin"]).await?;
        let (globex, _) = signed_in_user(&mesh, "globex", "gus@globex.example", &["admin"]).await?;
        let mut keys = ApiKeyServiceClient::new(mesh.gateway());
        let acme_key = create(
            &mut keys,
            with_bearer(key_request("acme", "ci", READ_USERS, 5), &acme),
        )
        .await?;
        let name = acme_key.api_key.clone().expect("the key").name;

        let get = keys
            .get_api_key(with_bearer(
                GetApiKeyRequest { name: name.clone() },
                &globex,
            ))
            .await;
        expect_code(get, Code::NotFound);
        let revoke = keys
            .revoke_api_key(with_bearer(
                RevokeApiKeyRequest {
                    name: name.clone(),
                    ..Default::default()
                },
                &globex,
            ))
            .await;
        expect_code(revoke, Code::NotFound);
        let list = keys
            .list_api_keys(with_bearer(
                ListApiKeysRequest {
                    parent: "tenants/acme".into(),
                    ..Default::default()
                },
                &globex,
            ))
            .await;
        assert_eq!(
            reason(&expect_code(list, Code::PermissionDenied)),
            "CROSS_TENANT"
        );
        let create_there = keys
            .create_api_key(with_bearer(
                key_request("acme", "x", READ_USERS, 5),
                &globex,
            ))
            .await;
        assert_eq!(
            reason(&expect_code(create_there, Code::PermissionDenied)),
            "CROSS_TENANT"
        );
        // The acme key reads acme, not globex.
        let elsewhere = UserServiceClient::new(mesh.gateway())
            .list_users(with_api_key(list_users("globex"), &acme_key.key))
            .await;
        expect_code(elsewhere, Code::PermissionDenied);

        // Platform operators see every tenant's keys, and filter them by owner.
        let by_owner = |owner: &str| ListApiKeysRequest {
            parent: "tenants/acme".into(),
            filter: format!("owner = {owner:?}"),
            ..Default::default()
        };
        let mine = keys
            .list_api_keys(mesh.as_operator(by_owner(&acme_admin)))
            .await?
            .into_inner();
        let names: Vec<_> = mine.api_keys.iter().map(|key| key.name.as_str()).collect();
        assert_eq!(names, [name.as_str()]);
        let service = keys
            .list_api_keys(mesh.as_operator(by_owner("tenants/acme")))
            .await?
            .into_inner();
        assert!(service.api_keys.is_empty());
        keys.get_api_key(mesh.as_operator(GetApiKeyRequest { name }))
            .await?;
        mesh.stop().await?;
    }
    Ok(())
}

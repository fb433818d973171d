//! Service-account keys outlive the person who made them, so a key must not be able to keep
//! itself alive: a key created with an API key expires no later than that key, and a chain of
//! keys each minting the next ends when the first would have. Only service-account keys make
//! keys: a user's key holds the user's rights only while the user does.

mod common;
mod keys_kit;

use common::{expect_code, reason, violated_fields};
use palisade_proto::palisade::identity::v1::{
    CreateApiKeyRequest, api_key_service_client::ApiKeyServiceClient,
};
use palisade_testkit::{Mesh, with_api_key};
use tonic::Code;

use keys_kit::*;

/// A service-account key request (owned by the tenant) that may itself create keys.
fn service_account_key(name: &str, ttl_days: i64) -> CreateApiKeyRequest {
    let scopes = ["identity.apikeys.create", "identity.users.list"];
    let mut request = key_request("acme", name, &scopes, ttl_days);
    if let Some(key) = request.api_key.as_mut() {
        key.owner = "tenants/acme".into();
    }
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_made_by_a_key_expires_no_later_than_it() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let (admin, _) = signed_in_user(&mesh, "acme", "ada@example.com", &["admin"]).await?;
        let mut keys = ApiKeyServiceClient::new(mesh.gateway());
        // A person may make a service-account key for up to the maximum lifetime.
        let first = create(
            &mut keys,
            with_bearer(service_account_key("deploys", 10), &admin),
        )
        .await?;
        let first_expiry = first.api_key.unwrap().expire_time.unwrap();

        // That key cannot make one that outlives it, by `ttl` or by `expire_time` ...
        let longer = keys
            .create_api_key(with_api_key(service_account_key("next", 11), &first.key))
            .await;
        assert_eq!(
            violated_fields(&expect_code(longer, Code::InvalidArgument)),
            ["ttl"]
        );
        let mut at = service_account_key("next", 1);
        at.ttl = None;
        if let Some(key) = at.api_key.as_mut() {
            key.expire_time = Some(prost_types::Timestamp {
                seconds: first_expiry.seconds + 60,
                nanos: 0,
            });
        }
        let later = keys.create_api_key(with_api_key(at, &first.key)).await;
        assert_eq!(
            violated_fields(&expect_code(later, Code::InvalidArgument)),
            ["api_key.expire_time"]
        );

        // ... but may make shorter-lived ones, which are bound the same way in turn.
        let second = create(
            &mut keys,
            with_api_key(service_account_key("next", 9), &first.key),
        )
        .await?;
        let third = keys
            .create_api_key(with_api_key(service_account_key("after", 10), &second.key))
            .await;
        expect_code(third, Code::InvalidArgument);

        // A user's key makes none: a service-account key made with it would keep the user's
        // rights past a demotion, and outlive the key's revocation.
        let scopes = ["identity.apikeys.create", "identity.users.list"];
        let personal = create(
            &mut keys,
            with_bearer(key_request("acme", "ada's", &scopes, 5), &admin),
        )
        .await?;
        let made = keys
            .create_api_key(with_api_key(
                service_account_key("detour", 1),
                &personal.key,
            ))
            .await;
        assert_eq!(
            reason(&expect_code(made, Code::PermissionDenied)),
            "PERSONAL_KEY"
        );
        mesh.stop().await?;
    }
    Ok(())
}

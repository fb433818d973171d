//! Bad API-key input through the gateway: each malformed field of `CreateApiKey`, `GetApiKey`,
//! `ListApiKeys` and `RevokeApiKey` is named in `INVALID_ARGUMENT`, and a key's scopes never
//! exceed what its owner and its creator hold.

mod common;
mod keys_kit;

use std::time::Duration;

use common::{expect_code, reason, violated_fields};
use palisade_proto::palisade::identity::v1::{
    ApiKey, CreateApiKeyRequest, GetApiKeyRequest, ListApiKeysRequest, RevokeApiKeyRequest,
    api_key_service_client::ApiKeyServiceClient, user_service_client::UserServiceClient,
};
use palisade_testkit::{Component, Mesh, http_request, with_api_key};
use tonic::Code;

use keys_kit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_key_input_names_the_fields_and_scopes_never_exceed_rights() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder
            .with_api_key_max_lifetime(Duration::from_secs(10 * DAY as u64))
            .start()
            .await?;
        let (admin, admin_name) =
            signed_in_user(&mesh, "acme", "ada@example.com", &["admin"]).await?;
        let (manager, _) = signed_in_user(&mesh, "acme", "mo@example.com", &["manager"]).await?;
        let mut keys = ApiKeyServiceClient::new(mesh.gateway());

        let good = || key_request("acme", "ci", READ_USERS, 5);
        let with_key = |edit: &dyn Fn(&mut ApiKey)| {
            let mut request = good();
            edit(request.api_key.as_mut().expect("a key"));
            request
        };
        let far = prost_types::Timestamp {
            seconds: 4_102_444_800, // 2100-01-01
            nanos: 0,
        };
        let cases: Vec<(CreateApiKeyRequest, Vec<&str>)> = vec![
            (
                CreateApiKeyRequest {
                    ttl: None,
                    ..good()
                },
                vec!["api_key.expire_time"],
            ),
            (key_request("acme", "ci", READ_USERS, 11), vec!["ttl"]),
            (
                CreateApiKeyRequest {
                    ttl: None,
                    ..with_key(&|key| key.expire_time = Some(far))
                },
                vec!["api_key.expire_time"],
            ),
            (
                key_request(
                    "acme",
                    "ci",
                    &["identity.users.get", "identity.users.fly"],
                    5,
                ),
                vec!["api_key.scopes[1]"],
            ),
            (
                key_request("acme", "ci", &["*"], 5),
                vec!["api_key.scopes[0]"],
            ),
            (key_request("acme", "ci", &[], 5), vec!["api_key.scopes"]),
            (
                with_key(&|key| key.display_name = " ".into()),
                vec!["api_key.display_name"],
            ),
            (
                with_key(&|key| key.owner = "tenants/globex".into()),
                vec!["api_key.owner"],
            ),
            (
                CreateApiKeyRequest {
                    parent: "acme".into(),
                    ..good()
                },
                vec!["parent"],
            ),
            (
                CreateApiKeyRequest {
                    api_key: None,
                    ..good()
                },
                vec!["api_key"],
            ),
        ];
        for (request, fields) in cases {
            let result = keys
                .create_api_key(with_bearer(request.clone(), &admin))
                .await;
            let status = expect_code(result, Code::InvalidArgument);
            assert_eq!(violated_fields(&status), fields, "{request:?}");
        }
        for name in [
            "tenants/acme/apiKeys/nope".to_owned(),
            "apiKeys/0192".to_owned(),
            format!("tenants/acme/apiKeys/{}", "A".repeat(32)),
        ] {
            let get = keys
                .get_api_key(with_bearer(GetApiKeyRequest { name: name.clone() }, &admin))
                .await;
            assert_eq!(
                violated_fields(&expect_code(get, Code::InvalidArgument)),
                ["name"]
            );
            let revoke = keys
                .revoke_api_key(with_bearer(
                    RevokeApiKeyRequest {
                        name,
                        ..Default::default()
                    },
                    &admin,
                ))
                .await;
            assert_eq!(
                violated_fields(&expect_code(revoke, Code::InvalidArgument)),
                ["name"]
            );
        }
        for filter in [
            r#"state = "SHINY""#,
            r#"owner = "tenants/globex""#,
            r#"created_with = "tenants/acme""#,
            r#"created_with > "tenants/acme/apiKeys/0123456789abcdef0123456789abcdef""#,
            "color = red",
        ] {
            let list = keys
                .list_api_keys(with_bearer(
                    ListApiKeysRequest {
                        parent: "tenants/acme".into(),
                        filter: filter.into(),
                        ..Default::default()
                    },
                    &admin,
                ))
                .await;
            assert_eq!(
                violated_fields(&expect_code(list, Code::InvalidArgument)),
                ["filter"]
            );
        }

        // Scopes never exceed the owner's rights, nor the creator's.
        let audit_reader = ["identity.users.list", "compliance.audit.list"];
        let wider = keys
            .create_api_key(with_bearer(
                key_request("acme", "mo", &audit_reader, 5),
                &manager,
            ))
            .await;
        let wider = expect_code(wider, Code::InvalidArgument);
        assert_eq!(violated_fields(&wider), ["api_key.scopes[1]"]);
        assert!(
            wider.message().contains("compliance.audit.list"),
            "{wider:?}"
        );
        let service_key = |scopes: &[&str]| {
            let mut request = key_request("acme", "robot", scopes, 5);
            request.api_key.as_mut().expect("a key").owner = "tenants/acme".into();
            request
        };
        let escalation = keys
            .create_api_key(with_bearer(service_key(&audit_reader), &manager))
            .await;
        assert_eq!(
            reason(&expect_code(escalation, Code::PermissionDenied)),
            "SCOPE_ESCALATION"
        );
        let not_owner = keys
            .create_api_key(with_bearer(
                with_key(&|key| key.owner = admin_name.clone()),
                &manager,
            ))
            .await;
        assert_eq!(
            reason(&expect_code(not_owner, Code::PermissionDenied)),
            "NOT_KEY_OWNER"
        );

        // Within its rights, the manager's service-account key works; its name is taken after.
        let robot = create(
            &mut keys,
            with_bearer(service_key(&["identity.users.list"]), &manager),
        )
        .await?;
        let robot_key = robot.api_key.expect("the key");
        assert_eq!(robot_key.owner, "tenants/acme");
        UserServiceClient::new(mesh.gateway())
            .list_users(with_api_key(list_users("acme"), &robot.key))
            .await?;
        let taken = keys
            .create_api_key(with_bearer(service_key(&["identity.users.list"]), &admin))
            .await;
        expect_code(taken, Code::AlreadyExists);
        // Revoked, it gives up its name: a key is replaced by one of the same name.
        keys.revoke_api_key(with_bearer(
            RevokeApiKeyRequest {
                name: robot_key.name,
                ..Default::default()
            },
            &admin,
        ))
        .await?;
        let successor = create(
            &mut keys,
            with_bearer(service_key(&["identity.users.list"]), &admin),
        )
        .await?;
        UserServiceClient::new(mesh.gateway())
            .list_users(with_api_key(list_users("acme"), &successor.key))
            .await?;
        // REST, with the lifetime as a JSON duration; the secret is in this response only.
        let body = r#"{"ttl": "3600s", "apiKey": {"displayName": "rest", "scopes": ["identity.users.get"]}}"#;
        let rest = http_request(
            mesh.addr(Component::Gateway),
            "POST",
            "/v1/tenants/acme/apiKeys",
            &[
                ("authorization", &format!("Bearer {admin}")),
                ("content-type", "application/json"),
            ],
            body.as_bytes(),
        )
        .await?;
        assert_eq!(rest.status, 200, "{}", rest.text());
        let created: serde_json::Value = serde_json::from_slice(&rest.body)?;
        assert!(
            created["key"]
                .as_str()
                .is_some_and(|key| key.starts_with("pal_"))
        );
        assert_eq!(created["apiKey"]["state"], "API_KEY_STATE_ACTIVE");
        mesh.stop().await?;
    }
    Ok(())
}

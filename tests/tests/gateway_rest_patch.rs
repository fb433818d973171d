//! REST PATCH as grpc-gateway does it: without an `updateMask` query parameter, the body's
//! keys are the mask, so `{"domain": ""}` clears the domain; and what a GET returned can be
//! sent back whole with one field changed (AIP-161): output-only fields are ignored (AIP-203),
//! fields another method changes (a user's roles) must come back as they are, and a new value
//! there is refused, with or without a mask.

mod common;

use common::{expect_code, tenant_with_admin, violated_fields};
use palisade_proto::palisade::identity::v1::{
    UpdateUserRequest, User, user_service_client::UserServiceClient,
};
use palisade_testkit::{HttpResponse, Mesh};
use serde_json::Value;
use tonic::Code;

/// A REST request made with the operator's key.
async fn as_operator(
    mesh: &Mesh,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<HttpResponse> {
    common::rest(mesh, method, path, Some(mesh.operator_key()), body).await
}

fn json(response: &HttpResponse) -> Value {
    assert!(
        (200..300).contains(&response.status),
        "{}: {}",
        response.status,
        response.text()
    );
    serde_json::from_slice(&response.body).unwrap()
}

/// The field violations of a 400 response's `BadRequest` detail.
fn violations(response: &HttpResponse) -> Vec<(String, String)> {
    assert_eq!(response.status, 400, "{}", response.text());
    let body: Value = serde_json::from_slice(&response.body).unwrap();
    let details = body["details"].as_array().unwrap();
    let bad_request = (details.iter())
        .find(|detail| detail["@type"] == "type.googleapis.com/google.rpc.BadRequest")
        .expect("a BadRequest detail");
    (bad_request["fieldViolations"].as_array().unwrap().iter())
        .map(|violation| {
            let text = |key: &str| violation[key].as_str().unwrap().to_owned();
            (text("field"), text("description"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_body_is_its_own_mask_and_a_read_resource_can_be_sent_back() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let admin = tenant_with_admin(
            &mesh,
            "acme",
            "ada@example.com",
            "correct horse battery staple",
        )
        .await?;

        // An empty value clears its field when the body names it.
        let set = as_operator(
            &mesh,
            "PATCH",
            "/v1/tenants/acme",
            r#"{"domain": "acme.example.com"}"#,
        )
        .await?;
        assert_eq!(json(&set)["domain"], "acme.example.com");
        let cleared =
            json(&as_operator(&mesh, "PATCH", "/v1/tenants/acme", r#"{"domain": ""}"#).await?);
        assert_eq!(cleared["domain"], "", "{cleared}");
        assert_eq!(cleared["displayName"], "Acme");

        // Read, change one field, send it all back: output-only fields (name, times, the
        // features and limits in effect) come back as they were and change nothing.
        let mut tenant = json(&as_operator(&mesh, "GET", "/v1/tenants/acme", "").await?);
        tenant["displayName"] = "Acme Corp".into();
        let updated =
            json(&as_operator(&mesh, "PATCH", "/v1/tenants/acme", &tenant.to_string()).await?);
        assert_eq!(updated["displayName"], "Acme Corp");
        assert_eq!(updated["createTime"], tenant["createTime"]);

        // A copy read before another change carries that read's etag: sent back, it is told
        // the tenant changed (AIP-154, 409) rather than undoing the change.
        let mut stale = tenant.clone();
        stale["displayName"] = "Acme Again".into();
        let conflict = as_operator(&mesh, "PATCH", "/v1/tenants/acme", &stale.to_string()).await?;
        assert_eq!(conflict.status, 409, "{}", conflict.text());
        // Without its etag it applies, and output-only fields are ignored whatever they say
        // (AIP-203).
        stale.as_object_mut().unwrap().remove("etag");
        stale["createTime"] = "2020-01-01T00:00:00Z".into();
        let again =
            json(&as_operator(&mesh, "PATCH", "/v1/tenants/acme", &stale.to_string()).await?);
        assert_eq!(again["displayName"], "Acme Again");
        assert_eq!(again["createTime"], tenant["createTime"]);

        // A user's roles change by AssignRole/RevokeRole: sent back as they are, fine; changed
        // through UpdateUser, refused.
        let path = format!("/v1/{}", admin.name);
        let mut user = json(&as_operator(&mesh, "GET", &path, "").await?);
        user["displayName"] = "Ada L.".into();
        let updated = json(&as_operator(&mesh, "PATCH", &path, &user.to_string()).await?);
        assert_eq!(updated["displayName"], "Ada L.");
        // (Bad input is told before a stale etag.)
        user["roles"] = serde_json::json!(["admin", "viewer"]);
        let refused = violations(&as_operator(&mesh, "PATCH", &path, &user.to_string()).await?);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0].0, "user.roles");
        let roles = json(&as_operator(&mesh, "GET", &path, "").await?)["roles"].clone();
        assert_eq!(roles, serde_json::json!(["admin"]));
        // So over gRPC without a mask: the mask implied is what the request sets.
        let unmasked = UserServiceClient::new(mesh.gateway())
            .update_user(mesh.as_operator(UpdateUserRequest {
                user: Some(User {
                    name: admin.name.clone(),
                    display_name: "Ada".into(),
                    roles: vec!["viewer".into()],
                    ..User::default()
                }),
                update_mask: None,
            }))
            .await;
        assert_eq!(
            violated_fields(&expect_code(unmasked, Code::InvalidArgument)),
            ["user.roles"]
        );
        mesh.stop().await?;
    }
    Ok(())
}

//! The OpenAPI document the gateway serves at `/openapi.json`: fetched without a credential
//! from a live mesh, it has exactly one operation for every `google.api.http` rule of the API
//! the gateway routes (internal methods left out), path parameters that spell out the resource
//! pattern, and documented URLs that work as REST calls.

use palisade_gateway::rest::http_bindings;
use palisade_testkit::{Component, Mesh, http_request};
use prost_reflect::Value as ProtoValue;
use serde_json::Value;

/// Whether the method's `palisade.options.v1.policy` marks it internal (mesh-only).
fn is_internal(method: &prost_reflect::MethodDescriptor) -> bool {
    let pool = palisade_proto::descriptor_pool();
    let extension = pool
        .get_extension_by_name("palisade.options.v1.policy")
        .unwrap();
    let policy = method.options().get_extension(&extension).into_owned();
    let ProtoValue::Message(policy) = policy else {
        panic!("the policy is a message")
    };
    policy
        .get_field_by_name("internal")
        .and_then(|v| v.as_bool())
        .unwrap_or(false)
}

async fn fetch(mesh: &Mesh) -> anyhow::Result<(Value, Option<String>)> {
    let response = http_request(
        mesh.addr(Component::Gateway),
        "GET",
        "/openapi.json",
        &[],
        b"",
    )
    .await?;
    assert_eq!(response.status, 200, "{}", response.text());
    let doc = serde_json::from_slice(&response.body)?;
    Ok((doc, response.header("content-type").map(str::to_owned)))
}

#[tokio::test]
async fn the_gateway_serves_an_operation_for_every_routed_http_rule() -> anyhow::Result<()> {
    let mesh = Mesh::builder().start().await?;
    let (doc, content_type) = fetch(&mesh).await?;
    assert_eq!(content_type.as_deref(), Some("application/json"));
    assert_eq!(doc["openapi"], "3.0.3");

    let mut expected = Vec::new();
    let mut internal = 0;
    for binding in http_bindings(palisade_proto::descriptor_pool()).unwrap() {
        if is_internal(&binding.method) {
            internal += 1;
            continue;
        }
        let (path, _) = binding.template.openapi_path();
        let method = binding.http_method.as_str().to_ascii_lowercase();
        let operation = &doc["paths"][&path][&method];
        assert_eq!(
            operation["x-grpc-method"], binding.grpc_path,
            "no operation for {method} {path}"
        );
        assert!(operation["operationId"].is_string());
        assert!(
            operation["description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{path}: no description from the proto comments"
        );
        assert!(operation["responses"]["default"].is_object());
        expected.push((path, method));
    }
    assert!(expected.len() >= 5 && internal >= 3, "{expected:?}");
    let mut documented: Vec<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| (path.clone(), method.clone()))
        })
        .collect();
    documented.sort();
    expected.sort();
    assert_eq!(documented, expected);

    // Every `$ref` resolves.
    let text = doc.to_string();
    for reference in text.split("\"$ref\":\"").skip(1) {
        let target = reference.split('"').next().unwrap();
        let pointer = target.trim_start_matches('#');
        assert!(doc.pointer(pointer).is_some(), "dangling {target}");
    }

    mesh.stop().await
}

#[tokio::test]
async fn resource_names_become_path_parameters_that_work_as_documented() -> anyhow::Result<()> {
    let mesh = Mesh::builder().start().await?;
    let (doc, _) = fetch(&mesh).await?;

    // `/v1/{name=tenants/*}`: the literal is spelled out, the wildcard is `{tenant}`.
    let get = &doc["paths"]["/v1/tenants/{tenant}"]["get"];
    assert_eq!(get["operationId"], "TenantService_GetTenant");
    let parameters = get["parameters"].as_array().unwrap();
    assert_eq!(parameters.len(), 1, "{parameters:?}");
    assert_eq!(parameters[0]["name"], "tenant");
    assert_eq!(parameters[0]["in"], "path");
    assert_eq!(parameters[0]["required"], true);
    let credentials = serde_json::json!([
        {"BearerToken": []},
        {"ApiKeyAuthorization": []},
        {"ApiKeyHeader": []}
    ]);
    assert_eq!(get["security"], credentials);
    assert_eq!(doc["security"], credentials);
    assert_eq!(
        doc["components"]["securitySchemes"]["BearerToken"]["scheme"],
        "bearer"
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["ApiKeyAuthorization"]["name"],
        "authorization"
    );
    // A stream's failure before its first message is an `{"error": …}` line.
    let export = &doc["paths"]["/v1/tenants/{tenant}/auditEvents:export"]["get"];
    assert_eq!(
        export["responses"]["default"]["$ref"],
        "#/components/responses/StreamError"
    );
    let list = &doc["paths"]["/v1/tenants/{tenant}/auditEvents"]["get"];
    let names: Vec<&str> = list["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names[0], "tenant");
    assert!(names.contains(&"pageSize"), "{names:?}");
    assert!(!names.contains(&"parent"), "{names:?}");
    // Errors are `{code, message, details}`; public methods need no credential.
    let error = &doc["components"]["schemas"]["google.rpc.Status"];
    assert_eq!(
        error["required"],
        serde_json::json!(["code", "message", "details"])
    );
    assert_eq!(
        doc["paths"]["/v1/status"]["get"]["security"],
        serde_json::json!([])
    );

    // The documented URL, filled in, is a working REST call.
    let auth = format!("ApiKey {}", mesh.operator_key());
    let response = http_request(
        mesh.addr(Component::Gateway),
        "GET",
        "/v1/tenants/system",
        &[("authorization", &auth)],
        b"",
    )
    .await?;
    assert_eq!(response.status, 200, "{}", response.text());
    let tenant: Value = serde_json::from_slice(&response.body)?;
    let schema = &doc["components"]["schemas"]["palisade.identity.v1.Tenant"]["properties"];
    for key in tenant.as_object().unwrap().keys() {
        assert!(
            schema.get(key).is_some(),
            "`{key}` is not in the Tenant schema"
        );
    }

    mesh.stop().await
}

//! Tests of the parent module.

use super::*;

fn api() -> Value {
    let pool = palisade_proto::descriptor_pool();
    document(pool, &MethodPolicies::from_pool(pool).unwrap()).unwrap()
}

#[test]
fn get_tenant_has_its_path_parameter_and_response_schema() {
    let doc = api();
    let get = &doc["paths"]["/v1/tenants/{tenant}"]["get"];
    assert_eq!(get["operationId"], "TenantService_GetTenant");
    assert_eq!(get["parameters"][0]["name"], "tenant");
    assert_eq!(get["parameters"][0]["in"], "path");
    assert_eq!(get["parameters"].as_array().unwrap().len(), 1);
    assert_eq!(
        get["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/palisade.identity.v1.Tenant"
    );
    assert!(get["description"].as_str().unwrap().contains("Permission"));
    let tenant = &doc["components"]["schemas"]["palisade.identity.v1.Tenant"];
    assert_eq!(tenant["properties"]["displayName"]["type"], "string");
    assert_eq!(
        tenant["properties"]["createTime"]["format"], "date-time",
        "{tenant}"
    );
    assert!(
        tenant["properties"]["plan"]["enum"]
            .as_array()
            .unwrap()
            .contains(&json!("PLAN_PROFESSIONAL"))
    );
}

#[test]
fn streams_are_ndjson_and_internal_methods_are_absent() {
    let doc = api();
    let export = &doc["paths"]["/v1/tenants/{tenant}/auditEvents:export"]["get"];
    assert!(
        export["responses"]["200"]["content"]["application/x-ndjson"]["schema"]["properties"]
            ["result"]
            .is_object()
    );
    assert!(doc["paths"].get("/v1/apiKeys:verify").is_none());
    assert!(doc["paths"].get("/v1/auditEvents:append").is_none());
    let status = &doc["paths"]["/v1/status"]["get"];
    assert_eq!(status["security"], json!([]));
}

#[test]
fn query_parameters_use_json_names_and_skip_the_body() {
    let doc = api();
    let names = |operation: &Value| -> Vec<String> {
        operation["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let list = &doc["paths"]["/v1/tenants"]["get"];
    assert!(names(list).contains(&"pageSize".to_owned()), "{list}");
    let create = &doc["paths"]["/v1/tenants"]["post"];
    assert_eq!(names(create), vec!["tenantId"]);
    assert_eq!(
        create["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/palisade.identity.v1.Tenant"
    );
}

#[test]
fn summaries_are_first_sentences() {
    assert_eq!(
        summary("Creates a tenant, active at once. More.\n\nPermission: x"),
        "Creates a tenant, active at once."
    );
    assert_eq!(summary("One line"), "One line");
}

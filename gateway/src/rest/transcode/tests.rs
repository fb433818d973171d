//! Tests of the parent module.

use palisade_grpc::FieldViolation;
use palisade_proto::palisade::{
    compliance::v1::ListAuditEventsRequest,
    identity::v1::{
        CreateRoleRequest, CreateTenantRequest, ListTenantsRequest, Plan, Tenant,
        UpdateTenantRequest,
    },
};
use serde_json::json;

use super::*;

fn descriptor(name: &str) -> MessageDescriptor {
    palisade_proto::descriptor_pool()
        .get_message_by_name(name)
        .unwrap()
}

fn bindings(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn invalid(result: Result<Vec<u8>, ApiError>) -> String {
    match result {
        Err(error @ ApiError::InvalidArgument(_)) => error.to_string(),
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
}

#[test]
fn a_field_body_and_query_parameters_fill_the_request() {
    let input = descriptor("palisade.identity.v1.CreateTenantRequest");
    let encoded = request_message(
        &input,
        &BodyRule::Field("tenant".into()),
        None,
        &[],
        "tenantId=acme",
        br#"{"displayName": "Acme", "plan": "PLAN_PROFESSIONAL"}"#,
    )
    .unwrap();
    let request = CreateTenantRequest::decode(encoded.as_slice()).unwrap();
    assert_eq!(request.tenant_id, "acme");
    let tenant = request.tenant.unwrap();
    assert_eq!(tenant.display_name, "Acme");
    assert_eq!(tenant.plan(), Plan::Professional);
}

#[test]
fn a_body_that_gives_a_field_twice_is_refused_whichever_way() {
    let input = descriptor("palisade.identity.v1.CreateTenantRequest");
    let whole = |body: &[u8]| {
        invalid(request_message(
            &input,
            &BodyRule::Whole,
            None,
            &[],
            "",
            body,
        ))
    };
    let error = whole(br#"{"tenantId": "a", "tenantId": "b"}"#);
    assert!(error.contains("duplicate key `tenantId`"), "{error}");
    let error = whole(br#"{"tenantId": "a", "tenant_id": "b"}"#);
    assert!(error.contains("tenant_id"), "{error}");
    let in_field = invalid(request_message(
        &input,
        &BodyRule::Field("tenant".into()),
        None,
        &[],
        "tenantId=acme",
        br#"{"displayName": "A", "display_name": "B"}"#,
    ));
    assert!(in_field.contains("tenant.display_name"), "{in_field}");
}

#[test]
fn query_parameters_take_proto_or_json_names_and_typed_values() {
    let input = descriptor("palisade.identity.v1.ListTenantsRequest");
    let encoded = request_message(
        &input,
        &BodyRule::None,
        None,
        &[],
        "page_size=2&filter=plan+%3D+%22PLAN_FREE%22&pageToken=abc",
        b"",
    )
    .unwrap();
    let request = ListTenantsRequest::decode(encoded.as_slice()).unwrap();
    assert_eq!(request.page_size, 2);
    assert_eq!(request.filter, r#"plan = "PLAN_FREE""#);
    assert_eq!(request.page_token, "abc");
}

#[test]
fn path_bindings_win_over_the_body() {
    let input = descriptor("palisade.compliance.v1.ListAuditEventsRequest");
    let encoded = request_message(
        &input,
        &BodyRule::Whole,
        None,
        &bindings(&[("parent", "tenants/acme")]),
        "",
        br#"{"parent": "tenants/other", "pageSize": 5}"#,
    )
    .unwrap();
    let request = ListAuditEventsRequest::decode(encoded.as_slice()).unwrap();
    assert_eq!(request.parent, "tenants/acme");
    assert_eq!(request.page_size, 5);
}

/// `body: "*"` leaves no field to the query: a parameter is refused, not dropped, as its
/// field if it names one.
#[test]
fn a_call_whose_body_holds_every_field_takes_no_query_parameters() {
    let input = descriptor("palisade.compliance.v1.ListAuditEventsRequest");
    let path = bindings(&[("parent", "tenants/acme")]);
    let body = br#"{"pageSize": 5}"#;
    for (query, field) in [
        ("pageSize=7", "page_size"),
        ("page_size=7&filter=x", "page_size"),
        ("ignored=1", "ignored"),
    ] {
        let refused = request_message(&input, &BodyRule::Whole, None, &path, query, body);
        assert_eq!(violation(refused).field, field, "{query}");
    }
    let bad_escape = request_message(&input, &BodyRule::Whole, None, &path, "%zz", body);
    assert_eq!(violation(bad_escape).field, "query");
    let bound = request_message(&input, &BodyRule::Whole, None, &path, "parent=x", body);
    let bound = violation(bound);
    assert_eq!(bound.field, "parent");
    assert!(
        bound.description.contains("bound by the URL path"),
        "{bound:?}"
    );
}

#[test]
fn a_field_the_path_binds_is_not_a_query_parameter() {
    let input = descriptor("palisade.identity.v1.GetTenantRequest");
    let path = bindings(&[("name", "tenants/acme")]);
    let refused = violation(request_message(
        &input,
        &BodyRule::None,
        None,
        &path,
        "name=tenants/other",
        b"",
    ));
    assert_eq!(refused.field, "name");
    assert!(refused.description.contains("bound by the URL path"));
    // Nested fields under a bound one too (`{tenant.name=tenants/*}` of UpdateTenant).
    let input = descriptor("palisade.identity.v1.UpdateTenantRequest");
    let path = bindings(&[("tenant.name", "tenants/acme")]);
    let refused = violation(request_message(
        &input,
        &BodyRule::Field("tenant".into()),
        None,
        &path,
        "tenant.name=tenants/other",
        b"{}",
    ));
    assert_eq!(refused.field, "tenant.name");
}

#[test]
fn nested_and_repeated_query_parameters() {
    let input = descriptor("palisade.identity.v1.CreateTenantRequest");
    let encoded = request_message(
        &input,
        &BodyRule::None,
        None,
        &[],
        "tenant.display_name=Acme&tenant.plan=2&tenantId=acme",
        b"",
    )
    .unwrap();
    let request = CreateTenantRequest::decode(encoded.as_slice()).unwrap();
    assert_eq!(request.tenant.as_ref().unwrap().display_name, "Acme");
    assert_eq!(request.tenant.unwrap().plan, 2);
    // A repeated field collects every occurrence (google.rpc.BadRequest has one).
    let bad = descriptor("google.rpc.BadRequest");
    let field_violations = find_field(&bad, "field_violations").unwrap();
    assert!(field_violations.is_list());
    let status = descriptor("google.rpc.Status");
    let mut root = Map::new();
    set(
        &mut root,
        &resolve(&status, "details").unwrap(),
        Leaf::Json(json!({"@type": "type.googleapis.com/google.rpc.BadRequest"})),
    )
    .unwrap();
    set(
        &mut root,
        &resolve(&status, "details").unwrap(),
        Leaf::Json(json!({"@type": "type.googleapis.com/google.rpc.ErrorInfo"})),
    )
    .unwrap();
    assert_eq!(root["details"].as_array().unwrap().len(), 2);
}

#[test]
fn unknown_fields_are_invalid_arguments_wherever_they_appear() {
    let input = descriptor("palisade.identity.v1.CreateTenantRequest");
    let field = BodyRule::Field("tenant".into());
    assert!(
        invalid(request_message(
            &input,
            &field,
            None,
            &[],
            "",
            br#"{"colour": "red"}"#
        ))
        .contains("colour")
    );
    // Named by its path in the request, as other violations are.
    let nested = request_message(
        &input,
        &BodyRule::Whole,
        None,
        &[],
        "",
        br#"{"tenant": {"nope": 1}}"#,
    );
    assert_eq!(violation(nested).field, "tenant.nope");
    let in_field = request_message(
        &input,
        &field,
        None,
        &[],
        "",
        br#"{"limitOverrides": {"users": 1}, "colour": 1}"#,
    );
    assert_eq!(violation(in_field).field, "tenant.colour");
    assert!(
        invalid(request_message(
            &input,
            &BodyRule::None,
            None,
            &[],
            "nope=1",
            b""
        ))
        .contains("nope")
    );
    assert!(invalid(request_message(&input, &field, None, &[], "", b"{not json")).contains("JSON"));
    assert!(
        invalid(request_message(
            &input,
            &BodyRule::Whole,
            None,
            &[],
            "",
            b"[1]"
        ))
        .contains("object")
    );
    assert!(
        invalid(request_message(
            &input,
            &BodyRule::None,
            None,
            &[],
            "tenant.plan=PLAN_NOPE",
            b""
        ))
        .contains("PLAN_NOPE")
    );
}

/// The one field violation of a refused request.
fn violation(result: Result<Vec<u8>, ApiError>) -> FieldViolation {
    match result {
        Err(ApiError::InvalidArgument(violations)) if violations.len() == 1 => {
            violations[0].clone()
        }
        other => panic!("expected one field violation, got {other:?}"),
    }
}

#[test]
fn bad_query_parameters_are_refused_against_their_own_field() {
    let role = r#"{"displayName": "Body", "permissions": ["identity.users.get"]}"#;
    // [request message, `body` of the rule, query, body, field, part of the description]
    let cases = [
        [
            "ListTenantsRequest",
            "",
            "pageSize=abc",
            "",
            "page_size",
            "invalid value `abc`",
        ],
        [
            "ListTenantsRequest",
            "",
            "pageSize=1&pageSize=2",
            "",
            "page_size",
            "too many values (`1`, `2`)",
        ],
        // Either spelling names the same field.
        [
            "ListTenantsRequest",
            "",
            "page_size=1&pageSize=1",
            "",
            "page_size",
            "too many values",
        ],
        [
            "UpdateTenantRequest",
            "tenant",
            "updateMask=displayName&updateMask=region",
            "{}",
            "update_mask",
            "comma-separated",
        ],
        [
            "CreateTenantRequest",
            "",
            "tenant.plan=PLAN_NOPE",
            "",
            "tenant.plan",
            "invalid value `PLAN_NOPE`",
        ],
        [
            "CreateRoleRequest",
            "role",
            "roleId=x&role.displayName=Query",
            role,
            "role.display_name",
            "is part of the request body (`role`); send it there",
        ],
        [
            "CreateRoleRequest",
            "role",
            "roleId=x&role.permissions=identity.users.list",
            role,
            "role.permissions",
            "is part of the request body (`role`)",
        ],
        [
            "CreateRoleRequest",
            "role",
            "role=x",
            role,
            "role",
            "is part of the request body (`role`)",
        ],
    ];
    for [message, rule, query, body, field, description] in cases {
        let input = descriptor(&format!("palisade.identity.v1.{message}"));
        let rule = BodyRule::from_rule(rule);
        let refused = violation(request_message(
            &input,
            &rule,
            None,
            &[],
            query,
            body.as_bytes(),
        ));
        assert_eq!(refused.field, field, "{query}");
        assert!(
            refused.description.contains(description),
            "{query}: {}",
            refused.description
        );
    }
}

#[test]
fn a_bad_path_variable_is_refused_against_its_own_field() {
    let input = descriptor("palisade.identity.v1.ListTenantsRequest");
    let bindings = bindings(&[("page_size", "abc")]);
    let refused = violation(request_message(
        &input,
        &BodyRule::None,
        None,
        &bindings,
        "",
        b"",
    ));
    assert_eq!(refused.field, "page_size");
    assert!(refused.description.contains("`abc`"));
}

#[test]
fn repeated_fields_and_field_masks_take_many_values_from_the_query() {
    let input = descriptor("palisade.identity.v1.CreateRoleRequest");
    let encoded = request_message(
        &input,
        &BodyRule::None,
        None,
        &[],
        "roleId=x&role.permissions=identity.users.get&role.permissions=identity.users.list",
        b"",
    )
    .unwrap();
    let request = CreateRoleRequest::decode(encoded.as_slice()).unwrap();
    assert_eq!(
        request.role.unwrap().permissions,
        ["identity.users.get", "identity.users.list"]
    );
    // With `body: "role"` the rest of the request still comes from the query.
    let encoded = request_message(
        &input,
        &BodyRule::Field("role".into()),
        None,
        &bindings(&[("parent", "tenants/acme")]),
        "roleId=x",
        br#"{"displayName": "Body"}"#,
    )
    .unwrap();
    let request = CreateRoleRequest::decode(encoded.as_slice()).unwrap();
    assert_eq!(request.role_id, "x");
    assert_eq!(request.role.unwrap().display_name, "Body");
    let input = descriptor("palisade.identity.v1.UpdateTenantRequest");
    let encoded = request_message(
        &input,
        &BodyRule::Field("tenant".into()),
        None,
        &[],
        "updateMask=displayName,region",
        b"{}",
    )
    .unwrap();
    let request = UpdateTenantRequest::decode(encoded.as_slice()).unwrap();
    assert_eq!(
        request.update_mask.unwrap().paths,
        ["display_name", "region"]
    );
    // The proto names too, as grpc-gateway's clients send them.
    let encoded = request_message(
        &input,
        &BodyRule::Field("tenant".into()),
        None,
        &[],
        "updateMask=display_name,limit_overrides",
        b"{}",
    )
    .unwrap();
    let request = UpdateTenantRequest::decode(encoded.as_slice()).unwrap();
    assert_eq!(
        request.update_mask.unwrap().paths,
        ["display_name", "limit_overrides"]
    );
}

/// grpc-gateway's PATCH: without a mask in the query, the body's keys are the mask, so an
/// empty value clears its field; a mask the client sends wins.
#[test]
fn a_patch_without_a_mask_updates_what_its_body_names() {
    let input = descriptor("palisade.identity.v1.UpdateTenantRequest");
    let body_rule = BodyRule::Field("tenant".into());
    let mask = implied_update_mask(&http::Method::PATCH, &input, &body_rule);
    assert_eq!(
        mask.as_ref().map(FieldDescriptor::name),
        Some("update_mask")
    );
    let patch = |query: &str, body: &[u8]| {
        let bindings = bindings(&[("tenant.name", "tenants/acme")]);
        let encoded =
            request_message(&input, &body_rule, mask.as_ref(), &bindings, query, body).unwrap();
        UpdateTenantRequest::decode(encoded.as_slice()).unwrap()
    };
    let request = patch(
        "",
        br#"{"domain": "", "displayName": "Acme", "createTime": "2026-01-01T00:00:00Z", "limitOverrides": {"users": "5"}}"#,
    );
    assert_eq!(
        request.update_mask.unwrap().paths,
        ["create_time", "display_name", "domain", "limit_overrides"]
    );
    // The path's `tenant.name` is not the body's.
    assert_eq!(request.tenant.unwrap().name, "tenants/acme");
    let request = patch("updateMask=region", br#"{"domain": ""}"#);
    assert_eq!(request.update_mask.unwrap().paths, ["region"]);
    // Nothing named, nothing implied (the method's own rule for an empty mask applies).
    assert_eq!(patch("", b"{}").update_mask, None);

    // Not for other verbs, nor where the whole body is the request.
    assert!(implied_update_mask(&http::Method::POST, &input, &body_rule).is_none());
    assert!(implied_update_mask(&http::Method::PATCH, &input, &BodyRule::Whole).is_none());
}

#[test]
fn responses_use_the_proto3_json_mapping() {
    let output = descriptor("palisade.identity.v1.Tenant");
    let tenant = Tenant {
        name: "tenants/acme".into(),
        display_name: "Acme".into(),
        plan: Plan::Enterprise as i32,
        create_time: Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        }),
        ..Default::default()
    };
    let json = response_json(&output, &tenant.encode_to_vec(), None).unwrap();
    assert_eq!(json["displayName"], "Acme");
    assert_eq!(json["plan"], "PLAN_ENTERPRISE");
    assert_eq!(json["createTime"], "2023-11-14T22:13:20Z");
    // Every field is sent, at its default too, as grpc-gateway sends it; an unset message
    // field is left out.
    assert_eq!(json["region"], "");
    assert_eq!(json["featureOverrides"], json!({}));
    assert_eq!(json["state"], "TENANT_STATE_UNSPECIFIED");
    assert!(json.get("updateTime").is_none());
    // `response_body: "region"` sends that one field.
    let region = response_json(&output, &tenant.encode_to_vec(), Some("region")).unwrap();
    assert_eq!(region, json!(""));
    let plan = response_json(&output, &tenant.encode_to_vec(), Some("plan")).unwrap();
    assert_eq!(plan, json!("PLAN_ENTERPRISE"));
}

#[test]
fn a_body_field_that_is_not_an_object_is_refused() {
    let input = descriptor("palisade.identity.v1.UpdateTenantRequest");
    let body_rule = BodyRule::Field("tenant".into());
    let bindings = bindings(&[("tenant.name", "tenants/acme")]);
    for body in [
        &b"[]"[..],
        b"[{\"displayName\": \"x\"}]",
        b"\"x\"",
        b"123",
        b"true",
    ] {
        let error = invalid(request_message(
            &input, &body_rule, None, &bindings, "", body,
        ));
        assert!(error.contains("body"), "{error}");
    }
}

#[test]
fn times_are_held_to_the_proto3_json_forms() {
    let input = descriptor("palisade.identity.v1.CreateApiKeyRequest");
    let body =
        |body: &str| request_message(&input, &BodyRule::Whole, None, &[], "", body.as_bytes());
    for (good, field) in [
        (r#"{"ttl": "3600.000000001s"}"#, "ttl"),
        (
            r#"{"apiKey": {"expireTime": "2026-12-20T23:59:59.123456789Z"}}"#,
            "api_key",
        ),
    ] {
        assert!(body(good).is_ok(), "{field}: {good}");
    }
    for (bad, field) in [
        (r#"{"ttl": "3600.0000000001s"}"#, "ttl"),
        (
            r#"{"apiKey": {"expireTime": "2026-12-20T00:00:00.123456789123Z"}}"#,
            "api_key.expire_time",
        ),
        (
            r#"{"apiKey": {"expireTime": "2026-12-20T23:59:60Z"}}"#,
            "api_key.expire_time",
        ),
    ] {
        assert_eq!(violation(body(bad)).field, field, "{bad}");
    }
    // From the URL too.
    let query = request_message(&input, &BodyRule::None, None, &[], "ttl=1.0000000001s", b"");
    assert_eq!(violation(query).field, "ttl");
}

/// A path binding beneath a parent the body spells the proto way (`api_key`, not `apiKey`)
/// joins the body's other fields of that parent rather than replacing them.
#[test]
fn a_binding_beneath_a_parent_spelled_the_proto_way_keeps_the_parents_other_fields() {
    let input = descriptor("palisade.identity.v1.CreateApiKeyRequest");
    for body in [
        &br#"{"parent": "tenants/acme", "api_key": {"display_name": "ci", "scopes": ["identity.users.list"]}}"#[..],
        br#"{"parent": "tenants/acme", "apiKey": {"displayName": "ci", "scopes": ["identity.users.list"]}}"#,
    ] {
        let encoded = request_message(
            &input,
            &BodyRule::Whole,
            None,
            &bindings(&[("api_key.owner", "tenants/acme/users/u1")]),
            "",
            body,
        )
        .unwrap();
        let request =
            palisade_proto::palisade::identity::v1::CreateApiKeyRequest::decode(encoded.as_slice())
                .unwrap();
        let key = request.api_key.unwrap();
        assert_eq!(key.owner, "tenants/acme/users/u1");
        assert_eq!(key.display_name, "ci", "{}", String::from_utf8_lossy(body));
        assert_eq!(key.scopes, ["identity.users.list"]);
    }
}

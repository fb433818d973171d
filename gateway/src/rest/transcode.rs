//! JSON ⇄ protobuf for one REST call, with the proto3 JSON mapping of prost-reflect
//! (lowerCamelCase names, 64-bit integers as strings, enums by name, well-known types).
//!
//! The request message is assembled as one JSON object (the body, or the body under its
//! field, then query parameters, then path variables, later sources winning) and decoded
//! once with unknown fields denied, so every source gets the same proto3 JSON rules and an
//! unknown name anywhere is `INVALID_ARGUMENT`. Pure functions over bytes and strings.

use palisade_grpc::ApiError;
use prost::Message;
use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, SerializeOptions,
};
use serde_json::{Map, Value};

/// Where the HTTP body goes: `body: "*"` (the whole request), `body: "field"`, or nowhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyRule {
    None,
    Whole,
    Field(String),
}

impl BodyRule {
    pub fn from_rule(body: &str) -> BodyRule {
        match body {
            "" => BodyRule::None,
            "*" => BodyRule::Whole,
            field => BodyRule::Field(field.to_owned()),
        }
    }
}

/// The encoded request message for `input` from the path bindings, the query string (without
/// `?`) and the body.
pub fn request_message(
    input: &MessageDescriptor,
    body_rule: &BodyRule,
    bindings: &[(String, String)],
    query: &str,
    body: &[u8],
) -> Result<Vec<u8>, ApiError> {
    let mut root = Map::new();
    match body_rule {
        BodyRule::None => {}
        BodyRule::Whole => match parse_body(body)? {
            Some(Value::Object(object)) => root = object,
            Some(_) => return Err(ApiError::invalid("body", "must be a JSON object")),
            None => {}
        },
        BodyRule::Field(field) => {
            if let Some(value) = parse_body(body)? {
                set(&mut root, input, field, Leaf::Json(value))?;
            }
        }
    }
    // With `body: "*"` every field comes from the body or the path (google/api/http.proto).
    if *body_rule != BodyRule::Whole {
        for (name, value) in parse_query(query)? {
            set(&mut root, input, &name, Leaf::Text(value))?;
        }
    }
    for (field, value) in bindings {
        set(&mut root, input, field, Leaf::Text(value.clone()))?;
    }
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    let message =
        DynamicMessage::deserialize_with_options(input.clone(), Value::Object(root), &options)
            .map_err(|error| ApiError::invalid("body", error.to_string()))?;
    Ok(message.encode_to_vec())
}

/// The proto3 JSON of an encoded `output` message, or of its field with JSON name `field`
/// (`response_body`). Fields at their default value are omitted, as protojson does by
/// default, except a chosen field, which is always sent.
pub fn response_json(
    output: &MessageDescriptor,
    encoded: &[u8],
    field: Option<&str>,
) -> Result<Value, ApiError> {
    let message = DynamicMessage::decode(output.clone(), encoded).map_err(ApiError::internal)?;
    let options = SerializeOptions::new().skip_default_fields(field.is_none());
    let json = message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(ApiError::internal)?;
    Ok(match (field, json) {
        (Some(field), Value::Object(mut object)) => object.remove(field).unwrap_or(Value::Null),
        (_, json) => json,
    })
}

fn parse_body(body: &[u8]) -> Result<Option<Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|error| ApiError::invalid("body", format!("not valid JSON: {error}")))
}

/// `a=1&b.c=x%20y&r=1&r=2` → pairs, `+` as space, percent-decoded.
pub fn parse_query(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    let decode = |text: &str| {
        super::routes::percent_decode(&text.replace('+', " "), false)
            .ok_or_else(|| ApiError::invalid("query", format!("bad escape in `{text}`")))
    };
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(name)?, decode(value)?))
        })
        .collect()
}

enum Leaf {
    /// A value from the path or the query string, typed by the field it lands in.
    Text(String),
    /// A JSON value from the body.
    Json(Value),
}

/// Sets the field at dotted `path` (proto or JSON names) in the JSON object `root` that will
/// be decoded as `message`. A repeated field collects every value given for it.
fn set(
    root: &mut Map<String, Value>,
    message: &MessageDescriptor,
    path: &str,
    leaf: Leaf,
) -> Result<(), ApiError> {
    let names: Vec<&str> = path.split('.').collect();
    let mut object = root;
    let mut descriptor = message.clone();
    for (i, name) in names.iter().enumerate() {
        let field = find_field(&descriptor, name).ok_or_else(|| {
            ApiError::invalid(
                path,
                format!("no field `{name}` in {}", descriptor.full_name()),
            )
        })?;
        // Whichever spelling the body used, the value set here replaces it.
        if field.name() != field.json_name() {
            object.remove(field.name());
        }
        let key = field.json_name().to_owned();
        if i + 1 == names.len() {
            let value = match leaf {
                Leaf::Json(value) => value,
                Leaf::Text(text) => text_value(&field, text, path)?,
            };
            if field.is_list() && !matches!(value, Value::Array(_)) {
                match object
                    .entry(key)
                    .or_insert_with(|| Value::Array(Vec::new()))
                {
                    Value::Array(values) => values.push(value),
                    other => *other = Value::Array(vec![value]),
                }
            } else {
                object.insert(key, value);
            }
            return Ok(());
        }
        let Kind::Message(child) = field.kind() else {
            return Err(ApiError::invalid(
                path,
                format!("`{name}` is not a message"),
            ));
        };
        if field.is_list() || field.is_map() {
            return Err(ApiError::invalid(
                path,
                format!("`{name}` cannot be addressed by path"),
            ));
        }
        let entry = object
            .entry(key)
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        object = entry.as_object_mut().expect("just made an object");
        descriptor = child;
    }
    unreachable!("a path has at least one name")
}

fn find_field(message: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    message
        .get_field_by_name(name)
        .or_else(|| message.get_field_by_json_name(name))
}

/// Text from a URL as the JSON value proto3 JSON expects for `field`: numbers stay strings
/// (proto3 JSON accepts quoted numbers, and 64-bit ones need it), booleans become booleans,
/// enums go by name or number, well-known message types parse from their string form.
fn text_value(field: &FieldDescriptor, text: String, path: &str) -> Result<Value, ApiError> {
    if field.is_map() {
        return Err(ApiError::invalid(
            path,
            "map fields cannot be set from the URL",
        ));
    }
    Ok(match field.kind() {
        Kind::Bool => match text.as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(ApiError::invalid(path, "must be `true` or `false`")),
        },
        Kind::Enum(_) => match text.parse::<i32>() {
            Ok(number) => Value::from(number),
            Err(_) => Value::String(text),
        },
        _ => Value::String(text),
    })
}

#[cfg(test)]
mod tests {
    use palisade_proto::palisade::{
        compliance::v1::ListAuditEventsRequest,
        identity::v1::{CreateTenantRequest, ListTenantsRequest, Plan, Tenant},
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
    fn query_parameters_take_proto_or_json_names_and_typed_values() {
        let input = descriptor("palisade.identity.v1.ListTenantsRequest");
        let encoded = request_message(
            &input,
            &BodyRule::None,
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
            &bindings(&[("parent", "tenants/acme")]),
            "ignored=1",
            br#"{"parent": "tenants/other", "pageSize": 5}"#,
        )
        .unwrap();
        let request = ListAuditEventsRequest::decode(encoded.as_slice()).unwrap();
        assert_eq!(request.parent, "tenants/acme");
        assert_eq!(request.page_size, 5);
    }

    #[test]
    fn nested_and_repeated_query_parameters() {
        let input = descriptor("palisade.identity.v1.CreateTenantRequest");
        let encoded = request_message(
            &input,
            &BodyRule::None,
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
            &status,
            "details",
            Leaf::Json(json!({"@type": "type.googleapis.com/google.rpc.BadRequest"})),
        )
        .unwrap();
        set(
            &mut root,
            &status,
            "details",
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
                &[],
                "",
                br#"{"colour": "red"}"#
            ))
            .contains("colour")
        );
        assert!(
            invalid(request_message(
                &input,
                &BodyRule::Whole,
                &[],
                "",
                br#"{"tenant": {"nope": 1}}"#
            ))
            .contains("nope")
        );
        assert!(
            invalid(request_message(&input, &BodyRule::None, &[], "nope=1", b"")).contains("nope")
        );
        assert!(invalid(request_message(&input, &field, &[], "", b"{not json")).contains("JSON"));
        assert!(
            invalid(request_message(&input, &BodyRule::Whole, &[], "", b"[1]")).contains("object")
        );
        assert!(
            invalid(request_message(
                &input,
                &BodyRule::None,
                &[],
                "tenant.plan=PLAN_NOPE",
                b""
            ))
            .contains("PLAN_NOPE")
        );
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
        assert!(json.get("updateTime").is_none());
        assert!(json.get("region").is_none());
        // `response_body: "region"` sends that one field, even at its default.
        let region = response_json(&output, &tenant.encode_to_vec(), Some("region")).unwrap();
        assert_eq!(region, json!(""));
        let plan = response_json(&output, &tenant.encode_to_vec(), Some("plan")).unwrap();
        assert_eq!(plan, json!("PLAN_ENTERPRISE"));
    }
}

//! JSON ⇄ protobuf for one REST call, with the proto3 JSON mapping of prost-reflect
//! (lowerCamelCase names, 64-bit integers as strings, enums by name, well-known types).
//!
//! The request message is assembled as one JSON object (the body, or the body under its
//! field, then query parameters, then path variables, later sources winning; the body alone
//! must not name a field twice, see `strict.rs`) and decoded
//! once with unknown fields denied, so every source gets the same proto3 JSON rules and an
//! unknown name anywhere is `INVALID_ARGUMENT`. A value from the URL is also checked on its
//! own as it is set, so a bad one is reported against its field, not against the body.
//! Query parameters are refused, as unknown names are, where `google/api/http.proto` gives
//! them no meaning: a field the path binds, inside the body field, a second value for a
//! field that takes one, or any at all for `body: "*"`.
//! Pure functions over bytes and strings.

use std::collections::HashMap;

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

/// The field mask of a PATCH whose body is one message field of the request (the resource) and
/// whose request has exactly one `google.protobuf.FieldMask` field: grpc-gateway fills that
/// mask from the body's keys when the client sends none (its "patch feature").
pub fn implied_update_mask(
    http_method: &http::Method,
    input: &MessageDescriptor,
    body_rule: &BodyRule,
) -> Option<FieldDescriptor> {
    let BodyRule::Field(body) = body_rule else {
        return None;
    };
    let body = input.get_field_by_name(body)?;
    if *http_method != http::Method::PATCH || !matches!(body.kind(), Kind::Message(_)) {
        return None;
    }
    let mut masks = input.fields().filter(|field| {
        !field.is_list()
            && matches!(field.kind(), Kind::Message(m) if m.full_name() == "google.protobuf.FieldMask")
    });
    match (masks.next(), masks.next()) {
        (Some(mask), None) => Some(mask),
        _ => None,
    }
}

/// The encoded request message for `input` from the path bindings, the query string (without
/// `?`) and the body. With `implied_mask` (see [`implied_update_mask`]), a request that sends
/// no mask paths gets one path per field the body names, as with grpc-gateway: a PATCH of
/// `{"domain": ""}` clears the domain instead of changing nothing.
pub fn request_message(
    input: &MessageDescriptor,
    body_rule: &BodyRule,
    implied_mask: Option<&FieldDescriptor>,
    bindings: &[(String, String)],
    query: &str,
    body: &[u8],
) -> Result<Vec<u8>, ApiError> {
    let bindings = (bindings.iter())
        .map(|(field, value)| Ok((resolve(input, field)?, value)))
        .collect::<Result<Vec<_>, ApiError>>()?;
    let mut root = Map::new();
    let mut body_paths = None;
    match body_rule {
        BodyRule::None => {}
        BodyRule::Whole => match parse_body(body)? {
            Some(Value::Object(object)) => {
                strict::check_spellings(input, &object, "")?;
                root = object;
            }
            Some(_) => return Err(ApiError::invalid("body", "must be a JSON object")),
            None => {}
        },
        BodyRule::Field(field) => {
            if let Some(value) = parse_body(body)? {
                let fields = resolve(input, field)?;
                let last = fields.last().expect("a path has at least one field");
                // A path variable inside it would otherwise replace a body of another shape.
                if matches!(last.kind(), Kind::Message(_))
                    && !last.is_list()
                    && !matches!(value, Value::Object(_) | Value::Null)
                {
                    return Err(ApiError::invalid(
                        "body",
                        format!("must be a JSON object (the `{}` message)", last.name()),
                    ));
                }
                if let (Kind::Message(message), Value::Object(object)) = (last.kind(), &value)
                    && !last.is_map()
                {
                    strict::check_spellings(&message, object, &proto_path(&fields))?;
                    if implied_mask.is_some() {
                        body_paths = Some(mask_paths(&message, object, ""));
                    }
                }
                set(&mut root, &fields, Leaf::Json(value))?;
            }
        }
    }
    // The fields the URL path binds are not query parameters either.
    let bound: Vec<String> = (bindings.iter())
        .map(|(fields, _)| proto_path(fields))
        .collect();
    // The first value of each singular field, so a second one can be refused.
    let mut singular: HashMap<String, String> = HashMap::new();
    for (name, value) in parse_query(query)? {
        let fields = resolve(input, &name)?;
        let path = proto_path(&fields);
        let within = |bound: &String| {
            path == *bound
                || path
                    .strip_prefix(bound.as_str())
                    .is_some_and(|rest| rest.starts_with('.'))
        };
        if bound.iter().any(within) {
            return Err(ApiError::invalid(
                path,
                "is bound by the URL path; it cannot be set in the query as well",
            ));
        }
        match body_rule {
            // With `body: "*"` every field comes from the body or the path
            // (google/api/http.proto): a query parameter would be dropped, and the call would
            // not do what its client meant (`?ttl=60s` beside a body's `expireTime`).
            BodyRule::Whole => {
                return Err(ApiError::invalid(
                    path,
                    "is a query parameter, but this call takes every field from its body; \
                     send it there",
                ));
            }
            // The body field is the top-level field the rule names (google/api/http.proto).
            BodyRule::Field(body) if fields[0].name() == body => {
                return Err(ApiError::invalid(
                    path,
                    format!("is part of the request body (`{body}`); send it there"),
                ));
            }
            _ => {}
        }
        let last = fields.last().expect("a path has at least one field");
        if !last.is_list() {
            if let Some(first) = singular.get(&path) {
                return Err(too_many_values(last, path, first, &value));
            }
            singular.insert(path, value.clone());
        }
        set(&mut root, &fields, Leaf::Text(value))?;
    }
    for (fields, value) in &bindings {
        set(&mut root, fields, Leaf::Text((*value).clone()))?;
    }
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    let mut message =
        DynamicMessage::deserialize_with_options(input.clone(), Value::Object(root), &options)
            .map_err(|error| ApiError::invalid("body", error.to_string()))?;
    if let (Some(mask), Some(paths)) = (implied_mask, body_paths) {
        imply_mask(&mut message, mask, paths);
    }
    Ok(message.encode_to_vec())
}

/// The field mask paths (proto names) of what a body `object` of `message` sets: a nested
/// message's fields each, a map, list, well-known type or empty object as a whole. As
/// grpc-gateway's `FieldMaskFromRequestBody`. Unknown names are left out (the body is refused
/// for them anyway).
fn mask_paths(
    message: &MessageDescriptor,
    object: &Map<String, Value>,
    prefix: &str,
) -> Vec<String> {
    let mut paths = Vec::new();
    for (key, value) in object {
        let Some(field) = find_field(message, key) else {
            continue;
        };
        let path = format!("{prefix}{}", field.name());
        match (field.kind(), value) {
            (Kind::Message(child), Value::Object(entries))
                if !field.is_map()
                    && !field.is_list()
                    && !entries.is_empty()
                    && !child.full_name().starts_with("google.protobuf.") =>
            {
                paths.extend(mask_paths(&child, entries, &format!("{path}.")));
            }
            _ => paths.push(path),
        }
    }
    paths
}

/// Sets `mask` in `message` to `paths` unless the request already names some.
fn imply_mask(message: &mut DynamicMessage, mask: &FieldDescriptor, paths: Vec<String>) {
    let Kind::Message(mask_message) = mask.kind() else {
        return;
    };
    let sent = (message.get_field(mask).as_message())
        .and_then(|sent| sent.get_field_by_name("paths"))
        .is_some_and(|sent| sent.as_list().is_some_and(|list| !list.is_empty()));
    if sent || paths.is_empty() {
        return;
    }
    let mut implied = DynamicMessage::new(mask_message);
    let paths = paths
        .into_iter()
        .map(prost_reflect::Value::String)
        .collect();
    implied.set_field_by_name("paths", prost_reflect::Value::List(paths));
    message.set_field(mask, prost_reflect::Value::Message(implied));
}

/// How answers and error bodies are written: fields at their default value are sent too
/// (`"enabled": false`, `[]`), as grpc-gateway v2's marshaler sends them (`EmitUnpopulated`),
/// so a client finds every field it reads; a message field that is not set is left out
/// (protojson sends `null`).
pub fn json_options() -> SerializeOptions {
    SerializeOptions::new().skip_default_fields(false)
}

/// The proto3 JSON of an encoded `output` message, or of its field with JSON name `field`
/// (`response_body`), written with [`json_options`].
pub fn response_json(
    output: &MessageDescriptor,
    encoded: &[u8],
    field: Option<&str>,
) -> Result<Value, ApiError> {
    let message = DynamicMessage::decode(output.clone(), encoded).map_err(ApiError::internal)?;
    let json = message
        .serialize_with_options(serde_json::value::Serializer, &json_options())
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
    strict::parse(body)
        .map(Some)
        .map_err(|error| ApiError::invalid("body", format!("not valid JSON: {error}")))
}

/// `a=1&b.c=x%20y&r=1&r=2` → pairs, `+` as space, percent-decoded.
pub fn parse_query(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    let decode = |text: &str| {
        super::routes::percent_decode(&text.replace('+', " "), false).ok_or_else(|| {
            let shown = palisade_grpc::echoed(text);
            ApiError::invalid("query", format!("bad escape in `{shown}`"))
        })
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

/// The fields along dotted `path` (proto or JSON names) from `message`, each but the last a
/// singular message field.
fn resolve(message: &MessageDescriptor, path: &str) -> Result<Vec<FieldDescriptor>, ApiError> {
    let mut fields = Vec::new();
    let mut descriptor = message.clone();
    let mut names = path.split('.').peekable();
    while let Some(name) = names.next() {
        // A client's name, echoed cut short.
        let field = find_field(&descriptor, name).ok_or_else(|| {
            ApiError::invalid(
                palisade_grpc::echoed(path),
                format!(
                    "no field `{}` in {}",
                    palisade_grpc::echoed(name),
                    descriptor.full_name()
                ),
            )
        })?;
        if names.peek().is_some() {
            let Kind::Message(child) = field.kind() else {
                return Err(ApiError::invalid(
                    palisade_grpc::echoed(path),
                    format!("`{name}` is not a message"),
                ));
            };
            if field.is_list() || field.is_map() {
                return Err(ApiError::invalid(
                    palisade_grpc::echoed(path),
                    format!("`{name}` cannot be addressed by path"),
                ));
            }
            descriptor = child;
        }
        fields.push(field);
    }
    Ok(fields)
}

/// `tenant.display_name`: how field violations name a field, whichever spelling was sent.
fn proto_path(fields: &[FieldDescriptor]) -> String {
    fields
        .iter()
        .map(FieldDescriptor::name)
        .collect::<Vec<_>>()
        .join(".")
}

/// grpc-gateway's refusal of a repeated query parameter for a singular field: keeping either
/// value would silently drop the other.
fn too_many_values(field: &FieldDescriptor, path: String, first: &str, second: &str) -> ApiError {
    let hint = match field.kind() {
        Kind::Message(message) if message.full_name() == "google.protobuf.FieldMask" => {
            "; a field mask takes its paths comma-separated (`a,b`)"
        }
        _ => "",
    };
    ApiError::invalid(
        path,
        format!(
            "too many values (`{}`, `{}`): the field takes one{hint}",
            palisade_grpc::echoed(first),
            palisade_grpc::echoed(second)
        ),
    )
}

/// Sets the field at the end of `fields` (from [`resolve`]) in the JSON object `root`. A
/// repeated field collects every value given for it.
fn set(
    root: &mut Map<String, Value>,
    fields: &[FieldDescriptor],
    leaf: Leaf,
) -> Result<(), ApiError> {
    let (field, parents) = fields.split_last().expect("a path has at least one field");
    let mut object = root;
    for parent in parents {
        // A parent the body spelled the proto way (`user_profile`) is kept, under the JSON
        // name the value is set beneath, with its other fields (the body spells a field one
        // way only: `strict::check_spellings`).
        if parent.name() != parent.json_name()
            && let Some(spelled) = object.remove(parent.name())
        {
            object.insert(parent.json_name().to_owned(), spelled);
        }
        let entry = object
            .entry(parent.json_name())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        object = entry.as_object_mut().expect("just made an object");
    }
    let value = match leaf {
        Leaf::Json(value) => value,
        Leaf::Text(text) => text_value(field, text, &proto_path(fields))?,
    };
    if field.name() != field.json_name() {
        object.remove(field.name());
    }
    let key = field.json_name().to_owned();
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
    Ok(())
}

fn find_field(message: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    message
        .get_field_by_name(name)
        .or_else(|| message.get_field_by_json_name(name))
}

/// Text from a URL as the JSON value proto3 JSON expects for `field`: numbers stay strings
/// (proto3 JSON accepts quoted numbers, and 64-bit ones need it), booleans become booleans,
/// enums go by name or number, well-known message types parse from their string form. The
/// value is decoded on its own here, as the whole message is later, so that a bad one is
/// blamed on `path` rather than on the body.
fn text_value(field: &FieldDescriptor, text: String, path: &str) -> Result<Value, ApiError> {
    if field.is_map() {
        return Err(ApiError::invalid(
            path,
            "map fields cannot be set from the URL",
        ));
    }
    let value = match field.kind() {
        Kind::Bool => match text.as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => {
                return Err(ApiError::invalid(
                    path,
                    format!(
                        "invalid value `{}`: must be `true` or `false`",
                        palisade_grpc::echoed(&text)
                    ),
                ));
            }
        },
        Kind::Enum(_) => match text.parse::<i32>() {
            Ok(number) => Value::from(number),
            Err(_) => Value::String(text.clone()),
        },
        // grpc-gateway passes a mask's paths from the URL as written, so its clients send the
        // proto names (`display_name`); proto3 JSON spells them `displayName`. Both are taken.
        Kind::Message(message) if message.full_name() == "google.protobuf.FieldMask" => {
            Value::String(camel_case_paths(&text))
        }
        Kind::Message(message) => match strict::time_problem(message.full_name(), &text) {
            Some(problem) => return Err(ApiError::invalid(path, problem)),
            None => Value::String(text.clone()),
        },
        _ => Value::String(text.clone()),
    };
    let alone = if field.is_list() {
        Value::Array(vec![value.clone()])
    } else {
        value.clone()
    };
    let mut object = Map::new();
    object.insert(field.json_name().to_owned(), alone);
    DynamicMessage::deserialize(field.parent_message().clone(), Value::Object(object)).map_err(
        |error| {
            let shown = palisade_grpc::echoed(&text);
            ApiError::invalid(path, format!("invalid value `{shown}`: {error}"))
        },
    )?;
    Ok(value)
}

/// A field mask's comma-separated paths in proto3 JSON's lowerCamelCase: `display_name,a.b_c`
/// → `displayName,a.bC` (as protoc derives JSON names: an underscore dropped, the next
/// character upper-cased); camelCase paths pass unchanged.
fn camel_case_paths(paths: &str) -> String {
    let mut out = String::with_capacity(paths.len());
    let mut upper_next = false;
    for c in paths.chars() {
        match c {
            '_' => upper_next = true,
            _ if upper_next => {
                out.push(c.to_ascii_uppercase());
                upper_next = false;
            }
            _ => out.push(c),
        }
    }
    out
}

mod strict;
#[cfg(test)]
mod tests;

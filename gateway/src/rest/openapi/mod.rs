//! The OpenAPI 3 document of the REST API, generated at start from the same `google.api.http`
//! rules the router is built from ([`super::http_bindings`]), so the document cannot describe a
//! route that does not exist. Served at `GET /openapi.json`.
//!
//! - Paths spell out the literal segments of path variables (`/v1/{name=tenants/*}` →
//!   `/v1/tenants/{tenant}`, see [`super::routes::Template::openapi_path`]): the documented URL is the one a
//!   client sends.
//! - Schemas use proto3 JSON: lowerCamelCase names, 64-bit integers as strings, enums by name,
//!   well-known types in their JSON forms. Messages are `components.schemas` keyed by their
//!   full proto name.
//! - Fields not bound by the path or the body are query parameters (nested ones dotted:
//!   `a.b`); repeated scalars repeat (`r=1&r=2`); maps and repeated messages cannot be sent
//!   in a query and are left out.
//! - Server streams answer `application/x-ndjson`, one `{"result": …}` or final
//!   `{"error": …}` per line; a stream that fails before its first message answers with the
//!   failure's status and that one `{"error": …}` line. Every other error is
//!   `{code, message, details}`.
//! - Descriptions are the proto comments (the descriptor set keeps its source info).
//! - Internal methods (mesh-only, never routed by the gateway) are left out; public methods
//!   need no credential, the rest an API key in `authorization: ApiKey …` or `x-api-key`.

mod docs;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use palisade_grpc::MethodPolicies;
use prost_reflect::{DescriptorPool, EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

use self::docs::{Comments, summary};
use super::{HttpBinding, http_bindings, transcode::BodyRule};

/// `#/components/schemas/…` of the error body.
const ERROR_SCHEMA: &str = "google.rpc.Status";
/// How deep query parameters follow nested messages.
const MAX_QUERY_DEPTH: usize = 4;

/// The OpenAPI document for every REST route of `pool`'s `palisade.*` services.
pub fn document(pool: &DescriptorPool, policies: &MethodPolicies) -> Result<Value, String> {
    let mut builder = Builder {
        comments: Comments::default(),
        schemas: BTreeMap::new(),
        pending: Vec::new(),
    };
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut operation_ids: HashMap<String, usize> = HashMap::new();
    let mut tags: BTreeMap<String, Value> = BTreeMap::new();
    for binding in http_bindings(pool)? {
        let Some(policy) = policies.get(&binding.grpc_path) else {
            return Err(format!("{}: no policy", binding.grpc_path));
        };
        if policy.internal {
            continue;
        }
        let service = binding.method.parent_service();
        tags.entry(service.name().to_owned()).or_insert_with(|| {
            let mut tag = json!({ "name": service.name() });
            if let Some(text) = builder.comments.of(&service.parent_file(), service.path()) {
                tag["description"] = Value::String(text);
            }
            tag
        });
        let base_id = format!("{}_{}", service.name(), binding.method.name());
        let seen = operation_ids.entry(base_id.clone()).or_default();
        *seen += 1;
        let operation_id = match *seen {
            1 => base_id,
            n => format!("{base_id}_{n}"),
        };
        let (path, mut operation) = builder.operation(&binding, operation_id)?;
        operation["security"] = if policy.public {
            json!([])
        } else {
            json!([{ "BearerToken": [] }, { "ApiKeyAuthorization": [] }, { "ApiKeyHeader": [] }])
        };
        if let Some(permission) = &policy.permission
            && !policy.public
            && !operation["description"]
                .as_str()
                .unwrap_or_default()
                .contains(permission.as_str())
        {
            let description = operation["description"].as_str().unwrap_or_default();
            operation["description"] = Value::String(
                format!("{description}\n\nPermission: `{permission}`.")
                    .trim()
                    .to_owned(),
            );
        }
        let method = binding.http_method.as_str().to_ascii_lowercase();
        // Two rules that render alike (`/v1/{name=tenants/*}`, `/v1/tenants/{id}`) route to
        // the most specific first; the document keeps the first declared, as one OpenAPI path
        // holds one operation per method.
        let item = paths.entry(path.clone()).or_default();
        if item.contains_key(&method) {
            tracing::warn!(%path, %method, grpc = %binding.grpc_path, "openapi: a second rule for one path and method is left out");
            continue;
        }
        item.insert(method, operation);
    }
    builder.drain_pending();
    let mut schemas = std::mem::take(&mut builder.schemas);
    schemas.insert(ERROR_SCHEMA.to_owned(), error_schema());
    Ok(json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Palisade API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The REST/JSON mapping of Palisade's gRPC API, generated from the \
                `google.api.http` rules of its protos. The same port serves native gRPC and \
                gRPC-Web. Bodies and responses use the proto3 JSON mapping; errors use \
                grpc-gateway's HTTP statuses and a `{code, message, details}` body.",
        },
        "tags": tags.into_values().collect::<Vec<_>>(),
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {
                "Error": {
                    "description": "The call failed: the HTTP status is grpc-gateway's for the \
                        gRPC code; the body is a `google.rpc.Status` in proto3 JSON.",
                    "content": {
                        "application/json": { "schema": schema_ref(ERROR_SCHEMA) },
                    },
                },
                "StreamError": {
                    "description": "The stream failed before its first message: the HTTP \
                        status is grpc-gateway's for the gRPC code, the body one \
                        `{\"error\": …}` line. A request refused before any call (no route, \
                        a bad query) has a plain `google.rpc.Status` body.",
                    "content": {
                        "application/json": { "schema": { "oneOf": [
                            {
                                "type": "object",
                                "required": ["error"],
                                "properties": { "error": schema_ref(ERROR_SCHEMA) },
                            },
                            schema_ref(ERROR_SCHEMA),
                        ] } },
                    },
                },
            },
            "securitySchemes": {
                "BearerToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "An access token from `AuthService.Login` (EdDSA JWT, verified against identity's JWKS).",
                },
                "ApiKeyAuthorization": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "authorization",
                    "description": "An API key in the `authorization` header: `ApiKey <key>`.",
                },
                "ApiKeyHeader": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "x-api-key",
                    "description": "An API key, alone, in the `x-api-key` header.",
                },
            },
        },
        "security": [{ "BearerToken": [] }, { "ApiKeyAuthorization": [] }, { "ApiKeyHeader": [] }],
    }))
}

struct Builder {
    comments: Comments,
    /// Finished message schemas by full name.
    schemas: BTreeMap<String, Value>,
    /// Messages referenced but not yet described.
    pending: Vec<MessageDescriptor>,
}

impl Builder {
    /// The OpenAPI path and operation object of one rule.
    fn operation(
        &mut self,
        binding: &HttpBinding,
        operation_id: String,
    ) -> Result<(String, Value), String> {
        let method = &binding.method;
        let input = method.input();
        let (path, path_parameters) = binding.template.openapi_path();
        let mut parameters = Vec::new();
        for parameter in &path_parameters {
            let description = match (&parameter.field, &parameter.pattern) {
                (Some(field), Some(pattern)) if pattern != "*" => format!(
                    "A segment of `{field}`, which the gateway sets to the path's `{pattern}` part."
                ),
                (Some(field), _) => self
                    .field_at(&input, field)
                    .and_then(|f| self.comments.of(&f.parent_file(), f.path()))
                    .unwrap_or_else(|| format!("The request's `{field}`.")),
                (None, _) => "A path segment that is not sent to the method.".to_owned(),
            };
            let mut schema = json!({ "type": "string" });
            if !parameter.rest {
                schema["pattern"] = Value::String("^[^/]+$".to_owned());
            }
            parameters.push(json!({
                "name": parameter.name,
                "in": "path",
                "required": true,
                "description": description,
                "schema": schema,
            }));
        }
        let bound: BTreeSet<&str> = binding.template.fields().collect();
        if binding.body != BodyRule::Whole {
            let body_field = match &binding.body {
                BodyRule::Field(field) => Some(field.as_str()),
                _ => None,
            };
            let mut visiting = vec![input.full_name().to_owned()];
            self.query_parameters(
                &input,
                "",
                "",
                &bound,
                body_field,
                &mut visiting,
                &mut parameters,
            );
        }
        let mut operation = json!({
            "operationId": operation_id,
            "tags": [method.parent_service().name()],
            "parameters": parameters,
            "responses": {
                "200": self.response(binding),
                "default": { "$ref": match binding.method.is_server_streaming() {
                    true => "#/components/responses/StreamError",
                    false => "#/components/responses/Error",
                } },
            },
            "x-grpc-method": binding.grpc_path,
        });
        if let Some(text) = self.comments.of(&method.parent_file(), method.path()) {
            operation["summary"] = Value::String(summary(&text));
            operation["description"] = Value::String(text);
        }
        let body_schema = match &binding.body {
            BodyRule::None => None,
            BodyRule::Whole if bound.is_empty() => Some(self.message_schema(&input)),
            BodyRule::Whole => {
                // The path sets its fields; the body may carry every other one.
                let mut schema = self.describe(&input);
                if let Some(properties) = schema["properties"].as_object_mut() {
                    for field in &bound {
                        if let Some(f) = input.get_field_by_name(field) {
                            properties.remove(f.json_name());
                        }
                    }
                }
                Some(schema)
            }
            BodyRule::Field(field) => {
                let f = input
                    .get_field_by_name(field)
                    .ok_or_else(|| format!("{}: no body field `{field}`", binding.grpc_path))?;
                Some(self.field_schema(&f))
            }
        };
        if let Some(schema) = body_schema {
            operation["requestBody"] = json!({
                "content": { "application/json": { "schema": schema } },
            });
        }
        Ok((path, operation))
    }

    fn response(&mut self, binding: &HttpBinding) -> Value {
        let output = binding.method.output();
        let schema = match &binding.response_body {
            Some(field) => self.field_schema(field),
            None => self.message_schema(&output),
        };
        if binding.method.is_server_streaming() {
            json!({
                "description": "A stream: one JSON object per line, `{\"result\": …}` per \
                    message; if the stream fails, a last `{\"error\": …}` line (before its \
                    first message, the only one, with the failure's HTTP status).",
                "content": {
                    "application/x-ndjson": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "result": schema,
                                "error": schema_ref(ERROR_SCHEMA),
                            },
                        },
                    },
                },
            })
        } else {
            json!({
                "description": "OK",
                "content": { "application/json": { "schema": schema } },
            })
        }
    }

    /// Query parameters for the fields of `message` not bound by the path or the body.
    #[allow(clippy::too_many_arguments)]
    fn query_parameters(
        &mut self,
        message: &MessageDescriptor,
        proto_prefix: &str,
        json_prefix: &str,
        bound: &BTreeSet<&str>,
        body_field: Option<&str>,
        visiting: &mut Vec<String>,
        out: &mut Vec<Value>,
    ) {
        for field in message.fields() {
            let proto_path = format!("{proto_prefix}{}", field.name());
            let json_path = format!("{json_prefix}{}", field.json_name());
            if bound.contains(proto_path.as_str()) || body_field == Some(proto_path.as_str()) {
                continue;
            }
            if field.is_map() {
                continue;
            }
            let description = self.comments.of(&field.parent_file(), field.path());
            let scalar = match field.kind() {
                Kind::Message(child) => match query_well_known(child.full_name()) {
                    Some(schema) => Some(schema),
                    None if field.is_list()
                        || child.full_name().starts_with("google.protobuf.")
                        || visiting.len() > MAX_QUERY_DEPTH
                        || visiting.iter().any(|name| name == child.full_name()) =>
                    {
                        continue;
                    }
                    None => {
                        visiting.push(child.full_name().to_owned());
                        self.query_parameters(
                            &child,
                            &format!("{proto_path}."),
                            &format!("{json_path}."),
                            bound,
                            body_field,
                            visiting,
                            out,
                        );
                        visiting.pop();
                        None
                    }
                },
                kind => Some(self.kind_schema(&kind)),
            };
            let Some(schema) = scalar else { continue };
            let mut parameter = json!({ "name": json_path, "in": "query" });
            if field.is_list() {
                parameter["schema"] = json!({ "type": "array", "items": schema });
                parameter["style"] = json!("form");
                parameter["explode"] = json!(true);
            } else {
                parameter["schema"] = schema;
            }
            if let Some(description) = description {
                parameter["description"] = Value::String(description);
            }
            out.push(parameter);
        }
    }

    /// The field at a dotted proto path from `message`.
    fn field_at(&self, message: &MessageDescriptor, path: &str) -> Option<FieldDescriptor> {
        let mut message = message.clone();
        let mut found = None;
        for name in path.split('.') {
            let field = message.get_field_by_name(name)?;
            if let Kind::Message(child) = field.kind() {
                message = child;
            }
            found = Some(field);
        }
        found
    }

    /// A `$ref` to the message's schema, or the inline JSON form of a well-known type.
    fn message_schema(&mut self, message: &MessageDescriptor) -> Value {
        if let Some(schema) = well_known(message.full_name()) {
            return schema;
        }
        if !self.schemas.contains_key(message.full_name())
            && !self.pending.iter().any(|m| m == message)
        {
            self.pending.push(message.clone());
        }
        schema_ref(message.full_name())
    }

    fn drain_pending(&mut self) {
        while let Some(message) = self.pending.pop() {
            if self.schemas.contains_key(message.full_name()) {
                continue;
            }
            // A placeholder first, so that a message referring to itself is not queued again.
            self.schemas
                .insert(message.full_name().to_owned(), Value::Null);
            let schema = self.describe(&message);
            self.schemas.insert(message.full_name().to_owned(), schema);
        }
    }

    /// The object schema of a message: one property per field, by JSON name.
    fn describe(&mut self, message: &MessageDescriptor) -> Value {
        let mut properties = Map::new();
        for field in message.fields() {
            let mut schema = self.field_schema(&field);
            if let Some(text) = self.comments.of(&field.parent_file(), field.path()) {
                schema = with_description(schema, text);
            }
            properties.insert(field.json_name().to_owned(), schema);
        }
        let mut schema = json!({ "type": "object", "properties": properties });
        if let Some(text) = self.comments.of(&message.parent_file(), message.path()) {
            schema["description"] = Value::String(text);
        }
        schema
    }

    fn field_schema(&mut self, field: &FieldDescriptor) -> Value {
        if field.is_map() {
            let Kind::Message(entry) = field.kind() else {
                unreachable!("a map field's kind is its entry message")
            };
            let value = self.kind_schema(&entry.map_entry_value_field().kind());
            return json!({ "type": "object", "additionalProperties": value });
        }
        let schema = self.kind_schema(&field.kind());
        if field.is_list() {
            json!({ "type": "array", "items": schema })
        } else {
            schema
        }
    }

    fn kind_schema(&mut self, kind: &Kind) -> Value {
        match kind {
            Kind::Double => json!({ "type": "number", "format": "double" }),
            Kind::Float => json!({ "type": "number", "format": "float" }),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                json!({ "type": "integer", "format": "int32" })
            }
            Kind::Uint32 | Kind::Fixed32 => {
                json!({ "type": "integer", "format": "int64", "minimum": 0, "maximum": u32::MAX })
            }
            // proto3 JSON sends 64-bit integers as strings (readers accept numbers too).
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                json!({ "type": "string", "format": "int64" })
            }
            Kind::Uint64 | Kind::Fixed64 => json!({ "type": "string", "format": "uint64" }),
            Kind::Bool => json!({ "type": "boolean" }),
            Kind::String => json!({ "type": "string" }),
            Kind::Bytes => json!({ "type": "string", "format": "byte" }),
            Kind::Enum(descriptor) => enum_schema(descriptor),
            Kind::Message(message) => self.message_schema(message),
        }
    }
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// A description next to a `$ref` is ignored in OpenAPI 3.0, so the reference is wrapped.
fn with_description(mut schema: Value, text: String) -> Value {
    if schema.get("$ref").is_some() {
        return json!({ "allOf": [schema], "description": text });
    }
    schema["description"] = Value::String(text);
    schema
}

fn enum_schema(descriptor: &EnumDescriptor) -> Value {
    if descriptor.full_name() == "google.protobuf.NullValue" {
        return json!({ "nullable": true, "enum": [null] });
    }
    let names: Vec<String> = descriptor.values().map(|v| v.name().to_owned()).collect();
    json!({ "type": "string", "enum": names })
}

/// The proto3 JSON form of a well-known type, or `None` for an ordinary message.
fn well_known(full_name: &str) -> Option<Value> {
    Some(match full_name {
        "google.protobuf.Any" => json!({
            "type": "object",
            "properties": { "@type": { "type": "string" } },
            "required": ["@type"],
            "additionalProperties": true,
        }),
        "google.protobuf.Struct" => json!({ "type": "object", "additionalProperties": true }),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.ListValue" => json!({ "type": "array", "items": {} }),
        "google.protobuf.Empty" => json!({ "type": "object" }),
        other => return query_well_known(other),
    })
}

/// Well-known types with a scalar JSON form, which can also be sent as query parameters.
fn query_well_known(full_name: &str) -> Option<Value> {
    Some(match full_name {
        "google.protobuf.Timestamp" => json!({ "type": "string", "format": "date-time" }),
        "google.protobuf.Duration" => json!({
            "type": "string",
            "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$",
            "description": "Seconds with an `s` suffix, e.g. `1.5s`.",
        }),
        "google.protobuf.FieldMask" => json!({
            "type": "string",
            "description": "Comma-separated lowerCamelCase field paths.",
        }),
        "google.protobuf.DoubleValue" => json!({ "type": "number", "format": "double" }),
        "google.protobuf.FloatValue" => json!({ "type": "number", "format": "float" }),
        "google.protobuf.Int64Value" => json!({ "type": "string", "format": "int64" }),
        "google.protobuf.UInt64Value" => json!({ "type": "string", "format": "uint64" }),
        "google.protobuf.Int32Value" => json!({ "type": "integer", "format": "int32" }),
        "google.protobuf.UInt32Value" => json!({ "type": "integer", "format": "int64" }),
        "google.protobuf.BoolValue" => json!({ "type": "boolean" }),
        "google.protobuf.StringValue" => json!({ "type": "string" }),
        "google.protobuf.BytesValue" => json!({ "type": "string", "format": "byte" }),
        _ => return None,
    })
}

/// The REST error body: `google.rpc.Status` in proto3 JSON.
fn error_schema() -> Value {
    json!({
        "type": "object",
        "description": "The error of a failed call (google.rpc.Status).",
        "properties": {
            "code": {
                "type": "integer",
                "format": "int32",
                "description": "The gRPC status code (google.rpc.Code), e.g. 5 for NOT_FOUND.",
            },
            "message": { "type": "string", "description": "A developer-facing message." },
            "details": {
                "type": "array",
                "description": "google.rpc details: `ErrorInfo` (domain `palisade.dev`, a \
                    stable `reason`) and, for bad input, `BadRequest` with field violations.",
                "items": well_known("google.protobuf.Any").expect("a well-known type"),
            },
        },
        "required": ["code", "message", "details"],
    })
}

#[cfg(test)]
mod tests;

//! A request body whose meaning is not in doubt: no object names a key twice, no message
//! object sets a field twice under its two spellings (`displayName` and `display_name`), and
//! none names a field its message does not have (refused with the field's path).
//! serde_json keeps the last of two equal keys and prost-reflect the last spelling it meets,
//! so without these checks a body could mean one thing to a proxy or firewall that reads the
//! first value and another to the mesh. Go's protojson, which grpc-gateway uses, refuses both.
//! Durations and timestamps are held to proto3 JSON's forms as protojson holds them (at most
//! nine fractional digits, no leap second), where prost-reflect reads more, and so are 64-bit
//! integers sent as JSON numbers (whole and exact, where prost-reflect rounds and clamps).

use std::{collections::HashMap, fmt};

use palisade_grpc::ApiError;
use prost_reflect::{Kind, MessageDescriptor};
use serde::de::{Deserialize, Deserializer, Error, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// `body` as JSON, refused if any object in it names a key twice.
pub fn parse(body: &[u8]) -> Result<Value, serde_json::Error> {
    serde_json::from_slice::<Unique>(body).map(|unique| unique.0)
}

/// Refuses a `message` object (at `path`, the proto path of the field holding it, empty for
/// the request itself) that sets one field under both its spellings, at any depth.
pub fn check_spellings(
    message: &MessageDescriptor,
    object: &Map<String, Value>,
    path: &str,
) -> Result<(), ApiError> {
    // These have a JSON form of their own (RFC 3339 strings, free-form objects, `@type`).
    if message.full_name().starts_with("google.protobuf.") {
        return Ok(());
    }
    let mut seen: HashMap<u32, &str> = HashMap::new();
    let within = |name: &str| {
        if path.is_empty() {
            name.to_owned()
        } else {
            format!("{path}.{name}")
        }
    };
    for (key, value) in object {
        let Some(field) = super::find_field(message, key) else {
            // Named where it is, as the decoder (which would refuse it too) cannot.
            let key = palisade_grpc::echoed(key);
            return Err(ApiError::invalid(
                within(&key),
                format!("unknown field `{key}` in {}", message.full_name()),
            ));
        };
        let field_path = within(field.name());
        if let Some(first) = seen.insert(field.number(), key) {
            return Err(ApiError::invalid(
                field_path,
                format!("is given twice, as `{first}` and as `{key}`"),
            ));
        }
        let value_kind = match field.kind() {
            Kind::Message(entry) if field.is_map() => entry.map_entry_value_field().kind(),
            kind => kind,
        };
        if is_64_bit_integer(&value_kind) {
            let values: Vec<&Value> = match value {
                Value::Array(items) => items.iter().collect(),
                Value::Object(entries) if field.is_map() => entries.values().collect(),
                value => vec![value],
            };
            if let Some(problem) = values.into_iter().find_map(inexact_integer) {
                return Err(ApiError::invalid(field_path, problem));
            }
            continue;
        }
        let Kind::Message(child) = field.kind() else {
            continue;
        };
        let children: Vec<&Value> = match value {
            Value::Array(items) if field.is_list() => items.iter().collect(),
            Value::Object(entries) if field.is_map() => entries.values().collect(),
            value if !field.is_map() && !field.is_list() => vec![value],
            _ => continue,
        };
        let child = if field.is_map() {
            match child.map_entry_value_field().kind() {
                Kind::Message(value_message) => value_message,
                _ => continue,
            }
        } else {
            child
        };
        for value in children {
            match value {
                Value::Object(entries) => check_spellings(&child, entries, &field_path)?,
                Value::String(text) => {
                    if let Some(problem) = time_problem(child.full_name(), text) {
                        return Err(ApiError::invalid(field_path, problem));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

fn is_64_bit_integer(kind: &Kind) -> bool {
    matches!(
        kind,
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint64 | Kind::Fixed64
    )
}

/// What is wrong with `value` for a 64-bit integer field, when it is a JSON number that was
/// not read as an integer (a fraction, an exponent, or beyond 64 bits): serde_json holds it
/// as a double, and prost-reflect would round it, or clamp it to the type's range, where
/// protojson refuses. Within 2^53 a double is exact, so `1e3` still means 1000.
fn inexact_integer(value: &Value) -> Option<&'static str> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    let Value::Number(number) = value else {
        return None;
    };
    let float = number.as_f64().filter(|_| number.is_f64())?;
    if float.fract() != 0.0 {
        Some("must be a whole number")
    } else if float.abs() >= EXACT {
        Some("is out of range or inexact as a JSON number; 64-bit integers are sent as strings")
    } else {
        None
    }
}

/// What proto3 JSON refuses in the string form of a `google.protobuf.Duration` (`"1.5s"`) or
/// `Timestamp` (`"2026-01-02T03:04:05.123Z"`) that prost-reflect accepts: more than nine
/// fractional digits (finer than nanoseconds, silently cut), and a timestamp's second 60
/// (a leap second). Anything else wrong is refused when the message is decoded.
pub fn time_problem(type_name: &str, text: &str) -> Option<&'static str> {
    let time = match type_name {
        "google.protobuf.Duration" => text,
        "google.protobuf.Timestamp" => {
            let time = &text[text.find(['T', 't'])? + 1..];
            if time.get(6..8) == Some("60") {
                return Some("leap seconds are not allowed (second 60)");
            }
            time
        }
        _ => return None,
    };
    let fraction = &time[time.find('.')? + 1..];
    let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
    (digits > 9).then_some("at most nine fractional digits (nanoseconds) are allowed")
}

/// A JSON value read with every object's keys checked for repeats.
struct Unique(Value);

impl<'de> Deserialize<'de> for Unique {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Unique, D::Error> {
        deserializer.deserialize_any(UniqueVisitor).map(Unique)
    }
}

struct UniqueVisitor;

impl<'de> Visitor<'de> for UniqueVisitor {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E: Error>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E: Error>(self, value: i64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_u64<E: Error>(self, value: u64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_f64<E: Error>(self, value: f64) -> Result<Value, E> {
        Ok(Number::from_f64(value).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: Error>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E: Error>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E: Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Value, A::Error> {
        let mut values = Vec::with_capacity(items.size_hint().unwrap_or(0).min(1024));
        while let Some(Unique(value)) = items.next_element()? {
            values.push(value);
        }
        Ok(Value::Array(values))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = entries.next_key::<String>()? {
            if object.contains_key(&key) {
                let key = palisade_grpc::echoed(&key);
                return Err(A::Error::custom(format!("duplicate key `{key}`")));
            }
            let Unique(value) = entries.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn descriptor(name: &str) -> MessageDescriptor {
        palisade_proto::descriptor_pool()
            .get_message_by_name(name)
            .unwrap()
    }

    #[test]
    fn json_reads_as_serde_json_reads_it() {
        let body = br#"{"a": [1, -2, 3.5, 18446744073709551615, "x", null, true], "b": {"c": {}}}"#;
        assert_eq!(
            parse(body).unwrap(),
            serde_json::from_slice::<Value>(body).unwrap()
        );
    }

    #[test]
    fn a_key_given_twice_is_refused_at_any_depth() {
        for body in [
            &br#"{"a": 1, "a": 2}"#[..],
            br#"{"a": {"b": 1, "b": 1}}"#,
            br#"[{"b": 1}, {"c": 1, "c": 2}]"#,
        ] {
            let error = parse(body).unwrap_err().to_string();
            assert!(error.starts_with("duplicate key"), "{error}");
        }
        // The same key in different objects is fine.
        parse(br#"{"a": {"b": 1}, "c": {"b": 1}}"#).unwrap();
    }

    #[test]
    fn a_field_given_under_both_spellings_is_refused_at_any_depth() {
        let request = descriptor("palisade.identity.v1.CreateTenantRequest");
        let check = |body: Value| {
            check_spellings(&request, body.as_object().unwrap(), "")
                .map_err(|error| error.to_string())
        };
        let error = check(json!({"tenantId": "a", "tenant_id": "b"})).unwrap_err();
        assert!(error.contains("tenant_id"), "{error}");
        let error =
            check(json!({"tenant": {"displayName": "A", "display_name": "B"}})).unwrap_err();
        assert!(error.contains("tenant.display_name"), "{error}");
        check(json!({"tenantId": "a", "tenant": {"display_name": "A"}})).unwrap();
    }

    /// A 64-bit integer sent as a JSON number that is not an exact integer is refused, as
    /// protojson refuses it, instead of being rounded or clamped to the type's range (here in
    /// a map, `Tenant.limit_overrides`).
    #[test]
    fn inexact_numbers_for_64_bit_integers_are_refused() {
        let tenant = descriptor("palisade.identity.v1.Tenant");
        let check = |users: &str| {
            let body = format!(r#"{{"limitOverrides": {{"users": {users}}}}}"#);
            let Value::Object(object) = parse(body.as_bytes()).unwrap() else {
                panic!("an object");
            };
            check_spellings(&tenant, &object, "tenant")
        };
        for inexact in ["-9223372036854775809", "1e30", "12345678901234567.5", "2.5"] {
            let refused = check(inexact).unwrap_err().to_string();
            assert!(
                refused.contains("tenant.limit_overrides"),
                "{inexact}: {refused}"
            );
        }
        for exact in ["1e3", "9223372036854775807", "\"9007199254740993\""] {
            check(exact).unwrap();
        }
    }
}

//! The fields an Update method changes (AIP-134): those its `update_mask` names, `*` for every
//! updatable one, or, with no mask, every field the request sets.
//!
//! A mask may also name the resource's other fields: a mask valid for reading is valid for
//! writing, and writing back what was read changes nothing (AIP-161). So a client that reads a
//! resource, changes a field and sends it all back (a REST PATCH whose mask is the body's keys)
//! succeeds. Output-only fields are ignored (AIP-203); a field another method changes (a
//! user's roles) must come back as it is, and a new value is refused rather than dropped
//! ([`require_read_back`]).

use prost::Message;
use prost_reflect::DynamicMessage;
use prost_types::FieldMask;

use crate::{ApiError, FieldViolation};

/// The paths an update names, in `updatable`'s order whatever order the mask used (so audit
/// attributes read the same every time), each once. `set` says, per updatable field, whether
/// the request sets it, for an empty mask. A `read_only` path (output only, or changed by
/// another method: see [`require_read_back`]) is left out; any other is a violation of
/// `update_mask`.
pub fn update_paths(
    mask: Option<&FieldMask>,
    updatable: &[&'static str],
    read_only: &[&str],
    set: &[bool],
) -> Result<Vec<&'static str>, ApiError> {
    let paths: Vec<&str> = mask
        .map(|mask| mask.paths.iter().map(String::as_str).collect())
        .unwrap_or_default();
    if paths.is_empty() {
        return Ok(updatable
            .iter()
            .zip(set)
            .filter_map(|(path, set)| set.then_some(*path))
            .collect());
    }
    // Every other path is checked beside `*` too: `["*", "no_such_field"]` is a mistake the
    // wildcard must not hide.
    let violations: Vec<FieldViolation> = paths
        .iter()
        .filter(|path| **path != "*" && !updatable.contains(path) && !read_only.contains(path))
        .map(|path| {
            FieldViolation::new(
                "update_mask",
                format!(
                    "unknown path {:?}; updatable: {}",
                    crate::echoed(path),
                    updatable.join(", ")
                ),
            )
        })
        .collect();
    if violations.is_empty() && paths.contains(&"*") {
        Ok(updatable.to_vec())
    } else if violations.is_empty() {
        Ok(updatable
            .iter()
            .copied()
            .filter(|path| paths.contains(path))
            .collect())
    } else {
        Err(ApiError::InvalidArgument(violations))
    }
}

/// Refuses an update that would change a field this method does not change but another one
/// does (`set_elsewhere`: a user's roles change by `AssignRole`), rather than drop the new
/// value without a word; the value the resource has may be sent back (AIP-161). Checked are
/// the fields the mask names, or with no mask or `*`, those the request sets. (Output-only
/// fields are only ever ignored, AIP-203: a time a client read earlier is no error.)
/// `resource` is the message's full proto name and `field` the request field holding it
/// (violations name `user.roles`); `current` is the resource as a read returns it,
/// `requested` as the request carries it. Returns the violations, for the caller to report
/// with its own.
pub fn require_read_back<M: Message>(
    mask: Option<&FieldMask>,
    set_elsewhere: &[&str],
    (resource, field): (&str, &str),
    current: &M,
    requested: &M,
) -> Result<Vec<FieldViolation>, ApiError> {
    let descriptor = palisade_proto::descriptor_pool()
        .get_message_by_name(resource)
        .ok_or_else(|| ApiError::internal(format!("no message {resource}")))?;
    let decode = |message: &M| {
        DynamicMessage::decode(descriptor.clone(), message.encode_to_vec().as_slice())
            .map_err(ApiError::internal)
    };
    let (current, requested) = (decode(current)?, decode(requested)?);
    let named: Vec<&str> = mask
        .map(|mask| mask.paths.iter().map(String::as_str).collect())
        .unwrap_or_default();
    let checked = |path: &&&str| {
        if named.is_empty() || named.contains(&"*") {
            requested.has_field_by_name(path)
        } else {
            named.contains(path)
        }
    };
    Ok((set_elsewhere.iter())
        .filter(checked)
        .filter(|path| current.get_field_by_name(path) != requested.get_field_by_name(path))
        .map(|path| {
            FieldViolation::new(
                format!("{field}.{path}"),
                "is not changed by this method: send its current value, or leave it out",
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPDATABLE: [&str; 3] = ["display_name", "state", "plan"];

    fn paths(mask: &[&str], set: [bool; 3]) -> Result<Vec<&'static str>, ApiError> {
        let mask = FieldMask {
            paths: mask.iter().map(|path| (*path).to_owned()).collect(),
        };
        update_paths(Some(&mask), &UPDATABLE, &["name"], &set)
    }

    #[test]
    fn the_mask_or_the_set_fields_name_the_paths() {
        assert_eq!(
            paths(&["plan", "display_name", "plan"], [false; 3]).unwrap(),
            ["display_name", "plan"]
        );
        assert_eq!(paths(&["*"], [false; 3]).unwrap(), UPDATABLE);
        assert_eq!(paths(&[], [false, true, true]).unwrap(), ["state", "plan"]);
        assert_eq!(
            update_paths(None, &UPDATABLE, &[], &[true; 3]).unwrap(),
            UPDATABLE
        );
        match paths(&["state", "email", "roles"], [true; 3]) {
            Err(ApiError::InvalidArgument(violations)) => assert_eq!(violations.len(), 2),
            other => panic!("unexpected {other:?}"),
        }
        // A read-only field may be named; it is not among what the update changes.
        assert_eq!(paths(&["name", "plan"], [false; 3]).unwrap(), ["plan"]);
        // Beside `*`, a path still has to be a field.
        assert_eq!(paths(&["*", "name"], [false; 3]).unwrap(), UPDATABLE);
        match paths(&["*", "no_such_field"], [false; 3]) {
            Err(ApiError::InvalidArgument(violations)) => assert_eq!(violations.len(), 1),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_field_set_elsewhere_may_be_sent_back_but_not_changed() {
        use palisade_proto::palisade::identity::v1::User;
        const USER: (&str, &str) = ("palisade.identity.v1.User", "user");
        let current = User {
            name: "tenants/acme/users/1".into(),
            email: "ada@example.com".into(),
            roles: vec!["admin".into()],
            ..User::default()
        };
        let mask = |paths: &[&str]| FieldMask {
            paths: paths.iter().map(|path| (*path).to_owned()).collect(),
        };
        let elsewhere = ["email", "roles"];
        let check = |mask: Option<&FieldMask>, requested: &User| {
            let violations = require_read_back(mask, &elsewhere, USER, &current, requested);
            let fields: Vec<String> = violations.unwrap().into_iter().map(|v| v.field).collect();
            fields
        };
        assert!(check(Some(&mask(&["email", "roles", "display_name"])), &current).is_empty());
        let changed = User {
            roles: vec!["viewer".into()],
            email: String::new(),
            ..current.clone()
        };
        // What the mask names is compared ...
        assert!(check(Some(&mask(&["display_name"])), &changed).is_empty());
        assert_eq!(check(Some(&mask(&["roles"])), &changed), ["user.roles"]);
        // ... and without a mask, or with `*`, what the request sets (not the empty email).
        assert_eq!(check(None, &changed), ["user.roles"]);
        assert_eq!(check(Some(&mask(&["*"])), &changed), ["user.roles"]);
    }
}

//! The fields an Update method changes (AIP-134): those its `update_mask` names, `*` for every
//! updatable one, or, with no mask, every field the request sets.
//!
//! A mask may also name the resource's other fields (output only, or changed by another
//! method): a mask valid for reading is valid for writing, and writing back what was read
//! changes nothing (AIP-161). So a client that reads a resource, changes a field and sends it
//! all back (a REST PATCH whose mask is the body's keys) succeeds, while one that tries to
//! change such a field is told so rather than ignored ([`require_read_back`]).

use prost::Message;
use prost_reflect::DynamicMessage;
use prost_types::FieldMask;

use crate::{ApiError, FieldViolation};

/// The paths an update names, in `updatable`'s order whatever order the mask used (so audit
/// attributes read the same every time), each once. `set` says, per updatable field, whether
/// the request sets it, for an empty mask. A `read_only` path is left out (see
/// [`require_read_back`]); any other is a violation of `update_mask`.
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
    if paths.contains(&"*") {
        return Ok(updatable.to_vec());
    }
    let violations: Vec<FieldViolation> = paths
        .iter()
        .filter(|path| !updatable.contains(path) && !read_only.contains(path))
        .map(|path| {
            let shown: String = path.chars().take(64).collect();
            FieldViolation::new(
                "update_mask",
                format!(
                    "unknown path {shown:?}; updatable: {}",
                    updatable.join(", ")
                ),
            )
        })
        .collect();
    if violations.is_empty() {
        Ok(updatable
            .iter()
            .copied()
            .filter(|path| paths.contains(path))
            .collect())
    } else {
        Err(ApiError::InvalidArgument(violations))
    }
}

/// Refuses an update whose mask names a `read_only` field of the resource with a value other
/// than the one it has: sending back what was read is fine (AIP-161), but a new value would
/// otherwise be dropped without a word. Without a mask, the read-only fields the request sets
/// are checked, as the mask implied is what the request sets (AIP-134). `resource` is the
/// message's full proto name; `current` is the resource as a read returns it, `requested` as
/// the update request carries it.
pub fn require_read_back<M: Message>(
    mask: Option<&FieldMask>,
    read_only: &[&str],
    resource: &str,
    current: &M,
    requested: &M,
) -> Result<(), ApiError> {
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
        if named.is_empty() {
            requested.has_field_by_name(path)
        } else {
            named.contains(path)
        }
    };
    let violations: Vec<FieldViolation> = (read_only.iter())
        .filter(checked)
        .filter(|path| current.get_field_by_name(path) != requested.get_field_by_name(path))
        .map(|path| {
            FieldViolation::new(
                "update_mask",
                format!(
                    "{path} cannot be changed by this method: leave it out of the mask or send \
                     its current value"
                ),
            )
        })
        .collect();
    if violations.is_empty() {
        Ok(())
    } else {
        Err(ApiError::InvalidArgument(violations))
    }
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
    }

    #[test]
    fn a_read_only_field_may_be_sent_back_but_not_changed() {
        use palisade_proto::palisade::identity::v1::Tenant;
        const TENANT: &str = "palisade.identity.v1.Tenant";
        let current = Tenant {
            name: "tenants/acme".into(),
            create_time: Some(prost_types::Timestamp {
                seconds: 1,
                nanos: 5,
            }),
            ..Tenant::default()
        };
        let mask = |paths: &[&str]| FieldMask {
            paths: paths.iter().map(|path| (*path).to_owned()).collect(),
        };
        let read_only = ["name", "create_time"];
        let check = |paths: &[&str], requested: &Tenant| {
            require_read_back(Some(&mask(paths)), &read_only, TENANT, &current, requested)
        };
        check(&["name", "create_time", "display_name"], &current).unwrap();
        // Without a mask, what the request sets is checked.
        let unmasked =
            |requested: &Tenant| require_read_back(None, &read_only, TENANT, &current, requested);
        unmasked(&Tenant {
            name: "tenants/acme".into(),
            display_name: "New".into(),
            ..Tenant::default()
        })
        .unwrap();
        let mut other_time = current.clone();
        other_time.create_time = Some(prost_types::Timestamp::default());
        assert!(unmasked(&other_time).is_err());
        let mut changed = current.clone();
        changed.create_time = None;
        changed.name = "tenants/other".into();
        // Only what the mask names is compared.
        check(&["display_name"], &changed).unwrap();
        match check(&["create_time"], &changed) {
            Err(ApiError::InvalidArgument(violations)) => {
                assert_eq!(violations.len(), 1);
                assert!(violations[0].description.starts_with("create_time"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

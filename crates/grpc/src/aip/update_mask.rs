//! The fields an Update method changes (AIP-134): those its `update_mask` names, `*` for every
//! updatable one, or, with no mask, every field the request sets.

use prost_types::FieldMask;

use crate::{ApiError, FieldViolation};

/// The paths an update names, in `updatable`'s order whatever order the mask used (so audit
/// attributes read the same every time), each once. `set` says, per updatable field, whether
/// the request sets it, for an empty mask. An unknown path is a violation of `update_mask`.
pub fn update_paths(
    mask: Option<&FieldMask>,
    updatable: &[&'static str],
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
        .filter(|path| !updatable.contains(path))
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

#[cfg(test)]
mod tests {
    use super::*;

    const UPDATABLE: [&str; 3] = ["display_name", "state", "plan"];

    fn paths(mask: &[&str], set: [bool; 3]) -> Result<Vec<&'static str>, ApiError> {
        let mask = FieldMask {
            paths: mask.iter().map(|path| (*path).to_owned()).collect(),
        };
        update_paths(Some(&mask), &UPDATABLE, &set)
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
            update_paths(None, &UPDATABLE, &[true; 3]).unwrap(),
            UPDATABLE
        );
        match paths(&["state", "email", "roles"], [true; 3]) {
            Err(ApiError::InvalidArgument(violations)) => assert_eq!(violations.len(), 2),
            other => panic!("unexpected {other:?}"),
        }
    }
}

//! `UpdateUser`'s rules: which fields a mask names (AIP-134) and the user after the change,
//! with the fields whose values actually change.

use palisade_grpc::{ApiError, FieldViolation, aip};
use palisade_proto::palisade::identity::v1::{User, UserState};
use prost_types::FieldMask;

use super::{UserRecord, check_display_name};

/// The `update_mask` paths of `UpdateUser`, in the order the API documents them.
pub const UPDATABLE: [&str; 2] = ["display_name", "state"];

/// The user's other fields, which a mask may name (a user read and sent back whole): output
/// only (ignored, AIP-203), or [`SET_ELSEWHERE`].
/// `etag` too, which is a condition, not a value.
pub const READ_ONLY: [&str; 7] = [
    "name",
    "email",
    "roles",
    "create_time",
    "update_time",
    "lock_expire_time",
    "etag",
];

/// Fields other methods change (`roles` by `AssignRole`/`RevokeRole`; the email never): sent
/// to `UpdateUser`, they must be what the user has (`aip::require_read_back`).
pub const SET_ELSEWHERE: [&str; 2] = ["email", "roles"];

/// A validated update: the user as it will be stored and what changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserUpdate {
    pub user: UserRecord,
    /// Paths whose values change, in `UPDATABLE` order; empty when nothing does.
    pub changed: Vec<&'static str>,
}

impl UserUpdate {
    /// Whether the update takes the user from one state to another.
    pub fn changes_state(&self) -> bool {
        self.changed.contains(&"state")
    }
}

/// Applies `user`'s fields named by `mask` to `current`. An empty mask names every field set
/// in `user`, `*` every updatable one.
pub fn apply_update(
    current: &UserRecord,
    user: &User,
    mask: Option<&FieldMask>,
    now: i64,
) -> Result<UserUpdate, ApiError> {
    let set = [!user.display_name.is_empty(), user.state != 0];
    let paths = aip::update_paths(mask, &UPDATABLE, &READ_ONLY, &set)?;
    // A state this server does not know (written by a newer version) reads as unspecified,
    // which fails closed; writing the user back would store it as active, re-enabling it. So
    // the update must set the state, as for tenants.
    if current.state == UserState::Unspecified && !paths.contains(&"state") {
        return Err(ApiError::FailedPrecondition {
            reason: "UNKNOWN_USER_STATE",
            message: format!(
                "tenants/{}/users/{} is in a state this server does not know; set `state` in \
                 the same update",
                current.tenant_id, current.id
            ),
        });
    }
    let mut violations = Vec::new();
    let mut updated = current.clone();
    for path in &paths {
        match *path {
            "display_name" => {
                if let Some(name) = check_display_name(&user.display_name, &mut violations) {
                    updated.display_name = name;
                }
            }
            _ => match UserState::try_from(user.state) {
                Ok(state @ (UserState::Active | UserState::Disabled)) => updated.state = state,
                _ => violations.push(FieldViolation::new(
                    "user.state",
                    "must be USER_STATE_ACTIVE or USER_STATE_DISABLED",
                )),
            },
        }
    }
    if !violations.is_empty() {
        return Err(ApiError::InvalidArgument(violations));
    }
    let changed: Vec<&'static str> = paths
        .into_iter()
        .filter(|path| match *path {
            "display_name" => updated.display_name != current.display_name,
            _ => updated.state != current.state,
        })
        .collect();
    if !changed.is_empty() {
        updated.update_time = now;
    }
    Ok(UserUpdate {
        user: updated,
        changed,
    })
}

#[cfg(test)]
mod tests {
    use palisade_tenancy::TenantId;

    use super::*;

    fn ada() -> UserRecord {
        UserRecord {
            id: "0192f3c4-7a1e-7b3c-9d2e-4f5a6b7c8d9e".into(),
            tenant_id: TenantId::parse("acme").unwrap(),
            email: "ada@acme.example".into(),
            display_name: "Ada".into(),
            state: UserState::Active,
            roles: vec!["viewer".into()],
            create_time: 1,
            update_time: 1,
            locked_until: None,
        }
    }

    fn mask(paths: &[&str]) -> Option<FieldMask> {
        Some(FieldMask {
            paths: paths.iter().map(|path| (*path).to_owned()).collect(),
        })
    }

    fn fields(error: ApiError) -> Vec<String> {
        match error {
            ApiError::InvalidArgument(violations) => {
                violations.into_iter().map(|v| v.field).collect()
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn the_mask_says_what_changes() {
        let disable = User {
            display_name: "  Ada L.  ".into(),
            state: UserState::Disabled as i32,
            ..User::default()
        };
        let update = apply_update(&ada(), &disable, mask(&["state"]).as_ref(), 9).unwrap();
        assert_eq!(update.changed, ["state"]);
        assert!(update.changes_state());
        assert_eq!(update.user.state, UserState::Disabled);
        assert_eq!(update.user.display_name, "Ada");
        assert_eq!(update.user.update_time, 9);
        // No mask: every field set, trimmed as at creation.
        let update = apply_update(&ada(), &disable, None, 9).unwrap();
        assert_eq!(update.changed, ["display_name", "state"]);
        assert_eq!(update.user.display_name, "Ada L.");
        // Nothing that differs: nothing changes, not even the update time.
        let same = User {
            display_name: "Ada".into(),
            ..User::default()
        };
        let update = apply_update(&ada(), &same, mask(&["*"]).as_ref(), 9);
        assert_eq!(fields(update.unwrap_err()), ["user.state"]);
        let update = apply_update(&ada(), &same, None, 9).unwrap();
        assert!(update.changed.is_empty());
        assert_eq!(update.user, ada());
    }

    #[test]
    fn bad_paths_and_values_are_named() {
        let blank = User {
            display_name: " ".into(),
            ..User::default()
        };
        let error = apply_update(&ada(), &blank, mask(&["password", "salt"]).as_ref(), 9);
        assert_eq!(fields(error.unwrap_err()), ["update_mask", "update_mask"]);
        let error = apply_update(&ada(), &blank, mask(&["display_name", "state"]).as_ref(), 9);
        assert_eq!(
            fields(error.unwrap_err()),
            ["user.display_name", "user.state"]
        );
    }

    #[test]
    fn a_user_in_an_unknown_state_is_updated_only_with_its_state() {
        let unknown = UserRecord {
            state: UserState::Unspecified,
            ..ada()
        };
        let renamed = User {
            display_name: "Ada L.".into(),
            state: UserState::Disabled.into(),
            ..User::default()
        };
        match apply_update(&unknown, &renamed, mask(&["display_name"]).as_ref(), 7) {
            Err(ApiError::FailedPrecondition { reason, .. }) => {
                assert_eq!(reason, "UNKNOWN_USER_STATE");
            }
            other => panic!("unexpected {other:?}"),
        }
        let update = apply_update(
            &unknown,
            &renamed,
            mask(&["display_name", "state"]).as_ref(),
            7,
        )
        .expect("the state set with it");
        assert_eq!(update.user.state, UserState::Disabled);
        assert_eq!(update.user.display_name, "Ada L.");
    }
}

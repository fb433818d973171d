//! Custom role rules: role ids and names, what a valid role looks like, which fields an update
//! changes, and the hook where a tenant's plan will limit custom roles.

use std::collections::BTreeSet;

use palisade_grpc::{ApiError, FieldViolation, aip::Etag};
use palisade_proto::palisade::identity::v1::{CreateRoleRequest, Role};
use palisade_tenancy::TenantId;

use super::Roles;
use crate::tenants::TenantRecord;

/// More permissions than this in one role is a mistake or an attack, not a role: the whole
/// catalogue is a few dozen.
const MAX_PERMISSIONS: usize = 1000;

/// A role as a resource: a built-in role (computed, never stored, without times) or a custom
/// role as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleRecord {
    pub tenant_id: TenantId,
    pub id: String,
    pub display_name: String,
    pub description: String,
    pub permissions: BTreeSet<String>,
    pub built_in: bool,
    pub create_time: Option<i64>,
    pub update_time: Option<i64>,
}

impl RoleRecord {
    /// The role's version for optimistic concurrency (AIP-154): a digest of everything stored
    /// about it (see `aip::Etag`).
    pub fn etag(&self) -> String {
        let mut etag = Etag::new()
            .field(self.tenant_id.as_str().as_bytes())
            .field(self.id.as_bytes())
            .field(self.display_name.as_bytes())
            .field(self.description.as_bytes())
            .number(self.permissions.len() as i64);
        for permission in &self.permissions {
            etag = etag.field(permission.as_bytes());
        }
        etag.number(i64::from(self.built_in))
            .number(self.create_time.unwrap_or(-1))
            .number(self.update_time.unwrap_or(-1))
            .finish()
    }

    pub fn name(&self) -> String {
        format!("tenants/{}/roles/{}", self.tenant_id, self.id)
    }

    /// The permissions joined by spaces, as audit events record them.
    pub fn permission_list(&self) -> String {
        self.permissions
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `[a-z][a-z0-9-]{2,62}`: the ids of custom roles (and the built-in names fit it too).
pub fn is_role_id(id: &str) -> bool {
    (3..=63).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `tenants/{tenant}` (the `parent` of a role request) → the tenant.
pub fn parse_parent(parent: &str) -> Result<TenantId, FieldViolation> {
    crate::users::parse_parent(parent)
}

/// `tenants/{tenant}/roles/{role}` (the request field `field`) → (tenant, role id), noted as
/// the call's target (`note_target`).
pub fn parse_role_name(field: &str, name: &str) -> Result<(TenantId, String), ApiError> {
    let malformed = || ApiError::invalid(field, "must be `tenants/{tenant_id}/roles/{role_id}`");
    let rest = name.strip_prefix("tenants/").ok_or_else(malformed)?;
    let (tenant, role) = rest.split_once("/roles/").ok_or_else(malformed)?;
    let tenant = TenantId::parse(tenant).map_err(|_| malformed())?;
    if is_role_id(role) {
        palisade_grpc::note_target(name);
        Ok((tenant, role.to_owned()))
    } else {
        Err(malformed())
    }
}

/// Validates a create request into the role to insert. A built-in role's name is taken in
/// every tenant (`ALREADY_EXISTS`, as for any role id in use: AIP-133).
pub fn validate_create(
    request: &CreateRoleRequest,
    roles: &Roles,
    now: i64,
) -> Result<RoleRecord, ApiError> {
    let mut violations = Vec::new();
    let tenant = parse_parent(&request.parent)
        .map_err(|violation| violations.push(violation))
        .ok();
    if !is_role_id(&request.role_id) {
        violations.push(FieldViolation::new(
            "role_id",
            "must be 3 to 63 characters of a-z, 0-9 and '-', starting with a letter",
        ));
    }
    let Some(role) = &request.role else {
        violations.push(FieldViolation::new("role", "is required"));
        return Err(ApiError::InvalidArgument(violations));
    };
    let display_name = check_display_name(&role.display_name, &mut violations);
    let description = check_description(&role.description, &mut violations);
    let permissions = check_permissions(&role.permissions, roles, &mut violations);
    let Some(tenant_id) = tenant.filter(|_| violations.is_empty()) else {
        return Err(ApiError::InvalidArgument(violations));
    };
    if roles.is_known(&request.role_id) {
        return Err(ApiError::AlreadyExists {
            resource: format!("tenants/{tenant_id}/roles/{}", request.role_id),
        });
    }
    Ok(RoleRecord {
        tenant_id,
        id: request.role_id.clone(),
        display_name,
        description,
        permissions,
        built_in: false,
        create_time: Some(now),
        update_time: Some(now),
    })
}

/// The fields an `UpdateRole` changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpdatePaths {
    pub display_name: bool,
    pub description: bool,
    pub permissions: bool,
}

/// A role's output-only fields: a mask may name them (a role read and sent back whole), and
/// they are ignored (AIP-203); `etag` too, which is a condition, not a value.
pub const READ_ONLY: [&str; 5] = ["name", "built_in", "create_time", "update_time", "etag"];

impl UpdatePaths {
    /// The paths of `mask` (`display_name`, `description`, `permissions`, or `*` for all); an
    /// empty mask means every field `role` sets to a non-default value (AIP-134).
    pub fn parse(mask: &[String], role: &Role) -> Result<UpdatePaths, ApiError> {
        if mask.is_empty() {
            return Ok(UpdatePaths {
                display_name: !role.display_name.is_empty(),
                description: !role.description.is_empty(),
                permissions: !role.permissions.is_empty(),
            });
        }
        let mut paths = UpdatePaths::default();
        let mut violations = Vec::new();
        for path in mask {
            match path.as_str() {
                "display_name" => paths.display_name = true,
                "description" => paths.description = true,
                "permissions" => paths.permissions = true,
                "*" => {
                    paths = UpdatePaths {
                        display_name: true,
                        description: true,
                        permissions: true,
                    }
                }
                read_only if READ_ONLY.contains(&read_only) => {}
                other => violations.push(FieldViolation::new(
                    "update_mask",
                    format!(
                        "cannot update {:?}; updatable: display_name, description, permissions",
                        palisade_grpc::echoed(other)
                    ),
                )),
            }
        }
        if violations.is_empty() {
            Ok(paths)
        } else {
            Err(ApiError::InvalidArgument(violations))
        }
    }
}

/// `current` with the fields in `paths` taken from `update`, validated as on create.
pub fn apply_update(
    current: &RoleRecord,
    update: &Role,
    paths: UpdatePaths,
    roles: &Roles,
    now: i64,
) -> Result<RoleRecord, ApiError> {
    let mut violations = Vec::new();
    let mut next = current.clone();
    if paths.display_name {
        next.display_name = check_display_name(&update.display_name, &mut violations);
    }
    if paths.description {
        next.description = check_description(&update.description, &mut violations);
    }
    if paths.permissions {
        next.permissions = check_permissions(&update.permissions, roles, &mut violations);
    }
    if !violations.is_empty() {
        return Err(ApiError::InvalidArgument(violations));
    }
    if next != *current {
        next.update_time = Some(now);
    }
    Ok(next)
}

/// The plan feature (and limit) custom roles are.
const CUSTOM_ROLES: &str = "custom_roles";

/// Whether custom roles grant anything in `tenant` now. They are a plan feature: a tenant moved
/// to a plan without them (or whose override turns them off) keeps its roles and their
/// assignments, but they grant nothing until the feature is on again.
pub fn custom_roles_grant(tenant: Option<&TenantRecord>) -> bool {
    tenant.is_some_and(|tenant| {
        crate::plans::feature_enabled(tenant.plan, &tenant.feature_overrides, CUSTOM_ROLES)
    })
}

/// Custom roles are a plan feature (`custom_roles`); the number a tenant may define is a
/// limit of the same name, checked by the store when the role is inserted.
pub fn check_custom_role_plan(tenant: &TenantRecord) -> Result<(), ApiError> {
    match tenant.entitlements().feature(CUSTOM_ROLES) {
        Some((true, _)) => Ok(()),
        // Says what switched it off, the plan or an override, as `CheckFeature` does.
        answer => Err(ApiError::FailedPrecondition {
            reason: "FEATURE_NOT_ENABLED",
            message: format!(
                "custom roles are off for tenants/{} ({}); built-in roles remain available",
                tenant.id,
                answer.map_or_else(|| "unknown feature".to_owned(), |(_, source)| source)
            ),
        }),
    }
}

/// `role.display_name` trimmed (`display_names`); as given, with a violation, when refused.
fn check_display_name(value: &str, violations: &mut Vec<FieldViolation>) -> String {
    crate::display_names::check(value).unwrap_or_else(|problem| {
        violations.push(FieldViolation::new("role.display_name", problem));
        value.to_owned()
    })
}

/// The most characters a role's description holds.
pub const MAX_DESCRIPTION_CHARS: usize = 1000;

fn check_description(value: &str, violations: &mut Vec<FieldViolation>) -> String {
    let trimmed = value.trim();
    if trimmed.chars().count() > MAX_DESCRIPTION_CHARS {
        violations.push(FieldViolation::new(
            "role.description",
            format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
    trimmed.to_owned()
}

fn check_permissions(
    permissions: &[String],
    roles: &Roles,
    violations: &mut Vec<FieldViolation>,
) -> BTreeSet<String> {
    if permissions.len() > MAX_PERMISSIONS {
        violations.push(FieldViolation::new(
            "role.permissions",
            format!("must hold at most {MAX_PERMISSIONS} permissions"),
        ));
        return BTreeSet::new();
    }
    for (index, permission) in permissions.iter().enumerate() {
        if !roles.in_catalogue(permission) {
            violations.push(FieldViolation::new(
                format!("role.permissions[{index}]"),
                format!(
                    "unknown permission {:?}; a role grants permissions of the catalogue, e.g. \
                     identity.users.list (the admin role holds them all)",
                    palisade_grpc::echoed(permission)
                ),
            ));
        }
    }
    permissions.iter().cloned().collect()
}

#[cfg(test)]
mod tests {
    use palisade_grpc::MethodPolicies;

    use super::*;

    fn roles() -> Roles {
        Roles::from_catalogue(&MethodPolicies::palisade().unwrap())
    }

    fn create(role_id: &str, role: Option<Role>) -> Result<RoleRecord, ApiError> {
        let request = CreateRoleRequest {
            parent: "tenants/acme".into(),
            role_id: role_id.into(),
            role,
        };
        validate_create(&request, &roles(), 7)
    }

    fn role(display_name: &str, permissions: &[&str]) -> Role {
        Role {
            display_name: display_name.into(),
            permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
            ..Role::default()
        }
    }

    fn violated(result: Result<impl std::fmt::Debug, ApiError>) -> Vec<String> {
        match result {
            Err(ApiError::InvalidArgument(violations)) => {
                violations.into_iter().map(|v| v.field).collect()
            }
            other => panic!("expected violations, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_role_is_sorted_and_deduplicated() {
        let record = create(
            "user-reader",
            Some(role(
                " User reader ",
                &[
                    "identity.users.list",
                    "identity.users.get",
                    "identity.users.list",
                ],
            )),
        )
        .unwrap();
        assert_eq!(record.name(), "tenants/acme/roles/user-reader");
        assert_eq!(record.display_name, "User reader");
        assert_eq!(
            record.permission_list(),
            "identity.users.get identity.users.list"
        );
        assert_eq!((record.create_time, record.built_in), (Some(7), false));
    }

    #[test]
    fn bad_input_names_every_field() {
        assert_eq!(
            violated(create(
                "X",
                Some(role(
                    "",
                    &[
                        "identity.users.list",
                        "identity.*",
                        "identity.authorization.check"
                    ]
                ))
            )),
            [
                "role_id",
                "role.display_name",
                "role.permissions[1]",
                "role.permissions[2]"
            ]
        );
        assert_eq!(violated(create("user-reader", None)), ["role"]);
        for bad in ["ab", "1abc", "a_b", "Abc", &"a".repeat(64)] {
            assert_eq!(
                violated(create(bad, Some(role("x", &[])))),
                ["role_id"],
                "{bad}"
            );
        }
        let many = vec!["identity.users.list"; 1001];
        assert_eq!(
            violated(create("big", Some(role("x", &many)))),
            ["role.permissions"]
        );
    }

    #[test]
    fn built_in_names_are_taken() {
        assert!(matches!(
            create("admin", Some(role("Admin", &[]))),
            Err(ApiError::AlreadyExists { .. })
        ));
    }

    #[test]
    fn names_parse_only_in_canonical_form() {
        let (tenant, role) = parse_role_name("name", "tenants/acme/roles/user-reader").unwrap();
        assert_eq!((tenant.as_str(), role.as_str()), ("acme", "user-reader"));
        for bad in [
            "tenants/acme/roles/X",
            "tenants/acme/roles/",
            "tenants/acme/users/user-reader",
            "roles/user-reader",
            "tenants/acme/roles/a/b",
        ] {
            assert!(parse_role_name("name", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn updates_change_only_the_masked_fields() {
        let current = create("user-reader", Some(role("Reader", &["identity.users.get"]))).unwrap();
        let update = role("Renamed", &["identity.users.list"]);
        let paths = UpdatePaths::parse(&["display_name".into()], &update).unwrap();
        let next = apply_update(&current, &update, paths, &roles(), 9).unwrap();
        assert_eq!(next.display_name, "Renamed");
        assert_eq!(next.permission_list(), "identity.users.get");
        assert_eq!(next.update_time, Some(9));

        // An empty mask takes every field the request sets; an unchanged role keeps its time.
        let implied = UpdatePaths::parse(&[], &role("", &["identity.users.get"])).unwrap();
        assert_eq!(
            implied,
            UpdatePaths {
                permissions: true,
                ..UpdatePaths::default()
            }
        );
        let same = apply_update(
            &current,
            &role("", &["identity.users.get"]),
            implied,
            &roles(),
            9,
        )
        .unwrap();
        assert_eq!(same, current);

        assert_eq!(
            violated(UpdatePaths::parse(&["colour".into()], &update)),
            ["update_mask"]
        );
        let all = UpdatePaths::parse(&["*".into()], &update).unwrap();
        assert_eq!(
            violated(apply_update(
                &current,
                &role("", &["nope"]),
                all,
                &roles(),
                9
            )),
            ["role.display_name", "role.permissions[0]"]
        );
    }

    /// Any stored change gives another etag.
    #[test]
    fn the_etag_follows_every_stored_field() {
        let role = RoleRecord {
            tenant_id: TenantId::parse("acme").unwrap(),
            id: "reader".into(),
            display_name: "Reader".into(),
            description: String::new(),
            permissions: ["identity.users.list".to_owned()].into(),
            built_in: false,
            create_time: Some(1),
            update_time: Some(1),
        };
        assert_eq!(role.etag(), role.clone().etag());
        for changed in [
            RoleRecord {
                display_name: "Readers".into(),
                ..role.clone()
            },
            RoleRecord {
                description: "reads".into(),
                ..role.clone()
            },
            RoleRecord {
                permissions: ["identity.users.get".to_owned()].into(),
                ..role.clone()
            },
            RoleRecord {
                update_time: Some(2),
                ..role.clone()
            },
        ] {
            assert_ne!(changed.etag(), role.etag(), "{changed:?}");
        }
    }
}

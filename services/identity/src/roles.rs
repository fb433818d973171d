//! Roles: the built-in roles and the permissions each grants, drawn from the permission
//! catalogue (every `permission` some RPC's policy option names), so a role always grants
//! exactly permissions the mesh enforces, and new RPCs join the roles their verb and area
//! suggest; and (in `custom`) the rules of a tenant's custom roles, sets of catalogue
//! permissions stored by identity.
//!
//! The mapping (internal, service-to-service permissions are never granted to a role):
//! - `admin`: every permission.
//! - `manager`: every `identity.*` and `observability.*` permission except tenant-level
//!   changes (`identity.tenants.*` other than `get`/`list`), plus every read.
//! - `analyst`: every read, plus every `observability.*` permission.
//! - `auditor`: the reads of `compliance.*` (including `export` and `verify`) and of
//!   `identity.*`.
//! - `viewer`: every read.
//!
//! A read is a permission whose verb (its last segment) is `get` or `list`, outside
//! `compliance.*`: the audit trail and compliance records are for `admin` and `auditor` only.
//!
//! Granting a role needs every permission it grants (`Authz::holds_all`), so a manager can
//! make viewers and analysts but not admins or auditors; the same holds for putting
//! permissions into a custom role.

mod custom;

use std::collections::{BTreeMap, BTreeSet};

use palisade_grpc::MethodPolicies;
use palisade_tenancy::TenantId;

pub use custom::{
    MAX_DESCRIPTION_CHARS, RoleRecord, UpdatePaths, apply_update, check_custom_role_plan,
    custom_roles_grant, is_role_id, parse_parent, parse_role_name, validate_create,
};

/// The built-in role names, in the order they are documented (and listed).
pub const BUILT_IN: [&str; 5] = ["admin", "manager", "analyst", "auditor", "viewer"];

/// Permissions that every active user holds for its own account, whatever its roles; the
/// handler of the method that needs one checks that the account is the caller's own.
pub const SELF_SERVICE: [&str; 1] = ["identity.users.changePassword"];

/// The permission catalogue and each built-in role's permission set.
#[derive(Clone, Debug)]
pub struct Roles {
    catalogue: BTreeSet<String>,
    /// Permissions that only `platform_only` methods require: nobody outside the system
    /// tenant can use them, whatever their roles grant.
    platform_only: BTreeSet<String>,
    grants: BTreeMap<&'static str, BTreeSet<String>>,
}

impl Roles {
    pub fn from_catalogue(policies: &MethodPolicies) -> Roles {
        let catalogue: BTreeSet<String> = policies
            .iter()
            .filter(|policy| !policy.internal)
            .filter_map(|policy| policy.permission.clone())
            .collect();
        let grants = BUILT_IN
            .into_iter()
            .map(|role| {
                let granted = catalogue
                    .iter()
                    .filter(|permission| grants(role, permission))
                    .cloned()
                    .collect();
                (role, granted)
            })
            .collect();
        let platform_only = (catalogue.iter())
            .filter(|permission| {
                (policies.iter())
                    .filter(|policy| policy.permission.as_ref() == Some(*permission))
                    .all(|policy| policy.platform_only)
            })
            .cloned()
            .collect();
        Roles {
            catalogue,
            platform_only,
            grants,
        }
    }

    /// Whether `permission` is of use only to platform operators (principals of the system
    /// tenant): every method requiring it is `platform_only`.
    pub fn platform_only(&self, permission: &str) -> bool {
        self.platform_only.contains(permission)
    }

    /// Whether `role` names a built-in role.
    pub fn is_known(&self, role: &str) -> bool {
        self.grants.contains_key(role)
    }

    /// Every permission a role may grant.
    pub fn catalogue(&self) -> impl Iterator<Item = &str> {
        self.catalogue.iter().map(String::as_str)
    }

    /// Whether `permission` may be granted by a role: a non-internal permission of the mesh.
    pub fn in_catalogue(&self, permission: &str) -> bool {
        self.catalogue.contains(permission)
    }

    /// Those of a role's stored `permissions` it still grants: a permission that has left the
    /// catalogue since (its method removed or made internal) grants nothing, so passing it on
    /// or taking it away needs no one to hold it.
    pub fn still_granted(&self, permissions: &BTreeSet<String>) -> BTreeSet<String> {
        (permissions.iter())
            .filter(|permission| self.in_catalogue(permission))
            .cloned()
            .collect()
    }

    /// Those of an API key's stored `scopes` it still holds: `*` (an operator's key) and the
    /// permissions still in the catalogue.
    pub fn still_granted_scopes(&self, scopes: &[String]) -> Vec<String> {
        (scopes.iter())
            .filter(|scope| *scope == crate::authz::ALL_PERMISSIONS || self.in_catalogue(scope))
            .cloned()
            .collect()
    }

    /// Whether some of `roles` are not built-in, i.e. name custom roles of the user's tenant.
    pub fn any_custom(&self, roles: &[String]) -> bool {
        roles.iter().any(|role| !self.is_known(role))
    }

    /// The permissions `roles` grant through built-in roles.
    pub fn built_in_grants(&self, roles: &[String]) -> BTreeSet<String> {
        roles
            .iter()
            .filter_map(|role| self.grants.get(role.as_str()))
            .flatten()
            .cloned()
            .collect()
    }

    /// Whether any of `roles` grants `permission`.
    pub fn grant(&self, roles: &[String], permission: &str) -> bool {
        roles.iter().any(|role| {
            self.grants
                .get(role.as_str())
                .is_some_and(|granted| granted.contains(permission))
        })
    }

    pub fn permissions(&self, role: &str) -> Option<&BTreeSet<String>> {
        self.grants.get(role)
    }

    /// The built-in role `role` as a read-only resource of `tenant`.
    pub fn built_in(&self, tenant: &TenantId, role: &str) -> Option<RoleRecord> {
        let (name, granted) = self.grants.get_key_value(role)?;
        Some(RoleRecord {
            tenant_id: tenant.clone(),
            id: (*name).to_owned(),
            display_name: capitalized(name),
            description: description(name).to_owned(),
            permissions: granted.clone(),
            built_in: true,
            create_time: None,
            update_time: None,
        })
    }
}

fn capitalized(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_uppercase().chain(chars).collect()
    })
}

fn description(role: &str) -> &'static str {
    match role {
        "admin" => {
            "Every permission of the catalogue (platform-only methods work only in the system tenant)."
        }
        "manager" => {
            "Everything of identity and observability except changing tenants, plus every get and list outside compliance."
        }
        "analyst" => "Every get and list outside compliance, plus everything of observability.",
        "auditor" => "The reads of compliance (including export and verify) and of identity.",
        "viewer" => "Every get and list outside compliance.",
        _ => "",
    }
}

fn grants(role: &str, permission: &str) -> bool {
    let area = permission.split('.').next().unwrap_or_default();
    let verb = permission.rsplit('.').next().unwrap_or_default();
    let read = matches!(verb, "get" | "list") && area != "compliance";
    match role {
        "admin" => true,
        "manager" => {
            read || (area == "identity" && !permission.starts_with("identity.tenants."))
                || area == "observability"
        }
        "analyst" => read || area == "observability",
        "auditor" => match area {
            "compliance" => matches!(verb, "get" | "list" | "export" | "verify"),
            "identity" => read,
            _ => false,
        },
        "viewer" => read,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles() -> Roles {
        Roles::from_catalogue(&MethodPolicies::palisade().unwrap())
    }

    #[test]
    fn admin_holds_every_non_internal_permission_and_nothing_internal() {
        let roles = roles();
        let admin = roles.permissions("admin").unwrap();
        assert!(admin.contains("identity.users.create"));
        assert!(admin.contains("compliance.audit.list"));
        assert!(!admin.contains("identity.authorization.check"));
        assert!(!admin.contains("identity.apikeys.verify"));
        assert!(!admin.contains("compliance.audit.append"));
    }

    #[test]
    fn the_lesser_roles_hold_what_the_mapping_says() {
        let roles = roles();
        let has = |role: &str, permission: &str| roles.grant(&[role.to_owned()], permission);
        assert!(has("manager", "identity.users.create"));
        assert!(!has("manager", "identity.tenants.create"));
        assert!(has("analyst", "identity.users.list"));
        assert!(!has("analyst", "identity.users.create"));
        assert!(has("auditor", "compliance.audit.export"));
        assert!(has("auditor", "identity.users.get"));
        assert!(has("viewer", "identity.tenants.get"));
        assert!(!has("viewer", "compliance.audit.export"));
        assert!(!has("viewer", "compliance.audit.list"));
        assert!(!has("manager", "compliance.audit.list"));
        assert!(has("auditor", "compliance.audit.list"));
        assert!(!has("nobody", "identity.users.get"));
        for role in BUILT_IN {
            assert!(roles.is_known(role));
        }
    }

    #[test]
    fn the_catalogue_holds_policy_permissions_but_nothing_internal() {
        let roles = roles();
        assert!(roles.in_catalogue("identity.users.list"));
        assert!(roles.in_catalogue("identity.users.update"));
        assert!(roles.in_catalogue("identity.users.changePassword"));
        assert!(!roles.in_catalogue("identity.authorization.check"));
        assert!(!roles.in_catalogue("identity.*"));
        assert!(
            roles
                .permissions("manager")
                .unwrap()
                .contains("identity.users.update")
        );
        assert!(
            !roles
                .permissions("viewer")
                .unwrap()
                .contains("identity.users.update")
        );
    }

    #[test]
    fn built_in_roles_read_as_resources() {
        let roles = roles();
        let tenant = TenantId::parse("acme").unwrap();
        let viewer = roles.built_in(&tenant, "viewer").unwrap();
        assert_eq!(viewer.name(), "tenants/acme/roles/viewer");
        assert_eq!(viewer.display_name, "Viewer");
        assert!(viewer.built_in);
        assert!(viewer.permissions.contains("identity.roles.list"));
        assert!(roles.built_in(&tenant, "user-reader").is_none());
        let user_roles = ["viewer".to_owned(), "user-reader".to_owned()];
        assert!(roles.any_custom(&user_roles));
        assert_eq!(roles.built_in_grants(&user_roles), viewer.permissions);
    }
}

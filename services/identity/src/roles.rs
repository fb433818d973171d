//! The built-in roles and the permissions each grants, drawn from the permission catalogue
//! (every `permission` some RPC's policy option names), so a role always grants exactly
//! permissions the mesh enforces, and new RPCs join the roles their verb and area suggest.
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
//! Granting a role needs every permission it grants (`Authz::may_grant`), so a manager can
//! make viewers and analysts but not admins or auditors.

use std::collections::{BTreeMap, BTreeSet};

use palisade_grpc::MethodPolicies;

/// The built-in role names, in the order they are documented.
pub const BUILT_IN: [&str; 5] = ["admin", "manager", "analyst", "auditor", "viewer"];

/// Each built-in role's permission set.
#[derive(Clone, Debug)]
pub struct Roles {
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
        Roles { grants }
    }

    pub fn is_known(&self, role: &str) -> bool {
        self.grants.contains_key(role)
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
}

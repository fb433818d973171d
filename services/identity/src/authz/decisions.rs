//! The answers `Authz` gives: a grant, or a refusal with its reason and, where the caller must
//! act on it rather than on a missing permission, the stable refusal code; and the rule for
//! which resource names name a tenant.

use palisade_grpc::Decision;
use palisade_proto::palisade::identity::v1::TenantState;
use palisade_tenancy::TenantId;

use crate::{roles, store::ApiKeyRecord};

pub(super) fn unusable(key: &ApiKeyRecord, now: i64) -> Option<&'static str> {
    if key.revoke_time.is_some() {
        Some("api key is revoked")
    } else if key.expire_time <= now {
        Some("api key has expired")
    } else {
        None
    }
}

pub(super) fn user_decision(granted: bool, permission: &str) -> Decision {
    if roles::SELF_SERVICE.contains(&permission) {
        Decision {
            allowed: true,
            reason: "every active user holds it for its own account".to_owned(),
            refusal: None,
        }
    } else if granted {
        Decision {
            allowed: true,
            reason: "granted by role".to_owned(),
            refusal: None,
        }
    } else {
        deny(format!("no role of the user grants {permission}"))
    }
}

pub(super) fn deny(reason: String) -> Decision {
    Decision {
        allowed: false,
        reason,
        refusal: None,
    }
}

/// The refusal of a permission only platform-only methods require, for a principal outside
/// the system tenant: what the policy layer answers when such a principal calls the method.
pub(super) fn platform_operators_only(permission: &str) -> Decision {
    Decision {
        allowed: false,
        reason: format!("{permission} is for platform operators of the system tenant only"),
        refusal: Some("PLATFORM_OPERATOR_ONLY".to_owned()),
    }
}

/// The refusal for an access token whose sign-in session has ended: the caller must sign in
/// again, so the policy layer answers `UNAUTHENTICATED` rather than a missing permission.
pub(super) fn session_revoked() -> Decision {
    Decision {
        allowed: false,
        reason: "the sign-in session has ended".to_owned(),
        refusal: Some("SESSION_REVOKED".to_owned()),
    }
}

/// The refusal for an API key that is unknown (deleted with its tenant), revoked or expired,
/// which a gateway may still hold as verified for a few seconds: the credential is dead, so
/// the policy layer answers `UNAUTHENTICATED` as the gateway does once it asks again, not a
/// missing permission.
pub(super) fn key_refused(problem: &str) -> Decision {
    Decision {
        allowed: false,
        reason: problem.to_owned(),
        refusal: Some("INVALID_API_KEY".to_owned()),
    }
}

/// A refusal for every principal of a tenant that is missing or not active, with the stable
/// reason its callers' errors carry (as the gateway's own refusal does).
pub(super) fn tenant_refusal(
    tenant: &TenantId,
    record: Option<crate::tenants::TenantRecord>,
) -> Option<Decision> {
    let (reason, refusal) = match record {
        None => (
            format!("tenant {tenant} does not exist"),
            "TENANT_NOT_ACTIVE",
        ),
        Some(record) if record.state == TenantState::Active => return None,
        Some(record) => (
            format!(
                "tenant {tenant} is {}",
                crate::tenants::state_key(record.state)
            ),
            if record.state == TenantState::Suspended {
                "TENANT_SUSPENDED"
            } else {
                "TENANT_NOT_ACTIVE"
            },
        ),
    };
    Some(Decision {
        allowed: false,
        reason,
        refusal: Some(refusal.to_owned()),
    })
}

/// The tenant a resource name belongs to: `tenants/{id}` or `tenants/{id}/{collection}/{id}…`
/// → id; `None` for anything else. Strict, so that a decision cannot be talked past the
/// tenant check by a name spelled another way (`Tenants/b`, `/tenants/b`, `tenants//b`,
/// `tenants/a/../b`, a full `//service/tenants/b` name): whoever asks about such a name is
/// refused rather than answered as if it named no tenant.
pub fn resource_tenant(resource: &str) -> Option<TenantId> {
    let mut segments = resource.strip_prefix("tenants/")?.split('/');
    let tenant = TenantId::parse(segments.next()?).ok()?;
    let rest: Vec<&str> = segments.collect();
    let well_formed = rest.len().is_multiple_of(2)
        && rest.iter().all(|segment| {
            !segment.is_empty()
                && *segment != "."
                && *segment != ".."
                && (segment.bytes())
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
        });
    well_formed.then_some(tenant)
}

/// The refusal of a resource named unlike any resource of the mesh.
pub(super) fn malformed_resource(resource: &str) -> Decision {
    deny(format!(
        "{:?} is not a resource name",
        palisade_grpc::echoed(resource)
    ))
}

#[cfg(test)]
mod tests {
    use super::resource_tenant;

    #[test]
    fn resource_names_name_their_tenant_and_nothing_else_does() {
        for (name, tenant) in [
            ("tenants/acme", "acme"),
            ("tenants/acme/users/0190-ab", "acme"),
            ("tenants/acme/roles/bench-reader", "acme"),
            ("tenants/acme/apiKeys/k_1.x~y", "acme"),
        ] {
            assert_eq!(
                resource_tenant(name).map(|t| t.to_string()),
                Some(tenant.to_owned())
            );
        }
        for name in [
            "",
            "acme",
            "tenants/",
            "tenants/*",
            "Tenants/acme",
            "tenants/ACME",
            " tenants/acme",
            "/tenants/acme",
            "tenants//acme",
            "tenants/acme/",
            "tenants/acme/users",
            "tenants/acme/users/",
            "tenants/acme/../globex",
            "tenants/acme/users/../../globex",
            "tenants/acme?x",
            "tenants/acme/users/a%2F",
            "x/tenants/acme",
            "//identity.palisade.dev/tenants/acme",
        ] {
            assert_eq!(resource_tenant(name), None, "{name:?}");
        }
    }
}

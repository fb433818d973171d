//! Tenant rules: what a valid tenant looks like, how it may change (`update`), when it may be
//! deleted or act, and the plan and state vocabularies.

use std::collections::BTreeMap;

use palisade_grpc::{ApiError, FieldViolation, aip::Etag};
use palisade_proto::palisade::identity::v1::{CreateTenantRequest, Plan, TenantState};
use palisade_tenancy::TenantId;

use crate::plans::{self, Entitlements};

mod update;

pub use update::{apply_update, require_may_change, update_paths};

/// A tenant as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantRecord {
    pub id: TenantId,
    pub display_name: String,
    pub plan: Plan,
    pub state: TenantState,
    pub region: String,
    pub domain: Option<String>,
    pub feature_overrides: BTreeMap<String, bool>,
    pub limit_overrides: BTreeMap<String, i64>,
    pub create_time: i64,
    pub update_time: i64,
}

impl TenantRecord {
    /// The tenant's version for optimistic concurrency (AIP-154): a digest of everything
    /// stored about it, so any change gives another, even one within the same microsecond
    /// or under a clock set back. Opaque to clients; 22 base64url characters.
    pub fn etag(&self) -> String {
        let mut etag = Etag::new()
            .field(self.id.as_str().as_bytes())
            .field(self.display_name.as_bytes())
            .number(self.plan as i64)
            .number(self.state as i64)
            .field(self.region.as_bytes())
            // A domain is never empty, so "" stands for none.
            .field(self.domain.as_deref().unwrap_or("").as_bytes())
            .number(self.feature_overrides.len() as i64);
        for (feature, enabled) in &self.feature_overrides {
            etag = etag.field(feature.as_bytes()).number(i64::from(*enabled));
        }
        etag = etag.number(self.limit_overrides.len() as i64);
        for (limit, value) in &self.limit_overrides {
            etag = etag.field(limit.as_bytes()).number(*value);
        }
        etag.number(self.create_time)
            .number(self.update_time)
            .finish()
    }

    /// The plan with this tenant's overrides: its effective features and limits.
    pub fn entitlements(&self) -> Entitlements {
        Entitlements {
            plan: self.plan,
            feature_overrides: self.feature_overrides.clone(),
            limit_overrides: self.limit_overrides.clone(),
        }
    }

    /// The first stored field whose value this server does not know (written by a newer
    /// version; it reads as unspecified), by its update path: `state`, then `plan`.
    pub fn unknown_field(&self) -> Option<&'static str> {
        [
            ("state", self.state == TenantState::Unspecified),
            ("plan", self.plan == Plan::Unspecified),
        ]
        .into_iter()
        .find_map(|(path, unknown)| unknown.then_some(path))
    }

    /// The refusal of a call that cannot go on while the tenant's `path` (one
    /// [`TenantRecord::unknown_field`] names) is unknown; `remedy` says what to do instead.
    pub fn unknown_field_refusal(&self, path: &'static str, remedy: &str) -> ApiError {
        let (reason, what) = match path {
            "state" => ("UNKNOWN_TENANT_STATE", "in a state"),
            _ => ("UNKNOWN_TENANT_PLAN", "on a plan"),
        };
        ApiError::FailedPrecondition {
            reason,
            message: format!(
                "tenants/{} is {what} this server does not know; {remedy}",
                self.id
            ),
        }
    }
}

/// Validates a create request into the tenant to insert (times are set by the caller).
pub fn validate_create(request: &CreateTenantRequest, now: i64) -> Result<TenantRecord, ApiError> {
    let mut violations = Vec::new();
    let Some(tenant) = &request.tenant else {
        return Err(ApiError::invalid("tenant", "is required"));
    };
    let display_name = collect(display_name_of(&tenant.display_name), &mut violations);
    let id = if request.tenant_id.is_empty() {
        Some(TenantId::parse(&uuid::Uuid::now_v7().to_string()).expect("uuids are tenant ids"))
    } else {
        match TenantId::parse(&request.tenant_id) {
            Ok(id) if id.is_system() => {
                violations.push(FieldViolation::new("tenant_id", "`system` is reserved"));
                None
            }
            Ok(id) if id.as_str().starts_with(|c: char| c.is_ascii_lowercase()) => Some(id),
            _ => {
                violations.push(FieldViolation::new(
                    "tenant_id",
                    "must be 3 to 63 characters of a-z, 0-9 and '-', starting with a letter and not ending with '-'",
                ));
                None
            }
        }
    };
    let plan = match Plan::try_from(tenant.plan) {
        Ok(Plan::Unspecified) => Some(Plan::Free),
        _ => collect(plan_of(tenant.plan), &mut violations),
    };
    let region = collect(region_of(&tenant.region), &mut violations);
    let domain = collect(domain_of(&tenant.domain), &mut violations);
    violations.extend(plans::validate_overrides(
        "tenant",
        &tenant.feature_overrides,
        &tenant.limit_overrides,
    ));
    match (id, display_name, plan, region, domain) {
        (Some(id), Some(display_name), Some(plan), Some(region), Some(domain))
            if violations.is_empty() =>
        {
            Ok(TenantRecord {
                id,
                display_name,
                plan,
                state: TenantState::Active,
                region,
                domain,
                feature_overrides: tenant.feature_overrides.clone(),
                limit_overrides: tenant.limit_overrides.clone(),
                create_time: now,
                update_time: now,
            })
        }
        _ => Err(ApiError::InvalidArgument(violations)),
    }
}

/// Only a tenant that no longer acts may be deleted, and never the system tenant.
pub fn ensure_deletable(record: &TenantRecord) -> Result<(), ApiError> {
    if record.id.is_system() {
        return Err(ApiError::FailedPrecondition {
            reason: "SYSTEM_TENANT",
            message: "the system tenant holds the platform operators and is never deleted"
                .to_owned(),
        });
    }
    if record.state == TenantState::Active {
        return Err(ApiError::FailedPrecondition {
            reason: "TENANT_ACTIVE",
            message: format!(
                "tenants/{} is active; suspend it before deleting it",
                record.id
            ),
        });
    }
    Ok(())
}

/// Refuses a principal of a tenant that is not active (suspended or retired), once its
/// credential has been checked: saying why is safe then, and spares a support call.
pub fn ensure_active(record: &TenantRecord) -> Result<(), ApiError> {
    match record.state {
        TenantState::Active => Ok(()),
        TenantState::Suspended => Err(ApiError::PermissionDenied {
            reason: "TENANT_SUSPENDED",
            message: format!("tenants/{} is suspended", record.id),
        }),
        _ => Err(ApiError::PermissionDenied {
            reason: "TENANT_NOT_ACTIVE",
            message: format!("tenants/{} is not active", record.id),
        }),
    }
}

fn collect<T>(
    result: Result<T, FieldViolation>,
    violations: &mut Vec<FieldViolation>,
) -> Option<T> {
    result.map_err(|violation| violations.push(violation)).ok()
}

/// `tenant.display_name` trimmed (`display_names`), or a violation.
fn display_name_of(value: &str) -> Result<String, FieldViolation> {
    crate::display_names::check(value)
        .map_err(|problem| FieldViolation::new("tenant.display_name", problem))
}

fn plan_of(value: i32) -> Result<Plan, FieldViolation> {
    match Plan::try_from(value) {
        Ok(Plan::Unspecified) | Err(_) => Err(FieldViolation::new(
            "tenant.plan",
            format!("unknown plan {value}"),
        )),
        Ok(plan) => Ok(plan),
    }
}

fn state_of(value: i32) -> Result<TenantState, FieldViolation> {
    match TenantState::try_from(value) {
        Ok(TenantState::Unspecified) | Err(_) => Err(FieldViolation::new(
            "tenant.state",
            format!("unknown state {value}"),
        )),
        Ok(state) => Ok(state),
    }
}

/// An empty region is the default one.
fn region_of(value: &str) -> Result<String, FieldViolation> {
    let region = if value.is_empty() { "default" } else { value };
    if is_slug(region, 32) {
        Ok(region.to_owned())
    } else {
        Err(FieldViolation::new(
            "tenant.region",
            "must be 1 to 32 characters of a-z, 0-9 and '-'",
        ))
    }
}

/// A domain given to a tenant now: a DNS name whose last label is not all digits (an IP
/// address, which the gateway never takes as a tenant's, would never route). Domains stored
/// before that rule still parse ([`parse_domain`]): they are looked up, restored and kept.
/// An empty domain is none.
fn domain_of(value: &str) -> Result<Option<String>, FieldViolation> {
    if value.is_empty() {
        return Ok(None);
    }
    let numeric = |label: &str| label.bytes().all(|b| b.is_ascii_digit());
    parse_domain(value)
        .filter(|domain| !domain.rsplit('.').next().is_some_and(numeric))
        .map(Some)
        .ok_or_else(|| domain_violation("tenant.domain"))
}

/// `tenants/{id}` → the id.
pub fn parse_name(name: &str) -> Result<TenantId, ApiError> {
    parse_field(name, "name")
}

/// `tenants/{id}` in the request field `field` → the id.
pub fn parse_field(value: &str, field: &str) -> Result<TenantId, ApiError> {
    value
        .strip_prefix("tenants/")
        .and_then(|id| TenantId::parse(id).ok())
        .ok_or_else(|| ApiError::invalid(field, "must be `tenants/{tenant_id}`"))
}

/// `tenants/{id}/usage` → the id.
pub fn parse_usage_name(name: &str) -> Result<TenantId, ApiError> {
    name.strip_suffix("/usage")
        .and_then(|tenant| parse_name(tenant).ok())
        .ok_or_else(|| ApiError::invalid("name", "must be `tenants/{tenant_id}/usage`"))
}

/// The stored (lowercase) form of a plan.
pub fn plan_key(plan: Plan) -> &'static str {
    match plan {
        Plan::Unspecified | Plan::Free => "free",
        Plan::Standard => "standard",
        Plan::Professional => "professional",
        Plan::Enterprise => "enterprise",
    }
}

/// An unknown stored plan (written by a newer version) reads as `Unspecified`: it shows as
/// such, gets the free plan's features and limits (the least), and is never written back as
/// another plan (see `apply_update`).
pub fn plan_from_key(key: &str) -> Plan {
    match key {
        "free" => Plan::Free,
        "standard" => Plan::Standard,
        "professional" => Plan::Professional,
        "enterprise" => Plan::Enterprise,
        _ => Plan::Unspecified,
    }
}

pub fn state_key(state: TenantState) -> &'static str {
    match state {
        TenantState::Unspecified | TenantState::Active => "active",
        TenantState::Suspended => "suspended",
        TenantState::Inactive => "inactive",
    }
}

/// An unknown stored state reads as `Unspecified`, which no check treats as active: a row
/// written by a newer version fails closed.
pub fn state_from_key(key: &str) -> TenantState {
    match key {
        "active" => TenantState::Active,
        "suspended" => TenantState::Suspended,
        "inactive" => TenantState::Inactive,
        _ => TenantState::Unspecified,
    }
}

fn is_slug(value: &str, max: usize) -> bool {
    (1..=max).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A domain as stored (lower case), or `None` when `value` is not a DNS name.
pub fn parse_domain(value: &str) -> Option<String> {
    let domain = value.to_ascii_lowercase();
    is_domain(&domain).then_some(domain)
}

pub fn domain_violation(field: &str) -> FieldViolation {
    FieldViolation::new(field, "must be a DNS name such as acme.example.com")
}

fn is_domain(value: &str) -> bool {
    value.len() <= 253
        && value.contains('.')
        && value.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use palisade_proto::palisade::identity::v1::Tenant;

    use super::*;

    fn create(display_name: &str, tenant_id: &str, domain: &str) -> Result<TenantRecord, ApiError> {
        let tenant = Tenant {
            display_name: display_name.into(),
            domain: domain.into(),
            ..Tenant::default()
        };
        validate_create(
            &CreateTenantRequest {
                tenant: Some(tenant),
                tenant_id: tenant_id.into(),
            },
            1,
        )
    }

    fn violated_fields<T: std::fmt::Debug>(result: Result<T, ApiError>) -> Vec<String> {
        match result {
            Err(ApiError::InvalidArgument(violations)) => {
                violations.into_iter().map(|v| v.field).collect()
            }
            other => panic!("expected invalid argument, got {other:?}"),
        }
    }

    #[test]
    fn stored_plans_read_back_and_an_unknown_one_reads_as_unspecified() {
        for plan in [
            Plan::Free,
            Plan::Standard,
            Plan::Professional,
            Plan::Enterprise,
        ] {
            assert_eq!(plan_from_key(plan_key(plan)), plan);
        }
        assert_eq!(plan_from_key("business"), Plan::Unspecified);
    }

    #[test]
    fn defaults_and_generated_ids() {
        let tenant = create("Acme", "", "").unwrap();
        assert_eq!(tenant.plan, Plan::Free);
        assert_eq!(tenant.state, TenantState::Active);
        assert_eq!(tenant.region, "default");
        assert_eq!(
            create("Acme", "acme", "Acme.Example.com")
                .unwrap()
                .domain
                .as_deref(),
            Some("acme.example.com")
        );
    }

    #[test]
    fn bad_input_names_every_field() {
        assert_eq!(
            violated_fields(create("  ", "", "")),
            ["tenant.display_name"]
        );
        assert_eq!(
            violated_fields(create("\u{0}\u{200b}", "", "")),
            ["tenant.display_name"]
        );
        assert_eq!(violated_fields(create("Acme", "system", "")), ["tenant_id"]);
        assert_eq!(violated_fields(create("Acme", "9lives", "")), ["tenant_id"]);
        assert_eq!(
            violated_fields(create("", "Bad_Id", "not a domain")),
            ["tenant.display_name", "tenant_id", "tenant.domain"]
        );
        for unroutable in ["10.0.0.1", "acme.example.com.", "acme.123", "acme"] {
            let refused = create("Acme", "acme", unroutable);
            assert_eq!(violated_fields(refused), ["tenant.domain"], "{unroutable}");
        }
        assert!(create("Acme", "acme", "acme.example.c0m").is_ok());
        let missing = validate_create(&CreateTenantRequest::default(), 1);
        assert_eq!(violated_fields(missing), ["tenant"]);
    }

    fn reason_of<T: std::fmt::Debug>(result: Result<T, ApiError>) -> &'static str {
        match result {
            Err(ApiError::PermissionDenied { reason, .. })
            | Err(ApiError::FailedPrecondition { reason, .. }) => reason,
            other => panic!("expected a refusal with a reason, got {other:?}"),
        }
    }

    #[test]
    fn only_retired_tenants_are_deleted_and_the_system_tenant_never() {
        let system = TenantRecord {
            id: TenantId::system(),
            ..create("Operators", "acme", "").unwrap()
        };
        assert_eq!(reason_of(ensure_deletable(&system)), "SYSTEM_TENANT");
        let mut acme = create("Acme", "acme", "").unwrap();
        assert_eq!(reason_of(ensure_deletable(&acme)), "TENANT_ACTIVE");
        assert!(ensure_active(&acme).is_ok());
        acme.state = TenantState::Suspended;
        assert!(ensure_deletable(&acme).is_ok());
        assert_eq!(reason_of(ensure_active(&acme)), "TENANT_SUSPENDED");
        acme.state = TenantState::Inactive;
        assert_eq!(reason_of(ensure_active(&acme)), "TENANT_NOT_ACTIVE");
    }

    /// Any stored change gives another etag, a change of `update_time` alone included.
    #[test]
    fn the_etag_follows_every_stored_field() {
        let acme = create("Acme", "acme", "acme.example.com").unwrap();
        assert_eq!(acme.etag(), acme.clone().etag());
        assert_eq!(acme.etag().len(), 22);
        let changed = [
            TenantRecord {
                display_name: "Acme Corp".into(),
                ..acme.clone()
            },
            TenantRecord {
                plan: Plan::Enterprise,
                ..acme.clone()
            },
            TenantRecord {
                state: TenantState::Suspended,
                ..acme.clone()
            },
            TenantRecord {
                region: "eu-west-1".into(),
                ..acme.clone()
            },
            TenantRecord {
                domain: None,
                ..acme.clone()
            },
            TenantRecord {
                feature_overrides: [("sso".to_owned(), true)].into(),
                ..acme.clone()
            },
            TenantRecord {
                limit_overrides: [("users".to_owned(), 7)].into(),
                ..acme.clone()
            },
            TenantRecord {
                update_time: acme.update_time + 1,
                ..acme.clone()
            },
        ];
        for other in changed {
            assert_ne!(other.etag(), acme.etag(), "{other:?}");
        }
    }
}

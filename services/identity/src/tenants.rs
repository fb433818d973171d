//! Tenant rules: what a valid tenant looks like, and the plan and state vocabularies.

use std::collections::BTreeMap;

use palisade_grpc::{ApiError, FieldViolation};
use palisade_proto::palisade::identity::v1::{CreateTenantRequest, Plan, TenantState};
use palisade_tenancy::TenantId;

use crate::plans::{self, Entitlements};

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
    /// The plan with this tenant's overrides: its effective features and limits.
    pub fn entitlements(&self) -> Entitlements {
        Entitlements {
            plan: self.plan,
            feature_overrides: self.feature_overrides.clone(),
            limit_overrides: self.limit_overrides.clone(),
        }
    }
}

/// Validates a create request into the tenant to insert (times are set by the caller).
pub fn validate_create(request: &CreateTenantRequest, now: i64) -> Result<TenantRecord, ApiError> {
    let mut violations = Vec::new();
    let Some(tenant) = &request.tenant else {
        return Err(ApiError::invalid("tenant", "is required"));
    };
    let display_name = tenant.display_name.trim();
    if display_name.is_empty() {
        violations.push(FieldViolation::new(
            "tenant.display_name",
            "must not be empty",
        ));
    } else if display_name.chars().count() > 200 {
        violations.push(FieldViolation::new(
            "tenant.display_name",
            "must be at most 200 characters",
        ));
    }
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
        Ok(Plan::Unspecified) => Plan::Free,
        Ok(plan) => plan,
        Err(_) => {
            violations.push(FieldViolation::new(
                "tenant.plan",
                format!("unknown plan {}", tenant.plan),
            ));
            Plan::Free
        }
    };
    let region = if tenant.region.is_empty() {
        "default".to_owned()
    } else {
        tenant.region.clone()
    };
    if !is_slug(&region, 32) {
        violations.push(FieldViolation::new(
            "tenant.region",
            "must be 1 to 32 characters of a-z, 0-9 and '-'",
        ));
    }
    let domain = (!tenant.domain.is_empty()).then(|| tenant.domain.to_ascii_lowercase());
    if domain.as_deref().is_some_and(|d| !is_domain(d)) {
        violations.push(domain_violation("tenant.domain"));
    }
    violations.extend(plans::validate_overrides(
        "tenant",
        &tenant.feature_overrides,
        &tenant.limit_overrides,
    ));
    match id {
        Some(id) if violations.is_empty() => Ok(TenantRecord {
            id,
            display_name: display_name.to_owned(),
            plan,
            state: TenantState::Active,
            region,
            domain,
            feature_overrides: tenant.feature_overrides.clone(),
            limit_overrides: tenant.limit_overrides.clone(),
            create_time: now,
            update_time: now,
        }),
        _ => Err(ApiError::InvalidArgument(violations)),
    }
}

/// `tenants/{id}` → the id.
pub fn parse_name(name: &str) -> Result<TenantId, ApiError> {
    name.strip_prefix("tenants/")
        .and_then(|id| TenantId::parse(id).ok())
        .ok_or_else(|| ApiError::invalid("name", "must be `tenants/{tenant_id}`"))
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

pub fn plan_from_key(key: &str) -> Plan {
    match key {
        "standard" => Plan::Standard,
        "professional" => Plan::Professional,
        "enterprise" => Plan::Enterprise,
        _ => Plan::Free,
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

    fn violated_fields(result: Result<TenantRecord, ApiError>) -> Vec<String> {
        match result {
            Err(ApiError::InvalidArgument(violations)) => {
                violations.into_iter().map(|v| v.field).collect()
            }
            other => panic!("expected invalid argument, got {other:?}"),
        }
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
        assert_eq!(violated_fields(create("Acme", "system", "")), ["tenant_id"]);
        assert_eq!(violated_fields(create("Acme", "9lives", "")), ["tenant_id"]);
        assert_eq!(
            violated_fields(create("", "Bad_Id", "not a domain")),
            ["tenant.display_name", "tenant_id", "tenant.domain"]
        );
        let missing = validate_create(&CreateTenantRequest::default(), 1);
        assert_eq!(violated_fields(missing), ["tenant"]);
    }
}

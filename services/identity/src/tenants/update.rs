//! `UpdateTenant`'s rules: which fields a mask names (AIP-134), who may change which, and
//! the validated tenant after the change with the fields that actually changed.

use palisade_grpc::{ApiError, aip};
use palisade_proto::palisade::identity::v1::{Tenant, TenantState};
use palisade_tenancy::TenantContext;
use prost_types::FieldMask;

use super::{TenantRecord, display_name_of, domain_of, plan_of, region_of, state_of};
use crate::plans;

/// The `update_mask` paths of `UpdateTenant`, in the order the API documents them.
pub const UPDATABLE: [&str; 7] = [
    "display_name",
    "plan",
    "state",
    "region",
    "domain",
    "feature_overrides",
    "limit_overrides",
];

/// The tenant's output-only fields: a mask may name them (a tenant read and sent back whole),
/// and they are ignored (AIP-203); `etag` too, which is a condition, not a value.
pub const READ_ONLY: [&str; 6] = [
    "name",
    "create_time",
    "update_time",
    "features",
    "limits",
    "etag",
];

/// What a tenant's own principals may change about their tenant; the rest (plan, state,
/// region, domain, overrides) decides what the tenant gets and is for platform operators.
const SELF_SERVICE: [&str; 1] = ["display_name"];

/// The fields an update names (AIP-134): the mask's paths (`*` for all), or with an empty
/// mask every field that is set in `tenant`.
pub fn update_paths(
    tenant: &Tenant,
    mask: Option<&FieldMask>,
) -> Result<Vec<&'static str>, ApiError> {
    let set = [
        !tenant.display_name.is_empty(),
        tenant.plan != 0,
        tenant.state != 0,
        !tenant.region.is_empty(),
        !tenant.domain.is_empty(),
        !tenant.feature_overrides.is_empty(),
        !tenant.limit_overrides.is_empty(),
    ];
    aip::update_paths(mask, &UPDATABLE, &READ_ONLY, &set)
}

/// Tenant principals change only `display_name`; everything else is for platform operators.
/// `changed` holds the fields whose values change.
pub fn require_may_change(
    context: &TenantContext,
    changed: &[&'static str],
) -> Result<(), ApiError> {
    let reserved: Vec<&str> = changed
        .iter()
        .copied()
        .filter(|path| !SELF_SERVICE.contains(path))
        .collect();
    if context.is_platform_operator() || reserved.is_empty() {
        return Ok(());
    }
    Err(ApiError::PermissionDenied {
        reason: "PLATFORM_OPERATOR_ONLY",
        message: format!(
            "only platform operators change a tenant's {}",
            reserved.join(", ")
        ),
    })
}

/// A tenant after an update: the new record and the fields whose values changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Updated {
    pub record: TenantRecord,
    pub changed: Vec<&'static str>,
}

/// Applies the `paths` of `tenant` to `current`, validating each value as `CreateTenant`
/// does. An empty value clears `domain` and the overrides, and resets `region` to `default`.
pub fn apply_update(
    current: &TenantRecord,
    tenant: &Tenant,
    paths: &[&'static str],
    now: i64,
) -> Result<Updated, ApiError> {
    // A state or plan this server does not know (written by a newer version) reads as
    // unspecified, which fails closed; writing the record back would store it as active, or
    // on the free plan. So the update must set it.
    if let Some(path) = current.unknown_field().filter(|path| !paths.contains(path)) {
        let remedy = format!("set `{path}` in the same update");
        return Err(current.unknown_field_refusal(path, &remedy));
    }
    let mut next = current.clone();
    let mut violations = Vec::new();
    for path in paths {
        let applied = match *path {
            "display_name" => display_name_of(&tenant.display_name).map(|v| next.display_name = v),
            "plan" => plan_of(tenant.plan).map(|v| next.plan = v),
            "state" => state_of(tenant.state).map(|v| next.state = v),
            "region" => region_of(&tenant.region).map(|v| next.region = v),
            // The domain it has is kept as it is, even one `domain_of` would refuse now.
            "domain" if Some(tenant.domain.to_ascii_lowercase()) == current.domain => Ok(()),
            "domain" => domain_of(&tenant.domain).map(|v| next.domain = v),
            "feature_overrides" => {
                next.feature_overrides = tenant.feature_overrides.clone();
                Ok(())
            }
            _ => {
                next.limit_overrides = tenant.limit_overrides.clone();
                Ok(())
            }
        };
        if let Err(violation) = applied {
            violations.push(violation);
        }
    }
    violations.extend(plans::validate_overrides(
        "tenant",
        &next.feature_overrides,
        &next.limit_overrides,
    ));
    if !violations.is_empty() {
        return Err(ApiError::InvalidArgument(violations));
    }
    if current.id.is_system() && next.state != TenantState::Active {
        return Err(ApiError::FailedPrecondition {
            reason: "SYSTEM_TENANT",
            message: "the system tenant holds the platform operators and stays active".to_owned(),
        });
    }
    let changed: Vec<&'static str> = UPDATABLE
        .into_iter()
        .filter(|path| differs(current, &next, path))
        .collect();
    if !changed.is_empty() {
        next.update_time = now;
    }
    Ok(Updated {
        record: next,
        changed,
    })
}

fn differs(a: &TenantRecord, b: &TenantRecord, path: &str) -> bool {
    match path {
        "display_name" => a.display_name != b.display_name,
        "plan" => a.plan != b.plan,
        "state" => a.state != b.state,
        "region" => a.region != b.region,
        "domain" => a.domain != b.domain,
        "feature_overrides" => a.feature_overrides != b.feature_overrides,
        _ => a.limit_overrides != b.limit_overrides,
    }
}

#[cfg(test)]
mod tests {
    use palisade_proto::palisade::identity::v1::{CreateTenantRequest, Plan};
    use palisade_tenancy::TenantId;

    use super::*;

    fn acme() -> TenantRecord {
        super::super::validate_create(
            &CreateTenantRequest {
                tenant: Some(Tenant {
                    display_name: "Acme".into(),
                    ..Tenant::default()
                }),
                tenant_id: "acme".into(),
            },
            1,
        )
        .unwrap()
    }

    fn violated_fields<T: std::fmt::Debug>(result: Result<T, ApiError>) -> Vec<String> {
        match result {
            Err(ApiError::InvalidArgument(violations)) => {
                violations.into_iter().map(|v| v.field).collect()
            }
            other => panic!("expected invalid argument, got {other:?}"),
        }
    }

    fn reason_of<T: std::fmt::Debug>(result: Result<T, ApiError>) -> &'static str {
        match result {
            Err(ApiError::PermissionDenied { reason, .. })
            | Err(ApiError::FailedPrecondition { reason, .. }) => reason,
            other => panic!("expected a refusal with a reason, got {other:?}"),
        }
    }

    fn mask(paths: &[&str]) -> Option<FieldMask> {
        Some(FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        })
    }

    #[test]
    fn an_empty_mask_names_the_fields_that_are_set() {
        let tenant = Tenant {
            display_name: "Acme".into(),
            state: TenantState::Suspended as i32,
            limit_overrides: [("users".to_owned(), 9)].into(),
            ..Tenant::default()
        };
        assert_eq!(
            update_paths(&tenant, None).unwrap(),
            ["display_name", "state", "limit_overrides"]
        );
        assert_eq!(update_paths(&tenant, mask(&[]).as_ref()).unwrap().len(), 3);
        assert_eq!(
            update_paths(&tenant, mask(&["domain", "plan", "domain"]).as_ref()).unwrap(),
            ["plan", "domain"]
        );
        assert_eq!(
            update_paths(&tenant, mask(&["*"]).as_ref()).unwrap(),
            UPDATABLE
        );
        assert_eq!(
            violated_fields(update_paths(&tenant, mask(&["usage", "plan"]).as_ref())),
            ["update_mask"]
        );
    }

    #[test]
    fn a_domain_stored_before_a_rule_refused_it_is_kept_but_not_given_anew() {
        let current = TenantRecord {
            domain: Some("acme.123".into()),
            ..acme()
        };
        let whole = Tenant {
            display_name: "Acme Corp".into(),
            domain: "ACME.123".into(),
            ..Tenant::default()
        };
        let kept = apply_update(&current, &whole, &["display_name", "domain"], 7).unwrap();
        assert_eq!(kept.record.domain.as_deref(), Some("acme.123"));
        assert_eq!(kept.changed, ["display_name"]);
        let other = Tenant {
            domain: "acme.456".into(),
            ..Tenant::default()
        };
        let refused = apply_update(&current, &other, &["domain"], 7);
        assert_eq!(violated_fields(refused), ["tenant.domain"]);
    }

    #[test]
    fn a_tenant_with_an_unknown_state_or_plan_is_changed_only_with_it() {
        let unknown_state = TenantRecord {
            state: TenantState::Unspecified,
            ..acme()
        };
        let unknown_plan = TenantRecord {
            plan: Plan::Unspecified,
            ..acme()
        };
        let renamed = Tenant {
            display_name: "Acme Corp".into(),
            state: TenantState::Suspended as i32,
            plan: Plan::Standard as i32,
            ..Tenant::default()
        };
        for (current, path, reason) in [
            (unknown_state, "state", "UNKNOWN_TENANT_STATE"),
            (unknown_plan, "plan", "UNKNOWN_TENANT_PLAN"),
        ] {
            let refused = apply_update(&current, &renamed, &["display_name"], 7);
            assert_eq!(reason_of(refused), reason);
            let updated = apply_update(&current, &renamed, &["display_name", path], 7).unwrap();
            match path {
                "state" => assert_eq!(updated.record.state, TenantState::Suspended),
                _ => assert_eq!(updated.record.plan, Plan::Standard),
            }
        }
    }

    #[test]
    fn updates_validate_and_report_what_changed() {
        let current = TenantRecord {
            domain: Some("acme.example.com".into()),
            ..acme()
        };
        let tenant = Tenant {
            display_name: " Acme Corp ".into(),
            plan: Plan::Enterprise as i32,
            region: "eu-west-1".into(),
            ..Tenant::default()
        };
        let paths = ["display_name", "plan", "region", "domain"];
        let updated = apply_update(&current, &tenant, &paths, 7).unwrap();
        assert_eq!(updated.record.display_name, "Acme Corp");
        assert_eq!(updated.record.plan, Plan::Enterprise);
        assert_eq!(
            updated.record.domain, None,
            "an empty masked domain clears it"
        );
        assert_eq!(updated.record.update_time, 7);
        assert_eq!(updated.changed, paths);

        let same = apply_update(&current, &Tenant::default(), &["feature_overrides"], 7).unwrap();
        assert!(same.changed.is_empty());
        assert_eq!(same.record.update_time, current.update_time);

        let bad = Tenant {
            display_name: "  ".into(),
            plan: 99,
            state: 0,
            domain: "not a domain".into(),
            feature_overrides: [("teleport".to_owned(), true)].into(),
            ..Tenant::default()
        };
        let paths = [
            "display_name",
            "plan",
            "state",
            "domain",
            "feature_overrides",
        ];
        assert_eq!(
            violated_fields(apply_update(&current, &bad, &paths, 7)),
            [
                "tenant.display_name",
                "tenant.plan",
                "tenant.state",
                "tenant.domain",
                "tenant.feature_overrides[teleport]"
            ]
        );
    }

    #[test]
    fn the_system_tenant_cannot_be_suspended() {
        let system = TenantRecord {
            id: TenantId::system(),
            ..acme()
        };
        for state in [TenantState::Suspended, TenantState::Inactive] {
            let change = Tenant {
                state: state as i32,
                ..Tenant::default()
            };
            assert_eq!(
                reason_of(apply_update(&system, &change, &["state"], 1)),
                "SYSTEM_TENANT"
            );
        }
        let mut acme = acme();
        acme.plan = Plan::Free;
        let suspend = Tenant {
            state: TenantState::Suspended as i32,
            ..Tenant::default()
        };
        let updated = apply_update(&acme, &suspend, &["state"], 2).unwrap();
        assert_eq!(updated.changed, ["state"]);
    }

    #[test]
    fn tenant_principals_change_only_the_display_name() {
        let principal = Some(palisade_tenancy::Principal::new(
            "u1",
            palisade_tenancy::PrincipalKind::User,
        ));
        let admin = TenantContext {
            tenant_id: TenantId::parse("acme").unwrap(),
            principal: principal.clone(),
        };
        let operator = TenantContext {
            tenant_id: TenantId::system(),
            principal,
        };
        assert!(require_may_change(&admin, &["display_name"]).is_ok());
        assert_eq!(
            reason_of(require_may_change(&admin, &["display_name", "plan"])),
            "PLATFORM_OPERATOR_ONLY"
        );
        assert!(require_may_change(&operator, &UPDATABLE).is_ok());
    }
}

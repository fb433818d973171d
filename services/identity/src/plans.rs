//! Plan tiers: the features and limits each plan grants by default, and a tenant's effective
//! set once its per-tenant overrides are applied. Limits use -1 for "unlimited".
//!
//! The tables are the product's price list in code; changing a default changes every tenant
//! on that plan that has no override.

use std::collections::BTreeMap;

use palisade_grpc::FieldViolation;
use palisade_proto::palisade::identity::v1::Plan;

/// A limit value meaning "no limit".
pub const UNLIMITED: i64 = -1;

/// Every feature, in the order the API documents them.
pub const FEATURES: [&str; 8] = [
    "audit_export",
    "webhooks",
    "custom_roles",
    "backups",
    "advanced_reports",
    "slo",
    "sso",
    "dr_plans",
];

/// Every limit, in the order the API documents them.
pub const LIMITS: [&str; 6] = [
    "api_calls_per_month",
    "requests_per_second",
    "request_burst",
    "users",
    "api_keys",
    "custom_roles",
];

/// The limits a plan sets by default, in `LIMITS` order.
fn default_limits(plan: Plan) -> [i64; 6] {
    match plan {
        Plan::Unspecified | Plan::Free => [10_000, 10, 20, 5, 2, 0],
        Plan::Standard => [1_000_000, 50, 100, 50, 20, 5],
        Plan::Professional => [10_000_000, 200, 400, 500, 100, 50],
        Plan::Enterprise => [UNLIMITED, 1_000, 2_000, UNLIMITED, 1_000, UNLIMITED],
    }
}

/// Whether a known `feature` (one of [`FEATURES`]) is on for a tenant on `plan` with
/// `overrides`: its override if it has one, else the plan's default. Nothing is copied, for
/// callers on a hot path (every permission decision asks about `custom_roles`).
pub fn feature_enabled(plan: Plan, overrides: &BTreeMap<String, bool>, feature: &str) -> bool {
    overrides
        .get(feature)
        .copied()
        .unwrap_or_else(|| default_feature(plan, feature))
}

/// Whether a plan enables a feature by default: each tier adds to the one below it.
fn default_feature(plan: Plan, feature: &str) -> bool {
    let tier = match plan {
        Plan::Unspecified | Plan::Free => 0,
        Plan::Standard => 1,
        Plan::Professional => 2,
        Plan::Enterprise => 3,
    };
    let needs = match feature {
        "audit_export" | "webhooks" => 1,
        "custom_roles" | "backups" | "advanced_reports" | "slo" => 2,
        _ => 3,
    };
    tier >= needs
}

/// A tenant's plan with its overrides: what it may do and how much.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entitlements {
    pub plan: Plan,
    pub feature_overrides: BTreeMap<String, bool>,
    pub limit_overrides: BTreeMap<String, i64>,
}

impl Entitlements {
    /// The effective value of `limit` (-1 for unlimited), or `None` for an unknown limit.
    pub fn limit(&self, limit: &str) -> Option<i64> {
        let index = LIMITS.iter().position(|known| *known == limit)?;
        Some(
            self.limit_overrides
                .get(limit)
                .copied()
                .unwrap_or(default_limits(self.plan)[index]),
        )
    }

    /// Whether `feature` is enabled, and where the answer comes from; `None` if unknown.
    pub fn feature(&self, feature: &str) -> Option<(bool, String)> {
        if !FEATURES.contains(&feature) {
            return None;
        }
        let enabled = feature_enabled(self.plan, &self.feature_overrides, feature);
        Some(if self.feature_overrides.contains_key(feature) {
            (enabled, "tenant override".to_owned())
        } else {
            (
                enabled,
                format!("plan {}", crate::tenants::plan_key(self.plan)),
            )
        })
    }

    pub fn features(&self) -> BTreeMap<String, bool> {
        FEATURES
            .iter()
            .map(|feature| {
                let (enabled, _) = self.feature(feature).expect("a known feature");
                ((*feature).to_owned(), enabled)
            })
            .collect()
    }

    pub fn limits(&self) -> BTreeMap<String, i64> {
        LIMITS
            .iter()
            .map(|limit| {
                (
                    (*limit).to_owned(),
                    self.limit(limit).expect("a known limit"),
                )
            })
            .collect()
    }

    /// Whether `used` more of `limit` would still be within it (`used` counts the new one).
    pub fn allows(&self, limit: &str, used: i64) -> bool {
        match self.limit(limit) {
            Some(UNLIMITED) | None => true,
            Some(max) => used <= max,
        }
    }
}

/// Checks override maps from a request: known keys, limits of at least -1.
pub fn validate_overrides(
    field: &str,
    features: &BTreeMap<String, bool>,
    limits: &BTreeMap<String, i64>,
) -> Vec<FieldViolation> {
    let mut violations = Vec::new();
    for feature in features.keys() {
        if !FEATURES.contains(&feature.as_str()) {
            violations.push(FieldViolation::new(
                format!("{field}.feature_overrides[{feature}]"),
                format!("unknown feature; known: {}", FEATURES.join(", ")),
            ));
        }
    }
    for (limit, value) in limits {
        if !LIMITS.contains(&limit.as_str()) {
            violations.push(FieldViolation::new(
                format!("{field}.limit_overrides[{limit}]"),
                format!("unknown limit; known: {}", LIMITS.join(", ")),
            ));
        } else if *value < UNLIMITED {
            violations.push(FieldViolation::new(
                format!("{field}.limit_overrides[{limit}]"),
                "must be -1 (unlimited) or more",
            ));
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn higher_plans_grant_at_least_as_much() {
        let plans = [
            Plan::Free,
            Plan::Standard,
            Plan::Professional,
            Plan::Enterprise,
        ];
        for pair in plans.windows(2) {
            let (lower, higher) = (pair[0], pair[1]);
            for feature in FEATURES {
                assert!(!default_feature(lower, feature) || default_feature(higher, feature));
            }
            for (low, high) in default_limits(lower)
                .into_iter()
                .zip(default_limits(higher))
            {
                assert!(high == UNLIMITED || (low != UNLIMITED && high >= low));
            }
        }
    }

    #[test]
    fn overrides_replace_defaults() {
        let mut entitlements = Entitlements {
            plan: Plan::Free,
            ..Entitlements::default()
        };
        assert_eq!(entitlements.limit("users"), Some(5));
        assert!(!entitlements.feature("sso").unwrap().0);
        entitlements
            .limit_overrides
            .insert("users".into(), UNLIMITED);
        entitlements.feature_overrides.insert("sso".into(), true);
        assert!(entitlements.allows("users", 1_000_000));
        assert_eq!(
            entitlements.feature("sso"),
            Some((true, "tenant override".to_owned()))
        );
        assert_eq!(entitlements.limit("nonsense"), None);
        assert!(entitlements.allows("api_keys", 2) && !entitlements.allows("api_keys", 3));
    }

    #[test]
    fn overrides_are_validated() {
        let features = BTreeMap::from([("teleport".to_owned(), true)]);
        let limits = BTreeMap::from([("users".to_owned(), -2), ("apples".to_owned(), 1)]);
        let fields: Vec<String> = validate_overrides("tenant", &features, &limits)
            .into_iter()
            .map(|violation| violation.field)
            .collect();
        assert_eq!(
            fields,
            [
                "tenant.feature_overrides[teleport]",
                "tenant.limit_overrides[apples]",
                "tenant.limit_overrides[users]"
            ]
        );
    }
}

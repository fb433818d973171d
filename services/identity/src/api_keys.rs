//! API keys: the `pal_<key id>_<secret>` format (only a SHA-256 of the secret is stored; the
//! secret is 256 random bits, so a fast hash is enough and comparison is constant-time), key
//! names and owners, and what a valid new key looks like: scopes from the permission catalogue
//! and a mandatory expiry within the maximum lifetime.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use palisade_grpc::{ApiError, FieldViolation, time};
use palisade_proto::palisade::identity::v1::{ApiKeyState, CreateApiKeyRequest};
use palisade_tenancy::{PrincipalKind, TenantContext, TenantId};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::{authz::ALL_PERMISSIONS, roles::Roles, store::ApiKeyRecord};

const PREFIX: &str = "pal_";

/// How long a key may live when the server is not told otherwise.
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// A freshly minted key: the full string (shown once) and what is stored.
pub struct MintedKey {
    pub id: String,
    pub secret_hash: Vec<u8>,
    pub presented: String,
}

pub fn mint() -> MintedKey {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let secret = hex::encode(secret);
    MintedKey {
        secret_hash: hash_secret(&secret),
        presented: format!("{PREFIX}{id}_{secret}"),
        id,
    }
}

/// Splits a presented key into (key id, secret), or `None` if it is not shaped like one.
pub fn parse(presented: &str) -> Option<(&str, &str)> {
    let (id, secret) = presented.strip_prefix(PREFIX)?.split_once('_')?;
    (is_hex(id, 32) && is_hex(secret, 64)).then_some((id, secret))
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

pub fn hash_secret(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Compares without an early exit, so timing does not reveal how much of a hash matched.
pub fn hashes_match(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The resource name of the key `id` of `tenant`.
pub fn key_name(tenant: impl std::fmt::Display, id: &str) -> String {
    format!("tenants/{tenant}/apiKeys/{id}")
}

impl ApiKeyRecord {
    pub fn name(&self) -> String {
        key_name(&self.tenant_id, &self.id)
    }

    /// `tenants/{t}/users/{u}` for a user's key, `tenants/{t}` for a service-account key.
    pub fn owner_name(&self) -> String {
        match &self.owner_user_id {
            Some(user) => format!("tenants/{}/users/{user}", self.tenant_id),
            None => format!("tenants/{}", self.tenant_id),
        }
    }

    /// Revoked wins over expired: a revoked key never comes back, an expired one might be
    /// mistaken for renewable.
    pub fn state(&self, now: i64) -> ApiKeyState {
        if self.revoke_time.is_some() {
            ApiKeyState::Revoked
        } else if self.expire_time <= now {
            ApiKeyState::Expired
        } else {
            ApiKeyState::Active
        }
    }
}

/// `tenants/{tenant}/apiKeys/{key id}` → (tenant, key id); the id in its canonical form, 32
/// lower-case hex digits. Noted as the call's target (`note_target`).
pub fn parse_name(name: &str) -> Result<(TenantId, String), ApiError> {
    let parsed = split_name(name).ok_or_else(|| {
        ApiError::invalid("name", "must be `tenants/{tenant_id}/apiKeys/{key_id}`")
    })?;
    palisade_grpc::note_target(name);
    Ok(parsed)
}

/// `tenants/{tenant}/apiKeys/{key id}` → (tenant, key id), as [`parse_name`] but without
/// taking it for the call's target: for names read from the store.
pub fn split_name(name: &str) -> Option<(TenantId, String)> {
    let (tenant, id) = name.strip_prefix("tenants/")?.split_once("/apiKeys/")?;
    let tenant = TenantId::parse(tenant).ok()?;
    (is_hex(id, 32) && !id.bytes().any(|b| b.is_ascii_uppercase())).then(|| (tenant, id.to_owned()))
}

/// A key's owner as given in a request or filter, within `tenant`: `tenants/{tenant}` (the
/// tenant itself, `None`) or `tenants/{tenant}/users/{user}` (`Some(user)`).
pub fn parse_owner(owner: &str, tenant: &TenantId) -> Option<Option<String>> {
    let rest = owner.strip_prefix("tenants/")?;
    match rest.split_once("/users/") {
        None => (rest == tenant.as_str()).then_some(None),
        Some((owner_tenant, user)) => {
            let canonical = uuid::Uuid::parse_str(user)
                .is_ok_and(|id| id.to_string() == user && owner_tenant == tenant.as_str());
            canonical.then(|| Some(user.to_owned()))
        }
    }
}

/// The server's rules for new keys: which scopes exist and how long a key may live.
#[derive(Clone, Debug)]
pub struct KeyRules {
    /// Scopes are permissions of the catalogue roles grant from, which holds no internal,
    /// service-to-service permission.
    roles: Arc<Roles>,
    max_lifetime_micros: i64,
}

impl KeyRules {
    pub fn new(roles: Arc<Roles>, max_lifetime: Duration) -> KeyRules {
        KeyRules {
            roles,
            max_lifetime_micros: i64::try_from(max_lifetime.as_micros()).unwrap_or(i64::MAX),
        }
    }
}

/// Validates a create request into the key to insert (no id or secret yet), with every bad
/// field named. `caller` decides what an empty `owner` means (the calling user of the tenant)
/// and, when it is a key, which key the new one is created with.
pub fn validate_create(
    request: &CreateApiKeyRequest,
    rules: &KeyRules,
    caller: &TenantContext,
    now: i64,
) -> Result<ApiKeyRecord, ApiError> {
    let mut violations = Vec::new();
    let tenant = crate::users::parse_parent(&request.parent)
        .map_err(|violation| violations.push(violation))
        .ok();
    let Some(key) = &request.api_key else {
        violations.push(FieldViolation::new("api_key", "is required"));
        return Err(ApiError::InvalidArgument(violations));
    };
    let display_name = crate::display_names::check(&key.display_name)
        .map_err(|problem| violations.push(FieldViolation::new("api_key.display_name", problem)))
        .unwrap_or_default();
    let scopes = check_scopes(&key.scopes, tenant.as_ref(), rules, &mut violations);
    let owner = tenant
        .as_ref()
        .and_then(|tenant| check_owner(&key.owner, tenant, caller, &mut violations));
    let expire_time = check_expiry(request, rules, now, &mut violations);
    match (tenant, owner, expire_time) {
        (Some(tenant_id), Some(owner_user_id), Some(expire_time)) if violations.is_empty() => {
            Ok(ApiKeyRecord {
                id: String::new(),
                tenant_id,
                display_name,
                secret_hash: Vec::new(),
                scopes,
                owner_user_id,
                // The key the call was made with, whose revocation revokes this one.
                created_with: caller
                    .principal
                    .as_ref()
                    .filter(|principal| principal.kind == PrincipalKind::ApiKey)
                    .map(|key| format!("tenants/{}/apiKeys/{}", caller.tenant_id, key.id)),
                create_time: now,
                expire_time,
                revoke_time: None,
                last_use_time: None,
            })
        }
        _ => Err(ApiError::InvalidArgument(violations)),
    }
}

/// More scopes than this on one key is a mistake or an attack: the whole catalogue is a few
/// dozen permissions. Refused before each is looked at, so the answer stays one violation.
const MAX_SCOPES: usize = 1000;

fn check_scopes(
    scopes: &[String],
    tenant: Option<&TenantId>,
    rules: &KeyRules,
    violations: &mut Vec<FieldViolation>,
) -> Vec<String> {
    if scopes.is_empty() || scopes.len() > MAX_SCOPES {
        violations.push(FieldViolation::new(
            "api_key.scopes",
            format!("must name 1 to {MAX_SCOPES} permissions"),
        ));
        return Vec::new();
    }
    let mut valid = BTreeSet::new();
    for (index, scope) in scopes.iter().enumerate() {
        let field = || format!("api_key.scopes[{index}]");
        if scope == ALL_PERMISSIONS {
            // Every permission, in every tenant: a platform operator's credential.
            if tenant.is_some_and(TenantId::is_system) {
                valid.insert(scope.clone());
            } else {
                violations.push(FieldViolation::new(
                    field(),
                    "`*` is only for keys of the system tenant (platform operators)",
                ));
            }
        } else if rules.roles.in_catalogue(scope) {
            valid.insert(scope.clone());
        } else {
            violations.push(FieldViolation::new(
                field(),
                format!("unknown permission {:?}", palisade_grpc::echoed(scope)),
            ));
        }
    }
    valid.into_iter().collect()
}

/// The owner's user id (`Some(None)` for the tenant itself), or `None` after a violation.
fn check_owner(
    owner: &str,
    tenant: &TenantId,
    caller: &TenantContext,
    violations: &mut Vec<FieldViolation>,
) -> Option<Option<String>> {
    if owner.is_empty() {
        return match &caller.principal {
            Some(principal)
                if principal.kind == PrincipalKind::User && &caller.tenant_id == tenant =>
            {
                Some(Some(principal.id.clone()))
            }
            _ => {
                violations.push(FieldViolation::new(
                    "api_key.owner",
                    format!(
                        "required unless the caller is a user of tenants/{tenant}: \
                         `tenants/{tenant}/users/{{user_id}}` or `tenants/{tenant}` for a \
                         service-account key"
                    ),
                ));
                None
            }
        };
    }
    let parsed = parse_owner(owner, tenant);
    if parsed.is_none() {
        violations.push(FieldViolation::new(
            "api_key.owner",
            format!(
                "must be a user of the tenant, `tenants/{tenant}/users/{{user_id}}`, or the \
                 tenant itself, `tenants/{tenant}`"
            ),
        ));
    }
    parsed
}

/// Expiry is mandatory: `api_key.expire_time` or `ttl`, in the future and within the maximum
/// lifetime.
fn check_expiry(
    request: &CreateApiKeyRequest,
    rules: &KeyRules,
    now: i64,
    violations: &mut Vec<FieldViolation>,
) -> Option<i64> {
    let max = rules.max_lifetime_micros;
    let max_text = describe_duration(max);
    let expire_time = request
        .api_key
        .as_ref()
        .and_then(|k| k.expire_time.as_ref());
    let (field, expire) = match (expire_time, &request.ttl) {
        (Some(_), Some(_)) => {
            violations.push(FieldViolation::new(
                "ttl",
                "give either `ttl` or `api_key.expire_time`, not both",
            ));
            return None;
        }
        (None, None) => {
            violations.push(FieldViolation::new(
                "api_key.expire_time",
                format!(
                    "every key expires: set `api_key.expire_time` or `ttl` (at most {max_text})"
                ),
            ));
            return None;
        }
        (Some(at), None) => ("api_key.expire_time", time::micros_in_range(at)),
        (None, Some(ttl)) => {
            let micros = ttl
                .seconds
                .checked_mul(1_000_000)
                .and_then(|s| s.checked_add(i64::from(ttl.nanos / 1_000)))
                .filter(|micros| *micros > 0 && ttl.nanos >= 0);
            if micros.is_none() {
                violations.push(FieldViolation::new("ttl", "must be positive"));
                return None;
            }
            ("ttl", micros.map(|micros| now.saturating_add(micros)))
        }
    };
    match expire {
        Some(at) if at <= now => {
            violations.push(FieldViolation::new(field, "must be in the future"));
            None
        }
        Some(at) if at - now <= max => Some(at),
        _ => {
            violations.push(FieldViolation::new(
                field,
                format!("a key lives at most {max_text}"),
            ));
            None
        }
    }
}

fn describe_duration(micros: i64) -> String {
    let seconds = micros / 1_000_000;
    if seconds % 86_400 == 0 {
        format!("{} days", seconds / 86_400)
    } else {
        format!("{seconds} seconds")
    }
}

#[cfg(test)]
mod tests {
    use palisade_proto::palisade::identity::v1::ApiKey;
    use palisade_tenancy::Principal;
    use prost_types::{Duration as ProtoDuration, Timestamp};

    use super::*;

    const NOW: i64 = 1_800_000_000_000_000;
    const DAY: i64 = 86_400;

    fn roles() -> Arc<Roles> {
        let policies = palisade_grpc::MethodPolicies::palisade().unwrap();
        Arc::new(Roles::from_catalogue(&policies))
    }

    #[test]
    fn minted_keys_parse_and_verify() {
        let key = mint();
        let (id, secret) = parse(&key.presented).unwrap();
        assert_eq!(id, key.id);
        assert!(hashes_match(&hash_secret(secret), &key.secret_hash));
        assert!(!hashes_match(&hash_secret("other"), &key.secret_hash));
        let name = format!("tenants/acme/apiKeys/{id}");
        assert_eq!(parse_name(&name).unwrap().1, id);
    }

    #[test]
    fn malformed_keys_are_refused() {
        for bad in [
            "",
            "pal_",
            "pal_abc_def",
            "xyz_0123",
            &format!("pal_{}_{}", "g".repeat(32), "0".repeat(64)),
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn names_parse_only_in_canonical_form() {
        let id = "0".repeat(32);
        for bad in [
            format!("tenants/acme/apiKeys/{}", "A".repeat(32)),
            format!("tenants/acme/apiKeys/{}", "0".repeat(31)),
            format!("tenants/acme/keys/{id}"),
            format!("apiKeys/{id}"),
            format!("tenants/Acme!/apiKeys/{id}"),
        ] {
            assert!(parse_name(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn owners_are_the_tenant_or_one_of_its_users() {
        let acme = TenantId::parse("acme").unwrap();
        let user = uuid::Uuid::now_v7().to_string();
        assert_eq!(parse_owner("tenants/acme", &acme), Some(None));
        assert_eq!(
            parse_owner(&format!("tenants/acme/users/{user}"), &acme),
            Some(Some(user.clone()))
        );
        for bad in [
            "tenants/globex".to_owned(),
            format!("tenants/globex/users/{user}"),
            "tenants/acme/users/x".to_owned(),
            "acme".to_owned(),
        ] {
            assert_eq!(parse_owner(&bad, &acme), None, "{bad}");
        }
    }

    fn user_of(tenant: &str) -> TenantContext {
        TenantContext {
            tenant_id: TenantId::parse(tenant).unwrap(),
            principal: Some(Principal::new(
                uuid::Uuid::now_v7().to_string(),
                PrincipalKind::User,
            )),
        }
    }

    fn request(parent: &str, scopes: &[&str], ttl_days: Option<i64>) -> CreateApiKeyRequest {
        CreateApiKeyRequest {
            parent: parent.into(),
            api_key: Some(ApiKey {
                display_name: "ci".into(),
                scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
                ..ApiKey::default()
            }),
            ttl: ttl_days.map(|days| ProtoDuration {
                seconds: days * DAY,
                nanos: 0,
            }),
        }
    }

    fn violations(request: &CreateApiKeyRequest, caller: &TenantContext) -> Vec<String> {
        let rules = KeyRules::new(roles(), DEFAULT_MAX_LIFETIME);
        match validate_create(request, &rules, caller, NOW) {
            Ok(_) => Vec::new(),
            Err(ApiError::InvalidArgument(violations)) => {
                violations.into_iter().map(|v| v.field).collect()
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }

    /// Too many scopes is one violation, not one per unknown scope.
    #[test]
    fn scopes_are_bounded_before_each_is_checked() {
        let caller = user_of("acme");
        let unknown: Vec<String> = (0..=MAX_SCOPES).map(|n| format!("no.such.{n}")).collect();
        let unknown: Vec<&str> = unknown.iter().map(String::as_str).collect();
        let too_many = request("tenants/acme", &unknown, Some(30));
        assert_eq!(violations(&too_many, &caller), ["api_key.scopes"]);
        let none = request("tenants/acme", &[], Some(30));
        assert_eq!(violations(&none, &caller), ["api_key.scopes"]);
    }

    #[test]
    fn a_users_key_defaults_to_its_own_and_keeps_sorted_unique_scopes() {
        let caller = user_of("acme");
        let rules = KeyRules::new(roles(), DEFAULT_MAX_LIFETIME);
        let scopes = [
            "identity.users.list",
            "identity.users.get",
            "identity.users.list",
        ];
        let key = validate_create(
            &request("tenants/acme", &scopes, Some(30)),
            &rules,
            &caller,
            NOW,
        )
        .unwrap();
        assert_eq!(key.scopes, ["identity.users.get", "identity.users.list"]);
        assert_eq!(key.owner_user_id, caller.principal.clone().map(|p| p.id));
        assert_eq!(key.expire_time, NOW + 30 * DAY * 1_000_000);
        let mut at = request("tenants/acme", &scopes, None);
        at.api_key.as_mut().unwrap().expire_time = Some(time::timestamp(NOW + 1_000_000));
        let key = validate_create(&at, &rules, &caller, NOW).unwrap();
        assert_eq!(key.expire_time, NOW + 1_000_000);
    }

    #[test]
    fn scopes_are_the_permissions_roles_grant() {
        // Checked by a handler rather than named by a method's policy, yet a role can grant
        // it, so a key can hold it too; internal permissions are neither's.
        let caller = user_of("acme");
        let scopes = |scope: &str| request("tenants/acme", &[scope], Some(1));
        assert!(violations(&scopes("identity.users.update"), &caller).is_empty());
        assert_eq!(
            violations(&scopes("identity.authorization.check"), &caller),
            ["api_key.scopes[0]"]
        );
    }

    #[test]
    fn bad_input_names_every_field() {
        let caller = user_of("acme");
        assert_eq!(
            violations(
                &request("acme", &["identity.users.get", "root", "*"], None),
                &caller
            ),
            [
                "parent",
                "api_key.scopes[1]",
                "api_key.scopes[2]",
                "api_key.expire_time"
            ]
        );
        assert_eq!(
            violations(&request("tenants/acme", &[], Some(366)), &caller),
            ["api_key.scopes", "ttl"]
        );
        // Internal, service-to-service permissions are no scopes.
        assert_eq!(
            violations(
                &request("tenants/acme", &["identity.apikeys.verify"], Some(1)),
                &caller
            ),
            ["api_key.scopes[0]"]
        );
        let mut both = request("tenants/acme", &["identity.users.get"], Some(1));
        both.api_key.as_mut().unwrap().expire_time = Some(time::timestamp(NOW + 1));
        assert_eq!(violations(&both, &caller), ["ttl"]);
        let mut past = request("tenants/acme", &["identity.users.get"], None);
        past.api_key.as_mut().unwrap().expire_time = Some(Timestamp {
            seconds: 1,
            nanos: 0,
        });
        assert_eq!(violations(&past, &caller), ["api_key.expire_time"]);
        let negative = CreateApiKeyRequest {
            ttl: Some(ProtoDuration {
                seconds: -5,
                nanos: 0,
            }),
            ..request("tenants/acme", &["identity.users.get"], None)
        };
        assert_eq!(violations(&negative, &caller), ["ttl"]);
    }

    #[test]
    fn owners_must_be_named_by_non_users_and_stay_in_the_tenant() {
        let operator = user_of("system");
        let scopes = ["identity.users.get"];
        assert_eq!(
            violations(&request("tenants/acme", &scopes, Some(1)), &operator),
            ["api_key.owner"]
        );
        let mut service = request("tenants/acme", &scopes, Some(1));
        service.api_key.as_mut().unwrap().owner = "tenants/acme".into();
        assert!(violations(&service, &operator).is_empty());
        service.api_key.as_mut().unwrap().owner = "tenants/globex".into();
        assert_eq!(violations(&service, &operator), ["api_key.owner"]);
        // `*` is for the system tenant only.
        let mut star = request("tenants/system", &["*"], Some(1));
        star.api_key.as_mut().unwrap().owner = "tenants/system".into();
        assert!(violations(&star, &operator).is_empty());
    }

    #[test]
    fn the_built_in_roles_pick_up_the_key_permissions_by_verb() {
        let roles = roles();
        let has = |role: &str, permission: &str| roles.grant(&[role.to_owned()], permission);
        for verb in ["create", "get", "list", "revoke"] {
            let permission = format!("identity.apikeys.{verb}");
            assert!(has("admin", &permission) && has("manager", &permission));
            let read = matches!(verb, "get" | "list");
            assert_eq!(has("viewer", &permission), read, "{permission}");
            assert_eq!(has("auditor", &permission), read, "{permission}");
        }
        assert!(!has("admin", "identity.apikeys.verify"));
    }
}

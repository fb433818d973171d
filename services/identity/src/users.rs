//! User rules: what a valid user looks like, user names, and the state vocabulary; (in
//! `update`) what `UpdateUser` may change.

use palisade_grpc::{ApiError, FieldViolation, aip::Etag};
use palisade_proto::palisade::identity::v1::{CreateUserRequest, UserState};
use palisade_tenancy::TenantId;

use crate::passwords;

mod update;

pub use update::{SET_ELSEWHERE, apply_update};

/// A user as stored (without its password hash).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    pub id: String,
    pub tenant_id: TenantId,
    pub email: String,
    pub display_name: String,
    pub state: UserState,
    pub roles: Vec<String>,
    pub create_time: i64,
    pub update_time: i64,
    /// Until when sign-ins are refused after repeated failures (microseconds); a time past
    /// means no lock. Only the lockout (`store/sign_in.rs`) and new passwords change it.
    pub locked_until: Option<i64>,
}

impl UserRecord {
    pub fn name(&self) -> String {
        format!("tenants/{}/users/{}", self.tenant_id, self.id)
    }

    /// The user's version for optimistic concurrency (AIP-154): a digest of everything stored
    /// about it (see `aip::Etag`) but `locked_until`, which failed sign-ins change and no
    /// update writes: an admin's copy does not go stale because someone mistyped a password.
    pub fn etag(&self) -> String {
        let mut etag = Etag::new()
            .field(self.tenant_id.as_str().as_bytes())
            .field(self.id.as_bytes())
            .field(self.email.as_bytes())
            .field(self.display_name.as_bytes())
            .number(self.state as i64)
            .number(self.roles.len() as i64);
        // Sorted here, not trusted sorted: the database orders them by its collation, which
        // on PostgreSQL need not be byte order, and the same user must give the same etag.
        let mut roles: Vec<&str> = self.roles.iter().map(String::as_str).collect();
        roles.sort_unstable();
        for role in roles {
            etag = etag.field(role.as_bytes());
        }
        etag.number(self.create_time)
            .number(self.update_time)
            .finish()
    }
}

/// Validates a create request into the user to insert (the password is checked, not kept);
/// `is_role` tells the tenant's roles, built-in and custom, from unknown ones.
pub fn validate_create(
    request: &CreateUserRequest,
    is_role: impl Fn(&str) -> bool,
    now: i64,
) -> Result<UserRecord, ApiError> {
    let mut violations = Vec::new();
    let tenant = parse_parent(&request.parent)
        .map_err(|violation| violations.push(violation))
        .ok();
    let Some(user) = &request.user else {
        violations.push(FieldViolation::new("user", "is required"));
        return Err(ApiError::InvalidArgument(violations));
    };
    let email = user.email.trim().to_lowercase();
    if !is_email(&email) {
        violations.push(FieldViolation::new(
            "user.email",
            "must be an email address such as ada@example.com",
        ));
    }
    let display_name = check_display_name(&user.display_name, &mut violations);
    let mut user_roles = Vec::new();
    for (index, role) in user.roles.iter().enumerate() {
        if !is_role(role) {
            violations.push(FieldViolation::new(
                format!("user.roles[{index}]"),
                unknown_role(role),
            ));
        } else if !user_roles.contains(role) {
            user_roles.push(role.clone());
        }
    }
    user_roles.sort();
    // Words of the account itself are the first an attacker tries.
    let account_words = [
        email.split('@').next().unwrap_or_default(),
        tenant.as_ref().map_or("", TenantId::as_str),
    ];
    violations.extend(passwords::check_policy(
        "password",
        &request.password,
        &account_words,
    ));
    match (tenant, display_name) {
        (Some(tenant_id), Some(display_name)) if violations.is_empty() => Ok(UserRecord {
            id: uuid::Uuid::now_v7().to_string(),
            tenant_id,
            email,
            display_name,
            state: UserState::Active,
            roles: user_roles,
            create_time: now,
            update_time: now,
            locked_until: None,
        }),
        _ => Err(ApiError::InvalidArgument(violations)),
    }
}

/// `user.display_name` trimmed (`display_names`), or a violation.
fn check_display_name(value: &str, violations: &mut Vec<FieldViolation>) -> Option<String> {
    crate::display_names::check(value)
        .map_err(|problem| violations.push(FieldViolation::new("user.display_name", problem)))
        .ok()
}

/// More roles than this on a new user is a mistake or an attack, not a user: a tenant has five
/// built-in roles and rarely more than a few dozen of its own. More can be assigned later.
pub const MAX_ROLES_ON_CREATE: usize = 100;

/// Refuses a `user.roles` longer than [`MAX_ROLES_ON_CREATE`].
pub fn check_role_count(roles: &[String]) -> Result<(), ApiError> {
    if roles.len() > MAX_ROLES_ON_CREATE {
        return Err(ApiError::invalid(
            "user.roles",
            format!("must name at most {MAX_ROLES_ON_CREATE} roles"),
        ));
    }
    Ok(())
}

/// Why `role` is refused: it is neither built-in nor a custom role of the tenant.
pub fn unknown_role(role: &str) -> String {
    format!(
        "unknown role {:?}; roles are the built-in {} and the tenant's custom roles",
        palisade_grpc::echoed(role),
        crate::roles::BUILT_IN.join(", ")
    )
}

/// `tenants/{tenant}` (the `parent` of a user request) → the tenant.
pub fn parse_parent(parent: &str) -> Result<TenantId, FieldViolation> {
    parent
        .strip_prefix("tenants/")
        .and_then(|id| TenantId::parse(id).ok())
        .ok_or_else(|| FieldViolation::new("parent", "must be `tenants/{tenant_id}`"))
}

/// `tenants/{tenant}/users/{user}` → (tenant, user id), noted as the call's target
/// (`note_target`: a refusal of the call is recorded against the user).
pub fn parse_name(name: &str) -> Result<(TenantId, String), ApiError> {
    let malformed = || ApiError::invalid("name", "must be `tenants/{tenant_id}/users/{user_id}`");
    let rest = name.strip_prefix("tenants/").ok_or_else(malformed)?;
    let (tenant, user) = rest.split_once("/users/").ok_or_else(malformed)?;
    let tenant = TenantId::parse(tenant).map_err(|_| malformed())?;
    match uuid::Uuid::parse_str(user) {
        Ok(id) if id.to_string() == user => {
            palisade_grpc::note_target(name);
            Ok((tenant, user.to_owned()))
        }
        _ => Err(malformed()),
    }
}

pub fn state_key(state: UserState) -> &'static str {
    match state {
        UserState::Unspecified | UserState::Active => "active",
        UserState::Disabled => "disabled",
    }
}

/// An unknown stored state reads as `Unspecified`, which no check treats as active.
pub fn state_from_key(key: &str) -> UserState {
    match key {
        "active" => UserState::Active,
        "disabled" => UserState::Disabled,
        _ => UserState::Unspecified,
    }
}

/// The longest email address, in characters (RFC 5321's path limit less its angle brackets).
/// The addresses identity accepts itself are ASCII ([`is_email`]); an imported one may not be.
pub const EMAIL_MAX_LEN: usize = 254;

/// A pragmatic address check (not RFC 5322's whole grammar): one `@`, a local part of 1 to 64
/// printable characters without spaces, and a DNS domain with at least one dot.
fn is_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    email.len() <= EMAIL_MAX_LEN
        && (1..=64).contains(&local.len())
        && local.chars().all(|c| {
            c.is_ascii_graphic()
                && !matches!(
                    c,
                    '@' | '"' | '(' | ')' | ',' | ':' | ';' | '<' | '>' | '[' | '\\' | ']'
                )
        })
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && domain.contains('.')
        && domain.split('.').all(|label| {
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
    use palisade_grpc::MethodPolicies;
    use palisade_proto::palisade::identity::v1::User;

    use super::*;
    use crate::roles::Roles;

    fn create(parent: &str, email: &str, roles: &[&str], password: &str) -> Vec<String> {
        let request = CreateUserRequest {
            parent: parent.into(),
            user: Some(User {
                email: email.into(),
                display_name: "Ada".into(),
                roles: roles.iter().map(|r| (*r).to_owned()).collect(),
                ..User::default()
            }),
            password: password.into(),
        };
        let roles = Roles::from_catalogue(&MethodPolicies::palisade().unwrap());
        let is_role = |role: &str| roles.is_known(role) || role == "user-reader";
        match validate_create(&request, is_role, 1) {
            Ok(_) => Vec::new(),
            Err(ApiError::InvalidArgument(violations)) => {
                violations.into_iter().map(|v| v.field).collect()
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn good_input_passes() {
        assert!(
            create(
                "tenants/acme",
                "Ada@Example.com",
                &["admin", "user-reader"],
                "twelve chars"
            )
            .is_empty()
        );
    }

    #[test]
    fn bad_input_names_every_field() {
        assert_eq!(
            create("acme", "ada", &["root"], "short"),
            ["parent", "user.email", "user.roles[0]", "password"]
        );
        for email in [
            "",
            "a@b",
            "@example.com",
            "a b@example.com",
            "a@@example.com",
            "a@-x.com",
        ] {
            assert_eq!(
                create("tenants/acme", email, &[], "twelve chars"),
                ["user.email"],
                "{email}"
            );
        }
        assert_eq!(
            create("tenants/acme", "a@example.com", &[], &"x".repeat(129)),
            ["password"]
        );
    }

    #[test]
    fn names_parse_only_in_canonical_form() {
        let id = uuid::Uuid::now_v7().to_string();
        let (tenant, user) = parse_name(&format!("tenants/acme/users/{id}")).unwrap();
        assert_eq!((tenant.as_str(), user.as_str()), ("acme", id.as_str()));
        for bad in [
            "tenants/acme/users/x".to_owned(),
            format!("tenants/acme/users/{}", id.to_uppercase()),
            format!("tenants/acme/groups/{id}"),
            format!("users/{id}"),
        ] {
            assert!(parse_name(&bad).is_err(), "{bad}");
        }
    }

    /// Any stored change gives another etag, but the sign-in lock's.
    #[test]
    fn the_etag_follows_every_stored_field_but_the_lock() {
        let user = UserRecord {
            id: "0192f3c4".into(),
            tenant_id: TenantId::parse("acme").unwrap(),
            email: "ada@example.com".into(),
            display_name: "Ada".into(),
            state: UserState::Active,
            roles: vec!["viewer".into()],
            create_time: 1,
            update_time: 1,
            locked_until: None,
        };
        let locked = UserRecord {
            locked_until: Some(5),
            ..user.clone()
        };
        assert_eq!(locked.etag(), user.etag());
        for changed in [
            UserRecord {
                email: "ada@example.org".into(),
                ..user.clone()
            },
            UserRecord {
                display_name: "Ada L.".into(),
                ..user.clone()
            },
            UserRecord {
                state: UserState::Disabled,
                ..user.clone()
            },
            UserRecord {
                roles: vec!["viewer".into(), "admin".into()],
                ..user.clone()
            },
            UserRecord {
                update_time: 2,
                ..user.clone()
            },
        ] {
            assert_ne!(changed.etag(), user.etag(), "{changed:?}");
        }
        // The same roles in another order are the same user.
        let two = |roles: [&str; 2]| UserRecord {
            roles: roles.map(str::to_owned).to_vec(),
            ..user.clone()
        };
        assert_eq!(
            two(["support-lead", "supporter"]).etag(),
            two(["supporter", "support-lead"]).etag()
        );
    }
}

//! The typed context a handler sees: tenant, principal and request id.

use std::fmt;

use crate::{Error, Result};

/// The tenant that owns the platform itself; its principals are platform operators.
pub const SYSTEM_TENANT: &str = "system";

/// A tenant id: `system`, a user-chosen slug (`[a-z][a-z0-9-]{2,62}`) or a UUID.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    /// The longest tenant id, in bytes (a DNS label's limit: a tenant's id can be a subdomain).
    pub const MAX_LEN: usize = 63;

    /// Accepts lowercase letters, digits and hyphens, 3 to 63 characters, starting with a letter
    /// or digit (UUIDs start with a digit), not ending with a hyphen.
    pub fn parse(raw: &str) -> Result<TenantId> {
        let valid_chars = raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let valid_ends =
            raw.starts_with(|c: char| c.is_ascii_alphanumeric()) && !raw.ends_with('-');
        if (3..=Self::MAX_LEN).contains(&raw.len()) && valid_chars && valid_ends {
            Ok(TenantId(raw.to_owned()))
        } else {
            Err(Error::InvalidTenantId(raw.to_owned()))
        }
    }

    pub fn system() -> TenantId {
        TenantId(SYSTEM_TENANT.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_system(&self) -> bool {
        self.0 == SYSTEM_TENANT
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What kind of principal made a call; the wire values of `palisade-principal-type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PrincipalKind {
    User,
    ApiKey,
    Service,
}

impl PrincipalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::User => "user",
            PrincipalKind::ApiKey => "api-key",
            PrincipalKind::Service => "service",
        }
    }

    pub fn parse(raw: &str) -> Result<PrincipalKind> {
        match raw {
            "user" => Ok(PrincipalKind::User),
            "api-key" => Ok(PrincipalKind::ApiKey),
            "service" => Ok(PrincipalKind::Service),
            other => Err(Error::InvalidPrincipalType(other.to_owned())),
        }
    }
}

/// Who made a call.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Principal {
    pub id: String,
    pub kind: PrincipalKind,
    /// For a user presenting an access token, the sign-in session (token family) it was issued
    /// in. Permission checks refuse a session that has ended, so a logout or a revoked refresh
    /// token stops the access tokens of that session too, not only its refresh tokens.
    pub session_id: Option<String>,
}

impl Principal {
    /// A principal that is not acting within a sign-in session (an API key, a component, or a
    /// user named by data rather than by its token).
    pub fn new(id: impl Into<String>, kind: PrincipalKind) -> Principal {
        Principal {
            id: id.into(),
            kind,
            session_id: None,
        }
    }
}

/// The tenant a call acts for and, unless the call is public, the principal making it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TenantContext {
    pub tenant_id: TenantId,
    pub principal: Option<Principal>,
}

impl TenantContext {
    /// A principal of the system tenant: may act on other tenants explicitly (DESIGN §4.3).
    pub fn is_platform_operator(&self) -> bool {
        self.tenant_id.is_system() && self.principal.is_some()
    }

    /// Whether this context may touch data of `tenant`: its own, or any as a platform operator.
    pub fn may_access(&self, tenant: &TenantId) -> bool {
        &self.tenant_id == tenant || self.is_platform_operator()
    }
}

/// The request id of a call (`x-request-id`), generated at the edge when the client sent none.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestId(pub String);

impl RequestId {
    pub fn generate() -> RequestId {
        RequestId(uuid::Uuid::now_v7().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids() {
        for ok in [
            "system",
            "acme",
            "acme-corp-42",
            "0190f5a2-7c1e-7a4b-9d7e-0a1b2c3d4e5f",
        ] {
            assert!(TenantId::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "ab",
            "Acme",
            "acme-",
            "-acme",
            "acme_corp",
            "a/b",
            &"x".repeat(64),
        ] {
            assert!(TenantId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn operators_cross_tenants_only_explicitly() {
        let acme = TenantId::parse("acme").unwrap();
        let other = TenantId::parse("other").unwrap();
        let principal = Some(Principal::new("k1", PrincipalKind::ApiKey));
        let tenant_admin = TenantContext {
            tenant_id: acme.clone(),
            principal: principal.clone(),
        };
        let operator = TenantContext {
            tenant_id: TenantId::system(),
            principal,
        };
        assert!(tenant_admin.may_access(&acme));
        assert!(!tenant_admin.may_access(&other));
        assert!(operator.may_access(&other));
    }
}

/// Where an external call came from, as the gateway saw it: the client's address and its
/// user agent. Personal data: recorded in audit events outside the hash-chained bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientOrigin {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl ClientOrigin {
    pub fn is_empty(&self) -> bool {
        self.ip.is_none() && self.user_agent.is_none()
    }
}

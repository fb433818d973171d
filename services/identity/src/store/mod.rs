//! All SQL of the identity service, one file per resource. Database errors become API errors
//! here, at the boundary; values are always bound, never spliced.

mod api_keys;
mod roles;
mod sign_in;
mod tenant_data;
mod tenants;
mod tokens;
mod usage;
mod users;

use palisade_db::Db;
use palisade_grpc::ApiError;

pub use api_keys::{ApiKeyFilter, ApiKeyRecord};
pub use roles::{RoleFilter, RoleLock};
pub use sign_in::PasswordAttempt;
pub use tenant_data::TenantSnapshot;
pub use tenants::TenantFilter;
pub use tokens::SessionRecord;
pub use usage::CountedCalls;
pub use users::UserFilter;

#[derive(Clone)]
pub struct IdentityStore {
    db: Db,
}

impl IdentityStore {
    pub fn new(db: Db) -> IdentityStore {
        IdentityStore { db }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }
}

pub(crate) enum Bind {
    Text(String),
    Int(i64),
}

/// A failed query as an API error (`UNAVAILABLE` when the database was only busy).
pub(crate) fn internal(error: impl std::fmt::Display + 'static) -> ApiError {
    ApiError::from_store("identity store", error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_database_is_unavailable_and_anything_else_internal() {
        assert!(matches!(
            internal(sqlx::Error::PoolTimedOut),
            ApiError::Unavailable { .. }
        ));
        assert!(matches!(
            internal(sqlx::Error::RowNotFound),
            ApiError::Internal(message) if message.starts_with("identity store: ")
        ));
        assert!(matches!(internal("a malformed row"), ApiError::Internal(_)));
    }
}

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

/// What the store's own tests start from.
#[cfg(test)]
pub(crate) mod testing {
    use palisade_db::{Db, DbConfig};
    use palisade_grpc::BoxError;
    use palisade_proto::palisade::identity::v1::{Plan, TenantState};
    use palisade_tenancy::TenantId;

    use super::IdentityStore;
    use crate::tenants::TenantRecord;

    /// A store on a fresh SQLite database (kept while the directory lives) with tenant `acme`.
    pub async fn store_with_tenant()
    -> Result<(tempfile::TempDir, IdentityStore, TenantRecord), BoxError> {
        let dir = tempfile::tempdir()?;
        let db = Db::connect(&DbConfig::sqlite_in(dir.path(), "identity")).await?;
        db.migrate(&crate::migrations()).await?;
        let store = IdentityStore::new(db.clone());
        let tenant = TenantRecord {
            id: TenantId::parse("acme")?,
            display_name: "Acme".into(),
            plan: Plan::Free,
            state: TenantState::Active,
            region: "eu".into(),
            domain: None,
            feature_overrides: Default::default(),
            limit_overrides: Default::default(),
            create_time: 0,
            update_time: 0,
        };
        let mut tx = db.begin().await?;
        store.insert_tenant(&mut tx, &tenant).await?;
        tx.commit().await?;
        Ok((dir, store, tenant))
    }
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

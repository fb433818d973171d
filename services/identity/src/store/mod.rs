//! All SQL of the identity service, one file per resource. Database errors become API errors
//! here, at the boundary; values are always bound, never spliced.

mod api_keys;
mod roles;
mod tenant_data;
mod tenants;
mod tokens;
mod usage;
mod users;

use palisade_db::Db;
use palisade_grpc::ApiError;

pub use api_keys::{ApiKeyFilter, ApiKeyRecord};
pub use roles::{RoleFilter, RoleLock};
pub use tenant_data::TenantSnapshot;
pub use tenants::TenantFilter;
pub use tokens::SessionRecord;
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

pub(crate) fn internal(error: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("identity store: {error}"))
}

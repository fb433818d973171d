//! The identity gRPC services: thin handlers that decode, call the domain and store, encode.

mod api_key;
mod auth;
mod auth_tokens;
mod authorization;
mod denials;
mod edge;
mod role;
mod tenant;
mod tenant_data;
mod user;
mod user_delete;
mod user_locks;
mod user_password;
mod user_roles;
mod user_update;

pub use api_key::ApiKeyApi;
pub use auth::AuthApi;
pub use authorization::AuthorizationApi;
pub use denials::AuditDenials;
pub use edge::EdgeApi;
pub use role::RoleApi;
pub use tenant::TenantApi;
pub use tenant_data::TenantDataApi;
pub use user::UserApi;

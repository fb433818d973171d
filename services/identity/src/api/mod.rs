//! The identity gRPC services: thin handlers that decode, call the domain and store, encode.

mod api_key;
mod auth;
mod authorization;
mod edge;
mod tenant;
mod user;

pub use api_key::ApiKeyApi;
pub use auth::AuthApi;
pub use authorization::AuthorizationApi;
pub use edge::EdgeApi;
pub use tenant::TenantApi;
pub use user::UserApi;

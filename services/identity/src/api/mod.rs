//! The identity gRPC services: thin handlers that decode, call the domain and store, encode.

mod api_key;
mod authorization;
mod tenant;

pub use api_key::ApiKeyApi;
pub use authorization::AuthorizationApi;
pub use tenant::TenantApi;

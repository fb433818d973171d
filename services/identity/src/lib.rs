//! The identity service: tenants, API keys and permission checks.

//! Tenant context: metadata codec, trust rules and the server and client propagation layers.

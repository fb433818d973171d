//! The public edge: native gRPC proxy with authentication and tenant context, mesh-wide reflection.

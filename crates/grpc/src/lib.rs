//! gRPC server and client builders, the policy layer and the one error-to-Status mapping.

//! The observability service: the status page built from gRPC health probes.

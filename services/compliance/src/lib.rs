//! The compliance service: the hash-chained audit log.

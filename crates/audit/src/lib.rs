//! Audit events written through the outbox and the relay sink that ships them to compliance.

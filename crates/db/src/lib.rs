//! SQLite and PostgreSQL pools, per-backend migrations and the transactional outbox with its relay.

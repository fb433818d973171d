//! An in-test mesh sandbox: real ports, real mTLS, real SQLite or PostgreSQL.

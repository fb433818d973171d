//! Workspace-level integration tests that drive a real mesh; the tests live in `tests/tests/`.

//! Logging and tracing setup for every component.

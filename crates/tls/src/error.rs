//! The crate's error type.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while making, loading or using mesh TLS material.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid spiffe id {uri:?}: {reason}")]
    InvalidSpiffeId { uri: String, reason: &'static str },

    #[error("invalid certificate name {0:?}: use letters, digits, '-', '_' or '.'")]
    InvalidName(String),

    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid pem in {path}: {reason}")]
    Pem { path: PathBuf, reason: String },

    #[error("invalid certificate in {path}: {reason}")]
    Certificate { path: PathBuf, reason: String },

    #[error("incomplete ca in {0}: ca.crt and ca.key must both exist or both be absent")]
    IncompleteCa(PathBuf),

    #[error(
        "incomplete key pair for {name:?} in {dir}: the .crt and .key files must both exist or both be absent"
    )]
    IncompleteKeyPair { dir: PathBuf, name: String },

    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),

    #[error("tls configuration failed: {0}")]
    Rustls(#[from] rustls::Error),

    #[error("client certificate verifier failed: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),

    #[error("invalid server name {0:?}")]
    InvalidServerName(String),

    #[error("invalid endpoint uri {uri:?}: {reason}")]
    InvalidUri { uri: String, reason: String },
}

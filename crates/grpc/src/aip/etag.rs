//! Etags (AIP-154): an opaque digest of everything stored about a resource, which an update
//! may send back to apply only to the resource as it was read.

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::ApiError;

/// Builds an etag from a resource's stored fields, each length-prefixed so one record has one
/// encoding, the same in every build. Any change to a field gives another etag, even one
/// within the same microsecond or under a clock set back.
pub struct Etag(Sha256);

impl Etag {
    pub fn new() -> Etag {
        Etag(Sha256::new())
    }

    /// Adds one field, as bytes.
    pub fn field(mut self, bytes: &[u8]) -> Etag {
        self.0.update((bytes.len() as u64).to_be_bytes());
        self.0.update(bytes);
        self
    }

    /// Adds one integer field.
    pub fn number(self, value: i64) -> Etag {
        self.field(&value.to_be_bytes())
    }

    /// 22 base64url characters (128 bits of the SHA-256).
    pub fn finish(self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&self.0.finalize()[..16])
    }
}

impl Default for Etag {
    fn default() -> Etag {
        Etag::new()
    }
}

/// Refuses an update whose `sent` etag (empty: none, the update is unconditional) is not the
/// resource's `current` one: `resource` changed since it was read (ABORTED, as AIP-154 says).
pub fn require_etag(sent: &str, current: &str, resource: &str) -> Result<(), ApiError> {
    if sent.is_empty() || sent == current {
        return Ok(());
    }
    Err(ApiError::Aborted {
        reason: "ETAG_MISMATCH",
        message: format!("{resource} changed since the etag was read; read it again and retry"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_told_apart_by_their_lengths() {
        let etag = |fields: &[&str]| {
            (fields.iter())
                .fold(Etag::new(), |etag, field| etag.field(field.as_bytes()))
                .finish()
        };
        assert_eq!(etag(&["ab", "c"]), etag(&["ab", "c"]));
        assert_ne!(etag(&["ab", "c"]), etag(&["a", "bc"]));
        assert_eq!(etag(&["ab", "c"]).len(), 22);
    }

    #[test]
    fn an_etag_is_a_condition_only_when_sent() {
        assert!(require_etag("", "abc", "tenants/acme").is_ok());
        assert!(require_etag("abc", "abc", "tenants/acme").is_ok());
        assert!(matches!(
            require_etag("old", "abc", "tenants/acme"),
            Err(ApiError::Aborted {
                reason: "ETAG_MISMATCH",
                ..
            })
        ));
    }
}

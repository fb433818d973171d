//! Page sizes and opaque page tokens (AIP-158).
//!
//! A token is `base64url("p1." + filter fingerprint + "." + cursor)`: opaque to clients, tied to
//! the filter it was issued for (a token reused with another filter is refused), and carrying a
//! cursor the store understands (e.g. the last row's sort key).

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

use crate::ApiError;

/// Validates `page_size`: negative is an error, zero means `default`, above `max` is clamped.
pub fn page_size(requested: i32, default: usize, max: usize) -> Result<usize, ApiError> {
    match usize::try_from(requested) {
        Err(_) => Err(ApiError::invalid("page_size", "must not be negative")),
        Ok(0) => Ok(default),
        Ok(size) => Ok(size.min(max)),
    }
}

pub fn encode_page_token(filter: &str, cursor: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("p1.{}.{cursor}", fingerprint(filter)))
}

/// The cursor inside `token`, or `None` for an empty token (the first page).
pub fn decode_page_token(token: &str, filter: &str) -> Result<Option<String>, ApiError> {
    if token.is_empty() {
        return Ok(None);
    }
    let malformed = || ApiError::invalid("page_token", "malformed page token");
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| malformed())?;
    let raw = String::from_utf8(raw).map_err(|_| malformed())?;
    let rest = raw.strip_prefix("p1.").ok_or_else(malformed)?;
    let (print, cursor) = rest.split_once('.').ok_or_else(malformed)?;
    if print != fingerprint(filter) {
        return Err(ApiError::invalid(
            "page_token",
            "page token was issued for a different filter",
        ));
    }
    if cursor.is_empty() {
        return Err(malformed());
    }
    Ok(Some(cursor.to_owned()))
}

fn fingerprint(filter: &str) -> String {
    hex_prefix(&Sha256::digest(filter.as_bytes()))
}

fn hex_prefix(digest: &[u8]) -> String {
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(page_size(0, 50, 1000).unwrap(), 50);
        assert_eq!(page_size(7, 50, 1000).unwrap(), 7);
        assert_eq!(page_size(5000, 50, 1000).unwrap(), 1000);
        assert!(page_size(-1, 50, 1000).is_err());
    }

    #[test]
    fn tokens_round_trip_and_bind_to_the_filter() {
        let token = encode_page_token("plan = \"PLAN_FREE\"", "cursor-1");
        assert_eq!(
            decode_page_token(&token, "plan = \"PLAN_FREE\"")
                .unwrap()
                .as_deref(),
            Some("cursor-1")
        );
        assert!(decode_page_token(&token, "").is_err());
        assert_eq!(decode_page_token("", "").unwrap(), None);
        for bad in ["!!!", "bm90LWEtdG9rZW4", &URL_SAFE_NO_PAD.encode("p1.zz.")] {
            assert!(decode_page_token(bad, "").is_err(), "{bad}");
        }
    }
}

//! API key format and secrets: `pal_<key id>_<secret>`, where only a SHA-256 of the secret
//! is stored. The secret is 256 random bits, so a fast hash is enough (no password stretching);
//! comparison is constant-time.

use rand::RngCore;
use sha2::{Digest, Sha256};

const PREFIX: &str = "pal_";

/// A freshly minted key: the full string (shown once) and what is stored.
pub struct MintedKey {
    pub id: String,
    pub secret_hash: Vec<u8>,
    pub presented: String,
}

pub fn mint() -> MintedKey {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let secret = hex::encode(secret);
    MintedKey {
        secret_hash: hash_secret(&secret),
        presented: format!("{PREFIX}{id}_{secret}"),
        id,
    }
}

/// Splits a presented key into (key id, secret), or `None` if it is not shaped like one.
pub fn parse(presented: &str) -> Option<(&str, &str)> {
    let (id, secret) = presented.strip_prefix(PREFIX)?.split_once('_')?;
    let hex_of = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex_of(id, 32) && hex_of(secret, 64)).then_some((id, secret))
}

pub fn hash_secret(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Compares without an early exit, so timing does not reveal how much of a hash matched.
pub fn hashes_match(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_keys_parse_and_verify() {
        let key = mint();
        let (id, secret) = parse(&key.presented).unwrap();
        assert_eq!(id, key.id);
        assert!(hashes_match(&hash_secret(secret), &key.secret_hash));
        assert!(!hashes_match(&hash_secret("other"), &key.secret_hash));
    }

    #[test]
    fn malformed_keys_are_refused() {
        for bad in [
            "",
            "pal_",
            "pal_abc_def",
            "xyz_0123",
            &format!("pal_{}_{}", "g".repeat(32), "0".repeat(64)),
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }
}

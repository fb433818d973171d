//! The token-signing keys at rest. Whoever holds a signing key can mint access tokens for any
//! tenant, so with a key-encryption key (KEK) configured each private key is stored sealed:
//! AES-256-GCM under the KEK, with a random nonce and the key's `kid` as associated data (a
//! sealed key copied into another row does not open). A database dump or backup then holds no
//! usable key. The KEK is 32 random bytes, base64, in a file the deployment provides (a mounted
//! secret); `palisade dev` makes one beside its certificates.
//!
//! Without a KEK, keys are stored as plain PKCS#8 and identity warns at start. Keys stored
//! plain before a KEK was configured are sealed at the next start. A sealed key without the
//! KEK, or with another KEK, stops identity from starting with an error that says so.

use std::path::{Path, PathBuf};

use base64::{Engine, engine::general_purpose::STANDARD};
use palisade_grpc::ApiError;
use ring::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    rand::{SecureRandom, SystemRandom},
};

/// What a sealed key begins with, so plain keys from before sealing are recognised.
const SEALED_PREFIX: &[u8] = b"palisade-sealed-v1:";
const KEK_LEN: usize = 32;

/// Seals and opens signing keys, or stores them plain when no KEK is configured.
pub struct KeySealer {
    kek: Option<LessSafeKey>,
}

/// Why a KEK file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KekError {
    #[error("reading the signing-key KEK {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the signing-key KEK {path} must hold 32 bytes in base64 ({reason})")]
    Malformed { path: PathBuf, reason: String },
}

impl KeySealer {
    /// Keys are stored plain.
    pub fn unsealed() -> KeySealer {
        KeySealer { kek: None }
    }

    /// Seals with the KEK in `path`: 32 bytes, base64 (surrounding whitespace ignored).
    pub fn from_file(path: &Path) -> Result<KeySealer, KekError> {
        let text = std::fs::read_to_string(path).map_err(|source| KekError::Read {
            path: path.to_owned(),
            source,
        })?;
        let malformed = |reason: String| KekError::Malformed {
            path: path.to_owned(),
            reason,
        };
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|error| malformed(error.to_string()))?;
        if bytes.len() != KEK_LEN {
            return Err(malformed(format!("it holds {} bytes", bytes.len())));
        }
        let key = UnboundKey::new(&AES_256_GCM, &bytes)
            .map_err(|_| malformed("not an AES-256 key".to_owned()))?;
        Ok(KeySealer {
            kek: Some(LessSafeKey::new(key)),
        })
    }

    /// Writes a new random KEK to `path` (readable by its owner only) unless a file is there.
    pub fn create_kek_file(path: &Path) -> std::io::Result<()> {
        if path.exists() {
            return Ok(());
        }
        let mut bytes = [0u8; KEK_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| std::io::Error::other("no randomness for the signing-key KEK"))?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path)?;
        std::io::Write::write_all(
            &mut file,
            format!("{}\n", STANDARD.encode(bytes)).as_bytes(),
        )
    }

    pub fn seals(&self) -> bool {
        self.kek.is_some()
    }

    /// What to store for the private key `pkcs8` of `kid`.
    pub fn seal(&self, kid: &str, pkcs8: &[u8]) -> Result<Vec<u8>, ApiError> {
        let Some(kek) = &self.kek else {
            return Ok(pkcs8.to_vec());
        };
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| ApiError::internal("no randomness to seal a signing key"))?;
        let mut sealed = pkcs8.to_vec();
        kek.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(kid.as_bytes()),
            &mut sealed,
        )
        .map_err(|_| ApiError::internal("sealing a signing key failed"))?;
        Ok([SEALED_PREFIX, &nonce, &sealed].concat())
    }

    /// The private key of `kid` from what was stored: opened if sealed, as it is if plain.
    pub fn open(&self, kid: &str, stored: &[u8]) -> Result<Vec<u8>, ApiError> {
        let Some(body) = stored.strip_prefix(SEALED_PREFIX) else {
            return Ok(stored.to_vec());
        };
        let Some(kek) = &self.kek else {
            return Err(ApiError::internal(format!(
                "signing key {kid} is stored sealed and no KEK is configured \
                 (--signing-key-kek-file)"
            )));
        };
        let unreadable = || {
            ApiError::internal(format!(
                "signing key {kid} does not open with the configured KEK \
                 (another KEK sealed it, or the stored key was altered)"
            ))
        };
        if body.len() < NONCE_LEN {
            return Err(unreadable());
        }
        let (nonce, sealed) = body.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| unreadable())?;
        let mut buffer = sealed.to_vec();
        let opened = kek
            .open_in_place(nonce, Aad::from(kid.as_bytes()), &mut buffer)
            .map_err(|_| unreadable())?;
        Ok(opened.to_vec())
    }
}

/// Whether a stored private key is sealed.
pub fn is_sealed(stored: &[u8]) -> bool {
    stored.starts_with(SEALED_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer_in(dir: &Path, name: &str) -> KeySealer {
        let path = dir.join(name);
        KeySealer::create_kek_file(&path).unwrap();
        KeySealer::from_file(&path).unwrap()
    }

    #[test]
    fn sealed_keys_open_only_with_their_kek_and_kid() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = sealer_in(dir.path(), "kek");
        let pkcs8 = b"a private key".to_vec();
        let sealed = sealer.seal("kid-1", &pkcs8).unwrap();
        assert!(is_sealed(&sealed));
        assert!(!sealed.windows(pkcs8.len()).any(|w| w == pkcs8.as_slice()));
        assert_eq!(sealer.open("kid-1", &sealed).unwrap(), pkcs8);
        // Two seals of one key differ (fresh nonces).
        assert_ne!(sealer.seal("kid-1", &pkcs8).unwrap(), sealed);

        assert!(
            sealer.open("kid-2", &sealed).is_err(),
            "moved to another kid"
        );
        let other = sealer_in(dir.path(), "other");
        assert!(other.open("kid-1", &sealed).is_err(), "another KEK");
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(sealer.open("kid-1", &altered).is_err(), "altered");
        assert!(sealer.open("kid-1", SEALED_PREFIX).is_err(), "truncated");
        let without = KeySealer::unsealed();
        let refused = without.open("kid-1", &sealed).unwrap_err();
        assert!(refused.to_string().contains("no KEK"), "{refused}");
    }

    #[test]
    fn plain_keys_pass_through() {
        let dir = tempfile::tempdir().unwrap();
        let plain = KeySealer::unsealed();
        assert_eq!(plain.seal("kid", b"pkcs8").unwrap(), b"pkcs8");
        assert!(!is_sealed(b"pkcs8"));
        // A key stored before a KEK was configured still opens (and is then resealed).
        assert_eq!(
            sealer_in(dir.path(), "kek").open("kid", b"pkcs8").unwrap(),
            b"pkcs8"
        );
    }

    #[test]
    fn kek_files_are_checked_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        KeySealer::create_kek_file(&path).unwrap();
        let first = std::fs::read(&path).unwrap();
        KeySealer::create_kek_file(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), first, "never overwritten");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, STANDARD.encode([0u8; 16])).unwrap();
        let short = KeySealer::from_file(&path).err().unwrap().to_string();
        assert!(short.contains("32 bytes"), "{short}");
        std::fs::write(&path, "not base64!").unwrap();
        assert!(KeySealer::from_file(&path).is_err());
        assert!(KeySealer::from_file(&dir.path().join("missing")).is_err());
    }
}

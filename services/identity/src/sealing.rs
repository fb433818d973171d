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
//!
//! The KEK rotates with a previous KEK configured beside the new one: keys open with either,
//! and those sealed under the previous one are sealed again under the new one at start. With
//! several identity replicas, first give every replica the new KEK as its previous one (keys
//! then open anywhere whichever seals them), then swap the two, then drop the old one.

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
    /// A KEK being rotated away from: it opens keys, it never seals them.
    previous: Option<LessSafeKey>,
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
    #[error("a previous signing-key KEK needs a current one (--signing-key-kek-file)")]
    PreviousWithoutCurrent,
}

impl KeySealer {
    /// Keys are stored plain.
    pub fn unsealed() -> KeySealer {
        KeySealer {
            kek: None,
            previous: None,
        }
    }

    /// Seals with the KEK in `path`: 32 bytes, base64 (surrounding whitespace ignored).
    pub fn from_file(path: &Path) -> Result<KeySealer, KekError> {
        Ok(KeySealer {
            kek: Some(read_kek(path)?),
            previous: None,
        })
    }

    /// The same sealer, also opening keys sealed under the KEK in `path` (see the module doc).
    pub fn with_previous_file(self, path: &Path) -> Result<KeySealer, KekError> {
        Ok(KeySealer {
            previous: Some(read_kek(path)?),
            ..self
        })
    }

    /// The sealer a deployment configures: the KEK in `current` (none: keys stored plain) and,
    /// while it rotates, the one in `previous`.
    pub fn from_files(
        current: Option<&Path>,
        previous: Option<&Path>,
    ) -> Result<KeySealer, KekError> {
        match (current, previous) {
            (None, None) => Ok(KeySealer::unsealed()),
            (None, Some(_)) => Err(KekError::PreviousWithoutCurrent),
            (Some(current), None) => KeySealer::from_file(current),
            (Some(current), Some(previous)) => {
                KeySealer::from_file(current)?.with_previous_file(previous)
            }
        }
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

    /// The private key of `kid` from what was stored: opened if sealed (with the KEK, or the
    /// previous one), as it is if plain.
    pub fn open(&self, kid: &str, stored: &[u8]) -> Result<Vec<u8>, ApiError> {
        self.open_with_which(kid, stored).map(|(pkcs8, _)| pkcs8)
    }

    /// What to store instead of `stored` so that the key of `kid` is sealed under the current
    /// KEK: `None` when it already is, or when no KEK is configured.
    pub fn reseal(&self, kid: &str, stored: &[u8]) -> Result<Option<Vec<u8>>, ApiError> {
        if !self.seals() {
            return Ok(None);
        }
        match self.open_with_which(kid, stored)? {
            (_, Opened::WithCurrent) => Ok(None),
            (pkcs8, Opened::Plain | Opened::WithPrevious) => self.seal(kid, &pkcs8).map(Some),
        }
    }

    fn open_with_which(&self, kid: &str, stored: &[u8]) -> Result<(Vec<u8>, Opened), ApiError> {
        let Some(body) = stored.strip_prefix(SEALED_PREFIX) else {
            return Ok((stored.to_vec(), Opened::Plain));
        };
        let Some(kek) = &self.kek else {
            return Err(ApiError::internal(format!(
                "signing key {kid} is stored sealed and no KEK is configured \
                 (--signing-key-kek-file)"
            )));
        };
        if let Some(pkcs8) = open_sealed(kek, kid, body) {
            return Ok((pkcs8, Opened::WithCurrent));
        }
        if let Some(pkcs8) = self
            .previous
            .as_ref()
            .and_then(|kek| open_sealed(kek, kid, body))
        {
            return Ok((pkcs8, Opened::WithPrevious));
        }
        Err(ApiError::internal(format!(
            "signing key {kid} does not open with the configured KEK{} \
             (another KEK sealed it, or the stored key was altered)",
            if self.previous.is_some() { "s" } else { "" }
        )))
    }
}

/// Which KEK a stored key opened with.
enum Opened {
    Plain,
    WithCurrent,
    WithPrevious,
}

/// `body` (nonce, then ciphertext and tag) opened under `kek` with `kid` as associated data.
fn open_sealed(kek: &LessSafeKey, kid: &str, body: &[u8]) -> Option<Vec<u8>> {
    if body.len() < NONCE_LEN {
        return None;
    }
    let (nonce, sealed) = body.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buffer = sealed.to_vec();
    let opened = kek
        .open_in_place(nonce, Aad::from(kid.as_bytes()), &mut buffer)
        .ok()?;
    Some(opened.to_vec())
}

/// The KEK in `path`: 32 bytes, base64 (surrounding whitespace ignored).
fn read_kek(path: &Path) -> Result<LessSafeKey, KekError> {
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
    Ok(LessSafeKey::new(key))
}

/// Whether a stored private key is sealed.
#[cfg(test)]
fn is_sealed(stored: &[u8]) -> bool {
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
    fn a_previous_kek_opens_keys_and_reseal_moves_them_to_the_current_one() {
        let dir = tempfile::tempdir().unwrap();
        let old = sealer_in(dir.path(), "old");
        let sealed_old = old.seal("kid", b"pkcs8").unwrap();
        KeySealer::create_kek_file(&dir.path().join("new")).unwrap();
        let rotating = KeySealer::from_file(&dir.path().join("new"))
            .unwrap()
            .with_previous_file(&dir.path().join("old"))
            .unwrap();
        assert_eq!(rotating.open("kid", &sealed_old).unwrap(), b"pkcs8");
        let resealed = rotating
            .reseal("kid", &sealed_old)
            .unwrap()
            .expect("resealed");
        assert!(
            old.open("kid", &resealed).is_err(),
            "the old KEK no longer opens it"
        );
        let new = KeySealer::from_file(&dir.path().join("new")).unwrap();
        assert_eq!(new.open("kid", &resealed).unwrap(), b"pkcs8");
        assert!(
            rotating.reseal("kid", &resealed).unwrap().is_none(),
            "already current"
        );
        // Plain keys are sealed too; nothing is sealed without a KEK.
        assert!(is_sealed(
            &rotating.reseal("kid", b"pkcs8").unwrap().unwrap()
        ));
        assert!(
            KeySealer::unsealed()
                .reseal("kid", b"pkcs8")
                .unwrap()
                .is_none()
        );
        // A third KEK opens neither.
        let error = sealer_in(dir.path(), "third")
            .with_previous_file(&dir.path().join("new"))
            .unwrap()
            .open("kid", &sealed_old)
            .unwrap_err();
        assert!(error.to_string().contains("does not open"), "{error}");
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

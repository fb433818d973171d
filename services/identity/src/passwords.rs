//! Password hashing with Argon2id at OWASP's parameters (m = 19 MiB, t = 2, p = 1), on
//! threads of its own at the lowest CPU priority (see `hashing_threads.rs`), by default one for
//! every two cores: a flood of logins takes CPU that other RPCs leave idle, never more than half
//! of it, and queues for a free thread instead of taking the runtime's. Passwords are hashed,
//! checked and judged by the policy in Unicode NFKC form ([`normalized`]).

use std::borrow::Cow;

use argon2::{
    Algorithm, Argon2, Params, PasswordHash, PasswordVerifier, Version,
    password_hash::{PasswordHasher as _, SaltString},
};
use palisade_grpc::ApiError;
use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfkc_quick};

use crate::hashing_threads::HashingThreads;

mod policy;

pub use policy::check_policy;

#[derive(Clone)]
pub struct Passwords {
    threads: HashingThreads,
}

impl Passwords {
    /// `threads` hashing threads, or [`default_threads`] for 0. They run at the lowest
    /// priority, so they yield to every other RPC; measured by
    /// `cargo bench -p palisade --bench identity` (part 3).
    pub fn new(threads: usize) -> Passwords {
        let threads = if threads == 0 {
            default_threads()
        } else {
            threads
        };
        Passwords {
            threads: HashingThreads::new(threads),
        }
    }

    /// The PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`) of `password` with a fresh salt.
    pub async fn hash(&self, password: &str) -> Result<String, ApiError> {
        let password = normalized(password).into_owned();
        self.threads
            .run(move || {
                let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
                    .map_err(ApiError::internal)?;
                argon2()
                    .hash_password(password.as_bytes(), &salt)
                    .map(|hash| hash.to_string())
                    .map_err(ApiError::internal)
            })
            .await
    }

    /// Whether `password` matches the stored PHC string.
    pub async fn verify(&self, stored: &str, password: &str) -> Result<bool, ApiError> {
        let stored = stored.to_owned();
        let candidate = normalized(password).into_owned();
        // Hashes made before passwords were normalized hold the password as it was typed; only
        // a password that normalization changes can differ, and only such a password is tried
        // a second time.
        let as_typed = (candidate != password).then(|| password.to_owned());
        self.threads
            .run(move || {
                let parsed = PasswordHash::new(&stored).map_err(ApiError::internal)?;
                let matches = |password: &str| {
                    argon2()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                };
                Ok(matches(&candidate) || as_typed.is_some_and(|password| matches(&password)))
            })
            .await
    }
}

/// Half the available cores (which respects a container's CPU limit), at least one.
///
/// Even at the lowest priority a hash is not free for other RPCs: a call woken on a core that
/// is hashing waits for the hash to be preempted, and Argon2's memory traffic slows the core
/// beside it. With every core hashing, every call pays that; with half of them, most calls run
/// beside a hash rather than after one. On 2 cores, one hashing thread instead of two took
/// other RPCs' p99 during a login flood from about 2.9x to 1.9x of their p99 alone, for about
/// 60% of the login throughput (`cargo bench -p palisade --bench identity`, measured when the
/// threads ran under `SCHED_IDLE`; at nice 19 the two-thread runs were too noisy to compare).
pub fn default_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    cores.div_ceil(2)
}

/// The form a password is hashed, checked and judged in: Unicode NFKC, as NIST SP 800-63B
/// (5.1.1.2) advises. The same password typed where `é` is one code point and where it is `e`
/// and a combining accent (macOS file names, some keyboards) is then the same password.
pub fn normalized(password: &str) -> Cow<'_, str> {
    if is_nfkc_quick(password.chars()) == IsNormalized::Yes {
        Cow::Borrowed(password)
    } else {
        Cow::Owned(password.nfkc().collect())
    }
}

fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("OWASP parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_use_the_owasp_parameters() {
        let passwords = Passwords::new(1);
        let hash = passwords.hash("correct horse battery").await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(
            passwords
                .verify(&hash, "correct horse battery")
                .await
                .unwrap()
        );
        assert!(
            !passwords
                .verify(&hash, "wrong horse battery")
                .await
                .unwrap()
        );
    }

    /// `é` as one code point, and as `e` with a combining acute accent.
    const COMPOSED: &str = "caf\u{e9} au lait, s'il vous pla\u{ee}t";
    const DECOMPOSED: &str = "cafe\u{301} au lait, s'il vous plai\u{302}t";

    #[tokio::test]
    async fn a_password_matches_however_its_accents_were_typed() {
        let passwords = Passwords::new(1);
        let hash = passwords.hash(DECOMPOSED).await.unwrap();
        assert!(passwords.verify(&hash, COMPOSED).await.unwrap());
        assert!(passwords.verify(&hash, DECOMPOSED).await.unwrap());
        let hash = passwords.hash(COMPOSED).await.unwrap();
        assert!(passwords.verify(&hash, DECOMPOSED).await.unwrap());
        assert!(
            !passwords
                .verify(&hash, "cafe au lait, s'il vous plait")
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn a_hash_of_the_password_as_typed_still_verifies() {
        let salt = SaltString::encode_b64(b"a sixteen b salt").unwrap();
        let as_typed = argon2()
            .hash_password(DECOMPOSED.as_bytes(), &salt)
            .unwrap()
            .to_string();
        let passwords = Passwords::new(1);
        assert!(passwords.verify(&as_typed, DECOMPOSED).await.unwrap());
    }

    #[test]
    fn normalization_composes_and_folds_compatibility_forms() {
        assert_eq!(normalized(DECOMPOSED), COMPOSED);
        assert!(matches!(normalized(COMPOSED), Cow::Borrowed(_)));
        // NFKC, not NFC: full-width letters are the letters.
        assert_eq!(normalized("\u{ff30}assword"), "Password");
    }
}

//! Password hashing with Argon2id at one of OWASP's parameter sets ([`ARGON2_MEMORY_KIB`],
//! [`ARGON2_ITERATIONS`], p = 1), on threads of its own at the lowest CPU priority (see `hashing_threads.rs`), by default one for
//! every two cores: a flood of logins takes CPU that other RPCs leave idle, never more than half
//! of it, and queues for a free thread instead of taking the runtime's. Each thread hashes in
//! Argon2 memory of its own, allocated once ([`with_memory`]). Passwords are hashed, checked
//! and judged by the policy in Unicode NFKC form ([`normalized`]).

use std::{borrow::Cow, cell::RefCell};

use argon2::{
    Algorithm, Argon2, Block, Params, PasswordHash, Version,
    password_hash::{Output, ParamsString, Salt, SaltString},
};
use palisade_grpc::ApiError;
use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfkc_quick};

use crate::hashing_threads::HashingThreads;

/// Argon2id memory: 7 MiB with [`ARGON2_ITERATIONS`] = 5, the least memory of the parameter
/// sets OWASP's Password Storage Cheat Sheet lists as equally strong (19 MiB with 2 passes is
/// its first). Identity used 19 MiB, t = 2 until this change; those hashes still verify under
/// their own parameters. Less memory per pass is less of the cache the cores share evicted per
/// hash, and more logins per second on the same core: 92 against 68-73 logins/s on 2 cores
/// (`cargo bench -p palisade --bench identity`, part 2).
pub const ARGON2_MEMORY_KIB: u32 = 7 * 1024;
pub const ARGON2_ITERATIONS: u32 = 5;
/// The most Argon2 memory a hashing thread keeps between hashes ([`with_memory`]): enough for
/// the hashes identity made with 19 MiB, which its users keep until they change password.
const LARGEST_KEPT_MEMORY_KIB: usize = 19 * 1024;

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

    /// The PHC string (`$argon2id$v=19$m=7168,t=5,p=1$…`) of `password` with a fresh salt.
    pub async fn hash(&self, password: &str) -> Result<String, ApiError> {
        let password = normalized(password).into_owned();
        self.threads
            .run(move || {
                let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
                    .map_err(ApiError::internal)?;
                hash_into_phc(&argon2(), password.as_bytes(), salt.as_salt())
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
                let matches = |password: &str| matches_phc(&parsed, password.as_bytes());
                Ok(matches(&candidate)? || as_typed.map_or(Ok(false), |typed| matches(&typed))?)
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
    let params =
        Params::new(ARGON2_MEMORY_KIB, ARGON2_ITERATIONS, 1, None).expect("OWASP parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// The PHC string of `password` hashed by `argon2` with `salt`.
fn hash_into_phc(argon2: &Argon2<'_>, password: &[u8], salt: Salt<'_>) -> Result<String, ApiError> {
    let params = argon2.params();
    let mut salt_bytes = [0; Salt::MAX_LENGTH];
    let salt_bytes = salt
        .decode_b64(&mut salt_bytes)
        .map_err(ApiError::internal)?;
    let output = with_memory(params.block_count(), |memory| {
        Output::init_with(
            params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN),
            |out| {
                argon2
                    .hash_password_into_with_memory(password, salt_bytes, out, memory)
                    .map_err(Into::into)
            },
        )
    })
    .map_err(ApiError::internal)?;
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(ApiError::internal)?,
        salt: Some(salt),
        hash: Some(output),
    };
    Ok(hash.to_string())
}

/// Whether `password` hashes to the stored PHC hash, under the algorithm, version and
/// parameters the hash was made with. Errors only for a stored hash that is not Argon2.
fn matches_phc(stored: &PasswordHash<'_>, password: &[u8]) -> Result<bool, ApiError> {
    let (Some(salt), Some(expected)) = (&stored.salt, &stored.hash) else {
        return Ok(false);
    };
    let algorithm = Algorithm::try_from(stored.algorithm).map_err(ApiError::internal)?;
    let version = match stored.version {
        Some(version) => Version::try_from(version).map_err(ApiError::internal)?,
        None => Version::default(),
    };
    let params = Params::try_from(stored).map_err(ApiError::internal)?;
    let mut salt_bytes = [0; Salt::MAX_LENGTH];
    let salt_bytes = salt
        .decode_b64(&mut salt_bytes)
        .map_err(ApiError::internal)?;
    let argon2 = Argon2::new(algorithm, version, params);
    let computed = with_memory(argon2.params().block_count(), |memory| {
        Output::init_with(expected.len(), |out| {
            argon2
                .hash_password_into_with_memory(password, salt_bytes, out, memory)
                .map_err(Into::into)
        })
    });
    // `Output`'s equality is constant-time.
    Ok(computed.is_ok_and(|computed| &computed == expected))
}

thread_local! {
    /// The Argon2 memory of this (hashing) thread, kept from one hash to the next. Each hash
    /// writes every block before it reads it, so what a previous hash left does not matter.
    ///
    /// Allocated afresh for every hash (what `argon2`'s `hash_password` does), the whole of it
    /// was faulted in page by page and zeroed by the kernel, then unmapped, which interrupts
    /// every other core running one of the process's threads to flush its TLB: a login flood
    /// slowed the process's other RPCs through the kernel as well as through the cache. Other
    /// RPCs' p99 during the bench's hashing without logins went from 1.96-2.07x to 1.26-1.32x
    /// of their p99 alone with this change (one run each, 19 MiB hashes).
    static MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// Runs `hash` with `blocks` blocks (of 1 KiB) of Argon2 memory: this thread's, unless a stored
/// hash asks for more than [`LARGEST_KEPT_MEMORY_KIB`] (say, one imported from another system),
/// which gets memory of its own rather than growing what the thread keeps.
fn with_memory<T>(blocks: usize, hash: impl FnOnce(&mut [Block]) -> T) -> T {
    if blocks > LARGEST_KEPT_MEMORY_KIB {
        return hash(&mut vec![Block::default(); blocks]);
    }
    MEMORY.with_borrow_mut(|memory| {
        if memory.len() < blocks {
            memory.resize(blocks, Block::default());
        }
        hash(&mut memory[..blocks])
    })
}

#[cfg(test)]
mod tests {
    use argon2::password_hash::PasswordHasher as _;

    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_use_the_owasp_parameters() {
        let passwords = Passwords::new(1);
        let hash = passwords.hash("correct horse battery").await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=7168,t=5,p=1$"));
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

    /// The crate's own hasher, which allocates its memory afresh for every hash: what identity
    /// hashes in kept memory must be what it would have made.
    fn crate_hash(params: Params, password: &str, salt: &SaltString) -> String {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(password.as_bytes(), salt)
            .unwrap()
            .to_string()
    }

    #[test]
    fn hashes_in_kept_memory_are_the_argon2_crates() {
        let salt = SaltString::encode_b64(b"a sixteen b salt").unwrap();
        let ours = hash_into_phc(&argon2(), b"correct horse battery", salt.as_salt()).unwrap();
        let theirs = crate_hash(argon2().params().clone(), "correct horse battery", &salt);
        assert_eq!(ours, theirs);
        // Again, now in memory the first hash left behind.
        let again = hash_into_phc(&argon2(), b"correct horse battery", salt.as_salt()).unwrap();
        assert_eq!(again, theirs);
    }

    #[test]
    fn hashes_made_with_other_parameters_verify_under_their_own() {
        let salt = SaltString::encode_b64(b"a sixteen b salt").unwrap();
        // Identity's earlier m = 19 MiB, t = 2 (more memory than its own hashes use), and
        // 32 MiB, t = 1 (more than a thread keeps), each checked after a hash that left the
        // kept memory dirty.
        for params in [
            Params::new(19 * 1024, 2, 1, None).unwrap(),
            Params::new(32 * 1024, 1, 1, None).unwrap(),
        ] {
            hash_into_phc(&argon2(), b"something else entirely", salt.as_salt()).unwrap();
            let stored = crate_hash(params, "correct horse battery", &salt);
            let stored = PasswordHash::new(&stored).unwrap();
            assert!(matches_phc(&stored, b"correct horse battery").unwrap());
            assert!(!matches_phc(&stored, b"correct horse batterY").unwrap());
        }
    }

    #[test]
    fn a_thread_keeps_its_argon2_memory_between_hashes() {
        let salt = SaltString::encode_b64(b"a sixteen b salt").unwrap();
        let kept = || MEMORY.with_borrow(|memory| (memory.as_ptr(), memory.len()));
        hash_into_phc(&argon2(), b"correct horse battery", salt.as_salt()).unwrap();
        let first = kept();
        assert_eq!(first.1, argon2().params().block_count());
        hash_into_phc(&argon2(), b"correct horse battery", salt.as_salt()).unwrap();
        assert_eq!(
            kept(),
            first,
            "the second hash reused the first one's memory"
        );
        // More than a thread keeps: memory of its own, and the kept memory stays as it was.
        let big = crate_hash(Params::new(32 * 1024, 1, 1, None).unwrap(), "x", &salt);
        matches_phc(&PasswordHash::new(&big).unwrap(), b"x").unwrap();
        assert_eq!(kept(), first);
    }

    #[test]
    fn a_stored_hash_that_is_not_argon2_is_an_error() {
        let stored = PasswordHash::new("$scrypt$ln=16,r=8,p=1$aM15713r3Xsvxbi31lqr1Q$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E").unwrap();
        assert!(matches_phc(&stored, b"password").is_err());
    }

    #[test]
    fn normalization_composes_and_folds_compatibility_forms() {
        assert_eq!(normalized(DECOMPOSED), COMPOSED);
        assert!(matches!(normalized(COMPOSED), Cow::Borrowed(_)));
        // NFKC, not NFC: full-width letters are the letters.
        assert_eq!(normalized("\u{ff30}assword"), "Password");
    }
}

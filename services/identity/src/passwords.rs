//! Password hashing with Argon2id at OWASP's parameters ([`ARGON2_MEMORY_KIB`],
//! [`ARGON2_ITERATIONS`], p = 1), on threads of its own at the lowest CPU priority (see
//! `hashing_threads.rs`), by default one for every two cores: a flood of logins takes CPU that
//! other RPCs leave idle, never more than half of it, and queues for a free thread instead of
//! taking the runtime's. Each thread hashes in Argon2 memory of its own, allocated once
//! ([`with_memory`]). Passwords are hashed, checked and judged by the policy in Unicode NFKC
//! form ([`normalized`]). A stored hash made otherwise (imported, or before a change of
//! parameters) is made again when its user next signs in ([`needs_rehash`]).

use std::{borrow::Cow, cell::RefCell};

use sha2::{Digest, Sha256};

use argon2::{
    Algorithm, Argon2, Block, Params, PasswordHash, Version,
    password_hash::{Output, ParamsString, Salt, SaltString},
};
use palisade_grpc::ApiError;
use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfkc_quick};

use crate::hashing_threads::HashingThreads;

/// Argon2id memory, with [`ARGON2_ITERATIONS`]: OWASP's 19 MiB, t = 2, p = 1.
///
/// Not one of the sets with less memory that OWASP rates as strong (7 MiB with t = 5 gave about
/// 30% more logins per second on 2 cores, and no better p99 for other RPCs during a login
/// flood): a hash is made again with new parameters only when its user signs in
/// ([`needs_rehash`]), an unknown email is checked against a decoy made with the current
/// parameters, and the hashes of users who have not signed in since would then take
/// measurably longer to check than the decoy, telling which emails exist. A change needs a
/// decoy for each parameter set in use first.
pub const ARGON2_MEMORY_KIB: u32 = 19 * 1024;
/// Argon2id passes over its memory.
pub const ARGON2_ITERATIONS: u32 = 2;

/// The most a stored hash may ask of a hashing thread (memory in KiB, passes, lanes): an
/// imported hash asking for 4 GiB would abort the process when the memory cannot be had, and
/// one asking for a million passes would hold a thread for hours. Such a hash matches nothing.
const STORED_HASH_LIMITS: (u32, u32, u32) = (64 * 1024, 16, 8);

mod policy;

pub use policy::check_policy;

/// The longest password, in bytes as typed, that identity looks at. Normalization can make a
/// password 11 times longer (`U+FDFA` is 3 bytes, its NFKC form 33), so a bound is needed
/// before it runs; this one is far above any password the policy accepts (128 characters once
/// normalized, at most 512 bytes) and leaves room for a longer one an imported hash holds.
pub const MAX_TYPED_BYTES: usize = 4096;

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
        self.hash_with_salt(password, rand::random::<[u8; SALT_LEN]>())
            .await
    }

    /// `password`, which has just matched the `stored` PHC string, hashed with identity's
    /// parameters ([`needs_rehash`]). Its salt is derived from `stored`, so that logins racing
    /// to upgrade the same hash make the same string: each then finds the hash another stored
    /// is the one it made, not a password changed under it.
    pub async fn rehash(&self, stored: &str, password: &str) -> Result<String, ApiError> {
        let digest = Sha256::new()
            .chain_update(REHASH_SALT_CONTEXT)
            .chain_update(stored)
            .finalize();
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(&digest[..SALT_LEN]);
        self.hash_with_salt(password, salt).await
    }

    async fn hash_with_salt(
        &self,
        password: &str,
        salt: [u8; SALT_LEN],
    ) -> Result<String, ApiError> {
        // Normalized on the hashing thread: it is the costly part for a long password.
        let password = password.to_owned();
        self.threads
            .run(move || {
                let salt = SaltString::encode_b64(&salt).map_err(ApiError::internal)?;
                hash_into_phc(normalized(&password).as_bytes(), salt.as_salt())
            })
            .await
    }

    /// Whether `password` matches the stored PHC string of `owner` (a user id, named in the log
    /// should the stored hash be unusable).
    pub async fn verify(
        &self,
        owner: &str,
        stored: &str,
        password: &str,
    ) -> Result<bool, ApiError> {
        let owner = owner.to_owned();
        let stored = stored.to_owned();
        let typed = password.to_owned();
        self.threads
            .run(move || {
                let matches = |password: &str| matches_phc(&owner, &stored, password.as_bytes());
                // Hashes made before passwords were normalized hold the password as it was
                // typed; only a password that normalization changes can differ, and only such
                // a password is tried a second time.
                let candidate = normalized(&typed);
                Ok(matches(&candidate) || (*candidate != *typed && matches(&typed)))
            })
            .await
    }
}

/// Bytes of salt in the hashes identity makes (RFC 9106 recommends 16); a stored hash with
/// less is made again ([`needs_rehash`]).
const SALT_LEN: usize = 16;

/// What a rehash's salt is derived from besides the hash it replaces.
const REHASH_SALT_CONTEXT: &[u8] = b"palisade identity: rehash salt v1\0";

/// Whether `stored`, a PHC string a password has just matched, was made otherwise than
/// identity makes hashes now: another algorithm, version, parameters, output length or a
/// shorter salt (a hash
/// imported with a tenant's data, or made before a change of parameters). Its user's password
/// is then hashed again at sign-in ([`Passwords::rehash`]). A string that does not parse
/// matches no password, so never needs this.
pub fn needs_rehash(stored: &str) -> bool {
    let Ok(stored) = PasswordHash::new(stored) else {
        return false;
    };
    let current = argon2();
    let current = current.params();
    let same_params = Params::try_from(&stored).is_ok_and(|params| {
        (params.m_cost(), params.t_cost(), params.p_cost())
            == (current.m_cost(), current.t_cost(), current.p_cost())
    });
    let output_len = current.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let mut salt_bytes = [0u8; Salt::MAX_LENGTH];
    let salt_len = stored
        .salt
        .and_then(|salt| salt.decode_b64(&mut salt_bytes).ok())
        .map_or(0, <[u8]>::len);
    stored.algorithm != Algorithm::Argon2id.ident()
        || stored.version != Some(Version::V0x13.into())
        || !same_params
        || stored.hash.is_none_or(|hash| hash.len() != output_len)
        || salt_len < SALT_LEN
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

/// The PHC string of `password` hashed with identity's parameters and `salt`: what `argon2`'s
/// `hash_password` makes, in this thread's kept memory.
fn hash_into_phc(password: &[u8], salt: Salt<'_>) -> Result<String, ApiError> {
    let argon2 = argon2();
    let params = argon2.params();
    let output_len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let output = argon2_output(&argon2, password, salt, output_len).map_err(ApiError::internal)?;
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(ApiError::internal)?,
        salt: Some(salt),
        hash: Some(output),
    };
    Ok(hash.to_string())
}

/// Whether `password` hashes to the `stored` PHC string, under the algorithm, version and
/// parameters it was made with. A stored hash that cannot be checked (not Argon2, beyond
/// [`STORED_HASH_LIMITS`], a bad salt) matches nothing and is logged: its user cannot sign in
/// until an admin sets a new password, and the caller is refused as for a wrong password.
fn matches_phc(owner: &str, stored: &str, password: &[u8]) -> bool {
    match check_phc(stored, password) {
        Ok(matches) => matches,
        Err(reason) => {
            tracing::error!(
                user = owner,
                %reason,
                "a stored password hash cannot be checked; it matches no password"
            );
            // As long as a check would have taken: a quick refusal would tell the email has an
            // account, as an unknown email's answer comes after hashing a decoy.
            let salt = Salt::from_b64(REFUSAL_SALT).expect("a valid salt");
            let _ = hash_into_phc(password, salt);
            false
        }
    }
}

/// Any salt: the hash made with it only takes the time a check would.
const REFUSAL_SALT: &str = "cmVmdXNhbCBzYWx0IQ";

fn check_phc(stored: &str, password: &[u8]) -> Result<bool, String> {
    let stored = PasswordHash::new(stored).map_err(|error| error.to_string())?;
    let (Some(salt), Some(expected)) = (&stored.salt, &stored.hash) else {
        return Err("no salt or no hash".into());
    };
    let algorithm = Algorithm::try_from(stored.algorithm).map_err(|error| error.to_string())?;
    let version = match stored.version {
        Some(version) => Version::try_from(version).map_err(|error| error.to_string())?,
        None => Version::default(),
    };
    let params = Params::try_from(&stored).map_err(|error| error.to_string())?;
    let (memory, passes, lanes) = STORED_HASH_LIMITS;
    if params.m_cost() > memory || params.t_cost() > passes || params.p_cost() > lanes {
        return Err(format!(
            "m={}, t={}, p={} is beyond m={memory}, t={passes}, p={lanes}",
            params.m_cost(),
            params.t_cost(),
            params.p_cost()
        ));
    }
    let argon2 = Argon2::new(algorithm, version, params);
    let computed = argon2_output(&argon2, password, *salt, expected.len())
        .map_err(|error| error.to_string())?;
    // `Output`'s equality is constant-time.
    Ok(&computed == expected)
}

/// The `len`-byte Argon2 output of `password` with `salt`, computed in [`with_memory`].
fn argon2_output(
    argon2: &Argon2<'_>,
    password: &[u8],
    salt: Salt<'_>,
    len: usize,
) -> argon2::password_hash::Result<Output> {
    let mut salt_bytes = [0; Salt::MAX_LENGTH];
    let salt_bytes = salt.decode_b64(&mut salt_bytes)?;
    with_memory(argon2.params().block_count(), |memory| {
        Output::init_with(len, |out| {
            argon2
                .hash_password_into_with_memory(password, salt_bytes, out, memory)
                .map_err(Into::into)
        })
    })
}

thread_local! {
    /// The Argon2 memory of this (hashing) thread, kept from one hash to the next. Each hash
    /// writes every block before it reads it, so what a previous hash left does not change a
    /// result. It does stay readable in the process until the next hash: as it did before, in
    /// memory freed but not wiped.
    ///
    /// Allocated afresh for every hash (what `argon2`'s `hash_password` does), the whole of it
    /// was faulted in page by page and zeroed by the kernel, then unmapped, which interrupts
    /// every other core running one of the process's threads to flush its TLB. With this
    /// memory kept, other RPCs' p99 during a login flood went from 2.49-2.56x to 1.57-1.63x of
    /// their p99 alone (2972 to 2435 µs for `GetUser`; one run each,
    /// `cargo bench -p palisade --bench identity`, part 3).
    static MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// Runs `hash` with `blocks` blocks (of 1 KiB) of Argon2 memory: this thread's, unless a stored
/// hash asks for more than identity's own parameters use (one made elsewhere, or before a
/// change of parameters), which gets memory of its own rather than growing what the thread
/// keeps.
fn with_memory<T>(blocks: usize, hash: impl FnOnce(&mut [Block]) -> T) -> T {
    if blocks > argon2().params().block_count() {
        return hash(&mut vec![Block::default(); blocks]);
    }
    MEMORY.with_borrow_mut(|memory| {
        if memory.len() < blocks {
            memory.reserve_exact(blocks - memory.len());
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
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(
            passwords
                .verify("user", &hash, "correct horse battery")
                .await
                .unwrap()
        );
        assert!(
            !passwords
                .verify("user", &hash, "wrong horse battery")
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
        assert!(passwords.verify("user", &hash, COMPOSED).await.unwrap());
        assert!(passwords.verify("user", &hash, DECOMPOSED).await.unwrap());
        let hash = passwords.hash(COMPOSED).await.unwrap();
        assert!(passwords.verify("user", &hash, DECOMPOSED).await.unwrap());
        assert!(
            !passwords
                .verify("user", &hash, "cafe au lait, s'il vous plait")
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
        assert!(
            passwords
                .verify("user", &as_typed, DECOMPOSED)
                .await
                .unwrap()
        );
    }

    /// The crate's own hasher, which allocates its memory afresh for every hash: what identity
    /// hashes in kept memory must be what it would have made.
    fn crate_hash(params: Params, password: &str, salt: &SaltString) -> String {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(password.as_bytes(), salt)
            .unwrap()
            .to_string()
    }

    #[tokio::test]
    async fn a_hash_made_otherwise_is_made_again_the_same_way_by_every_login() {
        let passwords = Passwords::new(1);
        let salt = SaltString::encode_b64(b"a sixteen b salt").unwrap();
        let imported = crate_hash(Params::new(1024, 1, 1, None).unwrap(), "pass word", &salt);
        assert!(needs_rehash(&imported));
        let current = passwords.hash("pass word").await.unwrap();
        assert!(!needs_rehash(&current));
        // Argon2i, and a longer output, with identity's own m, t and p.
        let argon2i = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x13,
            argon2().params().clone(),
        )
        .hash_password(b"pass word", &salt)
        .unwrap()
        .to_string();
        assert!(needs_rehash(&argon2i));
        let long_output = Params::new(ARGON2_MEMORY_KIB, ARGON2_ITERATIONS, 1, Some(64)).unwrap();
        assert!(needs_rehash(&crate_hash(long_output, "pass word", &salt)));
        assert!(!needs_rehash("not a hash"));
        let short_salt = SaltString::encode_b64(b"8 bytes!").unwrap();
        let current_params = argon2().params().clone();
        assert!(needs_rehash(&crate_hash(
            current_params,
            "pass word",
            &short_salt
        )));

        let rehashed = passwords.rehash(&imported, "pass word").await.unwrap();
        assert!(!needs_rehash(&rehashed));
        assert!(
            passwords
                .verify("user", &rehashed, "pass word")
                .await
                .unwrap()
        );
        assert_eq!(
            passwords.rehash(&imported, "pass word").await.unwrap(),
            rehashed
        );
        // Another stored hash of the same password gets another salt.
        let other = crate_hash(Params::new(2048, 1, 1, None).unwrap(), "pass word", &salt);
        assert_ne!(
            passwords.rehash(&other, "pass word").await.unwrap(),
            rehashed
        );
    }

    #[test]
    fn hashes_in_kept_memory_are_the_argon2_crates() {
        let salt = SaltString::encode_b64(b"a sixteen b salt").unwrap();
        let ours = hash_into_phc(b"correct horse battery", salt.as_salt()).unwrap();
        let theirs = crate_hash(argon2().params().clone(), "correct horse battery", &salt);
        assert_eq!(ours, theirs);
        // Again, now in memory the first hash left behind.
        let again = hash_into_phc(b"correct horse battery", salt.as_salt()).unwrap();
        assert_eq!(again, theirs);
    }

    #[test]
    fn hashes_made_with_other_parameters_verify_under_their_own() {
        let salt = SaltString::encode_b64(b"a sixteen b salt").unwrap();
        // OWASP's m = 7 MiB, t = 5 (less memory than a thread keeps), and 32 MiB, t = 1 (more),
        // each checked after a hash that left the kept memory dirty.
        for params in [
            Params::new(7 * 1024, 5, 1, None).unwrap(),
            Params::new(32 * 1024, 1, 1, None).unwrap(),
        ] {
            hash_into_phc(b"something else entirely", salt.as_salt()).unwrap();
            let stored = crate_hash(params, "correct horse battery", &salt);
            assert!(matches_phc("user", &stored, b"correct horse battery"));
            assert!(!matches_phc("user", &stored, b"correct horse batterY"));
        }
    }

    #[test]
    fn a_thread_keeps_its_argon2_memory_between_hashes() {
        let salt = SaltString::encode_b64(b"a sixteen b salt").unwrap();
        let kept = || MEMORY.with_borrow(|memory| (memory.as_ptr(), memory.len()));
        hash_into_phc(b"correct horse battery", salt.as_salt()).unwrap();
        let first = kept();
        assert_eq!(first.1, argon2().params().block_count());
        hash_into_phc(b"correct horse battery", salt.as_salt()).unwrap();
        assert_eq!(
            kept(),
            first,
            "the second hash reused the first one's memory"
        );
        // More than a thread keeps: memory of its own, and the kept memory stays as it was.
        let big = crate_hash(Params::new(32 * 1024, 1, 1, None).unwrap(), "x", &salt);
        assert!(matches_phc("user", &big, b"x"));
        assert_eq!(kept(), first);
    }

    #[test]
    fn a_stored_hash_that_cannot_be_checked_matches_nothing() {
        let salt = SaltString::encode_b64(b"a sixteen b salt").unwrap();
        let made = crate_hash(Params::new(8, 1, 1, None).unwrap(), "password", &salt);
        assert!(matches_phc("user", &made, b"password"));
        for stored in [
            "not a PHC string",
            "$scrypt$ln=16,r=8,p=1$aM15713r3Xsvxbi31lqr1Q$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E",
            // No such Argon2 version.
            &made.replace("v=19", "v=18"),
            // More memory than `STORED_HASH_LIMITS`: refused before anything is allocated.
            &made.replace("m=8,", "m=4194304,"),
            // More passes than `STORED_HASH_LIMITS`: refused before a thread is held for long.
            &made.replace("t=1,", "t=1000000,"),
            // No hash.
            made.rsplit_once('$').unwrap().0,
        ] {
            assert!(!matches_phc("user", stored, b"password"), "{stored}");
        }
    }

    #[test]
    fn normalization_composes_and_folds_compatibility_forms() {
        assert_eq!(normalized(DECOMPOSED), COMPOSED);
        assert!(matches!(normalized(COMPOSED), Cow::Borrowed(_)));
        // NFKC, not NFC: full-width letters are the letters.
        assert_eq!(normalized("\u{ff30}assword"), "Password");
    }
}

//! The token-signing keyring: which Ed25519 key signs access tokens now, which public keys the
//! JWKS publishes, and rotation.
//!
//! A key signs until it is `rotate_after` old (or an operator rotates early); then a new key
//! signs and the old one stays published until every token it signed has expired (the access
//! token lifetime plus a leeway after it was superseded), after which it is deleted. Replicas
//! share the keys through the database: each adopts the newest stored key when it checks, so
//! two replicas rotating at once only leave one extra published key. A replica that cannot
//! check for a while (a database it cannot read, a newer key sealed under a KEK it lacks) stops
//! signing before the key it holds could be deleted under it. Private keys are stored sealed
//! under the deployment's KEK when it has one (`sealing.rs`).

use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use palisade_audit::AuditRecord;
use palisade_grpc::{ApiError, time::now_micros};
use palisade_proto::palisade::{compliance::v1::Outcome, identity::v1::Jwk};
use palisade_tenancy::{Principal, PrincipalKind, TenantId};

use crate::{
    sealing::KeySealer,
    store::IdentityStore,
    tokens::{ACCESS_TOKEN_TTL_MICROS, Claims, Signer, SigningKeyRecord},
};

/// How long a superseded key stays published beyond the last token a replica that checks on
/// time may have signed with it: for verifiers that take a token a little past its `exp` (the
/// gateway: 30 s), for a replica whose check is late or failing ([`SIGNING_GRACE_MICROS`])
/// and for clock skew between identity and the verifiers (30 s).
const PUBLISH_LEEWAY_MICROS: i64 = 90 * 1_000_000;

/// How long past its next due check a replica may go on signing while its checks fail
/// ([`RotationPolicy::signs_for`]); it retries every [`RETRY_FAILED_CHECK`] meanwhile, so a
/// short database outage does not stop logins.
const SIGNING_GRACE_MICROS: i64 = 30 * 1_000_000;

/// How soon a failed check is tried again.
const RETRY_FAILED_CHECK: Duration = Duration::from_secs(5);

/// When keys rotate.
#[derive(Clone, Copy, Debug)]
pub struct RotationPolicy {
    /// A key older than this is replaced.
    pub rotate_after: Duration,
    /// How often each replica looks for a due rotation or a newer key.
    pub check_every: Duration,
}

impl RotationPolicy {
    /// How long a key stays published after a newer one is made: other replicas may go on
    /// signing with it until their next check, and each token signed then lives its lifetime.
    fn published_for(&self) -> i64 {
        ACCESS_TOKEN_TTL_MICROS
            .saturating_add(self.check_every_micros())
            .saturating_add(PUBLISH_LEEWAY_MICROS)
    }

    /// How long after its last successful check a replica may sign with the key it holds.
    ///
    /// The check at `c` found that key newest, so another replica superseded it (if at all)
    /// with a key stamped `r`, which `c` did not see: `r > c`, or `r` a little before `c` when
    /// that key's transaction was still committing (`add_key` stamps it once the transaction
    /// has its connection). The key held is deleted `published_for` after `r`. A token signed
    /// before `c + check_every + 30 s` expires before `r + TTL + check_every + 30 s`; the
    /// gateway takes it 30 s longer, which leaves 30 s, less the commit's time, for skew.
    fn signs_for(&self) -> i64 {
        self.check_every_micros()
            .saturating_add(SIGNING_GRACE_MICROS)
    }

    fn check_every_micros(&self) -> i64 {
        i64::try_from(self.check_every.as_micros()).unwrap_or(i64::MAX)
    }
}

impl Default for RotationPolicy {
    fn default() -> RotationPolicy {
        RotationPolicy {
            rotate_after: Duration::from_secs(30 * 24 * 3600),
            check_every: Duration::from_secs(60),
        }
    }
}

pub struct Keyring {
    store: IdentityStore,
    policy: RotationPolicy,
    sealer: KeySealer,
    /// The key that signs now and when it was made.
    current: RwLock<(Arc<Signer>, i64)>,
    /// When the last successful [`Keyring::refresh`] read the stored keys (µs since the epoch).
    checked_at: AtomicI64,
}

impl Keyring {
    /// Loads the newest stored key, making the first one (or a due replacement) if needed.
    /// With a KEK, keys stored plain or sealed under the previous KEK are sealed under the
    /// current one first, and a new key signs from then on: a copy of the database (or the
    /// previous KEK) taken before holds the old keys in a form it can open, so they are only
    /// published until their tokens have expired. A key that does not open fails the load.
    pub async fn load(
        store: IdentityStore,
        policy: RotationPolicy,
        sealer: KeySealer,
    ) -> Result<Keyring, ApiError> {
        let mut keys = store.signing_keys().await?;
        let mut resealed_any = false;
        for key in &mut keys {
            if let Some(resealed) = sealer.reseal(&key.kid, &key.private_key)? {
                store.reseal_signing_key(&key.kid, &resealed).await?;
                key.private_key = resealed;
                resealed_any = true;
                tracing::info!(kid = %key.kid, "stored token signing key sealed under the current KEK");
            }
        }
        if !sealer.seals() {
            tracing::warn!(
                "token signing keys are stored unsealed: configure a KEK \
                 (--signing-key-kek-file) so that a database copy cannot mint tokens"
            );
        }
        let newest = match keys.into_iter().next() {
            Some(_) if resealed_any => add_key(&store, &sealer, "resealed", None).await?,
            Some(key) => key,
            None => add_key(&store, &sealer, "bootstrap", None).await?,
        };
        let keyring = Keyring {
            current: RwLock::new((Arc::new(signer(&sealer, &newest)?), newest.create_time)),
            store,
            policy,
            sealer,
            checked_at: AtomicI64::new(i64::MIN),
        };
        keyring.refresh().await?;
        Ok(keyring)
    }

    /// The key to sign with now; `UNAVAILABLE` while this replica's view of the keys is too old
    /// to be sure that key stays published as long as a token signed now lives
    /// ([`RotationPolicy::signs_for`]).
    pub fn signer(&self) -> Result<Arc<Signer>, ApiError> {
        self.signer_at(now_micros())
    }

    /// Whether [`Keyring::signer`] will still answer `within` from now: for work that must not
    /// begin (and count) when its token could not be signed at its end.
    pub fn ensure_signing_for(&self, within: Duration) -> Result<(), ApiError> {
        let within = i64::try_from(within.as_micros()).unwrap_or(i64::MAX);
        self.signer_at(now_micros().saturating_add(within))
            .map(drop)
    }

    fn signer_at(&self, now: i64) -> Result<Arc<Signer>, ApiError> {
        let checked_at = self.checked_at.load(Ordering::Acquire);
        if now > checked_at.saturating_add(self.policy.signs_for()) {
            return Err(ApiError::Unavailable {
                message: "identity cannot sign tokens now: its signing keys could not be \
                          checked lately; try again later"
                    .to_owned(),
            });
        }
        Ok(self.current.read().expect("keyring lock").0.clone())
    }

    /// Makes a new key sign from now on (an operator's early rotation, e.g. after a suspected
    /// leak of the old key), and returns its public half.
    pub async fn rotate(&self, actor: &Principal) -> Result<Jwk, ApiError> {
        let key = add_key(&self.store, &self.sealer, "operator", Some(actor)).await?;
        self.adopt(&key)?;
        Ok(key.jwk())
    }

    /// The public keys verifiers must know: the signing key and every superseded key whose
    /// tokens may still be unexpired.
    pub async fn jwks(&self) -> Result<Vec<Jwk>, ApiError> {
        let keys = self.store.signing_keys().await?;
        Ok(published(&keys, now_micros(), self.policy.published_for())
            .map(SigningKeyRecord::jwk)
            .collect())
    }

    /// The claims of an access token signed by a key identity still holds, expired or not;
    /// `None` when it was not (forged, or its key is long retired).
    pub async fn verified_claims(&self, token: &str) -> Result<Option<Claims>, ApiError> {
        // Junk costs no database read.
        if crate::tokens::claimed_kid(token).is_none() {
            return Ok(None);
        }
        let keys = self.store.signing_keys().await?;
        Ok(crate::tokens::verified_claims(token, &keys))
    }

    /// One rotation check: adopt a newer stored key, rotate a due one, delete keys no token
    /// can need any more.
    pub async fn refresh(&self) -> Result<(), ApiError> {
        // Taken before the read: the view is as old as the moment it began.
        let now = now_micros();
        let keys = self.store.signing_keys().await?;
        let Some(newest) = keys.first() else {
            return Ok(());
        };
        self.adopt(newest)?;
        // Signing needs only this far: the key it uses is the newest there was at `now`.
        self.checked_at.fetch_max(now, Ordering::AcqRel);
        let rotate_after = i64::try_from(self.policy.rotate_after.as_micros()).unwrap_or(i64::MAX);
        if now.saturating_sub(newest.create_time) >= rotate_after {
            let key = add_key(&self.store, &self.sealer, "scheduled", None).await?;
            self.adopt(&key)?;
        }
        let keep: Vec<&str> = published(&keys, now, self.policy.published_for())
            .map(|key| key.kid.as_str())
            .collect();
        for key in &keys {
            if !keep.contains(&key.kid.as_str()) {
                self.store.delete_signing_key(&key.kid).await?;
                tracing::info!(kid = %key.kid, "expired token signing key deleted");
            }
        }
        Ok(())
    }

    /// Runs `refresh` every `check_every`, and every [`RETRY_FAILED_CHECK`] after one fails,
    /// until `stop` resolves.
    pub fn spawn(
        self: Arc<Self>,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            tokio::pin!(stop);
            let mut wait = self.policy.check_every;
            loop {
                tokio::select! {
                    _ = &mut stop => return,
                    () = tokio::time::sleep(wait) => {}
                }
                wait = match self.refresh().await {
                    Ok(()) => self.policy.check_every,
                    Err(error) => {
                        tracing::warn!(%error, "signing key check failed; tokens are signed for \
                             30 s past the next due check, then refused until a check succeeds");
                        RETRY_FAILED_CHECK.min(self.policy.check_every)
                    }
                };
            }
        })
    }

    /// Signs with `key` (as stored) from now on if it is newer than the current one.
    fn adopt(&self, key: &SigningKeyRecord) -> Result<(), ApiError> {
        if key.create_time <= self.current.read().expect("keyring lock").1 {
            return Ok(());
        }
        let signer = signer(&self.sealer, key)?;
        let mut current = self.current.write().expect("keyring lock");
        if key.create_time > current.1 {
            *current = (Arc::new(signer), key.create_time);
            tracing::info!(kid = %key.kid, "token signing key in use");
        }
        Ok(())
    }
}

/// The signer of a stored key, opened with `sealer`.
fn signer(sealer: &KeySealer, key: &SigningKeyRecord) -> Result<Signer, ApiError> {
    Signer::new(&key.kid, &sealer.open(&key.kid, &key.private_key)?)
}

/// The keys (given newest first) that are still published at `now`: the newest, and each
/// older one until `published_for` ([`RotationPolicy::published_for`]) after its successor
/// was made.
fn published(
    keys: &[SigningKeyRecord],
    now: i64,
    published_for: i64,
) -> impl Iterator<Item = &SigningKeyRecord> {
    keys.iter().enumerate().filter_map(move |(index, key)| {
        let superseded_at = match index {
            0 => return Some(key),
            _ => keys[index - 1].create_time,
        };
        (now < superseded_at.saturating_add(published_for)).then_some(key)
    })
}

/// Generates and stores a key (sealed if `sealer` seals), audited in the system tenant's log;
/// returns it as stored.
async fn add_key(
    store: &IdentityStore,
    sealer: &KeySealer,
    reason: &str,
    actor: Option<&Principal>,
) -> Result<SigningKeyRecord, ApiError> {
    let mut tx = store.db().begin().await.map_err(ApiError::from)?;
    // Stamped once the transaction has its connection, so that checks see the key soon after
    // its stamp ([`RotationPolicy::signs_for`]).
    let mut key = SigningKeyRecord::generate(now_micros())?;
    key.private_key = sealer.seal(&key.kid, &key.private_key)?;
    let identity = Principal::new(crate::COMPONENT.to_owned(), PrincipalKind::Service);
    let system = TenantId::system();
    let resource = format!("tenants/system/signingKeys/{}", key.kid);
    store.insert_signing_key(&mut tx, &key).await?;
    let record = AuditRecord {
        tenant: &system,
        actor_tenant: &system,
        actor: Some(actor.unwrap_or(&identity)),
        action: "identity.signingkeys.create",
        resource: &resource,
        outcome: Outcome::Success,
        request_id: None,
        source: crate::COMPONENT,
        attributes: vec![("reason", reason.to_owned())],
    };
    palisade_audit::enqueue(&mut tx, &record)
        .await
        .map_err(ApiError::from)?;
    tx.commit().await.map_err(ApiError::from)?;
    tracing::info!(kid = %key.kid, reason, "token signing key created");
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kid: &str, create_time: i64) -> SigningKeyRecord {
        SigningKeyRecord {
            kid: kid.to_owned(),
            private_key: Vec::new(),
            public_key: Vec::new(),
            create_time,
        }
    }

    fn kids(keys: &[SigningKeyRecord], now: i64) -> Vec<&str> {
        let published_for = RotationPolicy::default().published_for();
        published(keys, now, published_for)
            .map(|key| key.kid.as_str())
            .collect()
    }

    #[test]
    fn a_superseded_key_is_published_until_its_tokens_expire() {
        let lifetime = RotationPolicy::default().published_for();
        let t = lifetime + 500;
        let keys = [key("new", t), key("old", 0), key("older", -10)];
        // `older` was superseded at 0, `old` at t.
        assert_eq!(kids(&keys, lifetime - 1), ["new", "old", "older"]);
        assert_eq!(kids(&keys, t), ["new", "old"]);
        assert_eq!(kids(&keys, t + lifetime - 1), ["new", "old"]);
        assert_eq!(kids(&keys, t + lifetime), ["new"]);
        assert_eq!(kids(&keys[..1], i64::MAX / 2), ["new"]);
    }

    #[test]
    fn the_last_token_a_replica_signs_with_a_superseded_key_can_be_verified_until_it_expires() {
        let t = 1_000_000_000;
        let keys = [key("new", t), key("old", 0)];
        // Another replica learns of `new` at its next check, up to `check_every` later, and
        // signs with `old` until then; the gateway takes a token 30 s past its `exp`.
        let check = i64::try_from(RotationPolicy::default().check_every.as_micros()).unwrap();
        let last_signed = t + check - 1;
        let last_accepted = last_signed + ACCESS_TOKEN_TTL_MICROS + 30 * 1_000_000;
        assert_eq!(kids(&keys, last_accepted), ["new", "old"]);
    }

    #[tokio::test]
    async fn a_replica_that_cannot_check_its_keys_stops_signing_before_its_key_may_be_deleted()
    -> Result<(), palisade_grpc::BoxError> {
        let dir = tempfile::tempdir()?;
        let db =
            palisade_db::Db::connect(&palisade_db::DbConfig::sqlite_in(dir.path(), "id")).await?;
        db.migrate(&crate::migrations()).await?;
        let store = IdentityStore::new(db.clone());
        let policy = RotationPolicy::default();
        let loading = now_micros();
        let keyring = Keyring::load(store.clone(), policy, KeySealer::unsealed()).await?;
        let loaded = now_micros();
        assert!(keyring.signer_at(loading + policy.signs_for()).is_ok());

        // A newer key this replica cannot open (as one sealed under a KEK it lacks): each check
        // fails, and the key it signs with may be deleted `published_for` after the newer one.
        let mut unusable = SigningKeyRecord::generate(now_micros())?;
        unusable.private_key = b"not a key".to_vec();
        let mut tx = db.begin().await?;
        store.insert_signing_key(&mut tx, &unusable).await?;
        tx.commit().await?;
        let failing = now_micros();
        assert!(keyring.refresh().await.is_err());
        let refused = keyring.signer_at(failing + policy.signs_for());
        assert!(matches!(refused, Err(ApiError::Unavailable { .. })));
        // The last token it signs (by `loaded + signs_for` at the latest) expires, and the
        // gateway's 30 s past that end, before the key it holds may be deleted.
        let last_accepted = loaded + policy.signs_for() + ACCESS_TOKEN_TTL_MICROS + 30 * 1_000_000;
        assert!(last_accepted < unusable.create_time + policy.published_for());

        // A check that succeeds again lets it sign again.
        store.delete_signing_key(&unusable.kid).await?;
        let checked = now_micros();
        keyring.refresh().await?;
        assert!(keyring.signer_at(checked + policy.signs_for()).is_ok());
        db.close().await;
        Ok(())
    }
}

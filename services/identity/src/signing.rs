//! The token-signing keyring: which Ed25519 key signs access tokens now, which public keys the
//! JWKS publishes, and rotation.
//!
//! A key signs until it is `rotate_after` old (or an operator rotates early); then a new key
//! signs and the old one stays published until every token it signed has expired (the access
//! token lifetime plus a leeway after it was superseded), after which it is deleted. Replicas
//! share the keys through the database: each adopts the newest stored key when it checks, so
//! two replicas rotating at once only leave one extra published key. Private keys are stored
//! sealed under the deployment's KEK when it has one (`sealing.rs`).

use std::{
    sync::{Arc, RwLock},
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

/// How long a superseded key stays published beyond the last token it may have signed: for
/// verifiers that take a token a little past its `exp` (the gateway: 30 s) and for clock skew
/// between identity and the verifiers (60 s).
const PUBLISH_LEEWAY_MICROS: i64 = 90 * 1_000_000;

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
        let check = i64::try_from(self.check_every.as_micros()).unwrap_or(i64::MAX);
        ACCESS_TOKEN_TTL_MICROS
            .saturating_add(check)
            .saturating_add(PUBLISH_LEEWAY_MICROS)
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
}

impl Keyring {
    /// Loads the newest stored key, making the first one (or a due replacement) if needed.
    /// With a KEK, keys stored plain or sealed under the previous KEK are sealed under the
    /// current one first; a key that does not open fails the load.
    pub async fn load(
        store: IdentityStore,
        policy: RotationPolicy,
        sealer: KeySealer,
    ) -> Result<Keyring, ApiError> {
        let mut keys = store.signing_keys().await?;
        for key in &mut keys {
            if let Some(resealed) = sealer.reseal(&key.kid, &key.private_key)? {
                store.reseal_signing_key(&key.kid, &resealed).await?;
                key.private_key = resealed;
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
            Some(key) => key,
            None => add_key(&store, &sealer, "bootstrap", None).await?,
        };
        let keyring = Keyring {
            current: RwLock::new((Arc::new(signer(&sealer, &newest)?), newest.create_time)),
            store,
            policy,
            sealer,
        };
        keyring.refresh().await?;
        Ok(keyring)
    }

    pub fn signer(&self) -> Arc<Signer> {
        self.current.read().expect("keyring lock").0.clone()
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
        let now = now_micros();
        let keys = self.store.signing_keys().await?;
        let Some(newest) = keys.first() else {
            return Ok(());
        };
        let rotate_after = i64::try_from(self.policy.rotate_after.as_micros()).unwrap_or(i64::MAX);
        if now.saturating_sub(newest.create_time) >= rotate_after {
            let key = add_key(&self.store, &self.sealer, "scheduled", None).await?;
            self.adopt(&key)?;
        } else {
            self.adopt(newest)?;
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

    /// Runs `refresh` every `check_every` until `stop` resolves.
    pub fn spawn(
        self: Arc<Self>,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            tokio::pin!(stop);
            let mut ticks = tokio::time::interval(self.policy.check_every);
            ticks.tick().await;
            loop {
                tokio::select! {
                    _ = &mut stop => return,
                    _ = ticks.tick() => {
                        if let Err(error) = self.refresh().await {
                            tracing::warn!(%error, "signing key check failed");
                        }
                    }
                }
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
    let mut key = SigningKeyRecord::generate(now_micros())?;
    key.private_key = sealer.seal(&key.kid, &key.private_key)?;
    let identity = Principal::new(crate::COMPONENT.to_owned(), PrincipalKind::Service);
    let system = TenantId::system();
    let resource = format!("tenants/system/signingKeys/{}", key.kid);
    let mut tx = store.db().begin().await.map_err(ApiError::from)?;
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
}

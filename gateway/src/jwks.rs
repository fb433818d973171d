//! Identity's token-signing public keys as the gateway knows them (`AuthService.GetJwks`).
//!
//! The set is kept current two ways: a task fetches it every `refresh_after`, so a key identity
//! has stopped publishing stops verifying tokens within about that time, and a token naming a
//! `kid` the set does not hold makes the gateway fetch at once (identity has just rotated).
//! When identity cannot be reached, the last set serves for [`MAX_STALE`]; after that tokens
//! are refused as `UNAVAILABLE` rather than checked against keys identity may have withdrawn,
//! and so is a token whose `kid` a failed fetch could not settle.
//!
//! Fetches run one at a time and at least [`MIN_REFETCH`] apart, so tokens with made-up `kid`s
//! cannot become a flood of calls to identity; and a caller that waited while a fetch ran takes
//! that fetch's answer instead of starting another, so such tokens cannot queue genuine ones
//! behind them either. A fetch runs in a task of its own, so one whose caller went away still
//! answers those who waited for it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use palisade_grpc::{ApiError, MeshChannel};
use palisade_proto::palisade::identity::v1::{
    GetJwksRequest, auth_service_client::AuthServiceClient,
};

/// The least time between two fetches. A token that needs a fetch sooner waits for it rather
/// than being refused: right after a rotation, genuine tokens name a key not fetched yet.
const MIN_REFETCH: Duration = Duration::from_secs(1);
/// How long the last fetched set serves while identity does not answer.
const MAX_STALE: Duration = Duration::from_secs(600);
/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The key set and how it is fetched (the gateway has one, shared by its workers).
pub struct Jwks {
    identity: AuthServiceClient<MeshChannel>,
    set: Arc<Mutex<KeySet>>,
    /// Held by the fetch under way.
    fetching: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Default)]
struct KeySet {
    /// `kid` → raw Ed25519 public key.
    keys: HashMap<String, Vec<u8>>,
    /// When the last fetch that identity answered began.
    fetched: Option<Instant>,
    /// When the last fetch began, answered or not.
    attempted: Option<Instant>,
}

impl Jwks {
    /// The set, fetched every `refresh_after` by a task of the current runtime that ends when
    /// the set is dropped.
    pub fn new(identity: MeshChannel, refresh_after: Duration) -> Jwks {
        let jwks = Jwks {
            identity: AuthServiceClient::new(identity),
            set: Arc::default(),
            fetching: Arc::default(),
        };
        tokio::spawn(refresh_every(
            refresh_after,
            jwks.identity.clone(),
            Arc::downgrade(&jwks.set),
            jwks.fetching.clone(),
        ));
        jwks
    }

    /// The public key named `kid`, as identity publishes it (within `refresh_after`).
    /// `INVALID_TOKEN` when identity does not publish it, `UNAVAILABLE` when identity has not
    /// answered for too long or could not be asked about a new `kid`.
    pub async fn key(&self, kid: &str) -> Result<Vec<u8>, ApiError> {
        let arrived = Instant::now();
        if let Some(key) = self.lookup(kid, arrived) {
            return Ok(key);
        }
        let one_at_a_time = self.fetching.clone().lock_owned().await;
        let attempted_since = self
            .lock()
            .attempted
            .is_some_and(|attempted| attempted >= arrived);
        if attempted_since {
            drop(one_at_a_time);
        } else {
            // In a task of its own, which holds the lock until the fetch ends: a caller that
            // goes away (its deadline, a reset stream) does not abandon the fetch whose answer
            // the callers queued behind it will take.
            let (identity, set) = (self.identity.clone(), self.set.clone());
            let fetched = tokio::spawn(async move {
                fetch(&identity, &set).await;
                drop(one_at_a_time);
            });
            // A fetch cannot panic but for a poisoned lock; the lookup below then answers.
            let _ = fetched.await;
        }
        if let Some(key) = self.lookup(kid, Instant::now()) {
            return Ok(key);
        }
        // Unknown to identity only if identity answered since this token arrived.
        let answered_since = self
            .lock()
            .fetched
            .is_some_and(|fetched| fetched >= arrived);
        if answered_since {
            Err(crate::access_tokens::invalid_token())
        } else {
            Err(crate::access_tokens::cannot_verify())
        }
    }

    /// Whether the set, fetched within `MAX_STALE`, still has the key named `kid`.
    pub fn publishes(&self, kid: &str) -> bool {
        let set = self.lock();
        set.fetched
            .is_some_and(|fetched| fetched.elapsed() < MAX_STALE)
            && set.keys.contains_key(kid)
    }

    /// The key named `kid` in a set fetched within `MAX_STALE`.
    fn lookup(&self, kid: &str, now: Instant) -> Option<Vec<u8>> {
        let set = self.lock();
        let usable = set
            .fetched
            .is_some_and(|fetched| now.saturating_duration_since(fetched) < MAX_STALE);
        usable.then(|| set.keys.get(kid).cloned()).flatten()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, KeySet> {
        self.set.lock().expect("jwks lock")
    }
}

/// Fetches the set every `period` until it is dropped.
async fn refresh_every(
    period: Duration,
    identity: AuthServiceClient<MeshChannel>,
    set: Weak<Mutex<KeySet>>,
    fetching: Arc<tokio::sync::Mutex<()>>,
) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(set) = set.upgrade() else {
            return;
        };
        let _one_at_a_time = fetching.lock().await;
        fetch(&identity, &set).await;
    }
}

/// One fetch, [`MIN_REFETCH`] after the last began; the caller holds `fetching`. A failed
/// fetch keeps the set as it was.
async fn fetch(identity: &AuthServiceClient<MeshChannel>, set: &Mutex<KeySet>) {
    let earliest = set
        .lock()
        .expect("jwks lock")
        .attempted
        .map(|attempted| attempted + MIN_REFETCH);
    if let Some(earliest) = earliest {
        tokio::time::sleep_until(earliest.into()).await;
    }
    let began = Instant::now();
    set.lock().expect("jwks lock").attempted = Some(began);
    let answer =
        tokio::time::timeout(FETCH_TIMEOUT, identity.clone().get_jwks(GetJwksRequest {})).await;
    let jwks = match answer {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) => {
            tracing::warn!(code = ?status.code(), "jwks fetch failed; the last key set stays in use");
            return;
        }
        Err(_) => {
            tracing::warn!("jwks fetch timed out; the last key set stays in use");
            return;
        }
    };
    let keys = jwks
        .keys
        .into_iter()
        .filter(|jwk| jwk.kty == "OKP" && jwk.crv == "Ed25519")
        .filter_map(|jwk| Some((jwk.kid, URL_SAFE_NO_PAD.decode(jwk.x).ok()?)))
        .collect();
    let mut set = set.lock().expect("jwks lock");
    set.keys = keys;
    set.fetched = Some(began);
}

#[cfg(test)]
mod tests {
    use palisade_proto::palisade::identity::v1::Jwk;

    use super::*;
    use crate::test_identity::FakeAuth;

    /// How long identity takes to answer every fetch but the first.
    const SLOW: Duration = Duration::from_millis(600);

    fn jwk(kid: &str) -> Jwk {
        Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            kid: kid.into(),
            x: URL_SAFE_NO_PAD.encode([7u8; 32]),
            ..Jwk::default()
        }
    }

    /// A call naming the new key goes away (its deadline) while the fetch it started is under
    /// way; a genuine token that queued behind it still gets the key from that fetch.
    #[tokio::test]
    async fn a_fetch_whose_caller_went_away_still_answers_those_who_waited() {
        // The first fetch answers `old` at once, every later one `old` and `new` after SLOW.
        let channel = FakeAuth::new(|fetch| match fetch {
            0 => (Duration::ZERO, vec![jwk("old")]),
            _ => (SLOW, vec![jwk("old"), jwk("new")]),
        })
        .serve()
        .await;
        // The refresh task fetches at once (the quick answer), then not for an hour.
        let jwks = Arc::new(Jwks::new(channel, Duration::from_secs(3600)));
        while !jwks.publishes("old") {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        // Its fetch waits out MIN_REFETCH, then asks; the deadline lands while identity answers.
        let impatient = tokio::time::timeout(MIN_REFETCH + SLOW / 2, jwks.key("new"));
        let patient = tokio::spawn({
            let jwks = jwks.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                jwks.key("new").await
            }
        });
        assert!(
            impatient.await.is_err(),
            "the first caller's deadline passed"
        );
        let key = patient
            .await
            .unwrap()
            .expect("the key from the fetch it waited for");
        assert_eq!(key, [7u8; 32]);
    }
}

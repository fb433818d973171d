//! Identity's token-signing public keys as the gateway knows them (`AuthService.GetJwks`).
//!
//! The set is fetched on first use and kept current two ways: a token naming a `kid` the set
//! does not hold makes the gateway fetch at once (identity has just rotated), and a set older
//! than `refresh_after` is fetched again in the background while it goes on serving, so a key
//! identity has stopped publishing stops verifying tokens within that time. When identity
//! cannot be reached, the last set serves for [`MAX_STALE`]; after that tokens are refused as
//! `UNAVAILABLE` rather than checked against keys identity may have withdrawn.
//!
//! Fetches run one at a time and at least [`MIN_REFETCH`] apart, so tokens with made-up `kid`s
//! cannot become a flood of calls to identity; and a caller that waited while a fetch ran takes
//! that fetch's answer instead of starting another, so such tokens cannot queue genuine ones
//! behind them either.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use palisade_grpc::{ApiError, MeshChannel};
use palisade_proto::palisade::identity::v1::{
    GetJwksRequest, auth_service_client::AuthServiceClient,
};

/// The least time between two fetches. A token that needs a fetch sooner waits for it rather
/// than being refused: right after a rotation, genuine tokens name a key not fetched yet.
pub const MIN_REFETCH: Duration = Duration::from_secs(1);
/// How long the last fetched set serves while identity does not answer.
pub const MAX_STALE: Duration = Duration::from_secs(600);
/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The key set and how it is fetched; cheap to share (the gateway has one).
pub struct Jwks {
    identity: AuthServiceClient<MeshChannel>,
    set: Arc<Mutex<KeySet>>,
    /// Held by the fetch under way.
    fetching: Arc<tokio::sync::Mutex<()>>,
    refresh_after: Duration,
}

#[derive(Default)]
struct KeySet {
    /// `kid` → raw Ed25519 public key.
    keys: HashMap<String, Vec<u8>>,
    /// When the fetch that brought `keys` began.
    fetched: Option<Instant>,
    /// When the last fetch began, answered or not.
    attempted: Option<Instant>,
}

/// What the set says about a `kid` at some instant.
enum Lookup {
    /// Known, in a set younger than `refresh_after`.
    Fresh(Vec<u8>),
    /// Known, in a set due for a refresh but still usable.
    Aging(Vec<u8>),
    /// Not in a usable set.
    Unknown,
    /// No set fetched within `MAX_STALE`.
    NoUsableSet,
}

impl Jwks {
    pub fn new(identity: MeshChannel, refresh_after: Duration) -> Jwks {
        Jwks {
            identity: AuthServiceClient::new(identity),
            set: Arc::default(),
            fetching: Arc::default(),
            refresh_after,
        }
    }

    /// The public key named `kid`, as identity publishes it now (within `refresh_after`).
    /// `INVALID_TOKEN` when identity does not publish it, `UNAVAILABLE` when identity has not
    /// answered for too long.
    pub async fn key(&self, kid: &str) -> Result<Vec<u8>, ApiError> {
        let arrived = Instant::now();
        match self.lookup(kid, arrived) {
            Lookup::Fresh(key) => return Ok(key),
            Lookup::Aging(key) => {
                self.refresh_in_background();
                return Ok(key);
            }
            Lookup::Unknown | Lookup::NoUsableSet => {}
        }
        {
            let _one_at_a_time = self.fetching.lock().await;
            let answered_since = self
                .lock()
                .attempted
                .is_some_and(|attempted| attempted >= arrived);
            if !answered_since {
                fetch(&self.identity, &self.set).await;
            }
        }
        match self.lookup(kid, Instant::now()) {
            Lookup::Fresh(key) | Lookup::Aging(key) => Ok(key),
            Lookup::Unknown => Err(super::auth::invalid_token()),
            Lookup::NoUsableSet => Err(ApiError::Unavailable {
                message: "cannot verify credentials right now".to_owned(),
            }),
        }
    }

    fn lookup(&self, kid: &str, now: Instant) -> Lookup {
        let set = self.lock();
        let age = match set.fetched {
            Some(fetched) if now.saturating_duration_since(fetched) < MAX_STALE => {
                now.saturating_duration_since(fetched)
            }
            _ => return Lookup::NoUsableSet,
        };
        match set.keys.get(kid) {
            None => Lookup::Unknown,
            Some(key) if age < self.refresh_after => Lookup::Fresh(key.clone()),
            Some(key) => Lookup::Aging(key.clone()),
        }
    }

    /// Starts a fetch unless one is under way; the caller goes on with the set it has.
    fn refresh_in_background(&self) {
        let Ok(one_at_a_time) = self.fetching.clone().try_lock_owned() else {
            return;
        };
        let identity = self.identity.clone();
        let set = self.set.clone();
        tokio::spawn(async move {
            let _one_at_a_time = one_at_a_time;
            fetch(&identity, &set).await;
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, KeySet> {
        self.set.lock().expect("jwks lock")
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

//! Who may create and revoke which API key: the checks `ApiKeyService`'s handlers make
//! before they write, each refusing with its own reason.

use palisade_grpc::{
    ApiError, Caller, FieldViolation,
    time::{now_micros, timestamp},
};
use palisade_proto::palisade::identity::v1::{ApiKeyState, CreateApiKeyRequest};
use palisade_tenancy::{Principal, PrincipalKind};

use super::ApiKeyApi;
use crate::{api_keys, store::ApiKeyRecord};

impl ApiKeyApi {
    /// A key made with an API key is made with a service-account key, not a user's, and
    /// expires no later than that key: a service-account key (which outlives whoever made it)
    /// could otherwise mint its successor before it expires, and so on, keeping access forever
    /// without any person renewing it. Returns that key's expiry, the latest the new key may
    /// keep once stamped, or `None` for a call not made with a key.
    pub(super) async fn require_callers_key_may_make(
        &self,
        caller: &Caller,
        request: &CreateApiKeyRequest,
        key: &ApiKeyRecord,
    ) -> Result<Option<i64>, ApiError> {
        let principal = caller.principal();
        if principal.kind != PrincipalKind::ApiKey {
            return Ok(None);
        }
        // Gone since the call was let in (revoked and purged, or the tenant restored): the
        // caller has no key to be bounded by, so it makes none.
        let Some(callers_key) = self.store.get_api_key(&principal.id).await? else {
            return Err(ApiError::Unauthenticated {
                reason: "INVALID_API_KEY",
                message: "the api key this call was made with no longer exists".to_owned(),
            });
        };
        // A user's key holds its owner's rights only while the owner does, and ends when
        // revoked; a service-account key it made would keep those rights past both.
        if callers_key.owner_user_id.is_some() {
            return Err(ApiError::PermissionDenied {
                reason: "PERSONAL_KEY",
                message: "a user's api key does not create keys: a service-account key made \
                          with it would outlive its owner's rights and its revocation; sign in \
                          as the user instead"
                    .to_owned(),
            });
        }
        if key.expire_time <= callers_key.expire_time {
            return Ok(Some(callers_key.expire_time));
        }
        let field = match request
            .api_key
            .as_ref()
            .and_then(|k| k.expire_time.as_ref())
        {
            Some(_) => "api_key.expire_time",
            None => "ttl",
        };
        let until = timestamp(callers_key.expire_time);
        Err(ApiError::invalid(
            field,
            format!(
                "a key created with an api key expires no later than that key (it expires at {until})"
            ),
        ))
    }

    /// A key is revoked by the user it belongs to, by itself, or by a caller holding all its
    /// scopes (those still in the catalogue: no one holds a retired one) and, for a user's key,
    /// every right of that user (`ROLE_ESCALATION`, as disabling the user takes). Otherwise a
    /// manager could cut an admin's keys, or a system manager the operator's `*` key. Judged
    /// outside the revoking transaction: a role changed meanwhile at worst lets through a
    /// revocation, which grants nothing.
    pub(super) async fn require_may_revoke(
        &self,
        caller: &Caller,
        key: &ApiKeyRecord,
    ) -> Result<(), ApiError> {
        let principal = caller.principal();
        let own = match principal.kind {
            PrincipalKind::User => key.owner_user_id.as_ref() == Some(&principal.id),
            PrincipalKind::ApiKey => principal.id == key.id,
            PrincipalKind::Service => false,
        };
        if own && caller.context.tenant_id == key.tenant_id {
            return Ok(());
        }
        let scopes = self.authz.roles().still_granted_scopes(&key.scopes);
        let lacking = self
            .authz
            .lacking(&caller.context.tenant_id, principal, &scopes)
            .await?;
        if !lacking.is_empty() {
            return Err(ApiError::PermissionDenied {
                reason: "SCOPE_ESCALATION",
                message: format!(
                    "the caller does not hold these scopes of the key: {}",
                    lacking.join(", ")
                ),
            });
        }
        if let Some(owner) = &key.owner_user_id
            && let Some(owner) = self.store.get_user(&key.tenant_id, owner).await?
        {
            let held = self.authz.permissions_named(&owner).await?;
            if !self.authz.holds_all(&caller.context, &held).await? {
                return Err(ApiError::PermissionDenied {
                    reason: "ROLE_ESCALATION",
                    message: "the key's user holds rights the caller does not".to_owned(),
                });
            }
        }
        Ok(())
    }

    /// A key's scopes never exceed what its owner holds (a user's key) nor what its creator
    /// holds (no escalation by minting a key), platform operators included. `*` is held by
    /// whoever holds every catalogue permission.
    /// `requested` is the request's own list, which names the fields of a violation.
    pub(super) async fn require_scopes_held(
        &self,
        caller: &Caller,
        key: &ApiKeyRecord,
        requested: &[String],
    ) -> Result<(), ApiError> {
        if let Some(owner) = &key.owner_user_id {
            let owner = Principal::new(owner.clone(), PrincipalKind::User);
            let lacking = self
                .authz
                .lacking(&key.tenant_id, &owner, &key.scopes)
                .await?;
            // Bad input, named per scope: the request asks for more than its owner could
            // ever use, whoever sends it.
            if !lacking.is_empty() {
                let violations = requested
                    .iter()
                    .enumerate()
                    .filter(|(_, scope)| lacking.contains(scope))
                    .map(|(index, scope)| {
                        FieldViolation::new(
                            format!("api_key.scopes[{index}]"),
                            format!("the key's owner does not hold {scope}"),
                        )
                    })
                    .collect();
                return Err(ApiError::InvalidArgument(violations));
            }
        }
        // Operators too, in every tenant: they hold their own rights, as for roles
        // (`Authz::holds_all`).
        let lacking = self
            .authz
            .lacking(&caller.context.tenant_id, caller.principal(), &key.scopes)
            .await?;
        if lacking.is_empty() {
            Ok(())
        } else {
            Err(ApiError::PermissionDenied {
                reason: "SCOPE_ESCALATION",
                message: format!(
                    "the caller does not hold these scopes: {}",
                    lacking.join(", ")
                ),
            })
        }
    }

    /// The keys revoking `key` spares: none, or with `keep_calling_key` the calling key and
    /// the keys between it and `key` (each made with the next, up to one made with `key`),
    /// calling key first. Only a key made with `key` keeps itself: otherwise a leaked key
    /// could retire itself and leave the keys it made. (A call without the flag whose cascade
    /// reaches the calling key is refused in the revocation itself, `WOULD_REVOKE_CALLER`.)
    pub(super) async fn spared_by_revoking(
        &self,
        caller: &Caller,
        key: &ApiKeyRecord,
        keep_calling_key: bool,
    ) -> Result<Vec<ApiKeyRecord>, ApiError> {
        if !keep_calling_key {
            return Ok(Vec::new());
        }
        self.calling_chain(caller, key).await?.ok_or_else(|| {
            ApiError::invalid(
                "keep_calling_key",
                "only a key created with the key it revokes (directly or down a chain of keys) \
                 keeps itself",
            )
        })
    }

    /// The calling key and the keys above it, each made with the next, up to one made with
    /// `key`; `None` if the caller is not a key made (down such a chain) with `key`. The walk
    /// follows what the revocation's cascade follows, revoked keys included; only the calling
    /// key must be live (`UNAUTHENTICATED INVALID_API_KEY` otherwise).
    async fn calling_chain(
        &self,
        caller: &Caller,
        key: &ApiKeyRecord,
    ) -> Result<Option<Vec<ApiKeyRecord>>, ApiError> {
        /// Longer chains are not followed (each link is a read). Rotating a key makes a chain
        /// one link long: the successor retires the key it was made with.
        const MAX_LINKS: usize = 64;
        let principal = caller.principal();
        if principal.kind != PrincipalKind::ApiKey || principal.id == key.id {
            return Ok(None);
        }
        let target = key.name();
        let mut chain: Vec<ApiKeyRecord> = Vec::new();
        let mut next = self.store.get_api_key(&principal.id).await?;
        let live = |link: &ApiKeyRecord| link.state(now_micros()) == ApiKeyState::Active;
        if !next.as_ref().is_some_and(live) {
            return Err(ApiError::Unauthenticated {
                reason: "INVALID_API_KEY",
                message: "the api key this call was made with was revoked or has expired"
                    .to_owned(),
            });
        }
        while let Some(link) = next {
            if chain.iter().any(|seen| seen.id == link.id) {
                return Ok(None);
            }
            if chain.len() == MAX_LINKS {
                return Err(ApiError::FailedPrecondition {
                    reason: "KEY_CHAIN_TOO_LONG",
                    message: format!(
                        "the key making this call is not within {MAX_LINKS} keys below \
                         {target}; revoke it with another credential"
                    ),
                });
            }
            let maker = link.created_with.clone();
            chain.push(link);
            let Some(maker) = maker else {
                return Ok(None);
            };
            if maker == target {
                return Ok(Some(chain));
            }
            next = match api_keys::split_name(&maker) {
                Some((tenant, id)) => self.store.get_tenant_api_key(&tenant, &id).await?,
                None => None,
            };
        }
        Ok(None)
    }
}

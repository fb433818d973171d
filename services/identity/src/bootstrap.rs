//! First start: the `system` tenant that platform operators belong to, one operator API key
//! whose secret is returned exactly once (only its hash is stored), and the key that signs
//! access tokens.

use std::time::Duration;

use palisade_audit::AuditRecord;
use palisade_db::Scope;
use palisade_grpc::{ApiError, time::now_micros};
use palisade_proto::palisade::{
    compliance::v1::Outcome,
    identity::v1::{Plan, TenantState},
};
use palisade_tenancy::{Principal, PrincipalKind, RequestId, TenantContext, TenantId};

use crate::{
    api_keys,
    authz::ALL_PERMISSIONS,
    store::{ApiKeyRecord, IdentityStore},
    tenants::TenantRecord,
};

const OPERATOR_KEY_NAME: &str = "bootstrap-operator";

/// Makes the system tenant and the operator key if they do not exist yet; the key lives
/// `key_lifetime` (the longest any API key may: `--api-key-max-lifetime`). Returns the key
/// when it was created now. Safe to run on every start and from several replicas at once.
pub async fn bootstrap(
    store: &IdentityStore,
    key_lifetime: Duration,
) -> Result<Option<String>, ApiError> {
    // Work outside any call sees no tenant's rows on PostgreSQL (row-level security): the
    // checks below must see the system tenant's, or every start would find no operator key
    // and, once the first was revoked, mint a new one.
    let system = TenantContext {
        tenant_id: TenantId::system(),
        principal: None,
    };
    let missing = create_missing(store, key_lifetime);
    palisade_tenancy::with_context(Some(system), RequestId::generate(), missing).await
}

async fn create_missing(
    store: &IdentityStore,
    key_lifetime: Duration,
) -> Result<Option<String>, ApiError> {
    let system = TenantId::system();
    let actor = Principal::new(crate::COMPONENT.to_owned(), PrincipalKind::Service);
    let now = now_micros();
    if store.get_tenant(&system).await?.is_none() {
        let tenant = TenantRecord {
            id: system.clone(),
            display_name: "Platform operators".to_owned(),
            plan: Plan::Enterprise,
            state: TenantState::Active,
            region: "default".to_owned(),
            domain: None,
            feature_overrides: Default::default(),
            // Platform operators are never throttled: they are who fixes things.
            limit_overrides: [
                ("requests_per_second", crate::plans::UNLIMITED),
                ("api_calls_per_month", crate::plans::UNLIMITED),
            ]
            .into_iter()
            .map(|(limit, value)| (limit.to_owned(), value))
            .collect(),
            create_time: now,
            update_time: now,
        };
        let mut tx = store
            .db()
            .begin_in(Scope::Tenant(TenantId::system().as_str()))
            .await
            .map_err(ApiError::from)?;
        match store.insert_tenant(&mut tx, &tenant).await {
            // Another replica bootstrapped first: nothing left to do here.
            Err(ApiError::AlreadyExists { .. }) => {}
            Err(other) => return Err(other),
            Ok(()) => {
                audit(
                    &mut tx,
                    &system,
                    &actor,
                    "identity.tenants.create",
                    "tenants/system",
                )
                .await?;
                tx.commit().await.map_err(ApiError::from)?;
            }
        }
    }
    if store.api_key_named(&system, OPERATOR_KEY_NAME).await? {
        return Ok(None);
    }
    let minted = api_keys::mint();
    let key = ApiKeyRecord {
        id: minted.id.clone(),
        tenant_id: system.clone(),
        display_name: OPERATOR_KEY_NAME.to_owned(),
        secret_hash: minted.secret_hash,
        scopes: vec![ALL_PERMISSIONS.to_owned()],
        // Owned by the system tenant itself: a service-account key.
        owner_user_id: None,
        created_with: None,
        create_time: now,
        expire_time: now
            .saturating_add(i64::try_from(key_lifetime.as_micros()).unwrap_or(i64::MAX)),
        revoke_time: None,
        last_use_time: None,
    };
    let mut tx = store
        .db()
        .begin_in(Scope::Tenant(TenantId::system().as_str()))
        .await
        .map_err(ApiError::from)?;
    match store.insert_api_key(&mut tx, &key).await {
        // Another replica minted it between our check and insert; theirs is the one.
        Err(ApiError::AlreadyExists { .. }) => return Ok(None),
        other => other?,
    }
    let resource = crate::api_keys::key_name("system", &key.id);
    audit(
        &mut tx,
        &system,
        &actor,
        "identity.apikeys.create",
        &resource,
    )
    .await?;
    tx.commit().await.map_err(ApiError::from)?;
    tracing::info!(key = %resource, "bootstrap operator api key created");
    Ok(Some(minted.presented))
}

async fn audit(
    tx: &mut sqlx::AnyConnection,
    tenant: &TenantId,
    actor: &Principal,
    action: &str,
    resource: &str,
) -> Result<(), ApiError> {
    let record = AuditRecord {
        tenant,
        actor_tenant: tenant,
        actor: Some(actor),
        action,
        resource,
        outcome: Outcome::Success,
        request_id: None,
        source: crate::COMPONENT,
        attributes: vec![("reason", "bootstrap".to_owned())],
    };
    palisade_audit::enqueue(tx, &record)
        .await
        .map_err(ApiError::from)
}

//! Service-account keys outlive the person who made them, so a key must not be able to keep
//! itself alive: a key created with an API key expires no later than that key, and a chain of
//! keys each minting the next ends when the first would have. Nor can it outlive revocation:
//! revoking a key revokes the keys made with it, down the chain. Only service-account keys
//! make keys: a user's key holds the user's rights only while the user does.

mod common;
mod keys_kit;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{
    expect_code, hold_tenant_row, reason, until_a_call_waits_for_a_lock, violated_fields,
};
use palisade_proto::palisade::identity::v1::{
    ApiKey, ApiKeyState, CreateApiKeyRequest, GetApiKeyRequest, ListApiKeysRequest,
    RevokeApiKeyRequest, api_key_service_client::ApiKeyServiceClient,
};
use palisade_testkit::{Component, Mesh, with_api_key};
use tonic::{Code, transport::Channel};

use keys_kit::*;

/// A service-account key request (owned by the tenant) that may itself create keys.
fn service_account_key(name: &str, ttl_days: i64) -> CreateApiKeyRequest {
    let scopes = ["identity.apikeys.create", "identity.users.list"];
    let mut request = key_request("acme", name, &scopes, ttl_days);
    if let Some(key) = request.api_key.as_mut() {
        key.owner = "tenants/acme".into();
    }
    request
}

/// A service-account key request that may also revoke keys: one that can retire the key it
/// was made with.
fn rotating_key(name: &str, ttl_days: i64) -> CreateApiKeyRequest {
    let mut request = service_account_key(name, ttl_days);
    if let Some(key) = request.api_key.as_mut() {
        key.scopes.push("identity.apikeys.revoke".into());
    }
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_made_by_a_key_expires_no_later_than_it() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let (admin, mut keys) = acme_admin(&mesh).await?;
        // A person may make a service-account key for up to the maximum lifetime.
        let first = create(
            &mut keys,
            with_bearer(service_account_key("deploys", 10), &admin),
        )
        .await?;
        let first_expiry = first.api_key.unwrap().expire_time.unwrap();

        // That key cannot make one that outlives it, by `ttl` or by `expire_time` ...
        let longer = keys
            .create_api_key(with_api_key(service_account_key("next", 11), &first.key))
            .await;
        assert_eq!(
            violated_fields(&expect_code(longer, Code::InvalidArgument)),
            ["ttl"]
        );
        let mut at = service_account_key("next", 1);
        at.ttl = None;
        if let Some(key) = at.api_key.as_mut() {
            key.expire_time = Some(prost_types::Timestamp {
                seconds: first_expiry.seconds + 60,
                nanos: 0,
            });
        }
        let later = keys.create_api_key(with_api_key(at, &first.key)).await;
        assert_eq!(
            violated_fields(&expect_code(later, Code::InvalidArgument)),
            ["api_key.expire_time"]
        );

        // ... but may make shorter-lived ones, which are bound the same way in turn.
        let second = create(
            &mut keys,
            with_api_key(service_account_key("next", 9), &first.key),
        )
        .await?;
        let third = keys
            .create_api_key(with_api_key(service_account_key("after", 10), &second.key))
            .await;
        expect_code(third, Code::InvalidArgument);

        // A user's key makes none: a service-account key made with it would keep the user's
        // rights past a demotion, and outlive the key's revocation.
        let scopes = ["identity.apikeys.create", "identity.users.list"];
        let personal = create(
            &mut keys,
            with_bearer(key_request("acme", "ada's", &scopes, 5), &admin),
        )
        .await?;
        let made = keys
            .create_api_key(with_api_key(
                service_account_key("detour", 1),
                &personal.key,
            ))
            .await;
        assert_eq!(
            reason(&expect_code(made, Code::PermissionDenied)),
            "PERSONAL_KEY"
        );
        mesh.stop().await?;
    }
    Ok(())
}

async fn state_of(
    keys: &mut ApiKeyServiceClient<Channel>,
    name: &str,
    admin: &str,
) -> anyhow::Result<ApiKeyState> {
    let request = with_bearer(GetApiKeyRequest { name: name.into() }, admin);
    Ok(keys.get_api_key(request).await?.into_inner().state())
}

/// Tenant `acme` and its signed-in admin: (the admin's access token, a keys client).
async fn acme_admin(mesh: &Mesh) -> anyhow::Result<(String, ApiKeyServiceClient<Channel>)> {
    let (admin, _) = signed_in_user(mesh, "acme", "ada@example.com", &["admin"]).await?;
    Ok((admin, ApiKeyServiceClient::new(mesh.gateway())))
}

/// Checks that the key `name` is in `state` now.
async fn expect_state(
    keys: &mut ApiKeyServiceClient<Channel>,
    name: &str,
    admin: &str,
    state: ApiKeyState,
    backend: &str,
) -> anyhow::Result<()> {
    let found = state_of(keys, name, admin).await?;
    assert_eq!(found, state, "{backend}: {name}");
    Ok(())
}

fn revoke(name: &str, admin: &str) -> tonic::Request<RevokeApiKeyRequest> {
    with_bearer(
        RevokeApiKeyRequest {
            name: name.into(),
            ..Default::default()
        },
        admin,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_key_revokes_the_keys_made_with_it() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        let mesh = builder.start().await?;
        let (admin, mut keys) = acme_admin(&mesh).await?;
        let leaked = create(
            &mut keys,
            with_bearer(service_account_key("ci", 10), &admin),
        )
        .await?;
        let other = create(
            &mut keys,
            with_bearer(service_account_key("cd", 10), &admin),
        )
        .await?;
        let made = create(
            &mut keys,
            with_api_key(service_account_key("made", 9), &leaked.key),
        )
        .await?;
        let made_by_made = create(
            &mut keys,
            with_api_key(service_account_key("made-by-made", 8), &made.key),
        )
        .await?;
        let [leaked, other, made, made_by_made] =
            [leaked, other, made, made_by_made].map(|created| created.api_key.unwrap());
        assert_eq!(leaked.created_with, "", "{backend}: a person made it");
        assert_eq!(made.created_with, leaked.name, "{backend}");
        assert_eq!(made_by_made.created_with, made.name, "{backend}");
        // The keys made directly with a key can be listed (revoking it reaches their own too).
        for (filter, expected) in [
            (format!("created_with = {:?}", leaked.name), vec![&made]),
            (
                format!("created_with != {:?}", leaked.name),
                vec![&leaked, &other, &made_by_made],
            ),
        ] {
            let listed = keys
                .list_api_keys(with_bearer(
                    ListApiKeysRequest {
                        parent: "tenants/acme".into(),
                        filter,
                        ..Default::default()
                    },
                    &admin,
                ))
                .await?
                .into_inner()
                .api_keys;
            let names = |keys: Vec<&ApiKey>| -> Vec<String> {
                keys.into_iter().map(|key| key.name.clone()).collect()
            };
            assert_eq!(names(listed.iter().collect()), names(expected), "{backend}");
        }

        let revoked = keys.revoke_api_key(revoke(&leaked.name, &admin)).await?;
        let revoked = revoked.into_inner();
        assert_eq!(revoked.state(), ApiKeyState::Revoked);
        let leaked_revoked_at = revoked.revoke_time;
        for (key, state) in [
            (&made, ApiKeyState::Revoked),
            (&made_by_made, ApiKeyState::Revoked),
            (&other, ApiKeyState::Active),
        ] {
            let found = state_of(&mut keys, &key.name, &admin).await?;
            assert_eq!(found, state, "{backend}: {}", key.display_name);
        }
        // Each revocation is in the audit log; those revoked with another key name it.
        let event = common::audit_event(&mesh, "identity.apikeys.revoke", |event| {
            event.resource == made_by_made.name
        })
        .await?;
        assert_eq!(event.attributes["revoked_with"], leaked.name, "{backend}");

        // A key made with a revoked key that is live again (as a restore of an export taken
        // before the revocation brings it back) is caught by revoking its maker again.
        let db = mesh.unrestricted_db(Component::Identity).await?;
        sqlx::query("UPDATE api_keys SET revoke_time = NULL WHERE id = $1")
            .bind(made.name.rsplit('/').next().expect("an id"))
            .execute(db.pool())
            .await?;
        db.close().await;
        expect_state(&mut keys, &made.name, &admin, ApiKeyState::Active, backend).await?;
        let again = keys.revoke_api_key(revoke(&leaked.name, &admin)).await?;
        assert_eq!(again.into_inner().revoke_time, leaked_revoked_at);
        expect_state(&mut keys, &made.name, &admin, ApiKeyState::Revoked, backend).await?;
        mesh.stop().await?;
    }
    Ok(())
}

/// A `ttl` counts from when the key is stamped, after the call has waited for the tenant's
/// row; a key made with a key still expires no later than its maker, however long it waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_waited_still_expires_no_later_than_its_maker() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        // The gateway trusts the maker once verified, so only the create waits for the lock.
        let mesh = (builder.with_api_key_cache_ttl(Duration::from_secs(60)))
            .start()
            .await?;
        let (admin, mut keys) = acme_admin(&mesh).await?;
        let maker = create(
            &mut keys,
            with_bearer(service_account_key("ci", 10), &admin),
        )
        .await?;
        let makers_expiry = maker.api_key.unwrap().expire_time.unwrap();
        let first_use = with_api_key(service_account_key("warm", 1), &maker.key);
        create(&mut keys, first_use).await?;
        let db = mesh.unrestricted_db(Component::Identity).await?;
        let mut holder = hold_tenant_row(&db, "acme").await?;
        // A `ttl` ending a second before the maker's expiry, on a call that then waits three.
        let expiry =
            UNIX_EPOCH + Duration::new(makers_expiry.seconds as u64, makers_expiry.nanos as u32);
        let ttl = expiry.duration_since(SystemTime::now())? - Duration::from_secs(1);
        let mut request = service_account_key("late", 1);
        request.ttl = Some(prost_types::Duration {
            seconds: ttl.as_secs() as i64,
            nanos: ttl.subsec_nanos() as i32,
        });
        let making = tokio::spawn({
            let mut keys = keys.clone();
            let request = with_api_key(request, &maker.key);
            async move { keys.create_api_key(request).await }
        });
        until_a_call_waits_for_a_lock(&db, &mut holder, backend).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        holder.commit().await?;
        let made = making.await??.into_inner().api_key.unwrap();
        let expiry = made.expire_time.unwrap();
        assert!(
            (expiry.seconds, expiry.nanos) <= (makers_expiry.seconds, makers_expiry.nanos),
            "{backend}: {expiry:?} is after the maker's {makers_expiry:?}"
        );
        db.close().await;
        mesh.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_while_it_makes_a_key_leaves_no_key_behind() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        let mesh = builder.start().await?;
        let (admin, mut keys) = acme_admin(&mesh).await?;
        let leaked = create(
            &mut keys,
            with_bearer(service_account_key("ci", 10), &admin),
        )
        .await?;
        let leaked_name = leaked.api_key.unwrap().name;
        // The tenant's row is held, so the key's call, let in and judged, waits to count the
        // tenant's keys while the key is revoked.
        let db = mesh.unrestricted_db(Component::Identity).await?;
        let mut holder = hold_tenant_row(&db, "acme").await?;
        let making = tokio::spawn({
            let mut keys = keys.clone();
            let request = with_api_key(service_account_key("late", 5), &leaked.key);
            async move { keys.create_api_key(request).await }
        });
        until_a_call_waits_for_a_lock(&db, &mut holder, backend).await?;
        let revoking = tokio::spawn({
            let (mut keys, request) = (keys.clone(), revoke(&leaked_name, &admin));
            async move { keys.revoke_api_key(request).await }
        });
        if backend == "postgres" {
            // The revocation waits for nothing the test holds: it is done first.
            revoking.await??;
            holder.commit().await?;
            let refused = expect_code(making.await?, Code::Unauthenticated);
            assert_eq!(reason(&refused), "INVALID_API_KEY");
        } else {
            // One writer: whichever runs first, no live key is left made by the revoked one.
            holder.commit().await?;
            revoking.await??;
            match making.await? {
                Ok(made) => {
                    let name = made.into_inner().api_key.unwrap().name;
                    let state = state_of(&mut keys, &name, &admin).await?;
                    assert_eq!(state, ApiKeyState::Revoked, "{backend}");
                }
                // Refused once revoked: as a key no longer live, or (judged after the
                // revocation) as one holding none of the scopes it asks for.
                Err(refused) => assert!(
                    matches!(
                        refused.code(),
                        Code::Unauthenticated | Code::PermissionDenied
                    ),
                    "{refused:?}"
                ),
            }
        }
        db.close().await;
        mesh.stop().await?;
    }
    Ok(())
}

/// A platform operator's key may make keys in any tenant; revoking it revokes them there too
/// (on PostgreSQL, past the row-level scope a tenant's caller would have).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_an_operators_key_revokes_what_it_made_in_other_tenants() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        let mesh = builder.start().await?;
        let (admin, mut keys) = acme_admin(&mesh).await?;
        let mut operators = service_account_key("operators", 10);
        operators.parent = "tenants/system".into();
        if let Some(key) = operators.api_key.as_mut() {
            key.owner = "tenants/system".into();
        }
        let operators = create(&mut keys, mesh.as_operator(operators)).await?;
        let in_acme = create(
            &mut keys,
            with_api_key(service_account_key("from-operators", 5), &operators.key),
        )
        .await?;
        let (operators, in_acme) = (operators.api_key.unwrap(), in_acme.api_key.unwrap());
        assert_eq!(in_acme.created_with, operators.name, "{backend}");

        keys.revoke_api_key(mesh.as_operator(RevokeApiKeyRequest {
            name: operators.name.clone(),
            ..Default::default()
        }))
        .await?;
        let state = state_of(&mut keys, &in_acme.name, &admin).await?;
        assert_eq!(state, ApiKeyState::Revoked, "{backend}");
        let event = common::audit_event(&mesh, "identity.apikeys.revoke", |event| {
            event.resource == in_acme.name
        })
        .await?;
        assert_eq!(
            event.attributes["revoked_with"], operators.name,
            "{backend}"
        );
        mesh.stop().await?;
    }
    Ok(())
}

/// A key made with a key may retire it once it has taken its place: it stays, and every other
/// key made with the retired one goes with it. No other key may keep itself so, and without
/// asking to, a key cannot revoke the key it was made with. It stays made with the retired key:
/// revoking that again from another credential revokes it too (a key made with a leaked key
/// that retired it is still reached).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_retires_the_key_it_was_made_with_and_keeps_only_itself() -> anyhow::Result<()>
{
    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        let mesh = builder.start().await?;
        let (admin, mut keys) = acme_admin(&mesh).await?;
        let old = create(&mut keys, with_bearer(rotating_key("old", 10), &admin)).await?;
        let new = create(&mut keys, with_api_key(rotating_key("new", 9), &old.key)).await?;
        let other = create(&mut keys, with_api_key(rotating_key("other", 9), &old.key)).await?;
        let old_name = old.api_key.as_ref().unwrap().name.clone();
        let retire = |keep_calling_key| RevokeApiKeyRequest {
            name: old_name.clone(),
            keep_calling_key,
        };

        // The old key cannot keep itself, and the new one must ask to.
        let keeping_itself = keys
            .revoke_api_key(with_api_key(retire(true), &old.key))
            .await;
        let refused = expect_code(keeping_itself, Code::InvalidArgument);
        assert_eq!(violated_fields(&refused), ["keep_calling_key"], "{backend}");
        let unasked = keys
            .revoke_api_key(with_api_key(retire(false), &new.key))
            .await;
        let refused = expect_code(unasked, Code::FailedPrecondition);
        assert_eq!(reason(&refused), "WOULD_REVOKE_CALLER", "{backend}");
        // Refused, it revoked nothing, the other key made with the old one included.
        let other_name = other.api_key.as_ref().unwrap().name.clone();
        for name in [&old_name, &other_name] {
            expect_state(&mut keys, name, &admin, ApiKeyState::Active, backend).await?;
        }

        keys.revoke_api_key(with_api_key(retire(true), &new.key))
            .await?;
        let new_name = new.api_key.unwrap().name;
        for (name, state) in [
            (&old_name, ApiKeyState::Revoked),
            (&other_name, ApiKeyState::Revoked),
            (&new_name, ApiKeyState::Active),
        ] {
            assert_eq!(
                state_of(&mut keys, name, &admin).await?,
                state,
                "{backend}: {name}"
            );
        }
        let event = common::audit_event(&mesh, "identity.apikeys.revoke", |event| {
            event.resource == old_name
        })
        .await?;
        assert_eq!(event.attributes["kept_calling_key"], new_name, "{backend}");

        // Asked again (a retried call), it changes nothing.
        keys.revoke_api_key(with_api_key(retire(true), &new.key))
            .await?;
        expect_state(&mut keys, &new_name, &admin, ApiKeyState::Active, backend).await?;
        // Still made with the old key: revoking that again from elsewhere reaches it.
        keys.revoke_api_key(revoke(&old_name, &admin)).await?;
        expect_state(&mut keys, &new_name, &admin, ApiKeyState::Revoked, backend).await?;
        mesh.stop().await?;
    }
    Ok(())
}

/// A key kept below a key it retired is still reached from the keys above: someone holding a
/// leaked key who makes a key with it, and with that one a key which retires it, leaves
/// nothing behind once the leaked key is revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_kept_below_a_retired_key_is_revoked_with_the_keys_above() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        let mesh = builder.start().await?;
        let (admin, mut keys) = acme_admin(&mesh).await?;
        let leaked = create(&mut keys, with_bearer(rotating_key("leaked", 10), &admin)).await?;
        let middle = create(
            &mut keys,
            with_api_key(rotating_key("middle", 9), &leaked.key),
        )
        .await?;
        let hidden = create(
            &mut keys,
            with_api_key(rotating_key("hidden", 8), &middle.key),
        )
        .await?;
        let retire = RevokeApiKeyRequest {
            name: middle.api_key.unwrap().name,
            keep_calling_key: true,
        };
        keys.revoke_api_key(with_api_key(retire, &hidden.key))
            .await?;
        let hidden_name = hidden.api_key.unwrap().name;
        expect_state(
            &mut keys,
            &hidden_name,
            &admin,
            ApiKeyState::Active,
            backend,
        )
        .await?;
        // Below the leaked key still, the kept key cannot revoke it unwarned.
        let leaked_name = leaked.api_key.unwrap().name;
        let from_below = RevokeApiKeyRequest {
            name: leaked_name.clone(),
            keep_calling_key: false,
        };
        let refused = keys
            .revoke_api_key(with_api_key(from_below, &hidden.key))
            .await;
        let refused = expect_code(refused, Code::FailedPrecondition);
        assert_eq!(reason(&refused), "WOULD_REVOKE_CALLER", "{backend}");
        expect_state(
            &mut keys,
            &leaked_name,
            &admin,
            ApiKeyState::Active,
            backend,
        )
        .await?;

        keys.revoke_api_key(revoke(&leaked_name, &admin)).await?;
        expect_state(
            &mut keys,
            &hidden_name,
            &admin,
            ApiKeyState::Revoked,
            backend,
        )
        .await?;
        mesh.stop().await?;
    }
    Ok(())
}

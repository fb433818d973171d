//! Users and API keys are listed in creation order, paged by (create time, id): a new one is
//! stamped once its write holds the tenant's row (the plan limit's count locks it), so a
//! tenant's users, and its keys, are stamped in the order they commit, and a list paging
//! through them never has passed one's place before it commits.

mod common;
mod identity_kit;
mod keys_kit;

use std::{
    future::Future,
    time::{SystemTime, UNIX_EPOCH},
};

use common::{hold_tenant_row, new_tenant, until_a_call_waits_for_a_lock};
use identity_kit::new_user;
use keys_kit::key_request;
use palisade_proto::palisade::identity::v1::{
    Plan, api_key_service_client::ApiKeyServiceClient, tenant_service_client::TenantServiceClient,
    user_service_client::UserServiceClient,
};
use palisade_testkit::{Component, Mesh};

fn micros_since_epoch(time: SystemTime) -> i64 {
    let since = time.duration_since(UNIX_EPOCH).expect("after 1970");
    i64::try_from(since.as_micros()).expect("within i64")
}

/// Holds acme's row (as another creation in acme holds it) while `create` runs, and lets go
/// after noting the time. Returns that time and the create time `create` answered with (micros).
/// On PostgreSQL the test lets go once the creation waits for the row, so the order is tested
/// every time; on SQLite after a pause.
async fn created_while_acme_is_held<F>(
    mesh: &Mesh,
    backend: &str,
    create: F,
) -> anyhow::Result<(i64, i64)>
where
    F: Future<Output = anyhow::Result<prost_types::Timestamp>> + Send + 'static,
{
    let db = mesh.unrestricted_db(Component::Identity).await?;
    let mut holding = hold_tenant_row(&db, "acme").await?;
    let creating = tokio::spawn(create);
    until_a_call_waits_for_a_lock(&db, &mut holding, backend).await?;
    let released = micros_since_epoch(SystemTime::now());
    holding.commit().await?;
    let stamped = creating.await??;
    db.close().await;
    Ok((
        released,
        stamped.seconds * 1_000_000 + i64::from(stamped.nanos / 1_000),
    ))
}

/// A user's and a key's create time come after the tenant's row was let go, not from when
/// their requests were read (for a user, before its password was hashed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_keys_are_stamped_when_their_write_holds_the_tenant() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        let mesh = builder.start().await?;
        TenantServiceClient::new(mesh.gateway())
            .create_tenant(mesh.as_operator(new_tenant("acme", "Acme", Plan::Professional)))
            .await?;

        let mut users = UserServiceClient::new(mesh.gateway());
        let request = mesh.as_operator(new_user("acme", "ada@acme.example", &["viewer"]));
        let (released, stamped) = created_while_acme_is_held(&mesh, backend, async move {
            let user = users.create_user(request).await?.into_inner();
            Ok(user.create_time.expect("a create time"))
        })
        .await?;
        assert!(
            stamped >= released,
            "{backend}: user stamped {stamped}, before the tenant's row was let go at {released}"
        );

        let mut keys = ApiKeyServiceClient::new(mesh.gateway());
        let mut request = key_request("acme", "nightly-export", &["identity.users.list"], 30);
        if let Some(key) = request.api_key.as_mut() {
            key.owner = "tenants/acme".into(); // a service-account key
        }
        let request = mesh.as_operator(request);
        let (released, stamped) = created_while_acme_is_held(&mesh, backend, async move {
            let created = keys.create_api_key(request).await?.into_inner();
            let key = created.api_key.expect("the key");
            // A ttl counts from the stamp.
            let (create, expire) = (key.create_time.unwrap(), key.expire_time.unwrap());
            assert_eq!(
                (expire.seconds - create.seconds, expire.nanos),
                (30 * 86_400, create.nanos)
            );
            Ok(create)
        })
        .await?;
        assert!(
            stamped >= released,
            "{backend}: key stamped {stamped}, before the tenant's row was let go at {released}"
        );
        mesh.stop().await?;
    }
    Ok(())
}

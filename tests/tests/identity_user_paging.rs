//! Users are listed in creation order, paged by (create time, id): a new user is stamped once
//! its write holds the tenant's row, so a tenant's users are stamped in the order they commit
//! and a list paging through them never has passed a user's place before the user commits.

mod common;
mod identity_kit;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{new_tenant, until_a_call_waits_for_a_lock};
use identity_kit::new_user;
use palisade_proto::palisade::identity::v1::{
    Plan, tenant_service_client::TenantServiceClient, user_service_client::UserServiceClient,
};
use palisade_testkit::{Component, Mesh};

fn micros_since_epoch(time: SystemTime) -> i64 {
    let since = time.duration_since(UNIX_EPOCH).expect("after 1970");
    i64::try_from(since.as_micros()).expect("within i64")
}

/// The test holds acme's row (as another user's creation holds it) while a user is created,
/// and lets go after noting the time: the new user's create time comes after that, not from
/// when its request was read (before its password was hashed). On PostgreSQL the test lets go
/// once the creation waits for the row, so the order is tested every time; on SQLite after a
/// pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_is_stamped_when_its_write_holds_the_tenant() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        let mesh = builder.start().await?;
        TenantServiceClient::new(mesh.gateway())
            .create_tenant(mesh.as_operator(new_tenant("acme", "Acme", Plan::Professional)))
            .await?;
        let db = mesh.unrestricted_db(Component::Identity).await?;
        let mut holding = db.begin().await?;
        sqlx::query("UPDATE tenants SET update_time = update_time WHERE id = 'acme'")
            .execute(&mut *holding)
            .await?;
        let creating = tokio::spawn({
            let mut users = UserServiceClient::new(mesh.gateway());
            let request = mesh.as_operator(new_user("acme", "ada@acme.example", &["viewer"]));
            async move { users.create_user(request).await }
        });
        until_a_call_waits_for_a_lock(&db, &mut holding, backend).await?;
        let released = micros_since_epoch(SystemTime::now());
        holding.commit().await?;
        let user = creating.await??.into_inner();
        let stamped = user.create_time.expect("a create time");
        let stamped = stamped.seconds * 1_000_000 + i64::from(stamped.nanos / 1_000);
        assert!(
            stamped >= released,
            "{backend}: stamped {stamped}, before the tenant's row was let go at {released}"
        );
        db.close().await;
        mesh.stop().await?;
    }
    Ok(())
}

//! A sandbox mesh dropped without `Mesh::stop` (a test that panicked past it) still drops its
//! PostgreSQL role and schemas, so failed runs leave nothing behind on the shared server. On a
//! SQLite-only run there is nothing to leave and nothing to check.

use palisade_db::{Db, DbConfig};
use palisade_testkit::{Mesh, POSTGRES_ENV};

async fn sandbox_roles(admin: &Db) -> anyhow::Result<i64> {
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'palisade\\_svc\\_%'")
            .fetch_one(admin.pool())
            .await?;
    Ok(count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_dropped_without_stop_leaves_no_role_behind() -> anyhow::Result<()> {
    let Ok(url) = std::env::var(POSTGRES_ENV) else {
        return Ok(());
    };
    let admin = Db::connect(&DbConfig::postgres(&url, None)).await?;
    let before = sandbox_roles(&admin).await?;
    let mesh = Mesh::builder().with_postgres(url).start().await?;
    assert_eq!(sandbox_roles(&admin).await?, before + 1);
    drop(mesh);
    assert_eq!(sandbox_roles(&admin).await?, before);
    admin.close().await;
    Ok(())
}

//! Row-level security on PostgreSQL (DESIGN §4.5): beneath the store code, the database itself
//! keeps tenants apart. Queries here deliberately omit every tenant filter, run as the ordinary
//! role the services connect as, inside the scope a store opens for one tenant — and still see
//! only that tenant's rows. Without a scope they see none; an administrator sees them all,
//! which proves the rows exist. PostgreSQL only: SQLite has no such wall.

mod common;

use common::{audit_events_arrived, new_tenant};
use palisade_db::{Db, Scope};
use palisade_proto::palisade::identity::v1::{Plan, tenant_service_client::TenantServiceClient};
use palisade_testkit::{Component, Mesh, with_api_key};
use sqlx::Row;

/// Every `tenant_id` an unfiltered query over `table` returns in `scope` (`None`: no scope).
async fn visible_tenants(db: &Db, scope: Option<Scope<'_>>, table: &str) -> Vec<String> {
    let sql = format!("SELECT DISTINCT tenant_id FROM {table} ORDER BY tenant_id");
    let rows = match scope {
        Some(scope) => {
            let mut tx = db.read_in(scope).await.expect("scoped transaction");
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_all(&mut *tx)
                .await
                .expect("query");
            tx.commit().await.expect("commit");
            rows
        }
        None => sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(db.pool())
            .await
            .expect("query"),
    };
    rows.iter()
        .map(|row| row.try_get("tenant_id").expect("tenant_id"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_without_a_tenant_filter_sees_only_its_scope() -> anyhow::Result<()> {
    let Ok(url) = std::env::var(palisade_testkit::POSTGRES_ENV) else {
        eprintln!(
            "skipped: row-level security needs PostgreSQL ({} unset)",
            palisade_testkit::POSTGRES_ENV
        );
        return Ok(());
    };
    let mesh = Mesh::builder().with_postgres(url).start().await?;
    let mut tenants = TenantServiceClient::new(mesh.gateway());
    for id in ["acme", "globex"] {
        tenants
            .create_tenant(with_api_key(
                new_tenant(id, id, Plan::Professional),
                mesh.operator_key(),
            ))
            .await?;
        // Creating a tenant leaves rows in identity and, through the outbox, in compliance.
        audit_events_arrived(&mesh, id).await?;
    }

    for (component, tables) in [(
        Component::Compliance,
        &["audit_events", "audit_chain_heads"][..],
    )] {
        let service = mesh.service_db(component).await?;
        assert!(
            !service.bypasses_row_security().await?,
            "the services' role must not bypass RLS"
        );
        let admin = mesh.admin_db(component).await?.expect("postgres");
        for table in tables {
            let everything = visible_tenants(&admin, None, table).await;
            assert!(
                everything.contains(&"acme".to_owned())
                    && everything.contains(&"globex".to_owned()),
                "{table}: the administrator sees every tenant, got {everything:?}"
            );
            assert_eq!(
                visible_tenants(&service, Some(Scope::Tenant("acme")), table).await,
                ["acme"],
                "{table}: acme's scope sees only acme"
            );
            assert!(
                visible_tenants(&service, None, table).await.is_empty(),
                "{table}: no scope, no rows"
            );
            assert_eq!(
                visible_tenants(&service, Some(Scope::AllTenants), table).await,
                everything,
                "{table}: an explicit all-tenants scope sees every tenant"
            );
        }
        service.close().await;
        admin.close().await;
    }
    mesh.stop().await
}

//! Row-level security on PostgreSQL (DESIGN §4.5): beneath the store code, the database itself
//! keeps tenants apart. Queries here deliberately omit every tenant filter, run as the ordinary
//! role the services connect as, inside the scope a store opens for one tenant — and still see
//! only that tenant's rows — both in an explicitly scoped transaction and, as store code runs
//! them, as plain queries on the pool while handling a tenant's call. Outside any call, and in
//! a call that asserts no tenant, they see none unless the handler declares a scope
//! (`in_scope`); an administrator sees them all, which proves the rows exist. PostgreSQL only:
//! SQLite has no such wall.

mod common;

use common::{audit_events_arrived, new_tenant};
use palisade_db::{Db, Scope, in_scope};
use palisade_proto::palisade::identity::v1::{
    CreateUserRequest, LoginRequest, Plan, ReportUsageRequest, TenantCalls, User,
    auth_service_client::AuthServiceClient, edge_service_client::EdgeServiceClient,
    tenant_service_client::TenantServiceClient, user_service_client::UserServiceClient,
};
use palisade_tenancy::{
    Principal, PrincipalKind, RequestId, TenantContext, TenantId, with_context,
};
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
        UserServiceClient::new(mesh.gateway())
            .create_user(with_api_key(
                CreateUserRequest {
                    parent: format!("tenants/{id}"),
                    user: Some(User {
                        email: format!("ada@{id}.example"),
                        display_name: "Ada".into(),
                        roles: vec!["viewer".into()],
                        ..User::default()
                    }),
                    password: "correct horse battery staple".into(),
                },
                mesh.operator_key(),
            ))
            .await?;
        EdgeServiceClient::new(mesh.direct(Component::Identity, "gateway").await?)
            .report_usage(ReportUsageRequest {
                batch_id: format!("rls-{id}"),
                calls: vec![TenantCalls {
                    tenant_id: id.to_owned(),
                    api_calls: 1,
                    count_time: None,
                }],
            })
            .await?;
        // A login attempt on an email that matches no user leaves a row too.
        let unknown_email = AuthServiceClient::new(mesh.gateway())
            .login(LoginRequest {
                tenant_id: id.to_owned(),
                email: format!("nobody@{id}.example"),
                password: "a guess at a password".into(),
            })
            .await;
        assert!(unknown_email.is_err());
    }

    for (component, tables) in [
        (
            Component::Compliance,
            &["audit_events", "audit_chain_heads"][..],
        ),
        (
            Component::Identity,
            &[
                "users",
                "user_roles",
                "tenant_usage",
                "unknown_email_attempts",
            ][..],
        ),
    ] {
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
            // What store code does: a plain query on the pool while handling acme's call.
            let acme = TenantContext {
                tenant_id: TenantId::parse("acme")?,
                principal: Some(Principal::new("someone", PrincipalKind::User)),
            };
            let seen = with_context(
                Some(acme.clone()),
                RequestId::generate(),
                visible_tenants(&service, None, table),
            )
            .await;
            assert_eq!(seen, ["acme"], "{table}: an acme call sees only acme");
            // A public or mesh-internal call names no tenant: its handler must say which rows
            // it works on, or it finds none.
            let unscoped = visible_tenants(&service, None, table);
            let seen = with_context(None, RequestId::generate(), unscoped).await;
            assert!(
                seen.is_empty(),
                "{table}: a call naming no tenant saw {seen:?}"
            );
            let declared = in_scope(Scope::AllTenants, visible_tenants(&service, None, table));
            let seen = with_context(None, RequestId::generate(), declared).await;
            assert_eq!(seen, everything, "{table}: a declared all-tenants scope");
            let declared = in_scope(
                Scope::Tenant("globex"),
                visible_tenants(&service, None, table),
            );
            let seen = with_context(None, RequestId::generate(), declared).await;
            assert_eq!(seen, ["globex"], "{table}: a declared tenant scope");
            // A declared scope holds whatever the call asserts (`Check` names its principal's
            // tenant, whoever asks).
            let declared = in_scope(
                Scope::Tenant("globex"),
                visible_tenants(&service, None, table),
            );
            let seen = with_context(Some(acme.clone()), RequestId::generate(), declared).await;
            assert_eq!(seen, ["globex"], "{table}: declared inside acme's call");
            // A platform operator's call sees every tenant; a call naming a tenant without a
            // principal (a public call on a tenant's host name) sees that tenant.
            let operator = TenantContext {
                tenant_id: TenantId::system(),
                principal: Some(Principal::new("operator", PrincipalKind::User)),
            };
            let anonymous = TenantContext {
                principal: None,
                ..acme.clone()
            };
            for (context, expected) in [
                (operator, everything.clone()),
                (anonymous, vec!["acme".to_owned()]),
            ] {
                let unscoped = visible_tenants(&service, None, table);
                let seen = with_context(Some(context.clone()), RequestId::generate(), unscoped);
                assert_eq!(seen.await, expected, "{table}: {context:?}");
            }
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

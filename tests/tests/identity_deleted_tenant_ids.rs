//! A deleted tenant's id is never given to a new tenant: compliance keeps the deleted tenant's
//! audit log under that id, and a newcomer holding it would read its predecessor's events.
//! `CreateTenant` refuses the id (ALREADY_EXISTS) and writes nothing, also when it races the
//! deletion; a restore from the tenant's export is the same tenant coming back and still works,
//! as often as it is deleted again. A deleted tenant's domain is not kept: it routes to
//! whichever tenant takes it next.

mod common;
mod identity_kit;
mod tenant_data_kit;

use std::time::Duration;

use common::{expect_code, new_tenant, reason, until_a_call_waits_for_a_lock};
use identity_kit::{login, login_request, state_change};
use palisade_proto::palisade::{
    compliance::v1::{
        AuditEvent, ListAuditEventsRequest, audit_service_client::AuditServiceClient,
    },
    identity::v1::{
        CreateTenantRequest, DeleteTenantRequest, ListTenantsRequest, Plan, ResolveTenantRequest,
        TenantState, auth_service_client::AuthServiceClient,
        edge_service_client::EdgeServiceClient, resolve_tenant_request::Key,
        tenant_service_client::TenantServiceClient,
    },
};
use palisade_testkit::{Component, Mesh, eventually};
use tonic::Code;

use tenant_data_kit::{acme_exists, delete_acme, exported_and_deleted, import};

/// `CreateTenant` of `acme` by the operator, refused because acme was deleted.
async fn refused_reuse(mesh: &Mesh, request: CreateTenantRequest) -> anyhow::Result<()> {
    let created = TenantServiceClient::new(mesh.gateway())
        .create_tenant(mesh.as_operator(request))
        .await;
    let status = expect_code(created, Code::AlreadyExists);
    assert_eq!(reason(&status), "ALREADY_EXISTS");
    assert!(
        status.message().contains("deleted tenant"),
        "says why: {}",
        status.message()
    );
    Ok(())
}

/// Acme's audit events with `action`, once `arrived` holds for them (events travel through
/// the outbox).
async fn acme_events(
    mesh: &Mesh,
    action: &str,
    arrived: impl Fn(&[AuditEvent]) -> bool,
) -> anyhow::Result<Vec<AuditEvent>> {
    let audit = AuditServiceClient::new(mesh.gateway());
    eventually(Duration::from_secs(10), || {
        let mut audit = audit.clone();
        let request = mesh.as_operator(ListAuditEventsRequest {
            parent: "tenants/acme".into(),
            filter: format!("action = {action:?}"),
            ..Default::default()
        });
        let arrived = &arrived;
        async move {
            let events = audit.list_audit_events(request).await?.into_inner();
            Ok(arrived(&events.audit_events).then_some(events.audit_events))
        }
    })
    .await
}

/// How many rows retire acme's id (0 or 1), read beneath the API.
async fn retired(mesh: &Mesh) -> anyhow::Result<i64> {
    let db = mesh.unrestricted_db(Component::Identity).await?;
    let count = sqlx::query_scalar("SELECT COUNT(*) FROM deleted_tenants WHERE id = 'acme'")
        .fetch_one(db.pool())
        .await?;
    db.close().await;
    Ok(count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_tenants_id_goes_to_no_new_tenant_but_a_restore_brings_it_back()
-> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let (mesh, mut compliance, chunks) = exported_and_deleted(builder).await?;
        let mut tenants = TenantServiceClient::new(mesh.gateway());

        refused_reuse(&mesh, new_tenant("acme", "Acme again", Plan::Free)).await?;
        // Nothing was written: no tenant, nobody to sign in, nothing in the list.
        assert!(!acme_exists(&mesh).await?);
        let listed = tenants
            .list_tenants(mesh.as_operator(ListTenantsRequest::default()))
            .await?
            .into_inner();
        assert!(
            listed.tenants.iter().all(|t| t.name != "tenants/acme"),
            "{listed:?}"
        );
        let login_refused = AuthServiceClient::new(mesh.gateway())
            .login(login_request("acme", "ada@acme.example"))
            .await;
        expect_code(login_refused, Code::Unauthenticated);
        // Other ids are as free as ever.
        tenants
            .create_tenant(mesh.as_operator(new_tenant("acme-2", "Acme 2", Plan::Free)))
            .await?;

        // The restore is acme itself: it comes back under its id, to its own audit log.
        let restored = import(&mut compliance, chunks.clone()).await?;
        assert_eq!(restored.tenant, "tenants/acme");
        assert!(!restored.replaced);
        login(&mesh, "acme", "ada@acme.example").await?;
        // Once the restore's event has arrived, the refused create would have too (the outbox
        // ships in order): the log holds the one create of the original tenant.
        acme_events(&mesh, "identity.tenantdata.import", |events| {
            !events.is_empty()
        })
        .await?;
        let creates = acme_events(&mesh, "identity.tenants.create", |_| true).await?;
        assert_eq!(creates.len(), 1, "{creates:?}");
        assert_eq!(
            retired(&mesh).await?,
            0,
            "a live tenant's id is not retired"
        );

        // Deleted again, the id is retired again, and a restore still brings the tenant back.
        delete_acme(&mesh).await?;
        assert_eq!(retired(&mesh).await?, 1);
        refused_reuse(&mesh, new_tenant("acme", "Acme again", Plan::Free)).await?;
        import(&mut compliance, chunks).await?;
        login(&mesh, "acme", "ada@acme.example").await?;
        mesh.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_tenants_domain_routes_to_the_tenant_that_takes_it() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let mut tenants = TenantServiceClient::new(mesh.gateway());
        let with_domain = |id: &str, domain: &str| {
            let mut request = new_tenant(id, id, Plan::Standard);
            if let Some(tenant) = &mut request.tenant {
                tenant.domain = domain.to_owned();
            }
            request
        };
        tenants
            .create_tenant(mesh.as_operator(with_domain("acme", "shop.example.com")))
            .await?;
        tenants
            .update_tenant(mesh.as_operator(state_change("acme", TenantState::Inactive)))
            .await?;
        tenants
            .delete_tenant(mesh.as_operator(DeleteTenantRequest {
                name: "tenants/acme".into(),
            }))
            .await?;

        refused_reuse(&mesh, with_domain("acme", "")).await?;
        tenants
            .create_tenant(mesh.as_operator(with_domain("globex", "shop.example.com")))
            .await?;
        let resolved = EdgeServiceClient::new(mesh.direct(Component::Identity, "gateway").await?)
            .resolve_tenant(ResolveTenantRequest {
                key: Some(Key::Domain("shop.example.com".into())),
            })
            .await?
            .into_inner();
        assert_eq!(resolved.tenant_id, "globex");
        mesh.stop().await?;
    }
    Ok(())
}

/// A create that arrives while the deletion of its id is still in progress waits for the
/// deleted row and is refused once the deletion commits: it must not judge the id free before
/// the deletion that retires it is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_racing_the_deletion_of_its_id_is_refused() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        let mesh = builder.start().await?;
        let mut tenants = TenantServiceClient::new(mesh.gateway());
        tenants
            .create_tenant(mesh.as_operator(new_tenant("acme", "Acme", Plan::Free)))
            .await?;
        tenants
            .update_tenant(mesh.as_operator(state_change("acme", TenantState::Suspended)))
            .await?;

        // What `DeleteTenant`'s transaction writes for a tenant with nothing in it, held open.
        let db = mesh.unrestricted_db(Component::Identity).await?;
        let mut deleting = db.begin().await?;
        sqlx::query("DELETE FROM tenants WHERE id = 'acme'")
            .execute(&mut *deleting)
            .await?;
        sqlx::query("INSERT INTO deleted_tenants (id, delete_time) VALUES ('acme', 1)")
            .execute(&mut *deleting)
            .await?;
        let creating = tokio::spawn({
            let mut tenants = tenants.clone();
            let request = mesh.as_operator(new_tenant("acme", "Acme again", Plan::Free));
            async move { tenants.create_tenant(request).await }
        });
        until_a_call_waits_for_a_lock(&db, &mut deleting, backend).await?;
        deleting.commit().await?;
        let refused = expect_code(creating.await?, Code::AlreadyExists);
        assert!(
            refused.message().contains("deleted tenant"),
            "{backend}: {refused:?}"
        );
        assert!(!acme_exists(&mesh).await?, "{backend}");
        db.close().await;
        mesh.stop().await?;
    }
    Ok(())
}

//! Tenant data export/import: only compliance may call it (the gateway and other components are
//! refused), missing and malformed tenants are refused, and a large tenant streams in batches.

mod common;
mod identity_kit;
mod tenant_data_kit;

use common::{expect_code, new_tenant, reason, violated_fields};
use identity_kit::{list_users, login, new_user};
use palisade_proto::palisade::identity::v1::{
    ExportTenantDataRequest, Plan, TenantDataChunk, tenant_data_chunk::Chunk,
    tenant_data_record::Record, tenant_data_service_client::TenantDataServiceClient,
    tenant_service_client::TenantServiceClient, user_service_client::UserServiceClient,
};
use palisade_testkit::{Component, Mesh};
use tonic::Code;

use tenant_data_kit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_compliance_exports_and_imports() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = start(builder).await?;
        TenantServiceClient::new(mesh.gateway())
            .create_tenant(mesh.as_operator(new_tenant("acme", "Acme", Plan::Free)))
            .await?;
        let request = || ExportTenantDataRequest {
            tenant: "tenants/acme".into(),
        };

        // The gateway never routes either method, whoever asks.
        let mut through_gateway = TenantDataServiceClient::new(mesh.gateway());
        let exported = through_gateway
            .export_tenant_data(mesh.as_operator(request()))
            .await;
        assert_eq!(
            reason(&expect_code(exported, Code::PermissionDenied)),
            "INTERNAL_METHOD"
        );
        let imported = through_gateway
            .import_tenant_data(
                mesh.as_operator(futures::stream::iter(Vec::<TenantDataChunk>::new())),
            )
            .await;
        assert_eq!(
            reason(&expect_code(imported, Code::PermissionDenied)),
            "INTERNAL_METHOD"
        );
        // Another mesh component is refused by identity itself.
        let mut observability =
            TenantDataServiceClient::new(mesh.direct(Component::Identity, "observability").await?);
        let exported = observability.export_tenant_data(request()).await;
        assert_eq!(
            reason(&expect_code(exported, Code::PermissionDenied)),
            "INTERNAL_METHOD"
        );
        let imported = import(&mut observability, Vec::new()).await;
        assert_eq!(
            reason(&expect_code(imported, Code::PermissionDenied)),
            "INTERNAL_METHOD"
        );

        // Compliance exports any tenant that exists, the system tenant included; it never
        // imports the system tenant.
        let mut compliance = as_compliance(&mesh).await?;
        let missing = export(&mut compliance, "tenants/globex").await;
        assert_eq!(reason(&expect_code(missing, Code::NotFound)), "NOT_FOUND");
        let malformed = export(&mut compliance, "acme").await;
        assert_eq!(
            violated_fields(&expect_code(malformed, Code::InvalidArgument)),
            ["tenant"]
        );
        let system = export(&mut compliance, "tenants/system").await?;
        let Some(Chunk::Trailer(trailer)) = &system.last().expect("chunks").chunk else {
            panic!("a trailer last")
        };
        assert_eq!(trailer.counts, counts(1, 0, 0, 1), "the operator key");
        let mut replacing = system.clone();
        if let Some(Chunk::Header(header)) = &mut replacing[0].chunk {
            header.replace = true;
        }
        let refused = import(&mut compliance, replacing).await;
        assert_eq!(
            reason(&expect_code(refused, Code::FailedPrecondition)),
            "SYSTEM_TENANT"
        );
        // The operator key of the refused import still works.
        UserServiceClient::new(mesh.gateway())
            .list_users(mesh.as_operator(list_users("acme")))
            .await?;
        mesh.stop().await?;
    }
    Ok(())
}

/// A user in a state this server does not know (written by a newer version) would be
/// exported as unspecified, which no import restores: the export is refused before anything
/// leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_holding_a_user_in_an_unknown_state_is_not_exported() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = start(builder).await?;
        TenantServiceClient::new(mesh.gateway())
            .create_tenant(mesh.as_operator(new_tenant("acme", "Acme", Plan::Free)))
            .await?;
        UserServiceClient::new(mesh.gateway())
            .create_user(mesh.as_operator(new_user("acme", "ada@acme.example", &["admin"])))
            .await?;
        let db = mesh.unrestricted_db(Component::Identity).await?;
        sqlx::query("UPDATE users SET state = 'frozen' WHERE tenant_id = 'acme'")
            .execute(db.pool())
            .await?;
        db.close().await;
        let mut compliance = as_compliance(&mesh).await?;
        let refused = compliance
            .export_tenant_data(ExportTenantDataRequest {
                tenant: "tenants/acme".into(),
            })
            .await;
        assert_eq!(
            reason(&expect_code(refused, Code::FailedPrecondition)),
            "UNKNOWN_USER_STATE"
        );
        mesh.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_tenant_streams_in_batches() -> anyhow::Result<()> {
    const PLANTED: usize = 1203;
    for builder in Mesh::each_backend() {
        let mesh = start(builder).await?;
        TenantServiceClient::new(mesh.gateway())
            .create_tenant(mesh.as_operator(new_tenant("acme", "Acme", Plan::Enterprise)))
            .await?;
        UserServiceClient::new(mesh.gateway())
            .create_user(mesh.as_operator(new_user("acme", "ada@acme.example", &["admin"])))
            .await?;
        // Users planted beneath the API (hashing 1203 passwords would take minutes), all with
        // ada's password and one creation time, so pages must also break ties by id.
        let db = mesh.unrestricted_db(Component::Identity).await?;
        let hash: String =
            sqlx::query_scalar("SELECT password_hash FROM users WHERE tenant_id = 'acme'")
                .fetch_one(db.pool())
                .await?;
        let mut tx = db.pool().begin().await?;
        for n in 0..PLANTED {
            let id = uuid::Uuid::now_v7().to_string();
            sqlx::query(
                "INSERT INTO users (id, tenant_id, email, display_name, state, password_hash, \
                 create_time, update_time) VALUES ($1, 'acme', $2, $3, 'active', $4, 1, 1)",
            )
            .bind(&id)
            .bind(format!("u{n}@acme.example"))
            .bind(format!("User {n}"))
            .bind(&hash)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO user_roles (user_id, tenant_id, role) VALUES ($1, 'acme', 'viewer')",
            )
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        db.close().await;

        let mut compliance = as_compliance(&mesh).await?;
        let chunks = export(&mut compliance, "tenants/acme").await?;
        let sizes: Vec<usize> = chunks
            .iter()
            .filter_map(|chunk| match &chunk.chunk {
                Some(Chunk::Batch(batch)) => Some(batch.records.len()),
                _ => None,
            })
            .collect();
        // The tenant and 1204 users: 1205 records.
        assert_eq!(sizes, [500, 500, 205]);
        let mut emails: Vec<String> = chunks
            .iter()
            .filter_map(|chunk| match &chunk.chunk {
                Some(Chunk::Batch(batch)) => Some(batch.records.clone()),
                _ => None,
            })
            .flatten()
            .filter_map(|record| match record.record {
                Some(Record::User(user)) => Some(user.email),
                _ => None,
            })
            .collect();
        emails.sort();
        emails.dedup();
        assert_eq!(emails.len(), PLANTED + 1, "every user once");

        delete_acme(&mesh).await?;
        let restored = import(&mut compliance, chunks).await?;
        assert_eq!(restored.counts, counts(1, 0, PLANTED as i64 + 1, 0));
        login(&mesh, "acme", "u1202@acme.example").await?;
        mesh.stop().await?;
    }
    Ok(())
}

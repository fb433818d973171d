//! Helpers shared by the `identity_tenant_data` suites (included with `mod tenant_data_kit;`).

#![allow(dead_code)]

use std::time::Duration;

use crate::common::new_tenant;
use crate::identity_kit::{list_users, login, new_user, state_change, with_bearer};
use palisade_proto::palisade::identity::v1::{
    ApiKey, AssignRoleRequest, CreateApiKeyRequest, CreateRoleRequest, DeleteTenantRequest,
    ExportTenantDataRequest, GetTenantRequest, ImportTenantDataResponse, Plan, Role,
    TenantDataChunk, TenantDataCounts, TenantState, VerifyApiKeyRequest,
    api_key_service_client::ApiKeyServiceClient, role_service_client::RoleServiceClient,
    tenant_data_service_client::TenantDataServiceClient,
    tenant_service_client::TenantServiceClient, user_service_client::UserServiceClient,
};
use palisade_testkit::{Component, Mesh};
use tonic::{Code, Status, transport::Channel};

pub const READ_USERS: &[&str] = &["identity.users.get", "identity.users.list"];

/// A mesh whose gateway forgets tenants and keys quickly, so a deleted and restored tenant is
/// seen as it is now.
pub async fn start(builder: palisade_testkit::MeshBuilder) -> anyhow::Result<Mesh> {
    builder
        .with_tenant_cache_ttl(Duration::from_millis(200))
        .with_api_key_cache_ttl(Duration::from_millis(200))
        .start()
        .await
}

pub async fn as_compliance(mesh: &Mesh) -> anyhow::Result<TenantDataServiceClient<Channel>> {
    Ok(TenantDataServiceClient::new(
        mesh.direct(Component::Identity, "compliance").await?,
    ))
}

pub async fn export(
    client: &mut TenantDataServiceClient<Channel>,
    tenant: &str,
) -> Result<Vec<TenantDataChunk>, Status> {
    let mut stream = client
        .export_tenant_data(ExportTenantDataRequest {
            tenant: tenant.to_owned(),
        })
        .await?
        .into_inner();
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.message().await? {
        chunks.push(chunk);
    }
    Ok(chunks)
}

pub async fn import(
    client: &mut TenantDataServiceClient<Channel>,
    chunks: Vec<TenantDataChunk>,
) -> Result<ImportTenantDataResponse, Status> {
    client
        .import_tenant_data(futures::stream::iter(chunks))
        .await
        .map(tonic::Response::into_inner)
}

pub fn counts(tenants: i64, roles: i64, users: i64, api_keys: i64) -> Option<TenantDataCounts> {
    Some(TenantDataCounts {
        tenants,
        roles,
        users,
        api_keys,
    })
}

/// Acme: a custom role, three users (one holding the custom role from creation, one given it
/// later), and an API key its admin made for itself. Returns the key.
pub async fn populate(mesh: &Mesh) -> anyhow::Result<String> {
    TenantServiceClient::new(mesh.gateway())
        .create_tenant(mesh.as_operator(new_tenant("acme", "Acme", Plan::Professional)))
        .await?;
    RoleServiceClient::new(mesh.gateway())
        .create_role(mesh.as_operator(CreateRoleRequest {
            parent: "tenants/acme".into(),
            role_id: "user-reader".into(),
            role: Some(Role {
                display_name: "User reader".into(),
                permissions: READ_USERS.iter().map(|p| (*p).to_owned()).collect(),
                ..Role::default()
            }),
        }))
        .await?;
    let mut users = UserServiceClient::new(mesh.gateway());
    for (email, roles) in [
        ("ada@acme.example", &["admin"][..]),
        ("bob@acme.example", &["user-reader"][..]),
        ("cyd@acme.example", &["viewer"][..]),
    ] {
        users
            .create_user(mesh.as_operator(new_user("acme", email, roles)))
            .await?;
    }
    let cyd = users
        .list_users(mesh.as_operator(list_users("acme")))
        .await?
        .into_inner()
        .users
        .into_iter()
        .find(|user| user.email == "cyd@acme.example")
        .expect("cyd");
    users
        .assign_role(mesh.as_operator(AssignRoleRequest {
            name: cyd.name,
            role: "user-reader".into(),
        }))
        .await?;
    let (ada, _) = login(mesh, "acme", "ada@acme.example").await?;
    let key = ApiKeyServiceClient::new(mesh.gateway())
        .create_api_key(with_bearer(
            CreateApiKeyRequest {
                parent: "tenants/acme".into(),
                api_key: Some(ApiKey {
                    display_name: "ci".into(),
                    scopes: READ_USERS.iter().map(|s| (*s).to_owned()).collect(),
                    ..ApiKey::default()
                }),
                ttl: Some(prost_types::Duration {
                    seconds: 86_400,
                    nanos: 0,
                }),
            },
            &ada,
        ))
        .await?
        .into_inner()
        .key;
    Ok(key)
}

/// Acme populated, exported (the stream is returned, with compliance's client) and deleted:
/// where a restore starts.
pub async fn exported_and_deleted(
    builder: palisade_testkit::MeshBuilder,
) -> anyhow::Result<(Mesh, TenantDataServiceClient<Channel>, Vec<TenantDataChunk>)> {
    let mesh = start(builder).await?;
    populate(&mesh).await?;
    let mut compliance = as_compliance(&mesh).await?;
    let chunks = export(&mut compliance, "tenants/acme").await?;
    delete_acme(&mesh).await?;
    Ok((mesh, compliance, chunks))
}

/// Suspends and deletes acme as the operator, through the gateway.
pub async fn delete_acme(mesh: &Mesh) -> anyhow::Result<()> {
    let mut tenants = TenantServiceClient::new(mesh.gateway());
    tenants
        .update_tenant(mesh.as_operator(state_change("acme", TenantState::Suspended)))
        .await?;
    tenants
        .delete_tenant(mesh.as_operator(DeleteTenantRequest {
            name: "tenants/acme".into(),
        }))
        .await?;
    Ok(())
}

pub async fn acme_exists(mesh: &Mesh) -> anyhow::Result<bool> {
    let found = TenantServiceClient::new(mesh.gateway())
        .get_tenant(mesh.as_operator(GetTenantRequest {
            name: "tenants/acme".into(),
        }))
        .await;
    match found {
        Ok(_) => Ok(true),
        Err(status) if status.code() == Code::NotFound => Ok(false),
        Err(status) => Err(status.into()),
    }
}

pub async fn verify_key(mesh: &Mesh, key: &str) -> anyhow::Result<Result<(), Status>> {
    let verified = ApiKeyServiceClient::new(mesh.direct(Component::Identity, "gateway").await?)
        .verify_api_key(VerifyApiKeyRequest {
            key: key.to_owned(),
        })
        .await;
    Ok(verified.map(|_| ()))
}

/// Gives a (changed) stream the trailer its records now call for, as whoever changed it could:
/// the checksum shows that a stream arrived as sent, not who made it.
pub fn retally(chunks: &mut [TenantDataChunk]) {
    use palisade_proto::palisade::identity::v1::{
        TenantDataTrailer, tenant_data_chunk::Chunk, tenant_data_record::Record,
    };
    use prost::Message;
    use sha2::{Digest, Sha256};

    let mut hasher = Sha256::new();
    let mut tally = TenantDataCounts::default();
    for chunk in chunks.iter() {
        let Some(Chunk::Batch(batch)) = &chunk.chunk else {
            continue;
        };
        for record in &batch.records {
            let bytes = record.encode_to_vec();
            hasher.update((bytes.len() as u64).to_be_bytes());
            hasher.update(&bytes);
            match &record.record {
                Some(Record::Tenant(_)) => tally.tenants += 1,
                Some(Record::Role(_)) => tally.roles += 1,
                Some(Record::User(_)) => tally.users += 1,
                Some(Record::ApiKey(_)) => tally.api_keys += 1,
                None => {}
            }
        }
    }
    let trailer = TenantDataTrailer {
        counts: Some(tally),
        sha256: hasher.finalize().to_vec(),
    };
    if let Some(last) = chunks.last_mut() {
        last.chunk = Some(Chunk::Trailer(trailer));
    }
}

//! Tenant data export and import (`TenantDataService`): compliance exports a tenant over mTLS,
//! the tenant is deleted, and importing the stream brings back its users (who sign in with
//! their old passwords), custom roles, assignments and API keys; a tampered stream is refused
//! and writes nothing; nobody but compliance reaches either method.

mod common;
mod identity_kit;

use std::time::Duration;

use common::{expect_code, new_tenant, reason, violated_fields};
use identity_kit::{
    PASSWORD, list_users, login, login_request, new_user, state_change, with_bearer,
};
use palisade_proto::palisade::{
    common::v1::PrincipalType,
    compliance::v1::{ListAuditEventsRequest, audit_service_client::AuditServiceClient},
    identity::v1::{
        ApiKey, AssignRoleRequest, CreateApiKeyRequest, CreateRoleRequest, DeleteTenantRequest,
        ExportTenantDataRequest, GetRoleRequest, GetTenantRequest, ImportTenantDataResponse, Plan,
        RefreshTokenRequest, Role, TenantDataChunk, TenantDataCounts, TenantState,
        VerifyApiKeyRequest, api_key_service_client::ApiKeyServiceClient,
        auth_service_client::AuthServiceClient, role_service_client::RoleServiceClient,
        tenant_data_chunk::Chunk, tenant_data_record::Record,
        tenant_data_service_client::TenantDataServiceClient,
        tenant_service_client::TenantServiceClient, user_service_client::UserServiceClient,
    },
};
use palisade_testkit::{Component, Mesh, eventually, with_api_key};
use prost::Message;
use tonic::{Code, Status, transport::Channel};

const READ_USERS: &[&str] = &["identity.users.get", "identity.users.list"];

/// A mesh whose gateway forgets tenants and keys quickly, so a deleted and restored tenant is
/// seen as it is now.
async fn start(builder: palisade_testkit::MeshBuilder) -> anyhow::Result<Mesh> {
    builder
        .with_tenant_cache_ttl(Duration::from_millis(200))
        .with_api_key_cache_ttl(Duration::from_millis(200))
        .start()
        .await
}

async fn as_compliance(mesh: &Mesh) -> anyhow::Result<TenantDataServiceClient<Channel>> {
    Ok(TenantDataServiceClient::new(
        mesh.direct(Component::Identity, "compliance").await?,
    ))
}

async fn export(
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

async fn import(
    client: &mut TenantDataServiceClient<Channel>,
    chunks: Vec<TenantDataChunk>,
) -> Result<ImportTenantDataResponse, Status> {
    client
        .import_tenant_data(futures::stream::iter(chunks))
        .await
        .map(tonic::Response::into_inner)
}

fn counts(tenants: i64, roles: i64, users: i64, api_keys: i64) -> Option<TenantDataCounts> {
    Some(TenantDataCounts {
        tenants,
        roles,
        users,
        api_keys,
    })
}

/// Acme: a custom role, three users (one holding the custom role from creation, one given it
/// later), and an API key its admin made for itself. Returns the key.
async fn populate(mesh: &Mesh) -> anyhow::Result<String> {
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

/// Suspends and deletes acme as the operator, through the gateway.
async fn delete_acme(mesh: &Mesh) -> anyhow::Result<()> {
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

async fn acme_exists(mesh: &Mesh) -> anyhow::Result<bool> {
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

async fn verify_key(mesh: &Mesh, key: &str) -> anyhow::Result<Result<(), Status>> {
    let verified = ApiKeyServiceClient::new(mesh.direct(Component::Identity, "gateway").await?)
        .verify_api_key(VerifyApiKeyRequest {
            key: key.to_owned(),
        })
        .await;
    Ok(verified.map(|_| ()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_tenant_comes_back_from_its_export() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = start(builder).await?;
        let key = populate(&mesh).await?;
        let mut compliance = as_compliance(&mesh).await?;

        let chunks = export(&mut compliance, "tenants/acme").await?;
        let Some(Chunk::Header(header)) = &chunks[0].chunk else {
            panic!("a header first: {:?}", chunks[0])
        };
        assert_eq!(header.format_version, 1);
        assert_eq!(header.tenant, "tenants/acme");
        assert!(header.export_time.is_some() && !header.replace);
        let Some(Chunk::Trailer(trailer)) = &chunks.last().expect("chunks").chunk else {
            panic!("a trailer last")
        };
        assert_eq!(trailer.counts, counts(1, 1, 3, 1));
        assert_eq!(trailer.sha256.len(), 32);
        let records: Vec<Record> = chunks
            .iter()
            .filter_map(|chunk| match &chunk.chunk {
                Some(Chunk::Batch(batch)) => Some(batch.records.clone()),
                _ => None,
            })
            .flatten()
            .filter_map(|record| record.record)
            .collect();
        let Record::User(user) = &records[2] else {
            panic!("the tenant, its role, then users: {records:?}")
        };
        assert!(user.password_hash.starts_with("$argon2id$"), "a hash");
        // A backup holds hashes: neither a password nor a key's secret appears in it.
        let secret = key.rsplit('_').next().expect("pal_<id>_<secret>");
        for chunk in &chunks {
            let bytes = chunk.encode_to_vec();
            for plain in [PASSWORD.as_bytes(), secret.as_bytes()] {
                assert!(!bytes.windows(plain.len()).any(|w| w == plain));
            }
        }

        delete_acme(&mesh).await?;
        assert!(!acme_exists(&mesh).await?);
        assert_eq!(
            reason(&expect_code(
                verify_key(&mesh, &key).await?,
                Code::Unauthenticated
            )),
            "INVALID_API_KEY"
        );
        let gone = AuthServiceClient::new(mesh.gateway())
            .login(login_request("acme", "ada@acme.example"))
            .await;
        expect_code(gone, Code::Unauthenticated);

        let restored = import(&mut compliance, chunks.clone()).await?;
        assert_eq!(restored.tenant, "tenants/acme");
        assert_eq!(restored.counts, counts(1, 1, 3, 1));
        assert!(!restored.replaced);

        // Everyone signs in with the old password, and the key works again at the gateway.
        let (_, ada_refresh) = login(&mesh, "acme", "ada@acme.example").await?;
        let (bob, _) = login(&mesh, "acme", "bob@acme.example").await?;
        verify_key(&mesh, &key).await??;
        let listed = eventually(Duration::from_secs(5), || {
            let mut users = UserServiceClient::new(mesh.gateway());
            let request = with_api_key(list_users("acme"), &key);
            async move { Ok(users.list_users(request).await.ok()) }
        })
        .await?
        .into_inner();
        let mut roles: Vec<(String, Vec<String>)> = listed
            .users
            .into_iter()
            .map(|user| (user.email, user.roles))
            .collect();
        roles.sort();
        assert_eq!(
            roles,
            [
                ("ada@acme.example".to_owned(), vec!["admin".to_owned()]),
                (
                    "bob@acme.example".to_owned(),
                    vec!["user-reader".to_owned()]
                ),
                (
                    "cyd@acme.example".to_owned(),
                    vec!["user-reader".to_owned(), "viewer".to_owned()]
                ),
            ]
        );
        let role = RoleServiceClient::new(mesh.gateway())
            .get_role(mesh.as_operator(GetRoleRequest {
                name: "tenants/acme/roles/user-reader".into(),
            }))
            .await?
            .into_inner();
        assert_eq!(role.permissions, READ_USERS);
        // The custom role grants again: bob lists users through it alone.
        UserServiceClient::new(mesh.gateway())
            .list_users(with_bearer(list_users("acme"), &bob))
            .await?;

        // The tenant exists now: a second import is refused unless it replaces, and replacing
        // ends every session.
        let again = import(&mut compliance, chunks.clone()).await;
        assert_eq!(
            reason(&expect_code(again, Code::AlreadyExists)),
            "ALREADY_EXISTS"
        );
        let mut replacing = chunks.clone();
        if let Some(Chunk::Header(header)) = &mut replacing[0].chunk {
            header.replace = true;
        }
        let replaced = import(&mut compliance, replacing).await?;
        assert!(replaced.replaced);
        assert_eq!(replaced.counts, counts(1, 1, 3, 1));
        let refresh = AuthServiceClient::new(mesh.gateway())
            .refresh_token(RefreshTokenRequest {
                refresh_token: ada_refresh,
            })
            .await;
        assert_eq!(
            reason(&expect_code(refresh, Code::Unauthenticated)),
            "INVALID_REFRESH_TOKEN"
        );
        login(&mesh, "acme", "ada@acme.example").await?;

        // Both directions are in acme's audit log, done by compliance.
        let audit = AuditServiceClient::new(mesh.gateway());
        for action in ["identity.tenantdata.export", "identity.tenantdata.import"] {
            let events = eventually(Duration::from_secs(10), || {
                let mut audit = audit.clone();
                let request = mesh.as_operator(ListAuditEventsRequest {
                    parent: "tenants/acme".into(),
                    filter: format!("action = {action:?}"),
                    ..Default::default()
                });
                async move {
                    let events = audit.list_audit_events(request).await?.into_inner();
                    Ok((!events.audit_events.is_empty()).then_some(events.audit_events))
                }
            })
            .await?;
            let actor = events[0].actor.clone().expect("an actor");
            assert_eq!(actor.id, "compliance", "{action}");
            assert_eq!(actor.r#type(), PrincipalType::Service);
            assert_eq!(events[0].resource, "tenants/acme");
        }
        mesh.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_stream_is_refused_and_writes_nothing() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = start(builder).await?;
        populate(&mesh).await?;
        let mut compliance = as_compliance(&mesh).await?;
        let chunks = export(&mut compliance, "tenants/acme").await?;
        delete_acme(&mesh).await?;

        let tamper = |change: &dyn Fn(&mut Vec<TenantDataChunk>)| {
            let mut changed = chunks.clone();
            change(&mut changed);
            changed
        };
        let batch_of = |chunks: &mut Vec<TenantDataChunk>| match &mut chunks[1].chunk {
            Some(Chunk::Batch(batch)) => batch.records.clone(),
            other => panic!("a batch second: {other:?}"),
        };
        let set_batch = |chunks: &mut Vec<TenantDataChunk>, records| {
            if let Some(Chunk::Batch(batch)) = &mut chunks[1].chunk {
                batch.records = records;
            }
        };
        let cases: Vec<(&str, Vec<TenantDataChunk>, Vec<&str>)> = vec![
            (
                "a flipped record",
                tamper(&|chunks| {
                    let mut records = batch_of(chunks);
                    if let Some(Record::User(user)) = &mut records[3].record {
                        user.roles = vec!["admin".into()];
                    }
                    set_batch(chunks, records);
                }),
                vec!["trailer.sha256"],
            ),
            (
                "a dropped record",
                tamper(&|chunks| {
                    let mut records = batch_of(chunks);
                    records.remove(3);
                    set_batch(chunks, records);
                }),
                vec!["trailer.counts.users", "trailer.sha256"],
            ),
            (
                "another tenant's record",
                tamper(&|chunks| {
                    let mut records = batch_of(chunks);
                    if let Some(Record::User(user)) = &mut records[2].record {
                        user.name = user.name.replace("tenants/acme/", "tenants/globex/");
                    }
                    set_batch(chunks, records);
                }),
                vec!["batch.records[2].user.name"],
            ),
            (
                "a stream relabelled for another tenant",
                tamper(&|chunks| {
                    if let Some(Chunk::Header(header)) = &mut chunks[0].chunk {
                        header.tenant = "tenants/globex".into();
                    }
                }),
                vec![
                    "batch.records[0].tenant.name",
                    "batch.records[1].role.name",
                    "batch.records[2].user.name",
                    "batch.records[3].user.name",
                    // The custom role was refused, so holding it is refused too.
                    "batch.records[3].user.roles[0]",
                    "batch.records[4].user.name",
                    "batch.records[4].user.roles[0]",
                    "batch.records[5].api_key.name",
                    "batch.records[5].api_key.owner",
                ],
            ),
            (
                "an unknown format",
                tamper(&|chunks| {
                    if let Some(Chunk::Header(header)) = &mut chunks[0].chunk {
                        header.format_version = 2;
                    }
                }),
                vec!["header.format_version"],
            ),
            (
                "no header",
                tamper(&|chunks| {
                    chunks.remove(0);
                }),
                vec!["header"],
            ),
            (
                "no trailer",
                tamper(&|chunks| {
                    chunks.pop();
                }),
                vec!["trailer"],
            ),
        ];
        for (case, stream, fields) in cases {
            let refused = import(&mut compliance, stream).await;
            let status = match refused {
                Err(status) if status.code() == Code::InvalidArgument => status,
                other => panic!("{case}: expected INVALID_ARGUMENT, got {other:?}"),
            };
            assert_eq!(violated_fields(&status), fields, "{case}");
            assert!(!acme_exists(&mesh).await?, "{case} wrote the tenant");
            let login = AuthServiceClient::new(mesh.gateway())
                .login(login_request("acme", "ada@acme.example"))
                .await;
            expect_code(login, Code::Unauthenticated);
        }
        let globex = TenantServiceClient::new(mesh.gateway())
            .get_tenant(mesh.as_operator(GetTenantRequest {
                name: "tenants/globex".into(),
            }))
            .await;
        expect_code(globex, Code::NotFound);

        // The stream as exported still restores: only the tampering was refused.
        import(&mut compliance, chunks).await?;
        login(&mesh, "acme", "ada@acme.example").await?;
        mesh.stop().await?;
    }
    Ok(())
}

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
        let db = match mesh.admin_db(Component::Identity).await? {
            Some(admin) => admin,
            None => mesh.service_db(Component::Identity).await?,
        };
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

//! Tenant data export and import (`TenantDataService`): compliance exports a tenant over mTLS,
//! the tenant is deleted, and importing the stream brings back its users (who sign in with
//! their old passwords), custom roles, assignments and API keys; a tampered stream is refused
//! and writes nothing, also one that ties a key to another tenant's user; nobody but
//! compliance reaches either method.

mod common;
mod identity_kit;
mod tenant_data_kit;

use std::time::Duration;

use common::{expect_code, new_tenant, reason, violated_fields};
use identity_kit::{PASSWORD, list_users, login, login_request, with_bearer};
use palisade_proto::palisade::{
    common::v1::PrincipalType,
    compliance::v1::{ListAuditEventsRequest, audit_service_client::AuditServiceClient},
    identity::v1::{
        DeleteUserRequest, GetRoleRequest, GetTenantRequest, Plan, RefreshTokenRequest,
        TenantDataChunk, auth_service_client::AuthServiceClient,
        role_service_client::RoleServiceClient, tenant_data_chunk::Chunk,
        tenant_data_record::Record, tenant_service_client::TenantServiceClient,
        user_service_client::UserServiceClient,
    },
};
use palisade_testkit::{Mesh, eventually, with_api_key};
use prost::Message;
use tonic::Code;

use tenant_data_kit::*;

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

/// An import reads its whole stream before it writes, so a sender that pauses halfway holds up
/// no other write; on SQLite, where there is one writer, it used to hold the write lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_still_arriving_holds_up_no_other_write() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let (mesh, mut compliance, chunks) = exported_and_deleted(builder).await?;

        // The header and the first batch go out; the rest waits.
        let (sender, receiver) = tokio::sync::mpsc::channel(chunks.len());
        let mut chunks = chunks.into_iter();
        for chunk in chunks.by_ref().take(2) {
            sender.send(chunk).await?;
        }
        let importing = tokio::spawn(async move {
            let stream = tokio_stream::wrappers::ReceiverStream::new(receiver);
            compliance.import_tenant_data(stream).await
        });
        eventually(Duration::from_secs(10), || async {
            Ok((sender.capacity() == sender.max_capacity()).then_some(()))
        })
        .await?;
        // Time for identity to take them in. Were it slower, the write below would come first
        // and prove less, but it would not fail wrongly.
        tokio::time::sleep(Duration::from_millis(300)).await;

        TenantServiceClient::new(mesh.gateway())
            .create_tenant(mesh.as_operator(new_tenant("globex", "Globex", Plan::Standard)))
            .await?;
        assert!(!acme_exists(&mesh).await?, "written before its trailer");

        for chunk in chunks {
            sender.send(chunk).await?;
        }
        drop(sender);
        let imported = importing.await??.into_inner();
        assert_eq!(imported.counts, counts(1, 1, 3, 1));
        login(&mesh, "acme", "ada@acme.example").await?;
        mesh.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_stream_is_refused_and_writes_nothing() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let (mesh, mut compliance, chunks) = exported_and_deleted(builder).await?;

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
                "wider rights, with the trailer made to match",
                tamper(&|chunks| {
                    let mut records = batch_of(chunks);
                    if let Some(Record::Role(role)) = &mut records[1].record {
                        role.permissions.push("identity.authorization.check".into());
                    }
                    if let Some(Record::ApiKey(key)) = &mut records[5].record {
                        key.scopes = vec!["*".into()];
                    }
                    set_batch(chunks, records);
                    retally(chunks);
                }),
                vec![
                    // Internal permissions are not the catalogue's; `*` is only an operator's.
                    "batch.records[1].role.permissions[2]",
                    "batch.records[3].user.roles[0]",
                    "batch.records[4].user.roles[0]",
                    "batch.records[5].api_key.scopes[0]",
                ],
            ),
            (
                "a role description longer than CreateRole takes",
                tamper(&|chunks| {
                    let mut records = batch_of(chunks);
                    if let Some(Record::Role(role)) = &mut records[1].record {
                        role.description = "x".repeat(1001);
                    }
                    set_batch(chunks, records);
                    retally(chunks);
                }),
                vec![
                    "batch.records[1].role.description",
                    "batch.records[3].user.roles[0]",
                    "batch.records[4].user.roles[0]",
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

/// A stream whose API key names as owner a user of another tenant (by that user's id, under
/// the imported tenant's name) is refused and writes nothing: user ids are unique across
/// tenants, so the database alone would take it, and the key would then keep globex from
/// deleting its user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_tied_to_another_tenants_user_is_refused() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        let (mesh, mut compliance, chunks) = exported_and_deleted(builder).await?;
        TenantServiceClient::new(mesh.gateway())
            .create_tenant(mesh.as_operator(new_tenant("globex", "Globex", Plan::Professional)))
            .await?;
        let mut users = UserServiceClient::new(mesh.gateway());
        let gil = users
            .create_user(mesh.as_operator(identity_kit::new_user(
                "globex",
                "gil@globex.example",
                &["viewer"],
            )))
            .await?
            .into_inner();
        let gil_id = gil.name.rsplit('/').next().expect("an id").to_owned();

        let mut tampered = chunks.clone();
        for chunk in &mut tampered {
            if let Some(Chunk::Batch(batch)) = &mut chunk.chunk {
                for record in &mut batch.records {
                    if let Some(Record::ApiKey(key)) = &mut record.record {
                        key.owner = format!("tenants/acme/users/{gil_id}");
                    }
                }
            }
        }
        retally(&mut tampered);
        let refused = import(&mut compliance, tampered).await;
        let status = expect_code(refused, Code::InvalidArgument);
        assert_eq!(violated_fields(&status), ["batch.records[5]"], "{backend}");
        assert!(status.message().contains(&gil_id), "{backend}: {status:?}");
        assert!(!acme_exists(&mesh).await?, "{backend}");
        users
            .delete_user(mesh.as_operator(DeleteUserRequest {
                name: gil.name.clone(),
            }))
            .await?;
        import(&mut compliance, chunks).await?;
        mesh.stop().await?;
    }
    Ok(())
}

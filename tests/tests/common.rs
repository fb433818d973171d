//! Helpers shared by the integration tests (included with `mod common;`).

#![allow(dead_code)]

use std::time::Duration;

use palisade_proto::palisade::{
    compliance::v1::{
        AuditEvent, ListAuditEventsRequest, audit_service_client::AuditServiceClient,
    },
    identity::v1::{
        CreateTenantRequest, CreateUserRequest, Plan, Tenant, User,
        tenant_service_client::TenantServiceClient, user_service_client::UserServiceClient,
    },
};
use palisade_testkit::{Component, HttpResponse, Mesh, eventually, http_request};
use prost_reflect::{DynamicMessage, MessageDescriptor, MethodDescriptor};
use tonic::{Code, Status, codec::Codec};
use tonic_types::StatusExt;

/// The fields named by a status's `BadRequest` details.
pub fn violated_fields(status: &Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|bad| {
            bad.field_violations
                .iter()
                .map(|v| v.field.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// The `ErrorInfo.reason` of a status, or "" when it has none.
pub fn reason(status: &Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
        .unwrap_or_default()
}

pub fn expect_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> Status {
    match result {
        Err(status) if status.code() == code => status,
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

pub fn new_tenant(tenant_id: &str, display_name: &str, plan: Plan) -> CreateTenantRequest {
    CreateTenantRequest {
        tenant: Some(Tenant {
            display_name: display_name.to_owned(),
            plan: plan as i32,
            ..Tenant::default()
        }),
        tenant_id: tenant_id.to_owned(),
    }
}

/// Tenant `tenant_id` on the professional plan with one admin user, made by the operator
/// through the gateway; returns the user.
pub async fn tenant_with_admin(
    mesh: &Mesh,
    tenant_id: &str,
    email: &str,
    password: &str,
) -> anyhow::Result<User> {
    TenantServiceClient::new(mesh.gateway())
        .create_tenant(mesh.as_operator(new_tenant(tenant_id, "Acme", Plan::Professional)))
        .await?;
    let user = UserServiceClient::new(mesh.gateway())
        .create_user(mesh.as_operator(CreateUserRequest {
            parent: format!("tenants/{tenant_id}"),
            user: Some(User {
                email: email.to_owned(),
                display_name: "Ada".into(),
                roles: vec!["admin".into()],
                ..User::default()
            }),
            password: password.to_owned(),
        }))
        .await?;
    Ok(user.into_inner())
}

/// A tenant's audit events once they have arrived: at least one, and no more arriving. They
/// travel through the outbox, whose relay ships what was committed within its linger (50 ms)
/// as one batch, so the list is taken as complete once it stays the same for well over that.
pub async fn audit_events_arrived(mesh: &Mesh, tenant: &str) -> anyhow::Result<Vec<AuditEvent>> {
    const SETTLED: Duration = Duration::from_millis(250);
    let mut audit = AuditServiceClient::new(mesh.gateway());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut previous: Option<Vec<AuditEvent>> = None;
    loop {
        let request = mesh.as_operator(ListAuditEventsRequest {
            parent: format!("tenants/{tenant}"),
            ..Default::default()
        });
        let events = audit
            .list_audit_events(request)
            .await?
            .into_inner()
            .audit_events;
        if !events.is_empty() && previous.as_ref() == Some(&events) {
            return Ok(events);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("the audit events of {tenant} did not arrive and settle within 10 s");
        }
        previous = Some(events);
        tokio::time::sleep(SETTLED).await;
    }
}

/// The first audit event of acme with `action` that `matches`, once it has arrived (events
/// travel through the outbox).
pub async fn audit_event(
    mesh: &Mesh,
    action: &str,
    matches: impl Fn(&AuditEvent) -> bool,
) -> anyhow::Result<AuditEvent> {
    let audit = AuditServiceClient::new(mesh.gateway());
    eventually(Duration::from_secs(10), || {
        let mut audit = audit.clone();
        let request = mesh.as_operator(ListAuditEventsRequest {
            parent: "tenants/acme".into(),
            filter: format!(r#"action = "{action}""#),
            ..Default::default()
        });
        let matches = &matches;
        async move {
            let events = audit.list_audit_events(request).await?.into_inner();
            Ok(events.audit_events.into_iter().find(|e| matches(e)))
        }
    })
    .await
}

/// Checks the refusal of a call that raced a change to what it had judged (the test held the
/// change open until the call waited, `until_a_call_waits_for_a_lock`): on PostgreSQL it is
/// aborted (`CONCURRENT_CHANGE`), to be judged again on retry; on SQLite a call slower than the
/// test's pause may read the change and be refused outright (`PERMISSION_DENIED`, with
/// `refused_reason` when given), which is as safe.
pub fn expect_judged_again(refused: &Status, backend: &str, refused_reason: Option<&str>) {
    if backend == "postgres" {
        assert_eq!(refused.code(), Code::Aborted, "{refused:?}");
    }
    match refused.code() {
        Code::Aborted => assert_eq!(reason(refused), "CONCURRENT_CHANGE"),
        Code::PermissionDenied => {
            if let Some(expected) = refused_reason {
                assert_eq!(reason(refused), expected);
            }
        }
        _ => panic!("{backend}: {refused:?}"),
    }
}

/// Returns once a call racing `holder`, a transaction the test holds open in `db`, is where
/// the race matters. On PostgreSQL: once some session waits for a lock `holder` holds, i.e. the
/// call has judged what it read and now waits for the row the test changed, so committing
/// then hits the race every time (other tests' sessions on the same server are not counted:
/// only `holder` can block on its rows). On SQLite (one writer, no lock waits to see): after a
/// pause, and a call slower than that sees the committed change instead.
pub async fn until_a_call_waits_for_a_lock(
    db: &palisade_db::Db,
    holder: &mut sqlx::Transaction<'static, sqlx::Any>,
    backend: &str,
) -> anyhow::Result<()> {
    if backend != "postgres" {
        tokio::time::sleep(Duration::from_millis(500)).await;
        return Ok(());
    }
    let holder_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut **holder)
        .await?;
    eventually(Duration::from_secs(10), || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
        )
        .bind(holder_pid)
        .fetch_one(db.pool())
        .await?;
        Ok((waiting > 0).then_some(()))
    })
    .await
}

/// A transaction holding `tenant`'s row locked, as a create that counts the tenant's users or
/// keys against its limit locks it: such a call waits until the test commits.
pub async fn hold_tenant_row(
    db: &palisade_db::Db,
    tenant: &str,
) -> anyhow::Result<sqlx::Transaction<'static, sqlx::Any>> {
    let mut holder = db.begin().await?;
    sqlx::query("UPDATE tenants SET update_time = update_time WHERE id = $1")
        .bind(tenant)
        .execute(&mut *holder)
        .await?;
    Ok(holder)
}

/// A REST request to the gateway with a JSON body, with `key` as `authorization: ApiKey`.
pub async fn rest(
    mesh: &Mesh,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> anyhow::Result<HttpResponse> {
    let auth = key.map(|key| format!("ApiKey {key}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("authorization", auth));
    }
    http_request(
        mesh.addr(Component::Gateway),
        method,
        path,
        &headers,
        body.as_bytes(),
    )
    .await
}

/// The method `package.Service/Method` of the mesh's descriptor set, and `json` (proto3 JSON)
/// as a request to it; panics on a name or request the test got wrong.
pub fn dynamic_request(path: &str, json: &str) -> (MethodDescriptor, DynamicMessage) {
    let (service, method) = path.split_once('/').expect("package.Service/Method");
    let method = palisade_proto::descriptor_pool()
        .get_service_by_name(service)
        .and_then(|service| service.methods().find(|m| m.name() == method))
        .unwrap_or_else(|| panic!("no method {path}"));
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let message = DynamicMessage::deserialize(method.input(), &mut deserializer)
        .unwrap_or_else(|error| panic!("{path}: bad test request: {error}"));
    (method, message)
}

/// Encodes dynamic requests and decodes dynamic responses of one method (its output type), so
/// a test can call any RPC of the descriptor set, e.g. every RPC it lists.
#[derive(Clone)]
pub struct DynamicCodec(pub MessageDescriptor);

pub struct DynamicEncoder;
pub struct DynamicDecoder(MessageDescriptor);

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> DynamicEncoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> DynamicDecoder {
        DynamicDecoder(self.0.clone())
    }
}

impl tonic::codec::Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: DynamicMessage,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        prost::Message::encode(&item, dst)
            .map_err(|error| tonic::Status::internal(error.to_string()))
    }
}

impl tonic::codec::Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<DynamicMessage>, tonic::Status> {
        DynamicMessage::decode(self.0.clone(), src)
            .map(Some)
            .map_err(|error| tonic::Status::internal(error.to_string()))
    }
}

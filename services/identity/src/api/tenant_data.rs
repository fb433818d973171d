//! `TenantDataService`: compliance exports one tenant's identity data as a stream and imports
//! such a stream back. Internal: the policy layer admits only compliance, over mTLS. The
//! stream's format and checks are `tenant_data`; the SQL is `store::tenant_data`.

use std::{sync::Arc, time::Duration};

use futures::stream::BoxStream;
use palisade_audit::AuditRecord;
use palisade_db::{Scope, in_scope, outbox::Relay};
use palisade_grpc::{
    ApiError, CallerComponent, MethodPolicy, aip::CreatedCursor, time::now_micros,
};
use palisade_proto::palisade::{
    compliance::v1::Outcome,
    identity::v1::{
        ExportTenantDataRequest, ImportTenantDataResponse, TenantDataBatch, TenantDataChunk,
        TenantDataRecord, tenant_data_chunk::Chunk, tenant_data_service_server::TenantDataService,
    },
};
use palisade_tenancy::{Principal, PrincipalKind, RequestId, TenantContext, TenantId};
use prost::Message;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::{
    roles::Roles,
    store::{IdentityStore, TenantSnapshot},
    tenant_data::{self, BATCH_SIZE, Counts, FORMAT_VERSION, Import, Restored, Spool, Tally},
    tenants::{self, TenantRecord},
};

/// An import stream that stops sending is abandoned after this long (nothing is written), and
/// so is an export whose reader stops reading (it holds a snapshot and a pooled connection).
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// An import reads and checks its whole stream before it opens its transaction, so a slow or
/// stalled sender never holds the write lock (on SQLite, every writer's) and a bad stream is
/// refused before anything is written. Meanwhile its batches wait on disk (`Spool`), up to this
/// much of their encoding: millions of users, well above any plan's limit.
const MAX_IMPORT_BYTES: u64 = 1 << 30;

/// Chunks an export prepares ahead of its reader: with one page read at a time, an export's
/// memory stays a few batches, whatever the tenant's size.
const EXPORT_BUFFER: usize = 2;

/// A batch is sent early once its records' encoding reaches this size, well below gRPC's
/// default 4 MiB message limit, however large single records are.
const MAX_BATCH_BYTES: usize = 1 << 20;

type ChunkSender = mpsc::Sender<Result<TenantDataChunk, Status>>;

pub struct TenantDataApi {
    store: IdentityStore,
    relay: Relay,
    /// The permission catalogue an import's roles and api key scopes are checked against.
    roles: Arc<Roles>,
}

impl TenantDataApi {
    pub fn new(store: IdentityStore, relay: Relay, roles: Arc<Roles>) -> TenantDataApi {
        TenantDataApi {
            store,
            relay,
            roles,
        }
    }
}

#[tonic::async_trait]
impl TenantDataService for TenantDataApi {
    type ExportTenantDataStream = BoxStream<'static, Result<TenantDataChunk, Status>>;

    async fn export_tenant_data(
        &self,
        request: Request<ExportTenantDataRequest>,
    ) -> Result<Response<Self::ExportTenantDataStream>, Status> {
        let actor = Actor::of(&request);
        let tenant = tenants::parse_field(&request.get_ref().tenant, "tenant")?;
        let resource = format!("tenants/{tenant}");
        let (mut snapshot, record) =
            self.store
                .tenant_snapshot(&tenant)
                .await?
                .ok_or_else(|| ApiError::NotFound {
                    resource: resource.clone(),
                })?;
        tenant_data::exportable(&record)?;
        // Refused before anything leaves or is recorded; the snapshot the export then reads
        // holds no such user.
        if snapshot.has_user_in_unknown_state().await? {
            return Err(tenant_data::unknown_user_state(&tenant).into());
        }
        // Recorded before the first record leaves: an export that breaks off still happened.
        let tx = self
            .store
            .db()
            .begin_in(Scope::Tenant(tenant.as_str()))
            .await
            .map_err(ApiError::from)?;
        let audit = actor.record(
            &tenant,
            "identity.tenantdata.export",
            &resource,
            vec![("format_version", FORMAT_VERSION.to_string())],
        );
        palisade_audit::commit_with(tx, &audit, &self.relay)
            .await
            .map_err(ApiError::from)?;
        // One place more than the chunks prepared ahead, kept for the stream's last word: an
        // error reaches the client even when the chunks before it fill the channel.
        let (sender, receiver) = mpsc::channel(EXPORT_BUFFER + 1);
        let last_word = (sender.clone().try_reserve_owned())
            .map_err(|_| ApiError::internal("a new channel has room"))?;
        let roles = self.roles.clone();
        let task = async move {
            let mut out = Chunker::new(sender);
            let failure = match export(snapshot, record, &roles, &mut out).await {
                Ok(()) => {
                    tracing::info!(tenant = %tenant, "tenant data exported");
                    None
                }
                Err(Stop::Gone) => {
                    tracing::info!(tenant = %tenant, "tenant data export abandoned by the client");
                    None
                }
                Err(Stop::Stalled) => {
                    tracing::warn!(tenant = %tenant, "tenant data export abandoned: its reader stopped reading");
                    Some(ApiError::Unavailable {
                        message: format!(
                            "the export was not read for {}s and was abandoned; export again",
                            STALL_TIMEOUT.as_secs()
                        ),
                    })
                }
                Err(Stop::Failed(error)) => Some(error),
            };
            // The client sees it as the stream's status (it may be gone already).
            if let Some(error) = failure {
                last_word.send(Err(error.into()));
            }
        };
        // The stream outlives the handler; its reads stay in the call's span.
        tokio::spawn(task.instrument(tracing::Span::current()));
        let stream = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|item| (item, receiver))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn import_tenant_data(
        &self,
        request: Request<Streaming<TenantDataChunk>>,
    ) -> Result<Response<ImportTenantDataResponse>, Status> {
        let actor = Actor::of(&request);
        let mut stream = request.into_inner();
        let Some(Chunk::Header(header)) = next(&mut stream, 0).await? else {
            return Err(ApiError::invalid(
                "header",
                "chunk 0: the stream must begin with a header",
            )
            .into());
        };
        let import = Import::begin(&header, self.roles.clone())?;
        let tenant = import.tenant().clone();
        if tenant.is_system() {
            return Err(ApiError::FailedPrecondition {
                reason: "SYSTEM_TENANT",
                message: "the system tenant holds the platform operators and is never imported"
                    .to_owned(),
            }
            .into());
        }
        let resource = format!("tenants/{tenant}");
        // Refused before the stream is read; checked again under the lock below.
        let existing = in_scope(
            Scope::Tenant(tenant.as_str()),
            self.store.get_tenant(&tenant),
        );
        if !header.replace && existing.await?.is_some() {
            return Err(ApiError::AlreadyExists { resource }.into());
        }
        let (spool, counts) = receive(&mut stream, import, &resource).await?;
        let mut batches = spool.replay().await.map_err(spool_failed)?;
        // The records are converted again as they are written: the same checks, passed once.
        let mut import = Import::begin(&header, self.roles.clone())?;
        let mut tx = self
            .store
            .db()
            .begin_in(Scope::Tenant(tenant.as_str()))
            .await
            .map_err(ApiError::from)?;
        let replaced = match self.store.lock_tenant(&mut tx, &tenant).await? {
            None => false,
            Some(_) if header.replace => {
                self.store.clear_tenant(&mut tx, &tenant).await?;
                true
            }
            Some(_) => return Err(ApiError::AlreadyExists { resource }.into()),
        };
        // A restore is the deleted tenant itself coming back, to the audit log that is its own:
        // its id, retired by `DeleteTenant` so that no other tenant would get that log, is
        // live again (and retired again if it is deleted again).
        self.store.reinstate_tenant_id(&mut tx, &tenant).await?;
        while let Some((chunk, batch)) = batches.next().await.map_err(spool_failed)? {
            for (field, record) in import.batch(chunk, &batch.records)? {
                self.store
                    .restore_record(&mut tx, &record)
                    .await
                    .map_err(|error| conflict(error, chunk, &field, &record))?;
            }
        }
        let audit = actor.record(
            &tenant,
            "identity.tenantdata.import",
            &resource,
            vec![
                ("format_version", FORMAT_VERSION.to_string()),
                ("replaced", replaced.to_string()),
                ("roles", counts.roles.to_string()),
                ("users", counts.users.to_string()),
                ("api_keys", counts.api_keys.to_string()),
            ],
        );
        palisade_audit::commit_with(tx, &audit, &self.relay)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(
            tenant = %tenant,
            replaced,
            roles = counts.roles,
            users = counts.users,
            api_keys = counts.api_keys,
            "tenant data imported"
        );
        Ok(Response::new(ImportTenantDataResponse {
            tenant: resource,
            counts: Some(counts.into()),
            replaced,
        }))
    }
}

/// Writes the stream of `snapshot`: header, the records in format order, trailer. Only what
/// an import restores goes out: a role's permissions and a key's scopes it still grants
/// (`tenant_data::role_record`, `tenant_data::api_key_record`); a tenant holding a user in a
/// state this server does not know was refused before.
async fn export(
    mut snapshot: TenantSnapshot,
    tenant: TenantRecord,
    roles: &Roles,
    out: &mut Chunker,
) -> Result<(), Stop> {
    out.send(Chunk::Header(tenant_data::header(&tenant.id, now_micros())))
        .await?;
    out.push(tenant_data::tenant_record(&tenant)).await?;
    let mut after: Option<String> = None;
    loop {
        let page = snapshot.roles(after.as_deref(), BATCH_SIZE).await?;
        for role in &page {
            out.push(tenant_data::role_record(role, roles)).await?;
        }
        match page.last() {
            Some(last) if page.len() == BATCH_SIZE => after = Some(last.id.clone()),
            _ => break,
        }
    }
    let mut after: Option<CreatedCursor> = None;
    loop {
        let page = snapshot.users(after.as_ref(), BATCH_SIZE).await?;
        let full = page.len() == BATCH_SIZE;
        for (user, password_hash) in page {
            after = Some(CreatedCursor {
                create_time: user.create_time,
                id: user.id.clone(),
            });
            out.push(tenant_data::user_record(&user, password_hash))
                .await?;
        }
        if !full {
            break;
        }
    }
    let mut after: Option<CreatedCursor> = None;
    loop {
        let page = snapshot.api_keys(after.as_ref(), BATCH_SIZE).await?;
        for key in &page {
            if let Some(record) = tenant_data::api_key_record(key, roles) {
                out.push(record).await?;
            }
        }
        match page.last() {
            Some(last) if page.len() == BATCH_SIZE => {
                after = Some(CreatedCursor {
                    create_time: last.create_time,
                    id: last.id.clone(),
                });
            }
            _ => break,
        }
    }
    out.finish().await
}

/// Why an export stopped early.
enum Stop {
    /// The client went away; nobody is left to tell.
    Gone,
    /// The client read nothing for `STALL_TIMEOUT`.
    Stalled,
    Failed(ApiError),
}

impl From<ApiError> for Stop {
    fn from(error: ApiError) -> Stop {
        Stop::Failed(error)
    }
}

/// Groups an export's records into batches (at most `BATCH_SIZE` records, about
/// `MAX_BATCH_BYTES`) and keeps the trailer's tally.
struct Chunker {
    sender: ChunkSender,
    tally: Tally,
    batch: Vec<TenantDataRecord>,
    batch_bytes: usize,
}

impl Chunker {
    fn new(sender: ChunkSender) -> Chunker {
        Chunker {
            sender,
            tally: Tally::default(),
            batch: Vec::with_capacity(BATCH_SIZE),
            batch_bytes: 0,
        }
    }

    async fn push(&mut self, record: TenantDataRecord) -> Result<(), Stop> {
        self.tally.add(&record);
        self.batch_bytes += record.encoded_len();
        self.batch.push(record);
        if self.batch.len() == BATCH_SIZE || self.batch_bytes >= MAX_BATCH_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Stop> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let records = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_SIZE));
        self.batch_bytes = 0;
        self.send(Chunk::Batch(TenantDataBatch { records })).await
    }

    async fn send(&self, chunk: Chunk) -> Result<(), Stop> {
        let chunk = TenantDataChunk { chunk: Some(chunk) };
        match tokio::time::timeout(STALL_TIMEOUT, self.sender.send(Ok(chunk))).await {
            Ok(sent) => sent.map_err(|_| Stop::Gone),
            Err(_) => Err(Stop::Stalled),
        }
    }

    async fn finish(&mut self) -> Result<(), Stop> {
        self.flush().await?;
        let trailer = std::mem::take(&mut self.tally).trailer();
        self.send(Chunk::Trailer(trailer)).await
    }
}

/// Reads an import's stream after its header: every batch checked and spooled, then the
/// trailer matched against what arrived, and nothing after it.
async fn receive(
    stream: &mut Streaming<TenantDataChunk>,
    mut import: Import,
    resource: &str,
) -> Result<(Spool, Counts), Status> {
    let mut spool = Spool::new().await.map_err(spool_failed)?;
    let mut chunk = 0;
    let counts = loop {
        chunk += 1;
        match next(stream, chunk).await? {
            Some(Chunk::Batch(batch)) => {
                import.batch(chunk, &batch.records)?;
                spool.push(chunk, &batch).await.map_err(spool_failed)?;
                if spool.bytes() > MAX_IMPORT_BYTES {
                    return Err(too_large(resource).into());
                }
            }
            Some(Chunk::Trailer(trailer)) => break import.finish(&trailer)?,
            Some(Chunk::Header(_)) => {
                let message = format!("chunk {chunk}: only the first chunk is a header");
                return Err(ApiError::invalid("header", message).into());
            }
            None => {
                let message = "the stream ended without a trailer: it is incomplete";
                return Err(ApiError::invalid("trailer", message).into());
            }
        }
    };
    if next(stream, chunk + 1).await?.is_some() {
        let message = format!(
            "chunk {}: follows the trailer, which must be last",
            chunk + 1
        );
        return Err(ApiError::invalid("trailer", message).into());
    }
    Ok((spool, counts))
}

/// The import's spool file could not be written or read back (the temporary directory is
/// full or unwritable, usually); nothing was written to the store.
fn spool_failed(error: std::io::Error) -> ApiError {
    ApiError::internal(format!("an import's spool file: {error}"))
}

fn too_large(resource: &str) -> ApiError {
    let limit = format!("{} GiB", MAX_IMPORT_BYTES >> 30);
    ApiError::ResourceExhausted {
        reason: "IMPORT_TOO_LARGE",
        message: format!("the import stream's records exceed {limit}; nothing was written"),
        subject: resource.to_owned(),
        description: format!("an import holds at most {limit} of records"),
        retry_after: None,
    }
}

/// The next chunk of an import (`None` when the client closed the stream); chunk `index`
/// must arrive within `STALL_TIMEOUT`.
async fn next(
    stream: &mut Streaming<TenantDataChunk>,
    index: usize,
) -> Result<Option<Chunk>, Status> {
    match tokio::time::timeout(STALL_TIMEOUT, stream.message()).await {
        Err(_) => Err(ApiError::Unavailable {
            message: format!(
                "the import stream sent nothing for {}s; nothing was written",
                STALL_TIMEOUT.as_secs()
            ),
        }
        .into()),
        Ok(Err(status)) => Err(status),
        Ok(Ok(None)) => Ok(None),
        Ok(Ok(Some(TenantDataChunk { chunk: Some(chunk) }))) => Ok(Some(chunk)),
        Ok(Ok(Some(TenantDataChunk { chunk: None }))) => Err(ApiError::invalid(
            "chunk",
            format!("chunk {index}: is empty; a chunk is a header, batch or trailer"),
        )
        .into()),
    }
}

/// A record the database refused: another record of the stream (or a row elsewhere) holds its
/// id or unique name, or it names an owner the stream did not bring first. Such a stream is
/// bad input. The tenant's own record keeps its error: a domain owned by another tenant is
/// ALREADY_EXISTS, as for `CreateTenant`.
fn conflict(error: ApiError, chunk: usize, field: &str, record: &Restored) -> ApiError {
    if matches!(record, Restored::Tenant(_)) {
        return error;
    }
    match error {
        ApiError::AlreadyExists { resource } => ApiError::invalid(
            field,
            format!("chunk {chunk}: conflicts with {resource}, which already exists"),
        ),
        ApiError::NotFound { resource } => ApiError::invalid(
            field,
            format!(
                "chunk {chunk}: refers to {resource}, which the stream does not hold before it"
            ),
        ),
        other => other,
    }
}

/// Whom an audit event of this service names: the principal whose context compliance passed on
/// (an operator who asked for a backup or a restore), or else compliance itself.
struct Actor {
    tenant: TenantId,
    principal: Principal,
    component: Option<String>,
    request_id: Option<RequestId>,
    policy: Option<MethodPolicy>,
}

impl Actor {
    fn of<T>(request: &Request<T>) -> Actor {
        let extensions = request.extensions();
        let component = extensions
            .get::<CallerComponent>()
            .map(|caller| caller.0.clone());
        let context = extensions
            .get::<TenantContext>()
            .and_then(|context| Some((context.tenant_id.clone(), context.principal.clone()?)));
        let (tenant, principal) = context.unwrap_or_else(|| {
            let id = component.clone().unwrap_or_else(|| "compliance".to_owned());
            let principal = Principal::new(id, PrincipalKind::Service);
            (TenantId::system(), principal)
        });
        Actor {
            tenant,
            principal,
            component,
            request_id: extensions.get::<RequestId>().cloned(),
            policy: extensions.get::<MethodPolicy>().cloned(),
        }
    }

    fn record<'a>(
        &'a self,
        tenant: &'a TenantId,
        fallback: &'a str,
        resource: &'a str,
        mut attributes: Vec<(&'a str, String)>,
    ) -> AuditRecord<'a> {
        if let Some(component) = &self.component {
            attributes.push(("component", component.clone()));
        }
        AuditRecord {
            tenant,
            actor_tenant: &self.tenant,
            actor: Some(&self.principal),
            action: self.policy.as_ref().map_or(fallback, MethodPolicy::action),
            resource,
            outcome: Outcome::Success,
            request_id: self.request_id.as_ref(),
            source: crate::COMPONENT,
            attributes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that stops reading gets the export abandoned once `STALL_TIMEOUT` passes, so
    /// the snapshot and its connection are let go.
    #[tokio::test(start_paused = true)]
    async fn an_export_nobody_reads_is_abandoned() {
        let (sender, _unread) = mpsc::channel(1);
        let out = Chunker::new(sender);
        out.send(Chunk::Trailer(Default::default())).await.ok();
        let started = tokio::time::Instant::now();
        let stalled = out.send(Chunk::Trailer(Default::default())).await;
        assert!(matches!(stalled, Err(Stop::Stalled)));
        assert_eq!(started.elapsed(), STALL_TIMEOUT);
    }
}

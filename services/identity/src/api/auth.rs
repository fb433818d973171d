//! `AuthService`: password login, JWKS and signing-key rotation here; refresh-token rotation
//! with reuse detection, logout and token revocation in `auth_tokens.rs`.

use std::{sync::Arc, time::Duration};

use palisade_audit::AuditRecord;
use palisade_db::{Scope, in_scope, outbox::Relay};
use palisade_grpc::{
    ApiError, Caller, FieldViolation,
    time::{now_micros, timestamp},
};
use palisade_proto::palisade::{
    compliance::v1::Outcome,
    identity::v1::{
        AuthTokens, GetJwksRequest, Jwk, Jwks, LoginRequest, LogoutRequest, LogoutResponse,
        RefreshTokenRequest, RevokeTokenRequest, RevokeTokenResponse, RotateSigningKeyRequest,
        TenantState, UserState, auth_service_server::AuthService,
    },
};
use palisade_tenancy::{Principal, PrincipalKind, RequestId, TenantContext, TenantId};
use sqlx::AnyConnection;
use tokio::sync::OnceCell;
use tonic::{Request, Response, Status};

use crate::{
    lockout::LockoutPolicy,
    passwords::{self, Passwords, needs_rehash},
    signing::Keyring,
    store::{IdentityStore, PasswordAttempt},
    tenants::TenantRecord,
    tokens::{self, Claims, REFRESH_TOKEN_TTL_MICROS},
    users::{self, UserRecord},
};

/// The user id an unknown email's login claims its attempt for: user ids are UUIDs, so it
/// matches no row.
const NO_USER: &str = "";
/// How long a login may take between its claim and its signature (checking a password waits
/// for a hashing thread, and its writes for the database).
const SIGNING_MARGIN: Duration = Duration::from_secs(10);
/// How long a login waits to upgrade its user's password hash (`needs_rehash`); a rehash that
/// has not begun by then is dropped (`HashingThreads::run`).
const REHASH_WAIT: Duration = Duration::from_secs(2);

pub struct AuthApi {
    pub(super) store: IdentityStore,
    pub(super) relay: Relay,
    passwords: Passwords,
    pub(super) keys: Arc<Keyring>,
    lockout: LockoutPolicy,
    /// How long a sign-in session lasts at most, however often it is refreshed.
    session_max_lifetime: i64,
    /// Checked against when the email is unknown, so a miss costs as much as a wrong password
    /// and response times do not reveal which emails exist.
    decoy_hash: OnceCell<String>,
}

impl AuthApi {
    pub fn new(
        store: IdentityStore,
        relay: Relay,
        passwords: Passwords,
        keys: Arc<Keyring>,
        lockout: LockoutPolicy,
        session_max_lifetime: Duration,
    ) -> AuthApi {
        AuthApi {
            store,
            relay,
            passwords,
            keys,
            lockout,
            session_max_lifetime: i64::try_from(session_max_lifetime.as_micros())
                .unwrap_or(i64::MAX),
            decoy_hash: OnceCell::new(),
        }
    }

    /// When a session that began (its login) at `started` ends, however often it is refreshed.
    pub(super) fn session_end(&self, started: i64) -> i64 {
        started.saturating_add(self.session_max_lifetime)
    }

    /// Signs a fresh access token for `user` and stores a fresh refresh token in `family`
    /// (whose login was at `started`); neither outlives the session.
    pub(super) async fn issue(
        &self,
        conn: &mut AnyConnection,
        user: &UserRecord,
        (family, started): (&str, i64),
        now: i64,
    ) -> Result<AuthTokens, ApiError> {
        let session_end = self.session_end(started);
        let claims = Claims::for_user(user, family, now, session_end);
        let access_token = self.keys.signer()?.sign(&claims)?;
        let (refresh_token, hash) = tokens::new_refresh_token();
        let refresh_expire = (now + REFRESH_TOKEN_TTL_MICROS).min(session_end);
        self.store
            .insert_refresh_token(conn, family, &hash, now, refresh_expire)
            .await?;
        Ok(AuthTokens {
            access_token,
            token_type: "Bearer".to_owned(),
            access_token_expire_time: Some(timestamp(claims.exp * 1_000_000)),
            refresh_token,
            refresh_token_expire_time: Some(timestamp(refresh_expire)),
            user: user.name(),
        })
    }

    /// Records an event that changes nothing else (a refused login) on its own.
    async fn audit_alone(&self, record: &AuditRecord<'_>) -> Result<(), ApiError> {
        palisade_audit::record_alone(self.store.db(), record, &self.relay)
            .await
            .map_err(ApiError::from)
    }

    /// Records a refused `Login` on `resource` (a user, or for an unknown email its tenant), and
    /// why; without an actor, as nobody proved who was calling.
    async fn audit_refused_login(
        &self,
        tenant: &TenantId,
        resource: &str,
        request_id: Option<&RequestId>,
        reason: &str,
    ) -> Result<(), ApiError> {
        self.audit_alone(&AuditRecord {
            tenant,
            actor_tenant: tenant,
            actor: None,
            action: "identity.auth.login",
            resource,
            outcome: Outcome::Failure,
            request_id,
            source: crate::COMPONENT,
            attributes: vec![("reason", reason.to_owned())],
        })
        .await
    }

    /// Records that `resource` (a user, or for an unknown email its tenant) has just been
    /// locked out: by the refused attempt whose claim reached the limit, whatever refused it
    /// (exactly once per lock, whatever the parallelism).
    async fn audit_lockout(
        &self,
        tenant: &TenantId,
        resource: &str,
        request_id: Option<&RequestId>,
    ) -> Result<(), ApiError> {
        tracing::warn!(tenant = %tenant, resource, "login locked out after repeated failures");
        let lock_seconds = self.lockout.lock_for.as_secs().to_string();
        self.audit_alone(&AuditRecord {
            tenant,
            actor_tenant: tenant,
            actor: None,
            action: "identity.auth.lockout",
            resource,
            outcome: Outcome::Denied,
            request_id,
            source: crate::COMPONENT,
            attributes: vec![
                ("failures", self.lockout.max_failures.to_string()),
                ("lock_seconds", lock_seconds),
            ],
        })
        .await
    }

    /// Whether `password` is the one `stored` holds for a user (its id and PHC string), after
    /// a check against the decoy when there is no such user.
    async fn password_matches(
        &self,
        stored: Option<(&str, &str)>,
        password: &str,
    ) -> Result<bool, ApiError> {
        match stored {
            Some((user, stored)) => self.passwords.verify(user, stored, password).await,
            None => {
                let decoy = self
                    .decoy_hash
                    .get_or_try_init(|| async {
                        let decoy = uuid::Uuid::new_v4().simple().to_string();
                        self.passwords.hash(&decoy).await
                    })
                    .await?;
                self.passwords.verify("decoy", decoy, password).await?;
                Ok(false)
            }
        }
    }

    /// Whether the user and its tenant, read again now, may still sign in.
    async fn may_still_sign_in(&self, user: &UserRecord) -> Result<bool, ApiError> {
        let tenant = self.store.get_tenant(&user.tenant_id).await?;
        Ok(may_sign_in(user, tenant.as_ref()))
    }
}

/// Whether `user` may sign in to `tenant` (its tenant, `None` when that is gone).
pub(super) fn may_sign_in(user: &UserRecord, tenant: Option<&TenantRecord>) -> bool {
    user.state == UserState::Active
        && tenant.is_some_and(|tenant| tenant.state == TenantState::Active)
}

fn invalid_login() -> ApiError {
    ApiError::Unauthenticated {
        reason: "INVALID_LOGIN",
        message: "the tenant, email or password is wrong, or the account is not active".to_owned(),
    }
}

pub(super) fn user_principal(user: &UserRecord) -> Principal {
    Principal::new(user.id.clone(), PrincipalKind::User)
}

#[tonic::async_trait]
impl AuthService for AuthApi {
    async fn login(&self, request: Request<LoginRequest>) -> Result<Response<AuthTokens>, Status> {
        as_public_call(self.log_in(request)).await
    }

    async fn refresh_token(
        &self,
        request: Request<RefreshTokenRequest>,
    ) -> Result<Response<AuthTokens>, Status> {
        as_public_call(self.refresh(request)).await
    }

    async fn logout(
        &self,
        request: Request<LogoutRequest>,
    ) -> Result<Response<LogoutResponse>, Status> {
        as_public_call(self.log_out(request)).await
    }

    async fn revoke_token(
        &self,
        request: Request<RevokeTokenRequest>,
    ) -> Result<Response<RevokeTokenResponse>, Status> {
        as_public_call(self.revoke(request)).await
    }

    async fn get_jwks(&self, _request: Request<GetJwksRequest>) -> Result<Response<Jwks>, Status> {
        Ok(Response::new(Jwks {
            keys: self.keys.jwks().await?,
        }))
    }

    async fn rotate_signing_key(
        &self,
        request: Request<RotateSigningKeyRequest>,
    ) -> Result<Response<Jwk>, Status> {
        // The keys sign every tenant's tokens: platform operators only (`platform_only`,
        // enforced by the policy layer), whatever a tenant admin holds.
        let caller = Caller::of(&request)?;
        Ok(Response::new(self.keys.rotate(caller.principal()).await?))
    }
}

/// `Login`, run as a public call ([`as_public_call`]): a client may send its current
/// credential along, and when that is another tenant's, row-level security would hide the
/// tenant being signed into on PostgreSQL. Once the request is whole, only the named tenant's
/// rows are in view.
impl AuthApi {
    async fn log_in(&self, request: Request<LoginRequest>) -> Result<Response<AuthTokens>, Status> {
        let request_id = request.extensions().get::<RequestId>().cloned();
        // The tenant the gateway resolved from the host name (a context without principal).
        let host_tenant = request
            .extensions()
            .get::<TenantContext>()
            .filter(|context| context.principal.is_none())
            .map(|context| context.tenant_id.to_string());
        let mut request = request.into_inner();
        if let Some(host_tenant) = host_tenant {
            if request.tenant_id.is_empty() {
                request.tenant_id = host_tenant;
            } else if request.tenant_id != host_tenant {
                return Err(ApiError::invalid(
                    "tenant_id",
                    format!("the host name is tenant {host_tenant}'s; leave tenant_id empty or name that tenant"),
                )
                .into());
            }
        }
        let mut violations = Vec::new();
        for (field, value) in [
            ("tenant_id", &request.tenant_id),
            ("email", &request.email),
            ("password", &request.password),
        ] {
            if value.is_empty() {
                violations.push(FieldViolation::new(field, "is required"));
            }
        }
        // Longer than anything that names a tenant, an account or a password identity keeps,
        // and refused before any work; the bounds depend on the input alone, so the refusal
        // tells nothing of what exists.
        if request.tenant_id.len() > TenantId::MAX_LEN {
            let problem = format!("is longer than any tenant id ({} bytes)", TenantId::MAX_LEN);
            violations.push(FieldViolation::new("tenant_id", problem));
        }
        if request.email.trim().chars().count() > users::EMAIL_MAX_LEN {
            let problem = format!("must be at most {} characters", users::EMAIL_MAX_LEN);
            violations.push(FieldViolation::new("email", problem));
        }
        if request.password.len() > passwords::MAX_TYPED_BYTES {
            let problem = format!("must be at most {} bytes", passwords::MAX_TYPED_BYTES);
            violations.push(FieldViolation::new("password", problem));
        }
        if !violations.is_empty() {
            return Err(ApiError::InvalidArgument(violations).into());
        }
        // From here only the named tenant's rows are in view (a malformed tenant id names no
        // tenant, and nothing is read for it).
        match TenantId::parse(&request.tenant_id) {
            Ok(tenant) => {
                let sign_in = self.sign_in(request, request_id);
                in_scope(Scope::Tenant(tenant.as_str()), sign_in).await
            }
            Err(_) => self.sign_in(request, request_id).await,
        }
    }

    /// `Login` with a whole request, in the tenant it names.
    async fn sign_in(
        &self,
        request: LoginRequest,
        request_id: Option<RequestId>,
    ) -> Result<Response<AuthTokens>, Status> {
        let email = request.email.trim().to_lowercase();
        let tenant_record = match TenantId::parse(&request.tenant_id) {
            Ok(id) => self.store.get_tenant(&id).await?,
            Err(_) => None,
        };
        let tenant = tenant_record.as_ref().map(|record| record.id.clone());
        let found = match &tenant {
            Some(tenant) => self.store.user_by_email(tenant, &email).await?,
            None => None,
        };
        let now = now_micros();
        // A login whose token could not be signed when its password has been checked is
        // refused before its attempt is claimed, so that it counts as no failure.
        self.keys.ensure_signing_for(SIGNING_MARGIN)?;
        // The attempt is claimed (counted as a failure) before the password is checked, so
        // parallel guesses cannot outnumber the lockout's limit. A locked account's password
        // is still hashed, and the answer ignored: refusing it sooner than an unknown email
        // (hashed against a decoy) would tell the email exists. For the same reason an
        // unknown email's attempt is claimed as a user's is, in a row of its own, and locks
        // alike: a claim that writes takes longer (on PostgreSQL it waits for the WAL flush,
        // on SQLite for the one writer), so one that wrote nothing would answer unknown emails
        // sooner. An unknown tenant's refusal writes no audit event either, so it is quicker
        // anyway; its claim matches no row, which still waits for SQLite's writer.
        let claim = match (&found, &tenant) {
            (Some((user, _)), _) => {
                (self.store)
                    .claim_password_attempt(&user.id, now, &self.lockout)
                    .await?
            }
            (None, Some(tenant)) => {
                (self.store)
                    .claim_unknown_email_attempt(tenant, &email, now, &self.lockout)
                    .await?
            }
            (None, None) => {
                (self.store)
                    .claim_password_attempt(NO_USER, now, &self.lockout)
                    .await?
            }
        };
        let attempt = found.is_some().then_some(claim);
        let locked = attempt == Some(PasswordAttempt::Refused);
        let matches = self
            .password_matches(
                found
                    .as_ref()
                    .map(|(user, hash)| (user.id.as_str(), hash.as_str())),
                &request.password,
            )
            .await?
            && !locked;
        let refusal = match &found {
            None => Some("unknown_email"),
            Some(_) if locked => Some("locked"),
            Some(_) if !matches => Some("wrong_password"),
            // The password was right, so saying that the tenant is suspended reveals nothing.
            Some(_)
                if tenant_record
                    .as_ref()
                    .is_some_and(|t| t.state != TenantState::Active) =>
            {
                Some("tenant_not_active")
            }
            // Read again: a suspension or deletion that landed during the hash wins.
            Some((user, _)) if !self.may_still_sign_in(user).await? => Some("not_active"),
            Some(_) => None,
        };
        let action = "identity.auth.login";
        if let Some(refusal) = refusal {
            // Already counted by the claim, also when the audit event below cannot be written.
            // A right password refused for another reason (a suspended tenant, a disabled
            // user) stays counted: such a user cannot sign in either way. Whichever refused
            // attempt reached the limit locked the account, and that is audited.
            // An unknown email's lock is audited too, so that its attempt writes as a user's.
            let locked_out = claim == PasswordAttempt::Counted { locks: true };
            // An unknown tenant has no audit log to write to; the refusal is only logged.
            if let Some(tenant) = &tenant {
                let resource = found
                    .as_ref()
                    .map_or_else(|| format!("tenants/{tenant}"), |(user, _)| user.name());
                self.audit_refused_login(tenant, &resource, request_id.as_ref(), refusal)
                    .await?;
            }
            if let (Some(tenant), true) = (&tenant, locked_out) {
                let resource = found
                    .as_ref()
                    .map_or_else(|| format!("tenants/{tenant}"), |(user, _)| user.name());
                self.audit_lockout(tenant, &resource, request_id.as_ref())
                    .await?;
            }
            // Debug-formatted: the client's text, its control characters escaped.
            tracing::info!(tenant = ?request.tenant_id, reason = refusal, "login refused");
            if let (Some(record), "tenant_not_active") = (&tenant_record, refusal) {
                crate::tenants::ensure_active(record)?;
            }
            return Err(invalid_login().into());
        }
        let (user, verified_hash) = found.expect("refused above when missing");
        // A hash made otherwise than identity makes them now (imported, or from before a change
        // of parameters) is made again while the password is at hand. A login is not refused,
        // nor held long in a queue of logins, for want of it: the old hash stays until the
        // next one.
        let rehashed = match needs_rehash(&verified_hash) {
            false => None,
            true => {
                let rehash = self.passwords.rehash(&verified_hash, &request.password);
                match tokio::time::timeout(REHASH_WAIT, rehash).await {
                    Ok(Ok(rehashed)) => Some(rehashed),
                    Ok(Err(error)) => {
                        tracing::warn!(%error, user = %user.id, "password hash not upgraded");
                        None
                    }
                    Err(_) => {
                        tracing::info!(user = %user.id, "password hash not upgraded: hashing is busy");
                        None
                    }
                }
            }
        };
        let family = uuid::Uuid::now_v7().to_string();
        let principal = user_principal(&user);
        let resource = user.name();
        let mut tx = self.store.db().begin().await.map_err(ApiError::from)?;
        // Rechecked under the user's lock: a deletion, a disabling or a password change that
        // committed since the checks above wins, rather than a session opening for a user that
        // is gone or stopped, or on a password that no longer is (the change ended every
        // session it saw). The same statement forgets the failures (the claim counted this
        // attempt as one).
        match self
            .store
            .lock_user_for_sign_in(
                &mut tx,
                &user.tenant_id,
                &user.id,
                &verified_hash,
                rehashed.as_deref(),
            )
            .await?
        {
            Some(current) if current.state == UserState::Active => {}
            _ => {
                // Recorded as every refusal is (the proto promises success and failure both),
                // once the lock is let go.
                drop(tx);
                tracing::info!(tenant = %user.tenant_id, user = %user.id, "login refused: the user changed while its password was checked");
                let reason = "changed_during_check";
                self.audit_refused_login(&user.tenant_id, &resource, request_id.as_ref(), reason)
                    .await?;
                return Err(invalid_login().into());
            }
        }
        self.store
            .insert_token_family(&mut tx, &family, &user, now)
            .await?;
        let tokens = self.issue(&mut tx, &user, (&family, now), now).await?;
        let audit = AuditRecord {
            tenant: &user.tenant_id,
            actor_tenant: &user.tenant_id,
            actor: Some(&principal),
            action,
            resource: &resource,
            outcome: Outcome::Success,
            request_id: request_id.as_ref(),
            source: crate::COMPONENT,
            attributes: [("token_family", family.clone())]
                .into_iter()
                .chain(
                    rehashed
                        .is_some()
                        .then(|| ("password_rehashed", "true".to_owned())),
                )
                .collect(),
        };
        palisade_audit::commit_with(tx, &audit, &self.relay)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(tenant = %user.tenant_id, user = %user.id, "user signed in");
        Ok(Response::new(tokens))
    }
}

/// Runs a public auth call with every tenant's rows in view, whatever credential came with it;
/// the call itself names, or finds by token, the one tenant it acts in.
async fn as_public_call<F: std::future::Future>(work: F) -> F::Output {
    let request_id = palisade_tenancy::current_request_id().unwrap_or_else(RequestId::generate);
    let work = palisade_db::in_scope(palisade_db::Scope::AllTenants, work);
    palisade_tenancy::with_context(None, request_id, work).await
}

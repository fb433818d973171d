//! `AuthService`'s token-as-credential methods: `RefreshToken` (rotation with reuse
//! detection), `Logout` and `RevokeToken`, both of which end a sign-in session.

use palisade_audit::AuditRecord;
use palisade_grpc::{ApiError, time::now_micros};
use palisade_proto::palisade::{
    compliance::v1::Outcome,
    identity::v1::{
        AuthTokens, LogoutRequest, LogoutResponse, RefreshTokenRequest, RevokeTokenRequest,
        RevokeTokenResponse,
    },
};
use palisade_tenancy::{Principal, PrincipalKind, RequestId, TenantContext, TenantId};
use tonic::{Request, Response, Status};

use super::auth::{AuthApi, may_sign_in, user_principal};
use crate::{store::SessionRecord, tokens};

/// The token-as-credential methods (`RefreshToken`, `Logout`, `RevokeToken`), whose tenant is
/// known only once the token is found. They run with every tenant's rows in view, as a public
/// call naming no tenant does: a credential sent along, or the host name, may name another
/// tenant (a security team revoking a leaked token of a tenant it does not belong to), and on
/// PostgreSQL row-level security would then hide the token. They find rows by token and family
/// only, and act for the tenant the token belongs to.
impl AuthApi {
    pub(super) async fn refresh(
        &self,
        request: Request<RefreshTokenRequest>,
    ) -> Result<Response<AuthTokens>, Status> {
        let request_id = request.extensions().get::<RequestId>().cloned();
        let presented = &request.get_ref().refresh_token;
        if presented.is_empty() {
            return Err(ApiError::invalid("refresh_token", "is required").into());
        }
        let now = now_micros();
        let token = self
            .store
            .refresh_token(&tokens::hash_refresh_token(presented))
            .await?
            .ok_or_else(invalid_refresh_token)?;
        // The session's end also bounds tokens issued before it was capped.
        if token.family_revoke_time.is_some()
            || token.expire_time <= now
            || self.session_end(token.family_create_time) <= now
        {
            return Err(invalid_refresh_token().into());
        }
        let user = self
            .store
            .get_user(&token.tenant_id, &token.user_id)
            .await?
            .ok_or_else(invalid_refresh_token)?;
        let principal = user_principal(&user);
        let resource = user.name();
        let mut tx = self.store.db().begin().await.map_err(ApiError::from)?;
        // Revoked since it was read above (a password change, a logout, a reuse elsewhere).
        if !self
            .store
            .lock_live_token_family(&mut tx, &token.family_id)
            .await?
        {
            return Err(invalid_refresh_token().into());
        }
        if !self
            .store
            .use_refresh_token(&mut tx, &token.id, now)
            .await?
        {
            // A used token came back: someone holds a copy. End the whole family.
            self.store
                .revoke_token_family(&mut tx, &token.family_id, now)
                .await?;
            let audit = AuditRecord {
                tenant: &token.tenant_id,
                actor_tenant: &token.tenant_id,
                actor: Some(&principal),
                action: "identity.auth.refresh_token_reuse",
                resource: &resource,
                outcome: Outcome::Denied,
                request_id: request_id.as_ref(),
                source: crate::COMPONENT,
                attributes: vec![("token_family", token.family_id.clone())],
            };
            palisade_audit::commit_with(tx, &audit, &self.relay)
                .await
                .map_err(ApiError::from)?;
            tracing::warn!(
                tenant = %token.tenant_id,
                user = %token.user_id,
                family = %token.family_id,
                "refresh token reused; token family revoked"
            );
            return Err(invalid_refresh_token().into());
        }
        // Refused before use is recorded (the transaction is dropped), so the token works
        // again once the tenant is reactivated.
        let tenant = self.store.get_tenant(&user.tenant_id).await?;
        if let Some(tenant) = &tenant {
            crate::tenants::ensure_active(tenant)?;
        }
        if !may_sign_in(&user, tenant.as_ref()) {
            return Err(invalid_refresh_token().into());
        }
        let session = (token.family_id.as_str(), token.family_create_time);
        let tokens = self.issue(&mut tx, &user, session, now).await?;
        let audit = AuditRecord {
            tenant: &user.tenant_id,
            actor_tenant: &user.tenant_id,
            actor: Some(&principal),
            action: "identity.auth.refresh",
            resource: &resource,
            outcome: Outcome::Success,
            request_id: request_id.as_ref(),
            source: crate::COMPONENT,
            attributes: vec![("token_family", token.family_id.clone())],
        };
        palisade_audit::commit_with(tx, &audit, &self.relay)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(tokens))
    }

    pub(super) async fn log_out(
        &self,
        request: Request<LogoutRequest>,
    ) -> Result<Response<LogoutResponse>, Status> {
        let request_id = request.extensions().get::<RequestId>().cloned();
        let ender = Ender::of(&request);
        let presented = &request.get_ref().refresh_token;
        if presented.is_empty() {
            return Err(ApiError::invalid("refresh_token", "is required").into());
        }
        let token = self
            .store
            .refresh_token(&tokens::hash_refresh_token(presented))
            .await?
            .ok_or_else(invalid_refresh_token)?;
        let session = token.session();
        let ended = Ended {
            action: "identity.auth.logout",
            by: ender.as_ref(),
            request_id: request_id.as_ref(),
        };
        self.end_session(&session, ended).await?;
        Ok(Response::new(LogoutResponse {}))
    }

    pub(super) async fn revoke(
        &self,
        request: Request<RevokeTokenRequest>,
    ) -> Result<Response<RevokeTokenResponse>, Status> {
        let request_id = request.extensions().get::<RequestId>().cloned();
        let ender = Ender::of(&request);
        let token = &request.get_ref().token;
        let session = if token.is_empty() {
            return Err(ApiError::invalid("token", "is required").into());
        } else if tokens::looks_like_refresh_token(token) {
            self.store
                .refresh_token(&tokens::hash_refresh_token(token))
                .await?
                .map(|token| token.session())
        } else if tokens::looks_like_access_token(token) {
            self.access_token_session(token).await?
        } else {
            return Err(ApiError::invalid(
                "token",
                "is neither a refresh token (palrt_…) nor an access token (a JWT)",
            )
            .into());
        };
        // RFC 7009: a token that grants nothing (unknown, forged, already revoked) is answered
        // like one just revoked.
        if let Some(session) = session {
            let ended = Ended {
                action: "identity.auth.revoke",
                by: ender.as_ref(),
                request_id: request_id.as_ref(),
            };
            self.end_session(&session, ended).await?;
        }
        Ok(Response::new(RevokeTokenResponse {}))
    }

    /// Revokes `session` and records how it `ended`, unless it had already ended.
    async fn end_session(&self, session: &SessionRecord, ended: Ended<'_>) -> Result<(), ApiError> {
        let owner = Principal::new(session.user_id.clone(), PrincipalKind::User);
        // Whoever presented the token, unless the call carried a credential that says who.
        let (actor_tenant, actor) = match ended.by {
            Some(ender) => (&ender.tenant, &ender.principal),
            None => (&session.tenant_id, &owner),
        };
        let resource = format!("tenants/{}/users/{}", session.tenant_id, session.user_id);
        let mut tx = self.store.db().begin().await.map_err(ApiError::from)?;
        if self
            .store
            .revoke_token_family(&mut tx, &session.id, now_micros())
            .await?
        {
            let audit = AuditRecord {
                tenant: &session.tenant_id,
                actor_tenant,
                actor: Some(actor),
                action: ended.action,
                resource: &resource,
                outcome: Outcome::Success,
                request_id: ended.request_id,
                source: crate::COMPONENT,
                attributes: vec![("token_family", session.id.clone())],
            };
            palisade_audit::enqueue(&mut tx, &audit)
                .await
                .map_err(ApiError::from)?;
        }
        tx.commit().await.map_err(ApiError::from)?;
        self.relay.notify();
        Ok(())
    }

    /// The session an access token belongs to, if it is genuine and names one.
    async fn access_token_session(&self, token: &str) -> Result<Option<SessionRecord>, ApiError> {
        let Some(claims) = self.keys.verified_claims(token).await? else {
            return Ok(None);
        };
        let Some(sid) = claims.sid else {
            return Ok(None);
        };
        Ok(self.store.session(&sid).await?.filter(|session| {
            session.tenant_id.as_str() == claims.tenant && session.user_id == claims.sub
        }))
    }
}

/// How a session ended: by `Logout` or `RevokeToken` (`action`), and by whom if the call said.
struct Ended<'a> {
    action: &'a str,
    by: Option<&'a Ender>,
    request_id: Option<&'a RequestId>,
}

/// The principal a token-ending call carried a credential of (verified at the gateway), which
/// may be another user than the token's, of another tenant even (a security team revoking a
/// leaked token).
struct Ender {
    tenant: TenantId,
    principal: Principal,
}

impl Ender {
    fn of<T>(request: &Request<T>) -> Option<Ender> {
        let context = request.extensions().get::<TenantContext>()?;
        Some(Ender {
            tenant: context.tenant_id.clone(),
            principal: context.principal.clone()?,
        })
    }
}

fn invalid_refresh_token() -> ApiError {
    ApiError::Unauthenticated {
        reason: "INVALID_REFRESH_TOKEN",
        message: "the refresh token is invalid, expired, used or revoked".to_owned(),
    }
}

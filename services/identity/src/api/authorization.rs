//! `AuthorizationService`: permission checks for other components' policy layers.

use palisade_grpc::{ApiError, FieldViolation};
use palisade_proto::palisade::{
    common::v1::PrincipalType,
    identity::v1::{
        CheckRequest, CheckResponse, authorization_service_server::AuthorizationService,
    },
};
use palisade_tenancy::{Principal, PrincipalKind, TenantId};
use tonic::{Request, Response, Status};

use crate::authz::Authz;

pub struct AuthorizationApi {
    authz: std::sync::Arc<Authz>,
}

impl AuthorizationApi {
    pub fn new(authz: std::sync::Arc<Authz>) -> AuthorizationApi {
        AuthorizationApi { authz }
    }
}

#[tonic::async_trait]
impl AuthorizationService for AuthorizationApi {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let request = request.into_inner();
        let (tenant, principal) = validate(&request)?;
        let resource = (!request.resource.is_empty()).then_some(request.resource.as_str());
        let decision = self
            .authz
            .decide(&tenant, &principal, &request.permission, resource)
            .await?;
        Ok(Response::new(CheckResponse {
            allowed: decision.allowed,
            reason: decision.reason,
        }))
    }
}

fn validate(request: &CheckRequest) -> Result<(TenantId, Principal), ApiError> {
    let mut violations = Vec::new();
    let principal = request.principal.as_ref();
    let tenant = principal.and_then(|p| TenantId::parse(&p.tenant_id).ok());
    if tenant.is_none() {
        violations.push(FieldViolation::new(
            "principal.tenant_id",
            "must be a tenant id",
        ));
    }
    if principal.is_none_or(|p| p.id.is_empty()) {
        violations.push(FieldViolation::new("principal.id", "must not be empty"));
    }
    let kind = match principal.map(|p| PrincipalType::try_from(p.r#type)) {
        Some(Ok(PrincipalType::User)) => Some(PrincipalKind::User),
        Some(Ok(PrincipalType::ApiKey)) => Some(PrincipalKind::ApiKey),
        Some(Ok(PrincipalType::Service)) => Some(PrincipalKind::Service),
        _ => {
            violations.push(FieldViolation::new(
                "principal.type",
                "must be USER, API_KEY or SERVICE",
            ));
            None
        }
    };
    if request.permission.is_empty() {
        violations.push(FieldViolation::new("permission", "must not be empty"));
    }
    match (tenant, kind, principal) {
        (Some(tenant), Some(kind), Some(principal)) if violations.is_empty() => Ok((
            tenant,
            Principal {
                id: principal.id.clone(),
                kind,
            },
        )),
        _ => Err(ApiError::InvalidArgument(violations)),
    }
}

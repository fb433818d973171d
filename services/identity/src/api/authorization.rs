//! `AuthorizationService`: permission checks for other components' policy layers.

use palisade_db::{Scope, in_scope};
use palisade_grpc::{ApiError, FieldViolation};
use palisade_proto::palisade::{
    common::v1::PrincipalType,
    identity::v1::{
        BatchCheckRequest, BatchCheckResponse, CheckRequest, CheckResponse,
        authorization_service_server::AuthorizationService,
    },
};
use palisade_tenancy::{Principal, PrincipalKind, TenantId};
use tonic::{Request, Response, Status};

use crate::authz::{Authz, resource_tenant};

/// The most pairs one `BatchCheck` answers.
const MAX_BATCH: usize = 100;

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
        // The principal's tenant, named in the request, whatever the calling component's call.
        let decision = self
            .authz
            .decide(&tenant, &principal, &request.permission, resource);
        let decision = in_scope(Scope::Tenant(tenant.as_str()), decision).await?;
        Ok(Response::new(CheckResponse {
            allowed: decision.allowed,
            reason: decision.reason,
            refusal_reason: decision.refusal.unwrap_or_default(),
        }))
    }

    async fn batch_check(
        &self,
        request: Request<BatchCheckRequest>,
    ) -> Result<Response<BatchCheckResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Vec::new();
        let principal = validate_principal(request.principal.as_ref(), &mut violations);
        if request.items.is_empty() {
            violations.push(FieldViolation::new("items", "must not be empty"));
        } else if request.items.len() > MAX_BATCH {
            violations.push(FieldViolation::new(
                "items",
                format!("must hold at most {MAX_BATCH} items"),
            ));
        } else {
            for (index, item) in request.items.iter().enumerate() {
                if item.permission.is_empty() {
                    violations.push(FieldViolation::new(
                        format!("items[{index}].permission"),
                        "must not be empty",
                    ));
                }
                check_resource(
                    &item.resource,
                    &format!("items[{index}].resource"),
                    &mut violations,
                );
            }
        }
        let Some((tenant, principal)) = principal.filter(|_| violations.is_empty()) else {
            return Err(ApiError::InvalidArgument(violations).into());
        };
        let items: Vec<(String, Option<String>)> = request
            .items
            .into_iter()
            .map(|item| {
                let resource = (!item.resource.is_empty()).then_some(item.resource);
                (item.permission, resource)
            })
            .collect();
        let decisions = self.authz.decide_many(&tenant, &principal, &items);
        let decisions = in_scope(Scope::Tenant(tenant.as_str()), decisions).await?;
        Ok(Response::new(BatchCheckResponse {
            results: decisions
                .into_iter()
                .map(|decision| CheckResponse {
                    allowed: decision.allowed,
                    reason: decision.reason,
                    refusal_reason: decision.refusal.unwrap_or_default(),
                })
                .collect(),
        }))
    }
}

fn validate(request: &CheckRequest) -> Result<(TenantId, Principal), ApiError> {
    let mut violations = Vec::new();
    let principal = validate_principal(request.principal.as_ref(), &mut violations);
    if request.permission.is_empty() {
        violations.push(FieldViolation::new("permission", "must not be empty"));
    }
    check_resource(&request.resource, "resource", &mut violations);
    match principal {
        Some(principal) if violations.is_empty() => Ok(principal),
        _ => Err(ApiError::InvalidArgument(violations)),
    }
}

/// An optional resource must be named as the mesh names resources (see `resource_tenant`).
fn check_resource(resource: &str, field: &str, violations: &mut Vec<FieldViolation>) {
    if !resource.is_empty() && resource_tenant(resource).is_none() {
        violations.push(FieldViolation::new(
            field,
            "must be empty or a resource name such as tenants/acme or tenants/acme/users/{id}",
        ));
    }
}

/// The tenant and principal of a check, or `None` with the violations recorded.
fn validate_principal(
    principal: Option<&palisade_proto::palisade::common::v1::Principal>,
    violations: &mut Vec<FieldViolation>,
) -> Option<(TenantId, Principal)> {
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
    let session_id = match principal.map(|p| p.session_id.as_str()) {
        None | Some("") => None,
        Some(session) if uuid::Uuid::try_parse(session).is_ok() => Some(session.to_owned()),
        Some(_) => {
            violations.push(FieldViolation::new(
                "principal.session_id",
                "must be empty or a session id (a UUID)",
            ));
            None
        }
    };
    match (tenant, kind, principal) {
        (Some(tenant), Some(kind), Some(principal)) => Some((
            tenant,
            Principal {
                session_id,
                ..Principal::new(principal.id.clone(), kind)
            },
        )),
        _ => None,
    }
}

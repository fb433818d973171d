//! Helpers shared by the integration tests (included with `mod common;`).

#![allow(dead_code)]

use palisade_proto::palisade::identity::v1::{CreateTenantRequest, Plan, Tenant};
use tonic::{Code, Status};
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

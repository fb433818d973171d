//! Helpers shared by the custom-role tests (included with `mod roles_kit;`): professional
//! tenants with users, roles from catalogue permissions, logins.

#![allow(dead_code)]

use palisade_proto::palisade::identity::v1::{
    CreateRoleRequest, CreateUserRequest, LoginRequest, Plan, Role, User,
    auth_service_client::AuthServiceClient, tenant_service_client::TenantServiceClient,
    user_service_client::UserServiceClient,
};
use palisade_testkit::Mesh;
use tonic::transport::Channel;

use crate::common::new_tenant;

pub const PASSWORD: &str = "correct horse battery staple";

pub fn new_user(tenant: &str, email: &str, roles: &[&str]) -> CreateUserRequest {
    CreateUserRequest {
        parent: format!("tenants/{tenant}"),
        user: Some(User {
            email: email.to_owned(),
            display_name: email.split('@').next().unwrap_or_default().to_owned(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            ..User::default()
        }),
        password: PASSWORD.to_owned(),
    }
}

pub fn new_role(tenant: &str, role_id: &str, permissions: &[&str]) -> CreateRoleRequest {
    CreateRoleRequest {
        parent: format!("tenants/{tenant}"),
        role_id: role_id.to_owned(),
        role: Some(Role {
            display_name: format!("The {role_id} role"),
            permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
            ..Role::default()
        }),
    }
}

pub fn with_bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}").parse().expect("tokens are ascii");
    request.metadata_mut().insert("authorization", value);
    request
}

pub async fn login(gateway: Channel, tenant: &str, email: &str) -> anyhow::Result<String> {
    let tokens = AuthServiceClient::new(gateway)
        .login(LoginRequest {
            tenant_id: tenant.to_owned(),
            email: email.to_owned(),
            password: PASSWORD.to_owned(),
        })
        .await?
        .into_inner();
    Ok(tokens.access_token)
}

/// Tenants (each `Professional`) with one user per (tenant, email, role); returns the users.
pub async fn populate(mesh: &Mesh, users: &[(&str, &str, &str)]) -> anyhow::Result<Vec<User>> {
    let mut tenants = TenantServiceClient::new(mesh.gateway());
    let mut made = Vec::new();
    for (tenant, _, _) in users {
        if !made.contains(tenant) {
            tenants
                .create_tenant(mesh.as_operator(new_tenant(tenant, tenant, Plan::Professional)))
                .await?;
            made.push(tenant);
        }
    }
    let mut client = UserServiceClient::new(mesh.gateway());
    let mut created = Vec::new();
    for (tenant, email, role) in users {
        let roles: &[&str] = if role.is_empty() { &[] } else { &[role] };
        let user = client
            .create_user(mesh.as_operator(new_user(tenant, email, roles)))
            .await?
            .into_inner();
        created.push(user);
    }
    Ok(created)
}

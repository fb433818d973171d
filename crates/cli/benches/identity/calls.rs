//! The identity bench's side of the mesh: the tenant and users it makes, and the calls it
//! times, each made as the caller it stands for would make it.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use palisade_proto::palisade::{
    common::v1::{Principal, PrincipalType},
    compliance::v1::{ListAuditEventsRequest, audit_service_client::AuditServiceClient},
    identity::v1::{
        CheckRequest, CreateRoleRequest, CreateTenantRequest, CreateUserRequest, GetUserRequest,
        LoginRequest, Plan, Role, Tenant, User, VerifyApiKeyRequest,
        api_key_service_client::ApiKeyServiceClient, auth_service_client::AuthServiceClient,
        authorization_service_client::AuthorizationServiceClient,
        role_service_client::RoleServiceClient, tenant_service_client::TenantServiceClient,
        user_service_client::UserServiceClient,
    },
};
use tonic::{Code, transport::Channel};

use crate::{COLD_PRINCIPALS, FLOOD_CLIENTS, PERMISSION, ROLE, TENANT, support::with_context};

const PASSWORD: &str = "correct horse battery staple";
const WRONG_PASSWORD: &str = "incorrect horse battery staple";

/// The users the run needs.
pub struct People {
    /// Id of the principal of the closed-loop and paced runs (reads the audit log and itself).
    pub reader: String,
    /// Ids of users compliance has not seen: one first call and one second call each.
    pub cold: Vec<String>,
    /// Emails of the login users, one per flood client (the first ones also serve part 2).
    pub flood: Arc<Vec<String>>,
}

/// The tenant, the custom role and every user, made directly on identity as the operator.
pub async fn populate(identity: &Channel, key: &str) -> anyhow::Result<People> {
    let started = Instant::now();
    // The key file is written once every component listens.
    let operator = ApiKeyServiceClient::new(identity.clone())
        .verify_api_key(VerifyApiKeyRequest {
            key: key.to_owned(),
        })
        .await?
        .into_inner()
        .principal
        .ok_or_else(|| anyhow::anyhow!("no principal"))?;
    let operator = Arc::new((operator.tenant_id, operator.id, "api-key"));
    let tenant = CreateTenantRequest {
        tenant: Some(Tenant {
            display_name: "Bench".into(),
            plan: Plan::Enterprise as i32,
            ..Tenant::default()
        }),
        tenant_id: TENANT.into(),
    };
    TenantServiceClient::new(identity.clone())
        .create_tenant(with_context(tenant, &operator)?)
        .await?;
    let role = CreateRoleRequest {
        parent: format!("tenants/{TENANT}"),
        role_id: ROLE.into(),
        role: Some(Role {
            display_name: "Bench reader".into(),
            permissions: vec![PERMISSION.into(), "identity.users.get".into()],
            ..Role::default()
        }),
    };
    RoleServiceClient::new(identity.clone())
        .create_role(with_context(role, &operator)?)
        .await?;

    let mut emails = vec!["reader@example.com".to_owned()];
    emails.extend((0..COLD_PRINCIPALS).map(|i| format!("cold-{i}@example.com")));
    emails.extend((0..FLOOD_CLIENTS).map(|i| format!("flood-{i}@example.com")));
    // A few creations at a time: each hashes a password, and identity hashes few at once.
    let workers: Vec<_> = (emails.chunks(emails.len().div_ceil(4)))
        .map(|chunk| {
            let (identity, operator, chunk) = (identity.clone(), operator.clone(), chunk.to_vec());
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for email in chunk {
                    let create = CreateUserRequest {
                        parent: format!("tenants/{TENANT}"),
                        user: Some(User {
                            email: email.clone(),
                            display_name: email,
                            roles: vec![ROLE.into()],
                            ..User::default()
                        }),
                        password: PASSWORD.into(),
                    };
                    let user = UserServiceClient::new(identity.clone())
                        .create_user(with_context(create, &operator)?)
                        .await?
                        .into_inner();
                    ids.push(user.name.rsplit('/').next().unwrap_or_default().to_owned());
                }
                anyhow::Ok(ids)
            })
        })
        .collect();
    let mut ids = Vec::new();
    for worker in workers {
        ids.extend(worker.await??);
    }
    eprintln!(
        "populated: {} users in {:?}",
        emails.len(),
        started.elapsed()
    );
    Ok(People {
        reader: ids[0].clone(),
        cold: ids[1..=COLD_PRINCIPALS].to_vec(),
        flood: Arc::new(emails[1 + COLD_PRINCIPALS..].to_vec()),
    })
}

pub fn user_context(user: &str) -> (String, String, &'static str) {
    (TENANT.to_owned(), user.to_owned(), "user")
}

pub async fn check_call(channel: Channel, user: Arc<String>) -> anyhow::Result<()> {
    let answer = AuthorizationServiceClient::new(channel)
        .check(CheckRequest {
            principal: Some(Principal {
                tenant_id: TENANT.into(),
                id: user.to_string(),
                r#type: PrincipalType::User as i32,
                session_id: String::new(),
            }),
            permission: PERMISSION.into(),
            resource: String::new(),
        })
        .await?
        .into_inner();
    anyhow::ensure!(answer.allowed, "Check refused: {}", answer.reason);
    Ok(())
}

pub async fn list_call(channel: Channel, user: Arc<String>) -> anyhow::Result<()> {
    let list = ListAuditEventsRequest {
        parent: format!("tenants/{TENANT}"),
        page_size: 1,
        ..ListAuditEventsRequest::default()
    };
    AuditServiceClient::new(channel)
        .list_audit_events(with_context(list, &user_context(&user))?)
        .await?;
    Ok(())
}

pub async fn get_user_call(channel: Channel, user: Arc<String>) -> anyhow::Result<()> {
    let get = GetUserRequest {
        name: format!("tenants/{TENANT}/users/{user}"),
    };
    UserServiceClient::new(channel)
        .get_user(with_context(get, &user_context(&user))?)
        .await?;
    Ok(())
}

/// One login; a wrong password must be refused as `UNAUTHENTICATED`, a right one accepted.
pub async fn login_call(channel: Channel, email: String, right: bool) -> anyhow::Result<()> {
    let answer = AuthServiceClient::new(channel)
        .login(LoginRequest {
            tenant_id: TENANT.into(),
            email,
            password: if right { PASSWORD } else { WRONG_PASSWORD }.into(),
        })
        .await;
    match (answer, right) {
        (Ok(_), true) => Ok(()),
        (Err(status), false) if status.code() == Code::Unauthenticated => Ok(()),
        (answer, _) => anyhow::bail!("login (right password: {right}) answered {answer:?}"),
    }
}

/// Logs in as `email` until `stop`, alternating wrong and right passwords; returns the count.
pub async fn login_flood(
    channel: Channel,
    email: String,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<u64> {
    let mut attempts = 0;
    while !stop.load(Ordering::Relaxed) {
        login_call(channel.clone(), email.clone(), attempts % 2 == 1).await?;
        attempts += 1;
    }
    Ok(attempts)
}

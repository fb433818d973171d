//! Deadlines at the gateway: a unary call whose client sets none gets the gateway's default,
//! gives up with `DEADLINE_EXCEEDED` (HTTP 504 over REST) and cancels the backend's work; a
//! client's own `grpc-timeout` wins, also when it is longer. And a call that outwaits the
//! database's own lock wait is `UNAVAILABLE` (worth retrying), not an internal error. A
//! malformed `grpc-timeout` is `INVALID_ARGUMENT` (HTTP 400), never silently dropped.

mod common;

use std::time::Duration;

use common::{expect_code, tenant_with_admin, violated_fields};
use palisade_proto::palisade::identity::v1::{
    CreateUserRequest, ListUsersRequest, User, user_service_client::UserServiceClient,
};
use palisade_testkit::{Component, Mesh, http_request};
use tonic::Code;

const DEFAULT_DEADLINE: Duration = Duration::from_secs(2);

fn new_user(email: &str) -> CreateUserRequest {
    CreateUserRequest {
        parent: "tenants/acme".into(),
        user: Some(User {
            email: email.into(),
            display_name: "Someone".into(),
            ..User::default()
        }),
        password: "correct horse battery staple".into(),
    }
}

/// Holds acme's tenant row (and, on SQLite, the database's one writer) until dropped, so that
/// creating a user in acme waits.
async fn hold_acme(mesh: &Mesh) -> anyhow::Result<sqlx::Transaction<'static, sqlx::Any>> {
    let db = mesh.unrestricted_db(Component::Identity).await?;
    let mut tx = db.begin().await?;
    sqlx::query("UPDATE tenants SET id = id WHERE id = 'acme'")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

async fn user_emails(mesh: &Mesh) -> anyhow::Result<Vec<String>> {
    let listed = UserServiceClient::new(mesh.gateway())
        .list_users(mesh.as_operator(ListUsersRequest {
            parent: "tenants/acme".into(),
            ..Default::default()
        }))
        .await?
        .into_inner();
    Ok(listed.users.into_iter().map(|user| user.email).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_call_without_a_deadline_gets_the_gateways() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder
            .with_default_deadline(DEFAULT_DEADLINE)
            .start()
            .await?;
        tenant_with_admin(
            &mesh,
            "acme",
            "ada@example.com",
            "correct horse battery staple",
        )
        .await?;
        let mut users = UserServiceClient::new(mesh.gateway());

        // Stuck behind the lock past the default: refused, and the backend gave the work up.
        let held = hold_acme(&mesh).await?;
        let stuck = users
            .create_user(mesh.as_operator(new_user("stuck@example.com")))
            .await;
        expect_code(stuck, Code::DeadlineExceeded);
        let operator = format!("ApiKey {}", mesh.operator_key());
        let body = serde_json::json!({
            "user": {"email": "rest@example.com", "displayName": "Rest"},
            "password": "correct horse battery staple",
        });
        let over_rest = http_request(
            mesh.addr(Component::Gateway),
            "POST",
            "/v1/tenants/acme/users",
            &[
                ("content-type", "application/json"),
                ("authorization", operator.as_str()),
            ],
            body.to_string().as_bytes(),
        )
        .await?;
        assert_eq!(over_rest.status, 504, "{}", over_rest.text());
        held.rollback().await?;
        let emails = user_emails(&mesh).await?;
        assert!(
            !emails
                .iter()
                .any(|e| e == "stuck@example.com" || e == "rest@example.com"),
            "{emails:?}"
        );

        // A client's longer deadline wins over the default.
        let held = hold_acme(&mesh).await?;
        let patient = tokio::spawn({
            let mut users = users.clone();
            let mut request = mesh.as_operator(new_user("patient@example.com"));
            request.set_timeout(Duration::from_secs(30));
            async move { users.create_user(request).await }
        });
        tokio::time::sleep(DEFAULT_DEADLINE + Duration::from_secs(1)).await;
        held.commit().await?;
        patient.await??;
        assert!(
            user_emails(&mesh)
                .await?
                .contains(&"patient@example.com".to_owned())
        );
        mesh.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_outwaits_the_databases_lock_wait_is_unavailable() -> anyhow::Result<()> {
    // PostgreSQL waits for a row lock as long as the call lasts; SQLite gives up after its
    // busy timeout (5 s).
    let mesh = Mesh::builder().start().await?;
    tenant_with_admin(
        &mesh,
        "acme",
        "ada@example.com",
        "correct horse battery staple",
    )
    .await?;
    let held = hold_acme(&mesh).await?;
    let mut request = mesh.as_operator(new_user("busy@example.com"));
    request.set_timeout(Duration::from_secs(30));
    let busy = UserServiceClient::new(mesh.gateway())
        .create_user(request)
        .await;
    expect_code(busy, Code::Unavailable);
    held.rollback().await?;
    UserServiceClient::new(mesh.gateway())
        .create_user(mesh.as_operator(new_user("busy@example.com")))
        .await?;
    mesh.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_deadline_is_refused_not_ignored() -> anyhow::Result<()> {
    let mesh = Mesh::builder().start().await?;
    let list = ListUsersRequest {
        parent: "tenants/system".into(),
        ..Default::default()
    };
    for malformed in ["abc", "-1S", "1x", "123456789S"] {
        let mut request = mesh.as_operator(list.clone());
        request
            .metadata_mut()
            .insert("grpc-timeout", malformed.parse()?);
        let refused = UserServiceClient::new(mesh.gateway())
            .list_users(request)
            .await;
        let status = expect_code(refused, Code::InvalidArgument);
        assert_eq!(violated_fields(&status), ["grpc-timeout"], "{malformed}");

        let operator = format!("ApiKey {}", mesh.operator_key());
        let over_rest = http_request(
            mesh.addr(Component::Gateway),
            "GET",
            "/v1/tenants/system/users",
            &[("authorization", &operator), ("grpc-timeout", malformed)],
            b"",
        )
        .await?;
        assert_eq!(over_rest.status, 400, "{malformed}: {}", over_rest.text());
    }
    mesh.stop().await
}

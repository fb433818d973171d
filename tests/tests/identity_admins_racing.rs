//! Two admins who delete each other at the same moment do not both succeed, which would leave
//! their tenant with neither: each call locks its caller's row beside its target's, and the
//! one that runs second finds its caller gone and is aborted.

mod common;

use std::time::Duration;

use common::{expect_code, reason, tenant_with_admin, until_a_call_waits_for_a_lock};
use palisade_proto::palisade::identity::v1::{
    CreateUserRequest, DeleteUserRequest, LoginRequest, RevokeRoleRequest, User,
    auth_service_client::AuthServiceClient, user_service_client::UserServiceClient,
};
use palisade_testkit::{Component, Mesh, eventually};
use tonic::{Code, transport::Channel};

const PASSWORD: &str = "correct horse battery staple";

async fn sign_in(gateway: Channel, email: &str) -> anyhow::Result<String> {
    let tokens = AuthServiceClient::new(gateway)
        .login(LoginRequest {
            tenant_id: "acme".into(),
            email: email.into(),
            password: PASSWORD.into(),
        })
        .await?
        .into_inner();
    Ok(tokens.access_token)
}

fn with_bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let bearer = format!("Bearer {token}").parse().expect("tokens are ascii");
    request.metadata_mut().insert("authorization", bearer);
    request
}

fn delete(name: &str, token: &str) -> tonic::Request<DeleteUserRequest> {
    with_bearer(DeleteUserRequest { name: name.into() }, token)
}

/// Tenant `acme` with two admins, Ada and Bob: (Ada, Bob, Ada's token, Bob's token).
async fn two_admins(mesh: &Mesh) -> anyhow::Result<(User, User, String, String)> {
    let ada = tenant_with_admin(mesh, "acme", "ada@acme.example", PASSWORD).await?;
    let bob = UserServiceClient::new(mesh.gateway())
        .create_user(mesh.as_operator(CreateUserRequest {
            parent: "tenants/acme".into(),
            user: Some(User {
                email: "bob@acme.example".into(),
                display_name: "Bob".into(),
                roles: vec!["admin".into()],
                ..User::default()
            }),
            password: PASSWORD.into(),
        }))
        .await?
        .into_inner();
    let ada_token = sign_in(mesh.gateway(), "ada@acme.example").await?;
    let bob_token = sign_in(mesh.gateway(), "bob@acme.example").await?;
    Ok((ada, bob, ada_token, bob_token))
}

/// Opens a transaction in `db` that holds a write on `user`'s row.
async fn hold_row(
    db: &palisade_db::Db,
    user: &User,
) -> anyhow::Result<sqlx::Transaction<'static, sqlx::Any>> {
    let mut holder = db.begin().await?;
    sqlx::query("UPDATE users SET update_time = update_time WHERE id = $1")
        .bind(user.name.rsplit('/').next().expect("an id"))
        .execute(&mut *holder)
        .await?;
    Ok(holder)
}

/// Asserts that one of two racing calls succeeded and the other was aborted, to be retried.
fn one_done_and_one_aborted<T: std::fmt::Debug>(
    results: [Result<T, tonic::Status>; 2],
    backend: &str,
) {
    let done = results.iter().filter(|result| result.is_ok()).count();
    assert_eq!(done, 1, "{backend}: {results:?}");
    let [first, second] = results;
    let refused = if first.is_ok() { second } else { first };
    assert_eq!(
        reason(&expect_code(refused, Code::Aborted)),
        "CONCURRENT_CHANGE",
        "{backend}"
    );
}

/// Returns once two calls wait behind `holder` (directly, or behind a call that waits for it)
/// or `call` has ended. On SQLite, which shows no lock waits, after a pause.
async fn both_waiting_or_done<T>(
    db: &palisade_db::Db,
    holder: &mut sqlx::Transaction<'static, sqlx::Any>,
    backend: &str,
    call: &tokio::task::JoinHandle<T>,
) -> anyhow::Result<()> {
    if backend != "postgres" {
        tokio::time::sleep(Duration::from_secs(1)).await;
        return Ok(());
    }
    let holder_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut **holder)
        .await?;
    eventually(Duration::from_secs(10), || async {
        let waiting: i64 = sqlx::query_scalar(
            "WITH first AS (SELECT pid FROM pg_stat_activity \
                            WHERE $1 = ANY(pg_blocking_pids(pid))) \
             SELECT count(*) FROM pg_stat_activity a \
             WHERE a.pid IN (SELECT pid FROM first) \
                OR pg_blocking_pids(a.pid) && ARRAY(SELECT pid FROM first)",
        )
        .bind(holder_pid)
        .fetch_one(db.pool())
        .await?;
        Ok((waiting >= 2 || call.is_finished()).then_some(()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_admins_deleting_each_other_at_once_do_not_both_succeed() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        let mesh = builder.start().await?;
        let (ada, bob, ada_token, bob_token) = two_admins(&mesh).await?;
        // Ada's row is held, so Bob's deletion of her waits for it once judged; Ada's
        // deletion of Bob is judged meanwhile, then must wait for her own row too.
        let db = mesh.unrestricted_db(Component::Identity).await?;
        let mut holder = hold_row(&db, &ada).await?;
        let users = UserServiceClient::new(mesh.gateway());
        let bob_deletes_ada = tokio::spawn({
            let (mut users, request) = (users.clone(), delete(&ada.name, &bob_token));
            async move { users.delete_user(request).await }
        });
        until_a_call_waits_for_a_lock(&db, &mut holder, backend).await?;
        let ada_deletes_bob = tokio::spawn({
            let (mut users, request) = (users.clone(), delete(&bob.name, &ada_token));
            async move { users.delete_user(request).await }
        });
        // Until Ada's call waits too (for Ada's row, or for Bob's, which Bob's call holds), or
        // has ended without waiting, as it did before callers were locked.
        both_waiting_or_done(&db, &mut holder, backend, &ada_deletes_bob).await?;
        holder.commit().await?;

        one_done_and_one_aborted([bob_deletes_ada.await?, ada_deletes_bob.await?], backend);
        db.close().await;
        mesh.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_demoting_another_who_deletes_it_at_once_do_not_both_succeed() -> anyhow::Result<()>
{
    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        let mesh = builder.start().await?;
        let (ada, bob, ada_token, bob_token) = two_admins(&mesh).await?;
        // Bob's row is held: Ada's revocation of his admin role waits for it, and so does
        // Bob's deletion of Ada once judged (on the rights he still had).
        let db = mesh.unrestricted_db(Component::Identity).await?;
        let mut holder = hold_row(&db, &bob).await?;
        let users = UserServiceClient::new(mesh.gateway());
        let ada_demotes_bob = tokio::spawn({
            let mut users = users.clone();
            let request = RevokeRoleRequest {
                name: bob.name.clone(),
                role: "admin".into(),
            };
            let request = with_bearer(request, &ada_token);
            async move { users.revoke_role(request).await }
        });
        until_a_call_waits_for_a_lock(&db, &mut holder, backend).await?;
        let bob_deletes_ada = tokio::spawn({
            let (mut users, request) = (users.clone(), delete(&ada.name, &bob_token));
            async move { users.delete_user(request).await }
        });
        both_waiting_or_done(&db, &mut holder, backend, &bob_deletes_ada).await?;
        holder.commit().await?;

        // Whichever runs second finds its caller demoted or gone (on PostgreSQL the demotion,
        // which queued first; on SQLite either).
        one_done_and_one_aborted(
            [
                ada_demotes_bob.await?.map(drop),
                bob_deletes_ada.await?.map(drop),
            ],
            backend,
        );
        db.close().await;
        mesh.stop().await?;
    }
    Ok(())
}

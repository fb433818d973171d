//! Two admins who delete each other at the same moment do not both succeed, which would leave
//! their tenant with neither: each call locks its caller's row beside its target's, and the
//! one that runs second finds its caller gone and is aborted.

mod common;

use common::{expect_code, reason, tenant_with_admin, until_a_call_waits_for_a_lock};
use palisade_proto::palisade::identity::v1::{
    CreateUserRequest, DeleteUserRequest, LoginRequest, User,
    auth_service_client::AuthServiceClient, user_service_client::UserServiceClient,
};
use palisade_testkit::{Component, Mesh};
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

fn delete(name: &str, token: &str) -> tonic::Request<DeleteUserRequest> {
    let mut request = tonic::Request::new(DeleteUserRequest { name: name.into() });
    let bearer = format!("Bearer {token}").parse().expect("tokens are ascii");
    request.metadata_mut().insert("authorization", bearer);
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_admins_deleting_each_other_at_once_do_not_both_succeed() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        let mesh = builder.start().await?;
        let ada = tenant_with_admin(&mesh, "acme", "ada@acme.example", PASSWORD).await?;
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

        // Ada's row is held, so Bob's deletion of her waits for it once judged; Ada's
        // deletion of Bob is judged meanwhile, then must wait for her own row too.
        let db = mesh.unrestricted_db(Component::Identity).await?;
        let mut holder = db.begin().await?;
        sqlx::query("UPDATE users SET update_time = update_time WHERE id = $1")
            .bind(ada.name.rsplit('/').next().expect("an id"))
            .execute(&mut *holder)
            .await?;
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
        // Long enough for Ada's call to have deleted Bob, had it not waited.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        holder.commit().await?;

        let results = [bob_deletes_ada.await?, ada_deletes_bob.await?];
        let done = results.iter().filter(|result| result.is_ok()).count();
        assert_eq!(done, 1, "{backend}: {results:?}");
        let [first, second] = results;
        let refused = if first.is_ok() { second } else { first };
        assert_eq!(
            reason(&expect_code(refused, Code::Aborted)),
            "CONCURRENT_CHANGE",
            "{backend}"
        );
        db.close().await;
        mesh.stop().await?;
    }
    Ok(())
}

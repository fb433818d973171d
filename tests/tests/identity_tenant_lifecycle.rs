//! A tenant's lifecycle: suspension stops every credential of its principals until it is
//! reactivated, and deletion takes everything identity holds for it while its audit log
//! keeps the record, and the id with it.

mod common;
mod identity_kit;

use std::time::Duration;

use common::{expect_code, new_tenant, reason, violated_fields};
use identity_kit::{
    A_DAY, calls, list_users, login, login_request, new_user, plant_api_key, report, state_change,
    with_bearer,
};
use palisade_db::Scope;
use palisade_proto::palisade::{
    compliance::v1::{ListAuditEventsRequest, audit_service_client::AuditServiceClient},
    identity::v1::{
        DeleteTenantRequest, GetTenantRequest, LoginRequest, Plan, RefreshTokenRequest, Tenant,
        TenantState, UpdateTenantRequest, VerifyApiKeyRequest,
        api_key_service_client::ApiKeyServiceClient, auth_service_client::AuthServiceClient,
        edge_service_client::EdgeServiceClient, tenant_service_client::TenantServiceClient,
        user_service_client::UserServiceClient,
    },
};
use palisade_testkit::{Component, Mesh, eventually, with_api_key};
use tonic::{Code, Status};

fn assert_refused<T: std::fmt::Debug>(result: Result<T, Status>) {
    match result {
        Err(status)
            if matches!(
                status.code(),
                Code::Unauthenticated | Code::PermissionDenied
            ) => {}
        other => panic!("expected the credential to be refused, got {other:?}"),
    }
}

/// Two operators read a tenant and each changes it: with the etag it read, the second is
/// told the tenant changed (AIP-154) instead of writing over the first's change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_with_a_stale_etag_is_aborted() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let mut tenants = TenantServiceClient::new(mesh.gateway());
        let read = tenants
            .create_tenant(mesh.as_operator(new_tenant("acme", "Acme", Plan::Standard)))
            .await?
            .into_inner();
        let rename = |display_name: &str, etag: &str| UpdateTenantRequest {
            tenant: Some(Tenant {
                name: "tenants/acme".into(),
                display_name: display_name.into(),
                etag: etag.into(),
                ..Tenant::default()
            }),
            update_mask: None,
        };
        let first = tenants
            .update_tenant(mesh.as_operator(rename("Acme Corp", &read.etag)))
            .await?
            .into_inner();
        assert_ne!(first.etag, read.etag);
        let second = tenants
            .update_tenant(mesh.as_operator(rename("Acme Inc", &read.etag)))
            .await;
        assert_eq!(reason(&expect_code(second, Code::Aborted)), "ETAG_MISMATCH");
        let now = tenants
            .get_tenant(mesh.as_operator(GetTenantRequest {
                name: "tenants/acme".into(),
            }))
            .await?
            .into_inner();
        assert_eq!(
            (now.display_name.as_str(), &now.etag),
            ("Acme Corp", &first.etag)
        );
        // With the current etag, or none, it applies.
        tenants
            .update_tenant(mesh.as_operator(rename("Acme Inc", &now.etag)))
            .await?;
        tenants
            .update_tenant(mesh.as_operator(rename("Acme", "")))
            .await?;
        mesh.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspension_stops_every_credential_until_reactivated() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let mut tenants = TenantServiceClient::new(mesh.gateway());
        let mut users = UserServiceClient::new(mesh.gateway());
        let mut auth = AuthServiceClient::new(mesh.gateway());
        tenants
            .create_tenant(mesh.as_operator(new_tenant("acme", "Acme", Plan::Professional)))
            .await?;
        users
            .create_user(mesh.as_operator(new_user("acme", "ada@acme.example", &["admin"])))
            .await?;
        let db = mesh.service_db(Component::Identity).await?;
        let key = plant_api_key(&db, "acme", A_DAY, false).await?;
        db.close().await;
        let (token, refresh) = login(&mesh, "acme", "ada@acme.example").await?;
        users
            .list_users(with_api_key(list_users("acme"), &key))
            .await?;
        users
            .list_users(with_bearer(list_users("acme"), &token))
            .await?;

        tenants
            .update_tenant(mesh.as_operator(state_change("acme", TenantState::Suspended)))
            .await?;

        assert_refused(
            users
                .list_users(with_api_key(list_users("acme"), &key))
                .await,
        );
        // The access token is still a valid JWT: the component's permission check refuses it
        // (before the gateway's tenant cache notices) and says why, with the gateway's reason.
        let denied = users
            .list_users(with_bearer(list_users("acme"), &token))
            .await;
        let denied = expect_code(denied, Code::PermissionDenied);
        assert!(
            denied.message().contains("suspended"),
            "{}",
            denied.message()
        );
        assert_eq!(reason(&denied), "TENANT_SUSPENDED");
        // Identity itself tells the gateway the key's tenant is suspended, and the gateway
        // passes the reason on for a key it has not cached, as for one it has.
        let verify = ApiKeyServiceClient::new(mesh.direct(Component::Identity, "gateway").await?)
            .verify_api_key(VerifyApiKeyRequest { key: key.clone() })
            .await;
        assert_eq!(
            reason(&expect_code(verify, Code::Unauthenticated)),
            "TENANT_SUSPENDED"
        );
        let db = mesh.service_db(Component::Identity).await?;
        let uncached = plant_api_key(&db, "acme", A_DAY, false).await?;
        db.close().await;
        let refused = users
            .list_users(with_api_key(list_users("acme"), &uncached))
            .await;
        assert_eq!(
            reason(&expect_code(refused, Code::PermissionDenied)),
            "TENANT_SUSPENDED"
        );
        // Signing in and refreshing are refused with the reason, but only to the password's
        // or refresh token's holder: a wrong password learns nothing.
        let login_refused = auth.login(login_request("acme", "ada@acme.example")).await;
        assert_eq!(
            reason(&expect_code(login_refused, Code::PermissionDenied)),
            "TENANT_SUSPENDED"
        );
        let wrong = auth
            .login(LoginRequest {
                password: "not the password at all".into(),
                ..login_request("acme", "ada@acme.example")
            })
            .await;
        assert_eq!(
            reason(&expect_code(wrong, Code::Unauthenticated)),
            "INVALID_LOGIN"
        );
        let refresh_refused = auth
            .refresh_token(RefreshTokenRequest {
                refresh_token: refresh.clone(),
            })
            .await;
        assert_eq!(
            reason(&expect_code(refresh_refused, Code::PermissionDenied)),
            "TENANT_SUSPENDED"
        );
        // The operator still sees and manages the suspended tenant.
        let suspended = tenants
            .get_tenant(mesh.as_operator(GetTenantRequest {
                name: "tenants/acme".into(),
            }))
            .await?
            .into_inner();
        assert_eq!(suspended.state(), TenantState::Suspended);

        tenants
            .update_tenant(mesh.as_operator(state_change("acme", TenantState::Active)))
            .await?;
        users
            .list_users(with_api_key(list_users("acme"), &key))
            .await?;
        users
            .list_users(with_bearer(list_users("acme"), &token))
            .await?;
        // The refused refresh token was not used up.
        auth.refresh_token(RefreshTokenRequest {
            refresh_token: refresh,
        })
        .await?;
        login(&mesh, "acme", "ada@acme.example").await?;
        mesh.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_tenant_takes_everything_identity_holds() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let mut tenants = TenantServiceClient::new(mesh.gateway());
        let mut users = UserServiceClient::new(mesh.gateway());
        tenants
            .create_tenant(mesh.as_operator(new_tenant("acme", "Acme", Plan::Professional)))
            .await?;
        users
            .create_user(mesh.as_operator(new_user("acme", "ada@acme.example", &["admin"])))
            .await?;
        let (admin, _) = login(&mesh, "acme", "ada@acme.example").await?;
        let db = mesh.service_db(Component::Identity).await?;
        plant_api_key(&db, "acme", A_DAY, false).await?;
        EdgeServiceClient::new(mesh.direct(Component::Identity, "gateway").await?)
            .report_usage(report("batch-1", vec![calls("acme", 3)]))
            .await?;
        let delete = |name: &str| DeleteTenantRequest {
            name: name.to_owned(),
        };

        let own = tenants
            .delete_tenant(with_bearer(delete("tenants/acme"), &admin))
            .await;
        assert_eq!(
            reason(&expect_code(own, Code::PermissionDenied)),
            "PLATFORM_OPERATOR_ONLY"
        );
        let active = tenants
            .delete_tenant(mesh.as_operator(delete("tenants/acme")))
            .await;
        assert_eq!(
            reason(&expect_code(active, Code::FailedPrecondition)),
            "TENANT_ACTIVE"
        );
        let system = tenants
            .delete_tenant(mesh.as_operator(delete("tenants/system")))
            .await;
        assert_eq!(
            reason(&expect_code(system, Code::FailedPrecondition)),
            "SYSTEM_TENANT"
        );
        let malformed = tenants
            .delete_tenant(mesh.as_operator(delete("acme")))
            .await;
        assert_eq!(
            violated_fields(&expect_code(malformed, Code::InvalidArgument)),
            ["name"]
        );

        // A guess at an email that has no account leaves a row, deleted with the tenant.
        let unknown_email = AuthServiceClient::new(mesh.gateway())
            .login(login_request("acme", "nobody@acme.example"))
            .await;
        expect_code(unknown_email, Code::Unauthenticated);
        tenants
            .update_tenant(mesh.as_operator(state_change("acme", TenantState::Suspended)))
            .await?;
        tenants
            .delete_tenant(mesh.as_operator(delete("tenants/acme")))
            .await?;

        let gone = tenants
            .get_tenant(mesh.as_operator(GetTenantRequest {
                name: "tenants/acme".into(),
            }))
            .await;
        expect_code(gone, Code::NotFound);
        let again = tenants
            .delete_tenant(mesh.as_operator(delete("tenants/acme")))
            .await;
        expect_code(again, Code::NotFound);
        let login_gone = AuthServiceClient::new(mesh.gateway())
            .login(login_request("acme", "ada@acme.example"))
            .await;
        expect_code(login_gone, Code::Unauthenticated);
        // Every tenant's rows in view (row-level security would hide them from a bare pool).
        let mut everything = db.read_in(Scope::AllTenants).await?;
        for table in [
            "users",
            "user_roles",
            "api_keys",
            "token_families",
            "tenant_usage",
            "unknown_email_attempts",
            "tenants",
        ] {
            let column = if table == "tenants" {
                "id"
            } else {
                "tenant_id"
            };
            let sql = format!("SELECT COUNT(*) FROM {table} WHERE {column} = 'acme'");
            let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(&mut *everything)
                .await?;
            assert_eq!(count, 0, "{table} still holds acme rows");
        }
        let tokens: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM refresh_tokens")
            .fetch_one(&mut *everything)
            .await?;
        assert_eq!(tokens, 0, "the only refresh token was acme's");
        everything.commit().await?;
        db.close().await;

        // The deletion is recorded in the deleted tenant's own log, which compliance keeps.
        let audit = AuditServiceClient::new(mesh.gateway());
        let event = eventually(Duration::from_secs(10), || {
            let mut audit = audit.clone();
            let request = mesh.as_operator(ListAuditEventsRequest {
                parent: "tenants/acme".into(),
                filter: r#"action = "identity.tenants.delete""#.into(),
                ..Default::default()
            });
            async move {
                let events = audit.list_audit_events(request).await?.into_inner();
                Ok(events.audit_events.into_iter().next())
            }
        })
        .await?;
        assert_eq!(event.resource, "tenants/acme");

        // The id stays with that log: no new tenant gets it, or it would read the deleted
        // tenant's events (`identity_deleted_tenant_ids` has the rest).
        let reused = tenants
            .create_tenant(mesh.as_operator(new_tenant("acme", "Acme again", Plan::Free)))
            .await;
        expect_code(reused, Code::AlreadyExists);
        mesh.stop().await?;
    }
    Ok(())
}

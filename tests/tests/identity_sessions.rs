//! Sign-in sessions: ending one (logout, `RevokeToken` with either token) stops its access
//! tokens too, in identity at once and in other components within their permission-check
//! cache, while the user's other sessions go on.

mod common;

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use common::{expect_code, reason, tenant_with_admin, violated_fields};
use palisade_proto::palisade::{
    common::v1::{Principal, PrincipalType},
    compliance::v1::{ListAuditEventsRequest, audit_service_client::AuditServiceClient},
    identity::v1::{
        AuthTokens, BatchCheckItem, BatchCheckRequest, CheckRequest, GetUserRequest, LoginRequest,
        LogoutRequest, RefreshTokenRequest, RevokeTokenRequest,
        auth_service_client::AuthServiceClient,
        authorization_service_client::AuthorizationServiceClient,
        user_service_client::UserServiceClient,
    },
};
use palisade_testkit::{Component, Mesh, eventually};
use tonic::{Code, Status};

const PASSWORD: &str = "correct horse battery staple";

fn with_bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}").parse().expect("tokens are ascii");
    request.metadata_mut().insert("authorization", value);
    request
}

/// A session's access token at work: one identity call and one compliance call.
struct Probe {
    gateway: tonic::transport::Channel,
    user: String,
}

impl Probe {
    async fn identity(&self, tokens: &AuthTokens) -> Result<(), Status> {
        let request = GetUserRequest {
            name: self.user.clone(),
        };
        UserServiceClient::new(self.gateway.clone())
            .get_user(with_bearer(request, &tokens.access_token))
            .await
            .map(drop)
    }

    async fn compliance(&self, tokens: &AuthTokens) -> Result<(), Status> {
        let request = ListAuditEventsRequest {
            parent: "tenants/acme".into(),
            ..Default::default()
        };
        AuditServiceClient::new(self.gateway.clone())
            .list_audit_events(with_bearer(request, &tokens.access_token))
            .await
            .map(drop)
    }
}

/// Tenant acme with its admin `ada@example.com`, whose tokens the probe tries.
async fn acme_with_probe(mesh: &Mesh) -> anyhow::Result<Probe> {
    let admin = tenant_with_admin(mesh, "acme", "ada@example.com", PASSWORD).await?;
    Ok(Probe {
        gateway: mesh.gateway(),
        user: admin.name,
    })
}

async fn login(auth: &mut AuthServiceClient<tonic::transport::Channel>) -> AuthTokens {
    login_to(auth, "acme").await
}

async fn login_to(
    auth: &mut AuthServiceClient<tonic::transport::Channel>,
    tenant: &str,
) -> AuthTokens {
    auth.login(LoginRequest {
        tenant_id: tenant.into(),
        email: "ada@example.com".into(),
        password: PASSWORD.into(),
    })
    .await
    .expect("the admin signs in")
    .into_inner()
}

fn assert_session_revoked(result: Result<(), Status>) {
    assert_eq!(
        reason(&expect_code(result, Code::Unauthenticated)),
        "SESSION_REVOKED"
    );
}

/// Waits until compliance, whose permission checks are cached for a few seconds, refuses the
/// session too.
async fn compliance_refuses(probe: &Probe, tokens: &AuthTokens) -> anyhow::Result<()> {
    eventually(Duration::from_secs(15), || async {
        Ok(match probe.compliance(tokens).await {
            Err(status) if reason(&status) == "SESSION_REVOKED" => Some(()),
            Err(status) => anyhow::bail!("unexpected refusal {status:?}"),
            Ok(()) => None,
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_stops_the_sessions_access_tokens_and_no_other() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let probe = acme_with_probe(&mesh).await?;
        let mut auth = AuthServiceClient::new(mesh.gateway());
        let laptop = login(&mut auth).await;
        let phone = login(&mut auth).await;
        // Refreshed once: the access token of any generation belongs to the session.
        let laptop = auth
            .refresh_token(RefreshTokenRequest {
                refresh_token: laptop.refresh_token,
            })
            .await?
            .into_inner();
        for session in [&laptop, &phone] {
            probe.identity(session).await?;
            probe.compliance(session).await?;
        }
        auth.logout(LogoutRequest {
            refresh_token: laptop.refresh_token.clone(),
        })
        .await?;
        assert_session_revoked(probe.identity(&laptop).await);
        compliance_refuses(&probe, &laptop).await?;
        probe.identity(&phone).await?;
        probe.compliance(&phone).await?;
        mesh.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_token_ends_the_session_of_either_kind_of_token() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let probe = acme_with_probe(&mesh).await?;
        let mut auth = AuthServiceClient::new(mesh.gateway());
        let revoke = |token: &str| RevokeTokenRequest {
            token: token.to_owned(),
        };

        // By its access token: the refresh token dies with it.
        let by_access = login(&mut auth).await;
        auth.revoke_token(revoke(&by_access.access_token)).await?;
        assert_session_revoked(probe.identity(&by_access).await);
        let refused = auth
            .refresh_token(RefreshTokenRequest {
                refresh_token: by_access.refresh_token.clone(),
            })
            .await;
        assert_eq!(
            reason(&expect_code(refused, Code::Unauthenticated)),
            "INVALID_REFRESH_TOKEN"
        );
        // Revoking it again, or through its refresh token, is no error (RFC 7009).
        auth.revoke_token(revoke(&by_access.access_token)).await?;
        auth.revoke_token(revoke(&by_access.refresh_token)).await?;

        // By its refresh token, by an operator (with a credential of its own, which the audit
        // log names).
        let by_refresh = login(&mut auth).await;
        auth.revoke_token(mesh.as_operator(revoke(&by_refresh.refresh_token)))
            .await?;
        assert_session_revoked(probe.identity(&by_refresh).await);

        // Tokens that grant nothing are answered alike and end no session: an unknown refresh
        // token, and an access token whose payload was swapped for another session's.
        let survivor = login(&mut auth).await;
        let forged = {
            let parts: Vec<&str> = by_access.access_token.split('.').collect();
            let other: Vec<&str> = survivor.access_token.split('.').collect();
            format!("{}.{}.{}", parts[0], other[1], parts[2])
        };
        auth.revoke_token(revoke(&format!("palrt_{}", "0".repeat(64))))
            .await?;
        auth.revoke_token(revoke(&forged)).await?;
        probe.identity(&survivor).await?;
        probe.compliance(&survivor).await?;

        // What is neither kind of token is bad input.
        for bad in ["", "hello", "palrt_short", "a.b"] {
            let refused = auth.revoke_token(revoke(bad)).await;
            let status = expect_code(refused, Code::InvalidArgument);
            assert_eq!(violated_fields(&status), ["token"], "{bad:?}");
        }

        // Each ended session is in the audit log once, with its token family.
        let audit = AuditServiceClient::new(mesh.gateway());
        let events = eventually(Duration::from_secs(10), || {
            let mut audit = audit.clone();
            let request = mesh.as_operator(ListAuditEventsRequest {
                parent: "tenants/acme".into(),
                filter: r#"action = "identity.auth.revoke""#.into(),
                ..Default::default()
            });
            async move {
                let events = audit.list_audit_events(request).await?.into_inner();
                Ok((events.audit_events.len() >= 2).then_some(events.audit_events))
            }
        })
        .await?;
        assert_eq!(events.len(), 2, "{events:?}");
        // Ended by whoever held the token, and by the operator who said who it was.
        let ended_by = |tokens: &AuthTokens| {
            let sid = principal_of(tokens).session_id;
            let event = events
                .iter()
                .find(|event| event.attributes.get("token_family") == Some(&sid));
            let actor = event
                .and_then(|event| event.actor.clone())
                .unwrap_or_default();
            (actor.tenant_id, actor.id)
        };
        assert_eq!(
            ended_by(&by_access),
            ("acme".to_owned(), principal_of(&by_access).id)
        );
        assert_eq!(ended_by(&by_refresh).0, "system");
        mesh.stop().await?;
    }
    Ok(())
}

/// The principal an access token stands for, as a component's policy layer asks about it.
fn principal_of(tokens: &AuthTokens) -> Principal {
    let payload = tokens.access_token.split('.').nth(1).expect("a jwt");
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url"))
            .expect("json claims");
    Principal {
        tenant_id: claims["tenant"].as_str().expect("tenant").to_owned(),
        id: claims["sub"].as_str().expect("sub").to_owned(),
        r#type: PrincipalType::User as i32,
        session_id: claims["sid"].as_str().expect("sid").to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_batch_check_refuse_an_ended_session_alike() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        tenant_with_admin(&mesh, "acme", "ada@example.com", PASSWORD).await?;
        let mut auth = AuthServiceClient::new(mesh.gateway());
        let (live, ended) = (login(&mut auth).await, login(&mut auth).await);
        auth.logout(LogoutRequest {
            refresh_token: ended.refresh_token.clone(),
        })
        .await?;
        let mut authz =
            AuthorizationServiceClient::new(mesh.direct(Component::Identity, "compliance").await?);
        for (session, allowed, refusal) in [(&live, true, ""), (&ended, false, "SESSION_REVOKED")] {
            let single = authz
                .check(CheckRequest {
                    principal: Some(principal_of(session)),
                    permission: "identity.users.list".into(),
                    resource: String::new(),
                })
                .await?
                .into_inner();
            assert_eq!(
                (single.allowed, single.refusal_reason.as_str()),
                (allowed, refusal)
            );
            let batch = authz
                .batch_check(BatchCheckRequest {
                    principal: Some(principal_of(session)),
                    items: vec![BatchCheckItem {
                        permission: "identity.users.list".into(),
                        resource: "tenants/acme".into(),
                    }],
                })
                .await?
                .into_inner();
            let answer = &batch.results[0];
            assert_eq!(
                (answer.allowed, answer.refusal_reason.as_str()),
                (allowed, refusal)
            );
        }
        let malformed = authz
            .check(CheckRequest {
                principal: Some(Principal {
                    session_id: "not-a-session".into(),
                    ..principal_of(&live)
                }),
                permission: "identity.users.list".into(),
                resource: String::new(),
            })
            .await;
        let status = expect_code(malformed, Code::InvalidArgument);
        assert_eq!(violated_fields(&status), ["principal.session_id"]);
        mesh.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoever_holds_another_tenants_token_may_end_its_session() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let globex = tenant_with_admin(&mesh, "globex", "ada@example.com", PASSWORD).await?;
        tenant_with_admin(&mesh, "acme", "ada@example.com", PASSWORD).await?;
        let mut auth = AuthServiceClient::new(mesh.gateway());
        let acme = login(&mut auth).await;
        let (leaked, leaked_too) = (
            login_to(&mut auth, "globex").await,
            login_to(&mut auth, "globex").await,
        );
        // Sent by acme's admin, with acme's credential: the tokens still name globex sessions.
        let revoke = |token: &str| {
            with_bearer(
                RevokeTokenRequest {
                    token: token.to_owned(),
                },
                &acme.access_token,
            )
        };
        auth.revoke_token(revoke(&leaked.access_token)).await?;
        auth.revoke_token(revoke(&leaked_too.refresh_token)).await?;
        let probe = Probe {
            gateway: mesh.gateway(),
            user: globex.name,
        };
        assert_session_revoked(probe.identity(&leaked).await);
        assert_session_revoked(probe.identity(&leaked_too).await);
        mesh.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_of_another_tenant_sent_along_does_not_stop_a_login() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let backend = builder.backend_name();
        let mesh = builder.start().await?;
        tenant_with_admin(&mesh, "globex", "ada@example.com", PASSWORD).await?;
        tenant_with_admin(&mesh, "acme", "ada@example.com", PASSWORD).await?;
        let mut auth = AuthServiceClient::new(mesh.gateway());
        let acme = login(&mut auth).await;
        // A client that sends its current access token with every call signs in to a second
        // tenant; on PostgreSQL the token's tenant must not hide the other one's rows.
        let request = LoginRequest {
            tenant_id: "globex".into(),
            email: "ada@example.com".into(),
            password: PASSWORD.into(),
        };
        let globex = auth
            .login(with_bearer(request.clone(), &acme.access_token))
            .await
            .map_err(|status| anyhow::anyhow!("{backend}: {status:?}"))?
            .into_inner();
        assert!(globex.user.starts_with("tenants/globex/"), "{backend}");
        // A wrong password under the same circumstances is still refused.
        let wrong = LoginRequest {
            password: "not the password at all".into(),
            ..request
        };
        let refused = auth.login(with_bearer(wrong, &acme.access_token)).await;
        assert_eq!(
            reason(&expect_code(refused, Code::Unauthenticated)),
            "INVALID_LOGIN"
        );
        mesh.stop().await?;
    }
    Ok(())
}

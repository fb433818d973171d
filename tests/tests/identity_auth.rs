//! Password login through the gateway: access tokens verified at the edge against identity's
//! JWKS, refresh-token rotation, reuse detection that revokes the family, logout, and the
//! audit events of each (sessions ending for access tokens too: `identity_sessions`).

mod common;

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use common::{audit_event, expect_code, reason, tenant_with_admin, violated_fields};
use palisade_proto::palisade::{
    compliance::v1::Outcome,
    identity::v1::{
        AuthTokens, GetJwksRequest, GetUserRequest, LoginRequest, LogoutRequest,
        RefreshTokenRequest, auth_service_client::AuthServiceClient,
        user_service_client::UserServiceClient,
    },
};
use palisade_testkit::{Component, Mesh, http_request};
use tonic::Code;

const PASSWORD: &str = "correct horse battery staple";
const EMAIL: &str = "ada@example.com";

fn with_bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}").parse().expect("tokens are ascii");
    request.metadata_mut().insert("authorization", value);
    request
}

/// A mesh with tenant `acme` and its admin `ada@example.com`; returns the admin's name.
async fn acme_with_admin(mesh: &Mesh) -> anyhow::Result<String> {
    Ok(tenant_with_admin(mesh, "acme", EMAIL, PASSWORD).await?.name)
}

fn login_request(password: &str) -> LoginRequest {
    LoginRequest {
        tenant_id: "acme".into(),
        email: EMAIL.into(),
        password: password.into(),
    }
}

fn refresh(tokens: &AuthTokens) -> RefreshTokenRequest {
    RefreshTokenRequest {
        refresh_token: tokens.refresh_token.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_tokens_are_signed_jwts_verified_at_the_gateway() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let admin = acme_with_admin(&mesh).await?;
        let mut auth = AuthServiceClient::new(mesh.gateway());
        let tokens = auth.login(login_request(PASSWORD)).await?.into_inner();
        assert_eq!(tokens.token_type, "Bearer");
        assert_eq!(tokens.user, admin);

        // The token names a key of the JWKS and carries the documented claims.
        let jwks = auth.get_jwks(GetJwksRequest {}).await?.into_inner();
        let parts: Vec<&str> = tokens.access_token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0])?)?;
        let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1])?)?;
        assert_eq!(header["alg"], "EdDSA");
        let key = jwks
            .keys
            .iter()
            .find(|key| header["kid"] == key.kid.as_str())
            .expect("the token's kid is published");
        assert_eq!(
            (key.kty.as_str(), key.crv.as_str(), key.alg.as_str()),
            ("OKP", "Ed25519", "EdDSA")
        );
        assert_eq!(claims["iss"], "palisade-identity");
        assert_eq!(claims["tenant"], "acme");
        assert_eq!(claims["principal_type"], "user");
        assert_eq!(
            format!("tenants/acme/users/{}", claims["sub"].as_str().unwrap()),
            admin
        );
        assert_eq!(claims["roles"], serde_json::json!(["admin"]));
        assert_eq!(
            claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
            15 * 60
        );
        assert!(claims["jti"].as_str().is_some_and(|jti| !jti.is_empty()));

        let mut users = UserServiceClient::new(mesh.gateway());
        let me = users
            .get_user(with_bearer(
                GetUserRequest {
                    name: admin.clone(),
                },
                &tokens.access_token,
            ))
            .await?;
        assert_eq!(me.into_inner().name, admin);

        // A token with a changed claim no longer matches its signature.
        let mut elevated = claims.clone();
        elevated["tenant"] = "system".into();
        let forged_claims = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&elevated)?);
        let forged = format!("{}.{forged_claims}.{}", parts[0], parts[2]);
        let refused = users
            .get_user(with_bearer(
                GetUserRequest {
                    name: admin.clone(),
                },
                &forged,
            ))
            .await;
        assert_eq!(
            reason(&expect_code(refused, Code::Unauthenticated)),
            "INVALID_TOKEN"
        );
        mesh.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_and_reuse_revokes_the_family() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let admin = acme_with_admin(&mesh).await?;
        let mut auth = AuthServiceClient::new(mesh.gateway());
        let first = auth.login(login_request(PASSWORD)).await?.into_inner();
        let second = auth.refresh_token(refresh(&first)).await?.into_inner();
        assert_ne!(second.refresh_token, first.refresh_token);
        assert_ne!(second.access_token, first.access_token);
        let third = auth.refresh_token(refresh(&second)).await?.into_inner();

        // `second` was used up; presenting it again means a copy exists: the family ends, so
        // neither it nor the token it was rotated into works any more.
        let reused = auth.refresh_token(refresh(&second)).await;
        assert_eq!(
            reason(&expect_code(reused, Code::Unauthenticated)),
            "INVALID_REFRESH_TOKEN"
        );
        let after = auth.refresh_token(refresh(&third)).await;
        expect_code(after, Code::Unauthenticated);
        let event = audit_event(&mesh, "identity.auth.refresh_token_reuse", |_| true).await?;
        assert_eq!(event.resource, admin);
        assert_eq!(event.outcome(), Outcome::Denied);

        // A new login starts a new family, untouched by the old one's revocation.
        let fresh = auth.login(login_request(PASSWORD)).await?.into_inner();
        auth.refresh_token(refresh(&fresh)).await?;
        mesh.stop().await?;
    }
    Ok(())
}

/// A session ends a fixed time after its login however often it is refreshed (an absolute
/// timeout): no token it issues outlives that end, and a refresh past it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_at_its_max_lifetime_however_often_refreshed() -> anyhow::Result<()> {
    const LIFETIME: Duration = Duration::from_secs(4);
    for builder in Mesh::each_backend() {
        let mesh = builder.with_session_max_lifetime(LIFETIME).start().await?;
        acme_with_admin(&mesh).await?;
        let mut auth = AuthServiceClient::new(mesh.gateway());
        let login = auth.login(login_request(PASSWORD)).await?.into_inner();
        let session_end = login.refresh_token_expire_time.unwrap();
        let mut tokens = login;
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            tokens = auth.refresh_token(refresh(&tokens)).await?.into_inner();
            // Rotation does not move the end: both tokens stop where the session stops.
            assert_eq!(tokens.refresh_token_expire_time, Some(session_end));
            let access_end = tokens.access_token_expire_time.unwrap();
            assert!(access_end.seconds <= session_end.seconds, "{access_end:?}");
        }
        let ends_in = u64::try_from(session_end.seconds)? * 1000
            + u64::try_from(session_end.nanos)? / 1_000_000;
        let now = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis(),
        )?;
        tokio::time::sleep(Duration::from_millis(ends_in.saturating_sub(now) + 200)).await;
        let late = auth.refresh_token(refresh(&tokens)).await;
        assert_eq!(
            reason(&expect_code(late, Code::Unauthenticated)),
            "INVALID_REFRESH_TOKEN"
        );
        // Signing in again starts a new session.
        let again = auth.login(login_request(PASSWORD)).await?.into_inner();
        auth.refresh_token(refresh(&again)).await?;
        mesh.stop().await?;
    }
    Ok(())
}

/// A session's end is computed from its login at every refresh, so shortening the configured
/// lifetime ends sessions begun under the longer one, although their refresh tokens were
/// issued to last longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_session_lifetime_ends_sessions_already_begun() -> anyhow::Result<()> {
    const SHORTER: Duration = Duration::from_secs(1);
    for builder in Mesh::each_backend() {
        let mut mesh = builder
            .with_session_max_lifetime(Duration::from_secs(3600))
            .start()
            .await?;
        acme_with_admin(&mesh).await?;
        let mut auth = AuthServiceClient::new(mesh.gateway());
        let login = auth.login(login_request(PASSWORD)).await?.into_inner();
        let tokens = auth.refresh_token(refresh(&login)).await?.into_inner();

        mesh.reconfigure(Component::Identity, |options| {
            options.session_max_lifetime = SHORTER;
        })
        .await?;
        tokio::time::sleep(SHORTER + Duration::from_millis(200)).await;
        let mut auth = AuthServiceClient::new(mesh.gateway());
        let late = auth.refresh_token(refresh(&tokens)).await;
        assert_eq!(
            reason(&expect_code(late, Code::Unauthenticated)),
            "INVALID_REFRESH_TOKEN"
        );
        mesh.stop().await?;
    }
    Ok(())
}

/// Public methods need no credential, so one that does not verify (an expired access token a
/// client sends with every call, a garbled one, another scheme) does not stop them: a client
/// can always refresh or sign in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_methods_ignore_a_credential_that_does_not_verify() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let admin = acme_with_admin(&mesh).await?;
        let mut auth = AuthServiceClient::new(mesh.gateway());
        let first = auth.login(login_request(PASSWORD)).await?.into_inner();
        let token = &first.access_token;
        let garbled = format!("{}.AA", &token[..token.rfind('.').expect("a jwt")]);

        // Refused where a credential is needed ...
        let refused = UserServiceClient::new(mesh.gateway())
            .get_user(with_bearer(GetUserRequest { name: admin }, &garbled))
            .await;
        assert_eq!(
            reason(&expect_code(refused, Code::Unauthenticated)),
            "INVALID_TOKEN"
        );
        // ... and ignored where none is.
        auth.refresh_token(with_bearer(refresh(&first), &garbled))
            .await?;
        auth.login(with_bearer(login_request(PASSWORD), &garbled))
            .await?;
        let mut basic = tonic::Request::new(login_request(PASSWORD));
        basic
            .metadata_mut()
            .insert("authorization", "Basic dXNlcg==".parse()?);
        auth.login(basic).await?;
        mesh.stop().await?;
    }
    Ok(())
}

/// A refresh that read its family as live while a revocation (what a password change or a
/// logout does) was being committed must not succeed after it. The test holds the revoking
/// transaction open while the refresh runs, then commits it: the refresh must wait for it and
/// be refused, not rotate the token of a session that no longer exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_racing_a_revocation_is_refused() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        acme_with_admin(&mesh).await?;
        let mut auth = AuthServiceClient::new(mesh.gateway());
        let tokens = auth.login(login_request(PASSWORD)).await?.into_inner();

        let db = mesh.unrestricted_db(Component::Identity).await?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        let mut revocation = db.begin().await?;
        sqlx::query(
            "UPDATE token_families SET revoke_time = $1 \
             WHERE tenant_id = 'acme' AND revoke_time IS NULL",
        )
        .bind(i64::try_from(now.as_micros())?)
        .execute(&mut *revocation)
        .await?;
        let refreshing = tokio::spawn({
            let (mut auth, request) = (auth.clone(), refresh(&tokens));
            async move { auth.refresh_token(request).await }
        });
        // Time for the refresh to read its family (live: the revocation is not committed yet)
        // and reach its own transaction. Were it slower, the test would pass without racing.
        tokio::time::sleep(Duration::from_millis(500)).await;
        revocation.commit().await?;
        let refused = refreshing.await?;
        assert_eq!(
            reason(&expect_code(refused, Code::Unauthenticated)),
            "INVALID_REFRESH_TOKEN"
        );
        db.close().await;
        mesh.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_ends_the_session() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        acme_with_admin(&mesh).await?;
        let mut auth = AuthServiceClient::new(mesh.gateway());
        let first = auth.login(login_request(PASSWORD)).await?.into_inner();
        let second = auth.refresh_token(refresh(&first)).await?.into_inner();
        auth.logout(LogoutRequest {
            refresh_token: second.refresh_token.clone(),
        })
        .await?;
        let refused = auth.refresh_token(refresh(&second)).await;
        expect_code(refused, Code::Unauthenticated);
        audit_event(&mesh, "identity.auth.logout", |_| true).await?;
        mesh.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_refused_alike_and_audited() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let admin = acme_with_admin(&mesh).await?;
        let mut auth = AuthServiceClient::new(mesh.gateway());
        let attempts = [
            login_request("wrong password, long enough"),
            LoginRequest {
                email: "nobody@example.com".into(),
                ..login_request(PASSWORD)
            },
            LoginRequest {
                tenant_id: "nowhere".into(),
                ..login_request(PASSWORD)
            },
        ];
        for attempt in attempts {
            let refused = auth.login(attempt).await;
            let status = expect_code(refused, Code::Unauthenticated);
            assert_eq!(reason(&status), "INVALID_LOGIN");
        }
        let empty = auth.login(LoginRequest::default()).await;
        assert_eq!(
            violated_fields(&expect_code(empty, Code::InvalidArgument)),
            ["tenant_id", "email", "password"]
        );
        let oversized = LoginRequest {
            tenant_id: "a".repeat(64),
            email: format!("{}@example.com", "a".repeat(243)),
            password: "p".repeat(4097),
        };
        assert_eq!(
            violated_fields(&expect_code(
                auth.login(oversized).await,
                Code::InvalidArgument
            )),
            ["tenant_id", "email", "password"]
        );
        // The bounds are inclusive, and an email is counted in characters (an imported one may
        // not be ASCII): these are only wrong.
        let at_the_bounds = [
            login_request(&"p".repeat(4096)),
            LoginRequest {
                email: format!("{}@example.com", "é".repeat(242)),
                ..login_request(PASSWORD)
            },
        ];
        for attempt in at_the_bounds {
            let status = expect_code(auth.login(attempt).await, Code::Unauthenticated);
            assert_eq!(reason(&status), "INVALID_LOGIN");
        }
        // Refused before the attempt is counted: more than enough to lock the account (limit 5,
        // two wrong passwords counted above) leave the admin free to sign in below.
        for _ in 0..5 {
            let oversized = login_request(&"p".repeat(4097));
            expect_code(auth.login(oversized).await, Code::InvalidArgument);
        }
        let wrong = audit_event(&mesh, "identity.auth.login", |e| {
            e.outcome() == Outcome::Failure && e.resource == admin
        })
        .await?;
        assert_eq!(
            wrong.attributes.get("reason").map(String::as_str),
            Some("wrong_password")
        );
        auth.login(login_request(PASSWORD)).await?;
        let success = audit_event(&mesh, "identity.auth.login", |e| {
            e.outcome() == Outcome::Success
        })
        .await?;
        assert_eq!(success.resource, admin);
        mesh.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_and_bearer_tokens_work_over_rest() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let admin = acme_with_admin(&mesh).await?;
        let gateway = mesh.addr(Component::Gateway);
        let json = [("content-type", "application/json")];
        let body = serde_json::json!({"tenantId": "acme", "email": EMAIL, "password": PASSWORD});
        let login = http_request(
            gateway,
            "POST",
            "/v1/auth:login",
            &json,
            body.to_string().as_bytes(),
        )
        .await?;
        assert_eq!(login.status, 200, "{}", login.text());
        let tokens: serde_json::Value = serde_json::from_slice(&login.body)?;
        let bearer = format!("Bearer {}", tokens["accessToken"].as_str().unwrap());
        let listed = http_request(
            gateway,
            "GET",
            "/v1/tenants/acme/users",
            &[("authorization", bearer.as_str())],
            b"",
        )
        .await?;
        assert_eq!(listed.status, 200, "{}", listed.text());
        let listed: serde_json::Value = serde_json::from_slice(&listed.body)?;
        assert_eq!(listed["users"][0]["name"], admin.as_str());
        let jwks = http_request(gateway, "GET", "/v1/auth/jwks", &[], b"").await?;
        assert_eq!(jwks.status, 200, "{}", jwks.text());
        let jwks: serde_json::Value = serde_json::from_slice(&jwks.body)?;
        assert_eq!(jwks["keys"][0]["crv"], "Ed25519");
        // The conventional location serves the same key set, without a credential.
        let well_known = http_request(gateway, "GET", "/.well-known/jwks.json", &[], b"").await?;
        assert_eq!(well_known.status, 200, "{}", well_known.text());
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&well_known.body)?,
            jwks
        );
        let wrong =
            serde_json::json!({"tenantId": "acme", "email": EMAIL, "password": "not the password"});
        let refused = http_request(
            gateway,
            "POST",
            "/v1/auth:login",
            &json,
            wrong.to_string().as_bytes(),
        )
        .await?;
        assert_eq!(refused.status, 401);
        // RFC 7009 over REST: revoking the access token ends its session, so it stops too.
        let revoke = serde_json::json!({"token": tokens["accessToken"]});
        let revoked = http_request(
            gateway,
            "POST",
            "/v1/auth:revoke",
            &json,
            revoke.to_string().as_bytes(),
        )
        .await?;
        assert_eq!(revoked.status, 200, "{}", revoked.text());
        let after = http_request(
            gateway,
            "GET",
            "/v1/tenants/acme/users",
            &[("authorization", bearer.as_str())],
            b"",
        )
        .await?;
        assert_eq!(after.status, 401, "{}", after.text());
        assert!(after.text().contains("SESSION_REVOKED"), "{}", after.text());
        mesh.stop().await?;
    }
    Ok(())
}

//! gzip on every service of the mesh: one call per service — the list is read from the
//! descriptor set, so a new service without a case fails the test — sent gzip-compressed and
//! accepting gzip, the way grpc-java's `withCompression` or grpc-go's `UseCompressor` call.
//! Each must succeed and answer compressed. tonic has no server-wide switch, so every service
//! is registered with its own `accept_compressed`/`send_compressed`, and one left without
//! them refuses such clients `UNIMPLEMENTED`. Public services are called through the gateway
//! (which passes `grpc-encoding` through), internal ones directly over mTLS as the component
//! allowed to call them.

mod common;

use common::{DynamicCodec, dynamic_request, tenant_with_admin};
use palisade_testkit::{Component, Mesh};
use tonic::codec::CompressionEncoding::Gzip;

/// How a case reaches its service.
#[derive(Clone, Copy)]
enum Via {
    /// Through the gateway, as the operator.
    Gateway,
    /// Directly over mTLS, with the named component's certificate.
    Direct(Component, &'static str),
}

/// One call per service: method, request (`{user}` stands for acme's admin's id), route.
const CASES: &[(&str, &str, Via)] = &[
    (
        "palisade.compliance.v1.AuditService/ListAuditEvents",
        r#"{"parent": "tenants/acme"}"#,
        Via::Gateway,
    ),
    (
        "palisade.identity.v1.ApiKeyService/ListApiKeys",
        r#"{"parent": "tenants/acme"}"#,
        Via::Gateway,
    ),
    (
        "palisade.identity.v1.AuthService/Login",
        r#"{"tenant_id": "acme", "email": "ada@acme.example", "password": "correct horse battery staple"}"#,
        Via::Gateway,
    ),
    (
        "palisade.identity.v1.AuthorizationService/Check",
        r#"{"principal": {"tenant_id": "acme", "id": "{user}", "type": "PRINCIPAL_TYPE_USER"}, "permission": "identity.users.list"}"#,
        Via::Direct(Component::Identity, "compliance"),
    ),
    (
        "palisade.identity.v1.EdgeService/ResolveTenant",
        r#"{"tenant_id": "acme"}"#,
        Via::Direct(Component::Identity, "gateway"),
    ),
    (
        "palisade.identity.v1.RoleService/ListRoles",
        r#"{"parent": "tenants/acme"}"#,
        Via::Gateway,
    ),
    (
        "palisade.identity.v1.TenantDataService/ExportTenantData",
        r#"{"tenant": "tenants/acme"}"#,
        Via::Direct(Component::Identity, "compliance"),
    ),
    (
        "palisade.identity.v1.TenantService/GetTenant",
        r#"{"name": "tenants/acme"}"#,
        Via::Gateway,
    ),
    (
        "palisade.identity.v1.UserService/ListUsers",
        r#"{"parent": "tenants/acme"}"#,
        Via::Gateway,
    ),
    (
        "palisade.observability.v1.StatusService/GetStatus",
        "{}",
        Via::Gateway,
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_takes_gzip_and_answers_with_it() -> anyhow::Result<()> {
    let pool = palisade_proto::descriptor_pool();
    let mut services: Vec<String> = pool
        .services()
        .map(|service| service.full_name().to_owned())
        .filter(|name| name.starts_with("palisade."))
        .collect();
    services.sort();
    let covered: Vec<String> = CASES
        .iter()
        .map(|(path, _, _)| path.split_once('/').expect("Service/Method").0.to_owned())
        .collect();
    assert_eq!(covered, services, "every service needs a gzip case");

    let mesh = Mesh::builder().start().await?;
    let admin = tenant_with_admin(
        &mesh,
        "acme",
        "ada@acme.example",
        "correct horse battery staple",
    )
    .await?;
    let admin_id = admin.name.rsplit('/').next().expect("a user name");
    for &(path, json, via) in CASES {
        let (method, message) = dynamic_request(path, &json.replace("{user}", admin_id));
        let (channel, request) = match via {
            Via::Gateway => (mesh.gateway(), mesh.as_operator(message)),
            Via::Direct(component, cert) => (
                mesh.direct(component, cert).await?,
                tonic::Request::new(message),
            ),
        };
        let mut grpc = tonic::client::Grpc::new(channel)
            .send_compressed(Gzip)
            .accept_compressed(Gzip);
        grpc.ready().await?;
        let codec = DynamicCodec(method.output());
        let route = format!("/{path}").parse()?;
        let outcome = if method.is_server_streaming() {
            grpc.server_streaming(request, route, codec)
                .await
                .map(|answer| answer.into_parts())
                .map(|(metadata, stream, _)| (metadata, Some(stream)))
        } else {
            grpc.unary(request, route, codec)
                .await
                .map(|answer| (answer.metadata().clone(), None))
        };
        let (metadata, stream) = outcome.unwrap_or_else(|status| panic!("{path}: {status:?}"));
        if let Some(mut stream) = stream {
            let first = stream.message().await;
            assert!(matches!(first, Ok(Some(_))), "{path}: {first:?}");
        }
        let encoding = metadata.get("grpc-encoding").and_then(|v| v.to_str().ok());
        assert_eq!(encoding, Some("gzip"), "{path} answered uncompressed");
    }
    mesh.stop().await
}

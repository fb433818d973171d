//! REST/JSON through the gateway's public port with a plain HTTP/1.1 client: the tenant
//! scenario gives, field for field, what native gRPC gives; errors have grpc-gateway's statuses
//! and `{code, message, details}` bodies (a stream's, an `{"error": …}` line); server streams
//! arrive as newline-delimited JSON; a
//! backend's custom metadata comes back as `Grpc-Metadata-*` / `Grpc-Trailer-*` headers.

mod common;

use std::time::Duration;

use common::{new_tenant, rest};
use palisade_proto::palisade::{
    compliance::v1::{
        AuditEvent, ExportAuditEventsRequest, ListAuditEventsRequest, ListAuditEventsResponse,
        audit_service_client::AuditServiceClient,
    },
    identity::v1::{
        GetTenantRequest, ListTenantsRequest, ListTenantsResponse, Plan, Tenant,
        tenant_service_client::TenantServiceClient,
    },
    observability::v1::{
        GetStatusRequest, MeshStatus,
        status_service_server::{StatusService, StatusServiceServer},
    },
};
use palisade_testkit::{Component, HttpResponse, Mesh, eventually, http_request};
use serde_json::{Value, json};
use tokio_stream::StreamExt;
use tonic::Code;

/// The proto message a REST JSON body decodes to, with the gateway's own descriptors.
fn decode<T: prost::Message + Default>(full_name: &str, json: &Value) -> T {
    let descriptor = palisade_proto::descriptor_pool()
        .get_message_by_name(full_name)
        .unwrap();
    prost_reflect::DynamicMessage::deserialize(descriptor, json.clone())
        .unwrap_or_else(|e| panic!("{json} is not a {full_name}: {e}"))
        .transcode_to()
        .unwrap()
}

fn json(response: &HttpResponse) -> Value {
    serde_json::from_slice(&response.body)
        .unwrap_or_else(|e| panic!("not json ({e}): {}", response.text()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_scenario_over_rest_matches_grpc_field_for_field() -> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let key = Some(mesh.operator_key());
        let mut tenants = TenantServiceClient::new(mesh.gateway());

        // `body: "tenant"`, the id as a query parameter, enums by name.
        let created = rest(
            &mesh,
            "POST",
            "/v1/tenants?tenantId=acme",
            key,
            r#"{"displayName": "Acme", "plan": "PLAN_PROFESSIONAL"}"#,
        )
        .await?;
        assert_eq!(created.status, 200, "{}", created.text());
        assert_eq!(created.header("content-type"), Some("application/json"));
        assert!(created.header("x-request-id").is_some());
        let created_json = json(&created);
        assert_eq!(created_json["name"], "tenants/acme");
        assert_eq!(created_json["displayName"], "Acme");
        assert_eq!(created_json["plan"], "PLAN_PROFESSIONAL");
        let created: Tenant = decode("palisade.identity.v1.Tenant", &created_json);

        let over_grpc = tenants
            .get_tenant(mesh.as_operator(GetTenantRequest {
                name: "tenants/acme".into(),
            }))
            .await?
            .into_inner();
        assert_eq!(created, over_grpc);

        // `x-api-key` works as well as `authorization`.
        let fetched = http_request(
            mesh.addr(Component::Gateway),
            "GET",
            "/v1/tenants/acme",
            &[("x-api-key", mesh.operator_key())],
            b"",
        )
        .await?;
        assert_eq!(fetched.status, 200, "{}", fetched.text());
        let fetched: Tenant = decode("palisade.identity.v1.Tenant", &json(&fetched));
        assert_eq!(fetched, over_grpc);

        tenants
            .create_tenant(mesh.as_operator(new_tenant("beta", "Beta", Plan::Free)))
            .await?;
        for (query, request) in [
            (
                "pageSize=1",
                ListTenantsRequest {
                    page_size: 1,
                    ..Default::default()
                },
            ),
            (
                "page_size=5&filter=plan%20%3D%20%22PLAN_PROFESSIONAL%22",
                ListTenantsRequest {
                    page_size: 5,
                    filter: r#"plan = "PLAN_PROFESSIONAL""#.into(),
                    ..Default::default()
                },
            ),
        ] {
            let listed = rest(&mesh, "GET", &format!("/v1/tenants?{query}"), key, "").await?;
            assert_eq!(listed.status, 200, "{}", listed.text());
            let listed: ListTenantsResponse =
                decode("palisade.identity.v1.ListTenantsResponse", &json(&listed));
            let over_grpc = tenants
                .list_tenants(mesh.as_operator(request))
                .await?
                .into_inner();
            assert_eq!(listed, over_grpc, "{query}");
            assert!(!listed.tenants.is_empty());
        }

        // The audit event of the REST-created tenant, once the outbox delivered it.
        let listed = eventually(Duration::from_secs(10), || async {
            let listed = rest(&mesh, "GET", "/v1/tenants/acme/auditEvents", key, "").await?;
            anyhow::ensure!(listed.status == 200, "{}", listed.text());
            let listed: ListAuditEventsResponse = decode(
                "palisade.compliance.v1.ListAuditEventsResponse",
                &json(&listed),
            );
            Ok((!listed.audit_events.is_empty()).then_some(listed))
        })
        .await?;
        assert_eq!(listed.audit_events[0].action, "identity.tenants.create");
        let mut audit = AuditServiceClient::new(mesh.gateway());
        let over_grpc = audit
            .list_audit_events(mesh.as_operator(ListAuditEventsRequest {
                parent: "tenants/acme".into(),
                ..Default::default()
            }))
            .await?
            .into_inner();
        assert_eq!(listed, over_grpc);
        // int64 fields travel as strings in proto3 JSON.
        let raw = json(&rest(&mesh, "GET", "/v1/tenants/acme/auditEvents", key, "").await?);
        assert_eq!(raw["auditEvents"][0]["sequence"], "1");

        // A server stream: one `{"result": …}` line per message.
        let exported = rest(&mesh, "GET", "/v1/tenants/acme/auditEvents:export", key, "").await?;
        assert_eq!(exported.status, 200, "{}", exported.text());
        assert_eq!(
            exported.header("content-type"),
            Some("application/x-ndjson")
        );
        let lines: Vec<AuditEvent> = exported
            .text()
            .lines()
            .map(|line| {
                let line: Value = serde_json::from_str(line).unwrap();
                decode("palisade.compliance.v1.AuditEvent", &line["result"])
            })
            .collect();
        let streamed: Vec<AuditEvent> = audit
            .export_audit_events(mesh.as_operator(ExportAuditEventsRequest {
                parent: "tenants/acme".into(),
                ..Default::default()
            }))
            .await?
            .into_inner()
            .collect::<Result<_, _>>()
            .await?;
        assert_eq!(lines, streamed);
        assert_eq!(lines, over_grpc.audit_events);
        mesh.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_errors_have_grpc_gateway_statuses_and_bodies() -> anyhow::Result<()> {
    let mesh = Mesh::builder().start().await?;
    let key = Some(mesh.operator_key());

    // Unknown JSON fields are refused, not dropped.
    let unknown = rest(
        &mesh,
        "POST",
        "/v1/tenants?tenantId=acme",
        key,
        r#"{"displayName": "Acme", "colour": "red"}"#,
    )
    .await?;
    assert_eq!(unknown.status, 400);
    let body = json(&unknown);
    assert_eq!(body["code"], Code::InvalidArgument as i32);
    assert!(
        body["message"].as_str().unwrap().contains("colour"),
        "{body}"
    );
    let types: Vec<&Value> = body["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["@type"])
        .collect();
    assert!(
        types.contains(&&json!("type.googleapis.com/google.rpc.BadRequest")),
        "{body}"
    );

    // A service's own validation error, with its details as Any JSON.
    let empty = rest(&mesh, "POST", "/v1/tenants?tenantId=acme", key, "{}").await?;
    assert_eq!(empty.status, 400, "{}", empty.text());
    let details = json(&empty)["details"].clone();
    assert!(
        details.as_array().unwrap().iter().any(|d| d["@type"]
            == "type.googleapis.com/google.rpc.BadRequest"
            && d["fieldViolations"][0]["field"] == "tenant.display_name"),
        "{details}"
    );

    // No credential: 401 with the proxy's refusal, in the same shape. A client-sent tenant
    // header does not change that.
    let anonymous = http_request(
        mesh.addr(Component::Gateway),
        "GET",
        "/v1/tenants",
        &[("grpc-metadata-palisade-tenant-id", "system")],
        b"",
    )
    .await?;
    assert_eq!(anonymous.status, 401);
    let body = json(&anonymous);
    assert_eq!(body["code"], Code::Unauthenticated as i32);
    assert_eq!(
        body["details"][0],
        json!({
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "UNAUTHENTICATED",
            "domain": "palisade.dev",
            // Fields at their default value are sent, in errors as in answers.
            "metadata": {},
        })
    );
    assert_eq!(
        body.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["code", "details", "message"]
    );

    let missing = rest(&mesh, "GET", "/v1/tenants/nobody", key, "").await?;
    assert_eq!(missing.status, 404);
    assert_eq!(json(&missing)["code"], Code::NotFound as i32);

    // A stream that fails before its first message answers with the failure's status and
    // the failure as its one line, as grpc-gateway does.
    let export = rest(
        &mesh,
        "GET",
        "/v1/tenants/acme/auditEvents:export?filter=%3D%3D%3D",
        key,
        "",
    )
    .await?;
    assert_eq!(export.status, 400, "{}", export.text());
    assert_eq!(json(&export)["error"]["code"], Code::InvalidArgument as i32);

    // Internal methods have REST rules but are refused like over gRPC.
    let internal = rest(&mesh, "POST", "/v1/apiKeys:verify", key, "{}").await?;
    assert_eq!(internal.status, 403, "{}", internal.text());
    assert_eq!(json(&internal)["code"], Code::PermissionDenied as i32);

    // Routing errors.
    let nowhere = rest(&mesh, "GET", "/v1/nowhere", key, "").await?;
    assert_eq!(nowhere.status, 404);
    assert_eq!(
        json(&nowhere),
        json!({"code": 5, "message": "Not Found", "details": []})
    );
    let wrong_method = rest(&mesh, "DELETE", "/v1/tenants", key, "").await?;
    assert_eq!(wrong_method.status, 405);
    assert_eq!(json(&wrong_method)["code"], Code::Unimplemented as i32);
    // RFC 9110 §15.5.6: a 405 says what the resource takes.
    assert_eq!(wrong_method.header("allow"), Some("GET, HEAD, POST"));
    // A path of a route's shape whose value does not decode is bad input, named as its field.
    let undecodable = rest(&mesh, "GET", "/v1/tenants/%ff", key, "").await?;
    assert_eq!(undecodable.status, 400, "{}", undecodable.text());
    let details = json(&undecodable)["details"].clone();
    assert!(
        (details.as_array().unwrap().iter()).any(|d| d["fieldViolations"][0]["field"] == "name"),
        "{details}"
    );
    // None of these became a gRPC call, which its own metrics would count: they are counted
    // by reason (the unknown JSON field above too).
    let (_, metrics) = mesh.admin_get(Component::Gateway, "/metrics").await?;
    for reason in [
        "not_found",
        "method_not_allowed",
        "malformed_path",
        "bad_request",
    ] {
        assert!(
            metrics.lines().any(
                |line| line.starts_with("palisade_gateway_rest_refused_total")
                    && line.contains(&format!(r#"reason="{reason}""#))
            ),
            "{reason}: {metrics}"
        );
    }

    // HEAD is GET without content, over HTTP/1.1 and HTTP/2 (where content would be DATA
    // frames, which a client must refuse), for routes and refusals alike.
    let head = rest(&mesh, "HEAD", "/v1/status", key, "").await?;
    assert_eq!((head.status, head.body.len()), (200, 0));
    let gateway = mesh.addr(Component::Gateway);
    for (path, status) in [
        ("/v1/status", 200),
        ("/openapi.json", 200),
        ("/v1/nowhere", 404),
        ("/v1/apiKeys:verify", 405),
    ] {
        let (answered, content) = h2_head(gateway, path, mesh.operator_key()).await?;
        assert_eq!((answered, content.len()), (status, 0), "{path}");
    }

    // Public methods need no key.
    let status = rest(&mesh, "GET", "/v1/status", None, "").await?;
    assert_eq!(status.status, 200, "{}", status.text());
    mesh.stop().await?;
    Ok(())
}

/// A HEAD request over a fresh h2c connection: the status and the content received.
async fn h2_head(
    gateway: std::net::SocketAddr,
    path: &str,
    key: &str,
) -> anyhow::Result<(u16, Vec<u8>)> {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let stream = tokio::net::TcpStream::connect(gateway).await?;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = http::Request::head(format!("http://{gateway}{path}"))
        .header("authorization", format!("ApiKey {key}"))
        .body(Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let content = response.into_body().collect().await?.to_bytes().to_vec();
    Ok((status, content))
}

/// Stands in for observability on its address, with its certificate: `GetStatus` answers with
/// custom header metadata (echoing the client's `x-client`), or fails with custom metadata
/// when the call carries `x-fail`. No mesh component sends custom metadata today; a
/// backend that does must reach REST clients the way grpc-gateway passes it.
struct StandIn;

#[tonic::async_trait]
impl StatusService for StandIn {
    async fn get_status(
        &self,
        request: tonic::Request<GetStatusRequest>,
    ) -> Result<tonic::Response<MeshStatus>, tonic::Status> {
        if request.metadata().contains_key("x-fail") {
            let mut metadata = tonic::metadata::MetadataMap::new();
            metadata.insert(
                "x-retry-hint",
                tonic::metadata::MetadataValue::from_static("after-maintenance"),
            );
            return Err(tonic::Status::with_metadata(
                Code::Unavailable,
                "standing in",
                metadata,
            ));
        }
        let mut response = tonic::Response::new(MeshStatus::default());
        let metadata = response.metadata_mut();
        metadata.insert(
            "x-served-by",
            tonic::metadata::MetadataValue::from_static("stand-in"),
        );
        if let Some(client) = request.metadata().get("x-client") {
            metadata.insert("x-client-echo", client.clone());
        }
        Ok(response)
    }
}

/// Replaces observability with [`StandIn`] on its address (the gateway reconnects to it).
async fn stand_in_for_observability(
    mesh: &mut Mesh,
) -> anyhow::Result<tokio::sync::oneshot::Sender<()>> {
    mesh.stop_component(Component::Observability).await?;
    let tls = palisade_tls::MeshTls::load(palisade_tls::CertPaths::in_dir(
        &mesh.certs_dir(),
        "observability",
    ))
    .await?;
    let listener = tokio::net::TcpListener::bind(mesh.addr(Component::Observability)).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(StatusServiceServer::new(StandIn))
            .serve_with_incoming_shutdown(palisade_tls::incoming(listener, tls), async {
                stopped.await.ok();
            }),
    );
    Ok(stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backends_custom_metadata_reaches_rest_clients_as_grpc_gateway_headers()
-> anyhow::Result<()> {
    for builder in Mesh::each_backend() {
        let mut mesh = builder.start().await?;
        let stop = stand_in_for_observability(&mut mesh).await?;
        let get_status = |headers: &'static [(&'static str, &'static str)]| {
            http_request(
                mesh.addr(Component::Gateway),
                "GET",
                "/v1/status",
                headers,
                b"",
            )
        };
        let answered = eventually(Duration::from_secs(10), || async {
            let answered = get_status(&[
                ("grpc-metadata-x-client", "rest-test"),
                ("x-request-id", "req-metadata-1"),
            ])
            .await?;
            // Until the gateway has reconnected to the stand-in: 503.
            Ok((answered.status == 200).then_some(answered))
        })
        .await?;
        assert_eq!(
            answered.header("grpc-metadata-x-served-by"),
            Some("stand-in")
        );
        // The client's metadata went in, and the backend's came back out.
        assert_eq!(
            answered.header("grpc-metadata-x-client-echo"),
            Some("rest-test")
        );
        // The request id is the gateway's own header, not backend metadata.
        assert_eq!(answered.header("x-request-id"), Some("req-metadata-1"));
        assert_eq!(answered.header("content-type"), Some("application/json"));
        let forwarded: Vec<&str> = answered
            .headers
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(|name| name.starts_with("grpc-"))
            .collect();
        assert_eq!(
            forwarded,
            ["grpc-metadata-x-served-by", "grpc-metadata-x-client-echo"],
            "gRPC's own keys, the content type, the date and the request id stay behind"
        );

        // A failure's metadata arrives in its trailers, so it comes back as Grpc-Trailer-*.
        let failed = get_status(&[("grpc-metadata-x-fail", "1")]).await?;
        assert_eq!(failed.status, 503, "{}", failed.text());
        assert_eq!(json(&failed)["message"], "standing in");
        assert_eq!(
            failed.header("grpc-trailer-x-retry-hint"),
            Some("after-maintenance")
        );
        assert!(failed.header("grpc-trailer-grpc-status").is_none());

        stop.send(()).ok();
        mesh.stop().await?;
    }
    Ok(())
}

#[test]
fn every_grpc_code_maps_to_grpc_gateways_http_status() {
    use palisade_gateway::rest::errors::{http_status, status_json};
    let table = [
        (Code::Ok, 200),
        (Code::Cancelled, 499),
        (Code::Unknown, 500),
        (Code::InvalidArgument, 400),
        (Code::DeadlineExceeded, 504),
        (Code::NotFound, 404),
        (Code::AlreadyExists, 409),
        (Code::PermissionDenied, 403),
        (Code::ResourceExhausted, 429),
        (Code::FailedPrecondition, 400),
        (Code::Aborted, 409),
        (Code::OutOfRange, 400),
        (Code::Unimplemented, 501),
        (Code::Internal, 500),
        (Code::Unavailable, 503),
        (Code::DataLoss, 500),
        (Code::Unauthenticated, 401),
    ];
    for (code, http) in table {
        assert_eq!(http_status(code).as_u16(), http, "{code:?}");
        assert_eq!(
            status_json(&tonic::Status::new(code, "m")),
            json!({"code": code as i32, "message": "m", "details": []})
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_is_413_not_a_retryable_429() -> anyhow::Result<()> {
    let mesh = Mesh::builder().start().await?;
    let huge = format!(
        r#"{{"tenantId": "big", "tenant": {{"displayName": "{}"}}}}"#,
        "x".repeat(5 << 20)
    );
    let refused = rest(
        &mesh,
        "POST",
        "/v1/tenants",
        Some(mesh.operator_key()),
        &huge,
    )
    .await?;
    assert_eq!(refused.status, 413, "{}", refused.text());
    assert_eq!(json(&refused)["code"], 8);
    let body = json(&refused);
    let info = (body["details"].as_array().unwrap().iter())
        .find(|detail| detail["@type"] == "type.googleapis.com/google.rpc.ErrorInfo")
        .unwrap_or_else(|| panic!("no ErrorInfo in {body}"));
    assert_eq!(info["reason"], "BODY_TOO_LARGE");
    assert!(
        !refused
            .headers
            .iter()
            .any(|(name, _)| name == "retry-after")
    );
    mesh.stop().await
}

/// REST answers carry tokens, key secrets and one principal's data: no HTTP cache keeps them
/// (RFC 6749 §5.1). A 401 names the scheme, and `invalid_token` when a bearer token was sent
/// (RFC 6750 §3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_not_cached_and_a_401_names_its_scheme() -> anyhow::Result<()> {
    let mesh = Mesh::builder().start().await?;
    let header = |response: &HttpResponse, name: &str| {
        (response.headers.iter())
            .find(|(header, _)| header == name)
            .map(|(_, value)| value.clone())
    };
    let tenant = rest(
        &mesh,
        "GET",
        "/v1/tenants/system",
        Some(mesh.operator_key()),
        "",
    )
    .await?;
    assert_eq!(tenant.status, 200, "{}", tenant.text());
    assert_eq!(
        header(&tenant, "cache-control").as_deref(),
        Some("no-store")
    );

    let anonymous = rest(&mesh, "GET", "/v1/tenants/system", None, "").await?;
    assert_eq!(anonymous.status, 401);
    assert_eq!(
        header(&anonymous, "www-authenticate").as_deref(),
        Some(r#"Bearer realm="palisade""#)
    );
    assert_eq!(
        header(&anonymous, "cache-control").as_deref(),
        Some("no-store")
    );
    let forged = http_request(
        mesh.addr(Component::Gateway),
        "GET",
        "/v1/tenants/system",
        &[("authorization", "Bearer not.a.token")],
        b"",
    )
    .await?;
    assert_eq!(forged.status, 401);
    assert_eq!(
        header(&forged, "www-authenticate").as_deref(),
        Some(r#"Bearer realm="palisade", error="invalid_token""#)
    );
    mesh.stop().await
}

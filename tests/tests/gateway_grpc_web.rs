//! gRPC-Web through the gateway's public port, with a hand-rolled client (frames, base64 text
//! mode, trailers in the body) over HTTP/1.1 and over h2: the same calls give what native gRPC
//! gives, gzip-compressed messages pass through both ways, and CORS is answered only when the
//! deployment configures it.

mod common;

use std::{io::Read, net::SocketAddr, time::Duration};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use bytes::Bytes;
use common::new_tenant;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use palisade_proto::palisade::{
    compliance::v1::{
        AuditEvent, ExportAuditEventsRequest, audit_service_client::AuditServiceClient,
    },
    identity::v1::{
        CreateTenantRequest, GetTenantRequest, ListTenantsRequest, ListTenantsResponse, Plan,
        Tenant, tenant_service_client::TenantServiceClient,
    },
};
use palisade_testkit::{Component, Mesh, eventually, http_request};
use prost::Message;
use tokio_stream::StreamExt;
use tonic::Code;

#[derive(Clone, Copy, Debug)]
enum Transport {
    Http1,
    H2,
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Binary,
    Text,
}

/// What a gRPC-Web call returned: its messages and its status, from the trailers frame or,
/// for a trailers-only answer, from the headers.
#[derive(Debug)]
struct WebReply {
    content_type: String,
    messages: Vec<Bytes>,
    code: i32,
    message: String,
    request_id: Option<String>,
}

impl WebReply {
    fn single<T: Message + Default>(&self) -> T {
        assert_eq!(self.code, 0, "{}", self.message);
        assert_eq!(self.messages.len(), 1);
        T::decode(self.messages[0].clone()).unwrap()
    }
}

/// `message` as one uncompressed gRPC message frame: flag, length, bytes.
fn message_frame(message: &impl Message) -> anyhow::Result<Vec<u8>> {
    let encoded = message.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(encoded.len())?.to_be_bytes());
    frame.extend_from_slice(&encoded);
    Ok(frame)
}

async fn call(
    gateway: SocketAddr,
    transport: Transport,
    mode: Mode,
    path: &str,
    key: Option<&str>,
    request: &impl Message,
) -> anyhow::Result<WebReply> {
    let frame = message_frame(request)?;
    let (content_type, body) = match mode {
        Mode::Binary => ("application/grpc-web+proto", frame),
        Mode::Text => (
            "application/grpc-web-text",
            STANDARD.encode(frame).into_bytes(),
        ),
    };
    let auth = key.map(|key| format!("ApiKey {key}"));
    let mut headers = vec![("content-type", content_type), ("x-grpc-web", "1")];
    if let Some(auth) = &auth {
        headers.push(("authorization", auth.as_str()));
    }
    let (status, response_headers, body) = match transport {
        Transport::Http1 => {
            // Sent by some proxies; HTTP/1-only, so it must not reach the HTTP/2 backend call.
            headers.push(("proxy-connection", "keep-alive"));
            let response = http_request(gateway, "POST", path, &headers, &body).await?;
            (response.status, response.headers, response.body)
        }
        Transport::H2 => h2_request(gateway, path, &headers, body).await?,
    };
    anyhow::ensure!(status == 200, "http status {status}");
    let header = |name: &str| {
        response_headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let body = match mode {
        Mode::Binary => body,
        // Padded chunks one after another: decode four characters at a time.
        Mode::Text => body
            .chunks(4)
            .map(|group| STANDARD.decode(group))
            .collect::<Result<Vec<_>, _>>()?
            .concat(),
    };
    let mut reply = WebReply {
        content_type: header("content-type").unwrap_or_default(),
        messages: Vec::new(),
        code: header("grpc-status").map_or(-1, |code| code.parse().unwrap()),
        message: header("grpc-message").unwrap_or_default(),
        request_id: header("x-request-id"),
    };
    let mut rest = body.as_slice();
    while !rest.is_empty() {
        let flag = rest[0];
        let length = u32::from_be_bytes(rest[1..5].try_into()?) as usize;
        let payload = &rest[5..5 + length];
        rest = &rest[5 + length..];
        if flag & 0x80 == 0 {
            reply.messages.push(Bytes::copy_from_slice(payload));
            continue;
        }
        anyhow::ensure!(rest.is_empty(), "frames after the trailers");
        for line in std::str::from_utf8(payload)?.split("\r\n") {
            match line.split_once(':') {
                Some(("grpc-status", code)) => reply.code = code.trim().parse()?,
                Some(("grpc-message", message)) => reply.message = message.trim().to_owned(),
                _ => {}
            }
        }
    }
    Ok(reply)
}

/// One request over a fresh h2c connection (prior knowledge), like a browser on HTTP/2.
async fn h2_request(
    gateway: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> anyhow::Result<(u16, Vec<(String, String)>, Vec<u8>)> {
    let stream = tokio::net::TcpStream::connect(gateway).await?;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut request = http::Request::post(format!("http://{gateway}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = sender
        .send_request(request.body(Full::new(Bytes::from(body)))?)
        .await?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = response.into_body().collect().await?.to_bytes().to_vec();
    Ok((status, headers, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_calls_match_native_grpc_in_both_modes_over_http1_and_h2() -> anyhow::Result<()> {
    const CREATE: &str = "/palisade.identity.v1.TenantService/CreateTenant";
    const GET: &str = "/palisade.identity.v1.TenantService/GetTenant";
    const LIST: &str = "/palisade.identity.v1.TenantService/ListTenants";
    const EXPORT: &str = "/palisade.compliance.v1.AuditService/ExportAuditEvents";
    for builder in Mesh::each_backend() {
        let mesh = builder.start().await?;
        let gateway = mesh.addr(Component::Gateway);
        let key = Some(mesh.operator_key());
        let mut tenants = TenantServiceClient::new(mesh.gateway());
        let combinations = [
            (Transport::Http1, Mode::Binary),
            (Transport::Http1, Mode::Text),
            (Transport::H2, Mode::Binary),
            (Transport::H2, Mode::Text),
        ];
        for (i, (transport, mode)) in combinations.into_iter().enumerate() {
            let what = format!("{transport:?} {mode:?}");
            let id = format!("web{i}");
            let create = new_tenant(&id, "Web", Plan::Standard);
            let created = call(gateway, transport, mode, CREATE, key, &create).await?;
            assert!(
                created.content_type.starts_with(match mode {
                    Mode::Binary => "application/grpc-web+proto",
                    Mode::Text => "application/grpc-web-text",
                }),
                "{what}: {}",
                created.content_type
            );
            assert!(created.request_id.is_some(), "{what}");
            let created: Tenant = created.single();
            assert_eq!(created.name, format!("tenants/{id}"), "{what}");

            let get = GetTenantRequest {
                name: created.name.clone(),
            };
            let fetched: Tenant = call(gateway, transport, mode, GET, key, &get)
                .await?
                .single();
            let over_grpc = tenants
                .get_tenant(mesh.as_operator(get.clone()))
                .await?
                .into_inner();
            assert_eq!(fetched, over_grpc, "{what}");
            assert_eq!(created, over_grpc, "{what}");

            let list = ListTenantsRequest {
                page_size: 2,
                filter: r#"plan = "PLAN_STANDARD""#.into(),
                ..Default::default()
            };
            let listed: ListTenantsResponse = call(gateway, transport, mode, LIST, key, &list)
                .await?
                .single();
            let over_grpc = tenants
                .list_tenants(mesh.as_operator(list))
                .await?
                .into_inner();
            assert_eq!(listed, over_grpc, "{what}");

            // Errors: from the service (in the trailers frame) and from the gateway itself.
            let missing = GetTenantRequest {
                name: "tenants/nobody".into(),
            };
            let missing = call(gateway, transport, mode, GET, key, &missing).await?;
            assert_eq!(missing.code, Code::NotFound as i32, "{what}");
            assert!(missing.messages.is_empty());
            let anonymous = call(gateway, transport, mode, GET, None, &get).await?;
            assert_eq!(anonymous.code, Code::Unauthenticated as i32, "{what}");
        }

        // A server stream: every message, then the status in the trailers frame.
        let export = ExportAuditEventsRequest {
            parent: "tenants/web0".into(),
            ..Default::default()
        };
        let audit = AuditServiceClient::new(mesh.gateway());
        let over_grpc: Vec<AuditEvent> = eventually(Duration::from_secs(10), || {
            let mut audit = audit.clone();
            let request = mesh.as_operator(export.clone());
            async move {
                let events: Vec<AuditEvent> = audit
                    .export_audit_events(request)
                    .await?
                    .into_inner()
                    .collect::<Result<_, _>>()
                    .await?;
                Ok((!events.is_empty()).then_some(events))
            }
        })
        .await?;
        for (transport, mode) in combinations {
            let streamed = call(gateway, transport, mode, EXPORT, key, &export).await?;
            assert_eq!(streamed.code, 0, "{}", streamed.message);
            let events: Vec<AuditEvent> = streamed
                .messages
                .iter()
                .map(|m| AuditEvent::decode(m.clone()))
                .collect::<Result<_, _>>()?;
            assert_eq!(events, over_grpc, "{transport:?} {mode:?}");
        }
        mesh.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_is_answered_only_for_configured_origins() -> anyhow::Result<()> {
    const APP: &str = "https://app.example.com";
    let preflight = [
        ("origin", APP),
        ("access-control-request-method", "POST"),
        (
            "access-control-request-headers",
            "content-type,x-grpc-web,authorization",
        ),
    ];
    let path = "/palisade.identity.v1.TenantService/GetTenant";

    let mesh = Mesh::builder()
        .with_cors_allowed_origins(&[APP])
        .start()
        .await?;
    let gateway = mesh.addr(Component::Gateway);
    let answer = http_request(gateway, "OPTIONS", path, &preflight, b"").await?;
    assert_eq!(answer.status, 204);
    assert_eq!(answer.header("access-control-allow-origin"), Some(APP));
    assert!(
        answer
            .header("access-control-allow-methods")
            .unwrap()
            .contains("POST")
    );
    assert_eq!(
        answer.header("access-control-allow-headers"),
        Some("content-type,x-grpc-web,authorization")
    );
    let rest_preflight = http_request(gateway, "OPTIONS", "/v1/tenants", &preflight, b"").await?;
    assert_eq!(rest_preflight.status, 204);

    // The actual call exposes the status headers to the page.
    let frame = message_frame(&GetTenantRequest {
        name: "tenants/system".into(),
    })?;
    let auth = format!("ApiKey {}", mesh.operator_key());
    let headers = [
        ("origin", APP),
        ("content-type", "application/grpc-web+proto"),
        ("authorization", auth.as_str()),
    ];
    let actual = http_request(gateway, "POST", path, &headers, &frame).await?;
    assert_eq!(actual.status, 200);
    assert_eq!(actual.header("access-control-allow-origin"), Some(APP));
    let exposed = actual.header("access-control-expose-headers").unwrap();
    for name in [
        "grpc-status",
        "grpc-message",
        "grpc-status-details-bin",
        "x-request-id",
    ] {
        assert!(exposed.contains(name), "{exposed}");
    }
    // Another origin gets nothing to work with.
    let mut other = preflight;
    other[0] = ("origin", "https://evil.example.com");
    let refused = http_request(gateway, "OPTIONS", path, &other, b"").await?;
    assert_eq!(refused.header("access-control-allow-origin"), None);
    mesh.stop().await?;

    // Not configured: no CORS headers at all.
    let mesh = Mesh::builder().start().await?;
    let gateway = mesh.addr(Component::Gateway);
    let answer = http_request(gateway, "OPTIONS", path, &preflight, b"").await?;
    assert_ne!(answer.status, 204);
    assert_eq!(answer.header("access-control-allow-origin"), None);
    let actual = http_request(gateway, "POST", path, &headers, &frame).await?;
    assert_eq!(actual.status, 200);
    assert_eq!(actual.header("access-control-allow-origin"), None);
    mesh.stop().await?;
    Ok(())
}

/// The mesh's messages are protobuf: a gRPC-Web or gRPC request in another encoding is
/// refused, saying so, instead of being misread as protobuf.
/// Media types are case-insensitive: `Application/gRPC` is native gRPC, proxied as such, not
/// a REST request for a path no REST rule has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_content_type_in_any_case_is_native_grpc() -> anyhow::Result<()> {
    let mesh = Mesh::builder().start().await?;
    let auth = format!("ApiKey {}", mesh.operator_key());
    let frame = message_frame(&GetTenantRequest {
        name: "tenants/system".into(),
    })?;
    let headers = [
        ("content-type", "Application/gRPC"),
        ("te", "trailers"),
        ("authorization", auth.as_str()),
    ];
    let path = "/palisade.identity.v1.TenantService/GetTenant";
    let (status, headers, body) =
        h2_request(mesh.addr(Component::Gateway), path, &headers, frame).await?;
    assert_eq!(status, 200);
    let content_type = headers.iter().find(|(name, _)| name == "content-type");
    assert_eq!(
        content_type.map(|(_, value)| value.as_str()),
        Some("application/grpc")
    );
    let tenant = Tenant::decode(body.get(5..).unwrap_or_default())?;
    assert_eq!(tenant.name, "tenants/system");
    mesh.stop().await
}

/// Both modes take a message up to the gateway's 4 MiB limit, as native gRPC does: text mode
/// counts the message, not its base64, which is a third longer. A 3.5 MiB message reaches
/// identity (and is refused there, for its display name); a 5 MiB one is refused at the edge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_modes_take_messages_up_to_the_same_limit() -> anyhow::Result<()> {
    let mesh = Mesh::builder().start().await?;
    let gateway = mesh.addr(Component::Gateway);
    let key = mesh.operator_key().to_owned();
    let create = |size: usize| CreateTenantRequest {
        tenant_id: "big".into(),
        tenant: Some(Tenant {
            display_name: "x".repeat(size),
            ..Tenant::default()
        }),
    };
    let path = "/palisade.identity.v1.TenantService/CreateTenant";
    for mode in [Mode::Binary, Mode::Text] {
        let within = call(
            gateway,
            Transport::H2,
            mode,
            path,
            Some(&key),
            &create(7 << 19),
        )
        .await?;
        assert_eq!(
            within.code,
            Code::InvalidArgument as i32,
            "{mode:?}: {}",
            within.message
        );
        let over = call(
            gateway,
            Transport::H2,
            mode,
            path,
            Some(&key),
            &create(5 << 20),
        )
        .await?;
        assert_eq!(
            over.code,
            Code::ResourceExhausted as i32,
            "{mode:?}: {}",
            over.message
        );
    }
    mesh.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encodings_other_than_protobuf_are_refused() -> anyhow::Result<()> {
    let mesh = Mesh::builder().start().await?;
    let gateway = mesh.addr(Component::Gateway);
    let path = "/palisade.observability.v1.StatusService/GetStatus";
    let web = http_request(
        gateway,
        "POST",
        path,
        &[("content-type", "application/grpc-web+json")],
        b"\0\0\0\0\x02{}",
    )
    .await?;
    assert_eq!(web.status, 415, "{}", web.text());
    let body: serde_json::Value = serde_json::from_slice(&web.body)?;
    assert_eq!(body["code"], 12, "{body}");
    assert_eq!(body["details"][0]["reason"], "UNIMPLEMENTED", "{body}");
    // Answered as other answers are (request id, CORS), so a browser can read why.
    assert!(web.headers.iter().any(|(name, _)| name == "x-request-id"));
    // gRPC-Web calls are POSTs; a GET would reach the method with no message.
    let get = http_request(
        gateway,
        "GET",
        path,
        &[("content-type", "application/grpc-web+proto")],
        b"",
    )
    .await?;
    assert_eq!(get.status, 405, "{}", get.text());
    assert_eq!(get.header("allow"), Some("POST"));
    assert_eq!(get.header("grpc-status"), Some("12"));
    mesh.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_compressed_grpc_web_calls_pass_through_both_ways() -> anyhow::Result<()> {
    let mesh = Mesh::builder().start().await?;
    TenantServiceClient::new(mesh.gateway())
        .create_tenant(mesh.as_operator(new_tenant("acme", "Acme", Plan::Professional)))
        .await?;
    let request = GetTenantRequest {
        name: "tenants/acme".into(),
    };
    let mut compressed = Vec::new();
    flate2::read::GzEncoder::new(
        request.encode_to_vec().as_slice(),
        flate2::Compression::default(),
    )
    .read_to_end(&mut compressed)?;
    let mut frame = vec![1u8];
    frame.extend_from_slice(&u32::try_from(compressed.len())?.to_be_bytes());
    frame.extend_from_slice(&compressed);
    let auth = format!("ApiKey {}", mesh.operator_key());
    let headers = [
        ("content-type", "application/grpc-web+proto"),
        ("x-grpc-web", "1"),
        ("grpc-encoding", "gzip"),
        ("grpc-accept-encoding", "gzip"),
        ("authorization", auth.as_str()),
    ];
    let gateway = mesh.addr(Component::Gateway);
    let response = http_request(
        gateway,
        "POST",
        "/palisade.identity.v1.TenantService/GetTenant",
        &headers,
        &frame,
    )
    .await?;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("grpc-encoding"), Some("gzip"));
    // The tenant, in one compressed message frame, then the trailers frame.
    let body = response.body.as_slice();
    assert_eq!(body[0], 1, "a compressed message frame");
    let length = u32::from_be_bytes(body[1..5].try_into()?) as usize;
    let mut message = Vec::new();
    flate2::read::GzDecoder::new(&body[5..5 + length]).read_to_end(&mut message)?;
    assert_eq!(Tenant::decode(message.as_slice())?.display_name, "Acme");
    let trailers = std::str::from_utf8(&body[5 + length + 5..])?;
    assert!(
        trailers.split("\r\n").any(|line| line == "grpc-status: 0"),
        "{trailers}"
    );
    mesh.stop().await
}

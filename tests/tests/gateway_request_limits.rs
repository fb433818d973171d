//! Request limits at the gateway: a gRPC request message over 4 MiB is `RESOURCE_EXHAUSTED`
//! (reason `MESSAGE_TOO_LARGE`), refused before a component sees it, as a REST body over the
//! limit is (413, code 8); and request headers over 16 KiB are `431` over HTTP/1.1 as over
//! HTTP/2, where a few KiB pass. gzip-compressed gRPC messages pass through both ways, and
//! the limit holds for what a message is once decompressed, so a small compressed message
//! cannot unpack into a huge one.

mod common;

use common::{expect_code, reason};
use palisade_proto::palisade::identity::v1::{
    CreateTenantRequest, GetTenantRequest, Tenant, tenant_service_client::TenantServiceClient,
};
use palisade_testkit::{Component, Mesh, http_request};
use tonic::{Code, codec::CompressionEncoding::Gzip};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_message_over_the_limit_is_resource_exhausted() -> anyhow::Result<()> {
    let mesh = Mesh::builder().start().await?;
    let mut tenants = TenantServiceClient::new(mesh.gateway()).max_encoding_message_size(8 << 20);
    let huge = CreateTenantRequest {
        tenant_id: "big".into(),
        tenant: Some(Tenant {
            display_name: "x".repeat(5 << 20),
            ..Tenant::default()
        }),
    };
    let refused = tenants.create_tenant(mesh.as_operator(huge)).await;
    let status = expect_code(refused, Code::ResourceExhausted);
    assert_eq!(reason(&status), "MESSAGE_TOO_LARGE", "{status:?}");
    let absent = tenants
        .get_tenant(mesh.as_operator(GetTenantRequest {
            name: "tenants/big".into(),
        }))
        .await;
    expect_code(absent, Code::NotFound);
    mesh.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_compressed_calls_pass_through_the_gateway_both_ways() -> anyhow::Result<()> {
    let mesh = Mesh::builder().start().await?;
    let mut tenants = TenantServiceClient::new(mesh.gateway())
        .send_compressed(Gzip)
        .accept_compressed(Gzip);
    let display_name = "Compressible ".repeat(15);
    let create = CreateTenantRequest {
        tenant_id: "zipped".into(),
        tenant: Some(Tenant {
            display_name: display_name.trim().to_owned(),
            ..Tenant::default()
        }),
    };
    tenants.create_tenant(mesh.as_operator(create)).await?;
    let read = tenants
        .get_tenant(mesh.as_operator(GetTenantRequest {
            name: "tenants/zipped".into(),
        }))
        .await?;
    // The answer came compressed, since the client accepts gzip.
    let encoding = read.metadata().get("grpc-encoding").cloned();
    assert_eq!(
        encoding.as_ref().map(|v| v.to_str().ok()),
        Some(Some("gzip"))
    );
    assert_eq!(read.into_inner().display_name, display_name.trim());
    mesh.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_message_over_the_limit_once_decompressed_is_resource_exhausted()
-> anyhow::Result<()> {
    let mesh = Mesh::builder().start().await?;
    let mut tenants = TenantServiceClient::new(mesh.gateway())
        .send_compressed(Gzip)
        .max_encoding_message_size(8 << 20);
    // 5 MiB of one letter: a few KiB on the wire, under the gateway's limit.
    let bomb = CreateTenantRequest {
        tenant_id: "bomb".into(),
        tenant: Some(Tenant {
            display_name: "x".repeat(5 << 20),
            ..Tenant::default()
        }),
    };
    let refused = tenants.create_tenant(mesh.as_operator(bomb)).await;
    let status = expect_code(refused, Code::ResourceExhausted);
    assert!(status.message().contains("decompressing"), "{status:?}");
    let absent = tenants
        .get_tenant(mesh.as_operator(GetTenantRequest {
            name: "tenants/bomb".into(),
        }))
        .await;
    expect_code(absent, Code::NotFound);
    mesh.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_headers_over_16_kib_are_431_over_http_1() -> anyhow::Result<()> {
    let mesh = Mesh::builder().start().await?;
    let operator = format!("ApiKey {}", mesh.operator_key());
    let get = |padding: usize| {
        let (addr, operator) = (mesh.addr(Component::Gateway), operator.clone());
        async move {
            let padding = "p".repeat(padding);
            let headers = [
                ("authorization", operator.as_str()),
                ("x-padding", padding.as_str()),
            ];
            http_request(addr, "GET", "/v1/tenants/system", &headers, b"").await
        }
    };
    let fits = get(4 << 10).await?;
    assert_eq!(fits.status, 200, "{}", fits.text());
    let over = get(20 << 10).await?;
    assert_eq!(over.status, 431, "{}", over.text());
    mesh.stop().await
}

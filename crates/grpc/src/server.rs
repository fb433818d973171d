//! The server every component runs: its services behind the tenant-context and policy layers,
//! plus `grpc.health.v1` and reflection (v1 and v1alpha), on an mTLS listener, with graceful
//! shutdown.

use std::{collections::HashSet, convert::Infallible, future::Future, sync::Arc};

use palisade_tenancy::{TenantContextLayer, TrustPolicy};
use palisade_tls::MeshTls;
use prost::{Message, encoding::WireType};
use prost_types::FileDescriptorProto;
use tokio::net::TcpListener;
use tonic::{
    body::Body,
    server::NamedService,
    service::{Routes, RoutesBuilder},
    transport::Server,
};
use tonic_health::{ServingStatus, server::HealthReporter};
use tower::ServiceBuilder;

use palisade_telemetry::ComponentMetrics;

use crate::{
    Authorizer, DenialAuditLayer, DenialSink, MethodPolicies, PolicyLayer, Result,
    ServerObserveLayer,
};

const REFLECTION_V1: &str = "grpc.reflection.v1.ServerReflection";
const REFLECTION_V1ALPHA: &str = "grpc.reflection.v1alpha.ServerReflection";
const HEALTH: &str = "grpc.health.v1.Health";

/// How long in-flight calls may take to finish once shutdown begins.
const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Builds one component's gRPC server.
pub struct MeshServer {
    component: &'static str,
    metrics: ComponentMetrics,
    tls: MeshTls,
    trust: TrustPolicy,
    authorizer: Arc<dyn Authorizer>,
    policies: Arc<MethodPolicies>,
    routes: RoutesBuilder,
    service_names: Vec<&'static str>,
    /// Where refused calls to audited methods are recorded (`denial_audit.rs`), if anywhere.
    denials: Option<Arc<dyn DenialSink>>,
}

/// Flips the health status the component reports (readiness follows dependencies), until
/// the component drains.
#[derive(Clone)]
pub struct ServingHandle {
    reporter: HealthReporter,
    service_names: Arc<Vec<&'static str>>,
    /// Whether the component is draining. Held while a status is reported, so a readiness
    /// check that ends as the drain begins cannot report SERVING after it.
    draining: Arc<tokio::sync::Mutex<bool>>,
}

impl ServingHandle {
    /// A handle for a health reporter built elsewhere (the gateway's); it flips the overall
    /// status `""` only.
    pub fn for_reporter(reporter: HealthReporter) -> ServingHandle {
        ServingHandle {
            reporter,
            service_names: Arc::default(),
            draining: Arc::default(),
        }
    }

    /// Reports SERVING or NOT_SERVING; ignored once the component drains.
    pub async fn set_serving(&self, serving: bool) {
        let draining = self.draining.lock().await;
        if !*draining {
            self.report(serving).await;
        }
    }

    /// Reports NOT_SERVING for good: the component is shutting down.
    pub async fn drain(&self) {
        let mut draining = self.draining.lock().await;
        *draining = true;
        self.report(false).await;
    }

    async fn report(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status("", status).await;
        for name in self.service_names.iter() {
            self.reporter.set_service_status(*name, status).await;
        }
    }
}

impl MeshServer {
    pub fn new(
        component: &'static str,
        tls: MeshTls,
        authorizer: Arc<dyn Authorizer>,
        metrics: ComponentMetrics,
    ) -> Result<MeshServer> {
        let trust = TrustPolicy::mesh(tls.identity().trust_domain());
        Ok(MeshServer {
            component,
            metrics,
            tls,
            trust,
            authorizer,
            policies: Arc::new(MethodPolicies::palisade()?),
            routes: RoutesBuilder::default(),
            service_names: Vec::new(),
            denials: None,
        })
    }

    /// Records refused calls to the component's audited methods in `sink`.
    pub fn with_denial_audit(mut self, sink: Arc<dyn DenialSink>) -> MeshServer {
        self.denials = Some(sink);
        self
    }

    pub fn add_service<S>(mut self, service: S) -> MeshServer
    where
        S: tower::Service<http::Request<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.service_names.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// Serves until `shutdown` resolves, then reports NOT_SERVING for good, stops accepting
    /// and lets in-flight calls finish. The returned handle is live before the first call is
    /// accepted.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(ServingHandle, impl Future<Output = Result<()>>)> {
        let (reporter, health) = tonic_health::server::health_reporter();
        let handle = ServingHandle {
            reporter,
            service_names: Arc::new(self.service_names.clone()),
            draining: Arc::default(),
        };
        handle.set_serving(true).await;

        let routes = self.routes.routes();
        let routes = add_reflection(routes, &self.service_names)?.add_service(health);

        // Layers in the order a request meets them: tonic inserts the peer identity, the call
        // is traced and measured, the tenant context is accepted (or refused), refusals of
        // audited calls are recorded on the way out, and the method's policy is enforced.
        let denials =
            (self.denials.clone()).map(|sink| DenialAuditLayer::new(self.policies.clone(), sink));
        let layers = ServiceBuilder::new()
            .layer(ServerObserveLayer::new(
                self.component,
                self.metrics.rpc.server.clone(),
            ))
            .layer(TenantContextLayer::new(self.trust.clone()))
            .option_layer(denials)
            .layer(PolicyLayer::new(
                self.policies.clone(),
                self.authorizer.clone(),
                self.trust.clone(),
            ));

        let incoming = palisade_tls::incoming(listener, self.tls.clone());
        let shutdown_handle = handle.clone();
        let component = self.component;
        let (fired, shutdown_fired) = tokio::sync::oneshot::channel::<()>();
        let server = Server::builder()
            .layer(layers)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async move {
                shutdown.await;
                let _ = fired.send(());
                shutdown_handle.drain().await;
                tracing::info!(component, "draining gRPC server");
            });
        let serving = async move {
            tokio::pin!(server);
            // tonic waits for every connection to finish; a client that never does (a stuck
            // stream, a half-sent request) must not keep the component from stopping.
            let grace = async {
                if shutdown_fired.await.is_ok() {
                    tokio::time::sleep(DRAIN_GRACE).await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                served = &mut server => Ok(served?),
                () = grace => {
                    tracing::warn!(component, "connections still open after the drain grace period; stopping anyway");
                    Ok(())
                }
            }
        };
        Ok((handle, serving))
    }
}

/// Adds reflection v1 and v1alpha over the Palisade descriptor set and the health service's,
/// advertising `services` (plus health and reflection). Every file stays resolvable, so a
/// mesh client can describe any message or method it meets.
pub fn add_reflection(routes: Routes, services: &[impl AsRef<str>]) -> Result<Routes> {
    with_reflection(routes, services, palisade_proto::FILE_DESCRIPTOR_SET)
}

/// [`add_reflection`] for a public port: only the files a client of `services` can meet are
/// described. A file declaring only other services (the mesh's internal ones) is left out,
/// unless a file kept imports it.
pub fn add_public_reflection(routes: Routes, services: &[impl AsRef<str>]) -> Result<Routes> {
    let files = files_for(palisade_proto::FILE_DESCRIPTOR_SET, services);
    with_reflection(routes, services, &files)
}

/// The files of the encoded descriptor set `set` that declare no service or one of
/// `services`, and the files they import, as an encoded set. Each file is kept as the bytes
/// it came in: decoded into `prost_types` and encoded again, it would lose its custom options
/// (`google.api.http`, the method policies), which prost does not keep.
fn files_for(set: &[u8], services: &[impl AsRef<str>]) -> Vec<u8> {
    let files: Vec<(&[u8], FileDescriptorProto)> = raw_files(set)
        .map(|raw| {
            let file =
                FileDescriptorProto::decode(raw).expect("a file of the built descriptor set");
            (raw, file)
        })
        .collect();
    let offered = |file: &FileDescriptorProto| {
        file.service.is_empty()
            || file.service.iter().any(|service| {
                let name = format!("{}.{}", file.package(), service.name());
                services.iter().any(|offered| offered.as_ref() == name)
            })
    };
    let mut kept: HashSet<&str> = (files.iter())
        .filter(|(_, file)| offered(file))
        .map(|(_, file)| file.name())
        .collect();
    // What a kept file imports is kept, until nothing more is.
    loop {
        let imported: Vec<&str> = (files.iter())
            .filter(|(_, file)| kept.contains(file.name()))
            .flat_map(|(_, file)| file.dependency.iter().map(String::as_str))
            .filter(|import| !kept.contains(import))
            .collect();
        if imported.is_empty() {
            break;
        }
        kept.extend(imported);
    }
    let mut encoded = Vec::new();
    for (raw, file) in &files {
        if kept.contains(file.name()) {
            // `FileDescriptorSet.file`, field 1, length-delimited.
            prost::encoding::encode_key(1, WireType::LengthDelimited, &mut encoded);
            prost::encoding::encode_varint(raw.len() as u64, &mut encoded);
            encoded.extend_from_slice(raw);
        }
    }
    encoded
}

/// The encoded `FileDescriptorProto`s of an encoded `FileDescriptorSet`, as they are.
fn raw_files(mut set: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if set.is_empty() {
            return None;
        }
        let malformed = "the built descriptor set holds only length-delimited files";
        let (tag, wire_type) = prost::encoding::decode_key(&mut set).expect(malformed);
        assert!(
            tag == 1 && wire_type == WireType::LengthDelimited,
            "{malformed}"
        );
        let len = prost::encoding::decode_varint(&mut set).expect(malformed) as usize;
        let (raw, rest) = set.split_at(len);
        set = rest;
        Some(raw)
    })
}

fn with_reflection(routes: Routes, services: &[impl AsRef<str>], files: &[u8]) -> Result<Routes> {
    let configure = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(files)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        let names = services.iter().map(AsRef::as_ref);
        for name in names.chain([HEALTH, REFLECTION_V1, REFLECTION_V1ALPHA]) {
            builder = builder.with_service_name(name);
        }
        builder
    };
    Ok(routes
        .add_service(configure().build_v1()?)
        .add_service(configure().build_v1alpha()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_port_describes_the_files_of_its_services_only() {
        let public = MethodPolicies::palisade().unwrap().public_services();
        let files = files_for(palisade_proto::FILE_DESCRIPTOR_SET, &public);
        let set = prost_types::FileDescriptorSet::decode(files.as_slice()).unwrap();
        let names: Vec<&str> = set.file.iter().map(|file| file.name()).collect();
        for internal in [
            "palisade/identity/v1/authorization.proto",
            "palisade/identity/v1/edge.proto",
            "palisade/identity/v1/tenant_data.proto",
        ] {
            assert!(!names.contains(&internal), "{internal} described");
        }
        // The public files, with what they import: the descriptors resolve alone.
        for kept in [
            "palisade/identity/v1/tenant.proto",
            "palisade/identity/v1/user.proto",
            "palisade/compliance/v1/audit.proto",
            "palisade/common/v1/principal.proto",
            "palisade/options/v1/options.proto",
            "google/api/annotations.proto",
            "google/protobuf/timestamp.proto",
        ] {
            assert!(names.contains(&kept), "{kept} missing from {names:?}");
        }
        // Each file as it was built, custom options and all.
        let pool = prost_reflect::DescriptorPool::decode(files.as_slice()).unwrap();
        let method = pool
            .get_service_by_name("palisade.identity.v1.TenantService")
            .and_then(|service| service.methods().find(|m| m.name() == "GetTenant"))
            .unwrap();
        let http = pool.get_extension_by_name("google.api.http").unwrap();
        assert!(method.options().has_extension(&http));
        let kept: Vec<&[u8]> = raw_files(&files).collect();
        let built: Vec<&[u8]> = raw_files(palisade_proto::FILE_DESCRIPTOR_SET).collect();
        assert!(kept.iter().all(|raw| built.contains(raw)));
    }
}

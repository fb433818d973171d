//! Health probes: one long-lived channel per component, `grpc.health.v1.Health/Check` with a
//! deadline, all components probed concurrently.

use std::time::{Duration, Instant};

use palisade_grpc::MeshAddresses;
use palisade_proto::palisade::observability::v1::ServingState;
use palisade_tls::MeshTls;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// One component's probe result.
#[derive(Clone, Debug)]
pub struct ProbeResult {
    pub component: &'static str,
    pub endpoint: String,
    pub state: ServingState,
    pub latency: Duration,
    pub detail: String,
}

struct Target {
    component: &'static str,
    endpoint: String,
    channel: Channel,
}

pub struct Prober {
    targets: Vec<Target>,
    /// The last round of probes: a public endpoint must not turn every call into a fan-out.
    recent: tokio::sync::Mutex<Option<(Instant, Vec<ProbeResult>)>>,
}

/// How long one round of probes answers every `GetStatus`.
const REUSE_FOR: Duration = Duration::from_secs(1);

impl Prober {
    pub fn for_mesh(mesh: &MeshAddresses, tls: &MeshTls) -> Result<Prober, palisade_tls::Error> {
        let mut targets = Vec::new();
        for (component, endpoint) in [
            ("identity", &mesh.identity),
            ("compliance", &mesh.compliance),
            ("observability", &mesh.observability),
        ] {
            let channel = palisade_tls::channel(endpoint, tls, component)?;
            targets.push(Target {
                component,
                endpoint: endpoint.clone(),
                channel,
            });
        }
        // The gateway's public port speaks h2c (or TLS with a public certificate), not mesh mTLS.
        if let Ok(endpoint) = Endpoint::from_shared(mesh.gateway.clone()) {
            let channel = endpoint.connect_timeout(PROBE_TIMEOUT).connect_lazy();
            targets.push(Target {
                component: "gateway",
                endpoint: mesh.gateway.clone(),
                channel,
            });
        }
        Ok(Prober {
            targets,
            recent: tokio::sync::Mutex::default(),
        })
    }

    /// Every component's state, in a fixed order: probed now, or at most a second ago.
    /// Concurrent callers wait for one round instead of starting their own.
    pub async fn probe_all(&self) -> Vec<ProbeResult> {
        let mut recent = self.recent.lock().await;
        if let Some((at, results)) = recent.as_ref()
            && at.elapsed() < REUSE_FOR
        {
            return results.clone();
        }
        let results = futures::future::join_all(self.targets.iter().map(probe)).await;
        *recent = Some((Instant::now(), results.clone()));
        results
    }
}

async fn probe(target: &Target) -> ProbeResult {
    let started = Instant::now();
    let mut client = HealthClient::new(target.channel.clone());
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    request.set_timeout(PROBE_TIMEOUT);
    let call = tokio::time::timeout(PROBE_TIMEOUT, client.check(request)).await;
    let (state, detail) = match call {
        Ok(Ok(response)) => match response.into_inner().status() {
            ServingStatus::Serving => (ServingState::Serving, String::new()),
            other => (
                ServingState::NotServing,
                format!("health service answered {}", other.as_str_name()),
            ),
        },
        Ok(Err(status)) => (
            ServingState::Unreachable,
            format!("{:?}: {}", status.code(), status.message()),
        ),
        Err(_) => (
            ServingState::Unreachable,
            format!("no answer within {PROBE_TIMEOUT:?}"),
        ),
    };
    ProbeResult {
        component: target.component,
        endpoint: target.endpoint.clone(),
        state,
        latency: started.elapsed(),
        detail,
    }
}

//! `StatusService`.

use palisade_proto::palisade::observability::v1::{
    ComponentStatus, GetStatusRequest, MeshStatus, ServingState,
    status_service_server::StatusService,
};
use palisade_tenancy::TenantContext;
use tonic::{Request, Response, Status};

use crate::probe::Prober;

pub struct StatusApi {
    prober: Prober,
}

impl StatusApi {
    pub fn new(prober: Prober) -> StatusApi {
        StatusApi { prober }
    }
}

#[tonic::async_trait]
impl StatusService for StatusApi {
    async fn get_status(
        &self,
        request: Request<GetStatusRequest>,
    ) -> Result<Response<MeshStatus>, Status> {
        // The page is public; the mesh's addresses and raw transport errors are for the
        // platform's operators, not for every tenant's users.
        let detailed = request
            .extensions()
            .get::<TenantContext>()
            .is_some_and(TenantContext::is_platform_operator);
        let round = self.prober.probe_all().await;
        let results = round.results;
        let all_serving = results.iter().all(|r| r.state == ServingState::Serving);
        let components = results
            .into_iter()
            .map(|r| ComponentStatus {
                component: r.component.to_owned(),
                state: r.state as i32,
                latency: prost_types::Duration::try_from(r.latency).ok(),
                detail: if detailed {
                    r.detail
                } else {
                    public_detail(r.state).to_owned()
                },
                endpoint: if detailed { r.endpoint } else { String::new() },
            })
            .collect();
        Ok(Response::new(MeshStatus {
            overall: if all_serving {
                ServingState::Serving
            } else {
                ServingState::NotServing
            } as i32,
            components,
            // When the round ran: it answers calls for a second after.
            check_time: Some(round.ran_at.into()),
        }))
    }
}

fn public_detail(state: ServingState) -> &'static str {
    match state {
        ServingState::Serving => "",
        ServingState::NotServing => "not serving",
        _ => "unreachable",
    }
}

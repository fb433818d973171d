//! `StatusService`.

use palisade_proto::palisade::observability::v1::{
    ComponentStatus, GetStatusRequest, MeshStatus, ServingState,
    status_service_server::StatusService,
};
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
        _request: Request<GetStatusRequest>,
    ) -> Result<Response<MeshStatus>, Status> {
        let results = self.prober.probe_all().await;
        let all_serving = results.iter().all(|r| r.state == ServingState::Serving);
        let components = results
            .into_iter()
            .map(|r| ComponentStatus {
                component: r.component.to_owned(),
                state: r.state as i32,
                latency: prost_types::Duration::try_from(r.latency).ok(),
                detail: r.detail,
                endpoint: r.endpoint,
            })
            .collect();
        Ok(Response::new(MeshStatus {
            overall: if all_serving {
                ServingState::Serving
            } else {
                ServingState::NotServing
            } as i32,
            components,
            check_time: Some(std::time::SystemTime::now().into()),
        }))
    }
}

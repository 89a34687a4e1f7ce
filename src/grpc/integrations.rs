//! `nexus.integrations.v1.IntegrationsService`: proto <-> domain conversion around
//! [`crate::integrations::Integrations`]. RPCs not listed here answer UNIMPLEMENTED (generated
//! default stubs) until their issue lands.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    caller,
    convert::{catalogue_entry_to_proto, integration_to_proto},
    proto::integrations::{
        ListIntegrationsRequest, ListIntegrationsResponse, ListProvidersRequest,
        ListProvidersResponse, integrations_service_server::IntegrationsService,
    },
    store_status,
};
use crate::integrations::Integrations;

pub struct IntegrationsApi {
    integrations: Arc<Integrations>,
}

impl IntegrationsApi {
    pub fn new(integrations: Arc<Integrations>) -> Self {
        Self { integrations }
    }
}

#[tonic::async_trait]
impl IntegrationsService for IntegrationsApi {
    async fn list_providers(
        &self,
        _request: Request<ListProvidersRequest>,
    ) -> Result<Response<ListProvidersResponse>, Status> {
        Ok(Response::new(ListProvidersResponse {
            providers: self
                .integrations
                .catalogue()
                .iter()
                .map(catalogue_entry_to_proto)
                .collect(),
        }))
    }

    async fn list_integrations(
        &self,
        request: Request<ListIntegrationsRequest>,
    ) -> Result<Response<ListIntegrationsResponse>, Status> {
        let caller = caller(&request)?;
        let integrations = self
            .integrations
            .list(&caller.user_id)
            .await
            .map_err(store_status)?;
        Ok(Response::new(ListIntegrationsResponse {
            integrations: integrations.iter().map(integration_to_proto).collect(),
        }))
    }
}

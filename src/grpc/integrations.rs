//! `nexus.integrations.v1.IntegrationsService`: proto <-> domain conversion around
//! [`crate::integrations::Integrations`].

use std::{collections::BTreeMap, pin::Pin, sync::Arc, time::Duration};

use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use super::{
    caller,
    convert::{
        catalogue_entry_to_proto, direction_from_proto, integration_to_proto, provider_from_proto,
        sync_job_to_proto,
    },
    proto::integrations::{
        CompleteOAuthRequest, CompleteOAuthResponse, ConnectIntegrationRequest,
        ConnectIntegrationResponse, DisconnectIntegrationRequest, DisconnectIntegrationResponse,
        GetSyncJobRequest, GetSyncJobResponse, ListIntegrationsRequest, ListIntegrationsResponse,
        ListProvidersRequest, ListProvidersResponse, StartOAuthRequest, StartOAuthResponse,
        SyncIntegrationRequest, SyncIntegrationResponse, WatchSyncJobRequest, WatchSyncJobResponse,
        integrations_service_server::IntegrationsService,
    },
    store_status,
};
use crate::integrations::{IntegrationError, Integrations};

/// How often WatchSyncJob looks at the job (it sends only changes).
const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// Largest credential or setting map accepted.
const MAX_FIELDS: usize = 20;
const MAX_VALUE_LEN: usize = 4096;

pub struct IntegrationsApi {
    integrations: Arc<Integrations>,
}

impl IntegrationsApi {
    pub fn new(integrations: Arc<Integrations>) -> Self {
        Self { integrations }
    }
}

fn integration_status(error: IntegrationError) -> Status {
    match error {
        IntegrationError::InvalidArgument(m) => Status::invalid_argument(m),
        IntegrationError::NotFound(m) => Status::not_found(m),
        IntegrationError::FailedPrecondition(m) => Status::failed_precondition(m),
        IntegrationError::Unavailable(m) => {
            tracing::warn!(reason = %m, "provider unavailable");
            Status::unavailable(m)
        }
        IntegrationError::PermissionDenied(m) => Status::permission_denied(m),
        IntegrationError::Store(e) => store_status(e),
    }
}

fn bounded(
    name: &str,
    map: std::collections::HashMap<String, String>,
) -> Result<BTreeMap<String, String>, Status> {
    if map.len() > MAX_FIELDS {
        return Err(Status::invalid_argument(format!(
            "{name}: at most {MAX_FIELDS} entries"
        )));
    }
    if let Some((key, _)) = map
        .iter()
        .find(|(k, v)| k.len() > 100 || v.len() > MAX_VALUE_LEN)
    {
        let key: String = key.chars().take(100).collect();
        return Err(Status::invalid_argument(format!(
            "{name}.{key}: longer than {MAX_VALUE_LEN} bytes"
        )));
    }
    Ok(map.into_iter().collect())
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchSyncJobResponse, Status>> + Send>>;

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

    #[tracing::instrument(skip_all, fields(provider))]
    async fn connect_integration(
        &self,
        request: Request<ConnectIntegrationRequest>,
    ) -> Result<Response<ConnectIntegrationResponse>, Status> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let provider = provider_from_proto(message.provider)?;
        tracing::Span::current().record("provider", provider.as_str());
        let credentials = bounded("credentials", message.credentials)?;
        let settings = bounded("settings", message.settings)?;
        let integration = self
            .integrations
            .connect(&caller.user_id, provider, credentials, settings)
            .await
            .map_err(integration_status)?;
        Ok(Response::new(ConnectIntegrationResponse {
            integration: Some(integration_to_proto(&integration)),
        }))
    }

    #[tracing::instrument(skip_all, fields(provider))]
    async fn start_o_auth(
        &self,
        request: Request<StartOAuthRequest>,
    ) -> Result<Response<StartOAuthResponse>, Status> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let provider = provider_from_proto(message.provider)?;
        tracing::Span::current().record("provider", provider.as_str());
        let settings = bounded("settings", message.settings)?;
        let (url, expires_at) = self
            .integrations
            .start_oauth(&caller.user_id, provider, &message.redirect_after, settings)
            .await
            .map_err(integration_status)?;
        Ok(Response::new(StartOAuthResponse {
            authorization_url: url.into(),
            expire_time: Some(prost_types::Timestamp {
                seconds: expires_at.timestamp(),
                nanos: 0,
            }),
        }))
    }

    #[tracing::instrument(skip_all, fields(provider))]
    async fn complete_o_auth(
        &self,
        request: Request<CompleteOAuthRequest>,
    ) -> Result<Response<CompleteOAuthResponse>, Status> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let provider = provider_from_proto(message.provider)?;
        tracing::Span::current().record("provider", provider.as_str());
        if message.code.len() > MAX_VALUE_LEN {
            return Err(Status::invalid_argument(format!(
                "code: longer than {MAX_VALUE_LEN} bytes"
            )));
        }
        let outcome = self
            .integrations
            .complete_oauth(
                Some(&caller.user_id),
                Some(provider),
                &message.state,
                Some(&message.code),
                None,
            )
            .await;
        let integration = outcome.result.map_err(integration_status)?;
        Ok(Response::new(CompleteOAuthResponse {
            integration: Some(integration_to_proto(&integration)),
        }))
    }

    #[tracing::instrument(skip_all, fields(provider))]
    async fn disconnect_integration(
        &self,
        request: Request<DisconnectIntegrationRequest>,
    ) -> Result<Response<DisconnectIntegrationResponse>, Status> {
        let caller = caller(&request)?;
        let provider = provider_from_proto(request.get_ref().provider)?;
        tracing::Span::current().record("provider", provider.as_str());
        self.integrations
            .disconnect(&caller.user_id, provider)
            .await
            .map_err(integration_status)?;
        Ok(Response::new(DisconnectIntegrationResponse {}))
    }

    #[tracing::instrument(skip_all, fields(provider))]
    async fn sync_integration(
        &self,
        request: Request<SyncIntegrationRequest>,
    ) -> Result<Response<SyncIntegrationResponse>, Status> {
        let caller = caller(&request)?;
        let provider = provider_from_proto(request.get_ref().provider)?;
        let direction = direction_from_proto(request.get_ref().direction)?;
        tracing::Span::current().record("provider", provider.as_str());
        let job = self
            .integrations
            .sync(&caller.user_id, provider, direction)
            .await
            .map_err(integration_status)?;
        Ok(Response::new(SyncIntegrationResponse {
            job: Some(sync_job_to_proto(&job)),
        }))
    }

    async fn get_sync_job(
        &self,
        request: Request<GetSyncJobRequest>,
    ) -> Result<Response<GetSyncJobResponse>, Status> {
        let caller = caller(&request)?;
        let job = self
            .integrations
            .job(&caller.user_id, &request.get_ref().id)
            .await
            .map_err(integration_status)?;
        Ok(Response::new(GetSyncJobResponse {
            job: Some(sync_job_to_proto(&job)),
        }))
    }

    /// Sends the job now and at every change; ends after a final state. A job that does not
    /// exist (or is not the caller's) is NOT_FOUND before the stream starts.
    async fn watch_sync_job(
        &self,
        request: Request<WatchSyncJobRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let caller = caller(&request)?;
        let id = request.into_inner().id;
        let first = self
            .integrations
            .job(&caller.user_id, &id)
            .await
            .map_err(integration_status)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let integrations = Arc::clone(&self.integrations);
        tokio::spawn(async move {
            let mut last = sync_job_to_proto(&first);
            let mut done = first.state.is_final();
            if tx
                .send(Ok(WatchSyncJobResponse {
                    job: Some(last.clone()),
                }))
                .await
                .is_err()
            {
                return;
            }
            while !done {
                tokio::select! {
                    () = tokio::time::sleep(WATCH_INTERVAL) => {}
                    () = tx.closed() => return,
                }
                let item = match integrations.job(&caller.user_id, &id).await {
                    Ok(job) => {
                        done = job.state.is_final();
                        let now = sync_job_to_proto(&job);
                        if now == last {
                            continue;
                        }
                        last = now.clone();
                        Ok(WatchSyncJobResponse { job: Some(now) })
                    }
                    Err(e) => {
                        done = true;
                        Err(integration_status(e))
                    }
                };
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

//! `nexus.integrations.v1.IntegrationsService`: proto <-> domain conversion around
//! [`crate::integrations::Integrations`].

use std::{collections::BTreeMap, pin::Pin, sync::Arc};

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use super::{
    caller,
    convert::{
        catalogue_entry_to_proto, direction_from_proto, integration_to_proto,
        integration_with_health_to_proto, provider_from_proto, sync_job_to_proto,
    },
    proto::integrations::{
        CancelSyncJobRequest, CancelSyncJobResponse, CompleteOAuthRequest, CompleteOAuthResponse,
        ConnectIntegrationRequest, ConnectIntegrationResponse, DisconnectIntegrationRequest,
        DisconnectIntegrationResponse, GetSyncJobRequest, GetSyncJobResponse,
        ListIntegrationsRequest, ListIntegrationsResponse, ListProvidersRequest,
        ListProvidersResponse, ListSyncJobsRequest, ListSyncJobsResponse,
        NotifyContactsChangedRequest, NotifyContactsChangedResponse, StartOAuthRequest,
        StartOAuthResponse, SyncIntegrationRequest, SyncIntegrationResponse,
        UpdateIntegrationRequest, UpdateIntegrationResponse, WatchSyncJobRequest,
        WatchSyncJobResponse, integrations_service_server::IntegrationsService,
    },
    store_status,
};
use crate::{
    integrations::{FlowCaller, IntegrationError, Integrations, ProviderAnswer},
    store::JobCursor,
};

/// Jobs per ListSyncJobs page when the request does not say.
const DEFAULT_JOB_PAGE: u32 = 20;
/// Largest credential or setting map accepted.
const MAX_FIELDS: usize = 20;
const MAX_VALUE_LEN: usize = 4096;

pub struct IntegrationsApi {
    integrations: Arc<Integrations>,
    /// Ends open WatchSyncJob streams when the service stops (they would hold the shutdown).
    shutdown: CancellationToken,
}

impl IntegrationsApi {
    pub fn new(integrations: Arc<Integrations>, shutdown: CancellationToken) -> Self {
        Self {
            integrations,
            shutdown,
        }
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
        IntegrationError::ResourceExhausted(m) => Status::resource_exhausted(m),
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
            .list_with_health(&caller.user_id)
            .await
            .map_err(store_status)?;
        Ok(Response::new(ListIntegrationsResponse {
            integrations: integrations
                .iter()
                .map(|(i, health)| integration_with_health_to_proto(i, health))
                .collect(),
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
        let accounts_server = Some(message.accounts_server.as_str()).filter(|s| !s.is_empty());
        let outcome = self
            .integrations
            .complete_oauth(
                FlowCaller::User(&caller.user_id),
                ProviderAnswer {
                    provider: Some(provider),
                    state: &message.state,
                    code: Some(&message.code),
                    denied: None,
                    accounts_server,
                },
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
        let full = request.get_ref().full;
        tracing::Span::current().record("provider", provider.as_str());
        let job = self
            .integrations
            .sync(&caller.user_id, provider, direction, full)
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
    /// exist (or is not the caller's) is NOT_FOUND before the stream starts; more open streams
    /// than MAX_WATCH_STREAMS_PER_USER are RESOURCE_EXHAUSTED. The stream is woken by change
    /// notifications, not by polling.
    async fn watch_sync_job(
        &self,
        request: Request<WatchSyncJobRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let caller = caller(&request)?;
        let id = request.into_inner().id;
        let watch = self
            .integrations
            .watch(&caller.user_id)
            .map_err(integration_status)?;
        let first = self
            .integrations
            .job(&caller.user_id, &id)
            .await
            .map_err(integration_status)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let integrations = Arc::clone(&self.integrations);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            // Woken by change notifications; it also looks at the job every `fallback` in case
            // a notification was lost (a dropped database connection).
            let crate::integrations::job_watch::JobWatch {
                mut changes,
                permit,
                fallback,
            } = watch;
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
                    change = changes.recv() => match change {
                        Ok(changed) if changed == id || changed == "*" => {}
                        Ok(_) => continue,
                        // Missed some: look.
                        Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => return,
                    },
                    () = tokio::time::sleep(fallback) => {}
                    () = tx.closed() => return,
                    () = shutdown.cancelled() => {
                        let _ = tx
                            .send(Err(Status::unavailable("the service is stopping; watch the job again")))
                            .await;
                        return;
                    }
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
            drop(permit);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    #[tracing::instrument(skip_all, fields(provider))]
    async fn update_integration(
        &self,
        request: Request<UpdateIntegrationRequest>,
    ) -> Result<Response<UpdateIntegrationResponse>, Status> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let provider = provider_from_proto(message.provider)?;
        tracing::Span::current().record("provider", provider.as_str());
        let settings = bounded("settings", message.settings)?;
        let integration = self
            .integrations
            .update(&caller.user_id, provider, settings)
            .await
            .map_err(integration_status)?;
        Ok(Response::new(UpdateIntegrationResponse {
            integration: Some(integration_to_proto(&integration)),
        }))
    }

    async fn list_sync_jobs(
        &self,
        request: Request<ListSyncJobsRequest>,
    ) -> Result<Response<ListSyncJobsResponse>, Status> {
        let caller = caller(&request)?;
        let message = request.into_inner();
        let provider = provider_from_proto(message.provider)?;
        let page_size = match message.page_size {
            0 => DEFAULT_JOB_PAGE,
            n if (1..=crate::integrations::jobs::MAX_JOB_PAGE as i32).contains(&n) => n as u32,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "page_size: must be from 1 to {}",
                    crate::integrations::jobs::MAX_JOB_PAGE
                )));
            }
        };
        let cursor = match message.page_token.as_str() {
            "" => None,
            token => Some(decode_job_cursor(token).ok_or_else(|| {
                Status::invalid_argument("page_token: not a token this service issued")
            })?),
        };
        let jobs = self
            .integrations
            .jobs(&caller.user_id, provider, cursor.as_ref(), page_size)
            .await
            .map_err(integration_status)?;
        let next_page_token = match jobs.last() {
            Some(last) if jobs.len() == page_size as usize => encode_job_cursor(&JobCursor {
                created_at: last.created_at,
                id: last.id.clone(),
            }),
            _ => String::new(),
        };
        Ok(Response::new(ListSyncJobsResponse {
            jobs: jobs.iter().map(sync_job_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn notify_contacts_changed(
        &self,
        request: Request<NotifyContactsChangedRequest>,
    ) -> Result<Response<NotifyContactsChangedResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let user = caller.acting_on(&request.user_id)?;
        let jobs = self
            .integrations
            .notify_contacts_changed(&user, &request.contact_ids)
            .await
            .map_err(integration_status)?;
        Ok(Response::new(NotifyContactsChangedResponse {
            jobs: jobs.iter().map(sync_job_to_proto).collect(),
        }))
    }

    async fn cancel_sync_job(
        &self,
        request: Request<CancelSyncJobRequest>,
    ) -> Result<Response<CancelSyncJobResponse>, Status> {
        let caller = caller(&request)?;
        let job = self
            .integrations
            .cancel(&caller.user_id, &request.get_ref().id)
            .await
            .map_err(integration_status)?;
        Ok(Response::new(CancelSyncJobResponse {
            job: Some(sync_job_to_proto(&job)),
        }))
    }
}

/// An opaque page token: the last job's creation time (microseconds) and id.
fn encode_job_cursor(cursor: &JobCursor) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
        "{}|{}",
        cursor.created_at.timestamp_micros(),
        cursor.id
    ))
}

fn decode_job_cursor(token: &str) -> Option<JobCursor> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.as_bytes())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (micros, id) = text.split_once('|')?;
    uuid::Uuid::parse_str(id).ok()?;
    Some(JobCursor {
        created_at: chrono::DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        id: id.to_string(),
    })
}

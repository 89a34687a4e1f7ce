//! `nexus.account.v1.AccountService`: proto <-> domain conversion around
//! [`crate::account::Account`].

use std::{pin::Pin, sync::Arc};

use futures_util::StreamExt;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::{
    caller,
    convert::timestamp,
    proto::account::{
        ActivityEntry, DeleteMyDataRequest, DeleteMyDataResponse, ExportMyDataRequest,
        ExportMyDataResponse, ListActivityRequest, ListActivityResponse, Revocation,
        RevocationOutcome, account_service_server::AccountService,
    },
    store_status,
};
use crate::{
    account::{Account, Erasure, ErasureError},
    auth::Caller,
    domain::{erasure, erasure::Requester},
    grpc::billing::billing_status,
};

pub struct AccountApi {
    account: Arc<Account>,
    /// Ends open exports when the service stops (they would hold the shutdown).
    shutdown: CancellationToken,
}

impl AccountApi {
    pub fn new(account: Arc<Account>, shutdown: CancellationToken) -> Self {
        Self { account, shutdown }
    }
}

type ExportStream = Pin<Box<dyn Stream<Item = Result<ExportMyDataResponse, Status>> + Send>>;

fn requester(caller: &Caller, user: &crate::domain::UserId) -> Requester {
    if caller.is_service && user != &caller.user_id {
        Requester::Service
    } else {
        Requester::User
    }
}

fn erasure_status(error: ErasureError) -> Status {
    match error {
        ErasureError::Store(e) => store_status(e),
        ErasureError::Billing(e) => billing_status(e),
        ErasureError::Wait(message) => Status::unavailable(message),
    }
}

fn revocation_outcome(outcome: erasure::Revocation) -> RevocationOutcome {
    match outcome {
        erasure::Revocation::Revoked => RevocationOutcome::Revoked,
        erasure::Revocation::Failed => RevocationOutcome::Failed,
        erasure::Revocation::NotSupported => RevocationOutcome::NotSupported,
        erasure::Revocation::Unreadable => RevocationOutcome::Unreadable,
    }
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(crate) fn erasure_to_proto(e: &Erasure) -> DeleteMyDataResponse {
    DeleteMyDataResponse {
        erasure_id: e.erasure_id.clone(),
        already_erased: e.already_erased,
        first_erased_at: e.first_erased_at.map(timestamp),
        revocations: e
            .revocations
            .iter()
            .map(|(provider, outcome)| Revocation {
                provider: provider.as_str().to_string(),
                outcome: revocation_outcome(*outcome).into(),
            })
            .collect(),
        subscription_canceled_provider: e
            .subscription_canceled
            .map(|p| p.as_str().to_string())
            .unwrap_or_default(),
        integrations_deleted: count(e.rows.integrations),
        sync_jobs_deleted: count(e.rows.sync_jobs),
        activity_entries_deleted: count(e.rows.activity_entries),
        oauth_states_deleted: count(e.rows.oauth_states),
        checkout_sessions_deleted: count(e.rows.checkout_sessions),
        subscriptions_deleted: count(e.rows.subscriptions),
        payment_customers_deleted: count(e.rows.billing_customers),
        mobile_payments_deleted: count(e.rows.mobile_payments),
        webhook_events_scrubbed: count(e.rows.webhook_events_scrubbed),
        invoices_kept: count(e.rows.invoices_kept),
        checkouts_not_expired: i64::from(e.checkouts_not_expired),
    }
}

#[tonic::async_trait]
impl AccountService for AccountApi {
    async fn list_activity(
        &self,
        request: Request<ListActivityRequest>,
    ) -> Result<Response<ListActivityResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let user = caller.acting_on(&request.user_id)?;
        let page_size = u32::try_from(request.page_size)
            .map_err(|_| Status::invalid_argument("page_size must not be negative"))?;
        let before = match request.page_token.as_str() {
            "" => None,
            token => Some(
                token
                    .parse::<i64>()
                    .ok()
                    .filter(|id| *id > 0)
                    .ok_or_else(|| Status::invalid_argument("page_token is not valid"))?,
            ),
        };
        let (entries, next) = self
            .account
            .activity(&user, before, page_size)
            .await
            .map_err(store_status)?;
        Ok(Response::new(ListActivityResponse {
            entries: entries
                .into_iter()
                .map(|e| ActivityEntry {
                    kind: e.kind,
                    message: e.message,
                    details_json: e.details.to_string(),
                    created_at: Some(timestamp(e.created_at)),
                })
                .collect(),
            next_page_token: next.map(|id| id.to_string()).unwrap_or_default(),
        }))
    }

    async fn export_my_data(
        &self,
        request: Request<ExportMyDataRequest>,
    ) -> Result<Response<ExportStream>, Status> {
        let caller = caller(&request)?;
        let user = caller.acting_on(&request.into_inner().user_id)?;
        tracing::info!(requested_by = %requester(&caller, &user), "data export started");
        let lines = ReceiverStream::new(self.account.export(user)).map(|line| match line {
            Ok(json_line) => Ok(ExportMyDataResponse { json_line }),
            Err(e) => Err(store_status(e)),
        });
        let shutdown = self.shutdown.clone();
        let stream = lines.take_until(async move { shutdown.cancelled_owned().await });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn delete_my_data(
        &self,
        request: Request<DeleteMyDataRequest>,
    ) -> Result<Response<DeleteMyDataResponse>, Status> {
        let caller = caller(&request)?;
        let user = caller.acting_on(&request.into_inner().user_id)?;
        let erasure = self
            .account
            .erase(&user, requester(&caller, &user))
            .await
            .map_err(erasure_status)?;
        Ok(Response::new(erasure_to_proto(&erasure)))
    }
}

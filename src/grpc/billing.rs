//! `nexus.billing.v1.BillingService`: proto <-> domain conversion around [`crate::billing::Billing`].

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    caller,
    convert::{
        cursor_from_token, interval_from_proto, invoice_to_proto, limit_check_to_proto,
        offer_to_proto, overage_to_proto, page_token, payment_provider_from_proto,
        payment_provider_value, priced_plan_to_proto, resource_from_proto, subscription_to_proto,
        tier_from_proto, tier_to_proto, usage_to_proto,
    },
    proto::billing::{
        CancelSubscriptionRequest, CancelSubscriptionResponse, ChangePlanRequest,
        ChangePlanResponse, CheckLimitRequest, CheckLimitResponse, CreateCheckoutSessionRequest,
        CreateCheckoutSessionResponse, CreatePortalSessionRequest, CreatePortalSessionResponse,
        GetCheckoutStatusRequest, GetCheckoutStatusResponse, GetSubscriptionRequest,
        GetSubscriptionResponse, GetUsageRequest, GetUsageResponse, ListInvoicesRequest,
        ListInvoicesResponse, ListPlansRequest, ListPlansResponse, ResumeSubscriptionRequest,
        ResumeSubscriptionResponse, SetOverageRequest, SetOverageResponse,
        billing_service_server::BillingService,
    },
    store_status,
};
use crate::{
    billing::{Billing, BillingError, CheckoutState, NewCheckout},
    domain::{plans::PLANS, pricing::BillingInterval, subscription::PaymentProvider},
    payments::PaymentError,
    telemetry::error_chain,
};

/// Maps a billing failure to a status the client can act on; internal causes are logged here.
pub(crate) fn billing_status(error: BillingError) -> Status {
    match error {
        BillingError::Store(e) => store_status(e),
        BillingError::Invalid(message) => Status::invalid_argument(message),
        BillingError::Precondition(message) => Status::failed_precondition(message),
        BillingError::NotFound(message) => Status::not_found(message),
        BillingError::Busy(message) => Status::aborted(message),
        BillingError::Unconfirmed(message) => Status::unavailable(message),
        BillingError::Payment(PaymentError::NotAvailable(message)) => {
            Status::failed_precondition(message)
        }
        BillingError::Payment(e @ (PaymentError::Rejected(_) | PaymentError::NotFound(_))) => {
            tracing::warn!(error = %e, "payment provider refused a request");
            Status::failed_precondition(e.to_string())
        }
        BillingError::Payment(e @ PaymentError::Unavailable(_)) => {
            tracing::warn!(error = %error_chain(&e), "payment provider unavailable");
            Status::unavailable("the payment provider is unavailable, try again later")
        }
        BillingError::Payment(e @ PaymentError::Malformed(_)) => {
            tracing::error!(error = %error_chain(&e), "unexpected answer from the payment provider");
            Status::internal("internal error")
        }
    }
}

/// Largest URL accepted in a request.
const MAX_URL_LEN: usize = 2048;

fn url_field<'a>(name: &str, value: &'a str) -> Result<&'a str, Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{name} is required")));
    }
    if value.len() > MAX_URL_LEN {
        return Err(Status::invalid_argument(format!(
            "{name} is longer than {MAX_URL_LEN} characters"
        )));
    }
    Ok(value)
}

/// Largest `quantity` a single CheckLimit may ask about.
const MAX_QUANTITY: i64 = 1_000_000;

pub struct BillingApi {
    billing: Arc<Billing>,
}

impl BillingApi {
    pub fn new(billing: Arc<Billing>) -> Self {
        Self { billing }
    }
}

#[tonic::async_trait]
impl BillingService for BillingApi {
    async fn list_plans(
        &self,
        request: Request<ListPlansRequest>,
    ) -> Result<Response<ListPlansResponse>, Status> {
        let asked = Some(request.get_ref().currency.as_str()).filter(|c| !c.is_empty());
        let priced = self
            .billing
            .plan_prices(asked)
            .await
            .map_err(billing_status)?;
        let plans = PLANS
            .iter()
            .map(|plan| {
                let mut wire = priced_plan_to_proto(
                    plan,
                    priced.plans.iter().find(|p| p.tier == plan.tier),
                    &priced.currency,
                );
                wire.offers = self
                    .billing
                    .offers(plan.tier)
                    .into_iter()
                    .map(offer_to_proto)
                    .collect();
                wire
            })
            .collect();
        Ok(Response::new(ListPlansResponse {
            plans,
            currency: priced.currency,
            currencies: priced.currencies,
        }))
    }

    async fn get_subscription(
        &self,
        request: Request<GetSubscriptionRequest>,
    ) -> Result<Response<GetSubscriptionResponse>, Status> {
        let caller = caller(&request)?;
        let entitlement = self
            .billing
            .entitlement(&caller.user_id)
            .await
            .map_err(store_status)?;
        Ok(Response::new(GetSubscriptionResponse {
            subscription: Some(subscription_to_proto(&entitlement)),
        }))
    }

    async fn get_usage(
        &self,
        request: Request<GetUsageRequest>,
    ) -> Result<Response<GetUsageResponse>, Status> {
        let caller = caller(&request)?;
        let (tier, usage, overage) = self
            .billing
            .usage_with_overage(&caller.user_id)
            .await
            .map_err(billing_status)?;
        Ok(Response::new(GetUsageResponse {
            effective_tier: tier_to_proto(tier).into(),
            usage: Some(usage_to_proto(tier, &usage)),
            overage: Some(overage_to_proto(&overage)),
        }))
    }

    async fn check_limit(
        &self,
        request: Request<CheckLimitRequest>,
    ) -> Result<Response<CheckLimitResponse>, Status> {
        let caller = caller(&request)?;
        let body = request.get_ref();
        let user = caller.acting_on(&body.user_id)?;
        let resource = resource_from_proto(body.resource)?;
        let quantity = match body.quantity {
            0 => 1,
            q @ 1..=MAX_QUANTITY => q.cast_unsigned(),
            _ => {
                return Err(Status::invalid_argument(format!(
                    "quantity must be between 0 and {MAX_QUANTITY}"
                )));
            }
        };
        let check = self
            .billing
            .check_limit(&user, resource, quantity)
            .await
            .map_err(store_status)?;
        Ok(Response::new(limit_check_to_proto(check)))
    }

    async fn create_checkout_session(
        &self,
        request: Request<CreateCheckoutSessionRequest>,
    ) -> Result<Response<CreateCheckoutSessionResponse>, Status> {
        let caller = caller(&request)?;
        let body = request.get_ref();
        let provider = payment_provider_from_proto(body.provider)?;
        let tier = tier_from_proto(body.tier)?;
        let session = self
            .billing
            .create_checkout(NewCheckout {
                user: &caller.user_id,
                email: caller.email.as_deref(),
                provider,
                tier,
                // M-Pesa pays on the phone: no page to return to.
                success_url: match provider {
                    PaymentProvider::Mpesa => &body.success_url,
                    _ => url_field("success_url", &body.success_url)?,
                },
                cancel_url: match provider {
                    PaymentProvider::Mpesa => &body.cancel_url,
                    _ => url_field("cancel_url", &body.cancel_url)?,
                },
                phone_number: Some(body.phone_number.as_str()).filter(|p| !p.is_empty()),
                interval: interval_from_proto(body.interval)?.unwrap_or(BillingInterval::Month),
                currency: Some(body.currency.as_str()).filter(|c| !c.is_empty()),
            })
            .await
            .map_err(billing_status)?;
        Ok(Response::new(CreateCheckoutSessionResponse {
            session_id: session.id,
            url: session.url,
            provider: payment_provider_value(provider),
            message: session.message.unwrap_or_default(),
        }))
    }

    async fn change_plan(
        &self,
        request: Request<ChangePlanRequest>,
    ) -> Result<Response<ChangePlanResponse>, Status> {
        let caller = caller(&request)?;
        let tier = tier_from_proto(request.get_ref().tier)?;
        let interval = interval_from_proto(request.get_ref().interval)?;
        let change = self
            .billing
            .change_plan(&caller.user_id, tier, interval)
            .await
            .map_err(billing_status)?;
        Ok(Response::new(ChangePlanResponse {
            subscription: Some(subscription_to_proto(&change.entitlement)),
            approval_url: change.approval_url.unwrap_or_default(),
        }))
    }

    async fn cancel_subscription(
        &self,
        request: Request<CancelSubscriptionRequest>,
    ) -> Result<Response<CancelSubscriptionResponse>, Status> {
        let caller = caller(&request)?;
        let entitlement = self
            .billing
            .set_cancel(&caller.user_id, true)
            .await
            .map_err(billing_status)?;
        Ok(Response::new(CancelSubscriptionResponse {
            subscription: Some(subscription_to_proto(&entitlement)),
        }))
    }

    async fn resume_subscription(
        &self,
        request: Request<ResumeSubscriptionRequest>,
    ) -> Result<Response<ResumeSubscriptionResponse>, Status> {
        let caller = caller(&request)?;
        let entitlement = self
            .billing
            .set_cancel(&caller.user_id, false)
            .await
            .map_err(billing_status)?;
        Ok(Response::new(ResumeSubscriptionResponse {
            subscription: Some(subscription_to_proto(&entitlement)),
        }))
    }

    async fn create_portal_session(
        &self,
        request: Request<CreatePortalSessionRequest>,
    ) -> Result<Response<CreatePortalSessionResponse>, Status> {
        let caller = caller(&request)?;
        let return_url = url_field("return_url", &request.get_ref().return_url)?;
        let url = self
            .billing
            .portal(&caller.user_id, return_url)
            .await
            .map_err(billing_status)?;
        Ok(Response::new(CreatePortalSessionResponse { url }))
    }

    async fn list_invoices(
        &self,
        request: Request<ListInvoicesRequest>,
    ) -> Result<Response<ListInvoicesResponse>, Status> {
        let caller = caller(&request)?;
        let body = request.get_ref();
        let page_size = u32::try_from(body.page_size)
            .map_err(|_| Status::invalid_argument("page_size must not be negative"))?;
        let cursor = cursor_from_token(&body.page_token)?;
        let (invoices, next) = self
            .billing
            .invoices(&caller.user_id, cursor.as_ref(), page_size)
            .await
            .map_err(store_status)?;
        Ok(Response::new(ListInvoicesResponse {
            invoices: invoices.iter().map(invoice_to_proto).collect(),
            next_page_token: next.as_ref().map(page_token).unwrap_or_default(),
        }))
    }

    async fn set_overage(
        &self,
        request: Request<SetOverageRequest>,
    ) -> Result<Response<SetOverageResponse>, Status> {
        let caller = caller(&request)?;
        let overage = self
            .billing
            .set_overage(&caller.user_id, request.get_ref().enabled)
            .await
            .map_err(billing_status)?;
        Ok(Response::new(SetOverageResponse {
            overage: Some(overage_to_proto(&overage)),
        }))
    }

    async fn get_checkout_status(
        &self,
        request: Request<GetCheckoutStatusRequest>,
    ) -> Result<Response<GetCheckoutStatusResponse>, Status> {
        let caller = caller(&request)?;
        let session_id = request.get_ref().session_id.as_str();
        if session_id.is_empty() || session_id.len() > 255 {
            return Err(Status::invalid_argument(
                "session_id must be the one CreateCheckoutSession answered",
            ));
        }
        let status = self
            .billing
            .checkout_status(&caller.user_id, session_id)
            .await
            .map_err(billing_status)?;
        use crate::grpc::proto::billing::CheckoutState as Wire;
        let state = match status.state {
            CheckoutState::Pending => Wire::Pending,
            CheckoutState::Paid => Wire::Paid,
            CheckoutState::Cancelled => Wire::Cancelled,
            CheckoutState::TimedOut => Wire::TimedOut,
            CheckoutState::Failed => Wire::Failed,
        };
        Ok(Response::new(GetCheckoutStatusResponse {
            state: state.into(),
            reason: status.reason.unwrap_or_default(),
            tier: tier_to_proto(status.tier).into(),
            provider: payment_provider_value(status.provider),
        }))
    }
}

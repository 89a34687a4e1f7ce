//! `nexus.billing.v1.BillingService`: proto <-> domain conversion around [`crate::billing::Billing`].
//! RPCs not listed here answer UNIMPLEMENTED (generated default stubs) until their issue lands.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    caller,
    convert::{
        limit_check_to_proto, plan_to_proto, resource_from_proto, subscription_to_proto,
        tier_to_proto, usage_to_proto,
    },
    proto::billing::{
        CheckLimitRequest, CheckLimitResponse, GetSubscriptionRequest, GetSubscriptionResponse,
        GetUsageRequest, GetUsageResponse, ListPlansRequest, ListPlansResponse,
        billing_service_server::BillingService,
    },
    store_status,
};
use crate::{billing::Billing, domain::plans::PLANS};

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
        _request: Request<ListPlansRequest>,
    ) -> Result<Response<ListPlansResponse>, Status> {
        Ok(Response::new(ListPlansResponse {
            plans: PLANS.iter().map(plan_to_proto).collect(),
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
        let (tier, usage) = self
            .billing
            .usage(&caller.user_id)
            .await
            .map_err(store_status)?;
        Ok(Response::new(GetUsageResponse {
            effective_tier: tier_to_proto(tier).into(),
            usage: Some(usage_to_proto(tier, &usage)),
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
}

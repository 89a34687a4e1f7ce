//! Billing use cases: subscription state, usage and limit checks. Plain async functions over the
//! store and the pure rules in `domain`; the gRPC layer only converts to and from the wire.

use std::sync::Arc;

use chrono::{Duration, Utc};

use crate::{
    domain::{
        LimitCheck, Resource, Subscription, Tier, Usage, UserId,
        subscription::DEFAULT_PAST_DUE_GRACE, usage::check_limit,
    },
    store::{Store, StoreError},
};

pub struct Billing {
    store: Arc<dyn Store>,
    past_due_grace: Duration,
}

/// A subscription with the tier it entitles to now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entitlement {
    pub subscription: Subscription,
    pub effective_tier: Tier,
}

impl Billing {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            past_due_grace: DEFAULT_PAST_DUE_GRACE,
        }
    }

    /// The user's subscription; a user with no row is on FREE and ACTIVE.
    pub async fn entitlement(&self, user: &UserId) -> Result<Entitlement, StoreError> {
        let subscription = self
            .store
            .subscription(user)
            .await?
            .unwrap_or_else(|| Subscription::free(user.clone()));
        let effective_tier = subscription.effective_tier(Utc::now(), self.past_due_grace);
        Ok(Entitlement {
            subscription,
            effective_tier,
        })
    }

    /// The user's counts and the tier whose limits apply.
    pub async fn usage(&self, user: &UserId) -> Result<(Tier, Usage), StoreError> {
        let (entitlement, usage) =
            tokio::try_join!(self.entitlement(user), self.store.usage(user))?;
        Ok((entitlement.effective_tier, usage))
    }

    /// May the user create `quantity` more of `resource`?
    pub async fn check_limit(
        &self,
        user: &UserId,
        resource: Resource,
        quantity: u64,
    ) -> Result<LimitCheck, StoreError> {
        let (tier, usage) = self.usage(user).await?;
        Ok(check_limit(tier, &usage, resource, quantity))
    }
}

//! Billing use cases: subscription state, usage and limit checks, the billing portal and
//! invoices here; checkout, plan changes, webhook intake, the event processor, the
//! reconciler and M-Pesa's prepaid periods (`mpesa`, `mpesa_poller`) in their own files. Plain async code over the store, the payment gateways and the
//! pure rules in `domain`; the gRPC layer only converts to and from the wire.
//!
//! No payment provider is ever called inside a database transaction: the provider's answer is
//! applied afterwards in a short transaction that holds the user's subscription row and refuses
//! to overwrite state known to be newer than the answer (`domain::freshness`).

mod account_closure;
mod checkout;
pub mod dunning_email;
pub mod dunning_mailer;
mod dunning_plan;
mod event_apply;
mod event_owner;
pub mod event_processor;
mod lease;
mod mpesa;
pub mod mpesa_poller;
pub mod overage;
mod plan_changes;
pub mod price_list;
pub mod reconciler;
pub mod webhook_intake;

pub use checkout::NewCheckout;
pub use event_processor::EventProcessor;
pub use mpesa::{CallbackOutcome, CheckoutState, CheckoutStatus};
pub use plan_changes::PlanChange;
pub use webhook_intake::{WebhookError, WebhookOutcome};

use std::sync::Arc;

use chrono::{Duration, Utc};

use crate::{
    config::SellingConfig,
    domain::{
        LimitCheck, Resource, Subscription, Tier, Usage, UserId,
        erasure::SubjectKeys,
        freshness::{Evidence, Freshness, freshness},
        invoice::StoredInvoice,
        reconcile::{Reconciled, RemoteSubscription, is_live_at, reconcile},
        subscription::{DuplicatePolicy, PaymentProvider},
        usage::check_limit_with_extras,
    },
    payments::{Gateways, PaymentError},
    store::{BillingTx, InvoiceCursor, Store, StoreError},
};

/// A failed billing request, sorted by what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Payment(#[from] PaymentError),
    /// The request itself is wrong.
    #[error("{0}")]
    Invalid(String),
    /// The request is fine but the user's state does not allow it.
    #[error("{0}")]
    Precondition(String),
    /// What the request names does not exist (or is not the caller's).
    #[error("{0}")]
    NotFound(String),
    /// Another change of the same subscription is running: try again.
    #[error("{0}")]
    Busy(String),
    /// The provider may have acted on the request but its answer was lost: the message says
    /// what the user should do (answered UNAVAILABLE).
    #[error("{0}")]
    Unconfirmed(String),
}

/// Checks redirect URLs against the allowed origins (the open-redirect guard).
pub type RedirectGuard = Box<dyn Fn(&str) -> bool + Send + Sync>;

pub struct Billing {
    store: Arc<dyn Store>,
    gateways: Gateways,
    past_due_grace: Duration,
    redirect_allowed: RedirectGuard,
    duplicate_policy: DuplicatePolicy,
    /// The keys of erased users' anonymous entries.
    subjects: SubjectKeys,
    /// Wakes the event processor when the intake stored an event.
    stored_events: tokio::sync::Notify,
    /// What the plans cost, from the provider.
    price_list: price_list::PriceList,
    /// Trials and promotion codes.
    selling: SellingConfig,
    /// Days after a failed renewal on which reminders go out.
    dunning_schedule: Vec<u32>,
    /// Extra cards beyond the PRO limit are sold (`STRIPE_PRICE_ID_EXTRA_CARD`).
    extra_cards_sold: bool,
}

/// A subscription with the tier it entitles to now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entitlement {
    pub subscription: Subscription,
    pub effective_tier: Tier,
    /// For PAST_DUE: when the paid tier ends unless the failed invoice is paid.
    pub grace_ends_at: Option<chrono::DateTime<Utc>>,
}

/// A configured payment provider selling a tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub provider: PaymentProvider,
    /// Minor units and currency, when this service sets the price (M-Pesa).
    pub local_price: Option<(i64, String)>,
    /// One payment buys one period that does not renew.
    pub prepaid: bool,
}

/// Largest invoice page.
pub const MAX_PAGE_SIZE: u32 = 100;
/// Invoice page size when the caller does not say.
pub const DEFAULT_PAGE_SIZE: u32 = 20;

impl Billing {
    pub fn new(
        store: Arc<dyn Store>,
        gateways: Gateways,
        past_due_grace: Duration,
        redirect_allowed: RedirectGuard,
        duplicate_policy: DuplicatePolicy,
        subjects: SubjectKeys,
        selling: SellingConfig,
    ) -> Self {
        let price_list = price_list::PriceList::new(
            gateways.get(PaymentProvider::Stripe).ok().cloned(),
            selling.price_refresh_interval,
        );
        Self {
            price_list,
            selling,
            dunning_schedule: Vec::new(),
            extra_cards_sold: false,
            store,
            gateways,
            past_due_grace,
            redirect_allowed,
            duplicate_policy,
            subjects,
            stored_events: tokio::sync::Notify::new(),
        }
    }

    /// The keys of erased users' anonymous entries.
    pub fn subjects(&self) -> &SubjectKeys {
        &self.subjects
    }

    /// Whether `user` was erased (an entry under any of the subject keys).
    pub(crate) async fn was_erased(&self, user: &UserId) -> Result<bool, StoreError> {
        for subject in self.subjects.candidates(user) {
            if self.store.was_erased(&subject).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn entitle(&self, subscription: Subscription) -> Entitlement {
        let effective_tier = subscription.effective_tier(Utc::now(), self.past_due_grace);
        Entitlement {
            grace_ends_at: subscription.grace_ends_at(self.past_due_grace),
            subscription,
            effective_tier,
        }
    }

    /// The configured providers that sell `tier` (none sell FREE).
    pub fn offers(&self, tier: Tier) -> Vec<Offer> {
        if !tier.is_paid() {
            return Vec::new();
        }
        self.gateways
            .configured()
            .into_iter()
            .filter_map(|provider| {
                let gateway = self.gateways.get(provider).ok()?;
                Some(Offer {
                    provider,
                    local_price: gateway.local_price(tier),
                    prepaid: provider == PaymentProvider::Mpesa,
                })
            })
            .collect()
    }

    /// The user's subscription; a user with no row is on FREE and ACTIVE.
    pub async fn entitlement(&self, user: &UserId) -> Result<Entitlement, StoreError> {
        let subscription = self
            .store
            .subscription(user)
            .await?
            .unwrap_or_else(|| Subscription::free(user.clone()));
        Ok(self.entitle(subscription))
    }

    /// The user's counts and the tier whose limits apply.
    pub async fn usage(&self, user: &UserId) -> Result<(Tier, Usage), StoreError> {
        let (subscription, usage) = self.store.standing(user).await?;
        let subscription = subscription.unwrap_or_else(|| Subscription::free(user.clone()));
        Ok((self.entitle(subscription).effective_tier, usage))
    }

    /// May the user create `quantity` more of `resource`?
    pub async fn check_limit(
        &self,
        user: &UserId,
        resource: Resource,
        quantity: u64,
    ) -> Result<LimitCheck, StoreError> {
        let (subscription, usage) = self.store.standing(user).await?;
        let subscription = subscription.unwrap_or_else(|| Subscription::free(user.clone()));
        let extras = self.extras_on(&subscription);
        let tier = self.entitle(subscription).effective_tier;
        Ok(check_limit_with_extras(
            tier, &usage, resource, quantity, extras,
        ))
    }

    /// A billing-portal URL for the user's customer.
    #[tracing::instrument(skip_all, fields(user_id = %user))]
    pub async fn portal(&self, user: &UserId, return_url: &str) -> Result<String, BillingError> {
        let gateway = self.gateways.get(PaymentProvider::Stripe)?;
        self.check_redirect("return_url", return_url)?;
        let provider = self
            .store
            .subscription(user)
            .await?
            .and_then(|s| s.provider)
            .filter(|p| *p != PaymentProvider::Stripe);
        if let Some(provider) = provider {
            return Err(BillingError::Precondition(format!(
                "the billing portal is Stripe's; your subscription is with {}",
                provider.display_name()
            )));
        }
        let customer = self
            .store
            .billing_customer(user, gateway.provider())
            .await?
            .ok_or_else(|| {
                BillingError::Precondition(
                    "you have no billing account yet; start a subscription with CreateCheckoutSession".into(),
                )
            })?;
        Ok(gateway.create_portal(&customer, return_url).await?)
    }

    /// One page of the user's invoices, newest first, and the cursor of the next page.
    pub async fn invoices(
        &self,
        user: &UserId,
        after: Option<&InvoiceCursor>,
        page_size: u32,
    ) -> Result<(Vec<StoredInvoice>, Option<InvoiceCursor>), StoreError> {
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let mut page = self.store.invoices(user, after, size + 1).await?;
        let next = if page.len() > size as usize {
            page.truncate(size as usize);
            page.last().map(|last| InvoiceCursor {
                created_at: last.invoice.created_at,
                id: last.id.clone(),
            })
        } else {
            None
        };
        Ok((page, next))
    }
}

/// What applying a provider's view of a subscription did.
#[derive(Debug)]
pub(crate) enum Applied {
    /// Stored (possibly unchanged): the state now stored.
    Stored(Subscription),
    /// Older than what is stored: nothing changed.
    Stale,
    /// The order cannot be told: fetch the subscription and apply that instead.
    NeedsFetch,
    /// Another live subscription of the user: not applied (see [`DuplicatePolicy`]).
    Duplicate,
    /// Not the user's current subscription (an old one's late news): nothing changed.
    Ignored,
}

/// Merges the provider's view of a subscription, known current at `evidence`, into the locked
/// row `stored` and logs what changed.
pub(crate) async fn apply_remote(
    tx: &mut dyn BillingTx,
    stored: &Subscription,
    remote: &RemoteSubscription,
    evidence: Evidence,
) -> Result<Applied, StoreError> {
    let same = stored.provider_subscription_id.as_deref() == Some(remote.id.as_str());
    if same {
        match freshness(stored.state_as_of, evidence) {
            Freshness::Newer => {}
            Freshness::Stale => return Ok(Applied::Stale),
            Freshness::Unclear => return Ok(Applied::NeedsFetch),
        }
    } else if stored.provider_subscription_id.is_some() && matches!(evidence, Evidence::Snapshot(_))
    {
        // Nothing stored tells how old a snapshot of another subscription is (a late or
        // replayed event of one that ended since): only its current state may replace the
        // stored subscription or be judged a second live one.
        return Ok(Applied::NeedsFetch);
    }
    match reconcile(stored, remote, evidence.as_of()) {
        Reconciled::Apply { mut next, activity } => {
            next.state_as_of = Some(evidence.as_of());
            if &next != stored {
                tx.save_subscription(&next).await?;
            }
            for entry in &activity {
                tx.log_activity(&stored.user_id, entry).await?;
            }
            Ok(Applied::Stored(next))
        }
        // Live at the time of the evidence: a subscription whose paid month has run out is not
        // a second one to refund (its period was used).
        Reconciled::Ignore { reason } if is_live_at(remote, evidence.as_of()) => {
            tracing::warn!(user_id = %stored.user_id, subscription_id = %remote.id, %reason,
                "second live subscription for one user");
            Ok(Applied::Duplicate)
        }
        Reconciled::Ignore { reason } => {
            tracing::info!(user_id = %stored.user_id, %reason, "provider subscription not applied");
            Ok(Applied::Ignored)
        }
    }
}

//! Payment providers behind one trait: Stripe (`stripe*`), PayPal subscriptions (`paypal*`) and
//! M-Pesa STK push (`mpesa`). A provider that is not configured answers "not available".
//!
//! Everything crossing the trait is provider-neutral: the use cases in `billing` never see a
//! Stripe, PayPal or Daraja type.

mod access_token;
pub mod mpesa;
pub mod paypal;
pub(crate) mod paypal_event;
mod provider_api;
pub mod provider_clock;
pub mod sandbox;
mod sandbox_payer;
pub mod stripe;
pub mod stripe_budget;
pub(crate) mod stripe_event;
mod stripe_overage;
mod stripe_prices;
mod stripe_raw;
pub mod stripe_signature;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{
    Tier, UserId,
    invoice::{Invoice, InvoiceStatus},
    pricing::{BillingInterval, PriceTable},
    reconcile::RemoteSubscription,
    subscription::PaymentProvider,
};

/// A failed call to a payment provider. Messages are safe to show: they never carry a key.
#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    /// The provider is not configured or not built yet.
    #[error("{0}")]
    NotAvailable(String),
    /// The provider refused the request (a 4xx): retrying the same request will not help.
    #[error("the payment provider refused the request: {0}")]
    Rejected(String),
    /// The object does not exist at the provider.
    #[error("not found at the payment provider: {0}")]
    NotFound(String),
    /// The provider could not be reached, timed out or failed (a 5xx): try again later.
    #[error("the payment provider is unavailable: {0}")]
    Unavailable(String),
    /// The provider answered something this version cannot read.
    #[error("unexpected answer from the payment provider: {0}")]
    Malformed(String),
}

/// What a checkout needs.
#[derive(Debug, Clone)]
pub struct CheckoutRequest<'a> {
    pub user: &'a UserId,
    pub customer_id: &'a str,
    pub tier: Tier,
    pub success_url: &'a str,
    pub cancel_url: &'a str,
    /// For providers that charge a phone (M-Pesa).
    pub phone_number: Option<&'a str>,
    /// The user's previous (ended) subscription, if any: a checkout asked again in the same
    /// state is the same checkout.
    pub previous_subscription_id: Option<&'a str>,
    /// How many of the user's checkout sessions were expired: a session expired since is never
    /// handed out again for the same request.
    pub expired_before: usize,
    /// This service's id of the request, for providers whose answer can be lost while the
    /// request goes ahead (M-Pesa: it comes back in the callback's URL).
    pub reference: Option<&'a str>,
    /// How often the subscription renews.
    pub interval: BillingInterval,
    /// The currency to charge, when not the price's own (one of its `currency_options`).
    pub currency: Option<&'a str>,
    /// Days of free trial, for a user who never had one.
    pub trial_days: Option<u32>,
    /// Whether the payer may enter a promotion code.
    pub allow_promotion_codes: bool,
}

/// A checkout the user is sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutSession {
    pub id: String,
    /// Where to send the payer; empty when the payment happens elsewhere (M-Pesa: the phone).
    pub url: String,
    /// What to tell the payer (M-Pesa: "check your phone").
    pub message: Option<String>,
}

/// An invoice as the provider reports it right now (no user yet: the caller knows whose it is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteInvoice {
    pub provider: PaymentProvider,
    pub id: String,
    pub customer_id: Option<String>,
    pub subscription_id: Option<String>,
    pub amount_due: i64,
    pub amount_paid: i64,
    pub currency: String,
    pub status: InvoiceStatus,
    pub hosted_invoice_url: Option<String>,
    pub invoice_pdf_url: Option<String>,
    pub period_start: Option<DateTime<Utc>>,
    pub period_end: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// Where the provider sends the customer's mail about it (dunning emails go there too).
    pub customer_email: Option<String>,
}

impl RemoteInvoice {
    pub fn for_user(self, user_id: UserId) -> Invoice {
        Invoice {
            user_id,
            provider: self.provider,
            provider_invoice_id: self.id,
            provider_subscription_id: self.subscription_id,
            amount_due: self.amount_due,
            amount_paid: self.amount_paid,
            currency: self.currency,
            status: self.status,
            hosted_invoice_url: self.hosted_invoice_url,
            invoice_pdf_url: self.invoice_pdf_url,
            period_start: self.period_start,
            period_end: self.period_end,
            created_at: self.created_at,
        }
    }
}

/// A verified webhook event, reduced to what this service acts on. An event carries its object
/// as it was at `created` (a snapshot); it is applied when provably newer than what is stored,
/// and the object is fetched only when that cannot be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEvent {
    pub id: String,
    pub event_type: String,
    pub created: DateTime<Utc>,
    /// The provider's customer the event is about, when it names one.
    pub customer_id: Option<String>,
    /// The id of the event's object.
    pub object_id: Option<String>,
    pub action: EventAction,
}

impl WebhookEvent {
    /// Events with one order key are applied one at a time, oldest first: the customer's.
    pub fn order_key(&self) -> &str {
        self.customer_id
            .as_deref()
            .or(self.object_id.as_deref())
            .unwrap_or(&self.id)
    }
}

/// What an event asks this service to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventAction {
    /// A checkout finished: link the customer and subscription to the user it was made for.
    CheckoutCompleted {
        user_ref: Option<String>,
        subscription_id: Option<String>,
    },
    /// A subscription changed; `snapshot` is its state at the event's creation, when readable.
    SubscriptionChanged {
        subscription_id: String,
        snapshot: Option<Box<RemoteSubscription>>,
    },
    /// An invoice changed; `snapshot` is its state at the event's creation, when readable.
    InvoiceChanged {
        invoice_id: String,
        outcome: InvoiceOutcome,
        snapshot: Option<Box<RemoteInvoice>>,
    },
    /// The provider deleted the customer.
    CustomerDeleted,
    /// A trial ends soon: worth an activity entry.
    TrialWillEnd {
        subscription_id: String,
        trial_end: Option<DateTime<Utc>>,
    },
    /// A one-off payment may have finished (an M-Pesa callback or the poller): ask the provider
    /// and settle it. `receipt` is what the hint named, kept only if the payment is confirmed.
    ConfirmPayment {
        request_id: String,
        receipt: Option<String>,
    },
    /// Verified and recorded, nothing else to do.
    Ignore,
}

/// Which invoice event it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvoiceOutcome {
    /// Created, finalized or updated: stored, nothing to tell the user.
    Updated,
    Paid,
    PaymentFailed,
    ActionRequired,
    Voided,
    MarkedUncollectible,
}

/// Why a webhook delivery was refused before any processing (answered with 400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookRejection {
    #[error("missing signature header")]
    MissingSignature,
    #[error("malformed signature header")]
    MalformedSignature,
    #[error("signature timestamp outside the tolerance")]
    StaleTimestamp,
    #[error("no signature matches")]
    BadSignature,
    #[error("malformed event: {0}")]
    BadPayload(String),
    /// The signature could not be checked now (the provider's verification call failed):
    /// answered 503 so the provider delivers again; nothing stored.
    #[error("the signature cannot be verified now: {0}")]
    Unverifiable(String),
}

/// A tier change asked of the provider: its answer, and where the payer must approve the change
/// when the provider needs that (PayPal's revise); the tier changes once it is approved.
#[derive(Debug, Clone)]
pub struct TierChange {
    pub subscription: RemoteSubscription,
    pub approval_url: Option<String>,
}

/// A one-off payment's state at the provider (M-Pesa STK push).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentStatus {
    /// The payer has not answered yet, or the provider is still processing.
    Pending,
    Paid,
    /// Cancelled, timed out, refused: `code` is the provider's result code.
    Failed {
        code: String,
        reason: String,
    },
}

/// One payment provider. Every method is required: a provider that cannot do something says so
/// with [`PaymentError::NotAvailable`].
#[async_trait]
pub trait PaymentGateway: Send + Sync + 'static {
    /// Which provider this is.
    fn provider(&self) -> PaymentProvider;

    /// Creates the provider's customer for `user` (idempotently) and returns its id.
    async fn create_customer(
        &self,
        user: &UserId,
        email: Option<&str>,
    ) -> Result<String, PaymentError>;

    /// Starts a checkout for a new subscription.
    async fn create_checkout(
        &self,
        request: &CheckoutRequest<'_>,
    ) -> Result<CheckoutSession, PaymentError>;

    /// Switches a subscription to `tier`'s price, prorating the difference (or asks the payer
    /// to approve the switch, see [`TierChange`]).
    async fn change_tier(
        &self,
        subscription_id: &str,
        tier: Tier,
        interval: BillingInterval,
    ) -> Result<TierChange, PaymentError>;

    /// Adds the metered extra-card item to a subscription (overage), once: asked again, the
    /// same item is answered. The subscription as it is then.
    async fn add_extra_item(
        &self,
        subscription_id: &str,
    ) -> Result<RemoteSubscription, PaymentError> {
        let _ = subscription_id;
        Err(PaymentError::NotAvailable(
            "extra cards are sold through Stripe only".into(),
        ))
    }

    /// Reports one extra card-month of `customer_id` to the provider's meter; `identifier` makes
    /// a resend of the same report harmless.
    async fn report_extra_card(
        &self,
        customer_id: &str,
        identifier: &str,
        at: DateTime<Utc>,
    ) -> Result<(), PaymentError> {
        let _ = (customer_id, identifier, at);
        Err(PaymentError::NotAvailable(
            "extra cards are sold through Stripe only".into(),
        ))
    }

    /// What the provider charges for each tier and interval it sells, in every currency; an
    /// empty table when this service sets the price itself (see [`Self::local_price`]).
    async fn prices(&self) -> Result<PriceTable, PaymentError> {
        Ok(PriceTable::default())
    }

    /// Sets or clears cancellation at the end of the current period.
    async fn set_cancel_at_period_end(
        &self,
        subscription_id: &str,
        cancel: bool,
    ) -> Result<RemoteSubscription, PaymentError>;

    /// A self-service page for cards and invoices.
    async fn create_portal(
        &self,
        customer_id: &str,
        return_url: &str,
    ) -> Result<String, PaymentError>;

    /// The subscription's current state at the provider.
    async fn fetch_subscription(
        &self,
        subscription_id: &str,
    ) -> Result<RemoteSubscription, PaymentError>;

    /// The invoice's current state at the provider.
    async fn fetch_invoice(&self, invoice_id: &str) -> Result<RemoteInvoice, PaymentError>;

    /// Verifies a webhook delivery (its headers and raw bytes) and reads what it asks for.
    async fn verify_webhook(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<WebhookEvent, WebhookRejection>;

    /// Reads an event already verified (a stored one, or one listed from the provider's API).
    fn read_event(&self, body: &[u8]) -> Result<WebhookEvent, WebhookRejection>;

    /// One page of the provider's events created after `created_after`, newest first, each as
    /// its raw JSON; `starting_after` continues a listing. `has_more` says whether more follow.
    async fn list_events(
        &self,
        created_after: DateTime<Utc>,
        starting_after: Option<&str>,
    ) -> Result<EventPage, PaymentError>;

    /// Every subscription of the customer (any status), as the provider reports them now.
    async fn customer_subscriptions(
        &self,
        customer_id: &str,
    ) -> Result<Vec<RemoteSubscription>, PaymentError>;

    /// Expires an open checkout session, so it can no longer be paid. A session the payer
    /// already paid cannot be expired: its subscription is answered instead, to be applied.
    async fn expire_checkout(&self, session_id: &str) -> Result<Expiry, PaymentError>;

    /// Cancels a subscription now (not at the period end), without a refund: the account is
    /// being deleted. Cancelling one already cancelled succeeds.
    async fn cancel_now(&self, subscription_id: &str) -> Result<(), PaymentError>;

    /// Cancels a subscription now (not at the period end) and refunds its latest payment;
    /// returns the refunded amount in minor units, if a payment was refunded.
    async fn cancel_and_refund(&self, subscription_id: &str) -> Result<Option<i64>, PaymentError>;

    /// A lower bound of this provider's time now (from its answers' `Date` headers), to
    /// compare with the times of its events; this host's time when it cannot tell.
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    /// The price of one period of `tier` when this service sets it (M-Pesa: KES from the
    /// settings), in minor units and the currency; `None` when the provider holds the price.
    fn local_price(&self, tier: Tier) -> Option<(i64, String)> {
        let _ = tier;
        None
    }

    /// The state of a one-off payment request (providers without subscriptions: M-Pesa).
    async fn payment_status(&self, request_id: &str) -> Result<PaymentStatus, PaymentError> {
        let _ = request_id;
        Err(PaymentError::NotAvailable(
            "this payment provider has no one-off payments".into(),
        ))
    }
}

/// What expiring a checkout session found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expiry {
    /// It can no longer be paid (expired now or before, or unknown to the provider).
    Expired,
    /// The payer finished it first: the subscription it started (its webhook may be on its way).
    AlreadyPaid { subscription_id: Option<String> },
}

/// One page of listed events.
#[derive(Debug, Clone, Default)]
pub struct EventPage {
    /// Each event's id and raw JSON, newest first.
    pub events: Vec<(String, String)>,
    pub has_more: bool,
}

impl PaymentError {
    /// Whether trying again later can succeed (the provider was down, slow or rate limited).
    pub fn is_temporary(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// The configured gateways, by provider.
pub struct Gateways {
    stripe: Option<Arc<dyn PaymentGateway>>,
    paypal: Option<Arc<dyn PaymentGateway>>,
    mpesa: Option<Arc<dyn PaymentGateway>>,
}

/// The message every payment RPC answers when no payment provider is configured.
pub const NOT_CONFIGURED: &str = "payments are not configured: set STRIPE_SECRET_KEY, PAYPAL_CLIENT_ID or MPESA_CONSUMER_KEY (in APP_ENV=development with none of them set, the payments sandbox is used)";

impl Gateways {
    pub fn new(
        stripe: Option<Arc<dyn PaymentGateway>>,
        paypal: Option<Arc<dyn PaymentGateway>>,
        mpesa: Option<Arc<dyn PaymentGateway>>,
    ) -> Self {
        Self {
            stripe,
            paypal,
            mpesa,
        }
    }

    /// The gateway of `provider`, or why there is none.
    pub fn get(&self, provider: PaymentProvider) -> Result<&Arc<dyn PaymentGateway>, PaymentError> {
        let (gateway, settings) = match provider {
            PaymentProvider::Stripe => (&self.stripe, "STRIPE_SECRET_KEY"),
            PaymentProvider::Paypal => (&self.paypal, "PAYPAL_CLIENT_ID"),
            PaymentProvider::Mpesa => (&self.mpesa, "MPESA_CONSUMER_KEY"),
        };
        gateway.as_ref().ok_or_else(|| {
            if self.configured().is_empty() {
                PaymentError::NotAvailable(NOT_CONFIGURED.into())
            } else {
                PaymentError::NotAvailable(format!(
                    "{} payments are not available here ({settings} is not set); use {}",
                    provider.display_name(),
                    self.configured()
                        .iter()
                        .map(|p| p.as_str().to_uppercase())
                        .collect::<Vec<_>>()
                        .join(" or ")
                ))
            }
        })
    }

    /// The configured providers.
    pub fn configured(&self) -> Vec<PaymentProvider> {
        PaymentProvider::ALL
            .into_iter()
            .filter(|p| match p {
                PaymentProvider::Stripe => self.stripe.is_some(),
                PaymentProvider::Paypal => self.paypal.is_some(),
                PaymentProvider::Mpesa => self.mpesa.is_some(),
            })
            .collect()
    }

    /// The configured gateways that take webhooks and hold subscriptions (not M-Pesa).
    pub fn with_events(&self) -> impl Iterator<Item = &Arc<dyn PaymentGateway>> {
        [&self.stripe, &self.paypal].into_iter().flatten()
    }

    pub fn stripe_configured(&self) -> bool {
        self.stripe.is_some()
    }
}

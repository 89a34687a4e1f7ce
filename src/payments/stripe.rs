//! Stripe, through async-stripe. Requests go to `STRIPE_API_BASE` (tests use a local fake).
//!
//! Every POST carries an `Idempotency-Key`. Creations use a key derived from what they create:
//! the customer from the user (two concurrent first checkouts get one customer), the checkout
//! from the user, tier, URLs and the subscription it would replace (a double click or a retried
//! RPC gets the same open session, not a second one). Updates use a fresh key per call: Stripe
//! replays the first answer for a reused key without applying the update again, so a
//! cancel -> resume -> cancel within 24 hours must not share keys. Requests are sent once and
//! fail fast; callers retry (the webhook caller by answering 5xx so Stripe redelivers).

use std::{collections::HashMap, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use stripe::{Client, ClientBuilder, IdempotencyKey, RequestStrategy, StripeError, StripeRequest};
use stripe_billing::{
    billing_portal_session::CreateBillingPortalSession,
    invoice::RetrieveInvoice,
    subscription::{
        RetrieveSubscription, UpdateSubscription, UpdateSubscriptionItems,
        UpdateSubscriptionProrationBehavior,
    },
};
use stripe_checkout::checkout_session::{
    CreateCheckoutSession, CreateCheckoutSessionLineItems, CreateCheckoutSessionSubscriptionData,
};
use stripe_core::customer::CreateCustomer;
use stripe_shared::{CheckoutSessionMode, InvoiceStatus as StripeInvoiceStatus};
use url::Url;

use super::{
    CheckoutRequest, CheckoutSession, EventPage, PaymentError, PaymentGateway, RemoteInvoice,
    TierChange, WebhookEvent, WebhookRejection,
    stripe_budget::StripeBudget,
    stripe_event::{self, PriceMap},
    stripe_signature::SignatureVerifier,
};
use crate::{
    config::StripeConfig,
    domain::{
        Tier, UserId,
        invoice::InvoiceStatus,
        pricing::{BillingInterval, PriceTable, Terms},
        reconcile::RemoteSubscription,
        subscription::{PaymentProvider, SubscriptionStatus},
    },
};

/// Per-attempt timeout of a Stripe request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub struct StripeGateway {
    client: Client,
    /// For the few calls async-stripe's typed requests do not cover in a version-tolerant way
    /// (event listings kept as raw JSON, refunds).
    pub(super) http: reqwest::Client,
    pub(super) api_base: Url,
    pub(super) secret_key: secrecy::SecretString,
    pub(super) prices: PriceMap,
    verifier: SignatureVerifier,
    pub(super) budget: StripeBudget,
    /// Stripe's clock, from the `Date` of its answers to raw calls.
    pub(super) clock: super::provider_clock::ProviderClock,
    /// The event name of the extra-card meter.
    pub(super) meter_event: String,
}

/// How a failed Stripe call is counted in `stripe_requests_total{status}`.
fn outcome_of(error: &StripeError) -> &'static str {
    match error {
        StripeError::Stripe(_, 429) => "429",
        StripeError::Stripe(_, s) if *s >= 500 => "5xx",
        StripeError::Stripe(..) => "4xx",
        StripeError::Timeout => "timeout",
        _ => "error",
    }
}

impl StripeGateway {
    pub fn new(
        config: &StripeConfig,
        api_base: &Url,
        tolerance: Duration,
    ) -> Result<Self, PaymentError> {
        let client = ClientBuilder::new(config.secret_key.expose_secret())
            .url(api_base.as_str())
            .timeout(REQUEST_TIMEOUT)
            .request_strategy(RequestStrategy::Once)
            .build()
            .map_err(|e| {
                PaymentError::NotAvailable(format!("cannot build the Stripe client: {e}"))
            })?;
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| {
                PaymentError::NotAvailable(format!("cannot build the HTTP client: {e}"))
            })?;
        Ok(Self {
            client,
            http,
            api_base: api_base.clone(),
            secret_key: config.secret_key.clone(),
            prices: PriceMap {
                pro: config.prices_pro.clone(),
                premium: config.prices_premium.clone(),
                pro_yearly: config.price_pro_yearly.clone(),
                premium_yearly: config.price_premium_yearly.clone(),
                extra_card: config.price_extra_card.clone(),
            },
            verifier: SignatureVerifier::new(config.webhook_secrets.clone(), tolerance),
            budget: StripeBudget::new(config.max_requests_per_second),
            clock: Default::default(),
            meter_event: config.meter_event_extra_card.clone(),
        })
    }

    fn price_of(&self, tier: Tier, interval: BillingInterval) -> Result<&str, PaymentError> {
        match tier {
            Tier::Free => Err(PaymentError::Rejected("FREE has no price".into())),
            _ => self.prices.price_of(tier, interval).ok_or_else(|| {
                PaymentError::NotAvailable(format!(
                    "{tier} is not sold {interval} (STRIPE_PRICE_ID_{}_YEARLY is not set)",
                    tier.as_str().to_uppercase()
                ))
            }),
        }
    }

    /// Sends a typed request within the budget.
    async fn send<T: Send>(
        &self,
        endpoint: &'static str,
        request: impl std::future::Future<Output = Result<T, StripeError>>,
    ) -> Result<T, PaymentError> {
        self.budget
            .call(endpoint, request, outcome_of)
            .await
            .map_err(classify)
    }

    async fn retrieve(
        &self,
        subscription_id: &str,
    ) -> Result<stripe_shared::Subscription, PaymentError> {
        self.send(
            "GET /v1/subscriptions/{id}",
            RetrieveSubscription::new(subscription_id).send(&self.client),
        )
        .await
    }

    /// Sends a subscription update with a fresh idempotency key and reads Stripe's answer.
    async fn update(
        &self,
        request: UpdateSubscription,
    ) -> Result<RemoteSubscription, PaymentError> {
        let updated = self
            .send(
                "POST /v1/subscriptions/{id}",
                request
                    .customize()
                    .request_strategy(fresh_key()?)
                    .send(&self.client),
            )
            .await?;
        self.remote_subscription(&updated)
    }

    fn remote_subscription(
        &self,
        sub: &stripe_shared::Subscription,
    ) -> Result<RemoteSubscription, PaymentError> {
        // One item is the plan's, and with overage a metered extra-card item is beside it;
        // the plan item's period is the subscription's (API versions since 2025-03-31 keep
        // periods on items only).
        let item = self.plan_item(sub);
        let extra_item = sub
            .items
            .data
            .iter()
            .find(|i| self.prices.is_extra_card(i.price.id.as_str()))
            .map(|i| i.id.as_str().to_string());
        let price_id = item.map(|i| i.price.id.as_str().to_string());
        let tier = price_id.as_deref().and_then(|p| self.prices.tier_of(p));
        Ok(RemoteSubscription {
            provider: PaymentProvider::Stripe,
            id: sub.id.as_str().to_string(),
            customer_id: sub.customer.id().as_str().to_string(),
            status: status_of(&sub.status)?,
            tier,
            price_id,
            current_period_start: item.and_then(|i| time(i.current_period_start)),
            current_period_end: item.and_then(|i| time(i.current_period_end)),
            cancel_at_period_end: sub.cancel_at_period_end,
            cancel_at: sub.cancel_at.and_then(time),
            terms: Terms {
                interval: item
                    .and_then(|i| i.price.recurring.as_ref())
                    .and_then(|r| r.interval.as_str().parse().ok()),
                currency: Some(sub.currency.to_string().to_ascii_lowercase()),
                trial_end: sub.trial_end.and_then(time),
                extra_item,
            },
        })
    }

    /// The subscription's item of its plan (not the metered extra-card item).
    fn plan_item<'a>(
        &self,
        sub: &'a stripe_shared::Subscription,
    ) -> Option<&'a stripe_shared::SubscriptionItem> {
        sub.items
            .data
            .iter()
            .find(|i| !self.prices.is_extra_card(i.price.id.as_str()))
    }
}

fn time(t: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t, 0)
}

fn status_of(
    status: &stripe_shared::SubscriptionStatus,
) -> Result<SubscriptionStatus, PaymentError> {
    use stripe_shared::SubscriptionStatus as S;
    Ok(match status {
        S::Active => SubscriptionStatus::Active,
        S::Canceled => SubscriptionStatus::Canceled,
        S::Incomplete => SubscriptionStatus::Incomplete,
        S::IncompleteExpired => SubscriptionStatus::IncompleteExpired,
        S::PastDue => SubscriptionStatus::PastDue,
        S::Paused => SubscriptionStatus::Paused,
        S::Trialing => SubscriptionStatus::Trialing,
        S::Unpaid => SubscriptionStatus::Unpaid,
        other => {
            return Err(PaymentError::Malformed(format!(
                "unknown subscription status {:?}",
                other.as_str()
            )));
        }
    })
}

fn invoice_status_of(status: Option<&StripeInvoiceStatus>) -> Result<InvoiceStatus, PaymentError> {
    Ok(match status {
        Some(StripeInvoiceStatus::Draft) | None => InvoiceStatus::Draft,
        Some(StripeInvoiceStatus::Open) => InvoiceStatus::Open,
        Some(StripeInvoiceStatus::Paid) => InvoiceStatus::Paid,
        Some(StripeInvoiceStatus::Uncollectible) => InvoiceStatus::Uncollectible,
        Some(StripeInvoiceStatus::Void) => InvoiceStatus::Void,
        Some(other) => {
            return Err(PaymentError::Malformed(format!(
                "unknown invoice status {:?}",
                other.as_str()
            )));
        }
    })
}

/// Sorts a Stripe failure into what the caller can do about it. Stripe's message is kept (it
/// names the parameter, never a key); the key itself is never part of an error.
fn classify(error: StripeError) -> PaymentError {
    match error {
        StripeError::Stripe(api, status) => {
            let message = api.message.clone().unwrap_or_else(|| "no message".into());
            match status {
                404 => PaymentError::NotFound(message),
                400..=499 if status != 409 && status != 429 => PaymentError::Rejected(message),
                _ => PaymentError::Unavailable(format!("status {status}: {message}")),
            }
        }
        StripeError::JSONDeserialize(e) => PaymentError::Malformed(e),
        StripeError::ClientError(e) => PaymentError::Unavailable(e),
        StripeError::Timeout => PaymentError::Unavailable("timed out".into()),
        StripeError::ConfigError(e) => PaymentError::NotAvailable(e),
    }
}

fn key(value: String) -> Result<RequestStrategy, PaymentError> {
    IdempotencyKey::new(value)
        .map(RequestStrategy::Idempotent)
        .map_err(|e| PaymentError::Malformed(e.to_string()))
}

/// A fresh idempotency key, for updates.
fn fresh_key() -> Result<RequestStrategy, PaymentError> {
    key(uuid::Uuid::new_v4().to_string())
}

/// A key derived from `parts`: the same creation asked twice carries the same key.
fn derived_key(kind: &str, parts: &[&str]) -> Result<RequestStrategy, PaymentError> {
    let digest = Sha256::digest(parts.join("\0"));
    key(format!("nexus-{kind}-{}", hex::encode(digest)))
}

fn metadata(user: &UserId) -> HashMap<String, String> {
    HashMap::from([("user_id".to_string(), user.to_string())])
}

#[async_trait]
impl PaymentGateway for StripeGateway {
    fn provider(&self) -> PaymentProvider {
        PaymentProvider::Stripe
    }

    #[tracing::instrument(skip_all, fields(user_id = %user))]
    async fn create_customer(
        &self,
        user: &UserId,
        email: Option<&str>,
    ) -> Result<String, PaymentError> {
        // The same user (and email) always sends the same key, so two concurrent first
        // checkouts, or a retry after a lost answer, get one customer.
        let strategy = derived_key("customer", &[user.as_str(), email.unwrap_or_default()])?;
        let mut request = CreateCustomer::new().metadata(metadata(user));
        if let Some(email) = email {
            request = request.email(email);
        }
        let customer = self
            .send(
                "POST /v1/customers",
                request
                    .customize()
                    .request_strategy(strategy)
                    .send(&self.client),
            )
            .await?;
        Ok(customer.id.as_str().to_string())
    }

    #[tracing::instrument(skip_all, fields(user_id = %request.user, tier = %request.tier))]
    async fn create_checkout(
        &self,
        request: &CheckoutRequest<'_>,
    ) -> Result<CheckoutSession, PaymentError> {
        let price = self.price_of(request.tier, request.interval)?;
        let trial = request.trial_days.map(|d| d.to_string());
        let strategy = derived_key(
            "checkout",
            &[
                request.user.as_str(),
                price,
                request.customer_id,
                request.success_url,
                request.cancel_url,
                request.previous_subscription_id.unwrap_or("none"),
                &request.expired_before.to_string(),
                request.currency.unwrap_or("default"),
                trial.as_deref().unwrap_or("no-trial"),
                if request.allow_promotion_codes {
                    "codes"
                } else {
                    "no-codes"
                },
            ],
        )?;
        let mut line = CreateCheckoutSessionLineItems::new();
        line.price = Some(price.to_string());
        line.quantity = Some(1);
        let mut subscription_data = CreateCheckoutSessionSubscriptionData::new();
        subscription_data.metadata = Some(metadata(request.user));
        subscription_data.trial_period_days = request.trial_days;
        let mut create = CreateCheckoutSession::new();
        if let Some(currency) = request.currency {
            create = create.currency(
                currency
                    .parse::<stripe_types::Currency>()
                    .unwrap_or_else(|never| match never {}),
            );
        }
        if request.allow_promotion_codes {
            create = create.allow_promotion_codes(true);
        }
        let create = create
            .mode(CheckoutSessionMode::Subscription)
            .customer(request.customer_id)
            .client_reference_id(request.user.as_str())
            .metadata(metadata(request.user))
            .line_items(vec![line])
            .subscription_data(subscription_data)
            .success_url(request.success_url)
            .cancel_url(request.cancel_url);
        let session = self
            .send(
                "POST /v1/checkout/sessions",
                create
                    .customize()
                    .request_strategy(strategy)
                    .send(&self.client),
            )
            .await?;
        let url = session
            .url
            .ok_or_else(|| PaymentError::Malformed("checkout session without a URL".into()))?;
        Ok(CheckoutSession {
            id: session.id.as_str().to_string(),
            url,
            message: None,
        })
    }

    #[tracing::instrument(skip_all, fields(subscription_id = %subscription_id, tier = %tier))]
    async fn change_tier(
        &self,
        subscription_id: &str,
        tier: Tier,
        interval: BillingInterval,
    ) -> Result<TierChange, PaymentError> {
        let price = self.price_of(tier, interval)?;
        let current = self.retrieve(subscription_id).await?;
        let item = self
            .plan_item(&current)
            .ok_or_else(|| PaymentError::Malformed("subscription without a plan item".into()))?;
        let mut change = UpdateSubscriptionItems::new();
        change.id = Some(item.id.as_str().to_string());
        change.price = Some(price.to_string());
        let subscription = self
            .update(
                UpdateSubscription::new(subscription_id)
                    .items(vec![change])
                    .proration_behavior(UpdateSubscriptionProrationBehavior::CreateProrations)
                    .cancel_at_period_end(false),
            )
            .await?;
        Ok(TierChange {
            subscription,
            approval_url: None,
        })
    }

    async fn prices(&self) -> Result<PriceTable, PaymentError> {
        self.prices_raw().await
    }

    #[tracing::instrument(skip_all, fields(subscription_id = %subscription_id))]
    async fn add_extra_item(
        &self,
        subscription_id: &str,
    ) -> Result<RemoteSubscription, PaymentError> {
        self.add_extra_item_raw(subscription_id).await
    }

    async fn report_extra_card(
        &self,
        customer_id: &str,
        identifier: &str,
        at: DateTime<Utc>,
    ) -> Result<(), PaymentError> {
        self.report_extra_card_raw(customer_id, identifier, at)
            .await
    }

    #[tracing::instrument(skip_all, fields(subscription_id = %subscription_id, cancel = cancel))]
    async fn set_cancel_at_period_end(
        &self,
        subscription_id: &str,
        cancel: bool,
    ) -> Result<RemoteSubscription, PaymentError> {
        self.update(UpdateSubscription::new(subscription_id).cancel_at_period_end(cancel))
            .await
    }

    #[tracing::instrument(skip_all)]
    async fn create_portal(
        &self,
        customer_id: &str,
        return_url: &str,
    ) -> Result<String, PaymentError> {
        let create = CreateBillingPortalSession::new()
            .customer(customer_id)
            .return_url(return_url);
        let session = self
            .send(
                "POST /v1/billing_portal/sessions",
                create
                    .customize()
                    .request_strategy(fresh_key()?)
                    .send(&self.client),
            )
            .await?;
        Ok(session.url)
    }

    /// Read raw (the answer's `Date` tells Stripe's clock), with the reader of event snapshots.
    #[tracing::instrument(skip_all, fields(subscription_id = %subscription_id))]
    async fn fetch_subscription(
        &self,
        subscription_id: &str,
    ) -> Result<RemoteSubscription, PaymentError> {
        self.fetch_subscription_raw(subscription_id).await
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    #[tracing::instrument(skip_all, fields(invoice_id = %invoice_id))]
    async fn fetch_invoice(&self, invoice_id: &str) -> Result<RemoteInvoice, PaymentError> {
        let invoice = self
            .send(
                "GET /v1/invoices/{id}",
                RetrieveInvoice::new(invoice_id).send(&self.client),
            )
            .await?;
        let subscription_id = invoice
            .parent
            .as_ref()
            .and_then(|p| p.subscription_details.as_ref())
            .map(|d| d.subscription.id().as_str().to_string())
            .or_else(|| {
                invoice
                    .subscription
                    .as_ref()
                    .map(|s| s.id().as_str().to_string())
            });
        Ok(RemoteInvoice {
            provider: PaymentProvider::Stripe,
            id: invoice
                .id
                .as_ref()
                .map(|id| id.as_str().to_string())
                .unwrap_or_else(|| invoice_id.to_string()),
            customer_id: invoice
                .customer
                .as_ref()
                .map(|c| c.id().as_str().to_string()),
            subscription_id,
            amount_due: invoice.amount_due,
            amount_paid: invoice.amount_paid,
            currency: invoice.currency.to_string(),
            status: invoice_status_of(invoice.status.as_ref())?,
            hosted_invoice_url: invoice.hosted_invoice_url.clone(),
            invoice_pdf_url: invoice.invoice_pdf.clone(),
            period_start: time(invoice.period_start),
            period_end: time(invoice.period_end),
            created_at: time(invoice.created).unwrap_or_else(Utc::now),
            customer_email: invoice.customer_email.clone(),
        })
    }

    async fn verify_webhook(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<WebhookEvent, WebhookRejection> {
        let signature = headers
            .get("stripe-signature")
            .and_then(|v| v.to_str().ok());
        self.verifier.verify(signature, body, now.timestamp())?;
        stripe_event::parse(body, &self.prices)
    }

    fn read_event(&self, body: &[u8]) -> Result<WebhookEvent, WebhookRejection> {
        stripe_event::parse(body, &self.prices)
    }

    async fn list_events(
        &self,
        created_after: DateTime<Utc>,
        starting_after: Option<&str>,
    ) -> Result<EventPage, PaymentError> {
        self.list_events_raw(created_after, starting_after).await
    }

    async fn customer_subscriptions(
        &self,
        customer_id: &str,
    ) -> Result<Vec<RemoteSubscription>, PaymentError> {
        self.customer_subscriptions_raw(customer_id).await
    }

    #[tracing::instrument(skip_all, fields(session_id = %session_id))]
    async fn expire_checkout(&self, session_id: &str) -> Result<super::Expiry, PaymentError> {
        self.expire_checkout_raw(session_id).await
    }

    #[tracing::instrument(skip_all, fields(subscription_id = %subscription_id))]
    async fn cancel_and_refund(&self, subscription_id: &str) -> Result<Option<i64>, PaymentError> {
        self.cancel_and_refund_raw(subscription_id).await
    }

    async fn cancel_now(&self, subscription_id: &str) -> Result<(), PaymentError> {
        let cancelled = self.cancel_now_raw(subscription_id).await?;
        match cancelled.get("status").and_then(serde_json::Value::as_str) {
            Some("canceled" | "incomplete_expired") => Ok(()),
            other => Err(PaymentError::Malformed(format!(
                "the subscription is still {} after it was cancelled",
                other.unwrap_or("without a status")
            ))),
        }
    }
}

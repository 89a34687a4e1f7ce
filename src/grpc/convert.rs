//! Conversions between domain types and generated proto types.

use chrono::{DateTime, Utc};
use tonic::Status;

use super::proto::{billing as pb, integrations as ipb};
use crate::{
    billing::Entitlement,
    domain::{
        Limit, LimitCheck, Plan, Resource, SubscriptionStatus, Tier, Usage,
        catalogue::{AuthKind, InputType, ProviderId, SyncDirection},
        integration::{Integration, IntegrationStatus},
        invoice::{InvoiceStatus, StoredInvoice},
        pricing::BillingInterval,
        subscription::PaymentProvider,
        sync_job::{Direction, JobState, SyncJob},
    },
    integrations::CatalogueEntry,
    store::InvoiceCursor,
};

pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

fn wire_count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub fn tier_to_proto(tier: Tier) -> pb::Tier {
    match tier {
        Tier::Free => pb::Tier::Free,
        Tier::Pro => pb::Tier::Pro,
        Tier::Premium => pb::Tier::Premium,
    }
}

fn status_to_proto(status: SubscriptionStatus) -> pb::SubscriptionStatus {
    match status {
        SubscriptionStatus::Active => pb::SubscriptionStatus::Active,
        SubscriptionStatus::Trialing => pb::SubscriptionStatus::Trialing,
        SubscriptionStatus::PastDue => pb::SubscriptionStatus::PastDue,
        SubscriptionStatus::Canceled => pb::SubscriptionStatus::Canceled,
        SubscriptionStatus::Incomplete => pb::SubscriptionStatus::Incomplete,
        SubscriptionStatus::IncompleteExpired => pb::SubscriptionStatus::IncompleteExpired,
        SubscriptionStatus::Unpaid => pb::SubscriptionStatus::Unpaid,
        SubscriptionStatus::Paused => pb::SubscriptionStatus::Paused,
    }
}

fn payment_provider_to_proto(provider: Option<PaymentProvider>) -> pb::PaymentProvider {
    match provider {
        None => pb::PaymentProvider::Unspecified,
        Some(PaymentProvider::Stripe) => pb::PaymentProvider::Stripe,
        Some(PaymentProvider::Paypal) => pb::PaymentProvider::Paypal,
        Some(PaymentProvider::Mpesa) => pb::PaymentProvider::Mpesa,
    }
}

/// Reads the `tier` of a checkout or plan change; UNSPECIFIED or unknown is INVALID_ARGUMENT.
pub fn tier_from_proto(value: i32) -> Result<Tier, Status> {
    match pb::Tier::try_from(value) {
        Ok(pb::Tier::Free) => Ok(Tier::Free),
        Ok(pb::Tier::Pro) => Ok(Tier::Pro),
        Ok(pb::Tier::Premium) => Ok(Tier::Premium),
        Ok(pb::Tier::Unspecified) | Err(_) => Err(Status::invalid_argument(
            "tier must be TIER_FREE, TIER_PRO or TIER_PREMIUM",
        )),
    }
}

/// Reads the `provider` of a checkout; UNSPECIFIED means Stripe.
pub fn payment_provider_from_proto(value: i32) -> Result<PaymentProvider, Status> {
    match pb::PaymentProvider::try_from(value) {
        Ok(pb::PaymentProvider::Unspecified | pb::PaymentProvider::Stripe) => {
            Ok(PaymentProvider::Stripe)
        }
        Ok(pb::PaymentProvider::Paypal) => Ok(PaymentProvider::Paypal),
        Ok(pb::PaymentProvider::Mpesa) => Ok(PaymentProvider::Mpesa),
        Err(_) => Err(Status::invalid_argument("unknown payment provider")),
    }
}

pub fn payment_provider_value(provider: PaymentProvider) -> i32 {
    payment_provider_to_proto(Some(provider)).into()
}

fn invoice_status_to_proto(status: InvoiceStatus) -> pb::InvoiceStatus {
    match status {
        InvoiceStatus::Draft => pb::InvoiceStatus::Draft,
        InvoiceStatus::Open => pb::InvoiceStatus::Open,
        InvoiceStatus::Paid => pb::InvoiceStatus::Paid,
        InvoiceStatus::Uncollectible => pb::InvoiceStatus::Uncollectible,
        InvoiceStatus::Void => pb::InvoiceStatus::Void,
    }
}

pub fn invoice_to_proto(stored: &StoredInvoice) -> pb::Invoice {
    let i = &stored.invoice;
    let money = |amount_minor: i64| pb::Money {
        amount_minor,
        currency: i.currency.to_uppercase(),
    };
    pb::Invoice {
        id: stored.id.clone(),
        provider_invoice_id: i.provider_invoice_id.clone(),
        provider: payment_provider_to_proto(Some(i.provider)).into(),
        amount_due: Some(money(i.amount_due)),
        amount_paid: Some(money(i.amount_paid)),
        status: invoice_status_to_proto(i.status).into(),
        hosted_invoice_url: i.hosted_invoice_url.clone().unwrap_or_default(),
        invoice_pdf_url: i.invoice_pdf_url.clone().unwrap_or_default(),
        period_start: i.period_start.map(timestamp),
        period_end: i.period_end.map(timestamp),
        create_time: Some(timestamp(i.created_at)),
    }
}

/// An opaque page token: hex of `<created_at micros>:<id>`.
pub fn page_token(cursor: &InvoiceCursor) -> String {
    hex::encode(format!(
        "{}:{}",
        cursor.created_at.timestamp_micros(),
        cursor.id
    ))
}

/// Reads a page token from [`page_token`]; anything else is INVALID_ARGUMENT.
pub fn cursor_from_token(token: &str) -> Result<Option<InvoiceCursor>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || Status::invalid_argument("page_token is not one this service issued");
    let text = hex::decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(invalid)?;
    let (micros, id) = text.split_once(':').ok_or_else(invalid)?;
    let created_at = micros
        .parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(invalid)?;
    // Invoice ids are UUIDs on both backends; anything else was not issued here.
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(invalid());
    }
    Ok(Some(InvoiceCursor {
        created_at,
        id: id.to_string(),
    }))
}

/// Reads the `resource` field of a request; UNSPECIFIED or unknown values are INVALID_ARGUMENT.
pub fn resource_from_proto(value: i32) -> Result<Resource, Status> {
    match pb::Resource::try_from(value) {
        Ok(pb::Resource::Cards) => Ok(Resource::Cards),
        Ok(pb::Resource::Contacts) => Ok(Resource::Contacts),
        Ok(pb::Resource::Unspecified) | Err(_) => Err(Status::invalid_argument(
            "resource must be RESOURCE_CARDS or RESOURCE_CONTACTS",
        )),
    }
}

pub fn plan_to_proto(plan: &Plan) -> pb::Plan {
    pb::Plan {
        tier: tier_to_proto(plan.tier).into(),
        name: plan.name.to_string(),
        price: Some(pb::Money {
            amount_minor: plan.price_minor,
            currency: plan.currency.to_string(),
        }),
        interval: plan.interval.to_string(),
        limits: Some(pb::PlanLimits {
            cards: plan.limits.cards.as_wire(),
            contacts: plan.limits.contacts.as_wire(),
            analytics_retention_days: plan.limits.analytics_retention_days.as_wire(),
        }),
        offers: Vec::new(),
        prices: Vec::new(),
    }
}

pub fn offer_to_proto(offer: crate::billing::Offer) -> pb::Offer {
    pb::Offer {
        provider: payment_provider_to_proto(Some(offer.provider)).into(),
        local_price: offer.local_price.map(|(amount_minor, currency)| pb::Money {
            amount_minor,
            currency,
        }),
        prepaid: offer.prepaid,
    }
}

pub fn subscription_to_proto(entitlement: &Entitlement) -> pb::Subscription {
    let sub = &entitlement.subscription;
    pb::Subscription {
        user_id: sub.user_id.to_string(),
        tier: tier_to_proto(sub.tier).into(),
        effective_tier: tier_to_proto(entitlement.effective_tier).into(),
        status: status_to_proto(sub.status).into(),
        provider: payment_provider_to_proto(sub.provider).into(),
        current_period_start: sub.current_period_start.map(timestamp),
        current_period_end: sub.current_period_end.map(timestamp),
        cancel_at_period_end: sub.cancel_at_period_end,
        access_ends_at: sub.access_ends_at().map(timestamp),
        interval: interval_value(sub.terms.interval),
        currency: sub.terms.currency.clone().unwrap_or_default(),
        trial_end: sub
            .terms
            .trial_end
            .filter(|_| sub.status == SubscriptionStatus::Trialing)
            .map(timestamp),
        grace_ends_at: entitlement.grace_ends_at.map(timestamp),
    }
}

pub fn overage_to_proto(view: &crate::billing::overage::OverageView) -> pb::Overage {
    let money = |(amount_minor, currency): (i64, String)| pb::Money {
        amount_minor,
        currency,
    };
    pb::Overage {
        available: view.available,
        enabled: view.enabled,
        extra_cards: wire_count(view.extra_cards),
        unit_price: view.unit_price.clone().map(money),
        monthly_cost: view.monthly_cost().map(money),
    }
}

pub fn interval_value(interval: Option<BillingInterval>) -> i32 {
    match interval {
        None => pb::BillingInterval::Unspecified,
        Some(BillingInterval::Month) => pb::BillingInterval::Month,
        Some(BillingInterval::Year) => pb::BillingInterval::Year,
    }
    .into()
}

/// A request's interval; `None` for unspecified (each RPC says what that means).
pub fn interval_from_proto(value: i32) -> Result<Option<BillingInterval>, Status> {
    match pb::BillingInterval::try_from(value) {
        Ok(pb::BillingInterval::Unspecified) => Ok(None),
        Ok(pb::BillingInterval::Month) => Ok(Some(BillingInterval::Month)),
        Ok(pb::BillingInterval::Year) => Ok(Some(BillingInterval::Year)),
        Err(_) => Err(Status::invalid_argument(
            "interval must be BILLING_INTERVAL_MONTH or BILLING_INTERVAL_YEAR",
        )),
    }
}

/// A plan with its prices in the response's currency.
pub fn priced_plan_to_proto(
    plan: &Plan,
    priced: Option<&crate::billing::price_list::PricedPlan>,
    currency: &str,
) -> pb::Plan {
    let prices: Vec<pb::PlanPrice> = priced
        .map(|p| p.prices.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|price| pb::PlanPrice {
            interval: interval_value(Some(price.interval)),
            amount: Some(pb::Money {
                amount_minor: price.amount_minor,
                currency: currency.to_string(),
            }),
            months_free: price.months_free,
            saving: price.saving.clone(),
        })
        .collect();
    let monthly = prices
        .iter()
        .find(|p| p.interval == interval_value(Some(BillingInterval::Month)))
        .and_then(|p| p.amount.clone());
    let mut wire = plan_to_proto(plan);
    wire.price = Some(monthly.unwrap_or(pb::Money {
        amount_minor: 0,
        currency: currency.to_string(),
    }));
    wire.prices = prices;
    wire
}

pub fn usage_to_proto(tier: Tier, usage: &Usage) -> pb::Usage {
    let limits = tier.plan().limits;
    pb::Usage {
        cards_used: wire_count(usage.cards),
        cards_limit: limits.cards.as_wire(),
        contacts_used: wire_count(usage.contacts),
        contacts_limit: limits.contacts.as_wire(),
        analytics_retention_days: limits.analytics_retention_days.as_wire(),
    }
}

pub fn limit_check_to_proto(check: LimitCheck) -> pb::CheckLimitResponse {
    pb::CheckLimitResponse {
        allowed: check.allowed,
        effective_tier: tier_to_proto(check.tier).into(),
        used: wire_count(check.used),
        limit: check.limit.as_wire(),
        remaining: check
            .remaining
            .map_or(Limit::Unlimited.as_wire(), wire_count),
        over_limit_by: wire_count(check.over_limit_by),
        reason: check.reason,
        extra: wire_count(check.extra),
    }
}

pub fn provider_to_proto(id: ProviderId) -> ipb::Provider {
    match id {
        ProviderId::Salesforce => ipb::Provider::Salesforce,
        ProviderId::Hubspot => ipb::Provider::Hubspot,
        ProviderId::ZohoCrm => ipb::Provider::ZohoCrm,
        ProviderId::Mailchimp => ipb::Provider::Mailchimp,
        ProviderId::Sendgrid => ipb::Provider::Sendgrid,
        ProviderId::Zapier => ipb::Provider::Zapier,
        ProviderId::GoogleDrive => ipb::Provider::GoogleDrive,
        ProviderId::Dropbox => ipb::Provider::Dropbox,
    }
}

/// The provider named in a request.
pub fn provider_from_proto(value: i32) -> Result<ProviderId, Status> {
    let provider = match ipb::Provider::try_from(value) {
        Ok(ipb::Provider::Salesforce) => ProviderId::Salesforce,
        Ok(ipb::Provider::Hubspot) => ProviderId::Hubspot,
        Ok(ipb::Provider::ZohoCrm) => ProviderId::ZohoCrm,
        Ok(ipb::Provider::Mailchimp) => ProviderId::Mailchimp,
        Ok(ipb::Provider::Sendgrid) => ProviderId::Sendgrid,
        Ok(ipb::Provider::Zapier) => ProviderId::Zapier,
        Ok(ipb::Provider::GoogleDrive) => ProviderId::GoogleDrive,
        Ok(ipb::Provider::Dropbox) => ProviderId::Dropbox,
        Ok(ipb::Provider::Unspecified) => {
            return Err(Status::invalid_argument("provider is required"));
        }
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "provider: unknown value {value}"
            )));
        }
    };
    Ok(provider)
}

/// The direction named in a request; unspecified means PUSH.
pub fn direction_from_proto(value: i32) -> Result<Direction, Status> {
    match ipb::SyncDirection::try_from(value) {
        Ok(ipb::SyncDirection::Unspecified | ipb::SyncDirection::Push) => Ok(Direction::Push),
        Ok(ipb::SyncDirection::Import) => Ok(Direction::Import),
        Ok(ipb::SyncDirection::Both) => Ok(Direction::Both),
        Err(_) => Err(Status::invalid_argument(format!(
            "direction: unknown value {value}"
        ))),
    }
}

pub fn sync_job_to_proto(job: &SyncJob) -> ipb::SyncJob {
    let p = &job.progress;
    ipb::SyncJob {
        id: job.id.clone(),
        integration_id: job.integration_id.clone(),
        provider: provider_to_proto(job.provider).into(),
        direction: match job.direction {
            Direction::Push => ipb::SyncDirection::Push,
            Direction::Import => ipb::SyncDirection::Import,
            Direction::Both => ipb::SyncDirection::Both,
        }
        .into(),
        state: match job.state {
            JobState::Queued => ipb::SyncJobState::Queued,
            JobState::Running => ipb::SyncJobState::Running,
            JobState::Succeeded => ipb::SyncJobState::Succeeded,
            JobState::Partial => ipb::SyncJobState::Partial,
            JobState::Failed => ipb::SyncJobState::Failed,
            JobState::Canceled => ipb::SyncJobState::Canceled,
        }
        .into(),
        contacts_done: wire_count(p.contacts_done),
        contacts_total: wire_count(p.contacts_total),
        failures: p
            .failures
            .iter()
            .map(|f| ipb::RecordFailure {
                email: f.email.clone(),
                message: f.message.clone(),
            })
            .collect(),
        contacts_skipped: wire_count(p.contacts_skipped),
        skipped_reason: p.skipped_reason.clone().unwrap_or_default(),
        last_error: job.last_error.clone().unwrap_or_default(),
        attempts: i32::try_from(job.attempts).unwrap_or(i32::MAX),
        next_attempt_time: (job.state == JobState::Queued).then(|| timestamp(job.next_attempt_at)),
        create_time: Some(timestamp(job.created_at)),
        start_time: job.started_at.map(timestamp),
        finish_time: job.finished_at.map(timestamp),
        contacts_failed: wire_count(p.contacts_failed),
    }
}

fn input_type_to_proto(input: InputType) -> ipb::InputType {
    match input {
        InputType::Text => ipb::InputType::Text,
        InputType::Password => ipb::InputType::Password,
        InputType::Url => ipb::InputType::Url,
        InputType::Number => ipb::InputType::Number,
    }
}

pub fn catalogue_entry_to_proto(entry: &CatalogueEntry) -> ipb::ProviderInfo {
    let spec = entry.spec;
    ipb::ProviderInfo {
        provider: provider_to_proto(spec.id).into(),
        slug: spec.slug.to_string(),
        name: spec.name.to_string(),
        description: spec.description.to_string(),
        icon_url: spec.icon_url.to_string(),
        auth_kind: match spec.auth {
            AuthKind::ApiKey => ipb::AuthKind::ApiKey,
            AuthKind::OAuth2 => ipb::AuthKind::Oauth2,
            AuthKind::WebhookUrl => ipb::AuthKind::WebhookUrl,
        }
        .into(),
        credential_fields: spec
            .credential_fields
            .iter()
            .map(|f| ipb::CredentialField {
                key: f.key.to_string(),
                label: f.label.to_string(),
                input_type: input_type_to_proto(f.input_type).into(),
                secret: f.secret,
                required: f.required,
                help: f.help.to_string(),
            })
            .collect(),
        setting_fields: spec
            .setting_fields
            .iter()
            .map(|f| ipb::SettingField {
                key: f.key.to_string(),
                label: f.label.to_string(),
                input_type: input_type_to_proto(f.input_type).into(),
                required: f.required,
                help: f.help.to_string(),
            })
            .collect(),
        batch_size: i32::try_from(spec.batch_size).unwrap_or(i32::MAX),
        rate_limit: Some(ipb::RateLimit {
            requests: i32::try_from(entry.rate_limit.requests).unwrap_or(i32::MAX),
            per_seconds: i32::try_from(entry.rate_limit.per_seconds).unwrap_or(i32::MAX),
        }),
        available: entry.unavailable_reason.is_none(),
        unavailable_reason: entry.unavailable_reason.clone().unwrap_or_default(),
        directions: spec
            .directions
            .iter()
            .map(|d| {
                match d {
                    SyncDirection::Push => ipb::SyncDirection::Push,
                    SyncDirection::Import => ipb::SyncDirection::Import,
                }
                .into()
            })
            .collect(),
    }
}

pub fn integration_to_proto(integration: &Integration) -> ipb::Integration {
    ipb::Integration {
        id: integration.id.clone(),
        provider: provider_to_proto(integration.provider).into(),
        status: match integration.status {
            IntegrationStatus::Active => ipb::IntegrationStatus::Active,
            IntegrationStatus::Error => ipb::IntegrationStatus::Error,
            IntegrationStatus::NeedsReauth => ipb::IntegrationStatus::NeedsReauth,
        }
        .into(),
        last_sync_time: integration.last_sync_at.map(timestamp),
        last_error: integration.last_error.clone().unwrap_or_default(),
        settings: integration
            .settings
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        create_time: Some(timestamp(integration.created_at)),
        update_time: Some(timestamp(integration.updated_at)),
        health: None,
    }
}

/// An integration with its health (ListIntegrations).
pub fn integration_with_health_to_proto(
    integration: &Integration,
    health: &crate::domain::health::IntegrationHealth,
) -> ipb::Integration {
    use crate::domain::health::HealthState;
    let count = |n: u64| i32::try_from(n).unwrap_or(i32::MAX);
    ipb::Integration {
        health: Some(ipb::IntegrationHealth {
            state: match health.state {
                HealthState::Healthy => ipb::HealthState::Healthy,
                HealthState::Degraded => ipb::HealthState::Degraded,
                HealthState::Failing => ipb::HealthState::Failing,
                HealthState::NeedsAttention => ipb::HealthState::NeedsAttention,
            }
            .into(),
            consecutive_failures: count(u64::from(health.facts.failures_in_a_row)),
            last_success_time: health.facts.last_success_at.map(timestamp),
            last_error: health.last_error.clone().unwrap_or_default(),
            failures_last_day: count(health.facts.failures_24h),
            rate_limit_waits_last_day: count(health.facts.rate_limit_waits_24h),
            token_expire_time: health.token_expires_at.map(timestamp),
        }),
        ..integration_to_proto(integration)
    }
}

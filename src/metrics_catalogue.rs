//! Every counter, gauge and histogram the service emits, registered at zero at start-up, so
//! `/metrics` shows each known series from the first scrape.
//!
//! Why: a series that first appears with its first event hides that event from `increase()` and
//! `rate()` (there is no earlier sample to compare it with), and an alert on
//! `increase(x[1h]) > 0` or on a ratio has nothing to evaluate until then.
//! `ops/prometheus/alerts.yml` relies on it and `tests/api/alert_rules.rs` checks that every
//! metric a rule names is exposed before any traffic.
//!
//! How, without disturbing a value already there (the recorder is process-wide, and the test
//! suite starts many servers in one process, each calling [`register_at_zero`]):
//! - counters: `increment(0)`, never `absolute(0)`;
//! - gauges: `increment(0.0)`: a new gauge is 0, one already set keeps its value; only gauges
//!   that would otherwise be missing until their first update;
//! - histograms: registered only, nothing recorded. metrics-exporter-prometheus 0.18 renders
//!   every registered histogram, recorded or not (`drain_histograms_to_distributions` walks
//!   all handles): one with buckets (`webhook_processing_seconds`) as `_bucket` lines, `_sum`
//!   and `_count` all 0; every other one as a summary, each `quantile` line, `_sum` and
//!   `_count` 0.
//!
//! Every label value comes from a closed set in the code: the catalogue, payment providers,
//! tiers, job and health states, and the outcomes each call site names. Not registered:
//! `grpc_requests_total` and `grpc_request_duration_seconds` (the status code is open-ended,
//! and method x code is most of the series) nor `http_requests_total` and
//! `http_request_duration_seconds` (route x HTTP status: the status is open-ended); they
//! appear with the first request and no alert needs them.
//!
//! A new metric or a new label value belongs here too.

use crate::domain::{
    Tier,
    catalogue::{AuthKind, CATALOGUE, ProviderId},
    erasure::{Requester, Revocation},
    health::HealthState,
    subscription::PaymentProvider,
    sync_job::JobState,
};

/// `webhook_events_applied_total{outcome}`: what applying a billing event returns
/// (src/billing/event_apply.rs, event_owner.rs, mpesa.rs).
const BILLING_EVENT_OUTCOMES: [&str; 15] = [
    "applied",
    "fetched",
    "stale",
    "ignored",
    "linked",
    "duplicate",
    "duplicate_refunded",
    "duplicate_flagged",
    "unknown_customer",
    "erased",
    "erased_refunded",
    "unknown_payment",
    "already_settled",
    "paid",
    "payment_failed",
];

/// `webhook_deliveries_total{outcome}`: `label` and `error_label` in src/sidecar/webhooks.rs
/// (M-Pesa also answers `ignored`).
const BILLING_DELIVERY_OUTCOMES: [&str; 6] = [
    "stored",
    "duplicate",
    "not_configured",
    "unverifiable",
    "rejected",
    "failed",
];

/// `IntegrationError::code` (src/integrations/mod.rs).
const INTEGRATION_ERROR_CODES: [&str; 5] = [
    "invalid_request",
    "invalid_state",
    "access_denied",
    "expired",
    "temporarily_unavailable",
];

/// `stripe_requests_total{status}` and `payment_requests_total{outcome}`: `outcome_of`
/// (payments/stripe.rs), `raw_outcome_of` (stripe_raw.rs) and `ProviderApi::finish`.
const CALL_OUTCOMES: [&str; 6] = ["ok", "4xx", "429", "5xx", "timeout", "error"];

/// Every endpoint label the Stripe budget counts (`StripeBudget::call`); a test below keeps it in
/// step with the sources.
const STRIPE_ENDPOINTS: [&str; 15] = [
    "POST /v1/billing/meter_events",
    "POST /v1/billing_portal/sessions",
    "GET /v1/checkout/sessions/{id}",
    "POST /v1/checkout/sessions",
    "POST /v1/checkout/sessions/{id}/expire",
    "POST /v1/customers",
    "GET /v1/events",
    "GET /v1/invoices/{id}",
    "GET /v1/prices/{id}",
    "POST /v1/refunds",
    "POST /v1/subscription_items",
    "GET /v1/subscriptions",
    "GET /v1/subscriptions/{id}",
    "POST /v1/subscriptions/{id}",
    "DELETE /v1/subscriptions/{id}",
];

/// `payment_requests_total{provider,endpoint}`: the endpoints PayPal's and M-Pesa's
/// `ProviderApi` calls name (payments/paypal.rs, payments/mpesa.rs).
const PAYMENT_API_ENDPOINTS: [(PaymentProvider, &[&str]); 2] = [
    (
        PaymentProvider::Paypal,
        &[
            "oauth2_token",
            "subscription_create",
            "subscription_revise",
            "subscription_cancel",
            "subscription_get",
            "subscription_transactions",
            "sale_get",
            "sale_refund",
            "verify_webhook_signature",
        ],
    ),
    (
        PaymentProvider::Mpesa,
        &["oauth_generate", "stk_push", "stk_query"],
    ),
];

/// The providers whose contact changes arrive by webhook (providers/change_feed.rs).
const CHANGE_FEED_PROVIDERS: [ProviderId; 3] = [
    ProviderId::Hubspot,
    ProviderId::Mailchimp,
    ProviderId::ZohoCrm,
];

/// Registers every known series at zero. Call once the recorder is installed
/// ([`crate::metrics::handle`]); calling it again changes nothing.
pub fn register_at_zero() {
    // Not grpc_* nor http_*: their status label is open-ended (see the module documentation).
    billing();
    payment_calls();
    product();
    integrations();
    integration_webhooks();
    account();
    upkeep();
}

fn counter(name: &'static str, labels: &[(&'static str, &'static str)]) {
    metrics::counter!(name, labels).increment(0);
}

fn gauge(name: &'static str, labels: &[(&'static str, &'static str)]) {
    metrics::gauge!(name, labels).increment(0.0);
}

fn histogram(name: &'static str, labels: &[(&'static str, &'static str)]) {
    // Registered, not recorded: see the module documentation.
    let _ = metrics::histogram!(name, labels);
}

/// Webhook intake, the event processor, dunning and overage.
fn billing() {
    for provider in PaymentProvider::ALL {
        let p = provider.as_str();
        for outcome in BILLING_DELIVERY_OUTCOMES {
            counter(
                "webhook_deliveries_total",
                &[("provider", p), ("outcome", outcome)],
            );
        }
        histogram("webhook_processing_seconds", &[("provider", p)]);
    }
    counter(
        "webhook_deliveries_total",
        &[
            ("provider", PaymentProvider::Mpesa.as_str()),
            ("outcome", "ignored"),
        ],
    );
    for outcome in BILLING_EVENT_OUTCOMES {
        counter("webhook_events_applied_total", &[("outcome", outcome)]);
    }
    counter("webhook_events_dead_total", &[]);
    histogram("webhook_processing_lag_seconds", &[]);
    // Set every 5 s by the event processor, which does not run without a payment provider.
    gauge("webhook_events_pending", &[]);
    // The event processor's heartbeat: one per worker pass that reached the database.
    counter("event_processor_ticks_total", &[]);
    for outcome in ["sent", "skipped", "retried", "failed"] {
        counter("dunning_emails_total", &[("outcome", outcome)]);
    }
    counter("overage_card_months_reported_total", &[]);
    counter("overage_card_months_refused_total", &[]);
}

/// Calls to the payment providers.
fn payment_calls() {
    for endpoint in STRIPE_ENDPOINTS {
        for status in CALL_OUTCOMES {
            counter(
                "stripe_requests_total",
                &[("endpoint", endpoint), ("status", status)],
            );
        }
        histogram("stripe_request_duration_seconds", &[("endpoint", endpoint)]);
    }
    for (provider, endpoints) in PAYMENT_API_ENDPOINTS {
        for &endpoint in endpoints {
            for outcome in CALL_OUTCOMES {
                counter(
                    "payment_requests_total",
                    &[
                        ("provider", provider.as_str()),
                        ("endpoint", endpoint),
                        ("outcome", outcome),
                    ],
                );
            }
        }
    }
}

/// The product metrics of `product_metrics::Signal::emit` (the fallback providers `none` and
/// `unknown` are left to appear when they happen).
fn product() {
    for provider in PaymentProvider::ALL {
        let p = provider.as_str();
        for from in Tier::ALL {
            for to in Tier::ALL {
                let labels = [
                    ("from", from.as_str()),
                    ("to", to.as_str()),
                    ("provider", p),
                ];
                if to > from {
                    counter("subscription_conversions_total", &labels);
                } else if to < from && to.is_paid() {
                    counter("subscription_downgrades_total", &labels);
                }
            }
            if from.is_paid() {
                counter(
                    "subscription_churn_total",
                    &[("tier", from.as_str()), ("provider", p)],
                );
            }
        }
        counter("subscription_cancellations_total", &[("provider", p)]);
        counter("payments_failed_total", &[("provider", p)]);
    }
}

/// Connections, provider calls, syncs, token refreshes and health, for every catalogue entry.
fn integrations() {
    for spec in &CATALOGUE {
        let p = spec.id.as_str();
        // Status is an HTTP code (open-ended): only a transport error and throttling.
        for status in ["error", "429"] {
            counter(
                "provider_requests_total",
                &[("provider", p), ("status", status)],
            );
        }
        counter("integration_connection_attempts_total", &[("provider", p)]);
        for outcome in std::iter::once("connected").chain(INTEGRATION_ERROR_CODES) {
            counter(
                "integration_connections_total",
                &[("provider", p), ("outcome", outcome)],
            );
        }
        // The states a finished job is counted in (a canceled job is not counted).
        for state in [JobState::Succeeded, JobState::Partial, JobState::Failed] {
            counter(
                "sync_jobs_finished_total",
                &[("provider", p), ("state", state.as_str())],
            );
        }
        if spec.auth == AuthKind::OAuth2 {
            for result in ["ok", "invalid_grant", "error"] {
                counter(
                    "oauth_refreshes_total",
                    &[("provider", p), ("result", result)],
                );
            }
        }
        for revocation in [
            Revocation::Revoked,
            Revocation::Failed,
            Revocation::NotSupported,
            Revocation::Unreadable,
        ] {
            counter(
                "erasure_revocations_total",
                &[("provider", p), ("outcome", revocation.as_str())],
            );
        }
        // A census, set by the webhook worker's housekeeping.
        for state in HealthState::ALL {
            gauge(
                "integration_health",
                &[("provider", p), ("state", state.as_str())],
            );
        }
    }
    for outcome in ["started", "foreign", "unauthenticated"]
        .into_iter()
        .chain(INTEGRATION_ERROR_CODES)
    {
        counter("oauth_starts_total", &[("outcome", outcome)]);
    }
    for outcome in ["connected", "no_cookie"]
        .into_iter()
        .chain(INTEGRATION_ERROR_CODES)
    {
        counter("oauth_callbacks_total", &[("outcome", outcome)]);
    }
}

/// Contact changes heard from providers, and the syncs they ask for.
fn integration_webhooks() {
    for provider in CHANGE_FEED_PROVIDERS {
        let p = provider.as_str();
        for outcome in ["stored", "duplicate", "dropped", "rejected", "failed"] {
            counter(
                "integration_webhook_deliveries_total",
                &[("provider", p), ("outcome", outcome)],
            );
        }
        for outcome in ["applied", "dropped", "failed"] {
            counter(
                "integration_webhook_events_applied_total",
                &[("provider", p), ("outcome", outcome)],
            );
        }
        histogram("integration_webhook_apply_seconds", &[("provider", p)]);
    }
    gauge("integration_webhook_events_pending", &[]);
    // `owed`: src/integrations/notify.rs, a change while the connection's sync runs.
    for outcome in ["queued", "coalesced", "owed", "no_connection"] {
        counter("contact_notifications_total", &[("outcome", outcome)]);
    }
}

/// Erasures (their revocations are counted per provider in [`integrations`]).
fn account() {
    for requested_by in [Requester::User, Requester::Service, Requester::Operator] {
        for outcome in ["erased", "already_erased", "failed"] {
            counter(
                "erasures_total",
                &[
                    ("requested_by", requested_by.as_str()),
                    ("outcome", outcome),
                ],
            );
        }
    }
}

/// The scheduler, retention, the sync worker and the listeners.
fn upkeep() {
    // The scheduler's heartbeat: one per tick that reached the database.
    counter("sync_scheduler_ticks_total", &[]);
    counter("sync_jobs_scheduled_total", &[]);
    counter("sync_worker_panics_total", &[]);
    counter("sync_bookkeeping_retries_total", &[]);
    for table in ["sync_jobs", "activity_logs"] {
        counter("retention_pruned_total", &[("table", table)]);
    }
    // The ports named in startup (`GuardedListener::new`).
    for port in ["grpc", "http"] {
        for reason in ["full", "evicted_silent"] {
            counter(
                "connections_refused_total",
                &[("port", port), ("reason", reason)],
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_rendered_at_zero_before_anything_is_recorded() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full("webhook_processing_seconds".into()),
                crate::product_metrics::WEBHOOK_SECONDS_BUCKETS,
            )
            .unwrap_or_else(|e| panic!("{e}"))
            .build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            register_at_zero();
            register_at_zero();
        });
        let text = handle.render();
        for line in [
            "webhook_events_dead_total 0",
            "webhook_events_pending 0",
            "event_processor_ticks_total 0",
            "sync_scheduler_ticks_total 0",
            "integration_webhook_events_pending 0",
            r#"webhook_processing_seconds_bucket{provider="stripe",le="+Inf"} 0"#,
            r#"webhook_processing_seconds_count{provider="mpesa"} 0"#,
            "webhook_processing_lag_seconds_count 0",
            r#"webhook_processing_lag_seconds{quantile="0.5"} 0"#,
            r#"integration_health{provider="dropbox",state="failing"} 0"#,
            r#"sync_jobs_finished_total{provider="hubspot",state="failed"} 0"#,
            r#"stripe_requests_total{endpoint="GET /v1/events",status="429"} 0"#,
            r#"erasure_revocations_total{provider="salesforce",outcome="failed"} 0"#,
            r#"integration_webhook_apply_seconds_count{provider="zoho_crm"} 0"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} is not in:\n{text}"
            );
        }
        let samples: Vec<&str> = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        assert!(samples.len() > 300, "{} samples", samples.len());
        for sample in samples {
            assert!(sample.ends_with(" 0"), "not zero: {sample}");
        }
    }

    #[test]
    fn the_stripe_endpoints_are_those_the_sources_name() {
        // The part of each file before its tests.
        let sources = [
            include_str!("payments/stripe.rs"),
            include_str!("payments/stripe_raw.rs"),
            include_str!("payments/stripe_overage.rs"),
            include_str!("payments/stripe_prices.rs"),
            include_str!("payments/stripe_budget.rs"),
        ]
        .map(|s| s.split("#[cfg(test)]").next().unwrap_or_default());
        let mut named = Vec::new();
        for source in sources {
            for method in ["\"GET /v1/", "\"POST /v1/", "\"DELETE /v1/"] {
                for (at, _) in source.match_indices(method) {
                    let rest = &source[at + 1..];
                    let end = rest.find('"').unwrap_or(rest.len());
                    named.push(&rest[..end]);
                }
            }
        }
        named.sort_unstable();
        named.dedup();
        let mut listed = STRIPE_ENDPOINTS.to_vec();
        listed.sort_unstable();
        assert_eq!(named, listed);
    }
}

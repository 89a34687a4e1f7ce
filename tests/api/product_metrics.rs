//! The product metrics on `/metrics` move when their events happen: conversions, a scheduled
//! cancellation, churn, a failed payment, connection attempts and outcomes, sync outcomes and
//! the webhook latency histogram. The recorder is shared by every test of this binary, so each
//! check is "moved by at least this much" between two readings.

use nexus_billing::grpc::proto::{
    billing::{CancelSubscriptionRequest, ChangePlanRequest, Tier},
    integrations::{ConnectIntegrationRequest, Provider},
};
use serde_json::json;

use crate::{
    account_world::{World, rich_user},
    helpers::{Backend, TestApp, authed, token},
    subscription_lifecycle::subscribe,
};

crate::on_both_backends!(the_numbers_the_business_watches_move_with_their_events);

/// The sum of a metric's samples whose labels include every `labels` pair.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            if !(rest.is_empty() || rest.starts_with('{')) {
                return None;
            }
            labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

async fn metrics(app: &TestApp) -> String {
    reqwest::get(app.metrics_url())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn the_numbers_the_business_watches_move_with_their_events(backend: Backend) {
    let w = World::start(backend).await;
    let app = &w.app;
    let user = "metrics-user-1";
    let before = metrics(app).await;

    // FREE -> PRO (checkout), a failed and a paid invoice, HubSpot and Google Drive connected,
    // a HubSpot sync.
    let sub_id = rich_user(&w, user).await;
    // PRO -> PREMIUM -> PRO, then a scheduled cancellation, then the end.
    let mut billing = app.billing().await;
    for tier in [Tier::Premium, Tier::Pro] {
        billing
            .change_plan(authed(
                ChangePlanRequest { tier: tier.into(), ..Default::default() },
                &token(user),
            ))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    billing
        .cancel_subscription(authed(CancelSubscriptionRequest {}, &token(user)))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ended = w.stripe.patch_subscription(
        &sub_id,
        json!({ "status": "canceled", "ended_at": chrono::Utc::now().timestamp() }),
    );
    let (_, deleted) = w.stripe.event("customer.subscription.deleted", &ended);
    app.deliver_signed(&deleted).await;
    // A connection that fails: HubSpot refuses a wrong key.
    let refused = app
        .integrations()
        .await
        .connect_integration(authed(
            ConnectIntegrationRequest {
                provider: Provider::Hubspot.into(),
                credentials: [("accessToken".to_string(), "pat-wrong".to_string())].into(),
                settings: Default::default(),
            },
            &token("metrics-user-2"),
        ))
        .await;
    assert!(refused.is_err());
    // A second subscriber (FREE -> PREMIUM directly).
    subscribe(app, &w.stripe, "metrics-user-3", Tier::Premium).await;

    let after = metrics(app).await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };
    let stripe = ("provider", "stripe");
    for (name, labels, at_least) in [
        (
            "subscription_conversions_total",
            vec![("from", "free"), ("to", "pro"), stripe],
            1.0,
        ),
        (
            "subscription_conversions_total",
            vec![("from", "pro"), ("to", "premium"), stripe],
            1.0,
        ),
        (
            "subscription_conversions_total",
            vec![("from", "free"), ("to", "premium"), stripe],
            1.0,
        ),
        ("subscription_cancellations_total", vec![stripe], 1.0),
        (
            "subscription_downgrades_total",
            vec![("from", "premium"), ("to", "pro"), stripe],
            1.0,
        ),
        (
            "subscription_churn_total",
            vec![("tier", "pro"), stripe],
            1.0,
        ),
        ("payments_failed_total", vec![stripe], 1.0),
        (
            "integration_connection_attempts_total",
            vec![("provider", "hubspot")],
            2.0,
        ),
        (
            "integration_connection_attempts_total",
            vec![("provider", "google_drive")],
            2.0,
        ),
        (
            "integration_connections_total",
            vec![("provider", "hubspot"), ("outcome", "connected")],
            1.0,
        ),
        (
            "integration_connections_total",
            vec![("provider", "google_drive"), ("outcome", "connected")],
            1.0,
        ),
        (
            "sync_jobs_finished_total",
            vec![("provider", "hubspot"), ("state", "succeeded")],
            1.0,
        ),
        ("webhook_processing_seconds_count", vec![stripe], 6.0),
    ] {
        let delta = moved(name, &labels);
        assert!(
            delta >= at_least,
            "{name}{labels:?} moved by {delta}, expected at least {at_least}"
        );
    }
    let refused_outcomes: f64 = [
        "invalid_request",
        "expired",
        "access_denied",
        "invalid_state",
        "temporarily_unavailable",
    ]
    .iter()
    .map(|o| {
        moved(
            "integration_connections_total",
            &[("provider", "hubspot"), ("outcome", o)],
        )
    })
    .sum();
    assert!(refused_outcomes >= 1.0, "the refused connection is counted");
    // A histogram with buckets, so it aggregates across replicas.
    assert!(
        after.contains("webhook_processing_seconds_bucket{"),
        "no buckets"
    );
    // Labels stay in their closed sets: no user id or event id in any series.
    for id in [user, "metrics-user-3", sub_id.as_str()] {
        assert!(!after.contains(id), "{id} in /metrics");
    }

    // An erasure (with its two revocations), then every metric the Grafana dashboard charts
    // is one the service emits (checked in this process alone: nextest runs each test apart).
    app.account()
        .await
        .delete_my_data(authed(Default::default(), &token(user)))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let exposed = metrics(app).await;
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../ops/grafana/nexus-billing-product.json"))
            .unwrap_or_else(|e| panic!("dashboard JSON: {e}"));
    let panels = dashboard["panels"].as_array().map_or(0, Vec::len);
    assert!(panels >= 8, "{panels} panels");
    let mut charted = 0;
    for target in dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
    {
        let expr = target["expr"].as_str().unwrap_or_default();
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.ends_with("_total") || word.ends_with("_bucket") {
                charted += 1;
                assert!(
                    exposed.contains(&format!("{word}{{")),
                    "the dashboard charts {word}, which /metrics does not have"
                );
            }
        }
    }
    assert!(charted >= 12, "{charted} metrics charted");
    w.app.stop().await;
}

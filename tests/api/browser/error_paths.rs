//! What a user meets when things go wrong: an expired token, a past-due subscription, the
//! service out of reach.

use nexus_billing::grpc::proto::billing::Tier;
use serde_json::json;

use super::{billing_flows::stripe_settings, browser_available, run_scenario, spawn_for_browser};
use crate::{
    exec,
    fake_stripe::{FakeStripe, InvoiceSpec},
    helpers::{JWT_SECRET, claims, seed_integration, sign, token},
    subscription_lifecycle::subscribe,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_a_past_due_subscription_and_an_unreachable_service() {
    if !browser_available() {
        return;
    }
    let stripe = FakeStripe::start().await;
    let app = spawn_for_browser(&stripe_settings(&stripe)).await;
    let user = "browser-pastdue";
    let (customer, sub_id) = subscribe(&app, &stripe, user, Tier::Pro).await;
    let open = stripe.put_invoice(&InvoiceSpec {
        id: "in_browser_open",
        customer: &customer,
        subscription: &sub_id,
        status: "open",
        amount_due: 900,
        amount_paid: 0,
        created: chrono::Utc::now().timestamp(),
    });
    let past_due = stripe.patch_subscription(&sub_id, json!({ "status": "past_due" }));
    let (_, failed) = stripe.event("invoice.payment_failed", &open);
    app.deliver_signed(&failed).await;
    let (_, updated) = stripe.event("customer.subscription.updated", &past_due);
    app.deliver_signed(&updated).await;
    // Two connections in trouble, as the sync worker leaves them.
    let broken = seed_integration(&app.pool, user, "hubspot", "{}").await;
    let expired_grant = seed_integration(&app.pool, user, "salesforce", "{}").await;
    for (id, status, error) in [
        (&broken, "error", "HubSpot refused the token (401)"),
        (
            &expired_grant,
            "needs_reauth",
            "Salesforce revoked the refresh token",
        ),
    ] {
        exec!(
            &app.pool,
            pg: "UPDATE integrations SET status = $1, last_error = $2 WHERE id = $3::uuid",
            sqlite: "UPDATE integrations SET status = $1, last_error = $2 WHERE id = $3",
            status,
            error,
            id.clone(),
        );
    }
    // Expired ten minutes ago: beyond any clock leeway.
    let expired = sign(&claims(user, &[], -600), JWT_SECRET);

    run_scenario(
        "error-paths",
        &app,
        &[
            ("TOKEN", token(user)),
            ("EXPIRED_TOKEN", expired),
            (
                "OPEN_INVOICE_URL",
                open["hosted_invoice_url"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            ),
        ],
    )
    .await;
    app.stop().await;
}

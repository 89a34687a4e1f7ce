//! What a user meets when things go wrong: a token that expires (during the session, or pasted
//! in expired), a past-due subscription, connections in error or needing re-authorisation, the
//! service out of reach; and the invoice list a page at a time.

use nexus_billing::grpc::proto::billing::Tier;
use serde_json::json;

use super::{billing_flows::stripe_settings, run_scenario, spawn_for_browser};
use crate::{
    exec,
    fake_stripe::{FakeStripe, InvoiceSpec},
    helpers::{JWT_SECRET, claims, seed_integration, sign, token},
    subscription_lifecycle::subscribe,
};

crate::tests!(browser: [expiring_tokens_past_due_troubled_connections_invoice_pages_and_an_unreachable_service]);

async fn expiring_tokens_past_due_troubled_connections_invoice_pages_and_an_unreachable_service() {
    let stripe = FakeStripe::start().await;
    let mut settings = stripe_settings(&stripe);
    // No clock leeway, so a token that ends during the session is refused as soon as it ends.
    settings.push(("--jwt-leeway-secs".into(), "0".into()));
    let app = spawn_for_browser(&settings).await;
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
    // Eleven older invoices, paid: two pages of invoices with the open one.
    for month in 1..=11 {
        let paid = stripe.put_invoice(&InvoiceSpec {
            id: &format!("in_browser_{month:02}"),
            customer: &customer,
            subscription: &sub_id,
            status: "paid",
            amount_due: 900,
            amount_paid: 900,
            created: chrono::Utc::now().timestamp() - month * 30 * 86_400,
        });
        let (_, event) = stripe.event("invoice.paid", &paid);
        app.deliver_signed(&event).await;
    }
    // Expired ten minutes ago: beyond any clock leeway.
    let expired = sign(&claims(user, &[], -600), JWT_SECRET);
    // The day the grace ends, as the page writes it (en-US; the machine's zone is UTC).
    let grace_ends = crate::subscription_lifecycle::subscription(&app, user)
        .await
        .grace_ends_at
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0))
        .map(|t| t.format("%B %-d, %Y").to_string())
        .unwrap_or_else(|| panic!("a past-due subscription shows when its grace ends"));

    run_scenario(
        "error-paths",
        &app,
        &[
            ("TOKEN", token(user)),
            ("EXPIRED_TOKEN", expired),
            // The scenario signs a token that ends seconds later with these.
            ("JWT_SECRET", JWT_SECRET.to_string()),
            ("USER", user.to_string()),
            ("GRACE_ENDS", grace_ends),
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

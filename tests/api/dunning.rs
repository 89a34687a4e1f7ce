//! Grace and dunning: a failed renewal keeps the tier for PAST_DUE_GRACE and sends one email per
//! step per invoice (across redeliveries and replicas) through a real SMTP client to a local
//! SMTP server; none once the invoice is paid; refused deliveries are retried with backoff and
//! never hold up webhook processing.

use chrono::{Duration, Utc};
use nexus_billing::grpc::proto::billing::{SubscriptionStatus, Tier};
use serde_json::json;

use crate::{
    exec,
    fake_smtp::FakeSmtp,
    fake_stripe::{FakeStripe, InvoiceSpec},
    helpers::{Backend, TestApp, eventually, wait_for},
    subscription_lifecycle::{subscribe, subscription},
};

crate::on_both_backends!(
    a_failed_renewal_sends_each_step_once_across_redeliveries_and_replicas,
    a_refused_delivery_is_retried_with_backoff_and_never_holds_up_events,
    nothing_is_sent_for_an_invoice_paid_before_its_email_is_due,
);

const ADDRESS: &str = "payer@example.com";

async fn spawn(backend: Backend, smtp: &FakeSmtp) -> (TestApp, FakeStripe) {
    let url = smtp.url();
    TestApp::spawn_with_stripe_and(
        backend,
        &[
            ("--smtp-url", url.as_str()),
            ("--dunning-poll-interval", "100ms"),
            ("--billing-page-url", "https://app.example.com/billing"),
        ],
    )
    .await
}

/// A PRO subscription whose renewal invoice failed: the invoice id.
async fn failed_renewal(app: &TestApp, stripe: &FakeStripe, user: &str) -> (String, String) {
    let (customer, sub_id) = subscribe(app, stripe, user, Tier::Pro).await;
    let invoice_id = format!("in_{user}_renewal");
    let open = stripe.put_invoice(&InvoiceSpec {
        id: &invoice_id,
        customer: &customer,
        subscription: &sub_id,
        status: "open",
        amount_due: 900,
        amount_paid: 0,
        created: Utc::now().timestamp(),
    });
    stripe.patch_invoice(&invoice_id, json!({ "customer_email": ADDRESS }));
    let mut open = open;
    open["customer_email"] = json!(ADDRESS);
    let past_due = stripe.patch_subscription(&sub_id, json!({ "status": "past_due" }));
    let (_, failed) = stripe.event("invoice.payment_failed", &open);
    app.deliver_signed(&failed).await;
    let (_, updated) = stripe.event("customer.subscription.updated", &past_due);
    app.deliver_signed(&updated).await;
    // Stripe delivers again, and tells of its next retry failing too.
    app.deliver_signed(&failed).await;
    let (_, again) = stripe.event("invoice.payment_failed", &open);
    app.deliver_signed(&again).await;
    (invoice_id, sub_id)
}

async fn states(app: &TestApp, invoice: &str) -> Vec<(String, String)> {
    let sql = "SELECT step, state FROM dunning_emails WHERE invoice_id = $1 ORDER BY due_at";
    match &app.pool {
        crate::helpers::TestPool::Sqlite(pool) => sqlx::query_as(sql).bind(invoice).fetch_all(pool).await,
        crate::helpers::TestPool::Postgres(pool) => {
            sqlx::query_as(sql).bind(invoice).fetch_all(pool).await
        }
    }
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Moves a step's due time to now, as if its day had come.
async fn make_due(app: &TestApp, invoice: &str, step: &str) {
    exec!(
        &app.pool,
        "UPDATE dunning_emails SET next_attempt_at = $1 WHERE invoice_id = $2 AND step = $3",
        Utc::now() - Duration::seconds(1),
        invoice,
        step
    );
}

async fn a_failed_renewal_sends_each_step_once_across_redeliveries_and_replicas(
    backend: Backend,
) {
    let smtp = FakeSmtp::start().await;
    let (app, stripe) = spawn(backend, &smtp).await;
    let url = smtp.url();
    let settings = stripe.settings();
    let mut overrides: Vec<(&str, &str)> =
        settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    overrides.extend([
        ("--smtp-url", url.as_str()),
        ("--dunning-poll-interval", "100ms"),
        ("--billing-page-url", "https://app.example.com/billing"),
    ]);
    let second = app.spawn_beside(&overrides).await;
    let (invoice, _) = failed_renewal(&app, &stripe, "dora").await;
    // The other replica hears of it too.
    let (_, failed) = stripe.event(
        "invoice.payment_failed",
        &stripe.invoice_json(&invoice),
    );
    second.deliver_signed(&failed).await;

    // The tier stays, with the day access ends shown.
    let shown = subscription(&app, "dora").await;
    assert_eq!(shown.status, i32::from(SubscriptionStatus::PastDue));
    assert_eq!(shown.effective_tier, i32::from(Tier::Pro));
    let grace_ends = shown.grace_ends_at.map(|t| t.seconds).unwrap_or_default();
    let in_a_week = (Utc::now() + Duration::days(7)).timestamp();
    assert!((grace_ends - in_a_week).abs() < 120, "{grace_ends} vs {in_a_week}");

    // Day 0: one email, whatever the redeliveries and replicas.
    let first = wait_for("the first dunning email", || async {
        smtp.accepted().into_iter().next()
    })
    .await;
    assert_eq!(first.to, [ADDRESS]);
    assert_eq!(first.subject(), "Your Nexus Cards payment failed");
    assert!(first.data.contains("multipart/alternative"), "{}", first.data);
    assert!(first.data.contains("text/plain") && first.data.contains("text/html"));
    assert!(first.data.contains(&format!("https://invoice.stripe.test/i/{invoice}")));
    assert!(first.data.contains("https://app.example.com/billing"));
    assert!(first.data.contains("9.00 USD"));
    assert_eq!(
        states(&app, &invoice).await,
        [
            ("day-0".to_string(), "sent".to_string()),
            ("day-3".to_string(), "pending".to_string()),
            ("final".to_string(), "pending".to_string()),
        ]
    );
    // Day 3 comes: one reminder.
    make_due(&app, &invoice, "day-3").await;
    wait_for("the day-3 reminder", || async {
        (smtp.accepted().len() == 2).then_some(())
    })
    .await;
    assert_eq!(
        smtp.accepted()[1].subject(),
        "Reminder: your Nexus Cards payment is still due"
    );
    // The final notice comes the day before the grace ends.
    make_due(&app, &invoice, "final").await;
    wait_for("the final notice", || async {
        (smtp.accepted().len() == 3).then_some(())
    })
    .await;
    assert!(smtp.accepted()[2].subject().starts_with("Last notice: your Pro plan ends on"));
    eventually("every step sent once", || async {
        states(&app, &invoice).await.iter().all(|(_, s)| s == "sent")
    })
    .await;
    assert_eq!(smtp.accepted().len(), 3);
    second.stop().await;
    app.stop().await;
}

async fn a_refused_delivery_is_retried_with_backoff_and_never_holds_up_events(backend: Backend) {
    let smtp = FakeSmtp::start().await;
    // Deferred, then bounced: both are tried again later.
    smtp.refuse_next(&[451, 554]);
    let (app, stripe) = spawn(backend, &smtp).await;
    let (invoice, sub_id) = failed_renewal(&app, &stripe, "emil").await;
    wait_for("two refused deliveries", || async {
        let row: Option<(i64, Option<String>)> = match &app.pool {
            crate::helpers::TestPool::Sqlite(pool) => sqlx::query_as(
                "SELECT CAST(attempts AS BIGINT), last_error FROM dunning_emails WHERE invoice_id = $1 AND step = 'day-0'",
            )
            .bind(&invoice)
            .fetch_optional(pool)
            .await
            .ok()?,
            crate::helpers::TestPool::Postgres(pool) => sqlx::query_as(
                "SELECT CAST(attempts AS BIGINT), last_error FROM dunning_emails WHERE invoice_id = $1 AND step = 'day-0'",
            )
            .bind(&invoice)
            .fetch_optional(pool)
            .await
            .ok()?,
        };
        let (attempts, error) = row?;
        if attempts == 1 && let Some(error) = error {
            // The first refusal waits a minute: bring the retry forward.
            assert!(error.contains("451"), "{error}");
            make_due(&app, &invoice, "day-0").await;
        }
        (attempts >= 2 && smtp.refused() == 2).then_some(())
    })
    .await;
    assert!(smtp.accepted().is_empty());
    // Webhooks go on meanwhile: the payment succeeds.
    let active = stripe.patch_subscription(&sub_id, json!({ "status": "active" }));
    let (_, updated) = stripe.event("customer.subscription.updated", &active);
    app.deliver_signed(&updated).await;
    assert_eq!(
        subscription(&app, "emil").await.status,
        i32::from(SubscriptionStatus::Active)
    );
    // The retry finds the subscription recovered: the reminder is not sent at all.
    make_due(&app, &invoice, "day-0").await;
    eventually("the reminder is called off", || async {
        states(&app, &invoice).await[0].1 == "skipped"
    })
    .await;
    assert!(smtp.accepted().is_empty());
    app.stop().await;
}

async fn nothing_is_sent_for_an_invoice_paid_before_its_email_is_due(backend: Backend) {
    let smtp = FakeSmtp::start().await;
    let (app, stripe) = spawn(backend, &smtp).await;
    let (invoice, sub_id) = failed_renewal(&app, &stripe, "finn").await;
    wait_for("the first email", || async {
        (smtp.accepted().len() == 1).then_some(())
    })
    .await;
    // The customer pays.
    stripe.patch_invoice(
        &invoice,
        json!({ "status": "paid", "amount_paid": 900, "amount_remaining": 0 }),
    );
    let (_, paid) = stripe.event("invoice.paid", &stripe.invoice_json(&invoice));
    app.deliver_signed(&paid).await;
    let active = stripe.patch_subscription(&sub_id, json!({ "status": "active" }));
    let (_, updated) = stripe.event("customer.subscription.updated", &active);
    app.deliver_signed(&updated).await;
    assert_eq!(
        states(&app, &invoice).await,
        [
            ("day-0".to_string(), "sent".to_string()),
            ("day-3".to_string(), "cancelled".to_string()),
            ("final".to_string(), "cancelled".to_string()),
        ]
    );
    // A late redelivery of the failure schedules nothing again.
    let mut open = stripe.invoice_json(&invoice);
    open["status"] = json!("open");
    let (_, late) = stripe.event_at("invoice.payment_failed", &open, stripe.now() - 60);
    app.deliver_signed(&late).await;
    assert_eq!(states(&app, &invoice).await.len(), 3);
    assert_eq!(app.count("dunning_emails", "state = 'pending'").await, 0);
    assert_eq!(smtp.accepted().len(), 1);
    app.stop().await;
}

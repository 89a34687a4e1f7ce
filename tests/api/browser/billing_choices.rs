//! Choosing how to pay on the billing page: a yearly checkout in euros by card, and M-Pesa
//! cancelled at the phone then paid, the page following each request live.

use std::{sync::Arc, time::Duration};

use nexus_billing::grpc::proto::billing::{PaymentProvider, Tier};

use super::{
    billing_flows::stripe_settings, hosted_checkout::HostedCheckout, run_scenario,
    spawn_for_browser,
};
use crate::{
    fake_mpesa::{FakeMpesa, PRICE_PRO, callback},
    fake_stripe::{FakeStripe, PRICE_PRO_YEARLY},
    helpers::token,
    mpesa::post_callback,
    subscription_lifecycle::subscription,
};

crate::tests!(browser: [a_yearly_euro_checkout_and_mpesa_cancelled_then_paid_at_the_phone]);

async fn a_yearly_euro_checkout_and_mpesa_cancelled_then_paid_at_the_phone() {
    let stripe = Arc::new(FakeStripe::start().await);
    stripe.set_delay(Duration::from_millis(150));
    let (_checkout, _outbox) = HostedCheckout::start(Arc::clone(&stripe)).await;
    let mpesa = Arc::new(FakeMpesa::start().await);
    let mut settings = stripe_settings(&stripe);
    settings.extend(
        mpesa
            .settings()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v)),
    );
    let app = Arc::new(spawn_for_browser(&settings).await);
    // The payer at the phone: cancels the first request, pays the second.
    let phone = {
        let (app, mpesa) = (Arc::clone(&app), Arc::clone(&mpesa));
        tokio::spawn(async move {
            let mut answered = 0;
            while answered < 2 {
                let created = mpesa.created();
                // The payer answers once the service holds the request (Safaricom's callback
                // comes seconds after the push's answer).
                let known = match created.get(answered) {
                    Some(id) => {
                        app.count(
                            "mpesa_payments",
                            &format!("checkout_request_id = '{id}'"),
                        )
                        .await
                            == 1
                    }
                    None => false,
                };
                if let (true, Some(id)) = (known, created.get(answered)) {
                    let (code, receipt) = if answered == 0 {
                        (1032, None)
                    } else {
                        (0, Some("NLJ7RT61SV"))
                    };
                    mpesa.resolve(id, code);
                    let body = callback(id, code, receipt, PRICE_PRO);
                    assert_eq!(post_callback(&app, &body).await, (200, 0));
                    answered += 1;
                } else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        })
    };
    let (card_user, phone_user) = ("browser-yearly", "browser-mpesa");

    run_scenario(
        "billing-choices",
        &app,
        &[("TOKEN", token(card_user)), ("MPESA_TOKEN", token(phone_user))],
    )
    .await;

    // The card checkout asked Stripe for the yearly price in euros.
    let sessions = stripe.requests("POST", "/v1/checkout/sessions");
    assert_eq!(sessions.len(), 1);
    assert_eq!(
        sessions[0].form.get("line_items[0][price]").map(String::as_str),
        Some(PRICE_PRO_YEARLY)
    );
    assert_eq!(sessions[0].form.get("currency").map(String::as_str), Some("eur"));
    // Two pushes, one paid: the phone user is on PRO through M-Pesa, the other still FREE.
    assert_eq!(mpesa.created().len(), 2);
    let paid = subscription(&app, phone_user).await;
    assert_eq!(paid.tier, i32::from(Tier::Pro));
    assert_eq!(paid.provider, i32::from(PaymentProvider::Mpesa));
    assert_eq!(subscription(&app, card_user).await.tier, i32::from(Tier::Free));
    // The payer answered both requests (the scenario saw both answers).
    phone.await.unwrap_or_else(|e| panic!("the payer at the phone: {e}"));
    match Arc::try_unwrap(app) {
        Ok(app) => app.stop().await,
        Err(_) => panic!("the app is still shared"),
    }
}

//! Entry points for the fuzz tests (`tests/fuzz.rs`): each parser that reads bytes an outsider
//! chose, callable with arbitrary input and fixed, test-only configuration. Not part of the
//! service's API; the service calls the same functions through its own paths.

use std::time::Duration;

use secrecy::SecretString;

use crate::payments::{
    WebhookEvent, WebhookRejection,
    mpesa::{StkCallback, read_callback},
    paypal::is_paypal_cert_url,
    paypal_event::{self, PlanMap},
    stripe_event::{self, PriceMap},
    stripe_signature::{DEFAULT_TOLERANCE, SignatureVerifier},
};

/// The Stripe signing secret the fuzz tests sign with.
pub const STRIPE_SECRET: &str = "whsec_fuzz";

/// `Stripe-Signature` checked against `body` at `now`, with [`STRIPE_SECRET`].
pub fn stripe_signature(
    header: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), WebhookRejection> {
    SignatureVerifier::new(vec![SecretString::from(STRIPE_SECRET)], DEFAULT_TOLERANCE)
        .verify(header, body, now)
}

/// A signature Stripe would send for `body` at `t`.
pub fn stripe_sign(body: &[u8], t: i64) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(STRIPE_SECRET.as_bytes()) else {
        return String::new();
    };
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// A Stripe event body, as the intake reads it after the signature passed.
pub fn stripe_event(body: &[u8]) -> Result<WebhookEvent, WebhookRejection> {
    let prices = PriceMap {
        pro: vec!["price_pro".into()],
        premium: vec!["price_premium".into()],
        pro_yearly: None,
        premium_yearly: None,
        extra_card: None,
    };
    stripe_event::parse(body, &prices)
}

/// A PayPal event body, as the intake reads it after PayPal verified it.
pub fn paypal_event(body: &[u8]) -> Result<WebhookEvent, WebhookRejection> {
    let plans = PlanMap {
        pro: "P-PRO".into(),
        premium: "P-PREMIUM".into(),
        pro_yearly: None,
        premium_yearly: None,
    };
    paypal_event::parse(body, &plans)
}

/// The `PAYPAL-CERT-URL` check (true only for PayPal's own certificate URLs).
pub fn paypal_cert_url(raw: &str) -> bool {
    is_paypal_cert_url(raw)
}

/// An M-Pesa STK callback body.
pub fn mpesa_callback(body: &[u8]) -> Result<StkCallback, WebhookRejection> {
    read_callback(body)
}

/// The tolerance the Stripe verifier allows, for tests that build timestamps around it.
pub fn stripe_tolerance() -> Duration {
    DEFAULT_TOLERANCE
}

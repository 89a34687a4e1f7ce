//! PayPal and M-Pesa settings: the clap arguments (flattened into [`super::Settings`]) and their
//! validation. A provider is on when its first credential is set; then every other setting it
//! needs is required, and each missing one is named.

use std::time::Duration;

use clap::Args;
use secrecy::SecretString;
use url::Url;

use super::{ConfigProblem, Settings, parse::non_empty};

/// PayPal subscriptions and M-Pesa STK push (Safaricom Daraja).
#[derive(Debug, Clone, Args)]
pub struct PaymentSettings {
    /// PayPal REST app client id (turns PayPal on).
    #[arg(long, env = "PAYPAL_CLIENT_ID", global = true)]
    pub paypal_client_id: Option<String>,
    #[arg(
        long,
        env = "PAYPAL_CLIENT_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub paypal_client_secret: Option<String>,
    /// The id PayPal gave the webhook registered for `/billing/webhook/paypal`.
    #[arg(long, env = "PAYPAL_WEBHOOK_ID", global = true)]
    pub paypal_webhook_id: Option<String>,
    /// The PayPal billing plan (P-...) a PRO subscription is created with.
    #[arg(long, env = "PAYPAL_PLAN_ID_PRO", global = true)]
    pub paypal_plan_id_pro: Option<String>,
    #[arg(long, env = "PAYPAL_PLAN_ID_PREMIUM", global = true)]
    pub paypal_plan_id_premium: Option<String>,
    /// The PayPal billing plan a yearly PRO subscription is created with (unset: monthly only).
    #[arg(long, env = "PAYPAL_PLAN_ID_PRO_YEARLY", global = true)]
    pub paypal_plan_id_pro_yearly: Option<String>,
    #[arg(long, env = "PAYPAL_PLAN_ID_PREMIUM_YEARLY", global = true)]
    pub paypal_plan_id_premium_yearly: Option<String>,
    /// Daraja app consumer key (turns M-Pesa on).
    #[arg(long, env = "MPESA_CONSUMER_KEY", global = true)]
    pub mpesa_consumer_key: Option<String>,
    #[arg(
        long,
        env = "MPESA_CONSUMER_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub mpesa_consumer_secret: Option<String>,
    /// The paybill or till number (BusinessShortCode) paid into.
    #[arg(long, env = "MPESA_SHORTCODE", global = true)]
    pub mpesa_shortcode: Option<String>,
    /// The Lipa na M-Pesa Online passkey.
    #[arg(long, env = "MPESA_PASSKEY", hide_env_values = true, global = true)]
    pub mpesa_passkey: Option<String>,
    /// Public https URL of `POST /billing/webhook/mpesa`, sent with every STK push.
    #[arg(long, env = "MPESA_CALLBACK_URL", global = true)]
    pub mpesa_callback_url: Option<String>,
    /// Price of one 30-day PRO period in whole Kenyan shillings.
    #[arg(long, env = "MPESA_PRICE_KES_PRO", global = true)]
    pub mpesa_price_kes_pro: Option<u32>,
    #[arg(long, env = "MPESA_PRICE_KES_PREMIUM", global = true)]
    pub mpesa_price_kes_premium: Option<u32>,
    /// How often the M-Pesa poller looks for payment requests whose callback has not come.
    #[arg(long, env = "MPESA_POLL_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub mpesa_poll_interval: Duration,
    /// How long a payment request may wait for its callback before the poller asks Daraja.
    #[arg(long, env = "MPESA_CALLBACK_GRACE", default_value = "90s", value_parser = humantime::parse_duration, global = true)]
    pub mpesa_callback_grace: Duration,
}

/// Validated PayPal settings; present only when `PAYPAL_CLIENT_ID` is set.
#[derive(Debug)]
pub struct PaypalConfig {
    pub client_id: String,
    pub client_secret: SecretString,
    pub webhook_id: String,
    pub plan_pro: String,
    pub plan_premium: String,
    pub plan_pro_yearly: Option<String>,
    pub plan_premium_yearly: Option<String>,
}

/// Validated M-Pesa settings; present only when `MPESA_CONSUMER_KEY` is set.
#[derive(Debug)]
pub struct MpesaConfig {
    pub consumer_key: String,
    pub consumer_secret: SecretString,
    pub shortcode: String,
    pub passkey: SecretString,
    pub callback_url: Url,
    /// Whole shillings per 30-day period.
    pub price_kes_pro: u32,
    pub price_kes_premium: u32,
    pub poll_interval: Duration,
    pub callback_grace: Duration,
}

/// Collects the problems of one provider's settings.
struct Required<'a> {
    problems: &'a mut Vec<ConfigProblem>,
    because: &'static str,
}

impl Required<'_> {
    fn get(&mut self, setting: &'static str, value: Option<String>) -> String {
        non_empty(value).unwrap_or_else(|| {
            self.problem(setting, format!("is required when {} is set", self.because));
            String::new()
        })
    }

    fn problem(&mut self, setting: &'static str, problem: String) {
        self.problems.push(ConfigProblem { setting, problem });
    }
}

pub(super) fn paypal(
    s: &PaymentSettings,
    problems: &mut Vec<ConfigProblem>,
) -> Option<PaypalConfig> {
    let client_id = non_empty(s.paypal_client_id.clone())?;
    let mut required = Required {
        problems,
        because: "PAYPAL_CLIENT_ID",
    };
    let config = PaypalConfig {
        client_id,
        client_secret: required
            .get("PAYPAL_CLIENT_SECRET", s.paypal_client_secret.clone())
            .into(),
        webhook_id: required.get("PAYPAL_WEBHOOK_ID", s.paypal_webhook_id.clone()),
        plan_pro: required.get("PAYPAL_PLAN_ID_PRO", s.paypal_plan_id_pro.clone()),
        plan_premium: required.get("PAYPAL_PLAN_ID_PREMIUM", s.paypal_plan_id_premium.clone()),
        plan_pro_yearly: non_empty(s.paypal_plan_id_pro_yearly.clone()),
        plan_premium_yearly: non_empty(s.paypal_plan_id_premium_yearly.clone()),
    };
    let mut plans = vec![&config.plan_pro, &config.plan_premium];
    plans.extend(config.plan_pro_yearly.iter());
    plans.extend(config.plan_premium_yearly.iter());
    let distinct: std::collections::BTreeSet<_> = plans.iter().collect();
    if distinct.len() != plans.len() && !config.plan_pro.is_empty() {
        required.problem(
            "PAYPAL_PLAN_ID_PRO_YEARLY",
            "each PayPal plan id (PRO, PREMIUM, and their yearly ones) must differ".into(),
        );
    }
    if !config.plan_pro.is_empty() && config.plan_pro == config.plan_premium {
        required.problem(
            "PAYPAL_PLAN_ID_PREMIUM",
            "must differ from PAYPAL_PLAN_ID_PRO".into(),
        );
    }
    Some(config)
}

pub(super) fn mpesa(
    s: &PaymentSettings,
    production: bool,
    problems: &mut Vec<ConfigProblem>,
) -> Option<MpesaConfig> {
    let consumer_key = non_empty(s.mpesa_consumer_key.clone())?;
    let mut required = Required {
        problems,
        because: "MPESA_CONSUMER_KEY",
    };
    let consumer_secret = required.get("MPESA_CONSUMER_SECRET", s.mpesa_consumer_secret.clone());
    let shortcode = required.get("MPESA_SHORTCODE", s.mpesa_shortcode.clone());
    let digits =
        (5..=7).contains(&shortcode.len()) && shortcode.bytes().all(|b| b.is_ascii_digit());
    if !shortcode.is_empty() && !digits {
        required.problem("MPESA_SHORTCODE", "must be 5 to 7 digits".into());
    }
    let passkey = required.get("MPESA_PASSKEY", s.mpesa_passkey.clone());
    let callback = required.get("MPESA_CALLBACK_URL", s.mpesa_callback_url.clone());
    // An invalid URL is a problem reported below; the config is then never used.
    let callback_url = match Url::parse(&callback) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
            if production && url.scheme() != "https" {
                required.problem(
                    "MPESA_CALLBACK_URL",
                    "must be https:// when APP_ENV=production (Safaricom calls only https)".into(),
                );
            }
            Some(url)
        }
        _ => {
            if !callback.is_empty() {
                required.problem(
                    "MPESA_CALLBACK_URL",
                    "must be an absolute http(s) URL".into(),
                );
            }
            None
        }
    };
    let mut price = |setting: &'static str, value: Option<u32>| match value {
        Some(0) => {
            required.problem(setting, "must be at least 1".into());
            0
        }
        Some(kes) => kes,
        None => {
            required.problem(setting, "is required when MPESA_CONSUMER_KEY is set".into());
            0
        }
    };
    let price_kes_pro = price("MPESA_PRICE_KES_PRO", s.mpesa_price_kes_pro);
    let price_kes_premium = price("MPESA_PRICE_KES_PREMIUM", s.mpesa_price_kes_premium);
    if s.mpesa_poll_interval.is_zero() {
        required.problem("MPESA_POLL_INTERVAL", "must be more than 0s".into());
    }
    Some(MpesaConfig {
        consumer_key,
        consumer_secret: consumer_secret.into(),
        shortcode,
        passkey: passkey.into(),
        callback_url: callback_url?,
        price_kes_pro,
        price_kes_premium,
        poll_interval: s.mpesa_poll_interval,
        callback_grace: s.mpesa_callback_grace,
    })
}

/// The sandbox's price ids (`payments::sandbox` answers them at the list prices).
pub const SANDBOX_PRICES: [(
    &str,
    crate::domain::Tier,
    crate::domain::pricing::BillingInterval,
); 4] = {
    use crate::domain::{Tier, pricing::BillingInterval};
    [
        ("price_sandbox_pro_month", Tier::Pro, BillingInterval::Month),
        ("price_sandbox_pro_year", Tier::Pro, BillingInterval::Year),
        (
            "price_sandbox_premium_month",
            Tier::Premium,
            BillingInterval::Month,
        ),
        (
            "price_sandbox_premium_year",
            Tier::Premium,
            BillingInterval::Year,
        ),
    ]
};

/// Stripe settings for the development sandbox: keys made up for this process (the sandbox
/// checks them like Stripe does), the sandbox's prices. The API base is set at start-up, once
/// the sidecar's port is known.
pub fn sandbox_stripe() -> StripeConfig {
    let secret = |prefix: &str| format!("{prefix}{}", super::random_hex(16));
    StripeConfig {
        secret_key: secret("sk_test_sandbox_").into(),
        webhook_secrets: vec![secret("whsec_sandbox_").into()],
        webhook_tolerance: Duration::from_secs(300),
        prices_pro: vec![SANDBOX_PRICES[0].0.to_string()],
        prices_premium: vec![SANDBOX_PRICES[2].0.to_string()],
        price_pro_yearly: Some(SANDBOX_PRICES[1].0.to_string()),
        price_premium_yearly: Some(SANDBOX_PRICES[3].0.to_string()),
        price_extra_card: None,
        meter_event_extra_card: "nexus_extra_card_months".into(),
        max_requests_per_second: 100,
    }
}

/// Validated Stripe settings; present only when `STRIPE_SECRET_KEY` is set.
#[derive(Debug)]
pub struct StripeConfig {
    pub secret_key: SecretString,
    pub webhook_secrets: Vec<SecretString>,
    /// How far a signature's timestamp may be from now.
    pub webhook_tolerance: Duration,
    /// The price new PRO checkouts use, then any others that are PRO too.
    pub prices_pro: Vec<String>,
    /// The price new PREMIUM checkouts use, then any others that are PREMIUM too.
    pub prices_premium: Vec<String>,
    pub price_pro_yearly: Option<String>,
    pub price_premium_yearly: Option<String>,
    /// The metered price of an extra card-month (overage), when sold.
    pub price_extra_card: Option<String>,
    /// The event name of its meter.
    pub meter_event_extra_card: String,
    pub max_requests_per_second: u32,
}

/// Stripe's settings, validated; `None` when `STRIPE_SECRET_KEY` is unset.
pub(super) fn stripe(s: &Settings, problems: &mut Vec<ConfigProblem>) -> Option<StripeConfig> {
    let mut problem =
        |setting: &'static str, problem: String| problems.push(ConfigProblem { setting, problem });
    match non_empty(s.stripe_secret_key.clone()) {
        None => None,
        Some(key) => {
            if !(key.starts_with("sk_") || key.starts_with("rk_")) {
                problem(
                    "STRIPE_SECRET_KEY",
                    "must be a Stripe secret or restricted key (sk_... or rk_...)".into(),
                );
            }
            let webhook_secrets: Vec<SecretString> = s
                .stripe_webhook_secret
                .as_deref()
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(|v| SecretString::from(v.to_string()))
                .collect();
            if webhook_secrets.is_empty() {
                problem(
                    "STRIPE_WEBHOOK_SECRET",
                    "is required when STRIPE_SECRET_KEY is set".into(),
                );
            }
            let mut price = |setting: &'static str, value: Option<String>| {
                non_empty(value).unwrap_or_else(|| {
                    problem(setting, "is required when STRIPE_SECRET_KEY is set".into());
                    String::new()
                })
            };
            let price_id_pro = price("STRIPE_PRICE_ID_PRO", s.stripe_price_id_pro.clone());
            let price_id_premium =
                price("STRIPE_PRICE_ID_PREMIUM", s.stripe_price_id_premium.clone());
            if s.stripe_webhook_tolerance_secs == 0 {
                problem("STRIPE_WEBHOOK_TOLERANCE_SECS", "must be at least 1".into());
            }
            if s.stripe_max_requests_per_second == 0 {
                problem(
                    "STRIPE_MAX_REQUESTS_PER_SECOND",
                    "must be at least 1".into(),
                );
            }
            let list = |first: String, more: &Option<String>| {
                let mut all = vec![first];
                for p in more
                    .as_deref()
                    .unwrap_or_default()
                    .split(',')
                    .map(str::trim)
                {
                    if !p.is_empty() && !all.iter().any(|q| q == p) {
                        all.push(p.to_string());
                    }
                }
                all
            };
            let prices_pro = list(price_id_pro, &s.stripe_price_ids_pro);
            let prices_premium = list(price_id_premium, &s.stripe_price_ids_premium);
            if prices_pro
                .iter()
                .any(|p| !p.is_empty() && prices_premium.contains(p))
            {
                problem(
                    "STRIPE_PRICE_IDS_PREMIUM",
                    "a price cannot be both PRO and PREMIUM".into(),
                );
            }
            let price_pro_yearly = non_empty(s.stripe_price_id_pro_yearly.clone());
            let price_premium_yearly = non_empty(s.stripe_price_id_premium_yearly.clone());
            for (setting, yearly) in [
                ("STRIPE_PRICE_ID_PRO_YEARLY", &price_pro_yearly),
                ("STRIPE_PRICE_ID_PREMIUM_YEARLY", &price_premium_yearly),
            ] {
                if let Some(p) = yearly
                    && (prices_pro.contains(p) || prices_premium.contains(p))
                {
                    problem(setting, "must differ from the monthly prices".into());
                }
            }
            let price_extra_card = non_empty(s.stripe_price_id_extra_card.clone());
            if let Some(extra) = &price_extra_card
                && (prices_pro.contains(extra)
                    || prices_premium.contains(extra)
                    || price_pro_yearly.as_ref() == Some(extra)
                    || price_premium_yearly.as_ref() == Some(extra))
            {
                problem(
                    "STRIPE_PRICE_ID_EXTRA_CARD",
                    "must differ from the plans' prices".into(),
                );
            }
            let meter_event = s.stripe_meter_event_extra_card.trim().to_string();
            if meter_event.is_empty() || meter_event.len() > 100 {
                problem(
                    "STRIPE_METER_EVENT_EXTRA_CARD",
                    "must be 1 to 100 characters".into(),
                );
            }
            if price_pro_yearly.is_some() && price_pro_yearly == price_premium_yearly {
                problem(
                    "STRIPE_PRICE_ID_PREMIUM_YEARLY",
                    "must differ from STRIPE_PRICE_ID_PRO_YEARLY".into(),
                );
            }
            Some(StripeConfig {
                secret_key: key.into(),
                webhook_secrets,
                webhook_tolerance: Duration::from_secs(s.stripe_webhook_tolerance_secs),
                prices_pro,
                prices_premium,
                price_pro_yearly,
                price_premium_yearly,
                price_extra_card,
                meter_event_extra_card: meter_event,
                max_requests_per_second: s.stripe_max_requests_per_second,
            })
        }
    }
}

//! Building billing at start-up: the payment gateways, the development sandbox (pointed at
//! by the Stripe gateway), the dunning outbox's sender and the erasure subject keys.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;

use super::dashboard_url;
use crate::{
    billing::{
        Billing,
        dunning_mailer::{DunningMailer, LogPostman, Postman, SmtpPostman},
    },
    config::{Config, is_allowed_redirect},
    payments::{
        Gateways, PaymentGateway, mpesa::MpesaGateway, paypal::PaypalGateway, sandbox::Sandbox,
        stripe::StripeGateway,
    },
    sidecar::SANDBOX_API,
    store::Store,
};

/// The development sandbox, when the configuration turned it on: its API is served by the
/// sidecar, and the Stripe gateway is pointed at it.
pub(super) fn start_sandbox(
    config: &mut Config,
    http_addr: SocketAddr,
) -> anyhow::Result<Option<Arc<Sandbox>>> {
    let (true, Some(stripe)) = (config.sandbox, &config.stripe) else {
        return Ok(None);
    };
    let host = if http_addr.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        http_addr.ip()
    };
    let api = SocketAddr::new(host, http_addr.port());
    let pages = dashboard_url(config, http_addr);
    let pages = url::Url::parse(&pages)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_else(|_| format!("http://{api}"));
    let sandbox = Sandbox::new(stripe, &pages).context("cannot load the sandbox's objects")?;
    config.endpoints.stripe_api_base = url::Url::parse(&format!("http://{api}{SANDBOX_API}"))
        .context("the sandbox's API address")?;
    tracing::warn!(%pages, "payments sandbox on: test mode, no money moves (APP_ENV=development and no payment provider is configured)");
    Ok(Some(Arc::new(sandbox)))
}

/// The dunning outbox's sender: SMTP when `SMTP_URL` is set, else the log (development; the
/// configuration refuses production without it); `None` when dunning is off.
pub(super) fn dunning_mailer(
    config: &Config,
    store: Arc<dyn Store>,
    http_addr: SocketAddr,
) -> anyhow::Result<Option<DunningMailer>> {
    if !config.dunning.is_on() {
        return Ok(None);
    }
    let postman: Arc<dyn Postman> = match &config.dunning.smtp_url {
        Some(url) => {
            Arc::new(SmtpPostman::new(url, &config.dunning.email_from).map_err(anyhow::Error::msg)?)
        }
        None => {
            tracing::warn!("SMTP_URL is unset: dunning emails are written to the log");
            Arc::new(LogPostman)
        }
    };
    let billing_url = match &config.dunning.billing_page_url {
        Some(url) => url.to_string(),
        None => format!(
            "{}/settings/billing",
            dashboard_url(config, http_addr).trim_end_matches('/')
        ),
    };
    Ok(Some(DunningMailer::new(
        store,
        postman,
        billing_url,
        config.dunning.poll_interval,
    )))
}

/// The billing use cases with the configured payment gateways.
pub(super) fn build_billing(
    config: &Config,
    origins: &[String],
    store: Arc<dyn Store>,
) -> anyhow::Result<Billing> {
    let stripe = match &config.stripe {
        Some(stripe) => {
            let gateway = StripeGateway::new(
                stripe,
                &config.endpoints.stripe_api_base,
                stripe.webhook_tolerance,
            )
            .context("cannot set up Stripe")?;
            Some(Arc::new(gateway) as Arc<dyn PaymentGateway>)
        }
        None => None,
    };
    let paypal = match &config.paypal {
        Some(paypal) => Some(Arc::new(
            PaypalGateway::new(paypal, &config.endpoints.paypal_api_base)
                .context("cannot set up PayPal")?,
        ) as Arc<dyn PaymentGateway>),
        None => None,
    };
    let mpesa = match &config.mpesa {
        Some(mpesa) => Some(Arc::new(
            MpesaGateway::new(mpesa, &config.endpoints.mpesa_api_base)
                .context("cannot set up M-Pesa")?,
        ) as Arc<dyn PaymentGateway>),
        None => None,
    };
    let origins = origins.to_vec();
    let redirect_allowed = Box::new(move |url: &str| is_allowed_redirect(&origins, url));
    Ok(Billing::new(
        store,
        Gateways::new(stripe, paypal, mpesa),
        chrono::Duration::from_std(config.past_due_grace).context("PAST_DUE_GRACE is too long")?,
        redirect_allowed,
        config.duplicate_policy,
        subject_keys(config),
        config.selling.clone(),
    )
    .with_dunning(config.dunning.schedule.clone())
    .with_overage(
        config
            .stripe
            .as_ref()
            .is_some_and(|s| s.price_extra_card.is_some()),
    ))
}

/// The keys of erased users' anonymous entries, from the same keys as the vault.
fn subject_keys(config: &Config) -> crate::domain::erasure::SubjectKeys {
    let previous: Vec<&[u8; 32]> = config
        .previous_encryption_keys
        .iter()
        .map(|k| k.expose())
        .collect();
    crate::domain::erasure::SubjectKeys::new(config.encryption_key.expose(), &previous)
}

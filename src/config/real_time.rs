//! Settings of integrations in real time: where providers send their webhooks (the public
//! base URL), HubSpot's signing secret, and how long NotifyContactsChanged gathers
//! notifications into one push. The clap arguments (flattened into [`super::Settings`]) and
//! their validation.

use std::time::Duration;

use clap::Args;
use secrecy::SecretString;
use url::Url;

use super::{ConfigProblem, parse::non_empty};

/// Provider webhooks in, card-app changes out.
#[derive(Debug, Clone, Args)]
pub struct RealTimeSettings {
    /// The public origin of the sidecar as providers reach it (e.g. `https://api.nexus.cards`):
    /// webhook URLs registered with Mailchimp and Zoho start with it, and HubSpot signs the
    /// URL it called with it. Default: the origin of OAUTH_REDIRECT_URL.
    #[arg(long, env = "PUBLIC_BASE_URL", global = true)]
    pub public_base_url: Option<String>,
    /// The client secret of the HubSpot app whose webhooks come to
    /// `/integrations/webhook/hubspot` (signatures v3). Unset: HubSpot deliveries are refused.
    #[arg(
        long,
        env = "HUBSPOT_WEBHOOK_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub hubspot_webhook_secret: Option<String>,
    /// How long NotifyContactsChanged gathers notifications before the push starts: many
    /// notifications in this window make one job.
    #[arg(long, env = "NOTIFY_COALESCE_WINDOW", default_value = "2s", value_parser = humantime::parse_duration, global = true)]
    pub notify_coalesce_window: Duration,
    /// How long before a Zoho watch channel expires it is renewed (channels are made for a
    /// day).
    #[arg(long, env = "ZOHO_CHANNEL_RENEW_BEFORE", default_value = "6h", value_parser = humantime::parse_duration, global = true)]
    pub zoho_channel_renew_before: Duration,
}

/// Validated real-time settings.
#[derive(Debug, Clone)]
pub struct RealTimeConfig {
    /// Origin only, no trailing slash.
    pub public_base_url: Url,
    pub hubspot_webhook_secret: Option<SecretString>,
    pub notify_coalesce_window: Duration,
    pub zoho_channel_renew_before: Duration,
}

pub(super) fn real_time(
    s: &RealTimeSettings,
    oauth_redirect_url: &Url,
    problems: &mut Vec<ConfigProblem>,
) -> RealTimeConfig {
    let fallback = oauth_redirect_url
        .join("/")
        .unwrap_or_else(|_| oauth_redirect_url.clone());
    let public_base_url = match non_empty(s.public_base_url.clone()) {
        None => fallback,
        Some(raw) => {
            match Url::parse(&raw) {
                Ok(url)
                    if matches!(url.scheme(), "http" | "https")
                        && url.host().is_some()
                        && url.path() == "/"
                        && url.query().is_none() =>
                {
                    url
                }
                _ => {
                    problems.push(ConfigProblem {
                    setting: "PUBLIC_BASE_URL",
                    problem: "must be an http(s) origin such as https://api.nexus.cards, with no path".into(),
                });
                    fallback
                }
            }
        }
    };
    if s.notify_coalesce_window > Duration::from_secs(60) {
        problems.push(ConfigProblem {
            setting: "NOTIFY_COALESCE_WINDOW",
            problem: "must be at most 60s (changes are meant to go out within seconds)".into(),
        });
    }
    if s.zoho_channel_renew_before >= Duration::from_secs(24 * 3600) {
        problems.push(ConfigProblem {
            setting: "ZOHO_CHANNEL_RENEW_BEFORE",
            problem: "must be less than 24h (a channel lasts a day)".into(),
        });
    }
    RealTimeConfig {
        public_base_url,
        hubspot_webhook_secret: non_empty(s.hubspot_webhook_secret.clone()).map(SecretString::from),
        notify_coalesce_window: s.notify_coalesce_window,
        zoho_channel_renew_before: s.zoho_channel_renew_before,
    }
}

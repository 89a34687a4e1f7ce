//! Settings of how plans are sold (trials, promotion codes, the price cache) and of dunning
//! emails (SMTP, the schedule): the clap arguments (flattened into [`super::Settings`]) and
//! their validation.

use std::time::Duration;

use clap::Args;
use secrecy::SecretString;

use super::{ConfigProblem, parse::non_empty};

/// Trials, promotion codes, prices and dunning.
#[derive(Debug, Clone, Args)]
pub struct BillingTermsSettings {
    /// Days of free trial a first subscription starts with (Stripe); unset or 0: no trial.
    /// A user gets one trial ever.
    #[arg(long, env = "TRIAL_DAYS", global = true)]
    pub trial_days: Option<u32>,
    /// Lets payers enter a promotion code on Stripe's checkout page.
    #[arg(long, env = "ALLOW_PROMOTION_CODES", default_value_t = false, action = clap::ArgAction::Set, global = true)]
    pub allow_promotion_codes: bool,
    /// How long prices read from the payment provider are kept before they are read again.
    #[arg(long, env = "PRICE_REFRESH_INTERVAL", default_value = "10m", value_parser = humantime::parse_duration, global = true)]
    pub price_refresh_interval: Duration,
    /// Where dunning emails are sent: `smtp://host:port` (plain, tests and local relays),
    /// `smtp://user:pass@host:587?tls=required` (STARTTLS) or `smtps://...` (TLS). Unset in development:
    /// emails are written to the log. Required in production while dunning is on.
    #[arg(long, env = "SMTP_URL", hide_env_values = true, global = true)]
    pub smtp_url: Option<String>,
    /// The From address of dunning emails.
    #[arg(
        long,
        env = "EMAIL_FROM",
        default_value = "Nexus Cards Billing <billing@nexus.cards>",
        global = true
    )]
    pub email_from: String,
    /// Days after the first failed renewal payment on which a reminder goes out
    /// (comma-separated; `0` is the day it failed). Empty: no dunning emails.
    #[arg(long, env = "DUNNING_SCHEDULE", default_value = "0,3,7", global = true)]
    pub dunning_schedule: String,
    /// Where the billing page is, for the links in emails (default: the dashboard's).
    #[arg(long, env = "BILLING_PAGE_URL", global = true)]
    pub billing_page_url: Option<String>,
    /// `auto`: on the first run with no configuration (APP_ENV=development, no payment provider
    /// and no JWT_SECRET), payments go to a sandbox this service plays itself (test mode, no
    /// money moves); `on`: in development with no payment provider, even with JWT_SECRET set;
    /// `off`: never. Production never has it.
    #[arg(
        long,
        env = "PAYMENTS_SANDBOX",
        value_enum,
        default_value = "auto",
        global = true
    )]
    pub payments_sandbox: SandboxMode,
    /// How often each replica reports extra cards (overage) to Stripe's meter.
    #[arg(long, env = "OVERAGE_REPORT_INTERVAL", default_value = "5m", value_parser = humantime::parse_duration, global = true)]
    pub overage_report_interval: Duration,
    /// How often each replica looks for dunning emails that are due.
    #[arg(long, env = "DUNNING_POLL_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub dunning_poll_interval: Duration,
}

/// Whether the development payments sandbox may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SandboxMode {
    Auto,
    On,
    Off,
}

/// How plans are sold.
#[derive(Debug, Clone)]
pub struct SellingConfig {
    /// Trial days of a first subscription; `None`: no trials.
    pub trial_days: Option<u32>,
    pub allow_promotion_codes: bool,
    pub price_refresh_interval: Duration,
    pub overage_report_interval: Duration,
}

/// Dunning emails.
#[derive(Debug, Clone)]
pub struct DunningConfig {
    /// Days after the first failure on which a reminder goes out, ascending, no repeats.
    pub schedule: Vec<u32>,
    /// `None`: emails go to the log (development only).
    pub smtp_url: Option<SecretString>,
    pub email_from: String,
    /// The billing page, for links in emails; `None`: the dashboard's.
    pub billing_page_url: Option<url::Url>,
    pub poll_interval: Duration,
}

impl DunningConfig {
    /// Whether any reminder is scheduled.
    pub fn is_on(&self) -> bool {
        !self.schedule.is_empty()
    }
}

/// Reads `0,3,7` into sorted, distinct days.
pub fn parse_schedule(text: &str) -> Result<Vec<u32>, String> {
    let mut days = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let day: u32 = part
            .parse()
            .map_err(|_| format!("{part:?} is not a whole number of days"))?;
        if day > 365 {
            return Err(format!("{day} is more than a year"));
        }
        days.push(day);
    }
    days.sort_unstable();
    days.dedup();
    Ok(days)
}

pub(super) fn selling(
    s: &BillingTermsSettings,
    problems: &mut Vec<ConfigProblem>,
) -> SellingConfig {
    if s.price_refresh_interval < Duration::from_secs(1) {
        problems.push(ConfigProblem {
            setting: "PRICE_REFRESH_INTERVAL",
            problem: "must be at least 1s".into(),
        });
    }
    if s.trial_days.is_some_and(|d| d > 730) {
        problems.push(ConfigProblem {
            setting: "TRIAL_DAYS",
            problem: "must be at most 730 (Stripe's limit)".into(),
        });
    }
    SellingConfig {
        trial_days: s.trial_days.filter(|d| *d > 0),
        allow_promotion_codes: s.allow_promotion_codes,
        price_refresh_interval: s.price_refresh_interval,
        overage_report_interval: s.overage_report_interval.max(Duration::from_millis(10)),
    }
}

pub(super) fn dunning(
    s: &BillingTermsSettings,
    production: bool,
    problems: &mut Vec<ConfigProblem>,
) -> DunningConfig {
    let schedule = parse_schedule(&s.dunning_schedule).unwrap_or_else(|problem| {
        problems.push(ConfigProblem {
            setting: "DUNNING_SCHEDULE",
            problem,
        });
        Vec::new()
    });
    let smtp_url = non_empty(s.smtp_url.clone());
    if let Some(url) = &smtp_url {
        let known = url::Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "smtp" | "smtps") && u.host().is_some());
        if known.is_none() {
            // The value may hold a password: never repeat it.
            problems.push(ConfigProblem {
                setting: "SMTP_URL",
                problem: "must be smtp://host[:port] or smtps://host[:port]".into(),
            });
        }
    } else if production && !schedule.is_empty() {
        problems.push(ConfigProblem {
            setting: "SMTP_URL",
            problem: "is required when APP_ENV=production and DUNNING_SCHEDULE is not empty".into(),
        });
    }
    if s.email_from.parse::<lettre::message::Mailbox>().is_err() {
        problems.push(ConfigProblem {
            setting: "EMAIL_FROM",
            problem: "must be an address, like \"Billing <billing@example.com>\"".into(),
        });
    }
    let billing_page_url = match non_empty(s.billing_page_url.clone()).map(|u| url::Url::parse(&u))
    {
        Some(Ok(url)) if matches!(url.scheme(), "http" | "https") => Some(url),
        Some(_) => {
            problems.push(ConfigProblem {
                setting: "BILLING_PAGE_URL",
                problem: "must be an absolute http(s) URL".into(),
            });
            None
        }
        None => None,
    };
    DunningConfig {
        schedule,
        smtp_url: smtp_url.map(SecretString::from),
        email_from: s.email_from.clone(),
        billing_page_url,
        poll_interval: s.dunning_poll_interval.max(Duration::from_millis(10)),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_schedule;

    #[test]
    fn schedules_are_sorted_days_and_odd_ones_refused() {
        assert_eq!(parse_schedule("0,3,7"), Ok(vec![0, 3, 7]));
        assert_eq!(parse_schedule(" 7, 0,3,3 "), Ok(vec![0, 3, 7]));
        assert_eq!(parse_schedule(""), Ok(vec![]));
        assert!(parse_schedule("0,three").is_err());
        assert!(parse_schedule("-1").is_err());
        assert!(parse_schedule("400").is_err());
    }
}

//! The per-provider-and-account rate limiter every provider request waits for: a budget under
//! the provider's published limit, spaced so that no window of its length holds more.

use std::{
    collections::BTreeMap,
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};

use crate::domain::{
    catalogue::{AuthKind, CATALOGUE, ProviderId, RateLimit},
    credentials::{Credentials, keys},
};

/// Request budgets, one limiter per provider keyed by account.
pub struct RateLimits {
    limits: BTreeMap<ProviderId, (RateLimit, DefaultKeyedRateLimiter<String>)>,
    /// Requests waited for, to forget idle accounts every [`FORGET_EVERY`] of them.
    waits: AtomicU64,
}

/// Every this many requests, the accounts whose budget is whole again are forgotten, so the
/// limiters hold only the accounts in use (not every account ever synced).
const FORGET_EVERY: u64 = 1024;

/// The key of the provider account a request spends the budget of. Providers count their limits
/// per account (a HubSpot portal's app, a Mailchimp or SendGrid key, a Zapier hook, a Salesforce
/// org), not per Nexus user: two users connected to one account share its budget. The key is a
/// hash of the account's credential, never the credential itself. OAuth connections are keyed by
/// their org where the credentials name it (Salesforce) and otherwise by the Nexus user, whose
/// own provider login they are (Google Drive, Dropbox, Zoho).
pub fn account_key(provider: ProviderId, user: &str, credentials: &Credentials) -> String {
    let secret = match provider.spec().auth {
        AuthKind::OAuth2 => {
            return match credentials.get(keys::INSTANCE_URL) {
                Some(org) => format!("org:{org}"),
                None => format!("user:{user}"),
            };
        }
        AuthKind::ApiKey | AuthKind::WebhookUrl => ["apiKey", keys::ACCESS_TOKEN, "webhookUrl"]
            .iter()
            .find_map(|k| credentials.get(k)),
    };
    match secret {
        Some(secret) => {
            let digest = Sha256::digest(secret.as_bytes());
            format!("key:{}", hex::encode(&digest[..12]))
        }
        None => format!("user:{user}"),
    }
}

impl RateLimits {
    /// The catalogue's limits, with `overrides` replacing some.
    pub fn new(overrides: &BTreeMap<ProviderId, RateLimit>) -> Self {
        let limits = CATALOGUE
            .iter()
            .map(|spec| {
                let limit = overrides.get(&spec.id).copied().unwrap_or(spec.rate_limit);
                (spec.id, (limit, RateLimiter::keyed(quota(limit))))
            })
            .collect();
        Self {
            limits,
            waits: AtomicU64::new(0),
        }
    }

    /// Accounts the limiters hold state for.
    pub fn accounts(&self) -> usize {
        self.limits.values().map(|(_, limiter)| limiter.len()).sum()
    }

    /// Forgets the accounts whose budget is whole again (no request recently).
    pub fn forget_idle(&self) {
        for (_, limiter) in self.limits.values() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// The budget the service keeps under for `provider`.
    pub fn limit(&self, provider: ProviderId) -> RateLimit {
        self.limits
            .get(&provider)
            .map(|(limit, _)| *limit)
            .unwrap_or(provider.spec().rate_limit)
    }
}

/// A quota that keeps under `limit` in ANY window of its length even when network jitter
/// bunches two requests together: requests are spaced evenly (no burst) so that a window holds
/// at least one request fewer than the budget (5 % fewer for large budgets), and a budget of one
/// request is spaced 5 % wider than its window.
pub fn quota(limit: RateLimit) -> Quota {
    let requests = limit.requests.max(1);
    let window_ns = u64::from(limit.per_seconds.max(1)) * 1_000_000_000;
    let usable = u64::from((requests - requests.div_ceil(20)).max(1));
    // Rounded up, so that rounding can never fit one more request into a window.
    let period_ns = window_ns
        .div_ceil(usable)
        .max((window_ns * 21).div_ceil(20 * u64::from(requests)));
    Quota::with_period(Duration::from_nanos(period_ns.max(1_000)))
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
}

/// Waits for the rate limiter of one provider account before each request.
#[derive(Clone)]
pub struct Throttle {
    limits: Arc<RateLimits>,
    provider: ProviderId,
    account: String,
}

impl Throttle {
    pub fn new(limits: Arc<RateLimits>, provider: ProviderId, account: String) -> Self {
        Self {
            limits,
            provider,
            account,
        }
    }

    pub async fn wait(&self) {
        if let Some((_, limiter)) = self.limits.limits.get(&self.provider) {
            limiter.until_key_ready(&self.account).await;
        }
        if self
            .limits
            .waits
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(FORGET_EVERY)
        {
            self.limits.forget_idle();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(pairs: &[(&str, &str)]) -> Credentials {
        Credentials::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// Issue 26, item 8: the budget was kept per Nexus user, so two users on one provider
    /// account spent twice its limit between them.
    #[test]
    fn one_provider_account_is_one_budget_whoever_connected_it() {
        let token = creds(&[("accessToken", "pat-na1-SECRET")]);
        let a = account_key(ProviderId::Hubspot, "ada", &token);
        let b = account_key(ProviderId::Hubspot, "bob", &token);
        assert_eq!(a, b);
        assert!(!a.contains("SECRET"), "{a}");
        let other = creds(&[("accessToken", "pat-na1-OTHER")]);
        assert_ne!(a, account_key(ProviderId::Hubspot, "ada", &other));
        let hook = creds(&[("webhookUrl", "https://hooks.zapier.com/hooks/catch/1/abc/")]);
        assert_eq!(
            account_key(ProviderId::Zapier, "ada", &hook),
            account_key(ProviderId::Zapier, "bob", &hook)
        );
        let org = creds(&[
            (keys::ACCESS_TOKEN, "00D-rotating"),
            (keys::INSTANCE_URL, "https://acme.my.salesforce.com"),
        ]);
        assert_eq!(
            account_key(ProviderId::Salesforce, "ada", &org),
            account_key(ProviderId::Salesforce, "bob", &org)
        );
        // A personal OAuth login is the user's own.
        let drive = creds(&[(keys::ACCESS_TOKEN, "ya29.x")]);
        assert_ne!(
            account_key(ProviderId::GoogleDrive, "ada", &drive),
            account_key(ProviderId::GoogleDrive, "bob", &drive)
        );
    }

    /// Issue 26, item 8: the limiters kept every account ever synced.
    #[tokio::test]
    async fn idle_accounts_are_forgotten() {
        let limit = RateLimit {
            requests: 1000,
            per_seconds: 1,
        };
        let limits = Arc::new(RateLimits::new(&BTreeMap::from([(
            ProviderId::Hubspot,
            limit,
        )])));
        for n in 0..50 {
            Throttle::new(Arc::clone(&limits), ProviderId::Hubspot, format!("a{n}"))
                .wait()
                .await;
        }
        assert_eq!(limits.accounts(), 50);
        // Each account's budget is whole again about a millisecond after its request.
        loop {
            limits.forget_idle();
            if limits.accounts() == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
}

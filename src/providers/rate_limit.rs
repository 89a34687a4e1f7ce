//! The per-provider-and-account rate limiter every provider request waits for: a budget under
//! the provider's published limit, spaced so that no window of its length holds more.

use std::{collections::BTreeMap, num::NonZeroU32, sync::Arc, time::Duration};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::domain::catalogue::{CATALOGUE, ProviderId, RateLimit};

/// Request budgets, one limiter per provider keyed by account.
pub struct RateLimits {
    limits: BTreeMap<ProviderId, (RateLimit, DefaultKeyedRateLimiter<String>)>,
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
        Self { limits }
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
    }
}

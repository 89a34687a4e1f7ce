//! One request budget for every Stripe call of this process (event processor, reconciler and
//! RPCs alike): a global limit and a per-endpoint one, as Stripe counts them. Requests wait
//! for their turn instead of earning a 429. Every call is counted by endpoint and outcome.

use std::{future::Future, time::Instant};

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, RateLimiter};

use crate::{domain::catalogue::RateLimit, providers::quota};

/// Stripe's default limit per endpoint (e.g. `GET /v1/subscriptions/{id}`), in requests/s.
const STRIPE_ENDPOINT_LIMIT: u32 = 25;

pub struct StripeBudget {
    global: DefaultDirectRateLimiter,
    endpoints: DefaultKeyedRateLimiter<&'static str>,
}

impl StripeBudget {
    /// At most `per_second` requests a second in all, and no more than Stripe's per-endpoint
    /// limit on any one endpoint.
    pub fn new(per_second: u32) -> Self {
        let limit = |requests| RateLimit {
            requests,
            per_seconds: 1,
        };
        Self {
            global: RateLimiter::direct(quota(limit(per_second.max(1)))),
            endpoints: RateLimiter::keyed(quota(limit(per_second.clamp(1, STRIPE_ENDPOINT_LIMIT)))),
        }
    }

    /// Waits for a turn on `endpoint`, sends the request and records how it went.
    pub async fn call<T, E>(
        &self,
        endpoint: &'static str,
        request: impl Future<Output = Result<T, E>>,
        class: impl Fn(&E) -> &'static str,
    ) -> Result<T, E> {
        self.endpoints.until_key_ready(&endpoint).await;
        self.global.until_ready().await;
        let started = Instant::now();
        let result = request.await;
        let status = match &result {
            Ok(_) => "ok",
            Err(e) => class(e),
        };
        metrics::counter!("stripe_requests_total", "endpoint" => endpoint, "status" => status)
            .increment(1);
        metrics::histogram!("stripe_request_duration_seconds", "endpoint" => endpoint)
            .record(started.elapsed().as_secs_f64());
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_are_spaced_under_the_budget() {
        let budget = StripeBudget::new(50);
        let start = std::time::Instant::now();
        for _ in 0..21 {
            let r: Result<(), ()> = budget.call("GET /v1/x", async { Ok(()) }, |_| "e").await;
            assert!(r.is_ok());
        }
        // 50/s, evenly spaced with margin: 21 requests take at least 20 gaps of 20 ms.
        assert!(
            start.elapsed() >= std::time::Duration::from_millis(400),
            "{:?}",
            start.elapsed()
        );
    }
}

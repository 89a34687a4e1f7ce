//! One request budget for every Stripe call of this process (event processor, reconciler and
//! RPCs alike): a global limit and a per-endpoint one, as Stripe counts them. Requests wait
//! for their turn instead of earning a 429. Every call is counted by endpoint and outcome.
//!
//! The callers of one endpoint wait in line: one at a time takes the endpoint's turn and then
//! the global one. (When each took its endpoint turn on its own, callers that had it piled up
//! behind a busy global budget and went out together once the other endpoints fell quiet: 43
//! requests on one endpoint in a second, over Stripe's 25.)

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::Instant,
};

use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    middleware::NoOpMiddleware,
    state::{InMemoryState, NotKeyed, keyed::DefaultKeyedStateStore},
};

use crate::{domain::catalogue::RateLimit, providers::quota};

/// Stripe's default limit per endpoint (e.g. `GET /v1/subscriptions/{id}`), in requests/s.
const STRIPE_ENDPOINT_LIMIT: u32 = 25;

type Direct<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;
type Keyed<C> = RateLimiter<
    &'static str,
    DefaultKeyedStateStore<&'static str>,
    C,
    NoOpMiddleware<<C as Clock>::Instant>,
>;

/// The budget, on the real clock (or a fake one in tests).
pub struct StripeBudget<C: Clock = DefaultClock> {
    clock: C,
    global: Direct<C>,
    endpoints: Keyed<C>,
    /// The line of each endpoint's callers waiting for their turns.
    lines: Mutex<HashMap<&'static str, Arc<tokio::sync::Mutex<()>>>>,
}

impl StripeBudget {
    /// At most `per_second` requests a second in all, and no more than Stripe's per-endpoint
    /// limit on any one endpoint.
    pub fn new(per_second: u32) -> Self {
        Self::with_clock(per_second, DefaultClock::default())
    }
}

impl<C: Clock + Clone> StripeBudget<C> {
    pub fn with_clock(per_second: u32, clock: C) -> Self {
        let limit = |requests| {
            quota(RateLimit {
                requests,
                per_seconds: 1,
            })
        };
        let (global, endpoint): (Quota, Quota) = (
            limit(per_second.max(1)),
            limit(per_second.clamp(1, STRIPE_ENDPOINT_LIMIT)),
        );
        Self {
            global: RateLimiter::direct_with_clock(global, clock.clone()),
            endpoints: RateLimiter::dashmap_with_clock(endpoint, clock.clone()),
            clock,
            lines: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `endpoint`'s turn if it has come, or says how long until it may have.
    fn endpoint_turn(&self, endpoint: &'static str) -> Result<(), std::time::Duration> {
        self.endpoints
            .check_key(&endpoint)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Takes a turn of the global budget if it has come, or says how long until it may have.
    fn global_turn(&self) -> Result<(), std::time::Duration> {
        self.global
            .check()
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// The line of `endpoint`'s callers.
    fn line(&self, endpoint: &'static str) -> Arc<tokio::sync::Mutex<()>> {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(lines.entry(endpoint).or_default())
    }

    /// Waits in `endpoint`'s line for a turn on the endpoint, then for a turn of the global
    /// budget; sends the request and records how it went.
    pub async fn call<T, E>(
        &self,
        endpoint: &'static str,
        request: impl Future<Output = Result<T, E>>,
        class: impl Fn(&E) -> &'static str,
    ) -> Result<T, E> {
        {
            let line = self.line(endpoint);
            let _first_in_line = line.lock().await;
            while let Err(wait) = self.endpoint_turn(endpoint) {
                tokio::time::sleep(wait).await;
            }
            while let Err(wait) = self.global_turn() {
                tokio::time::sleep(wait).await;
            }
        }
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
    use std::time::Duration;

    use governor::clock::{FakeRelativeClock, Reference};

    use super::*;
    use crate::providers::{Jitter, most_in_any_window};

    const ENDPOINTS: [&str; 6] = [
        "POST /v1/checkout/sessions",
        "GET /v1/invoices/{id}",
        "POST /v1/subscriptions/{id}",
        "GET /v1/customers/{id}",
        "GET /v1/events",
        "GET /v1/subscriptions/{id}",
    ];

    /// Eager callers on several endpoints (one of them hot) take their turns as `call` does
    /// (in their endpoint's line, one at a time: the endpoint's turn, then the global one), on
    /// a fake clock; each request then reaches Stripe up to one global spacing late. Stripe
    /// never sees more than the budget in any second overall, nor more than its per-endpoint
    /// limit on one endpoint (also when the other endpoints fall quiet and the hot one's
    /// callers have been queueing behind the global budget), so it never answers 429.
    #[test]
    fn the_budget_keeps_under_stripes_limits_in_every_second_on_a_fake_clock() {
        for (per_second, endpoints) in [(5, 3), (25, 3), (80, 3), (80, 5), (100, 6)] {
            let clock = FakeRelativeClock::default();
            let budget = StripeBudget::with_clock(per_second, clock.clone());
            let start = clock.now();
            let spacing = quota(RateLimit {
                requests: per_second,
                per_seconds: 1,
            })
            .replenish_interval();
            let mut jitter = Jitter::new(u64::from(per_second));
            // Each caller: its endpoint, and whether it already holds the endpoint's turn.
            // Three or more endpoints, one of them hot; with five or six the endpoints ask for
            // more than the global budget, so callers that have their endpoint's turn queue up
            // behind the global one.
            let names = &ENDPOINTS[..endpoints];
            let mut callers: Vec<(&'static str, bool)> = (0..12 * endpoints)
                .map(|i| (names[(i % (endpoints + 1)).min(endpoints - 1)], false))
                .collect();
            let mut sent: Vec<(&'static str, Duration)> = Vec::new();
            let hot = names[endpoints - 1];
            let total = 40 * per_second as usize;
            while sent.len() < total {
                let mut earliest = Duration::from_secs(3600);
                // Half way, every endpoint but the hot one falls quiet (the hot one's callers
                // have been queueing behind the global budget until then).
                let quiet = sent.len() >= total / 2;
                for i in 0..callers.len() {
                    let (endpoint, has_turn) = callers[i];
                    if quiet && endpoint != hot && !has_turn {
                        continue;
                    }
                    // First in its endpoint's line: nobody else of the endpoint holds its turn.
                    let first_in_line = !callers.iter().any(|(e, held)| *e == endpoint && *held);
                    let (endpoint, has_turn) = &mut callers[i];
                    if !*has_turn && first_in_line {
                        match budget.endpoint_turn(endpoint) {
                            Ok(()) => *has_turn = true,
                            Err(wait) => earliest = earliest.min(wait),
                        }
                    }
                    if *has_turn {
                        match budget.global_turn() {
                            Ok(()) => {
                                *has_turn = false;
                                let at: Duration = clock.now().duration_since(start).into();
                                sent.push((endpoint, at + jitter.below(spacing)));
                            }
                            Err(wait) => earliest = earliest.min(wait),
                        }
                    }
                }
                clock.advance(earliest.max(Duration::from_micros(1)));
            }
            let second = Duration::from_secs(1);
            let mut all: Vec<Duration> = sent.iter().map(|(_, at)| *at).collect();
            all.sort();
            let most = most_in_any_window(&all, second);
            assert!(
                most <= per_second as usize,
                "{per_second}/s: {most} in one second"
            );
            for endpoint in names {
                let mut at: Vec<Duration> = sent
                    .iter()
                    .filter(|(e, _)| e == endpoint)
                    .map(|(_, at)| *at)
                    .collect();
                at.sort();
                let most = most_in_any_window(&at, second);
                assert!(
                    most <= STRIPE_ENDPOINT_LIMIT as usize,
                    "{per_second}/s: {most} on {endpoint} in one second"
                );
            }
            // The budget is used: most of what the quotas allow (the global one, less its
            // margin of one request or 5 %; three endpoints at Stripe's limit, likewise).
            // (Over the first half, while every endpoint asks.)
            let usable = |n: u32| f64::from(n - n.div_ceil(20).min(n - 1));
            let allowed = usable(per_second).min(endpoints as f64 * usable(STRIPE_ENDPOINT_LIMIT));
            let first_half = &all[..total / 2];
            let span = first_half.last().copied().unwrap_or_default().as_secs_f64();
            let rate = first_half.len() as f64 / span;
            assert!(
                rate >= 0.8 * allowed,
                "{per_second}/s: only {rate:.1}/s of {allowed}"
            );
        }
    }

    /// `call` on the real clock waits its turn: 21 requests under 50/s cannot all be sent in
    /// less than 20 spacings. (A lower bound: true however busy the machine is.)
    #[tokio::test]
    async fn requests_are_spaced_under_the_budget() {
        let budget = StripeBudget::new(50);
        let start = std::time::Instant::now();
        for _ in 0..21 {
            let r: Result<(), ()> = budget.call("GET /v1/x", async { Ok(()) }, |_| "e").await;
            assert!(r.is_ok());
        }
        assert!(
            start.elapsed() >= Duration::from_millis(400),
            "{:?}",
            start.elapsed()
        );
    }
}

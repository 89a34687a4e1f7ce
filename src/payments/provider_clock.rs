//! The payment provider's own clock, as its answers tell it. Event times (`created`) are the
//! provider's; comparing them with this host's clock lets a skewed host skip real changes or
//! let an older fetch overwrite a newer snapshot. Every answer's `Date` header gives a lower
//! estimate of the offset between the two clocks: the answer was written at or after `Date`
//! (one-second resolution, truncated) and before it arrived here, so
//! `provider_time >= host_time + (Date - arrival)`. [`ProviderClock::now`] corrects this
//! host's time by that offset when it is larger than the header's resolution can explain.

use std::{
    collections::VecDeque,
    sync::Mutex,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};

/// Offsets within this are the `Date` header's truncation and the round trip, not skew.
const SKEW_NOISE_MS: i64 = 2_000;
/// Answers of this long ago still count: each gives a lower bound, the largest is the best.
const WINDOW: Duration = Duration::from_secs(300);

#[derive(Debug, Default)]
pub struct ProviderClock {
    /// Recent bounds of the offset (milliseconds to add to this host's time), oldest first.
    samples: Mutex<VecDeque<(Instant, i64)>>,
}

impl ProviderClock {
    /// Learns from an answer's `Date` header that arrived at `arrived` (this host's time).
    pub fn observe(&self, date: Option<&http::HeaderValue>, arrived: DateTime<Utc>) {
        let Some(date) = date
            .and_then(|d| d.to_str().ok())
            .and_then(|d| DateTime::parse_from_rfc2822(d).ok())
        else {
            return;
        };
        let offset = (date.with_timezone(&Utc) - arrived).num_milliseconds();
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        while samples
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > WINDOW)
        {
            samples.pop_front();
        }
        samples.push_back((now, offset));
        if samples.len() > 256 {
            samples.pop_front();
        }
    }

    /// The provider's time now: this host's, corrected by the largest recent bound of the
    /// offset when it exceeds what the `Date` header's resolution can explain (two seconds).
    /// Within that, the two clocks are taken as agreeing (the freshness rules allow a second).
    pub fn now(&self) -> DateTime<Utc> {
        let now = Utc::now();
        let offset = self
            .samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(_, offset)| *offset)
            .max();
        match offset {
            Some(offset) if offset.abs() > SKEW_NOISE_MS => {
                now + chrono::Duration::milliseconds(offset)
            }
            _ => now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_is_a_lower_bound_from_the_date_header() {
        let clock = ProviderClock::default();
        let arrived = DateTime::parse_from_rfc3339("2026-12-04T10:00:00.800Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default();
        // The provider's clock runs two minutes ahead.
        let date = http::HeaderValue::from_static("Fri, 04 Dec 2026 10:02:00 GMT");
        clock.observe(Some(&date), arrived);
        let ahead = clock.now() - Utc::now();
        assert!(ahead > chrono::Duration::seconds(118) && ahead <= chrono::Duration::seconds(120));
        // Unreadable headers teach nothing.
        let fresh = ProviderClock::default();
        fresh.observe(Some(&http::HeaderValue::from_static("yesterday")), arrived);
        assert!((fresh.now() - Utc::now()).num_seconds().abs() < 2);
    }
}

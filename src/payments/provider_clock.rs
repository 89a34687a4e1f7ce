//! The payment provider's own clock, as its answers tell it. Event times (`created`) are the
//! provider's; comparing them with this host's clock lets a skewed host skip real changes or
//! let an older fetch overwrite a newer snapshot. Every answer's `Date` header gives a lower
//! estimate of the offset between the two clocks: the answer was written at or after `Date`
//! (one-second resolution, truncated) and before it arrived here, so
//! `provider_time >= host_time + (Date - arrival)`. [`ProviderClock::now`] corrects this
//! host's time by that offset when it is larger than the header's resolution can explain.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use chrono::{DateTime, Utc};

/// Offsets within this are the `Date` header's truncation and the round trip, not skew.
const SKEW_NOISE_MS: i64 = 2_000;

#[derive(Debug, Default)]
pub struct ProviderClock {
    /// Milliseconds to add to this host's time (the latest answer's bound).
    offset_ms: AtomicI64,
    seen: AtomicBool,
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
        // Kept steady within the header's resolution, so times taken on this host stay in
        // order; a larger change is the provider's (or this host's) clock being set.
        let current = self.offset_ms.load(Ordering::Relaxed);
        if !self.seen.load(Ordering::Relaxed) || (offset - current).abs() > SKEW_NOISE_MS {
            self.offset_ms.store(offset, Ordering::Relaxed);
            self.seen.store(true, Ordering::Relaxed);
        }
    }

    /// The provider's time now: this host's, corrected by the offset the answers showed when
    /// it exceeds what the `Date` header's resolution can tell (two seconds). Within that, the
    /// clocks are taken as agreeing (the freshness rules allow for one second).
    pub fn now(&self) -> DateTime<Utc> {
        let now = Utc::now();
        let offset = self.offset_ms.load(Ordering::Relaxed);
        if !self.seen.load(Ordering::Relaxed) || offset.abs() <= SKEW_NOISE_MS {
            return now;
        }
        now + chrono::Duration::milliseconds(offset)
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

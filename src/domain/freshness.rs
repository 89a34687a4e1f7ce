//! Which of two views of one provider object is newer, and whether an invoice may move from one
//! status to another. Pure rules: no I/O, no clock.
//!
//! Stored state carries `state_as_of`, the instant it is known to have been current. New
//! evidence is either an event's snapshot, known only to the second (`created` has one-second
//! resolution, so the object was in that state at some instant of that second), or a fetch,
//! whose answer is at least as new as the moment the request started.

use chrono::{DateTime, Duration, Utc};

use super::invoice::InvoiceStatus;

/// Evidence of an object's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// An event's `data.object`, created during the second that starts at this instant.
    Snapshot(DateTime<Utc>),
    /// A fetch (or an update's answer) that started at this instant.
    Fetched(DateTime<Utc>),
}

impl Evidence {
    /// The `state_as_of` stored with state taken from this evidence.
    pub fn as_of(self) -> DateTime<Utc> {
        match self {
            Self::Snapshot(t) | Self::Fetched(t) => t,
        }
    }
}

/// How new evidence compares with what is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Newer than the stored state (or nothing is stored): apply it.
    Newer,
    /// Older than the stored state: skip it.
    Stale,
    /// Cannot be told (same second): fetch the object.
    Unclear,
}

/// Compares `evidence` with state stored as current at `stored_as_of`.
pub fn freshness(stored_as_of: Option<DateTime<Utc>>, evidence: Evidence) -> Freshness {
    let Some(stored) = stored_as_of else {
        return Freshness::Newer;
    };
    // State stored from a snapshot is known only to its second (a whole second: a fetch's
    // start is never one in practice).
    let from_snapshot = stored.timestamp_subsec_nanos() == 0;
    match evidence {
        // A fetch that started after the stored state's instant (after its whole second, for
        // a snapshot) saw at least it.
        Evidence::Fetched(started) if from_snapshot && started >= stored + Duration::seconds(1) => {
            Freshness::Newer
        }
        Evidence::Fetched(started) if !from_snapshot && started >= stored => Freshness::Newer,
        // One that started a whole second before it did not. Fetch times are the provider's
        // time as this host can tell it (`payments::provider_clock`), to within a second.
        Evidence::Fetched(started) if started + Duration::seconds(1) <= stored => Freshness::Stale,
        // In between (the second of a stored snapshot, or a fetch just before the stored one):
        // ask again, after that second.
        Evidence::Fetched(_) => Freshness::Unclear,
        // The snapshot's second lies wholly after the stored instant.
        Evidence::Snapshot(second) if second > stored => Freshness::Newer,
        // ... or wholly before it.
        Evidence::Snapshot(second) if second + Duration::seconds(1) <= stored => Freshness::Stale,
        Evidence::Snapshot(_) => Freshness::Unclear,
    }
}

/// An invoice's status only moves forward: draft -> open -> paid / void / uncollectible. An
/// uncollectible invoice can still be paid or voided; paid and void are final.
pub fn invoice_may_move(from: InvoiceStatus, to: InvoiceStatus) -> bool {
    use InvoiceStatus::*;
    let rank = |s: InvoiceStatus| match s {
        Draft => 0,
        Open => 1,
        Uncollectible => 2,
        Paid | Void => 3,
    };
    from == to || rank(to) > rank(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64, millis: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap_or_default()
            + Duration::milliseconds(millis)
    }

    #[test]
    fn snapshots_are_compared_by_whole_seconds() {
        use Evidence::Snapshot as S;
        assert_eq!(freshness(None, S(t(0, 0))), Freshness::Newer);
        // Stored from a snapshot at second 5.
        let stored = Some(t(5, 0));
        assert_eq!(freshness(stored, S(t(6, 0))), Freshness::Newer);
        assert_eq!(freshness(stored, S(t(4, 0))), Freshness::Stale);
        assert_eq!(freshness(stored, S(t(5, 0))), Freshness::Unclear);
        // Stored from a fetch that started at 5.3 s: an event of second 5 may be later.
        let fetched = Some(t(5, 300));
        assert_eq!(freshness(fetched, S(t(5, 0))), Freshness::Unclear);
        assert_eq!(freshness(fetched, S(t(4, 0))), Freshness::Stale);
        assert_eq!(freshness(fetched, S(t(6, 0))), Freshness::Newer);
    }

    #[test]
    fn a_fetch_never_overwrites_state_known_to_be_newer_than_its_start() {
        use Evidence::Fetched as F;
        // Stored from a snapshot of second 5: a fetch in that second may be older than it
        // (issue 25, item 10: it used to overwrite the snapshot).
        let stored = Some(t(5, 0));
        assert_eq!(freshness(stored, F(t(5, 0))), Freshness::Unclear);
        assert_eq!(freshness(stored, F(t(5, 1))), Freshness::Unclear);
        assert_eq!(freshness(stored, F(t(6, 0))), Freshness::Newer);
        assert_eq!(freshness(stored, F(t(4, 999))), Freshness::Unclear);
        assert_eq!(freshness(stored, F(t(4, 0))), Freshness::Stale);
        // Stored from a fetch that started at 5.3 s: a later start saw at least it; one a
        // second earlier did not.
        let fetched = Some(t(5, 300));
        assert_eq!(freshness(fetched, F(t(5, 301))), Freshness::Newer);
        assert_eq!(freshness(fetched, F(t(5, 299))), Freshness::Unclear);
        assert_eq!(freshness(fetched, F(t(4, 300))), Freshness::Stale);
    }

    #[test]
    fn invoice_status_moves_forward_only() {
        use InvoiceStatus::*;
        assert!(invoice_may_move(Draft, Open));
        assert!(invoice_may_move(Open, Paid));
        assert!(invoice_may_move(Uncollectible, Paid));
        assert!(invoice_may_move(Paid, Paid));
        assert!(!invoice_may_move(Paid, Open));
        assert!(!invoice_may_move(Void, Paid));
        assert!(!invoice_may_move(Paid, Uncollectible));
        assert!(!invoice_may_move(Open, Draft));
    }
}

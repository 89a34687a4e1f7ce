//! SQLite's hot read (issue 27): the limit check's one statement (`STANDING_QUERY`), run on the
//! calling thread through a few read-only connections of its own.
//!
//! sqlx's SQLite driver runs each connection on a thread of its own and hands every statement
//! over through channels. For a primary-key read that takes SQLite a few microseconds, that
//! hand-over (two thread wake-ups and their context switches) was most of the call: profiled
//! under h2load, 68 % of the service's time was the kernel scheduling those threads. Reads in
//! WAL mode never wait for writers, so running this one on the caller's thread blocks it for
//! microseconds only. Anything unexpected (a busy database, a value this path cannot read) is
//! `None`, and the caller asks through sqlx as before: this path can only be faster, never
//! different.

use std::{
    path::{Path, PathBuf},
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, NaiveDateTime, Utc};
use rusqlite::{Connection, OpenFlags};

use super::rows::{STANDING_QUERY, SubscriptionRow};
use crate::domain::{Usage, UserId, subscription::Subscription};

/// Read-only connections: as many as requests that may read at the same instant on a small
/// machine; a caller finding them all busy waits for one (microseconds).
const CONNECTIONS: usize = 4;

pub(super) struct FastReads {
    path: PathBuf,
    /// Opened at the first read, after the migrations made the tables; `None` when they could
    /// not be opened (then every read goes through sqlx).
    connections: OnceLock<Option<Vec<Mutex<Connection>>>>,
    next: AtomicUsize,
}

impl FastReads {
    /// `None` for an in-memory database (no file another connection could open).
    pub fn for_file(path: &Path) -> Option<Self> {
        let name = path.to_string_lossy();
        // sqlx names an in-memory database `file:sqlx-in-memory-N`: no file to open.
        if name.is_empty()
            || name.starts_with(":memory:")
            || name.starts_with("file:")
            || name.contains("mode=memory")
        {
            return None;
        }
        Some(Self {
            path: path.to_path_buf(),
            connections: OnceLock::new(),
            next: AtomicUsize::new(0),
        })
    }

    fn connections(&self) -> Option<&[Mutex<Connection>]> {
        self.connections
            .get_or_init(|| {
                let opened: Vec<Mutex<Connection>> = (0..CONNECTIONS)
                    .filter_map(|_| {
                        let flags =
                            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
                        let connection = Connection::open_with_flags(&self.path, flags).ok()?;
                        // Short: this runs on an async worker thread. A read that would wait
                        // longer goes through sqlx instead.
                        connection.busy_timeout(Duration::from_millis(20)).ok()?;
                        Some(Mutex::new(connection))
                    })
                    .collect();
                if opened.len() < CONNECTIONS {
                    tracing::warn!(
                        "cannot open read-only SQLite connections; limit checks read through sqlx"
                    );
                    return None;
                }
                Some(opened)
            })
            .as_deref()
    }

    /// The user's subscription and counts, or `None` when this path cannot answer.
    pub fn standing(&self, user: &UserId) -> Option<(Option<Subscription>, Usage)> {
        let connections = self.connections()?;
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        // A free connection if there is one, else wait for one.
        let guard = (0..connections.len())
            .find_map(|i| connections[(first + i) % connections.len()].try_lock().ok())
            .or_else(|| connections[first % connections.len()].lock().ok())?;
        let mut statement = guard.prepare_cached(STANDING_QUERY).ok()?;
        let read = statement
            .query_row([user.as_str()], |row| Ok(read_row(row)))
            .ok()??;
        Some(read)
    }
}

/// One row of `STANDING_QUERY`, or `None` for anything this path does not expect.
fn read_row(row: &rusqlite::Row<'_>) -> Option<(Option<Subscription>, Usage)> {
    let text = |i: usize| row.get::<_, Option<String>>(i).ok();
    let time = |i: usize| -> Option<Option<DateTime<Utc>>> {
        match text(i)? {
            None => Some(None),
            Some(t) => parse_time(&t).map(Some),
        }
    };
    let subscribed: bool = row.get(12).ok()?;
    let usage = Usage {
        cards: u64::try_from(row.get::<_, i64>(18).ok()?).ok()?,
        contacts: u64::try_from(row.get::<_, i64>(19).ok()?).ok()?,
    };
    if !subscribed {
        return Some((None, usage));
    }
    let subscription = SubscriptionRow {
        user_id: text(0)??,
        tier: text(1)??,
        status: text(2)??,
        provider: text(3)?,
        provider_customer_id: text(4)?,
        provider_subscription_id: text(5)?,
        current_period_start: time(6)?,
        current_period_end: time(7)?,
        cancel_at_period_end: row.get(8).ok()?,
        cancel_at: time(9)?,
        past_due_since: time(10)?,
        state_as_of: time(11)?,
        billing_interval: text(13)?,
        currency: text(14)?,
        trial_end: time(15)?,
        overage_enabled: row.get(16).ok()?,
        extra_item_id: text(17)?,
    };
    Some((Subscription::try_from(subscription).ok(), usage)).filter(|(s, _)| s.is_some())
}

/// A timestamp as this service and sqlx write it (RFC 3339), or as SQL and seeds may
/// (`YYYY-MM-DD HH:MM:SS[.fff]`, UTC).
fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
        .map(|t| t.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_read_as_sqlx_writes_them_and_odd_ones_are_refused() {
        let want = DateTime::parse_from_rfc3339("2026-12-04T22:06:09.417727Z")
            .map(|t| t.with_timezone(&Utc))
            .ok();
        for text in [
            "2026-12-04T22:06:09.417727+00:00",
            "2026-12-04T22:06:09.417727Z",
            "2026-12-04 22:06:09.417727",
        ] {
            assert_eq!(parse_time(text), want, "{text}");
        }
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn the_read_answers_from_a_file_database() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("reads.db");
        let writer = Connection::open(&path)?;
        writer.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE subscriptions (user_id TEXT PRIMARY KEY, tier TEXT, status TEXT,
                 provider TEXT, provider_customer_id TEXT, provider_subscription_id TEXT,
                 current_period_start TEXT, current_period_end TEXT,
                 cancel_at_period_end INTEGER, cancel_at TEXT, past_due_since TEXT,
                 state_as_of TEXT, billing_interval TEXT, currency TEXT, trial_end TEXT,
                 overage_enabled INTEGER NOT NULL DEFAULT 0, extra_item_id TEXT);
             CREATE TABLE usage_counts (user_id TEXT PRIMARY KEY, cards INTEGER, contacts INTEGER);
             INSERT INTO subscriptions VALUES ('ann', 'pro', 'active', 'stripe', 'cus_1', 'sub_1',
                 '2026-12-01T00:00:00+00:00', '2027-01-01T00:00:00.25+00:00', 0, NULL, NULL, NULL,
                 'year', 'eur', NULL, 0, NULL);
             INSERT INTO usage_counts VALUES ('ann', 2, 70);",
        )?;
        let reads = FastReads::for_file(&path).ok_or("no fast reads for a file")?;
        let user = |id: &str| UserId::parse(id.to_string());
        let (sub, usage) = reads.standing(&user("ann")?).ok_or("no answer")?;
        let sub = sub.ok_or("no subscription")?;
        assert_eq!(sub.tier, crate::domain::Tier::Pro);
        assert_eq!(
            sub.current_period_end,
            parse_time("2027-01-01T00:00:00.25Z")
        );
        assert_eq!(
            usage,
            Usage {
                cards: 2,
                contacts: 70
            }
        );
        assert_eq!(
            reads.standing(&user("bob")?),
            Some((None, Usage::default()))
        );
        // A value this path cannot read is no answer (the caller asks sqlx), never a guess.
        writer.execute("UPDATE subscriptions SET current_period_end = 'soon'", [])?;
        assert_eq!(reads.standing(&user("ann")?), None);
        assert!(FastReads::for_file(Path::new(":memory:")).is_none());
        assert!(FastReads::for_file(Path::new("file:sqlx-in-memory-3")).is_none());
        Ok(())
    }
}

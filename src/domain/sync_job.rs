//! Sync jobs: their states, their progress, and the rule that turns a finished run into a state.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{UserId, catalogue::ProviderId};

/// Where a job is in its life. QUEUED and RUNNING are active; the others are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Partial,
    Failed,
    /// Stopped by its user (CancelSyncJob).
    Canceled,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        Self::Queued,
        Self::Running,
        Self::Succeeded,
        Self::Partial,
        Self::Failed,
        Self::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Partial => "partial",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
        }
    }

    pub fn is_final(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }
}

impl FromStr for JobState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("unknown job state {s:?}"))
    }
}

/// Which way a job moves contacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Push,
    Import,
    Both,
}

impl Direction {
    /// A direction covering both `self` and `other`.
    pub fn and(self, other: Direction) -> Direction {
        if self == other { self } else { Direction::Both }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Push => "push",
            Self::Import => "import",
            Self::Both => "both",
        }
    }
}

impl FromStr for Direction {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::Push, Self::Import, Self::Both]
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("unknown sync direction {s:?}"))
    }
}

/// One contact the provider refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordFailure {
    pub email: String,
    pub message: String,
}

/// At most this many failures are kept on a job (the count is always exact).
pub const MAX_LISTED_FAILURES: usize = 100;

/// What a job has done so far; saved after every batch, so a resumed job continues from
/// `checkpoint` (the id of the last contact handled) without sending anything twice.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JobProgress {
    pub checkpoint: Option<String>,
    pub contacts_done: u64,
    pub contacts_total: u64,
    pub contacts_skipped: u64,
    pub skipped_reason: Option<String>,
    pub contacts_failed: u64,
    pub failures: Vec<RecordFailure>,
}

impl JobProgress {
    /// Adds a batch's refused records: the count always, the details up to the cap.
    pub fn add_failures(&mut self, count: u64, failures: Vec<RecordFailure>) {
        self.contacts_failed += count;
        let room = MAX_LISTED_FAILURES.saturating_sub(self.failures.len());
        self.failures.extend(failures.into_iter().take(room));
    }

    /// Adds contacts that were not sent, and why.
    pub fn add_skipped(&mut self, count: u64, reason: &str) {
        if count == 0 {
            return;
        }
        self.contacts_skipped += count;
        match &mut self.skipped_reason {
            Some(reasons) if !reasons.contains(reason) => {
                reasons.push_str("; ");
                reasons.push_str(reason);
            }
            Some(_) => {}
            None => self.skipped_reason = Some(reason.to_string()),
        }
    }

    /// The final state of a run that reached the end of the contacts: FAILED when the
    /// provider refused every contact that was sent (a list that does not exist, say), PARTIAL
    /// when it refused some.
    pub fn final_state(&self) -> JobState {
        let sent = self.contacts_done.saturating_sub(self.contacts_skipped);
        if self.contacts_failed > 0 && self.contacts_failed >= sent {
            JobState::Failed
        } else if self.contacts_failed > 0 {
            JobState::Partial
        } else {
            JobState::Succeeded
        }
    }
}

/// A position in push order: a contact's change number and its id. The change number is
/// assigned by the database on every insert and update of a contact (migration
/// `20261205000012_contact_change_order`), never by a clock: on SQLite a counter bumped under
/// the write lock (so numbers follow commit order), on PostgreSQL the writing transaction's id.
/// A push sends the contacts after its start key; a successful push saves where it got to on
/// the integration (the watermark, never past the push's horizon), so the next push starts
/// there.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PushKey {
    pub seq: i64,
    pub id: String,
}

impl PushKey {
    /// Before every contact.
    pub fn start() -> Self {
        Self {
            seq: -1,
            id: String::new(),
        }
    }

    /// `seq|id` (an id may itself hold `|`; the number never does).
    pub fn encode(&self) -> String {
        format!("{}|{}", self.seq, self.id)
    }

    /// `None` for a key of another form (the timestamps of before the change numbers).
    pub fn decode(text: &str) -> Option<Self> {
        let (seq, id) = text.split_once('|')?;
        Some(Self {
            seq: seq.parse().ok()?,
            id: id.to_string(),
        })
    }
}

/// Where a push got to: the key of the last contact handled, and the push's horizon, the change
/// number from which a contact may still have been uncommitted when the push began (every
/// change below it was committed, so the push saw it). The watermark never passes the horizon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushCheckpoint {
    pub horizon: i64,
    pub last: PushKey,
    /// The integration's destination epoch the push began in: a checkpoint of an earlier
    /// destination is not resumed, and remembers nothing.
    pub epoch: i64,
    /// A batch on its way to a destination that cannot tell a resend (Zapier), saved before it
    /// was sent: an attempt that resumes sends its unchanged contacts again under the same key.
    pub pending: Option<PendingBatch>,
}

/// A batch sent (or about to be) to a non-idempotent destination, as first sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingBatch {
    /// Its Idempotency-Key.
    pub key: String,
    /// (contact id, fingerprint) of each contact in it.
    pub members: Vec<(String, String)>,
}

impl PushCheckpoint {
    /// Before destination epochs: `push:<horizon>:<seq>|<id>` (epoch 0).
    const PREFIX_V1: &'static str = "push:";
    const PREFIX: &'static str = "push2:";

    /// Whether a job's checkpoint is a push's.
    pub fn is_push(checkpoint: &str) -> bool {
        checkpoint.starts_with(Self::PREFIX) || checkpoint.starts_with(Self::PREFIX_V1)
    }

    /// `push2:<epoch>:<horizon>:<seq>|<id>`, then the pending batch as JSON on a line of its
    /// own.
    pub fn encode(&self) -> String {
        let base = format!(
            "{}{}:{}:{}",
            Self::PREFIX,
            self.epoch,
            self.horizon,
            self.last.encode()
        );
        match self
            .pending
            .as_ref()
            .and_then(|p| serde_json::to_string(p).ok())
        {
            Some(pending) => format!("{base}\n{pending}"),
            None => base,
        }
    }

    /// `None` for anything else, including the checkpoints of before the change numbers (the
    /// push then starts again from the watermark; what the provider holds is not sent again).
    pub fn decode(text: &str) -> Option<Self> {
        let (text, pending) = match text.split_once('\n') {
            Some((text, pending)) => (text, serde_json::from_str(pending).ok()),
            None => (text, None),
        };
        let (epoch, rest) = match text.strip_prefix(Self::PREFIX) {
            Some(rest) => {
                let (epoch, rest) = rest.split_once(':')?;
                (epoch.parse().ok()?, rest)
            }
            None => (0, text.strip_prefix(Self::PREFIX_V1)?),
        };
        let (horizon, last) = rest.split_once(':')?;
        Some(Self {
            horizon: horizon.parse().ok()?,
            last: PushKey::decode(last)?,
            epoch,
            pending,
        })
    }

    /// The watermark a finished push leaves: where it got to, but not past its horizon.
    pub fn watermark(&self) -> PushKey {
        let horizon = PushKey {
            seq: self.horizon,
            id: String::new(),
        };
        self.last.clone().min(horizon)
    }
}

/// A job as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncJob {
    pub id: String,
    pub integration_id: String,
    pub user_id: UserId,
    pub provider: ProviderId,
    pub direction: Direction,
    pub state: JobState,
    pub progress: JobProgress,
    pub last_error: Option<String>,
    /// Attempts over the job's life.
    pub attempts: u32,
    /// Attempts since the job last saved a batch (this one included while it runs): what
    /// `max_attempts` limits.
    pub attempts_in_a_row: u32,
    pub max_attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Ignore the integration's watermark and push every contact.
    pub full: bool,
    /// How many times in a row the provider's rate limit parked the job.
    pub rate_limited: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_exactly_but_listed_up_to_the_cap() {
        let mut progress = JobProgress::default();
        let failure = RecordFailure {
            email: "a@x.test".into(),
            message: "bad".into(),
        };
        progress.add_failures(150, vec![failure.clone(); 150]);
        progress.add_failures(1, vec![failure]);
        assert_eq!(progress.contacts_failed, 151);
        assert_eq!(progress.failures.len(), MAX_LISTED_FAILURES);
        assert_eq!(progress.final_state(), JobState::Failed, "nothing was sent");
        progress.contacts_done = 200;
        assert_eq!(progress.final_state(), JobState::Partial);
        assert_eq!(JobProgress::default().final_state(), JobState::Succeeded);
        let all_refused = JobProgress {
            contacts_done: 10,
            contacts_skipped: 2,
            contacts_failed: 8,
            ..JobProgress::default()
        };
        assert_eq!(all_refused.final_state(), JobState::Failed);
    }

    #[test]
    fn push_keys_round_trip_and_order() {
        let key = PushKey {
            seq: 42,
            id: "a|b".into(),
        };
        assert_eq!(PushKey::decode(&key.encode()), Some(key.clone()));
        assert_eq!(
            PushKey::decode("contact-17"),
            None,
            "an old id-only checkpoint"
        );
        assert_eq!(
            PushKey::decode("2026-11-30T10:00:00.000000Z|c1"),
            None,
            "a key of the timestamp days"
        );
        assert!(PushKey::start() < key);
        assert!(
            PushKey::start()
                < PushKey {
                    seq: 0,
                    id: "c".into()
                }
        );
    }

    #[test]
    fn a_push_never_leaves_its_watermark_past_its_horizon() {
        let checkpoint = PushCheckpoint {
            horizon: 100,
            last: PushKey {
                seq: 250,
                id: "c9".into(),
            },
            epoch: 3,
            pending: Some(PendingBatch {
                key: "k1".into(),
                members: vec![("c:1\n".into(), "f1".into())],
            }),
        };
        assert_eq!(
            PushCheckpoint::decode(&checkpoint.encode()),
            Some(checkpoint.clone())
        );
        let mark = checkpoint.watermark();
        assert!(
            mark < PushKey {
                seq: 100,
                id: "a".into()
            },
            "a change at the horizon is read again"
        );
        assert!(
            mark > PushKey {
                seq: 99,
                id: "z".into()
            }
        );
        let behind = PushCheckpoint {
            horizon: i64::MAX,
            last: PushKey {
                seq: 7,
                id: "c1".into(),
            },
            epoch: 0,
            pending: None,
        };
        assert_eq!(
            behind.watermark(),
            behind.last,
            "SQLite: commit order, no horizon"
        );
        assert_eq!(
            PushCheckpoint::decode("push:2026-11-30T10:00:00.000000Z|c1"),
            None
        );
        assert_eq!(PushCheckpoint::decode("import:3"), None);
        // Before epochs: the first destination's.
        assert_eq!(
            PushCheckpoint::decode("push:100:250|c9").map(|c| (c.epoch, c.horizon, c.last)),
            Some((
                0,
                100,
                PushKey {
                    seq: 250,
                    id: "c9".into()
                }
            ))
        );
        assert!(PushCheckpoint::is_push("push:100:250|c9"));
        assert!(PushCheckpoint::is_push(&checkpoint.encode()));
    }

    #[test]
    fn skipped_reasons_are_listed_once_each() {
        let mut progress = JobProgress::default();
        progress.add_skipped(2, "no email address");
        progress.add_skipped(0, "never shown");
        progress.add_skipped(1, "no email address");
        progress.add_skipped(1, "duplicate email address");
        assert_eq!(progress.contacts_skipped, 4);
        assert_eq!(
            progress.skipped_reason.as_deref(),
            Some("no email address; duplicate email address")
        );
    }
}

//! Bookkeeping writes after a provider call (what the provider now holds, the job's checkpoint,
//! a kept file id) are retried in place on a passing database error (a pool that had no free
//! connection within its timeout, SQLite's busy timeout), so the batch the provider already took
//! is not sent again by a retried attempt. Only when the database stays unavailable is the
//! attempt given up (and the batch, safe to resend, sent again later).

use std::{future::Future, time::Duration};

use crate::{store::StoreError, telemetry::error_chain};

/// Tries after the first.
const RETRIES: u32 = 5;

/// The pause before retry `n` (1-based): 100 ms doubling, 3.1 s over all five.
pub(super) fn pause(n: u32) -> Duration {
    Duration::from_millis(100u64 << n.saturating_sub(1).min(6))
}

/// Runs `write` until it succeeds, up to [`RETRIES`] more times on a database error.
pub(super) async fn in_place<T, F, Fut>(mut write: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut tries = 0;
    loop {
        match write().await {
            Ok(value) => return Ok(value),
            Err(e) if tries < RETRIES && passing(&e) => {
                tries += 1;
                metrics::counter!("sync_bookkeeping_retries_total").increment(1);
                tracing::warn!(error = %error_chain(&e), tries, "a bookkeeping write failed; trying again in place");
                tokio::time::sleep(pause(tries)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Errors worth trying again at once: an unreachable, busy or locked database, not the data.
fn passing(error: &StoreError) -> bool {
    error.is_temporary()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_passing_error_is_retried_and_a_lasting_one_returned() {
        let mut calls = 0;
        let done = in_place(|| {
            calls += 1;
            let fail = calls < 3;
            async move {
                if fail {
                    Err(StoreError::Database(sqlx::Error::PoolTimedOut))
                } else {
                    Ok(calls)
                }
            }
        })
        .await;
        assert!(matches!(done, Ok(3)), "{done:?}");
        let mut calls = 0;
        let lasting: Result<(), _> = in_place(|| {
            calls += 1;
            async { Err(StoreError::Database(sqlx::Error::PoolTimedOut)) }
        })
        .await;
        assert!(lasting.is_err());
        assert_eq!(calls, 1 + RETRIES as usize);
    }
}

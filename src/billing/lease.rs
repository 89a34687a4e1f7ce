//! Keeping a lease while long work runs: the event lease (`event_processor.rs`) and the
//! subscription-change lock (`plan_changes.rs`) are renewed while provider calls are in flight,
//! so a slow confirmation or cancel-and-refund cannot outlast its lease and be started a second
//! time by another worker or replica.

use std::{future::Future, time::Duration};

use crate::{store::StoreError, telemetry::error_chain};

/// Runs `work`, calling `renew` every `every` until it finishes. A renewal that fails or finds
/// the lease gone is logged: the work already started is not cut off mid provider call (its
/// own writes are guarded: an event is finished once, a stale state never overwrites a newer).
pub(super) async fn renewing<T, R, RF>(
    work: impl Future<Output = T>,
    every: Duration,
    mut renew: R,
) -> T
where
    R: FnMut() -> RF,
    RF: Future<Output = Result<bool, StoreError>>,
{
    // The renewals run beside the work, never in its way: a renewal waiting on a row the
    // work holds must not stop the work from finishing (and releasing it).
    let renewals = async {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            match renew().await {
                Ok(true) => {}
                Ok(false) => tracing::warn!("a lease was lost while its work ran"),
                Err(e) => tracing::warn!(error = %error_chain(&e), "cannot renew a lease"),
            }
        }
    };
    tokio::pin!(work);
    tokio::pin!(renewals);
    tokio::select! {
        out = &mut work => out,
        never = &mut renewals => never,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    };

    use super::*;

    /// The work ends only once it was renewed three times: it cannot end without renewals.
    #[tokio::test]
    async fn renews_while_the_work_runs_and_stops_after() {
        let renewals = Arc::new(AtomicU32::new(0));
        let (done, finished) = tokio::sync::oneshot::channel::<u32>();
        let done = Mutex::new(Some(done));
        let counted = Arc::clone(&renewals);
        let out = renewing(
            async { finished.await.unwrap_or(0) },
            Duration::from_millis(5),
            || {
                let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
                if n == 3
                    && let Some(done) = done.lock().unwrap_or_else(|e| e.into_inner()).take()
                {
                    let _ = done.send(7);
                }
                async { Ok(true) }
            },
        )
        .await;
        assert_eq!(out, 7);
        let after = renewals.load(Ordering::SeqCst);
        assert!(after >= 3, "{after}");
    }
}

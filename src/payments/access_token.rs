//! An OAuth2 client-credentials access token kept until shortly before it expires (PayPal and
//! Daraja both hand out tokens this way). One fetch at a time: callers that find the token
//! missing or stale wait for the one fetch in flight instead of each asking for a new token.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;

use super::PaymentError;

/// How long before its expiry a token is replaced.
const MARGIN: Duration = Duration::from_secs(60);

#[derive(Default)]
pub(super) struct AccessToken {
    current: Mutex<Option<(SecretString, Instant)>>,
}

/// A token as the provider issued it.
pub(super) struct Issued {
    pub token: SecretString,
    pub expires_in: Duration,
}

impl AccessToken {
    /// The cached token, or a new one from `fetch` when there is none or it expires within a
    /// minute.
    pub async fn get<F, Fut>(&self, fetch: F) -> Result<SecretString, PaymentError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Issued, PaymentError>>,
    {
        let mut current = self.current.lock().await;
        if let Some((token, expires)) = current.as_ref()
            && Instant::now() + MARGIN < *expires
        {
            return Ok(token.clone());
        }
        let issued = fetch().await?;
        *current = Some((issued.token.clone(), Instant::now() + issued.expires_in));
        Ok(issued.token)
    }

    /// Forgets `used` (the provider answered 401 to it), unless another caller already replaced it.
    pub async fn reject(&self, used: &SecretString) {
        let mut current = self.current.lock().await;
        if current
            .as_ref()
            .is_some_and(|(token, _)| token.expose_secret() == used.expose_secret())
        {
            *current = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn issued(n: u32, secs: u64) -> Result<Issued, PaymentError> {
        Ok(Issued {
            token: SecretString::from(format!("token-{n}")),
            expires_in: Duration::from_secs(secs),
        })
    }

    #[tokio::test]
    async fn a_token_is_reused_until_near_expiry_and_replaced_after_a_401() {
        let cache = AccessToken::default();
        let fetches = AtomicU32::new(0);
        let fetch = |secs| {
            let n = fetches.fetch_add(1, Ordering::SeqCst) + 1;
            async move { issued(n, secs) }
        };
        let first = cache
            .get(|| fetch(3600))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let again = cache
            .get(|| fetch(3600))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first.expose_secret(), again.expose_secret());
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        cache.reject(&first).await;
        let next = cache
            .get(|| fetch(30))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(next.expose_secret(), "token-2");
        // Expires within the margin: fetched again.
        let third = cache
            .get(|| fetch(3600))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(third.expose_secret(), "token-3");
        // A stale rejection does not drop the newer token.
        cache.reject(&first).await;
        let kept = cache
            .get(|| fetch(3600))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(kept.expose_secret(), "token-3");
    }
}

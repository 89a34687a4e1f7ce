//! `call_provider!`: one provider call of a sync attempt, with fresh credentials and retries.

/// Calls the provider with the session's credentials, kept fresh: builds the client with the
/// `Providers` method `$build`, runs `$call` with retries, and after a 401 refreshes the token
/// once and calls again. Returns from the enclosing function with the outcome when no usable
/// credentials or client can be had; otherwise evaluates to the call's result.
macro_rules! call_provider {
    ($self:ident, $session:ident, $job:ident, $shutdown:ident, $build:ident, |$client:ident| $call:expr) => {
        loop {
            if let Err(outcome) = $session.keep_fresh().await {
                return Ok(Some(outcome));
            }
            let $client = match $self.providers.$build(
                $job.provider,
                $job.user_id.as_str(),
                &$session.credentials,
                &$session.integration.settings,
            ) {
                Ok(client) => client,
                Err(e) => return Ok(Some($crate::integrations::sync_attempt::broken(e))),
            };
            match $self.with_retries($shutdown, || $call).await {
                Err($crate::providers::ProviderError::Unauthorized(reason)) => {
                    if let Err(outcome) = $session.after_unauthorized(reason).await {
                        return Ok(Some(outcome));
                    }
                }
                other => break other,
            }
        }
    };
}

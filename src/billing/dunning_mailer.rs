//! Sends the dunning outbox: each replica looks for due emails every `DUNNING_POLL_INTERVAL`,
//! claims one with a lease (so no two replicas send it), checks it is still wanted (the invoice
//! still open, the subscription still past due) and hands it to the SMTP server. A refused or
//! failed delivery is tried again with backoff (`domain::dunning::retry_delay`) and given up
//! after `MAX_ATTEMPTS`. Its own task: a slow or refusing SMTP server never holds up webhook
//! processing, which only writes rows.
//!
//! Without `SMTP_URL` (development only) the emails are written to the log, with links cut to
//! their host (an invoice link is a bearer link) and the address masked.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::Utc;
use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, MultiPart},
};
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;

use super::dunning_email::{DunningFacts, EmailBody, compose};
use crate::{
    domain::{
        Tier,
        dunning::{MAX_ATTEMPTS, StoredStanding, Verdict, retry_delay, should_send},
    },
    store::{ClaimedDunningEmail, Store, StoreError},
};

/// How long a sender holds an email it claimed (longer than one SMTP delivery may take).
const CLAIM: Duration = Duration::from_secs(120);
/// Per-delivery timeout of the SMTP client.
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Emails looked at per round.
const BATCH: u32 = 50;

/// One email on its way.
#[derive(Debug, Clone)]
pub struct OutgoingEmail {
    pub to: String,
    pub body: EmailBody,
}

/// Where emails go: an SMTP server, or the log in development.
#[async_trait]
pub trait Postman: Send + Sync {
    /// Delivers one email; the error is safe to store and log (no credentials, no address).
    async fn deliver(&self, email: &OutgoingEmail) -> Result<(), String>;
}

/// Sends through the server of `SMTP_URL`.
pub struct SmtpPostman {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl SmtpPostman {
    pub fn new(url: &SecretString, from: &str) -> Result<Self, String> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose_secret())
            // The URL may hold a password: never repeat it or lettre's view of it.
            .map_err(|_| "SMTP_URL cannot be used".to_string())?
            .timeout(Some(SMTP_TIMEOUT))
            .build();
        let from = from
            .parse()
            .map_err(|_| "EMAIL_FROM is not an address".to_string())?;
        Ok(Self { transport, from })
    }
}

#[async_trait]
impl Postman for SmtpPostman {
    async fn deliver(&self, email: &OutgoingEmail) -> Result<(), String> {
        let to: Mailbox = email
            .to
            .parse()
            .map_err(|_| "the recipient is not an address".to_string())?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(email.body.subject.clone())
            .multipart(MultiPart::alternative_plain_html(
                email.body.text.clone(),
                email.body.html.clone(),
            ))
            .map_err(|e| format!("cannot build the email: {e}"))?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            Err(e) => Err(match e.status() {
                Some(code) if e.is_permanent() => format!("refused by the SMTP server ({code})"),
                Some(code) => format!("deferred by the SMTP server ({code})"),
                None if e.is_timeout() => "the SMTP server timed out".to_string(),
                None => "cannot reach the SMTP server".to_string(),
            }),
        }
    }
}

/// Writes emails to the log (development without `SMTP_URL`).
pub struct LogPostman;

#[async_trait]
impl Postman for LogPostman {
    async fn deliver(&self, email: &OutgoingEmail) -> Result<(), String> {
        tracing::info!(
            to = %masked(&email.to),
            subject = %email.body.subject,
            text = %cut_links(&email.body.text),
            "dunning email (SMTP_URL is unset: written to the log, not sent)"
        );
        Ok(())
    }
}

/// `at` to whole microseconds, as PostgreSQL keeps it: a lease is compared for equality.
fn micros(at: chrono::DateTime<Utc>) -> chrono::DateTime<Utc> {
    chrono::DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at)
}

/// `jane@example.com` -> `j***@example.com`.
pub fn masked(address: &str) -> String {
    match address.split_once('@') {
        Some((local, domain)) => {
            format!("{}***@{domain}", local.chars().next().unwrap_or('*'))
        }
        None => "***".to_string(),
    }
}

/// Every link cut to its scheme and host.
pub fn cut_links(text: &str) -> String {
    text.split_inclusive(char::is_whitespace)
        .map(|piece| {
            let word = piece.trim_end();
            let tail = &piece[word.len()..];
            match url::Url::parse(word) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => format!(
                    "{}://{}/...{tail}",
                    url.scheme(),
                    url.host_str().unwrap_or_default()
                ),
                _ => piece.to_string(),
            }
        })
        .collect()
}

/// The outbox sender of one replica.
pub struct DunningMailer {
    store: Arc<dyn Store>,
    postman: Arc<dyn Postman>,
    billing_url: String,
    poll: Duration,
}

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    pub sent: usize,
    pub failed: usize,
    pub skipped: usize,
}

impl DunningMailer {
    pub fn new(
        store: Arc<dyn Store>,
        postman: Arc<dyn Postman>,
        billing_url: String,
        poll: Duration,
    ) -> Self {
        Self {
            store,
            postman,
            billing_url,
            poll,
        }
    }

    /// Sends due emails until `shutdown`.
    pub async fn run(&self, shutdown: CancellationToken) {
        loop {
            if let Err(e) = self.round().await {
                tracing::warn!(error = %crate::telemetry::error_chain(&e), "dunning round failed");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.poll) => {}
            }
        }
    }

    /// Looks at every due email once.
    pub async fn round(&self) -> Result<Round, StoreError> {
        let mut round = Round::default();
        let claim = chrono::Duration::from_std(CLAIM).unwrap_or(chrono::Duration::minutes(2));
        for id in self.store.due_dunning_emails(Utc::now(), BATCH).await? {
            // Each claim on the clock of its own moment: a slow delivery before it must not
            // shorten its lease (another replica would take the email over and send it too).
            let now = Utc::now();
            let Some(email) = self
                .store
                .claim_dunning_email(&id, now, micros(now + claim))
                .await?
            else {
                continue;
            };
            self.handle(email, &mut round).await?;
        }
        Ok(round)
    }

    async fn handle(
        &self,
        email: ClaimedDunningEmail,
        round: &mut Round,
    ) -> Result<(), StoreError> {
        let standing = email.subscription_status.map(|status| StoredStanding {
            status,
            as_of: email.subscription_as_of,
        });
        let verdict = should_send(
            email.invoice_status,
            standing,
            email.scheduled_at,
            email.recipient.is_some(),
        );
        let (Verdict::Send, Some(to)) = (verdict, email.recipient.clone()) else {
            return match verdict {
                Verdict::Skip(reason) => {
                    round.skipped += 1;
                    metrics::counter!("dunning_emails_total", "outcome" => "skipped").increment(1);
                    tracing::info!(email_id = %email.id, step = %email.step, reason = reason.as_str(),
                        "dunning email not sent");
                    self.store
                        .dunning_email_skipped(&email.id, email.lease, reason.as_str())
                        .await
                }
                // Looked at again next round.
                _ => {
                    let wait = chrono::Duration::from_std(self.poll)
                        .unwrap_or(chrono::Duration::seconds(30));
                    self.store
                        .dunning_email_postponed(&email.id, email.lease, Utc::now() + wait)
                        .await
                }
            };
        };
        let body = compose(&DunningFacts {
            step: email.step,
            tier: email.tier.filter(|t| t.is_paid()).unwrap_or(Tier::Pro),
            amount_due: email.amount_due,
            currency: email.currency.as_deref(),
            grace_ends: email.grace_ends,
            pay_url: email.hosted_invoice_url.as_deref(),
            billing_url: &self.billing_url,
        });
        match self.postman.deliver(&OutgoingEmail { to, body }).await {
            Ok(()) => {
                round.sent += 1;
                metrics::counter!("dunning_emails_total", "outcome" => "sent").increment(1);
                tracing::info!(email_id = %email.id, step = %email.step, user_id = %email.user_id,
                    "dunning email sent");
                self.store
                    .dunning_email_sent(&email.id, email.lease, Utc::now())
                    .await
            }
            Err(error) => {
                round.failed += 1;
                let give_up = email.attempts >= MAX_ATTEMPTS;
                metrics::counter!("dunning_emails_total",
                    "outcome" => if give_up { "failed" } else { "retried" })
                .increment(1);
                tracing::warn!(email_id = %email.id, step = %email.step, attempts = email.attempts,
                    give_up, %error, "dunning email not delivered");
                self.store
                    .dunning_email_failed(
                        &email.id,
                        email.lease,
                        Utc::now() + retry_delay(email.attempts),
                        &error,
                        give_up,
                    )
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_emails_show_no_address_and_no_whole_link() {
        assert_eq!(masked("jane@example.com"), "j***@example.com");
        assert_eq!(masked("nonsense"), "***");
        let text = "Pay the invoice: https://invoice.stripe.com/i/acct_1/secret_token\nbye";
        let cut = cut_links(text);
        assert!(!cut.contains("secret_token"), "{cut}");
        assert_eq!(cut, "Pay the invoice: https://invoice.stripe.com/...\nbye");
    }
}

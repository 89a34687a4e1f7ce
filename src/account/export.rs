//! `ExportMyData`: everything the service holds about a user, as JSON lines produced page by
//! page into a bounded channel, so a large account never sits in memory and a reader that
//! stops reading stops the export.
//!
//! The shape (one JSON object per line, each with a `type`), in this order:
//! - `export`: `format` ("nexus-billing-export"), `version` (1), `user_id`, `exported_at`;
//! - `subscription`: the stored subscription and the tier it gives now (a user who never paid
//!   is on FREE);
//! - `invoice`: one per invoice, newest first;
//! - `integration`: one per connected provider: status, settings, last sync, never a
//!   credential;
//! - `sync_job`: one per sync job, per integration, newest first;
//! - `activity`: one per activity entry, newest first;
//! - `end`: `records`, the number of lines before it. A stream without it is incomplete.
//!
//! Contacts and cards belong to the card application and are exported by it.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::Account;
use crate::{
    billing::Entitlement,
    domain::{UserId, integration::Integration, invoice::StoredInvoice, sync_job::SyncJob},
    store::{ActivityRecord, InvoiceCursor, JobCursor, StoreError},
};

/// Rows read per query while exporting.
const PAGE: u32 = 100;
/// Lines buffered ahead of a slow reader.
const BUFFER: usize = 64;

pub const FORMAT: &str = "nexus-billing-export";
pub const VERSION: u32 = 1;

/// Why an export stopped part-way.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The reader went away.
    #[error("the reader stopped reading")]
    Closed,
}

impl Account {
    /// Starts exporting the user's data: each line arrives on the receiver; an `Err` ends it.
    pub fn export(
        self: &std::sync::Arc<Self>,
        user: UserId,
    ) -> mpsc::Receiver<Result<String, StoreError>> {
        let (tx, rx) = mpsc::channel(BUFFER);
        let account = std::sync::Arc::clone(self);
        tokio::spawn(async move {
            let mut out = Lines { tx: &tx, count: 0 };
            match account.write_export(&user, &mut out).await {
                Ok(()) | Err(ExportError::Closed) => {}
                Err(ExportError::Store(e)) => {
                    let _ = tx.send(Err(e)).await;
                }
            }
        });
        rx
    }

    async fn write_export(&self, user: &UserId, out: &mut Lines<'_>) -> Result<(), ExportError> {
        out.send(json!({
            "type": "export",
            "format": FORMAT,
            "version": VERSION,
            "user_id": user.as_str(),
            "exported_at": Utc::now().to_rfc3339(),
        }))
        .await?;
        let entitlement = self.billing.entitlement(user).await?;
        out.send(subscription_line(&entitlement)).await?;

        let mut after: Option<InvoiceCursor> = None;
        loop {
            let (page, next) = self.billing.invoices(user, after.as_ref(), PAGE).await?;
            for invoice in &page {
                out.send(invoice_line(invoice)).await?;
            }
            match next {
                Some(cursor) => after = Some(cursor),
                None => break,
            }
        }

        let integrations = self.store.integrations(user).await?;
        for integration in &integrations {
            out.send(integration_line(integration)).await?;
        }
        for integration in &integrations {
            let mut before: Option<JobCursor> = None;
            loop {
                let page = self
                    .store
                    .sync_jobs_page(user, integration.provider, before.as_ref(), PAGE)
                    .await?;
                for job in &page {
                    out.send(sync_job_line(job)).await?;
                }
                match page.last() {
                    Some(last) if page.len() == PAGE as usize => {
                        before = Some(JobCursor {
                            created_at: last.created_at,
                            id: last.id.clone(),
                        });
                    }
                    _ => break,
                }
            }
        }

        let mut before = None;
        loop {
            let page = self.store.activity(user, before, PAGE).await?;
            for entry in &page {
                out.send(activity_line(entry)).await?;
            }
            match page.last() {
                Some(last) if page.len() == PAGE as usize => before = Some(last.id),
                _ => break,
            }
        }
        let records = out.count;
        out.send(json!({ "type": "end", "records": records })).await
    }
}

/// The sending side, counting lines.
struct Lines<'a> {
    tx: &'a mpsc::Sender<Result<String, StoreError>>,
    count: u64,
}

impl Lines<'_> {
    async fn send(&mut self, line: Value) -> Result<(), ExportError> {
        self.count += 1;
        self.tx
            .send(Ok(line.to_string()))
            .await
            .map_err(|_| ExportError::Closed)
    }
}

fn time(t: Option<DateTime<Utc>>) -> Value {
    t.map_or(Value::Null, |t| Value::String(t.to_rfc3339()))
}

fn subscription_line(e: &Entitlement) -> Value {
    let s = &e.subscription;
    json!({
        "type": "subscription",
        "tier": s.tier.as_str(),
        "effective_tier": e.effective_tier.as_str(),
        "status": s.status.as_str(),
        "provider": s.provider.map(|p| p.as_str()),
        "provider_customer_id": s.provider_customer_id,
        "provider_subscription_id": s.provider_subscription_id,
        "current_period_start": time(s.current_period_start),
        "current_period_end": time(s.current_period_end),
        "cancel_at_period_end": s.cancel_at_period_end,
        "cancel_at": time(s.cancel_at),
        "past_due_since": time(s.past_due_since),
    })
}

fn invoice_line(stored: &StoredInvoice) -> Value {
    let i = &stored.invoice;
    json!({
        "type": "invoice",
        "id": stored.id,
        "provider": i.provider.as_str(),
        "provider_invoice_id": i.provider_invoice_id,
        "provider_subscription_id": i.provider_subscription_id,
        "amount_due": i.amount_due,
        "amount_paid": i.amount_paid,
        "currency": i.currency,
        "status": i.status.as_str(),
        "hosted_invoice_url": i.hosted_invoice_url,
        "invoice_pdf_url": i.invoice_pdf_url,
        "period_start": time(i.period_start),
        "period_end": time(i.period_end),
        "created_at": i.created_at.to_rfc3339(),
    })
}

fn integration_line(i: &Integration) -> Value {
    json!({
        "type": "integration",
        "id": i.id,
        "provider": i.provider.as_str(),
        "status": i.status.as_str(),
        "settings": i.settings,
        "last_sync_at": time(i.last_sync_at),
        "last_error": i.last_error,
        "created_at": i.created_at.to_rfc3339(),
        "updated_at": i.updated_at.to_rfc3339(),
    })
}

fn sync_job_line(j: &SyncJob) -> Value {
    json!({
        "type": "sync_job",
        "id": j.id,
        "integration_id": j.integration_id,
        "provider": j.provider.as_str(),
        "direction": j.direction.as_str(),
        "state": j.state.as_str(),
        "contacts_done": j.progress.contacts_done,
        "contacts_total": j.progress.contacts_total,
        "contacts_skipped": j.progress.contacts_skipped,
        "contacts_failed": j.progress.contacts_failed,
        "failures": j.progress.failures.iter()
            .map(|f| json!({ "email": f.email, "message": f.message }))
            .collect::<Vec<_>>(),
        "last_error": j.last_error,
        "attempts": j.attempts,
        "created_at": j.created_at.to_rfc3339(),
        "started_at": time(j.started_at),
        "finished_at": time(j.finished_at),
    })
}

fn activity_line(a: &ActivityRecord) -> Value {
    json!({
        "type": "activity",
        "id": a.id,
        "kind": a.kind,
        "message": a.message,
        "details": a.details,
        "created_at": a.created_at.to_rfc3339(),
    })
}

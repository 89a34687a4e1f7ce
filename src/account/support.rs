//! `nexus-billing user show ID`: what a support agent needs about one user, as text. No
//! secret is read: credentials stay sealed, and only ids, states, dates and counts are shown.

use std::fmt::Write;

use chrono::{DateTime, Utc};

use super::Account;
use crate::{domain::UserId, store::StoreError};

/// How many recent sync jobs and activity entries the summary lists.
const RECENT: u32 = 10;

fn when(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "-".to_string(), |t| t.to_rfc3339())
}

impl Account {
    /// A plain-text summary of the user for support.
    pub async fn support_summary(&self, user: &UserId) -> Result<String, StoreError> {
        let mut out = String::new();
        let e = self.billing.entitlement(user).await?;
        let s = &e.subscription;
        let _ = writeln!(out, "user {user}");
        if let Some(erasure) = self.earlier_erasure(user).await? {
            let _ = writeln!(
                out,
                "erasure {}: {} (runs {}, started {}, finished {})",
                erasure.id,
                if erasure.running {
                    "RUNNING or interrupted: run `user delete` again"
                } else {
                    "done"
                },
                erasure.runs,
                erasure.started_at.to_rfc3339(),
                when(erasure.finished_at)
            );
        }
        let _ = writeln!(
            out,
            "subscription: tier {} (effective {}), status {}, provider {}, customer {}, subscription {}",
            s.tier.as_str(),
            e.effective_tier.as_str(),
            s.status.as_str(),
            s.provider.map_or("-", |p| p.as_str()),
            s.provider_customer_id.as_deref().unwrap_or("-"),
            s.provider_subscription_id.as_deref().unwrap_or("-"),
        );
        let _ = writeln!(
            out,
            "period: {} .. {}, cancel at period end {}, cancel at {}, past due since {}",
            when(s.current_period_start),
            when(s.current_period_end),
            s.cancel_at_period_end,
            when(s.cancel_at),
            when(s.past_due_since),
        );
        let usage = self.store.usage(user).await?;
        let _ = writeln!(
            out,
            "usage: {} cards, {} contacts",
            usage.cards, usage.contacts
        );
        let (invoices, more) = self.billing.invoices(user, None, RECENT).await?;
        let _ = writeln!(
            out,
            "invoices ({}{}):",
            invoices.len(),
            if more.is_some() {
                "+, newest shown"
            } else {
                ""
            }
        );
        for i in &invoices {
            let v = &i.invoice;
            let _ = writeln!(
                out,
                "  {} {} {} {} paid {} of {} created {}",
                v.provider.as_str(),
                v.provider_invoice_id,
                v.status.as_str(),
                v.currency,
                v.amount_paid,
                v.amount_due,
                v.created_at.to_rfc3339()
            );
        }
        let integrations = self.store.integrations(user).await?;
        let _ = writeln!(out, "integrations ({}):", integrations.len());
        for i in &integrations {
            let _ = writeln!(
                out,
                "  {} {} last sync {} last error {}",
                i.provider.as_str(),
                i.status.as_str(),
                when(i.last_sync_at),
                i.last_error.as_deref().unwrap_or("-")
            );
            for job in self
                .store
                .sync_jobs_page(user, i.provider, None, RECENT)
                .await?
            {
                let _ = writeln!(
                    out,
                    "    job {} {} {} done {}/{} failed {} attempts {} created {}",
                    job.id,
                    job.direction.as_str(),
                    job.state.as_str(),
                    job.progress.contacts_done,
                    job.progress.contacts_total,
                    job.progress.contacts_failed,
                    job.attempts,
                    job.created_at.to_rfc3339()
                );
            }
        }
        let activity = self.store.activity(user, None, RECENT).await?;
        let _ = writeln!(out, "recent activity ({}):", activity.len());
        for a in &activity {
            let _ = writeln!(
                out,
                "  {} {} {}",
                a.created_at.to_rfc3339(),
                a.kind,
                a.message
            );
        }
        Ok(out)
    }
}

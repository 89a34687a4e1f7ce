//! Invoices as the payment provider issued them. Money is integer minor units plus a currency.

use std::{fmt, str::FromStr};

use chrono::{DateTime, Utc};

use super::{UserId, subscription::PaymentProvider};

/// Where an invoice is in its life (Stripe's vocabulary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InvoiceStatus {
    Draft,
    Open,
    Paid,
    Uncollectible,
    Void,
}

impl InvoiceStatus {
    pub const ALL: [InvoiceStatus; 5] = [
        Self::Draft,
        Self::Open,
        Self::Paid,
        Self::Uncollectible,
        Self::Void,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Open => "open",
            Self::Paid => "paid",
            Self::Uncollectible => "uncollectible",
            Self::Void => "void",
        }
    }
}

impl fmt::Display for InvoiceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored invoice status name that this version does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown invoice status {0:?}")]
pub struct UnknownInvoiceStatus(pub String);

impl FromStr for InvoiceStatus {
    type Err = UnknownInvoiceStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownInvoiceStatus(s.to_string()))
    }
}

/// One invoice of one user. `provider_invoice_id` is unique per provider: the same invoice seen
/// twice is the same row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invoice {
    pub user_id: UserId,
    pub provider: PaymentProvider,
    pub provider_invoice_id: String,
    pub provider_subscription_id: Option<String>,
    /// Minor units (cents).
    pub amount_due: i64,
    /// Minor units (cents).
    pub amount_paid: i64,
    /// ISO 4217, lower case as Stripe sends it.
    pub currency: String,
    pub status: InvoiceStatus,
    pub hosted_invoice_url: Option<String>,
    pub invoice_pdf_url: Option<String>,
    pub period_start: Option<DateTime<Utc>>,
    pub period_end: Option<DateTime<Utc>>,
    /// When the provider created it; invoices are listed newest first by this.
    pub created_at: DateTime<Utc>,
}

/// A stored invoice: the invoice plus our own id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredInvoice {
    pub id: String,
    pub invoice: Invoice,
}

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

/// Currencies whose amounts have no minor unit (Stripe's list): 500 JPY is `500`, not `5.00`.
const ZERO_DECIMAL: [&str; 16] = [
    "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv",
    "xaf", "xof", "xpf",
];
/// Currencies with three decimals.
const THREE_DECIMAL: [&str; 5] = ["bhd", "jod", "kwd", "omr", "tnd"];

/// How many decimals the currency's minor unit has.
pub fn decimals(currency: &str) -> u32 {
    let code = currency.to_ascii_lowercase();
    if ZERO_DECIMAL.contains(&code.as_str()) {
        0
    } else if THREE_DECIMAL.contains(&code.as_str()) {
        3
    } else {
        2
    }
}

/// A decimal amount as providers write it (`"10.00"`, `"1500"`) in minor units; `None` when it
/// is not a plain non-negative decimal or has more decimals than the currency.
pub fn parse_amount(value: &str, currency: &str) -> Option<i64> {
    let places = decimals(currency);
    let (whole, fraction) = value.trim().split_once('.').unwrap_or((value.trim(), ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
        || fraction.len() > places as usize
    {
        return None;
    }
    let unit = 10i64.pow(places);
    let fraction = format!("{fraction:0<width$}", width = places as usize);
    let minor = if fraction.is_empty() {
        0
    } else {
        fraction.parse::<i64>().ok()?
    };
    whole
        .parse::<i64>()
        .ok()?
        .checked_mul(unit)?
        .checked_add(minor)
}

/// An amount in minor units as people read it: `19.00 USD`, `500 JPY`, `1.500 KWD`.
pub fn format_amount(minor: i64, currency: &str) -> String {
    let decimals = decimals(currency);
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    let upper = currency.to_ascii_uppercase();
    if decimals == 0 {
        return format!("{sign}{abs} {upper}");
    }
    let unit = 10u64.pow(decimals);
    format!(
        "{sign}{}.{:0width$} {upper}",
        abs / unit,
        abs % unit,
        width = decimals as usize
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_amounts_become_minor_units() {
        assert_eq!(parse_amount("10.00", "USD"), Some(1000));
        assert_eq!(parse_amount("14.9", "eur"), Some(1490));
        assert_eq!(parse_amount("1500", "KES"), Some(150_000));
        assert_eq!(parse_amount("500", "JPY"), Some(500));
        for bad in [
            "",
            "-1.00",
            "1.005",
            "1e3",
            "ten",
            ".5",
            "99999999999999999999",
        ] {
            assert_eq!(parse_amount(bad, "USD"), None, "{bad}");
        }
    }

    #[test]
    fn amounts_follow_the_currency_minor_unit() {
        assert_eq!(format_amount(1900, "usd"), "19.00 USD");
        assert_eq!(format_amount(5, "eur"), "0.05 EUR");
        assert_eq!(format_amount(500, "jpy"), "500 JPY");
        assert_eq!(format_amount(1500, "kwd"), "1.500 KWD");
        assert_eq!(format_amount(-250, "usd"), "-2.50 USD");
    }
}

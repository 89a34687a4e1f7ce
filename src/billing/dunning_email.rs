//! The words of a dunning email, in plain text and HTML: what failed, until when the plan stays
//! on, the invoice's payment link and the billing page (where the payment method is changed in
//! the provider's portal; portal links themselves expire within minutes, so none is mailed).
//! Pure; every value put into the HTML is escaped.

use chrono::{DateTime, Utc};

use crate::domain::{Tier, dunning::DunningStep, invoice::format_amount};

/// What an email is about.
#[derive(Debug, Clone)]
pub struct DunningFacts<'a> {
    pub step: DunningStep,
    pub tier: Tier,
    pub amount_due: Option<i64>,
    pub currency: Option<&'a str>,
    pub grace_ends: DateTime<Utc>,
    /// The provider's page where the invoice is paid.
    pub pay_url: Option<&'a str>,
    /// This service's billing page.
    pub billing_url: &'a str,
}

/// A composed email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailBody {
    pub subject: String,
    pub text: String,
    pub html: String,
}

fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Only http(s) links go into an email.
fn web_link(url: &str) -> Option<&str> {
    (url.starts_with("https://") || url.starts_with("http://")).then_some(url)
}

pub fn compose(facts: &DunningFacts<'_>) -> EmailBody {
    let plan = facts.tier.to_string();
    let ends = facts.grace_ends.format("%-d %B %Y").to_string();
    let amount = match (facts.amount_due, facts.currency) {
        (Some(minor), Some(currency)) => {
            format!("the payment of {}", format_amount(minor, currency))
        }
        _ => "the payment".to_string(),
    };
    let (subject, opening) = match facts.step {
        DunningStep::Reminder(0) => (
            "Your Nexus Cards payment failed".to_string(),
            format!("We could not collect {amount} for your Nexus Cards {plan} plan."),
        ),
        DunningStep::Reminder(_) => (
            "Reminder: your Nexus Cards payment is still due".to_string(),
            format!("{amount} for your Nexus Cards {plan} plan is still due.")
                .replacen("the", "The", 1),
        ),
        DunningStep::Final => (
            format!("Last notice: your {plan} plan ends on {ends}"),
            format!(
                "This is the last reminder: {amount} for your Nexus Cards {plan} plan is still due."
            ),
        ),
    };
    let keep = format!(
        "Your {plan} features stay on until {ends}; after that your account moves to the Free plan."
    );
    let pay = facts.pay_url.and_then(web_link);
    let billing = web_link(facts.billing_url).unwrap_or_default();
    let mut text = format!("Hello,\n\n{opening}\n{keep}\n\n");
    if let Some(pay) = pay {
        text.push_str(&format!("Pay the invoice: {pay}\n"));
    }
    text.push_str(&format!(
        "Update your payment method on your billing page: {billing}\n\n-- Nexus Cards Billing\n"
    ));
    let mut html = format!(
        "<!doctype html><html><body style=\"font-family:sans-serif\">\
         <p>Hello,</p><p>{}<br>{}</p>",
        escape(&opening),
        escape(&keep)
    );
    if let Some(pay) = pay {
        html.push_str(&format!(
            "<p><a href=\"{}\">Pay the invoice</a></p>",
            escape(pay)
        ));
    }
    html.push_str(&format!(
        "<p><a href=\"{}\">Update your payment method</a> on your billing page.</p>\
         <p>&mdash; Nexus Cards Billing</p></body></html>",
        escape(billing)
    ));
    EmailBody {
        subject,
        text,
        html,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(step: DunningStep, pay: &str) -> EmailBody {
        compose(&DunningFacts {
            step,
            tier: Tier::Pro,
            amount_due: Some(900),
            currency: Some("eur"),
            grace_ends: DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default(),
            pay_url: Some(pay),
            billing_url: "https://app.example.com/billing",
        })
    }

    #[test]
    fn each_email_has_both_links_the_amount_and_the_date_access_ends() {
        let email = facts(DunningStep::Reminder(0), "https://invoice.stripe.com/i/abc");
        assert_eq!(email.subject, "Your Nexus Cards payment failed");
        for part in [&email.text, &email.html] {
            assert!(part.contains("https://invoice.stripe.com/i/abc"), "{part}");
            assert!(part.contains("https://app.example.com/billing"), "{part}");
            assert!(part.contains("9.00 EUR"), "{part}");
            assert!(part.contains("15 January 2027"), "{part}");
        }
        let last = facts(DunningStep::Final, "https://invoice.stripe.com/i/abc");
        assert_eq!(
            last.subject,
            "Last notice: your Pro plan ends on 15 January 2027"
        );
        let again = facts(DunningStep::Reminder(3), "https://invoice.stripe.com/i/abc");
        assert!(
            again.text.contains("The payment of 9.00 EUR"),
            "{}",
            again.text
        );
    }

    #[test]
    fn links_are_escaped_in_html_and_only_web_links_are_used() {
        let odd = facts(
            DunningStep::Reminder(0),
            "https://pay.example/\"><script>alert(1)</script>",
        );
        assert!(!odd.html.contains("<script>"), "{}", odd.html);
        assert!(odd.html.contains("&lt;script&gt;"));
        let script = facts(DunningStep::Reminder(0), "javascript:alert(1)");
        assert!(!script.html.contains("javascript:") && !script.text.contains("javascript:"));
    }
}

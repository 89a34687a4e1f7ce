//! The money model's invariants (a)-(e), over the world's ledger of payments and what was
//! seen at the end (see `money_model.rs`).

use nexus_billing::grpc::proto::billing::{InvoiceStatus, Tier};

use super::{
    Provider,
    world::{Charge, Seen, World, paypal_plan, stripe_plan},
};

/// Every invariant, over the world's ledger and what was seen at the end.
pub(super) fn check(w: &World, seen: &Seen) -> Vec<String> {
    let mut broken = Vec::new();
    let refunds = refunds_per_charge(&w.charges, seen, &mut broken);
    for (charge, refunded) in w.charges.iter().zip(&refunds) {
        check_charge(w, seen, charge, *refunded, &mut broken);
    }
    for (n, user) in w.users.iter().enumerate() {
        let u = &seen.users[n];
        let charging = charging(w, seen, n);
        if user.erased_at.is_some() {
            if !charging.is_empty() {
                broken.push(format!(
                    "(d) {} was erased and is still charged by {}",
                    user.id,
                    charging.join(", ")
                ));
            }
            if u.effective != i32::from(Tier::Free) {
                broken.push(format!(
                    "(d) {} was erased and still has {}",
                    user.id,
                    tier_name(u.effective)
                ));
            }
            for row in u.naming.iter().take(5) {
                broken.push(format!(
                    "(d) {} was erased and a row still names them: {row}",
                    user.id
                ));
            }
            continue;
        }
        if charging.len() > 1 {
            broken.push(format!(
                "(c) {} is charged by {} subscriptions: {}",
                user.id,
                charging.len(),
                charging.join(", ")
            ));
        }
        if u.effective != i32::from(Tier::Free) {
            check_access(w, seen, n, &refunds, &mut broken);
        }
    }
    broken
}

/// How many times each payment was refunded at its fake (Stripe refunds name the subscription,
/// PayPal's the sale).
fn refunds_per_charge(charges: &[Charge], seen: &Seen, broken: &mut Vec<String>) -> Vec<usize> {
    let mut count = vec![0; charges.len()];
    let named = seen
        .stripe_refunds
        .iter()
        .map(|id| (Provider::Stripe, id))
        .chain(seen.paypal_refunds.iter().map(|id| (Provider::Paypal, id)));
    for (provider, id) in named {
        let hit = charges.iter().position(|c| {
            c.provider == provider
                && if provider == Provider::Stripe {
                    &c.subscription == id
                } else {
                    &c.payment == id
                }
        });
        match hit {
            Some(n) => count[n] += 1,
            None => broken.push(format!(
                "(e) {provider:?} refunded {id}, which matches no payment taken"
            )),
        }
    }
    count
}

/// (a) and (e) for one payment.
fn check_charge(w: &World, seen: &Seen, c: &Charge, refunds: usize, broken: &mut Vec<String>) {
    let user = &w.users[c.user];
    let u = &seen.users[c.user];
    let what = format!(
        "{}'s {:?} {:?} payment {} (step {})",
        user.id, c.provider, c.plan, c.payment, c.step
    );
    if refunds > 1 {
        broken.push(format!("(e) {what} was refunded {refunds} times"));
    }
    if refunds > 0 {
        if w.used.contains(&(c.provider, c.subscription.clone())) {
            broken.push(format!(
                "(e) {what} was refunded, but subscription {} granted access: its period was used",
                c.subscription
            ));
        }
        return;
    }
    match user.erased_at {
        // The erasure cancels without a refund (README): what was paid before it is not owed.
        Some(at) if c.step < at => {}
        Some(_) => broken.push(format!(
            "(a) {what} was taken after the erasure and never refunded"
        )),
        None => {
            let g = &u.granted;
            let covered = u.effective != i32::from(Tier::Free)
                && g.provider == Some(c.provider)
                && (c.provider == Provider::Mpesa
                    || g.subscription.as_deref() == Some(c.subscription.as_str()));
            if !covered {
                broken.push(format!(
                    "(a) {what} is neither refunded nor covered: the service grants {} from {:?} {:?}",
                    tier_name(u.effective),
                    g.provider,
                    g.subscription
                ));
            }
            let listed = u.invoices.iter().any(|(id, status)| {
                *status == i32::from(InvoiceStatus::Paid)
                    && (*id == c.payment || c.receipt.as_deref() == Some(id.as_str()))
            });
            if !listed {
                broken.push(format!("(a) {what} is not among the user's paid invoices"));
            }
        }
    }
}

/// (b) for a user the service grants a paid tier.
fn check_access(w: &World, seen: &Seen, n: usize, refunds: &[usize], broken: &mut Vec<String>) {
    let (id, u) = (&w.users[n].id, &seen.users[n]);
    let tier = tier_name(u.effective);
    let (Some(provider), Some(sub)) = (u.granted.provider, u.granted.subscription.as_deref())
    else {
        broken.push(format!(
            "(b) {id} has {tier} from no provider's subscription"
        ));
        return;
    };
    let covering = w.charges.iter().zip(refunds).rev().find(|(c, refunded)| {
        **refunded == 0
            && c.user == n
            && c.provider == provider
            && if provider == Provider::Mpesa {
                c.payment == sub
            } else {
                c.subscription == sub
            }
    });
    let Some((charge, _)) = covering else {
        broken.push(format!(
            "(b) {id} has {tier} from {provider:?} {sub}, which no unrefunded payment covers"
        ));
        return;
    };
    // What the provider bills for it and whether it still runs there. PAST_DUE keeps access
    // within PAST_DUE_GRACE (7 days, README): a whole run lasts minutes.
    let billed = match provider {
        Provider::Stripe => seen.stripe.get(sub).map(|s| {
            (
                stripe_plan(s),
                matches!(
                    s["status"].as_str(),
                    Some("active" | "trialing" | "past_due")
                ),
            )
        }),
        // A cancelled PayPal subscription keeps the month already paid.
        Provider::Paypal => seen.paypal.get(sub).map(|s| {
            (
                paypal_plan(s),
                matches!(s["status"].as_str(), Some("ACTIVE" | "CANCELLED")),
            )
        }),
        Provider::Mpesa => Some((Some(charge.plan), true)),
    };
    match billed {
        None => broken.push(format!(
            "(b) {id} has {tier} from {provider:?} {sub}, which the provider does not have"
        )),
        Some((_, false)) => broken.push(format!(
            "(b) {id} has {tier} from {provider:?} {sub}, which has ended there"
        )),
        Some((plan, true)) if plan.map(|p| i32::from(p.tier())) != Some(u.effective) => broken
            .push(format!(
                "(b) {id} has {tier} but {provider:?} bills {plan:?} for {sub}"
            )),
        Some(_) => {}
    }
}

/// The user's subscriptions that will charge again, at every fake.
fn charging(w: &World, seen: &Seen, n: usize) -> Vec<String> {
    w.subscriptions
        .iter()
        .filter(|k| k.user == n)
        .filter(|k| match k.provider {
            Provider::Stripe => seen.stripe.get(&k.id).is_some_and(|s| {
                matches!(
                    s["status"].as_str(),
                    Some("active" | "trialing" | "past_due" | "unpaid")
                ) && s["cancel_at_period_end"] != true
            }),
            Provider::Paypal => seen
                .paypal
                .get(&k.id)
                .is_some_and(|s| matches!(s["status"].as_str(), Some("ACTIVE" | "SUSPENDED"))),
            Provider::Mpesa => false,
        })
        .map(|k| format!("{:?} {}", k.provider, k.id))
        .collect()
}

fn tier_name(tier: i32) -> String {
    format!("{:?}", Tier::try_from(tier).unwrap_or(Tier::Unspecified))
}


//! The payers in the money model's world: paying or abandoning a checkout at its provider, and
//! the ledger of every payment a fake took.

use super::*;

impl World {

    /// The payer pays an open checkout: the provider takes the money and sends its events.
    pub async fn pay(&mut self, user: usize, pick: usize, fates: &Fates) {
        match self.take_open(user, pick) {
            None => self.note("nothing open to pay"),
            Some((Provider::Stripe, plan, id)) => self.pay_stripe(user, plan, &id, fates).await,
            Some((Provider::Paypal, plan, id)) => self.pay_paypal(user, plan, &id, fates).await,
            Some((Provider::Mpesa, plan, id)) => self.pay_mpesa(user, plan, &id, fates[0]).await,
        }
    }

    pub(super) async fn pay_stripe(&mut self, user: usize, plan: Plan, session: &str, fates: &Fates) {
        let Some((opened, _)) = self.stripe.checkout_session(session) else {
            return self.note(format_args!("Stripe does not know session {session}"));
        };
        if opened["status"] != "open" {
            return self.note(format_args!(
                "Stripe refuses: session {session} is not open"
            ));
        }
        let customer = opened["customer"].as_str().unwrap_or_default();
        let (sub_id, invoice_id) = (
            format!("sub_mm_{}", self.fresh()),
            format!("in_mm_{}", self.fresh()),
        );
        self.stripe.complete_session(session, &sub_id);
        let ((start, end), (price, cents, _, _)) = (period(), prices(plan));
        let sub = self.stripe.put_subscription(&SubSpec {
            id: &sub_id,
            customer,
            price,
            status: "active",
            period_start: start,
            period_end: end,
            cancel_at_period_end: false,
        });
        let invoice = self.stripe.put_invoice(&InvoiceSpec {
            id: &invoice_id,
            customer,
            subscription: &sub_id,
            status: "paid",
            amount_due: cents,
            amount_paid: cents,
            created: Utc::now().timestamp(),
        });
        self.charged(user, Provider::Stripe, plan, [&sub_id, &invoice_id], None);
        self.know(Provider::Stripe, sub_id, user, stripe_told(&sub));
        let completed = self.stripe.checkout_session(session).unwrap_or_default().0;
        let events = [
            self.stripe_event("checkout.session.completed", &completed),
            self.stripe_event("customer.subscription.created", &sub),
            self.stripe_event("invoice.paid", &invoice),
        ];
        for (event, fate) in events.into_iter().zip(fates) {
            self.dispatch(event, *fate).await;
        }
    }

    pub(super) async fn pay_paypal(&mut self, user: usize, plan: Plan, id: &str, fates: &Fates) {
        if self.paypal.subscription(id)["status"] != "APPROVAL_PENDING" {
            return self.note(format_args!("PayPal {id} no longer waits for approval"));
        }
        let (now, (_, _, total, _)) = (Utc::now(), prices(plan));
        let (active, sale) = (
            self.paypal.activate(id, now),
            self.paypal.sale(id, total, now),
        );
        let sale_id = sale["id"].as_str().unwrap_or_default();
        self.charged(user, Provider::Paypal, plan, [id, sale_id], None);
        if let Some(known) = self.subscriptions.iter_mut().find(|k| k.id == id) {
            known.told = paypal_told(&active);
        }
        // PayPal sends PAYMENT.SALE.COMPLETED twice, as two events.
        let events = [
            self.paypal_event("BILLING.SUBSCRIPTION.ACTIVATED", &active),
            self.paypal_event("PAYMENT.SALE.COMPLETED", &sale),
            self.paypal_event("PAYMENT.SALE.COMPLETED", &sale),
        ];
        for (event, fate) in events.into_iter().zip(fates) {
            self.dispatch(event, *fate).await;
        }
    }

    pub(super) async fn pay_mpesa(&mut self, user: usize, plan: Plan, id: &str, fate: Fate) {
        self.mpesa.resolve(id, 0);
        let receipt = format!("MM{:08}", self.fresh());
        let body = fake_mpesa::callback(id, 0, Some(&receipt), prices(plan).3);
        self.charged(user, Provider::Mpesa, plan, [id, id], Some(receipt));
        let event = Delivery(Provider::Mpesa, format!("callback: {id} paid"), body);
        self.dispatch(event, fate).await;
    }

    /// A push Daraja took though the service never got its answer: the phone rings, the payer
    /// pays it or lets it time out, and Daraja posts the callback. A lost answer and a lost
    /// callback together leave the request unknown for a day (by design), so a "lost" callback
    /// arrives late here.
    pub(super) async fn lost_push(&mut self, user: usize, plan: Plan, id: String, pays: bool, fate: Fate) {
        let fate = if fate == Fate::Lost { Fate::Late } else { fate };
        let checkout = Checkout {
            provider: Provider::Mpesa,
            plan,
            id: id.clone(),
            open: false,
        };
        self.users[user].checkouts.push(checkout);
        if pays {
            return self.pay_mpesa(user, plan, &id, fate).await;
        }
        self.mpesa.resolve(&id, 1037);
        let body = fake_mpesa::callback(&id, 1037, None, 0);
        let event = Delivery(Provider::Mpesa, format!("callback: {id} timed out"), body);
        self.dispatch(event, fate).await;
    }

    /// Records a payment: `[subscription, payment]` as [`Charge`] names them.
    pub(super) fn charged(
        &mut self,
        user: usize,
        provider: Provider,
        plan: Plan,
        ids: [&str; 2],
        receipt: Option<String>,
    ) {
        self.note(format_args!(
            "{provider:?} charges u{user} for {plan:?}: {}",
            ids[1]
        ));
        let [subscription, payment] = ids.map(str::to_string);
        let step = self.step;
        let charge = Charge {
            user,
            provider,
            plan,
            subscription,
            payment,
            receipt,
            step,
        };
        self.charges.push(charge);
    }

    /// The payer walks away from an open checkout (an M-Pesa payer cancels on the phone).
    pub async fn abandon(&mut self, user: usize, pick: usize, fates: &Fates) {
        let Some((provider, _, id)) = self.take_open(user, pick) else {
            return self.note("nothing open to abandon");
        };
        self.note(format_args!("the payer leaves {provider:?} {id} unpaid"));
        if provider == Provider::Mpesa {
            self.mpesa.resolve(&id, 1032);
            let body = fake_mpesa::callback(&id, 1032, None, 0);
            let event = Delivery(provider, format!("callback: {id} cancelled"), body);
            self.dispatch(event, fates[0]).await;
        }
    }
}

//! What the money model sees: who was granted what after each step, the healing at the end,
//! and the final look at the service and the fakes that the invariants are checked against.

use super::*;

impl World {

    /// Remembers the subscriptions granting a paid tier now: their periods are being used.
    pub async fn observe(&mut self) {
        let present = self.users.iter().filter(|u| u.erased_at.is_none());
        for id in present.map(|u| u.id.clone()).collect::<Vec<_>>() {
            let Granted {
                provider,
                subscription,
                paid,
            } = self.granted(&id).await;
            if let (true, Some(provider), Some(sub)) = (paid, provider, subscription) {
                self.used.insert((provider, sub));
            }
        }
    }

    pub(super) async fn granted(&self, user: &str) -> Granted {
        let lines = export(self.app(), &service_token(CARD_APP), user).await;
        let sub = of_type(&lines, "subscription").into_iter().next().cloned();
        let sub = sub.unwrap_or_default();
        Granted {
            provider: sub["provider"].as_str().and_then(provider_named),
            subscription: sub["provider_subscription_id"].as_str().map(str::to_string),
            paid: !matches!(sub["effective_tier"].as_str(), None | Some("free")),
        }
    }

    /// After the steps: Daraja ends the pushes nobody answered, every late delivery arrives,
    /// the reconciler brings in what Stripe never delivered, and the card application calls
    /// DeleteMyData again until each erasure asked for has finished.
    pub async fn heal(&mut self, order: u64) {
        let checkouts = self.users.iter_mut().flat_map(|u| u.checkouts.iter_mut());
        for push in checkouts.filter(|c| c.open && c.provider == Provider::Mpesa) {
            push.open = false;
            self.mpesa.resolve(&push.id, 1037);
        }
        self.settle().await;
        self.flush(order).await;
        self.reconcile().await;
        self.settle().await;
        for n in 0..self.users.len() {
            for _ in 0..3 {
                if !self.users[n].erase_requested || self.users[n].erased_at.is_some() {
                    break;
                }
                self.call(n, Call::Erase, false, None, &AT_ONCE).await;
                self.settle().await;
            }
            let user = &self.users[n];
            assert!(
                !user.erase_requested || user.erased_at.is_some(),
                "{} never erased",
                user.id
            );
        }
    }

    /// The end state, through the service's API and at the fakes.
    pub async fn look(&self) -> Seen {
        let app = self.app();
        let mut users = Vec::new();
        for user in &self.users {
            let naming = match user.erased_at {
                Some(_) => rows_naming(&app.pool, &user.id).await,
                None => Vec::new(),
            };
            let effective = subscription(app, &user.id).await.effective_tier;
            let (granted, invoices) = (self.granted(&user.id).await, self.invoices(&user.id).await);
            users.push(UserSeen {
                effective,
                granted,
                invoices,
                naming,
            });
        }
        let (mut stripe, mut paypal) = (HashMap::new(), HashMap::new());
        for known in &self.subscriptions {
            let id = known.id.clone();
            match known.provider {
                Provider::Stripe => stripe.extend(self.stripe.subscription(&id).map(|s| (id, s))),
                _ => paypal.extend([(id.clone(), self.paypal.subscription(&id))]),
            }
        }
        let refunded = |form: &HashMap<String, String>| match form.get("metadata[subscription_id]")
        {
            Some(sub) => Some(sub.clone()),
            None => form
                .get("payment_intent")?
                .strip_prefix("pi_")
                .map(str::to_string),
        };
        let stripe_refunds = self.stripe.refunds().iter().filter_map(refunded).collect();
        let paypal_refunds = self.paypal.refunds();
        Seen {
            users,
            stripe,
            paypal,
            stripe_refunds,
            paypal_refunds,
        }
    }

    pub(super) async fn invoices(&self, user: &str) -> Vec<(String, i32)> {
        let mut client = self.app().billing().await;
        let (mut all, mut page_token) = (Vec::new(), String::new());
        loop {
            let request = billing::ListInvoicesRequest {
                page_size: 100,
                page_token,
            };
            let page = client.list_invoices(authed(request, &token(user))).await;
            let page = page.unwrap_or_else(|e| panic!("ListInvoices for {user}: {e}"));
            let page = page.into_inner();
            all.extend(
                page.invoices
                    .into_iter()
                    .map(|i| (i.provider_invoice_id, i.status)),
            );
            if page.next_page_token.is_empty() {
                return all;
            }
            page_token = page.next_page_token;
        }
    }
}

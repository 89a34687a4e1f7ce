//! The providers' events in the money model's world: sent now, late, twice or never, the
//! reconciler, and waiting until the service has applied what it can.

use super::*;

impl World {

    pub(super) fn stripe_event(&self, kind: &str, object: &Value) -> Delivery {
        let (_, body) = self.stripe.event(kind, object);
        // Stripe lists every event it sends: the reconciler finds those never delivered.
        self.stripe.publish(&body);
        Delivery(Provider::Stripe, format!("{kind} {}", object["id"]), body)
    }

    pub(super) fn paypal_event(&self, kind: &str, resource: &Value) -> Delivery {
        let (_, body) = self.paypal.event(kind, resource, Utc::now());
        Delivery(Provider::Paypal, format!("{kind} {}", resource["id"]), body)
    }

    pub(super) async fn dispatch(&mut self, event: Delivery, fate: Fate) {
        let how = match (fate, event.0) {
            (Fate::Now, _) => "now",
            (Fate::Late, _) => "late",
            (Fate::Twice, _) => "now, and again late",
            (Fate::Lost, Provider::Paypal) => "lost, so late (PayPal retries until it is taken)",
            (Fate::Lost, Provider::Stripe) => "never (listed for the reconciler)",
            (Fate::Lost, Provider::Mpesa) => "never (the poller asks Daraja)",
        };
        self.note(format_args!("{}: {how}", event.1));
        if matches!(fate, Fate::Now | Fate::Twice) {
            self.deliver(&event).await;
        }
        if fate != Fate::Now && (fate != Fate::Lost || event.0 == Provider::Paypal) {
            self.late.push(event);
        }
    }

    pub(super) async fn deliver(&self, Delivery(provider, what, body): &Delivery) {
        let app = self.app();
        let (status, text) = match provider {
            Provider::Stripe => app.deliver(body, Some(&sign_now(body))).await,
            Provider::Paypal => crate::paypal::deliver(app, body, &self.paypal.headers(body)).await,
            Provider::Mpesa => post_callback(app, &self.callback_path(body), body).await,
        };
        assert_eq!(status, 200, "{what} was refused: {text}");
    }

    /// Where Daraja posts a request's callback: the CallBackURL of the push that made it.
    pub(super) fn callback_path(&self, body: &str) -> String {
        let body: Value = serde_json::from_str(body).unwrap_or_default();
        let id = &body["Body"]["stkCallback"]["CheckoutRequestID"];
        let (created, pushes) = (self.mpesa.created(), self.mpesa.pushes());
        // Pushes and created ids pair up while the fake refused no push (ours are valid).
        let paired = created.len() == pushes.len();
        let n = created.iter().position(|c| paired && id == c.as_str());
        let named = n.and_then(|n| pushes.get(n)?["CallBackURL"].as_str().map(str::to_string));
        match named.as_deref().map(url::Url::parse) {
            Some(Ok(named)) => named[url::Position::BeforePath..].to_string(),
            _ => "/billing/webhook/mpesa".to_string(),
        }
    }

    /// Every late delivery arrives, in an order drawn from `order`.
    pub async fn flush(&mut self, order: u64) {
        let mut late = std::mem::take(&mut self.late);
        fastrand::Rng::with_seed(order).shuffle(&mut late);
        for event in &late {
            self.note(format_args!("arrives: {}", event.1));
            self.deliver(event).await;
        }
    }

    /// `nexus-billing reconcile`, as an operator (or `RECONCILE_INTERVAL`) runs it.
    pub async fn reconcile(&mut self) {
        let (url, settings) = (self.app().database_url().to_string(), self.settings.clone());
        let run = tokio::task::spawn_blocking(move || {
            let mut command = Command::new(BIN);
            let env = [("DATABASE_URL", url.as_str()), ("JWT_SECRET", JWT_SECRET)];
            command
                .env_clear()
                .envs(env)
                .env("ENCRYPTION_KEY", ENCRYPTION_KEY);
            command
                .env("LOG_LEVEL", "warn")
                .env("DATA_DIR", std::env::temp_dir());
            command.args(
                settings
                    .iter()
                    .map(|(flag, value)| format!("{flag}={value}")),
            );
            command.arg("reconcile").output()
        });
        let output = run.await.unwrap_or_else(|e| panic!("{e}"));
        let output = output.unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
        let (out, err) = (&output.stdout, &output.stderr);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(out),
            String::from_utf8_lossy(err)
        );
        assert!(output.status.success(), "reconcile failed: {text}");
        self.note(format_args!("reconcile: {}", text.trim()));
    }

    /// Sends the news of every subscription that changed at its fake since its last event,
    /// with `fates`; how many events that was.
    pub(super) async fn announce(&mut self, fates: &Fates) -> usize {
        let mut news = Vec::new();
        for known in &mut self.subscriptions {
            let (told, now) = match known.provider {
                Provider::Stripe => match self.stripe.subscription(&known.id) {
                    Some(sub) => (stripe_told(&sub), sub),
                    None => continue,
                },
                _ => {
                    let sub = self.paypal.subscription(&known.id);
                    (paypal_told(&sub), sub)
                }
            };
            if told != known.told {
                known.told = told;
                news.push((known.provider, now));
            }
        }
        let count = news.len();
        for (n, (provider, sub)) in news.into_iter().enumerate() {
            let event = match (provider, sub["status"].as_str().unwrap_or_default()) {
                (Provider::Stripe, "canceled") => {
                    self.stripe_event("customer.subscription.deleted", &sub)
                }
                (Provider::Stripe, _) => self.stripe_event("customer.subscription.updated", &sub),
                (_, "CANCELLED") => self.paypal_event("BILLING.SUBSCRIPTION.CANCELLED", &sub),
                (_, "SUSPENDED") => self.paypal_event("BILLING.SUBSCRIPTION.SUSPENDED", &sub),
                _ => self.paypal_event("BILLING.SUBSCRIPTION.UPDATED", &sub),
            };
            self.dispatch(event, fates[n % fates.len()]).await;
        }
        count
    }

    /// Waits until the service has applied all it can and the providers have told all that
    /// changed meanwhile.
    pub async fn settle(&mut self) {
        for _ in 0..10 {
            self.quiet().await;
            if self.announce(&AT_ONCE).await == 0 {
                return;
            }
        }
        panic!("the providers' subscriptions kept changing after 10 rounds of events");
    }

    /// Waits until nothing the service can act on is pending. A push the payer has not answered
    /// keeps its check pending, and the user's later PayPal and M-Pesa events behind it (one
    /// order key, the user id): those wait for the payer. So does a request whose id the service
    /// never learnt (its answer was lost) until its callback arrives.
    pub(super) async fn quiet(&self) {
        let quoted = |ids: Vec<&str>| ids.iter().map(|id| format!("'{id}'")).collect::<Vec<_>>();
        let waiting = self.users.iter().filter(|u| pushes(u).any(|c| c.open));
        let waiting = quoted(waiting.map(|u| u.id.as_str()).collect()).join(", ");
        let answered = self
            .users
            .iter()
            .flat_map(|u| pushes(u).filter(|c| !c.open));
        let answered = quoted(answered.map(|c| c.id.as_str()).collect()).join(", ");
        let mut events = "state = 'pending'".to_string();
        if !waiting.is_empty() {
            events += &format!(" AND (order_key IS NULL OR order_key NOT IN ({waiting}))");
        }
        let payments = format!("state = 'pending' AND checkout_request_id IN ({answered})");
        let app = self.app();
        eventually("nothing the service can act on is pending", || async {
            let paid = answered.is_empty() || app.count("mpesa_payments", &payments).await == 0;
            paid && app.count("webhook_inbox", &events).await == 0
        })
        .await;
    }
}

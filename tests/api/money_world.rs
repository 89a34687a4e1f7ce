//! The world the money model runs in (`money_model.rs` draws the steps and checks the end): the
//! service, the fake Stripe, PayPal and Daraja, the users and their payers, the providers'
//! events (delivered now, late, twice or never) and the ledger of every payment a fake took.
//!
//! The providers tell every change of a subscription, as the real ones do: after each step the
//! world compares each subscription at the fakes with what its last event said and sends the
//! news, with the step's fates when the step caused it, at once when the service did (a second
//! subscription cancelled and refunded by the event processor, say).

use std::{
    collections::{HashMap, HashSet},
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::Utc;
use nexus_billing::grpc::proto::{account, billing};
use serde_json::Value;
use tonic::{Code, Status, transport::Channel};

use super::{Call, Fate, Fates, Plan, Provider};
use crate::{
    account_world::{BIN, export, of_type, rows_naming},
    fake_http::{FakeServer, Hold, HoldPoint, Request},
    fake_mpesa::{self, FakeMpesa},
    fake_paypal::{FakePaypal, PLAN_PREMIUM, PLAN_PRO},
    fake_stripe::{FakeStripe, InvoiceSpec, PRICE_PREMIUM, PRICE_PRO, SubSpec, sign_now},
    helpers::{ALLOWED_ORIGIN, Backend, ENCRYPTION_KEY, JWT_SECRET, TestApp},
    helpers::{authed, eventually, service_token, token},
    subscription_lifecycle::{period, subscription},
};

/// Events the providers send at once.
const AT_ONCE: Fates = [Fate::Now; 3];
/// Who calls DeleteMyData and reads exports: the card application (`service` role).
const CARD_APP: &str = "card-app";

/// A user of the card application, as the world knows them.
pub struct User {
    pub id: String,
    checkouts: Vec<Checkout>,
    /// DeleteMyData was called: the user calls nothing more (their payers may still pay).
    erase_requested: bool,
    /// The step at which an erasure of the user finished.
    pub erased_at: Option<usize>,
}

/// A checkout: Stripe's session, PayPal's subscription or Daraja's CheckoutRequestID.
struct Checkout {
    provider: Provider,
    plan: Plan,
    id: String,
    open: bool,
}

/// One payment a fake took: the ledger the service is held to. `subscription` is Stripe's or
/// PayPal's subscription, or M-Pesa's CheckoutRequestID; `payment` Stripe's invoice, PayPal's
/// sale or the CheckoutRequestID; `receipt` M-Pesa's (the invoice number if the callback won).
#[derive(Debug, Clone)]
pub struct Charge {
    pub user: usize,
    pub provider: Provider,
    pub plan: Plan,
    pub subscription: String,
    pub payment: String,
    pub receipt: Option<String>,
    pub step: usize,
}

/// A subscription at Stripe or PayPal, and the state its last event told.
pub struct Known {
    pub provider: Provider,
    pub id: String,
    pub user: usize,
    told: String,
}

/// An event on its way: who sends it, what it is (for the log), the body.
#[derive(Clone)]
struct Delivery(Provider, String, String);

/// What the service grants a user, from their export.
pub struct Granted {
    pub provider: Option<Provider>,
    pub subscription: Option<String>,
    paid: bool,
}

/// The end, per user: GetSubscription's effective tier, the grant, ListInvoices (provider
/// invoice id, status), and the rows naming them (looked for once they are erased).
pub struct UserSeen {
    pub effective: i32,
    pub granted: Granted,
    pub invoices: Vec<(String, i32)>,
    pub naming: Vec<String>,
}

/// The end: the service's view of each user; the fakes' subscriptions and refunds (the
/// subscriptions Stripe's refunds name, the sales PayPal refunded).
pub struct Seen {
    pub users: Vec<UserSeen>,
    pub stripe: HashMap<String, Value>,
    pub paypal: HashMap<String, Value>,
    pub stripe_refunds: Vec<String>,
    pub paypal_refunds: Vec<String>,
}

pub struct World {
    app: Option<TestApp>,
    stripe: FakeStripe,
    paypal: FakePaypal,
    mpesa: FakeMpesa,
    settings: Vec<(String, String)>,
    pub users: Vec<User>,
    pub charges: Vec<Charge>,
    pub subscriptions: Vec<Known>,
    /// Deliveries held back: they arrive at the next flush, in some order.
    late: Vec<Delivery>,
    /// Subscriptions seen granting a paid tier at the end of a step: their periods were used.
    pub used: HashSet<(Provider, String)>,
    step: usize,
    log: Arc<Mutex<Vec<String>>>,
    counter: u64,
}

impl World {
    pub async fn start(backend: Backend, ids: Vec<String>, log: Arc<Mutex<Vec<String>>>) -> Self {
        let stripe = FakeStripe::start().await;
        let (paypal, mpesa) = (FakePaypal::start().await, FakeMpesa::start().await);
        // The model is about what happens, not how fast.
        paypal.set_delay(Duration::from_millis(10));
        mpesa.set_delay(Duration::from_millis(10));
        let mut settings = stripe.settings();
        settings.extend(paypal.settings());
        settings.extend(mpesa.settings());
        let settings: Vec<_> = settings
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let app = Some(TestApp::spawn_with(backend, &pairs(&settings)).await);
        let users = ids.into_iter().map(|id| User {
            id,
            checkouts: Vec::new(),
            erase_requested: false,
            erased_at: None,
        });
        Self {
            app,
            stripe,
            paypal,
            mpesa,
            settings,
            users: users.collect(),
            charges: Vec::new(),
            subscriptions: Vec::new(),
            late: Vec::new(),
            used: HashSet::new(),
            step: 0,
            log,
            counter: 0,
        }
    }

    fn app(&self) -> &TestApp {
        self.app.as_ref().unwrap_or_else(|| panic!("no service"))
    }

    pub fn begin_step(&mut self, n: usize, what: &str) {
        self.step = n;
        let line = format!("{n:>2}. {what}");
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(line);
    }

    /// What a step did, for the failure message.
    fn note(&self, line: impl std::fmt::Display) {
        let line = format!("      {line}");
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(line);
    }

    fn fresh(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    /// The user (the card application, for DeleteMyData) calls the service. With `crash`, the
    /// process dies once a provider has acted on the call and is answering (the answer is
    /// lost), and starts again; `Some(true)`: the payer pays a push whose answer was lost.
    pub async fn call(
        &mut self,
        user: usize,
        call: Call,
        approve: bool,
        crash: Option<bool>,
        fates: &Fates,
    ) {
        if self.users[user].erase_requested && call != Call::Erase {
            return self.note("skipped: the account is being deleted");
        }
        let (revisions, pushes) = (self.revisions().len(), self.mpesa.created());
        let holds = crash.map(|_| self.hold_provider_writes());
        let channel = self.app().channel().await;
        let mut task = tokio::spawn(call_rpc(channel, self.users[user].id.clone(), call));
        let answer = match &holds {
            None => None,
            Some([stripe, paypal, mpesa]) => tokio::select! {
                answer = &mut task => Some(answer),
                () = stripe.arrived(1) => None,
                () = paypal.arrived(1) => None,
                () = mpesa.arrived(1) => None,
            },
        };
        let crashed = holds.is_some() && answer.is_none();
        if crashed {
            // A push Daraja took rings the phone: its callback comes, so it is not aged.
            let pushed = self.mpesa.created().len() > pushes.len();
            self.crash_and_restart(!pushed).await;
        }
        drop(holds);
        let answer = match answer {
            Some(answer) => answer,
            None => task.await,
        };
        let answer = answer.unwrap_or_else(|e| panic!("{call:?}: {e}"));
        if call == Call::Erase {
            // The card application calls again until the erasure finishes.
            self.users[user].erase_requested = true;
        }
        match (crashed, call, answer) {
            (true, Call::Checkout(Provider::Mpesa, plan), answer) => {
                self.note(format_args!(
                    "crashed; the caller saw {:?}",
                    answer.err().map(|s| s.code())
                ));
                let lost = self
                    .mpesa
                    .created()
                    .into_iter()
                    .filter(|id| !pushes.contains(id));
                for id in lost.collect::<Vec<_>>() {
                    self.lost_push(user, plan, id, crash == Some(true), fates[0])
                        .await;
                }
            }
            (true, _, answer) => self.note(format_args!(
                "crashed; the caller saw {:?}",
                answer.err().map(|s| s.code())
            )),
            (false, _, Err(status)) => {
                // Refusals the README documents; anything else fails the run.
                let expected = if call == Call::Erase {
                    Code::Unavailable
                } else {
                    Code::FailedPrecondition
                };
                let message = status.message();
                assert_eq!(status.code(), expected, "{call:?} for u{user}: {message}");
                self.note(format_args!("refused: {message}"));
            }
            (false, Call::Checkout(provider, plan), Ok(id)) => {
                self.opened(user, provider, plan, id)
            }
            (false, Call::Erase, Ok(already)) => {
                self.note(format_args!("erased {already}"));
                self.users[user].erased_at.get_or_insert(self.step);
            }
            // PayPal answers a plan change with a page where the payer approves it.
            (false, Call::ChangePlan(_), Ok(url)) if approve && !url.is_empty() => {
                if let Some(id) = self.revisions().get(revisions) {
                    let revised = self.paypal.approve_revision(id);
                    self.note(format_args!("the payer approves {}", revised["plan_id"]));
                }
            }
            (false, _, Ok(_)) => self.note("done"),
        }
        self.announce(fates).await;
    }

    fn opened(&mut self, user: usize, provider: Provider, plan: Plan, id: String) {
        let checkouts = &mut self.users[user].checkouts;
        if let Some(same) = checkouts.iter_mut().find(|c| c.id == id) {
            // A double click: the same session (or PayPal subscription) again.
            same.open |= provider != Provider::Mpesa;
            return self.note(format_args!("the same checkout again: {id}"));
        }
        if provider == Provider::Paypal {
            let told = paypal_told(&self.paypal.subscription(&id));
            self.know(provider, id.clone(), user, told);
        }
        self.note(format_args!("opened {provider:?} {id} for {plan:?}"));
        let checkout = Checkout {
            provider,
            plan,
            id,
            open: true,
        };
        self.users[user].checkouts.push(checkout);
    }

    fn know(&mut self, provider: Provider, id: String, user: usize, told: String) {
        self.subscriptions.push(Known {
            provider,
            id,
            user,
            told,
        });
    }

    /// The ids of the PayPal subscriptions revised so far, in order.
    fn revisions(&self) -> Vec<String> {
        let posts = self.paypal.requests("POST", "/v1/billing/subscriptions/");
        let ids = posts.into_iter().filter_map(|r| {
            let rest = r.path.strip_prefix("/v1/billing/subscriptions/")?;
            rest.strip_suffix("/revise").map(str::to_string)
        });
        ids.collect()
    }

    /// Holds the answer to the first request that changes something at each fake (token calls,
    /// webhook verifications and STK queries pass).
    fn hold_provider_writes(&self) -> [Hold; 3] {
        fn write(r: &Request) -> bool {
            let path = r.url.path();
            let passes = ["oauth", "/v1/notifications/", "/mpesa/stkpushquery"];
            r.method.as_str() != "GET" && !passes.iter().any(|p| path.contains(p))
        }
        let hold = |server: &FakeServer| server.hold_first(1, HoldPoint::Answer, write);
        let servers = [&self.stripe.server, &self.paypal.server, &self.mpesa.server];
        servers.map(hold)
    }

    /// Kills the process and starts another. What the dead one held is aged past its expiry,
    /// as if the minutes had passed: the event leases, the change lock and, with `unsent`, an
    /// M-Pesa request reserved but never pushed (failed after `UNSENT`; no callback can come).
    async fn crash_and_restart(&mut self, unsent: bool) {
        let mut app = self.app.take().unwrap_or_else(|| panic!("no service"));
        app.crash();
        let past = Utc::now() - chrono::Duration::minutes(11);
        let mut aged = vec![
            "UPDATE webhook_streams SET lease_until = $1",
            "UPDATE subscriptions SET change_lock_until = $1 WHERE change_lock_owner IS NOT NULL",
        ];
        if unsent {
            aged.push(
                "UPDATE mpesa_payments SET created_at = $1 \
                 WHERE state = 'pending' AND checkout_request_id IS NULL",
            );
        }
        for sql in aged {
            crate::exec!(&app.pool, sql, past);
        }
        self.app = Some(app.crash_and_restart(&pairs(&self.settings)).await);
    }

    pub async fn restart(&mut self) {
        let app = self.app.take().unwrap_or_else(|| panic!("no service"));
        self.app = Some(app.restart(&pairs(&self.settings)).await);
    }

    /// The user's `pick`-th open checkout (modulo how many are open), now closed.
    fn take_open(&mut self, user: usize, pick: usize) -> Option<(Provider, Plan, String)> {
        let mut open: Vec<&mut Checkout> = self.users[user]
            .checkouts
            .iter_mut()
            .filter(|c| c.open)
            .collect();
        let len = open.len().max(1);
        let c = open.get_mut(pick % len)?;
        c.open = false;
        Some((c.provider, c.plan, c.id.clone()))
    }

    pub async fn stop(mut self) {
        if let Some(app) = self.app.take() {
            app.stop().await;
        }
    }
}

#[path = "money_payers.rs"]
mod payers;
#[path = "money_deliveries.rs"]
mod deliveries;
#[path = "money_observe.rs"]
mod observe;

/// One call, on clients of its own so it can run in a task of its own. The answer: the
/// checkout's id, the page approving a plan change, whether an erasure had already run.
async fn call_rpc(channel: Channel, user: String, call: Call) -> Result<String, Status> {
    use billing::billing_service_client::BillingServiceClient;
    let (mut client, user_token) = (BillingServiceClient::new(channel.clone()), token(&user));
    Ok(match call {
        Call::Checkout(provider, plan) => {
            let provider = match provider {
                Provider::Stripe => billing::PaymentProvider::Stripe,
                Provider::Paypal => billing::PaymentProvider::Paypal,
                Provider::Mpesa => billing::PaymentProvider::Mpesa,
            };
            let request = billing::CreateCheckoutSessionRequest {
                tier: plan.tier().into(),
                success_url: format!("{ALLOWED_ORIGIN}/billing/done"),
                cancel_url: format!("{ALLOWED_ORIGIN}/billing"),
                provider: provider.into(),
                phone_number: "0712345678".into(),
                ..Default::default()
            };
            let answer = client
                .create_checkout_session(authed(request, &user_token))
                .await?;
            answer.into_inner().session_id
        }
        Call::ChangePlan(plan) => {
            let request = billing::ChangePlanRequest {
                tier: plan.tier().into(),
                ..Default::default()
            };
            let answer = client.change_plan(authed(request, &user_token)).await?;
            answer.into_inner().approval_url
        }
        Call::Cancel => {
            let request = authed(billing::CancelSubscriptionRequest {}, &user_token);
            client
                .cancel_subscription(request)
                .await
                .map(|_| String::new())?
        }
        Call::Resume => {
            let request = authed(billing::ResumeSubscriptionRequest {}, &user_token);
            client
                .resume_subscription(request)
                .await
                .map(|_| String::new())?
        }
        Call::Erase => {
            let mut accounts = account::account_service_client::AccountServiceClient::new(channel);
            let request = account::DeleteMyDataRequest { user_id: user };
            let answer = accounts
                .delete_my_data(authed(request, &service_token(CARD_APP)))
                .await?;
            format!("(already erased: {})", answer.into_inner().already_erased)
        }
    })
}

async fn post_callback(app: &TestApp, path: &str, body: &str) -> (u16, String) {
    let request = reqwest::Client::new().post(app.http_url(path));
    let request = request
        .header("content-type", "application/json")
        .body(body.to_string());
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("M-Pesa callback: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// A plan's prices: Stripe's price id and cents, PayPal's sale total, M-Pesa's KES.
fn prices(plan: Plan) -> (&'static str, i64, &'static str, u32) {
    match plan {
        Plan::Premium => (PRICE_PREMIUM, 1900, "19.00", fake_mpesa::PRICE_PREMIUM),
        _ => (PRICE_PRO, 900, "9.00", fake_mpesa::PRICE_PRO),
    }
}

/// The plan of a Stripe subscription's price.
pub fn stripe_plan(sub: &Value) -> Option<Plan> {
    match sub["items"]["data"][0]["price"]["id"].as_str()? {
        PRICE_PRO => Some(Plan::Pro),
        PRICE_PREMIUM => Some(Plan::Premium),
        _ => None,
    }
}

/// The plan of a PayPal subscription.
pub fn paypal_plan(sub: &Value) -> Option<Plan> {
    match sub["plan_id"].as_str()? {
        PLAN_PRO => Some(Plan::Pro),
        PLAN_PREMIUM => Some(Plan::Premium),
        _ => None,
    }
}

/// What a Stripe subscription's event tells: status, cancellation, price.
fn stripe_told(sub: &Value) -> String {
    let price = &sub["items"]["data"][0]["price"]["id"];
    format!("{}|{}|{price}", sub["status"], sub["cancel_at_period_end"])
}

fn paypal_told(sub: &Value) -> String {
    format!("{}|{}", sub["status"], sub["plan_id"])
}

fn provider_named(name: &str) -> Option<Provider> {
    match name {
        "stripe" => Some(Provider::Stripe),
        "paypal" => Some(Provider::Paypal),
        "mpesa" => Some(Provider::Mpesa),
        _ => None,
    }
}

/// The user's M-Pesa checkouts (pushes).
fn pushes(user: &User) -> impl Iterator<Item = &Checkout> {
    user.checkouts
        .iter()
        .filter(|c| c.provider == Provider::Mpesa)
}

fn pairs(settings: &[(String, String)]) -> Vec<(&str, &str)> {
    settings
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

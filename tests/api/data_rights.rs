//! AccountService: the export, erasure and activity history, against fake Stripe, a fake
//! HubSpot (API key) and a fake Google Drive (OAuth), on both backends. Erasure is checked by
//! searching every row of every table this service owns for the user's id and email.

use std::time::Duration;

use nexus_billing::grpc::proto::{
    account::{
        DeleteMyDataRequest, DeleteMyDataResponse, ExportMyDataRequest, ListActivityRequest,
        RevocationOutcome,
    },
    billing::Tier,
    integrations::Provider,
};
use serde_json::{Value, json};
use tonic::Code;

use crate::{
    fake_oauth::{FakeOAuth, OKind},
    fake_providers::{FakeProvider, HUBSPOT_TOKEN, Kind},
    fake_stripe::{FakeStripe, InvoiceSpec},
    helpers::{Backend, TestApp, TestPool, authed, service_token, token},
    integrations::{connect, start_sync, wait_for_job},
    oauth::{connect_oauth, oauth_settings, start_oauth},
    subscription_lifecycle::{period, subscribe},
};

/// User ids no fixture text contains by chance (the search looks for them in every row).
pub const ADA: &str = "ada-2f9c1";
pub const BOB: &str = "bob-7d41e";

crate::on_both_backends!(
    the_export_holds_everything_of_the_user_in_the_documented_shape,
    erasure_leaves_only_detached_invoices_and_a_second_call_reports_it,
    a_crash_in_the_middle_of_an_erasure_keeps_the_data_and_the_rerun_finishes,
    another_users_data_is_refused_unless_the_caller_is_a_service,
    activity_is_paged_newest_first,
    the_operator_commands_show_export_and_erase_a_user,
);

/// The fakes of one test.
pub struct World {
    pub app: TestApp,
    pub stripe: FakeStripe,
    pub hubspot: FakeProvider,
    pub drive: FakeOAuth,
}

impl World {
    pub async fn start(backend: Backend) -> Self {
        let stripe = FakeStripe::start().await;
        let hubspot = FakeProvider::start(Kind::Hubspot).await;
        let drive = FakeOAuth::start(OKind::GoogleDrive).await;
        let mut settings: Vec<(String, String)> = stripe
            .settings()
            .into_iter()
            .chain(hubspot.settings())
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        settings.extend(oauth_settings(&[&drive]));
        let overrides: Vec<(&str, &str)> = settings
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let app = TestApp::spawn_with(backend, &overrides).await;
        Self {
            app,
            stripe,
            hubspot,
            drive,
        }
    }

    /// The settings to restart the app with.
    fn settings(&self) -> Vec<(String, String)> {
        let mut settings: Vec<(String, String)> = self
            .stripe
            .settings()
            .into_iter()
            .chain(self.hubspot.settings())
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        settings.extend(oauth_settings(&[&self.drive]));
        settings
    }
}

/// A user with everything this service can hold: a PRO Stripe subscription with a failed
/// and a paid invoice (whose payload names the user's email), HubSpot connected and synced,
/// Google Drive connected through OAuth, an unfinished OAuth flow, activity entries.
/// Returns the Stripe subscription id.
pub async fn rich_user(w: &World, user: &str) -> String {
    let app = &w.app;
    let (customer, sub_id) = subscribe(app, &w.stripe, user, Tier::Pro).await;
    let (start, _) = period();
    for (n, status, paid) in [(1, "open", 0), (2, "paid", 900)] {
        let mut invoice = w.stripe.put_invoice(&InvoiceSpec {
            id: &format!("in_{}", uuid::Uuid::new_v4().simple()),
            customer: &customer,
            subscription: &sub_id,
            status,
            amount_due: 900,
            amount_paid: paid,
            created: start + n,
        });
        invoice["customer_email"] = json!(email(user));
        invoice["customer_name"] = json!(format!("Name of {user}"));
        invoice["number"] = json!(format!("NEXUS-{n:04}"));
        let kind = if paid > 0 {
            "invoice.paid"
        } else {
            "invoice.payment_failed"
        };
        let (_, event) = w.stripe.event(kind, &invoice);
        app.deliver_signed(&event).await;
    }
    app.add_contacts_named(user, user, 3).await;
    connect(app, user, &w.hubspot).await;
    let mut client = app.integrations().await;
    let job = start_sync(&mut client, user, Provider::Hubspot).await;
    wait_for_job(app, user, &job.id, Duration::from_secs(30)).await;
    connect_oauth(app, user, &w.drive, &[]).await;
    // Started and never finished.
    start_oauth(app, user, OKind::GoogleDrive, &[]).await;
    sub_id
}

pub fn email(user: &str) -> String {
    format!("{user}@example.com")
}

/// Every JSON line of the user's export, as `caller` asks for it.
pub async fn export(app: &TestApp, caller_token: &str, user_id: &str) -> Vec<Value> {
    let mut stream = app
        .account()
        .await
        .export_my_data(authed(
            ExportMyDataRequest {
                user_id: user_id.to_string(),
            },
            caller_token,
        ))
        .await
        .unwrap_or_else(|e| panic!("ExportMyData: {e}"))
        .into_inner();
    let mut lines = Vec::new();
    while let Some(message) = stream
        .message()
        .await
        .unwrap_or_else(|e| panic!("export stream: {e}"))
    {
        lines.push(
            serde_json::from_str(&message.json_line)
                .unwrap_or_else(|e| panic!("not JSON: {e}: {}", message.json_line)),
        );
    }
    lines
}

async fn erase(app: &TestApp, caller_token: &str, user_id: &str) -> DeleteMyDataResponse {
    app.account()
        .await
        .delete_my_data(authed(
            DeleteMyDataRequest {
                user_id: user_id.to_string(),
            },
            caller_token,
        ))
        .await
        .unwrap_or_else(|e| panic!("DeleteMyData: {e}"))
        .into_inner()
}

fn of_type<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["type"] == kind).collect()
}

/// Every row of every table this service owns, as text, with its table name. The card
/// application's `cards` and `contacts` are left out: it owns them and erases them itself.
pub async fn every_row(pool: &TestPool) -> Vec<(String, String)> {
    let skip = ["cards", "contacts", "_sqlx_migrations", "sqlite_sequence"];
    let mut rows = Vec::new();
    match pool {
        TestPool::Postgres(pool) => {
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
            )
            .fetch_all(pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
            for table in tables.into_iter().filter(|t| !skip.contains(&t.as_str())) {
                let sql = format!(r#"SELECT t::text FROM "{table}" t"#);
                let texts: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .fetch_all(pool)
                    .await
                    .unwrap_or_else(|e| panic!("{table}: {e}"));
                rows.extend(texts.into_iter().map(|t| (table.clone(), t)));
            }
        }
        TestPool::Sqlite(pool) => {
            let tables: Vec<String> =
                sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
                    .fetch_all(pool)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            for table in tables.into_iter().filter(|t| !skip.contains(&t.as_str())) {
                let columns: Vec<String> =
                    sqlx::query_scalar("SELECT name FROM pragma_table_info($1)")
                        .bind(&table)
                        .fetch_all(pool)
                        .await
                        .unwrap_or_else(|e| panic!("{table}: {e}"));
                let row = columns
                    .iter()
                    .map(|c| format!(r#"quote("{c}")"#))
                    .collect::<Vec<_>>()
                    .join(" || ',' || ");
                let sql = format!(r#"SELECT {row} FROM "{table}""#);
                let texts: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .fetch_all(pool)
                    .await
                    .unwrap_or_else(|e| panic!("{table}: {e}"));
                rows.extend(texts.into_iter().map(|t| (table.clone(), t)));
            }
        }
    }
    rows
}

/// The rows naming `needle`, as `table: row`.
pub async fn rows_naming(pool: &TestPool, needle: &str) -> Vec<String> {
    every_row(pool)
        .await
        .into_iter()
        .filter(|(_, row)| row.contains(needle))
        .map(|(table, row)| format!("{table}: {row}"))
        .collect()
}

async fn the_export_holds_everything_of_the_user_in_the_documented_shape(backend: Backend) {
    let w = World::start(backend).await;
    let sub_id = rich_user(&w, ADA).await;
    let lines = export(&w.app, &token(ADA), "").await;

    assert_eq!(lines[0]["type"], "export");
    assert_eq!(lines[0]["format"], "nexus-billing-export");
    assert_eq!(lines[0]["version"], 1);
    assert_eq!(lines[0]["user_id"], ADA);
    let last = lines.last().unwrap_or_else(|| panic!("empty export"));
    assert_eq!(last["type"], "end");
    assert_eq!(
        last["records"],
        lines.len() - 1,
        "the trailer counts the lines"
    );
    let order: Vec<&str> = lines.iter().filter_map(|l| l["type"].as_str()).collect();
    let position = |t: &str| order.iter().position(|x| *x == t);
    for pair in [
        "subscription",
        "invoice",
        "integration",
        "sync_job",
        "activity",
        "end",
    ]
    .windows(2)
    {
        assert!(
            position(pair[0]) < position(pair[1]),
            "{pair:?} out of order: {order:?}"
        );
    }

    let subscription = of_type(&lines, "subscription");
    assert_eq!(subscription.len(), 1);
    assert_eq!(subscription[0]["tier"], "pro");
    assert_eq!(subscription[0]["effective_tier"], "pro");
    assert_eq!(subscription[0]["provider_subscription_id"], sub_id.as_str());

    let invoices = of_type(&lines, "invoice");
    let ids: Vec<&str> = invoices
        .iter()
        .filter_map(|i| i["provider_invoice_id"].as_str())
        .collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(invoices[0]["status"], "paid", "newest first");
    assert_eq!(invoices[0]["amount_paid"], 900);
    assert_eq!(invoices[1]["amount_paid"], 0);

    let integrations = of_type(&lines, "integration");
    let providers: Vec<&str> = integrations
        .iter()
        .filter_map(|i| i["provider"].as_str())
        .collect();
    assert_eq!(providers, ["google_drive", "hubspot"]);
    assert!(integrations.iter().all(|i| i["status"] == "active"));
    let hubspot = integrations[1];
    assert!(hubspot["last_sync_at"].is_string(), "{hubspot}");

    let jobs = of_type(&lines, "sync_job");
    assert!(
        jobs.iter()
            .any(|j| j["provider"] == "hubspot" && j["state"] == "succeeded"),
        "{jobs:?}"
    );
    let activity: Vec<&str> = of_type(&lines, "activity")
        .iter()
        .filter_map(|a| a["kind"].as_str())
        .collect();
    for kind in [
        "subscription.started",
        "payment.failed",
        "payment.succeeded",
        "integration.connected",
    ] {
        assert!(activity.contains(&kind), "{kind} missing from {activity:?}");
    }

    // Never a credential: the HubSpot key, the OAuth tokens and client secret.
    let text = lines.iter().map(Value::to_string).collect::<String>();
    let mut secrets = w.drive.secrets();
    secrets.push(HUBSPOT_TOKEN.to_string());
    assert!(secrets.len() > 2);
    for secret in &secrets {
        assert!(!text.contains(secret.as_str()), "the export holds a secret");
    }

    // Another user's export holds nothing of Ada's.
    let other = export(&w.app, &token(BOB), "").await;
    let other_text = other.iter().map(Value::to_string).collect::<String>();
    assert!(!other_text.contains(ADA), "{other_text}");
    for id in &ids {
        assert!(!other_text.contains(id), "{other_text}");
    }
    assert_eq!(of_type(&other, "subscription")[0]["tier"], "free");
    assert_eq!(
        other.len(),
        3,
        "header, FREE subscription and trailer: {other:?}"
    );
    w.app.stop().await;
}

async fn erasure_leaves_only_detached_invoices_and_a_second_call_reports_it(backend: Backend) {
    let w = World::start(backend).await;
    let sub_id = rich_user(&w, ADA).await;
    rich_user(&w, BOB).await;
    let pool = &w.app.pool;
    assert!(
        !rows_naming(pool, &email(ADA)).await.is_empty(),
        "the search finds the email before"
    );
    assert!(!rows_naming(pool, ADA).await.is_empty());
    let bob_rows_before = rows_naming(pool, BOB).await.len();

    // The card application's account deletion calls it with a service token.
    let erased = erase(&w.app, &service_token("card-app"), ADA).await;
    assert!(!erased.already_erased);
    assert_eq!(erased.integrations_deleted, 2);
    assert!(erased.sync_jobs_deleted >= 1);
    assert!(erased.activity_entries_deleted >= 4);
    assert_eq!(erased.oauth_states_deleted, 1);
    assert_eq!(erased.subscriptions_deleted, 1);
    assert_eq!(erased.payment_customers_deleted, 1);
    assert_eq!(erased.invoices_kept, 2);
    assert!(erased.webhook_events_scrubbed >= 4);
    assert_eq!(erased.subscription_canceled_provider, "stripe");
    let mut revocations: Vec<(String, RevocationOutcome)> = erased
        .revocations
        .iter()
        .map(|r| (r.provider.clone(), r.outcome()))
        .collect();
    revocations.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        revocations,
        [
            ("google_drive".to_string(), RevocationOutcome::Revoked),
            ("hubspot".to_string(), RevocationOutcome::NotSupported),
        ]
    );
    // The providers were told: the grant revoked, the subscription cancelled now.
    assert_eq!(w.drive.revoked().len(), 1, "one revocation at Google");
    let deleted = w.stripe.requests("DELETE", "/v1/subscriptions/");
    assert_eq!(deleted.len(), 1);
    assert!(deleted[0].path.ends_with(&sub_id));

    // Nothing names Ada any more; her invoices stay, detached, with their amounts.
    assert_eq!(rows_naming(pool, ADA).await, Vec::<String>::new());
    assert_eq!(rows_naming(pool, &email(ADA)).await, Vec::<String>::new());
    let pseudonym = format!("erased:{}", erased.erasure_id);
    let kept = w
        .app
        .count(
            "invoices",
            &format!("user_id = '{pseudonym}' AND amount_due = 900 AND hosted_invoice_url IS NULL"),
        )
        .await;
    assert_eq!(kept, 2);
    assert_eq!(
        w.app.count("erasures", "state = 'done' AND runs = 1").await,
        1
    );
    // Bob is untouched.
    assert_eq!(rows_naming(pool, BOB).await.len(), bob_rows_before);

    // A second call finds nothing and says so.
    let again = erase(&w.app, &token(ADA), "").await;
    assert!(again.already_erased);
    assert_eq!(again.erasure_id, erased.erasure_id);
    assert!(again.first_erased_at.is_some());
    assert_eq!(
        again.integrations_deleted + again.invoices_kept + again.activity_entries_deleted,
        0
    );
    assert!(again.revocations.is_empty());
    assert_eq!(w.stripe.requests("DELETE", "/v1/subscriptions/").len(), 1);

    // Stripe's late news about the cancelled subscription, and a replayed checkout, bring
    // nothing back.
    let cancelled = w
        .stripe
        .subscription(&sub_id)
        .unwrap_or_else(|| panic!("sub"));
    let (_, deleted_event) = w.stripe.event("customer.subscription.deleted", &cancelled);
    w.app.deliver_signed(&deleted_event).await;
    let customer = cancelled["customer"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (_, replayed) = w.stripe.event(
        "checkout.session.completed",
        &w.stripe.checkout_completed(ADA, &customer, &sub_id),
    );
    w.app.deliver_signed(&replayed).await;
    let export = export(&w.app, &token(ADA), "").await;
    assert_eq!(export.len(), 3, "{export:?}");
    assert_eq!(of_type(&export, "subscription")[0]["tier"], "free");
    // Both events are kept by id (so they are never applied again), without their payload.
    let naming = rows_naming(pool, ADA).await;
    assert_eq!(naming, Vec::<String>::new());
    w.app.stop().await;
}

async fn a_crash_in_the_middle_of_an_erasure_keeps_the_data_and_the_rerun_finishes(
    backend: Backend,
) {
    let w = World::start(backend).await;
    rich_user(&w, ADA).await;
    // Stripe answers slowly: the erasure revokes Google's grant, then waits on Stripe, and the
    // server dies there.
    w.stripe.set_delay(Duration::from_secs(20));
    let app = &w.app;
    let channel = app.channel().await;
    let call = tokio::spawn(async move {
        nexus_billing::grpc::proto::account::account_service_client::AccountServiceClient::new(
            channel,
        )
        .delete_my_data(authed(DeleteMyDataRequest::default(), &token(ADA)))
        .await
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while w.drive.revoked().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the revocation never came"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let settings = w.settings();
    let overrides: Vec<(&str, &str)> = settings
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let World {
        app,
        stripe,
        hubspot: _hubspot,
        drive,
    } = w;
    let app = app.crash_and_restart(&overrides).await;
    let failed = call.await.unwrap_or_else(|e| panic!("{e}"));
    assert!(failed.is_err(), "the call cannot have finished: {failed:?}");

    // Nothing was deleted: the entry says the erasure is running.
    let ada = format!("user_id = '{ADA}'");
    assert_eq!(app.count("integrations", &ada).await, 2);
    assert_eq!(app.count("subscriptions", &ada).await, 1);
    assert_eq!(app.count("erasures", "state = 'running'").await, 1);

    stripe.set_delay(Duration::ZERO);
    let erased = erase(&app, &token(ADA), "").await;
    assert!(!erased.already_erased);
    assert_eq!(erased.integrations_deleted, 2);
    assert_eq!(erased.invoices_kept, 2);
    assert_eq!(erased.subscription_canceled_provider, "stripe");
    assert!(drive.revoked().len() >= 2, "revoked again by the rerun");
    assert_eq!(rows_naming(&app.pool, ADA).await, Vec::<String>::new());
    assert_eq!(
        app.count("erasures", "state = 'done' AND runs = 2").await,
        1
    );
    app.stop().await;
}

async fn another_users_data_is_refused_unless_the_caller_is_a_service(backend: Backend) {
    let w = World::start(backend).await;
    rich_user(&w, ADA).await;
    let mut client = w.app.account().await;
    let bob = token(BOB);
    let refused = [
        client
            .list_activity(authed(
                ListActivityRequest {
                    user_id: ADA.into(),
                    ..Default::default()
                },
                &bob,
            ))
            .await
            .err(),
        client
            .export_my_data(authed(
                ExportMyDataRequest {
                    user_id: ADA.into(),
                },
                &bob,
            ))
            .await
            .err(),
        client
            .delete_my_data(authed(
                DeleteMyDataRequest {
                    user_id: ADA.into(),
                },
                &bob,
            ))
            .await
            .err(),
    ];
    for status in refused {
        let status = status.unwrap_or_else(|| panic!("another user's data was served"));
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    }
    // Without a token, nothing at all.
    let anonymous = client
        .list_activity(ListActivityRequest::default())
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(anonymous, Some(Code::Unauthenticated));
    assert_eq!(
        w.app
            .count("integrations", &format!("user_id = '{ADA}'"))
            .await,
        2
    );

    // Support (a service caller) may read Ada's export.
    let support = export(&w.app, &service_token("support-tool"), ADA).await;
    assert_eq!(support[0]["user_id"], ADA);
    assert_eq!(of_type(&support, "integration").len(), 2);
    w.app.stop().await;
}

async fn activity_is_paged_newest_first(backend: Backend) {
    let w = World::start(backend).await;
    rich_user(&w, ADA).await;
    let mut client = w.app.account().await;
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_activity(authed(
                ListActivityRequest {
                    page_size: 2,
                    page_token: page_token.clone(),
                    ..Default::default()
                },
                &token(ADA),
            ))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .into_inner();
        assert!(page.entries.len() <= 2);
        seen.extend(page.entries);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let stored = w.app.activity_kinds(ADA).await;
    assert!(stored.len() >= 4);
    let mut kinds: Vec<String> = seen.iter().map(|e| e.kind.clone()).collect();
    kinds.reverse();
    assert_eq!(kinds, stored, "every entry once, newest first");
    let times: Vec<i64> = seen
        .iter()
        .filter_map(|e| e.created_at.as_ref().map(|t| t.seconds))
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    assert!(
        seen.iter()
            .all(|e| serde_json::from_str::<Value>(&e.details_json).is_ok())
    );
    let bad = client
        .list_activity(authed(
            ListActivityRequest {
                page_token: "not-a-token".into(),
                ..Default::default()
            },
            &token(ADA),
        ))
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(bad, Some(Code::InvalidArgument));
    w.app.stop().await;
}

const BIN: &str = env!("CARGO_BIN_EXE_nexus-billing");

/// Runs `nexus-billing <args>` against the world's database and fakes: (success, stdout,
/// stderr).
fn run_cli(w: &World, args: &[&str]) -> (bool, String, String) {
    let mut command = std::process::Command::new(BIN);
    command
        .env_clear()
        .env("DATABASE_URL", w.app.database_url())
        .env("JWT_SECRET", crate::helpers::JWT_SECRET)
        .env("ENCRYPTION_KEY", crate::helpers::ENCRYPTION_KEY)
        .env("LOG_LEVEL", "warn")
        .env("DATA_DIR", std::env::temp_dir());
    for (flag, value) in w.settings() {
        command.arg(format!("{flag}={value}"));
    }
    let output = command
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn the_operator_commands_show_export_and_erase_a_user(backend: Backend) {
    let w = World::start(backend).await;
    let sub_id = rich_user(&w, ADA).await;
    let mut secrets = w.drive.secrets();
    secrets.push(HUBSPOT_TOKEN.to_string());

    let (ok, shown, err) = run_cli(&w, &["user", "show", ADA]);
    assert!(ok, "{shown}{err}");
    for want in [
        "subscription: tier pro (effective pro), status active, provider stripe",
        sub_id.as_str(),
        "integrations (2):",
        "hubspot active",
        "google_drive active",
        "payment of",
    ] {
        assert!(shown.contains(want), "`user show` lacks {want:?}:\n{shown}");
    }

    let (ok, exported, err) = run_cli(&w, &["user", "export", ADA]);
    assert!(ok, "{err}");
    let lines: Vec<Value> = exported
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines[0]["type"], "export");
    assert_eq!(of_type(&lines, "integration").len(), 2);
    assert_eq!(lines.last().map(|l| l["type"].clone()), Some(json!("end")));
    for secret in &secrets {
        let all = format!("{shown}{exported}{err}");
        assert!(
            !all.contains(secret.as_str()),
            "an operator command printed a secret"
        );
    }

    let (ok, deleted, err) = run_cli(&w, &["user", "delete", ADA]);
    assert!(ok, "{deleted}{err}");
    let report: Value = serde_json::from_str(&deleted).unwrap_or_else(|e| panic!("{e}: {deleted}"));
    assert_eq!(report["rows"]["integrations"], 2);
    assert_eq!(report["rows"]["invoices_kept"], 2);
    assert_eq!(report["subscription_canceled"], "stripe");
    assert_eq!(rows_naming(&w.app.pool, ADA).await, Vec::<String>::new());
    assert_eq!(
        w.app.count("erasures", "requested_by = 'operator'").await,
        1
    );

    let (ok, shown, _) = run_cli(&w, &["user", "show", ADA]);
    assert!(ok);
    assert!(shown.contains(": done (runs 1"), "{shown}");
    assert!(shown.contains("tier free"), "{shown}");
    let (ok, _, err) = run_cli(&w, &["user", "show", "bad\nid"]);
    assert!(!ok && err.contains("user id"), "{err}");
    w.app.stop().await;
}

//! The storage trait's contract, run against both implementations through `store::connect`.

use std::sync::Arc;

use chrono::{Duration, Utc};
use nexus_billing::{
    domain::{
        SubscriptionStatus, Tier, Usage, UserId, catalogue::ProviderId,
        subscription::PaymentProvider,
    },
    store::{self, Backend as StoreBackend, Store, StoreError},
};

use crate::{
    exec,
    helpers::{Backend, SeedSubscription, TestDatabase, seed_integration, seed_subscription},
};

crate::on_both_backends!(
    the_url_scheme_picks_the_backend_and_migrations_are_idempotent,
    a_user_without_a_row_has_no_subscription,
    a_subscription_round_trips_every_field,
    usage_is_counted_per_user,
    the_limit_checks_read_equals_the_subscription_and_usage_reads,
    integrations_are_listed_per_user_in_provider_order,
    an_unknown_stored_value_is_an_error_not_a_default,
    the_scheduler_queues_only_what_is_due_and_never_beside_an_active_job,
    a_dunning_email_claimed_again_after_its_lease_is_not_undone_by_the_first_sender,
    a_job_is_not_claimed_beside_a_canceled_one_whose_worker_still_holds_it,
);

/// Sender A's claim runs out during a slow delivery; sender B claims the email and sends it.
/// A's late "failed" must not put the sent email back to pending (it would go out again).
async fn a_dunning_email_claimed_again_after_its_lease_is_not_undone_by_the_first_sender(
    backend: Backend,
) {
    use nexus_billing::{domain::dunning::DunningStep, store::NewDunningEmail};
    let (db, store) = open(backend).await;
    let ann = user("dunned");
    let now = Utc::now();
    let mut tx = store.begin().await.unwrap_or_else(|e| panic!("{e}"));
    tx.lock_subscription(&ann).await.unwrap_or_else(|e| panic!("{e}"));
    tx.schedule_dunning(&[NewDunningEmail {
        user: &ann,
        provider: PaymentProvider::Stripe,
        invoice_id: "in_slow",
        step: DunningStep::Reminder(0),
        recipient: Some("ann@example.com"),
        due: now - Duration::seconds(5),
        grace_ends: now + Duration::days(7),
    }])
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
    let ids = store
        .due_dunning_emails(now, 10)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ids.len(), 1);
    let a = store
        .claim_dunning_email(&ids[0], now, now + Duration::seconds(1))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("A claims"));
    let later = now + Duration::seconds(2);
    let b = store
        .claim_dunning_email(&ids[0], later, later + Duration::seconds(120))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("B claims once A's lease ran out"));
    store
        .dunning_email_sent(&b.id, b.lease, later)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // A comes back: its delivery timed out.
    store
        .dunning_email_failed(&a.id, a.lease, later, "the SMTP server timed out", false)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    store
        .dunning_email_postponed(&a.id, a.lease, later)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let state: (String,) = match &db.pool().await {
        crate::helpers::TestPool::Sqlite(pool) => {
            sqlx::query_as("SELECT state FROM dunning_emails").fetch_one(pool).await
        }
        crate::helpers::TestPool::Postgres(pool) => {
            sqlx::query_as("SELECT state FROM dunning_emails").fetch_one(pool).await
        }
    }
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(state.0, "sent");
    assert!(
        store
            .due_dunning_emails(later + Duration::days(1), 10)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .is_empty()
    );
    close(db, store).await;
}

fn user(id: &str) -> UserId {
    UserId::parse(id).unwrap_or_else(|e| panic!("{e}"))
}

async fn open(backend: Backend) -> (TestDatabase, Arc<dyn Store>) {
    let db = TestDatabase::create(backend).await;
    let store = store::connect(&db.url, 3)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    store.migrate().await.unwrap_or_else(|e| panic!("{e}"));
    (db, store)
}

async fn close(db: TestDatabase, store: Arc<dyn Store>) {
    store.close().await;
    db.drop_database().await;
}

async fn the_url_scheme_picks_the_backend_and_migrations_are_idempotent(backend: Backend) {
    let (db, store) = open(backend).await;
    let expected = match backend {
        Backend::Sqlite => StoreBackend::Sqlite,
        Backend::Postgres => StoreBackend::Postgres,
    };
    assert_eq!(store.backend(), expected);
    store
        .migrate()
        .await
        .unwrap_or_else(|e| panic!("second migrate: {e}"));
    store.ping().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        store::connect("mysql://localhost/db", 1).await.err(),
        Some(StoreError::UnsupportedUrl)
    ));
    close(db, store).await;
}

async fn a_user_without_a_row_has_no_subscription(backend: Backend) {
    let (db, store) = open(backend).await;
    let sub = store
        .subscription(&user("nobody"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sub, None);
    close(db, store).await;
}

async fn a_subscription_round_trips_every_field(backend: Backend) {
    let (db, store) = open(backend).await;
    let period_end = Utc::now() + Duration::days(12);
    seed_subscription(
        &db.pool().await,
        SeedSubscription {
            user: "payer",
            tier: "premium",
            status: "past_due",
            period_end,
            cancel_at_period_end: true,
        },
    )
    .await;
    let sub = store
        .subscription(&user("payer"))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("the row was not found"));
    assert_eq!(sub.user_id, user("payer"));
    assert_eq!(sub.tier, Tier::Premium);
    assert_eq!(sub.status, SubscriptionStatus::PastDue);
    assert_eq!(sub.provider, Some(PaymentProvider::Stripe));
    assert_eq!(sub.provider_customer_id.as_deref(), Some("cus_test"));
    assert_eq!(sub.provider_subscription_id.as_deref(), Some("sub_payer"));
    assert!(sub.cancel_at_period_end);
    let stored_end = sub.current_period_end.unwrap_or_default();
    assert!(
        (stored_end - period_end).num_milliseconds().abs() < 1,
        "{stored_end} != {period_end}"
    );
    assert_eq!(
        sub.current_period_start.map(|s| s.timestamp()),
        Some((period_end - Duration::days(30)).timestamp())
    );
    assert_eq!(
        store.subscription(&user("payer2")).await.ok().flatten(),
        None
    );
    close(db, store).await;
}

async fn usage_is_counted_per_user(backend: Backend) {
    let (db, store) = open(backend).await;
    let pool = db.pool().await;
    for (id, owner) in [("c1", "a"), ("c2", "a"), ("c3", "b")] {
        crate::exec!(
            &pool,
            "INSERT INTO cards (id, user_id) VALUES ($1, $2)",
            id,
            owner
        );
    }
    for (id, owner) in [("k1", "a"), ("k2", "b"), ("k3", "b"), ("k4", "b")] {
        crate::exec!(
            &pool,
            "INSERT INTO contacts (id, user_id) VALUES ($1, $2)",
            id,
            owner
        );
    }
    let usage = |u: &'static str| {
        let store = Arc::clone(&store);
        async move {
            store
                .usage(&user(u))
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        }
    };
    assert_eq!(
        usage("a").await,
        Usage {
            cards: 2,
            contacts: 1
        }
    );
    assert_eq!(
        usage("b").await,
        Usage {
            cards: 1,
            contacts: 3
        }
    );
    assert_eq!(
        usage("c").await,
        Usage {
            cards: 0,
            contacts: 0
        }
    );
    close(db, store).await;
}

async fn integrations_are_listed_per_user_in_provider_order(backend: Backend) {
    let (db, store) = open(backend).await;
    let pool = db.pool().await;
    seed_integration(&pool, "a", "zapier", "{}").await;
    let hubspot = seed_integration(&pool, "a", "hubspot", r#"{"syncInterval":"3600"}"#).await;
    seed_integration(&pool, "b", "dropbox", "{}").await;
    let list = store
        .integrations(&user("a"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let providers: Vec<ProviderId> = list.iter().map(|i| i.provider).collect();
    assert_eq!(providers, vec![ProviderId::Hubspot, ProviderId::Zapier]);
    assert_eq!(list[0].id, hubspot);
    assert_eq!(list[0].user_id, user("a"));
    assert_eq!(
        list[0].settings.get("syncInterval").map(String::as_str),
        Some("3600")
    );
    assert_eq!(list[0].last_sync_at, None);
    assert!(
        store
            .integrations(&user("c"))
            .await
            .unwrap_or_default()
            .is_empty()
    );
    close(db, store).await;
}

async fn an_unknown_stored_value_is_an_error_not_a_default(backend: Backend) {
    let (db, store) = open(backend).await;
    // A provider this version does not know (say, written by a newer version).
    seed_integration(&db.pool().await, "a", "myspace", "{}").await;
    let result = store.integrations(&user("a")).await;
    assert!(matches!(result, Err(StoreError::Corrupt(_))), "{result:?}");
    close(db, store).await;
}

/// One scheduler pass, at an instant the test chooses: nothing is queued before the
/// integration's next sync is due; when due, one job is queued and the next sync moves an
/// interval on; due again while that job is active, no second job is queued (the next sync
/// still moves on). The end-to-end tests cannot show "nothing happened" without a clock.
async fn the_scheduler_queues_only_what_is_due_and_never_beside_an_active_job(backend: Backend) {
    let (db, store) = open(backend).await;
    let pool = db.pool().await;
    seed_integration(&pool, "ada", "hubspot", "{}").await;
    let t0 = Utc::now();
    exec!(
        &pool,
        "UPDATE integrations SET next_sync_at = $1, sync_interval_seconds = 3600",
        t0 + Duration::hours(1)
    );
    let jobs = |state: &'static str| {
        let pool = &pool;
        async move {
            let sql = "SELECT COUNT(*) FROM sync_jobs WHERE state = $1";
            match pool {
                crate::helpers::TestPool::Sqlite(p) => {
                    sqlx::query_scalar::<_, i64>(sql).bind(state).fetch_one(p).await
                }
                crate::helpers::TestPool::Postgres(p) => {
                    sqlx::query_scalar::<_, i64>(sql).bind(state).fetch_one(p).await
                }
            }
            .unwrap_or_else(|e| panic!("{e}"))
        }
    };
    let pass = |at| {
        let store = Arc::clone(&store);
        async move {
            store
                .schedule_due_syncs(at, 500, 3)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        }
    };
    for at in [t0, t0 + Duration::minutes(59)] {
        pass(at).await;
        assert_eq!(jobs("queued").await, 0, "queued before it was due ({at})");
    }
    pass(t0 + Duration::hours(1) + Duration::seconds(1)).await;
    assert_eq!(jobs("queued").await, 1, "due: one job");
    // Due again an interval later, with that job still active: none beside it.
    pass(t0 + Duration::hours(2) + Duration::seconds(2)).await;
    assert_eq!(jobs("queued").await, 1, "a second job beside an active one");
    exec!(&pool, "UPDATE sync_jobs SET state = 'running'");
    pass(t0 + Duration::hours(3) + Duration::seconds(3)).await;
    assert_eq!(jobs("queued").await, 0, "a job beside a running one");
    assert_eq!(jobs("running").await, 1);
    drop(pool);
    close(db, store).await;
}

/// `standing` (the limit check's one statement; on SQLite read on the caller's thread through
/// a connection of its own) answers exactly what `subscription` and `usage` answer, through
/// every change: none, a subscription, counts, past due, written by the service and by hand.
async fn the_limit_checks_read_equals_the_subscription_and_usage_reads(backend: Backend) {
    let (db, store) = open(backend).await;
    let pool = db.pool().await;
    let same = |u: &'static str| {
        let store = Arc::clone(&store);
        async move {
            let standing = store
                .standing(&user(u))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let apart = (
                store
                    .subscription(&user(u))
                    .await
                    .unwrap_or_else(|e| panic!("{e}")),
                store.usage(&user(u)).await.unwrap_or_else(|e| panic!("{e}")),
            );
            assert_eq!(standing, apart, "{u}");
            standing
        }
    };
    assert_eq!(same("sam").await, (None, Usage::default()));
    crate::exec!(&pool, "INSERT INTO contacts (id, user_id) VALUES ('k1', 'sam')");
    assert_eq!(same("sam").await.1.contacts, 1, "a write is seen at once");
    seed_subscription(
        &pool,
        SeedSubscription {
            user: "sam",
            tier: "pro",
            status: "past_due",
            period_end: Utc::now() + Duration::days(3),
            cancel_at_period_end: true,
        },
    )
    .await;
    let (sub, _) = same("sam").await;
    assert_eq!(sub.map(|s| s.tier), Some(Tier::Pro));
    // Timestamps as SQL writes them by hand.
    crate::exec!(
        &pool,
        pg: "UPDATE subscriptions SET past_due_since = TIMESTAMPTZ '2026-01-02 03:04:05.5+00'",
        sqlite: "UPDATE subscriptions SET past_due_since = '2026-01-02 03:04:05.5'",
    );
    let (sub, _) = same("sam").await;
    assert!(sub.is_some_and(|s| s.past_due_since.is_some()));
    crate::exec!(&pool, "DELETE FROM contacts WHERE user_id = 'sam'");
    assert_eq!(same("sam").await.1, Usage::default());
    close(db, store).await;
}

/// Issue 26, item 5: CancelSyncJob frees the integration's one-job slot at once, before the
/// running worker notices, so Sync now can queue another job. That job must not be handed to a
/// second worker while the canceled job's worker still holds its lease (two workers pushing for
/// one integration: two Drive files); it is once that worker lets go, or its lease runs out.
async fn a_job_is_not_claimed_beside_a_canceled_one_whose_worker_still_holds_it(
    backend: Backend,
) {
    use nexus_billing::{domain::sync_job::Direction, store::NewSyncJob};
    let (db, store) = open(backend).await;
    let pool = db.pool().await;
    let integration = seed_integration(&pool, "ada", "hubspot", "{}").await;
    let ada = user("ada");
    let t0 = Utc::now();
    let job = |now| NewSyncJob {
        integration_id: &integration,
        user: &ada,
        direction: Direction::Push,
        max_attempts: 3,
        due: now,
        now,
        full: false,
    };
    let ok = |e: StoreError| -> ! { panic!("{e}") };
    store.enqueue_sync(&job(t0)).await.unwrap_or_else(|e| ok(e));
    let lease = t0 + Duration::minutes(5);
    let first = store
        .claim_sync_job("w1", t0, lease)
        .await
        .unwrap_or_else(|e| ok(e))
        .unwrap_or_else(|| panic!("nothing to claim"));
    assert!(
        store
            .cancel_sync_job(&ada, &first.id, t0)
            .await
            .unwrap_or_else(|e| ok(e))
    );
    let t1 = t0 + Duration::seconds(1);
    let (second, created) = store.enqueue_sync(&job(t1)).await.unwrap_or_else(|e| ok(e));
    assert!(created, "the cancel frees the slot for Sync now");
    assert_eq!(
        store
            .claim_sync_job("w2", t1, t1 + Duration::minutes(5))
            .await
            .unwrap_or_else(|e| ok(e))
            .map(|j| j.id),
        None,
        "claimed beside a canceled job whose worker still holds it"
    );
    store
        .release_stopped_job(&first.id, "w1")
        .await
        .unwrap_or_else(|e| ok(e));
    let t2 = t0 + Duration::seconds(2);
    let claimed = store
        .claim_sync_job("w2", t2, t2 + Duration::minutes(5))
        .await
        .unwrap_or_else(|e| ok(e))
        .map(|j| j.id);
    assert_eq!(claimed, Some(second.id), "claimed once the first worker let go");
    drop(pool);
    close(db, store).await;
}

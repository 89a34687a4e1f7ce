//! The usage counts the database keeps (`usage_counts`, issue 27): exact whatever the card app
//! does, and what GetUsage and CheckLimit answer from.

use std::collections::BTreeMap;

use nexus_billing::grpc::proto::billing::{CheckLimitRequest, GetUsageRequest, Resource};

use crate::helpers::{Backend, TestApp, TestPool, authed, token};

crate::on_both_backends!(
    the_counts_equal_count_star_after_a_storm_of_concurrent_writes,
    usage_and_limit_checks_answer_from_the_kept_counts,
);

const USERS: [&str; 4] = ["storm-a", "storm-b", "storm-c", "storm-d"];

/// One write the card app might make.
enum Write {
    /// A statement on its own.
    One(String),
    /// Statements in one transaction, committed or rolled back.
    Tx(Vec<String>, bool),
}

fn random_write(rng: &mut fastrand::Rng, worker: usize, n: usize) -> Write {
    let table = if rng.bool() { "cards" } else { "contacts" };
    let user = USERS[rng.usize(..USERS.len())];
    let other = USERS[rng.usize(..USERS.len())];
    let id = |k: usize| format!("w{worker}-{n}-{k}");
    let insert = |rows: usize| {
        let values: Vec<String> = (0..rows)
            .map(|k| {
                let owner = if k % 3 == 2 { other } else { user };
                format!("('{}', '{owner}')", id(k))
            })
            .collect();
        format!("INSERT INTO {table} (id, user_id) VALUES {}", values.join(", "))
    };
    // Deletes and moves pick rows by a random prefix of ids, so they hit other workers' rows.
    let some_rows = format!("id LIKE 'w{}-{}%'", rng.usize(..8), rng.usize(..10));
    match rng.usize(..10) {
        0..=3 => Write::One(insert(1 + rng.usize(..5))),
        4..=5 => Write::One(format!(
            "DELETE FROM {table} WHERE user_id = '{user}' AND {some_rows}"
        )),
        6 => Write::One(format!(
            "UPDATE {table} SET user_id = '{other}' WHERE user_id = '{user}' AND {some_rows}"
        )),
        7 => Write::One(format!("DELETE FROM {table} WHERE {some_rows}")),
        _ => Write::Tx(
            vec![
                insert(1 + rng.usize(..3)),
                format!("DELETE FROM {table} WHERE user_id = '{other}' AND {some_rows}"),
                format!(
                    "UPDATE {table} SET user_id = '{user}' WHERE user_id = '{other}' AND {some_rows}"
                ),
            ],
            rng.bool(),
        ),
    }
}

macro_rules! apply {
    ($pool:expr, $write:expr) => {{
        let pool = $pool;
        match $write {
            Write::One(sql) => sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(pool)
                .await
                .map(drop),
            Write::Tx(statements, commit) => async {
                let mut tx = pool.begin().await?;
                for sql in statements {
                    sqlx::query(sqlx::AssertSqlSafe(sql))
                        .execute(&mut *tx)
                        .await?;
                }
                if commit {
                    tx.commit().await
                } else {
                    tx.rollback().await
                }
            }
            .await,
        }
    }};
}

/// Per user: (cards, contacts) by `count(*)`, and as kept in `usage_counts`.
type Counts = BTreeMap<String, (i64, i64)>;

async fn counted_and_kept(pool: &TestPool) -> (Counts, Counts) {
    let counted_sql = "SELECT user_id, SUM(cards) AS cards, SUM(contacts) AS contacts FROM ( \
         SELECT user_id, COUNT(*) AS cards, 0 AS contacts FROM cards GROUP BY user_id \
         UNION ALL SELECT user_id, 0, COUNT(*) FROM contacts GROUP BY user_id) t GROUP BY user_id";
    let kept_sql = "SELECT user_id, cards, contacts FROM usage_counts";
    type Rows = Vec<(String, i64, i64)>;
    let (counted, kept): (Rows, Rows) = match pool {
        TestPool::Postgres(pool) => (
            sqlx::query_as(sqlx::AssertSqlSafe(counted_sql.replace(
                "SUM(cards) AS cards, SUM(contacts) AS contacts",
                "SUM(cards)::bigint AS cards, SUM(contacts)::bigint AS contacts",
            )))
            .fetch_all(pool)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
            sqlx::query_as(kept_sql)
                .fetch_all(pool)
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        ),
        TestPool::Sqlite(pool) => (
            sqlx::query_as(counted_sql)
                .fetch_all(pool)
                .await
                .unwrap_or_else(|e| panic!("{e}")),
            sqlx::query_as(kept_sql)
                .fetch_all(pool)
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        ),
    };
    let map = |rows: Vec<(String, i64, i64)>| {
        rows.into_iter()
            .map(|(user, cards, contacts)| (user, (cards, contacts)))
            .collect::<Counts>()
    };
    (map(counted), map(kept))
}

async fn the_counts_equal_count_star_after_a_storm_of_concurrent_writes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let seed = fastrand::u64(..);
    const WORKERS: usize = 8;
    const WRITES: usize = 60;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..WORKERS {
        // A pool of its own per worker: the writes really run side by side.
        let pool = app.db.pool().await;
        tasks.spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed ^ worker as u64);
            let mut applied = 0usize;
            for n in 0..WRITES {
                let write = random_write(&mut rng, worker, n);
                // A write that fails (a deadlock, a busy database) rolled back whole: the
                // comparison below is against the rows, so it holds either way.
                let result = match &pool {
                    TestPool::Postgres(pool) => apply!(pool, write),
                    TestPool::Sqlite(pool) => apply!(pool, write),
                };
                applied += usize::from(result.is_ok());
            }
            applied
        });
    }
    let mut applied = 0;
    while let Some(done) = tasks.join_next().await {
        applied += done.unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(
        applied > WORKERS * WRITES / 2,
        "seed {seed}: only {applied} of {} writes went in",
        WORKERS * WRITES
    );
    let (counted, kept) = counted_and_kept(&app.pool).await;
    assert!(!counted.is_empty(), "seed {seed}: the storm left no rows");
    assert_eq!(kept, counted, "seed {seed}: usage_counts drifted from count(*)");

    // And what the RPC answers is the rows' count, for every user.
    let mut client = app.billing().await;
    for user in USERS {
        let usage = client
            .get_usage(authed(GetUsageRequest {}, &token(user)))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .into_inner()
            .usage
            .unwrap_or_default();
        let (cards, contacts) = counted.get(user).copied().unwrap_or_default();
        assert_eq!(
            (usage.cards_used, usage.contacts_used),
            (cards, contacts),
            "seed {seed}: {user}"
        );
    }
    // Emptying a user removes their row: nobody is named by a count of nothing.
    crate::exec!(&app.pool, "DELETE FROM cards WHERE user_id = 'storm-a'");
    crate::exec!(&app.pool, "DELETE FROM contacts WHERE user_id = 'storm-a'");
    let (_, kept) = counted_and_kept(&app.pool).await;
    assert!(!kept.contains_key("storm-a"), "{kept:?}");
    app.stop().await;
}

async fn usage_and_limit_checks_answer_from_the_kept_counts(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.add_contacts("erin", 49).await;
    let mut client = app.billing().await;
    let check = |quantity: i64| CheckLimitRequest {
        user_id: String::new(),
        resource: Resource::Contacts.into(),
        quantity,
    };
    let fits = client
        .check_limit(authed(check(1), &token("erin")))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    assert!(fits.allowed);
    assert_eq!((fits.used, fits.remaining), (49, 1));
    let too_many = client
        .check_limit(authed(check(2), &token("erin")))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    assert!(!too_many.allowed, "{too_many:?}");
    // Contacts moved away and deleted are counted off at once.
    crate::exec!(
        &app.pool,
        "UPDATE contacts SET user_id = 'frank' WHERE id IN \
         (SELECT id FROM contacts WHERE user_id = 'erin' ORDER BY id LIMIT 10)"
    );
    crate::exec!(
        &app.pool,
        "DELETE FROM contacts WHERE id IN \
         (SELECT id FROM contacts WHERE user_id = 'erin' ORDER BY id LIMIT 5)"
    );
    let after = client
        .check_limit(authed(check(15), &token("erin")))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    assert!(after.allowed, "{after:?}");
    assert_eq!((after.used, after.remaining), (34, 16));
    let frank = client
        .get_usage(authed(GetUsageRequest {}, &token("frank")))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .usage
        .unwrap_or_default();
    assert_eq!(frank.contacts_used, 10);
    app.stop().await;
}

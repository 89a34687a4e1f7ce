//! End-to-end tests: the real server on random ports, a fresh database per test, talked to with
//! the generated tonic clients, the health/reflection clients and plain HTTP. Every test that
//! touches the database runs on SQLite and on PostgreSQL (with TEST_DATABASE_URL; without it
//! the PostgreSQL variants are listed as ignored). `harness.rs` says how tests are registered.

// The harness, the fakes of outside APIs and shared fixtures.
mod account_world;
mod fake_feeds;
mod fake_http;
mod fake_mpesa;
mod fake_oauth;
mod fake_paypal;
mod fake_providers;
mod fake_smtp;
mod fake_stripe;
mod harness;
mod helpers;

/// Declares the test modules and collects their tests: a module listed here must list its
/// tests with `tests!` (it has no `trials()` otherwise), and one that is not listed is not
/// compiled, so no test can be left out silently.
macro_rules! test_modules {
    ($($module:ident),* $(,)?) => {
        $(mod $module;)*

        fn all_trials() -> Vec<libtest_mimic::Trial> {
            [$($module::trials()),*].into_iter().flatten().collect()
        }
    };
}

test_modules!(
    alert_rules,
    attacks,
    auth,
    billing,
    browser,
    checkout,
    config,
    contact_deliveries,
    contact_seams,
    contacts_model,
    dashboard,
    data_rights,
    dunning,
    event_processing,
    grpc_web,
    health,
    imports,
    integrations,
    money_model,
    money_seams,
    money_seams_mpesa,
    money_seams_reconciler,
    mpesa,
    overage,
    oauth,
    oauth_browser,
    oauth_providers,
    paypal,
    plan_changes,
    plans_and_prices,
    product_metrics,
    provider_rules,
    real_time,
    real_time_seams,
    sandbox,
    sidecar,
    store_contract,
    streamed_files,
    subscription_lifecycle,
    sync_field,
    sync_jobs,
    sync_schedule,
    usage_counts,
    user_commands,
    vault,
    webhooks,
);

fn main() {
    let mut args = libtest_mimic::Arguments::from_args();
    // libtest reads RUST_TEST_THREADS; libtest-mimic only takes --test-threads.
    if args.test_threads.is_none() {
        args.test_threads = std::env::var("RUST_TEST_THREADS")
            .ok()
            .and_then(|n| n.parse().ok());
    }
    let trials = all_trials();
    if !args.list {
        for (needs, what) in [
            (
                harness::Needs::Postgres,
                "the PostgreSQL variants are ignored",
            ),
            (harness::Needs::Browser, "the browser tests are ignored"),
        ] {
            if needs.ignored()
                && let Some(why) = needs.missing()
            {
                eprintln!("note: {what}: {why}");
            }
        }
    }
    libtest_mimic::run(&args, trials).exit();
}

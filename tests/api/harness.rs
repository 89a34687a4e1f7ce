//! How the suite's tests are registered and run. Each test module lists its tests once with
//! [`tests!`](crate::tests) (or [`on_both_backends!`](crate::on_both_backends)), which gives it
//! a `trials()` function; `main.rs` collects every module's trials and hands them to
//! libtest-mimic, which speaks libtest's command line and output (so `cargo test`, its filters
//! and cargo-nextest work as with `#[test]`).
//!
//! What this harness adds over `#[test]`: a test that cannot run here is reported as
//! **ignored**, never as passed. The PostgreSQL variants are ignored without
//! `TEST_DATABASE_URL`, the browser scenarios without Node, `web/node_modules` or Chromium; with
//! `NEXUS_REQUIRE_POSTGRES=1` / `NEXUS_REQUIRE_BROWSER=1` (as in CI) they run anyway and fail,
//! naming what is missing.
//!
//! Each test gets its own tokio runtime (2 worker threads), like
//! `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]`.

use std::{future::Future, time::Duration};

use libtest_mimic::{Failed, Trial};

/// What a test needs from the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    Nothing,
    /// A PostgreSQL server: `TEST_DATABASE_URL`.
    Postgres,
    /// Node, `web/node_modules` and Chromium.
    Browser,
}

impl Needs {
    /// Why the test cannot run here, if it cannot.
    pub fn missing(self) -> Option<String> {
        match self {
            Needs::Nothing => None,
            Needs::Postgres => std::env::var("TEST_DATABASE_URL")
                .ok()
                .filter(|v| !v.is_empty())
                .is_none()
                .then(|| "TEST_DATABASE_URL is not set".to_string()),
            // Looked for once per process (it starts `node --version`).
            Needs::Browser => {
                static MISSING: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
                MISSING.get_or_init(crate::browser::missing_piece).clone()
            }
        }
    }

    /// The variable that turns a missing piece into a failure instead of a skip.
    fn required_by(self) -> Option<&'static str> {
        match self {
            Needs::Nothing => None,
            Needs::Postgres => Some("NEXUS_REQUIRE_POSTGRES"),
            Needs::Browser => Some("NEXUS_REQUIRE_BROWSER"),
        }
    }

    fn required(self) -> bool {
        self.required_by()
            .is_some_and(|var| std::env::var(var).as_deref() == Ok("1"))
    }

    /// Whether tests with this need are listed as ignored: something is missing and nothing
    /// requires them.
    pub fn ignored(self) -> bool {
        !self.required() && self.missing().is_some()
    }
}

/// `api::sync_jobs` -> `sync_jobs`; `api::browser::error_paths` -> `browser::error_paths`.
pub fn module_name(path: &str) -> String {
    path.split_once("::")
        .map(|(_, rest)| rest.to_string())
        .unwrap_or_default()
}

/// An async test: `{module}::{name}`, run on its own runtime; ignored when `needs` is missing
/// (unless required, when it fails saying what is missing).
pub fn trial<F, Fut>(module: &str, name: &str, needs: Needs, make: F) -> Trial
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    Trial::test(format!("{module}::{name}"), move || {
        if let Some(why) = needs.missing() {
            let var = needs.required_by().unwrap_or_default();
            return Err(Failed::from(format!(
                "{var}=1 but this test cannot run: {why}"
            )));
        }
        block_on(make())
    })
    .with_ignored_flag(needs.ignored())
}

/// A test with no async part.
pub fn sync_trial(module: &str, name: &str, test: fn()) -> Trial {
    Trial::test(format!("{module}::{name}"), move || {
        test();
        Ok(())
    })
}

fn block_on(test: impl Future<Output = ()>) -> Result<(), Failed> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failed::from(format!("test runtime: {e}")))?;
    runtime.block_on(test);
    // Tasks the test left behind are dropped; a blocking task still running (a child process
    // being waited on) is not waited for.
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// Lists a module's tests, giving it `pub(crate) fn trials()`. Every section is optional, in
/// this order:
/// - `backends: [f, ...]`: `async fn f(Backend)`, registered as `module::sqlite::f` and
///   `module::postgres::f`;
/// - `postgres: [f, ...]`: `async fn f()` that needs PostgreSQL, as `module::postgres::f`;
/// - `browser: [f, ...]`: `async fn f()` that needs Node and Chromium;
/// - `plain: [f, ...]`: `async fn f()`;
/// - `sync: [f, ...]`: `fn f()`.
#[macro_export]
macro_rules! tests {
    (
        $(backends: [$($backend_test:ident),* $(,)?] $(,)?)?
        $(postgres: [$($postgres_test:ident),* $(,)?] $(,)?)?
        $(browser: [$($browser_test:ident),* $(,)?] $(,)?)?
        $(plain: [$($plain_test:ident),* $(,)?] $(,)?)?
        $(sync: [$($sync_test:ident),* $(,)?] $(,)?)?
    ) => {
        // One `push` per listed test reads as the list it is.
        #[allow(clippy::vec_init_then_push)]
        pub(crate) fn trials() -> Vec<libtest_mimic::Trial> {
            #[allow(unused_imports)]
            use $crate::{harness::{Needs, sync_trial, trial}, helpers::Backend};
            let module = $crate::harness::module_name(module_path!());
            #[allow(unused_mut)]
            let mut trials = Vec::new();
            $($(
                trials.push(trial(
                    &module,
                    concat!("sqlite::", stringify!($backend_test)),
                    Needs::Nothing,
                    || $backend_test(Backend::Sqlite),
                ));
                trials.push(trial(
                    &module,
                    concat!("postgres::", stringify!($backend_test)),
                    Needs::Postgres,
                    || $backend_test(Backend::Postgres),
                ));
            )*)?
            $($(
                trials.push(trial(
                    &module,
                    concat!("postgres::", stringify!($postgres_test)),
                    Needs::Postgres,
                    $postgres_test,
                ));
            )*)?
            $($(
                trials.push(trial(&module, stringify!($browser_test), Needs::Browser, $browser_test));
            )*)?
            $($(
                trials.push(trial(&module, stringify!($plain_test), Needs::Nothing, $plain_test));
            )*)?
            $($(
                trials.push(sync_trial(&module, stringify!($sync_test), $sync_test));
            )*)?
            trials
        }
    };
}

/// The tests of a module whose tests all run on both backends: `tests!(backends: [...])`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $crate::tests!(backends: [$($name),*]);
    };
}

//! The money model: random sequences of what users, payers, providers and operators do, driven
//! over the real service and the fake Stripe, PayPal and Daraja, then checked against the fakes
//! as the ledger of what was charged and refunded.
//!
//! A sequence is 5 to 15 steps over 1 or 2 users, drawn from one seed (`generate`): checkouts with
//! any provider, payers paying or abandoning them, plan changes, cancel, resume, erasure, a crash
//! while a provider's answer is in flight (the answer is lost), graceful restarts, reconciler
//! runs, and deliveries of the late events. Every event a step causes gets a fate: delivered
//! now, late (with the other late ones, in a shuffled order), twice, or never (Stripe lists it
//! for the reconciler, Daraja answers the poller, PayPal retries until it is taken). After the
//! steps the world heals (pushes nobody answered time out, late events arrive, the reconciler
//! runs, unfinished erasures are called again) and these must hold, reading the service through
//! its API (GetSubscription, ExportMyData, ListInvoices) and the fakes' state:
//!
//! - (a) every payment is refunded or covered: the service grants a paid tier from the very
//!   subscription it paid for (any M-Pesa period for an M-Pesa payment) and lists it among the
//!   user's paid invoices. Payments made before an erasure finished are not owed back (the
//!   README: the erasure cancels "now, without a refund").
//! - (b) no access without a payment: a paid tier comes from a subscription an unrefunded
//!   payment covers, still running at its provider (PAST_DUE within `PAST_DUE_GRACE`), at the
//!   tier the provider bills.
//! - (c) at most one subscription per user that will charge again (Stripe live and not
//!   cancelling; PayPal ACTIVE or SUSPENDED), across providers.
//! - (d) an erased user: nothing charging, no access, no row of any table naming them.
//! - (e) no refund of a subscription seen granting access at the end of any step (its period
//!   was used), and no payment refunded twice.
//!
//! Seeds: every seed in `tests/model-seeds/money.txt` (one per line, `#` comments) runs first,
//! then `NEXUS_MODEL_CASES` cases (default 8, what CI runs) from `NEXUS_MODEL_SEED` (default:
//! from the clock, printed). A failing seed is appended to that file and the failure names the
//! seed, the steps and what each step did. Replay one:
//! `NEXUS_MODEL_SEED=<seed> NEXUS_MODEL_CASES=1 cargo test --test api -- money_model::sqlite`.

use std::{
    any::Any,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use futures_util::FutureExt;
use nexus_billing::grpc::proto::billing::Tier;

use crate::helpers::Backend;

#[path = "money_world.rs"]
mod world;

#[path = "money_invariants.rs"]
mod invariants;

use invariants::check;

use world::World;

crate::on_both_backends!(random_sequences_keep_the_money_invariants);

/// Cases per run when `NEXUS_MODEL_CASES` is not set (CI).
const DEFAULT_CASES: usize = 8;
const SEEDS_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/model-seeds/money.txt");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Provider {
    Stripe,
    Paypal,
    Mpesa,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    Free,
    Pro,
    Premium,
}

impl Plan {
    fn tier(self) -> Tier {
        match self {
            Plan::Free => Tier::Free,
            Plan::Pro => Tier::Pro,
            Plan::Premium => Tier::Premium,
        }
    }
}

/// What becomes of one event a provider sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Now,
    Late,
    Twice,
    Lost,
}

/// The fates of a step's events, in the order the step causes them (cycled).
type Fates = [Fate; 3];

/// A call a user (or, for DeleteMyData, the card application) makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Checkout(Provider, Plan),
    ChangePlan(Plan),
    Cancel,
    Resume,
    Erase,
}

#[derive(Debug, Clone)]
enum Step {
    /// `approve`: the payer approves a plan change PayPal asks them to approve.
    Call {
        user: usize,
        call: Call,
        approve: bool,
        fates: Fates,
    },
    /// The payer pays one of the user's open checkouts (`pick` modulo how many are open).
    Pay {
        user: usize,
        pick: usize,
        fates: Fates,
    },
    Abandon {
        user: usize,
        pick: usize,
        fates: Fates,
    },
    /// The process dies while a provider's answer to `call` is on its way; the provider acted.
    /// `pay_anyway`: a lost M-Pesa push still rings the phone, and the payer pays it.
    CrashMidCall {
        user: usize,
        call: Call,
        pay_anyway: bool,
        fates: Fates,
    },
    /// Every late delivery arrives, in an order drawn from `order`.
    Flush {
        order: u64,
    },
    Reconcile,
    Restart,
}

/// The users and steps of one case, from its seed alone.
fn generate(seed: u64) -> (usize, Vec<Step>) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let users = rng.usize(1..=2);
    let count = rng.usize(5..=15);
    let steps = (0..count).map(|_| step(&mut rng, users)).collect();
    (users, steps)
}

fn step(rng: &mut fastrand::Rng, users: usize) -> Step {
    let user = rng.usize(..users);
    let fates = [fate(rng), fate(rng), fate(rng)];
    let simple = |call| Step::Call {
        user,
        call,
        approve: false,
        fates,
    };
    match rng.u32(..100) {
        0..=23 => simple(Call::Checkout(provider(rng), paid_plan(rng))),
        24..=47 => Step::Pay {
            user,
            pick: rng.usize(..4),
            fates,
        },
        48..=52 => Step::Abandon {
            user,
            pick: rng.usize(..4),
            fates,
        },
        53..=60 => Step::Call {
            user,
            call: Call::ChangePlan(plan(rng)),
            approve: rng.bool(),
            fates,
        },
        61..=67 => simple(Call::Cancel),
        68..=71 => simple(Call::Resume),
        72..=75 => simple(Call::Erase),
        76..=82 => Step::CrashMidCall {
            user,
            call: crash_call(rng),
            pay_anyway: rng.bool(),
            fates,
        },
        83..=90 => Step::Flush { order: rng.u64(..) },
        91..=94 => Step::Reconcile,
        _ => Step::Restart,
    }
}

fn fate(rng: &mut fastrand::Rng) -> Fate {
    match rng.u32(..10) {
        0..=4 => Fate::Now,
        5..=6 => Fate::Late,
        7..=8 => Fate::Twice,
        _ => Fate::Lost,
    }
}

fn provider(rng: &mut fastrand::Rng) -> Provider {
    [Provider::Stripe, Provider::Paypal, Provider::Mpesa][rng.usize(..3)]
}

fn paid_plan(rng: &mut fastrand::Rng) -> Plan {
    if rng.bool() { Plan::Pro } else { Plan::Premium }
}

fn plan(rng: &mut fastrand::Rng) -> Plan {
    [
        Plan::Free,
        Plan::Pro,
        Plan::Pro,
        Plan::Premium,
        Plan::Premium,
    ][rng.usize(..5)]
}

fn crash_call(rng: &mut fastrand::Rng) -> Call {
    match rng.u32(..20) {
        0..=7 => Call::Checkout(provider(rng), paid_plan(rng)),
        8..=11 => Call::ChangePlan(plan(rng)),
        12..=15 => Call::Cancel,
        16 => Call::Resume,
        _ => Call::Erase,
    }
}

async fn random_sequences_keep_the_money_invariants(backend: Backend) {
    let saved = saved_seeds();
    let (base, cases) = (base_seed(), case_count());
    eprintln!(
        "money model: {} saved seeds ({SEEDS_FILE}), then {cases} cases from NEXUS_MODEL_SEED={base}",
        saved.len()
    );
    let new = (0..cases as u64).map(|n| {
        if n == 0 {
            base
        } else {
            splitmix(base.wrapping_add(n))
        }
    });
    for seed in saved.into_iter().chain(new) {
        run_checked(backend, seed).await;
    }
}

/// Runs one case; on any failure (a broken invariant, or a panic on the way) saves the seed and
/// fails with the seed, the steps and what each did.
async fn run_checked(backend: Backend, seed: u64) {
    let (users, steps) = generate(seed);
    let log = Arc::new(Mutex::new(Vec::new()));
    let outcome = AssertUnwindSafe(run_case(backend, seed, users, &steps, Arc::clone(&log)))
        .catch_unwind()
        .await;
    let failure = match outcome {
        Ok(broken) if broken.is_empty() => {
            eprintln!(
                "money model: seed {seed} held ({} steps, {users} users)",
                steps.len()
            );
            return;
        }
        Ok(broken) => format!("invariants broken:\n  {}", broken.join("\n  ")),
        Err(panic) => format!("the run failed: {}", panic_text(&*panic)),
    };
    save_seed(seed);
    let listed: Vec<String> = steps
        .iter()
        .enumerate()
        .map(|(n, s)| format!("{:>2}. {s:?}", n + 1))
        .collect();
    let happened = log.lock().unwrap_or_else(|e| e.into_inner()).join("\n");
    panic!(
        "money model, seed {seed} ({users} users): {failure}\n\nsteps:\n{}\n\nwhat happened:\n{happened}\n\n\
         replay: NEXUS_MODEL_SEED={seed} NEXUS_MODEL_CASES=1 cargo test --test api -- money_model \
         (the seed is saved in {SEEDS_FILE} and replayed first from now on)",
        listed.join("\n")
    );
}

async fn run_case(
    backend: Backend,
    seed: u64,
    users: usize,
    steps: &[Step],
    log: Arc<Mutex<Vec<String>>>,
) -> Vec<String> {
    // Ids no fixture text contains by chance: (d) searches every row for them.
    let ids = (0..users)
        .map(|n| format!("mm{:08x}u{n}", seed & 0xffff_ffff))
        .collect();
    let mut w = World::start(backend, ids, log).await;
    for (n, step) in steps.iter().enumerate() {
        w.begin_step(n + 1, &format!("{step:?}"));
        match *step {
            Step::Call {
                user,
                call,
                approve,
                ref fates,
            } => w.call(user, call, approve, None, fates).await,
            Step::CrashMidCall {
                user,
                call,
                pay_anyway,
                ref fates,
            } => w.call(user, call, false, Some(pay_anyway), fates).await,
            Step::Pay {
                user,
                pick,
                ref fates,
            } => w.pay(user, pick, fates).await,
            Step::Abandon {
                user,
                pick,
                ref fates,
            } => w.abandon(user, pick, fates).await,
            Step::Flush { order } => w.flush(order).await,
            Step::Reconcile => w.reconcile().await,
            Step::Restart => w.restart().await,
        }
        w.settle().await;
        w.observe().await;
    }
    w.begin_step(
        steps.len() + 1,
        "healing: unanswered pushes time out, late deliveries arrive, the reconciler runs, erasures finish",
    );
    w.heal(splitmix(seed)).await;
    let seen = w.look().await;
    let broken = check(&w, &seen);
    w.stop().await;
    broken
}

fn panic_text(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".into())
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn base_seed() -> u64 {
    match std::env::var("NEXUS_MODEL_SEED") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("NEXUS_MODEL_SEED={v:?}: {e}")),
        Err(_) => splitmix(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or_default(),
        ),
    }
}

fn case_count() -> usize {
    std::env::var("NEXUS_MODEL_CASES")
        .ok()
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|e| panic!("NEXUS_MODEL_CASES={v:?}: {e}"))
        })
        .unwrap_or(DEFAULT_CASES)
}

/// The seeds saved in [`SEEDS_FILE`], one per line (text after `#` is a comment).
fn saved_seeds() -> Vec<u64> {
    let Ok(text) = std::fs::read_to_string(SEEDS_FILE) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| line.split('#').next().map(str::trim))
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .unwrap_or_else(|e| panic!("{SEEDS_FILE}: {s:?} is not a seed: {e}"))
        })
        .collect()
}

fn save_seed(seed: u64) {
    use std::io::Write;
    if saved_seeds().contains(&seed) {
        return;
    }
    let path = std::path::Path::new(SEEDS_FILE);
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let saved = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| writeln!(file, "{seed}"));
    if let Err(e) = saved {
        eprintln!("money model: could not save seed {seed} in {SEEDS_FILE}: {e}");
    }
}

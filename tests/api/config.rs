//! Configuration and the command line, exercised through the real binary with a clean
//! environment: errors name the setting (never its value), fallbacks make a first run work.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Output, Stdio},
    time::Duration,
};

use nexus_billing::{
    auth::Claims,
    grpc::proto::billing::{GetUsageRequest, Tier},
};

use crate::helpers::{ENCRYPTION_KEY, JWT_SECRET, authed};

crate::tests!(
    plain: [
        a_first_run_with_no_configuration_serves_with_the_printed_token,
        no_secret_or_token_reaches_the_logs_even_at_debug_level,
    ],
    sync: [
        production_without_required_settings_exits_2_naming_each_setting,
        invalid_values_are_named_without_echoing_secrets,
        malformed_addresses_origins_and_base_urls_are_named,
        token_mints_a_token_the_configured_secret_verifies,
        token_without_a_jwt_secret_explains_why_it_cannot_help,
        migrate_creates_the_schema_in_a_fresh_sqlite_file,
        every_setting_is_documented_and_the_example_env_file_works,
    ],
);

const BIN: &str = env!("CARGO_BIN_EXE_nexus-billing");

fn run(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .env_clear()
        .current_dir(dir)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("cannot run the binary: {e}"))
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"))
}

fn production_without_required_settings_exits_2_naming_each_setting() {
    let dir = tempdir();
    let output = run(dir.path(), &["migrate"], &[("APP_ENV", "production")]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let err = stderr(&output);
    for setting in [
        "DATABASE_URL",
        "JWT_SECRET",
        "ENCRYPTION_KEY",
        "ALLOWED_ORIGINS",
    ] {
        assert!(err.contains(setting), "{setting} not named in:\n{err}");
    }
    // Production never falls back to a generated key in DATA_DIR.
    assert!(!dir.path().join("data").exists());
}

fn invalid_values_are_named_without_echoing_secrets() {
    let dir = tempdir();
    let output = run(
        dir.path(),
        &["migrate"],
        &[
            ("APP_ENV", "production"),
            ("DATABASE_URL", "mysql://db/nexus"),
            ("ALLOWED_ORIGINS", "https://app.example.com"),
            ("ENCRYPTION_KEY", "not-hex-secret-material"),
            ("JWT_SECRET", "shortsecretvalue"),
            ("STRIPE_SECRET_KEY", "pk_live_publishable_oops"),
        ],
    );
    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    for setting in [
        "DATABASE_URL",
        "ENCRYPTION_KEY",
        "JWT_SECRET",
        "STRIPE_SECRET_KEY",
        "STRIPE_WEBHOOK_SECRET",
        "STRIPE_PRICE_ID_PRO",
        "STRIPE_PRICE_ID_PREMIUM",
    ] {
        assert!(err.contains(setting), "{setting} not named in:\n{err}");
    }
    for secret in [
        "not-hex-secret-material",
        "shortsecretvalue",
        "pk_live_publishable_oops",
    ] {
        assert!(!err.contains(secret), "a secret value was printed:\n{err}");
    }
}

fn malformed_addresses_origins_and_base_urls_are_named() {
    let dir = tempdir();
    for (setting, value) in [
        ("GRPC_ADDR", "not-an-address"),
        ("HTTP_ADDR", "localhost"),
        ("HUBSPOT_API_BASE", "ftp://files.example.com"),
        ("STRIPE_API_BASE", "not a url"),
        ("ALLOWED_ORIGINS", "https://app.example.com/with/path"),
        ("JWT_ALGORITHM", "none"),
    ] {
        let output = run(dir.path(), &["migrate"], &[(setting, value)]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{setting}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(setting),
            "{setting} not named in:\n{}",
            stderr(&output)
        );
    }
}

fn token_mints_a_token_the_configured_secret_verifies() {
    let dir = tempdir();
    let output = run(
        dir.path(),
        &[
            "token",
            "--user-id",
            "u7",
            "--email",
            "u7@example.com",
            "--ttl",
            "2h",
            "--role",
            "service",
        ],
        &[
            ("JWT_SECRET", JWT_SECRET),
            ("ENCRYPTION_KEY", ENCRYPTION_KEY),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let token = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.validate_aud = false;
    let claims = jsonwebtoken::decode::<Claims>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(JWT_SECRET.as_bytes()),
        &validation,
    )
    .unwrap_or_else(|e| panic!("the minted token does not verify: {e}"))
    .claims;
    assert_eq!(claims.sub, "u7");
    assert_eq!(claims.email.as_deref(), Some("u7@example.com"));
    assert_eq!(claims.roles, vec!["service".to_string()]);
    let ttl = claims.exp.cast_signed() - chrono::Utc::now().timestamp();
    assert!((7100..=7200).contains(&ttl), "ttl {ttl}");
}

fn token_without_a_jwt_secret_explains_why_it_cannot_help() {
    let dir = tempdir();
    let output = run(dir.path(), &["token", "--user-id", "u7"], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("JWT_SECRET"),
        "{}",
        stderr(&output)
    );
}

fn migrate_creates_the_schema_in_a_fresh_sqlite_file() {
    let dir = tempdir();
    let output = run(dir.path(), &["migrate"], &[("DATA_DIR", "state")]);
    assert!(output.status.success(), "{}", stderr(&output));
    let db = dir.path().join("state/nexus.db");
    assert!(db.exists(), "no database at {}", db.display());
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    let tables: Vec<String> = rt.block_on(async {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(&pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    });
    for table in [
        "activity_logs",
        "billing_customers",
        "cards",
        "contacts",
        "integrations",
        "invoices",
        "oauth_states",
        "subscriptions",
        "sync_jobs",
        "webhook_inbox",
    ] {
        assert!(
            tables.iter().any(|t| t == table),
            "{table} missing from {tables:?}"
        );
    }
    // The development key was generated once, private to the owner.
    let key = dir.path().join("state/encryption.key");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key)
            .unwrap_or_else(|e| panic!("{e}"))
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

/// The README's first run: no configuration at all; the printed token works against the
/// printed address; SIGTERM stops the process cleanly.
async fn a_first_run_with_no_configuration_serves_with_the_printed_token() {
    let dir = tempdir();
    let mut child = Command::new(BIN)
        .env_clear()
        .current_dir(dir.path())
        // Only the ports differ from a real first run, so parallel tests cannot collide.
        .envs([("GRPC_ADDR", "127.0.0.1:0"), ("HTTP_ADDR", "127.0.0.1:0"), ("METRICS_ADDR", "127.0.0.1:0")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let (token, addr, dashboard) = tokio::task::spawn_blocking(move || {
        let (mut token, mut addr, mut dashboard) = (None, None, None);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(t) = line.strip_prefix("export TOKEN=") {
                token = Some(t.to_string());
            }
            if let Some(url) = line.strip_prefix("Dashboard (sign in with the token above): ") {
                dashboard = Some(url.to_string());
            }
            if line.starts_with("grpcurl") && line.contains("GetUsage") {
                addr = line
                    .split_whitespace()
                    .find(|w| w.starts_with("127.0.0.1:"))
                    .map(str::to_string);
            }
            if token.is_some() && addr.is_some() {
                break;
            }
        }
        (token, addr, dashboard)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let (Some(token), Some(addr), Some(dashboard)) = (token, addr, dashboard) else {
        let _ = child.kill();
        panic!("the banner with a token, an address and the dashboard was not printed");
    };

    // The dashboard is where the banner says, and knows it may use the printed token.
    assert!(
        dashboard.starts_with("http://localhost:") && dashboard.ends_with("/dashboard/"),
        "{dashboard}"
    );
    let page = reqwest::get(&dashboard)
        .await
        .unwrap_or_else(|e| panic!("{dashboard}: {e}"));
    assert_eq!(page.status(), 200);
    let config: serde_json::Value = reqwest::get(format!("{dashboard}config.json"))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config["development"], true);

    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap_or_else(|e| panic!("{e}"))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let usage =
        nexus_billing::grpc::proto::billing::billing_service_client::BillingServiceClient::new(
            channel,
        )
        .get_usage(authed(GetUsageRequest {}, &token))
        .await
        .unwrap_or_else(|e| panic!("the printed token was refused: {e}"))
        .into_inner();
    assert_eq!(usage.effective_tier(), Tier::Free);
    assert!(dir.path().join("data/nexus.db").exists());

    let pid = child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status();
    assert!(killed.is_ok_and(|s| s.success()));
    let status = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + crate::helpers::PATIENCE;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM did not stop the server cleanly: {status:?}"
    );
}

/// Every setting the binary reads is documented in .env.example and the README, and the example
/// file itself is a working configuration.
fn every_setting_is_documented_and_the_example_env_file_works() {
    use clap::CommandFactory;
    let root = env!("CARGO_MANIFEST_DIR");
    let example = std::fs::read_to_string(format!("{root}/.env.example")).unwrap_or_default();
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap_or_default();
    let command = nexus_billing::cli::Cli::command();
    let names: Vec<String> = command
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    assert!(names.len() > 30, "settings found: {names:?}");
    for name in &names {
        assert!(
            example.contains(&format!("{name}=")),
            "{name} is missing from .env.example"
        );
        assert!(
            readme.contains(&format!("`{name}`")),
            "{name} is missing from README.md"
        );
    }

    let vars: Vec<(String, String)> = dotenvy::from_path_iter(format!("{root}/.env.example"))
        .unwrap_or_else(|e| panic!("{e}"))
        .map(|item| item.unwrap_or_else(|e| panic!(".env.example: {e}")))
        .collect();
    let dir = tempdir();
    let output = Command::new(BIN)
        .env_clear()
        .current_dir(dir.path())
        .envs(vars)
        .arg("migrate")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(output.status.success(), "{}", stderr(&output));
}

/// Runs the binary at debug level, makes good and bad calls, and searches everything it wrote
/// for the secrets it was given and the tokens it saw.
async fn no_secret_or_token_reaches_the_logs_even_at_debug_level() {
    let dir = tempdir();
    let stripe_key = "sk_test_LOGCANARY0123456789";
    let webhook_secret = "whsec_LOGCANARY0123456789";
    let paypal_secret = "PAYPALLOGCANARY0123456789";
    let mpesa_secret = "MPESALOGCANARYSECRET0123";
    let mpesa_passkey = "MPESALOGCANARYPASSKEY0123456789";
    let db_url = format!("sqlite://{}/canary.db", dir.path().display());
    let mut child = Command::new(BIN)
        .env_clear()
        .current_dir(dir.path())
        .envs([
            ("GRPC_ADDR", "127.0.0.1:0"),
            ("HTTP_ADDR", "127.0.0.1:0"),
        ("METRICS_ADDR", "127.0.0.1:0"),
            ("LOG_LEVEL", "debug"),
            ("LOG_FORMAT", "json"),
            ("JWT_SECRET", JWT_SECRET),
            ("ENCRYPTION_KEY", ENCRYPTION_KEY),
            ("STRIPE_SECRET_KEY", stripe_key),
            ("STRIPE_WEBHOOK_SECRET", webhook_secret),
            ("STRIPE_PRICE_ID_PRO", "price_pro"),
            ("STRIPE_PRICE_ID_PREMIUM", "price_premium"),
            ("PAYPAL_CLIENT_ID", "paypal-id"),
            ("PAYPAL_CLIENT_SECRET", paypal_secret),
            ("PAYPAL_WEBHOOK_ID", "WH-1"),
            ("PAYPAL_PLAN_ID_PRO", "P-1"),
            ("PAYPAL_PLAN_ID_PREMIUM", "P-2"),
            // Nothing listens there: every provider call fails, and failures are logged.
            ("PAYPAL_API_BASE", "http://127.0.0.1:9"),
            ("MPESA_CONSUMER_KEY", "mpesa-key"),
            ("MPESA_CONSUMER_SECRET", mpesa_secret),
            ("MPESA_SHORTCODE", "174379"),
            ("MPESA_PASSKEY", mpesa_passkey),
            (
                "MPESA_CALLBACK_URL",
                "https://billing.example.com/billing/webhook/mpesa",
            ),
            ("MPESA_PRICE_KES_PRO", "1500"),
            ("MPESA_PRICE_KES_PREMIUM", "3500"),
            ("MPESA_API_BASE", "http://127.0.0.1:9"),
            ("DATABASE_URL", db_url.as_str()),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr_pipe = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    // The "serving" log line carries the bound addresses.
    let mut log = Vec::new();
    let (mut grpc, mut http) = (None, None);
    let deadline = std::time::Instant::now() + crate::helpers::PATIENCE;
    while (grpc.is_none() || http.is_none()) && std::time::Instant::now() < deadline {
        let Ok(line) = lines_rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line)
            && json["message"] == "serving"
        {
            grpc = json["grpc_addr"].as_str().map(str::to_string);
            http = json["http_addr"].as_str().map(str::to_string);
        }
        log.push(line);
    }
    let (Some(grpc), Some(http)) = (grpc, http) else {
        let _ = child.kill();
        panic!("the server did not log its addresses:\n{}", log.join("\n"));
    };

    let good = crate::helpers::token("log-user");
    let forged = crate::helpers::sign(
        &crate::helpers::claims("log-user", &[], 3600),
        "wrong-secret-wrong-secret-wrong!!",
    );
    let channel = tonic::transport::Channel::from_shared(format!("http://{grpc}"))
        .unwrap_or_else(|e| panic!("{e}"))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut client =
        nexus_billing::grpc::proto::billing::billing_service_client::BillingServiceClient::new(
            channel,
        );
    client
        .get_usage(authed(GetUsageRequest {}, &good))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let refused = client.get_usage(authed(GetUsageRequest {}, &forged)).await;
    assert!(refused.is_err());
    let webhook_body = r#"{"id":"evt_LOGCANARY_BODY","object":"event"}"#;
    let _ = reqwest::Client::new()
        .post(format!("http://{http}/billing/webhook"))
        .header("stripe-signature", "t=1,v1=LOGCANARYSIGNATURE")
        .body(webhook_body)
        .send()
        .await;

    let paypal_body = r#"{"id":"WH-LOGCANARY","event_type":"BILLING.SUBSCRIPTION.ACTIVATED","create_time":"2026-11-30T10:00:00Z","resource":{"id":"I-1","status":"ACTIVE","custom_id":"log-user"}}"#;
    let _ = reqwest::Client::new()
        .post(format!("http://{http}/billing/webhook/paypal"))
        .header("paypal-auth-algo", "SHA256withRSA")
        .header(
            "paypal-cert-url",
            "https://api.paypal.com/v1/notifications/certs/CERT-1",
        )
        .header("paypal-transmission-id", "tid-1")
        .header("paypal-transmission-sig", "UEFZUEFMTE9HQ0FOQVJZU0lH")
        .header("paypal-transmission-time", "2026-11-30T10:00:00Z")
        .body(paypal_body)
        .send()
        .await;
    let push = client
        .create_checkout_session(authed(
            nexus_billing::grpc::proto::billing::CreateCheckoutSessionRequest {
                tier: nexus_billing::grpc::proto::billing::Tier::Pro.into(),
                provider: nexus_billing::grpc::proto::billing::PaymentProvider::Mpesa.into(),
                phone_number: "0712345678".into(),
                ..Default::default()
            },
            &good,
        ))
        .await;
    assert_eq!(push.err().map(|e| e.code()), Some(tonic::Code::Unavailable));

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    log.extend(lines_rx.try_iter());
    let log = log.join("\n");
    assert!(
        log.contains("token refused"),
        "the refusal should be logged:\n{log}"
    );
    for secret in [
        JWT_SECRET,
        ENCRYPTION_KEY,
        stripe_key,
        webhook_secret,
        good.as_str(),
        forged.as_str(),
        "evt_LOGCANARY_BODY",
        "LOGCANARYSIGNATURE",
        paypal_secret,
        mpesa_secret,
        mpesa_passkey,
        "UEFZUEFMTE9HQ0FOQVJZU0lH",
        // The start of every M-Pesa password (base64 of shortcode + passkey + timestamp).
        &base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("174379{}", &mpesa_passkey[..24]),
        ),
    ] {
        assert!(!log.contains(secret), "{secret:?} was logged");
    }
}

//! Unit tests of setting parsing and validation.

use super::*;

#[test]
fn origins_are_normalised_and_paths_refused() {
    assert_eq!(
        parse_origins("https://app.example.com, http://localhost:3000/"),
        Ok(vec![
            "https://app.example.com".into(),
            "http://localhost:3000".into()
        ])
    );
    assert!(parse_origins("https://app.example.com/path").is_err());
    assert!(parse_origins("app.example.com").is_err());
    assert!(parse_origins("ftp://example.com").is_err());
}

#[test]
fn redirects_must_be_absolute_and_on_an_allowed_origin() {
    let settings = <crate::cli::Cli as clap::Parser>::try_parse_from([
        "nexus-billing",
        "--allowed-origins=https://app.example.com,http://localhost:3000",
        &format!("--encryption-key={}", "ab".repeat(32)),
        "--jwt-secret=test",
    ])
    .unwrap_or_else(|e| panic!("{e}"))
    .settings;
    let config = Config::from_settings(settings).unwrap_or_else(|e| panic!("{e}"));
    for ok in [
        "https://app.example.com/billing/done?x=1",
        "http://localhost:3000/",
    ] {
        assert!(config.is_allowed_redirect(ok), "{ok}");
    }
    for bad in [
        "https://evil.example.com/",
        "https://app.example.com.evil.example/",
        "http://app.example.com/",
        "https://app.example.com:8443/",
        "/relative/path",
        "//evil.example.com/",
        "javascript:alert(1)",
    ] {
        assert!(!config.is_allowed_redirect(bad), "{bad}");
    }
}

#[test]
fn rate_limits_parse_per_provider_and_refuse_nonsense() {
    let limits = parse_rate_limits(" hubspot=190/10s, zapier=20/1s ").unwrap_or_default();
    assert_eq!(
        limits.get(&ProviderId::Hubspot),
        Some(&RateLimit {
            requests: 190,
            per_seconds: 10
        })
    );
    assert_eq!(limits.len(), 2);
    for bad in [
        "hubspot",
        "hubspot=0/1s",
        "hubspot=10/0s",
        "nosuch=1/1s",
        "hubspot=1/500ms",
        "hubspot=x/1s",
    ] {
        assert!(parse_rate_limits(bad).is_err(), "{bad}");
    }
}

#[test]
fn encryption_key_errors_never_echo_the_value() {
    let Err(e) = parse_key("zz-secret-material") else {
        panic!("a short key must be refused");
    };
    assert!(!e.contains("secret-material"), "{e}");
    assert!(parse_key(&"ab".repeat(32)).is_ok());
    assert!(parse_key(&"zz".repeat(32)).is_err());
}

#[test]
fn secrets_are_redacted_in_debug() {
    let key = parse_key(&"ab".repeat(32)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(format!("{key:?}"), "EncryptionKey([REDACTED])");
    let jwt = JwtKey::Hmac("super-secret-value".to_string().into());
    assert!(!format!("{jwt:?}").contains("super-secret-value"));
}

fn config_from(args: &[&str]) -> Config {
    let mut all = vec![
        "nexus-billing".to_string(),
        format!("--encryption-key={}", "ab".repeat(32)),
        format!("--jwt-secret={}", "s".repeat(40)),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    let settings = <crate::cli::Cli as clap::Parser>::try_parse_from(all)
        .unwrap_or_else(|e| panic!("{e}"))
        .settings;
    Config::from_settings(settings).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_dashboards_own_origin_is_allowed_and_loopback_only_in_development() {
    let dev = config_from(&["--allowed-origins=https://app.example.com"]);
    let origins = dev.browser_origins(3999);
    for origin in [
        "https://app.example.com",
        "http://localhost:3001",
        "http://localhost:3999",
        "http://127.0.0.1:3999",
    ] {
        assert!(
            origins.iter().any(|o| o == origin),
            "{origin} in {origins:?}"
        );
    }

    let production = config_from(&[
        "--app-env=production",
        "--database-url=postgres://db.internal/nexus",
        "--allowed-origins=https://app.example.com",
        "--oauth-redirect-url=https://billing.example.com/integrations/oauth/callback",
        "--smtp-url=smtp://mail.internal:25",
    ]);
    assert_eq!(
        production.browser_origins(3001),
        ["https://app.example.com", "https://billing.example.com"],
        "production: the configured origins and the dashboard's public origin, no loopback"
    );
}

fn config_with(extra: &[&str]) -> Result<Config, ConfigError> {
    let key = format!("--encryption-key={}", "ab".repeat(32));
    let args = ["nexus-billing", "--jwt-secret=test", key.as_str()]
        .into_iter()
        .chain(extra.iter().copied());
    let settings = <crate::cli::Cli as clap::Parser>::try_parse_from(args)
        .unwrap_or_else(|e| panic!("{e}"))
        .settings;
    Config::from_settings(settings)
}

#[test]
fn paypal_and_mpesa_name_every_missing_setting_and_never_print_secrets() {
    let err = config_with(&[
        "--paypal-client-id=pp-id",
        "--mpesa-consumer-key=mk",
        "--mpesa-passkey=super-secret-passkey",
        "--mpesa-shortcode=12ab",
        "--mpesa-callback-url=not a url",
        "--mpesa-price-kes-pro=0",
    ])
    .err()
    .unwrap_or_else(|| panic!("incomplete payment settings accepted"));
    let named: Vec<&str> = err.0.iter().map(|p| p.setting).collect();
    for setting in [
        "PAYPAL_CLIENT_SECRET",
        "PAYPAL_WEBHOOK_ID",
        "PAYPAL_PLAN_ID_PRO",
        "PAYPAL_PLAN_ID_PREMIUM",
        "MPESA_CONSUMER_SECRET",
        "MPESA_SHORTCODE",
        "MPESA_CALLBACK_URL",
        "MPESA_PRICE_KES_PRO",
        "MPESA_PRICE_KES_PREMIUM",
    ] {
        assert!(named.contains(&setting), "{setting} not named in {err}");
    }
    assert!(!err.to_string().contains("super-secret-passkey"));
    // Neither provider is on unless its first credential is set.
    let config = config_with(&[]).unwrap_or_else(|e| panic!("{e}"));
    assert!(config.paypal.is_none() && config.mpesa.is_none());
    // A complete M-Pesa configuration, with the secrets redacted in Debug.
    let config = config_with(&[
        "--mpesa-consumer-key=mk",
        "--mpesa-consumer-secret=consumer-secret-value",
        "--mpesa-passkey=super-secret-passkey",
        "--mpesa-shortcode=174379",
        "--mpesa-callback-url=https://billing.example.com/billing/webhook/mpesa",
        "--mpesa-price-kes-pro=1500",
        "--mpesa-price-kes-premium=3500",
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    let debug = format!("{config:?}");
    assert!(!debug.contains("super-secret-passkey") && !debug.contains("consumer-secret-value"));
    assert_eq!(config.mpesa.map(|m| m.price_kes_premium), Some(3500));
}

#[test]
fn the_sandbox_runs_only_in_development_and_only_without_a_real_provider() {
    // `auto` with a JWT secret (a deployment that forgot APP_ENV=production): no sandbox.
    assert!(!config_from(&[]).sandbox);
    let dev = config_from(&["--payments-sandbox=on"]);
    assert!(dev.sandbox, "development with no provider: the sandbox");
    let stripe = dev
        .stripe
        .as_ref()
        .map(|s| s.secret_key.expose_secret().to_string());
    assert!(stripe.is_some_and(|k| k.starts_with("sk_test_sandbox_")));
    assert!(!config_from(&["--payments-sandbox=off"]).sandbox);
    let real = config_from(&[
        "--payments-sandbox=on",
        "--stripe-secret-key=sk_test_real",
        "--stripe-webhook-secret=whsec_real",
        "--stripe-price-id-pro=price_a",
        "--stripe-price-id-premium=price_b",
    ]);
    assert!(!real.sandbox);
    assert_eq!(
        real.stripe
            .as_ref()
            .map(|s| s.secret_key.expose_secret().to_string())
            .as_deref(),
        Some("sk_test_real")
    );
    let mpesa_only = config_from(&[
        "--payments-sandbox=on",
        "--mpesa-consumer-key=key",
        "--mpesa-consumer-secret=secret",
        "--mpesa-shortcode=174379",
        "--mpesa-passkey=pass",
        "--mpesa-callback-url=https://example.com/billing/webhook/mpesa",
        "--mpesa-price-kes-pro=500",
        "--mpesa-price-kes-premium=1500",
    ]);
    assert!(!mpesa_only.sandbox && mpesa_only.stripe.is_none());
    let production = config_from(&[
        "--payments-sandbox=on",
        "--app-env=production",
        "--database-url=postgres://db.internal/nexus",
        "--allowed-origins=https://app.example.com",
        "--oauth-redirect-url=https://billing.example.com/integrations/oauth/callback",
        "--smtp-url=smtp://mail.internal:25",
    ]);
    assert!(!production.sandbox && production.stripe.is_none());
}

#[test]
fn production_needs_smtp_while_dunning_is_on_and_never_repeats_the_url() {
    let production = [
        "--app-env=production",
        "--database-url=postgres://db.internal/nexus",
        "--allowed-origins=https://app.example.com",
        "--oauth-redirect-url=https://billing.example.com/integrations/oauth/callback",
    ];
    let problems = |extra: &[&str]| {
        let key = format!("--encryption-key={}", "ab".repeat(32));
        let jwt = format!("--jwt-secret={}", "s".repeat(40));
        let args = ["nexus-billing", key.as_str(), jwt.as_str()]
            .into_iter()
            .chain(production)
            .chain(extra.iter().copied());
        let settings = <crate::cli::Cli as clap::Parser>::try_parse_from(args)
            .unwrap_or_else(|e| panic!("{e}"))
            .settings;
        Config::from_settings(settings)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(
        problems(&[]).contains("SMTP_URL: is required"),
        "{}",
        problems(&[])
    );
    assert_eq!(problems(&["--dunning-schedule="]), "");
    assert_eq!(
        problems(&["--smtp-url=smtps://u:p@mail.example.com:465"]),
        ""
    );
    let bad = problems(&["--smtp-url=http://u:hunter2@mail.example.com"]);
    assert!(
        bad.contains("SMTP_URL") && !bad.contains("hunter2"),
        "{bad}"
    );
    assert!(problems(&["--dunning-schedule=0,x"]).contains("DUNNING_SCHEDULE"));
    assert!(problems(&["--email-from=not an address"]).contains("EMAIL_FROM"));
    // Development without SMTP_URL: emails go to the log.
    let dev = config_with(&[]).unwrap_or_else(|e| panic!("{e}"));
    assert!(dev.dunning.smtp_url.is_none() && dev.dunning.is_on());
}

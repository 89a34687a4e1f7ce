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
    ]);
    assert_eq!(
        production.browser_origins(3001),
        ["https://app.example.com", "https://billing.example.com"],
        "production: the configured origins and the dashboard's public origin, no loopback"
    );
}

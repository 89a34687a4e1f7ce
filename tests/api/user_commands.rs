//! The operator commands `nexus-billing user show|export|delete ID`, run as the binary against
//! a test server's database and fakes.

use serde_json::{Value, json};

use crate::{
    account_world::{ADA, BIN, World, of_type, rich_user, rows_naming},
    fake_providers::HUBSPOT_TOKEN,
    helpers::Backend,
};

crate::on_both_backends!(the_operator_commands_show_export_and_erase_a_user);

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

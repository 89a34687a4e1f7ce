//! Entry point: load configuration, then serve, migrate or mint a token.

use std::process::ExitCode;

use clap::Parser;
use nexus_billing::{
    auth::{TokenRequest, mint},
    cli::{Cli, Command, UserCommand, WebhooksCommand},
    config::Config,
    domain::UserId,
    key_rotation::rotate_credentials,
    startup::{Application, build_account_only, build_billing_only, build_vault, shutdown_signal},
    store, telemetry,
};
use secrecy::ExposeSecret;

#[tokio::main]
async fn main() -> ExitCode {
    // A .env file is optional; real environment variables win over it.
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    let config = match Config::from_settings(cli.settings) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(config.log_format, &config.log_level);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Migrate => migrate(config).await,
        Command::RotateKeys => rotate_keys(config).await,
        Command::Webhooks { command } => webhooks(config, command).await,
        Command::Reconcile => reconcile(config).await,
        Command::User { command } => user(config, command).await,
        Command::Token {
            user_id,
            email,
            ttl,
            roles,
        } => token(&config, &user_id, email.as_deref(), ttl, &roles),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    if let Some(token) = app.dev_token() {
        print_dev_banner(
            &token,
            app.grpc_addr(),
            app.http_addr(),
            &app.dashboard_url(),
        );
    }
    let stop = app.shutdown_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        stop.cancel();
    });
    app.run_until_stopped().await
}

async fn migrate(config: Config) -> anyhow::Result<()> {
    let store = store::connect(
        config.database_url.expose_secret(),
        config.database_max_connections,
    )
    .await?;
    store.migrate().await?;
    store.close().await;
    tracing::info!("migrations applied");
    Ok(())
}

async fn rotate_keys(config: Config) -> anyhow::Result<()> {
    let store = store::connect(
        config.database_url.expose_secret(),
        config.database_max_connections,
    )
    .await?;
    store.migrate().await?;
    let vault = build_vault(&config)?;
    let report = rotate_credentials(store.as_ref(), &vault).await;
    store.close().await;
    let report = report?;
    tracing::info!(
        key_id = %vault.current_key_id(),
        rotated = report.rotated,
        already_current = report.already_current,
        changed_meanwhile = report.changed_meanwhile,
        unreadable = report.unreadable.len(),
        "credential rotation finished"
    );
    if !report.unreadable.is_empty() {
        anyhow::bail!(
            "{} integration(s) have credentials no configured key opens (ids in the log); \
             add the key they were sealed with to ENCRYPTION_KEY_PREVIOUS and run again",
            report.unreadable.len()
        );
    }
    Ok(())
}

async fn webhooks(config: Config, command: WebhooksCommand) -> anyhow::Result<()> {
    use nexus_billing::domain::subscription::PaymentProvider;
    let store = store::connect(
        config.database_url.expose_secret(),
        config.database_max_connections,
    )
    .await?;
    store.migrate().await?;
    let result = match command {
        WebhooksCommand::Failed { limit } => store.failed_events(limit).await.map(|events| {
            if events.is_empty() {
                println!("no failed webhook events");
            }
            for e in events {
                println!(
                    "{}\t{}\t{}\tcreated {}\tattempts {}\t{}",
                    e.event_id,
                    e.provider.as_str(),
                    e.event_type,
                    e.created.map(|t| t.to_rfc3339()).unwrap_or_default(),
                    e.attempts,
                    e.last_error.unwrap_or_default()
                );
            }
            true
        }),
        WebhooksCommand::Replay { event_id } => {
            let mut found = false;
            for provider in PaymentProvider::ALL {
                if store.replay_event(provider, &event_id).await? {
                    found = true;
                }
            }
            if found {
                println!("{event_id} is queued again; a running server applies it");
            }
            Ok(found)
        }
    };
    store.close().await;
    if !result? {
        anyhow::bail!("no failed event with that id (see `nexus-billing webhooks failed`)");
    }
    Ok(())
}

async fn reconcile(config: Config) -> anyhow::Result<()> {
    let (billing, store) = build_billing_only(&config).await?;
    let report = billing.reconcile().await;
    store.close().await;
    let report = report?;
    println!(
        "events listed {}, added {}; subscriptions refreshed {}, adopted {}, failed {}",
        report.events_listed,
        report.events_added,
        report.subscriptions_refreshed,
        report.subscriptions_adopted,
        report.subscriptions_failed
    );
    Ok(())
}

async fn user(config: Config, command: UserCommand) -> anyhow::Result<()> {
    use nexus_billing::domain::erasure::Requester;
    use std::io::Write;
    let id = match &command {
        UserCommand::Show { user_id }
        | UserCommand::Export { user_id }
        | UserCommand::Delete { user_id } => user_id,
    };
    let user = UserId::parse(id.as_str()).map_err(|e| anyhow::anyhow!("user id: {e}"))?;
    let (account, store) = build_account_only(&config).await?;
    let result: anyhow::Result<()> = async {
        match command {
            UserCommand::Show { .. } => {
                print!("{}", account.support_summary(&user).await?);
            }
            UserCommand::Export { .. } => {
                let mut lines = account.export(user);
                let mut stdout = std::io::stdout().lock();
                while let Some(line) = lines.recv().await {
                    writeln!(stdout, "{}", line?)?;
                }
                stdout.flush()?;
            }
            UserCommand::Delete { .. } => {
                let erasure = account.erase(&user, Requester::Operator).await?;
                let report = serde_json::json!({
                    "erasure_id": erasure.erasure_id,
                    "already_erased": erasure.already_erased,
                    "first_erased_at": erasure.first_erased_at.map(|t| t.to_rfc3339()),
                    "revocations": erasure.revocations.iter()
                        .map(|(p, o)| serde_json::json!({ "provider": p.as_str(), "outcome": o.as_str() }))
                        .collect::<Vec<_>>(),
                    "subscription_canceled": erasure.subscription_canceled.map(|p| p.as_str()),
                    "checkouts_not_expired": erasure.checkouts_not_expired,
                    "rows": erasure.rows,
                });
                println!("{report:#}");
            }
        }
        Ok(())
    }
    .await;
    store.close().await;
    result
}

fn token(
    config: &Config,
    user_id: &str,
    email: Option<&str>,
    ttl: std::time::Duration,
    roles: &[String],
) -> anyhow::Result<()> {
    if config.jwt.generated {
        anyhow::bail!(
            "JWT_SECRET is not set, so the server signs with a random per-process secret: \
             use the token it prints at start-up, or set JWT_SECRET for both"
        );
    }
    let user_id = UserId::parse(user_id).map_err(|e| anyhow::anyhow!("--user-id: {e}"))?;
    let token = mint(
        &config.jwt,
        &TokenRequest {
            user_id: &user_id,
            email,
            roles,
            ttl,
        },
    )
    .map_err(anyhow::Error::msg)?;
    println!("{token}");
    Ok(())
}

/// Development only (JWT_SECRET unset): a ready-to-paste token and example calls. Written
/// with errors ignored: a closed stdout (a supervisor that stopped reading) must not stop the
/// server.
fn print_dev_banner(
    token: &str,
    grpc: std::net::SocketAddr,
    http: std::net::SocketAddr,
    dashboard: &str,
) {
    use std::io::Write;
    let banner = format!(
        "\n\
         Development token (user \"dev-user\", valid 24 h, this process only):\n\n\
         export TOKEN={token}\n\n\
         Dashboard (sign in with the token above): {dashboard}\n\n\
         Try it:\n\
         grpcurl -plaintext -H \"authorization: Bearer $TOKEN\" {grpc} nexus.billing.v1.BillingService/ListPlans\n\
         grpcurl -plaintext -H \"authorization: Bearer $TOKEN\" {grpc} nexus.billing.v1.BillingService/GetUsage\n\
         grpcurl -plaintext {grpc} grpc.health.v1.Health/Check\n\
         curl http://{http}/readyz\n\n"
    );
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(banner.as_bytes());
    let _ = stdout.flush();
}

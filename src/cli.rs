//! The command line: `serve` (default), `migrate`, `token`, `rotate-keys`, `webhooks`,
//! `reconcile`, `user`. Settings come from the environment
//! (or `.env`) and may also be given as flags; see [`crate::config::Settings`].

use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::Settings;

#[derive(Debug, Parser)]
#[command(
    name = "nexus-billing",
    version,
    about = "Nexus Cards billing and integrations service"
)]
pub struct Cli {
    #[command(flatten)]
    pub settings: Settings,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Serve gRPC (+ grpc-web) and the HTTP sidecar (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Re-encrypt every stored credential under ENCRYPTION_KEY (run after moving the old key
    /// to ENCRYPTION_KEY_PREVIOUS; servers keep running meanwhile).
    RotateKeys,
    /// Webhook events the processor gave up on (dead letters).
    Webhooks {
        #[command(subcommand)]
        command: WebhooksCommand,
    },
    /// Bring in missed Stripe events and re-read overdue subscriptions once, then exit.
    Reconcile,
    /// One user's data, for support and data-rights requests.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Print a token signed with JWT_SECRET (HS256), for development and scripts.
    Token {
        /// The token's `sub`.
        #[arg(long)]
        user_id: String,
        /// The token's `email`.
        #[arg(long)]
        email: Option<String>,
        /// Lifetime, e.g. `1h`, `30m`, `7d`.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// A role to include (repeatable), e.g. `--role service` for internal callers.
        #[arg(long = "role")]
        roles: Vec<String>,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum UserCommand {
    /// What support needs: subscription, usage, invoices, integrations, recent jobs and
    /// activity (never a secret).
    Show {
        /// The user id (the token's `sub`).
        user_id: String,
    },
    /// Everything held about the user, as JSON lines on standard output (the ExportMyData
    /// format).
    Export {
        /// The user id.
        user_id: String,
    },
    /// Erase the user's data (as DeleteMyData): revoke grants, cancel the live subscription
    /// now, delete everything but the invoices, which are detached. Safe to run again.
    Delete {
        /// The user id.
        user_id: String,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum WebhooksCommand {
    /// List failed events, newest first, with the reason.
    Failed {
        /// How many to list.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Put a failed event back in the queue; a running server applies it.
    Replay {
        /// The event id (evt_...).
        event_id: String,
    },
}

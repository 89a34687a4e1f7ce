//! The command line: `serve` (default), `migrate`, `token`, `rotate-keys`. Settings come from the environment
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

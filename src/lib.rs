//! Nexus Cards billing and integrations service.
//!
//! Layers, from the bottom up: `domain` (types and rules, no I/O) -> `store` (the storage trait
//! and its PostgreSQL and SQLite implementations) and `payments` (the payment-provider trait
//! and Stripe) -> `billing` (checkout, plan changes, webhook intake, event processor, reconciler), `integrations` (use cases) -> `grpc`, `sidecar`
//! (conversion and auth only) -> `startup` -> `main`.
#![forbid(unsafe_code)]

pub mod account;
pub mod auth;
pub mod billing;
pub mod cli;
pub mod config;
pub mod connection_limits;
pub mod domain;
pub mod grpc;
pub mod integrations;
pub mod key_rotation;
pub mod metrics;
pub mod payments;
pub mod product_metrics;
pub mod providers;
pub mod sidecar;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod vault;

#[doc(hidden)]
pub mod fuzzing;

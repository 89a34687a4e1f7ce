//! Nexus Cards billing and integrations service.
//!
//! Modules import downward only, with no circle (`.ci/import-circles` checks it): `domain`
//! (types and rules, no I/O) at the bottom; then `config`, `vault`, `providers` (one module
//! per integration); then `payments` (the payment-provider trait, Stripe, PayPal, M-Pesa) and
//! `auth`; then `store` (the storage traits, PostgreSQL and SQLite); then the use cases:
//! `billing`, then `integrations`, then `account`; then `grpc` and `sidecar` (conversion and
//! auth only); then `startup`; `main` on top.
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
pub mod metrics_catalogue;
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

//! End-to-end tests: the real server on random ports, a fresh database per test, talked to with
//! the generated tonic clients, the health/reflection clients and plain HTTP. Every test that
//! touches the database runs on SQLite and on PostgreSQL (when TEST_DATABASE_URL is set).

mod account_world;
mod attacks;
mod auth;
mod billing;
mod browser;
mod checkout;
mod config;
mod dashboard;
mod data_rights;
mod event_processing;
mod fake_mpesa;
mod fake_oauth;
mod fake_paypal;
mod fake_providers;
mod fake_stripe;
mod grpc_web;
mod health;
mod helpers;
mod imports;
mod integrations;
mod mpesa;
mod oauth;
mod oauth_browser;
mod oauth_providers;
mod paypal;
mod plan_changes;
mod product_metrics;
mod provider_rules;
mod sidecar;
mod store_contract;
mod subscription_lifecycle;
mod sync_field;
mod sync_jobs;
mod sync_schedule;
mod user_commands;
mod vault;
mod webhooks;

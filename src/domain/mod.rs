//! Domain types and rules: plans, limits, subscriptions, the provider catalogue. No I/O here;
//! everything above (storage, gRPC, webhooks) builds on these.

pub mod activity;
pub mod catalogue;
pub mod contact;
pub mod contact_csv;
pub mod credentials;
pub mod dunning;
pub mod erasure;
pub mod freshness;
pub mod health;
pub mod integration;
pub mod invoice;
pub mod phone;
pub mod plans;
pub mod prepaid;
pub mod pricing;
pub mod reconcile;
pub mod subscription;
pub mod sync_job;
pub mod usage;
pub mod user;

pub use plans::{Limit, Plan, Tier};
pub use subscription::{Subscription, SubscriptionStatus};
pub use usage::{LimitCheck, Resource, Usage};
pub use user::UserId;

//! Quota's server: the HTTP API (axum), the phases of an inference request, accounts, keys, and
//! the `quota` command line. Domain rules live in `quota-core`, persistence and the ledger in
//! `quota-store`, upstream calls in `quota-providers`; this crate wires them to HTTP.

pub mod account_caps;
pub mod app;
pub mod auth;
pub mod body;
pub mod changes;
pub mod cli;
pub mod client_ip;
pub mod clock;
pub mod config;
pub mod dashboard;
pub mod error;
pub mod error_catalog;
pub mod files;
pub mod gateway;
pub mod limit;
pub mod metrics;
pub mod oauth;
pub mod openapi;
pub mod payments;
pub mod request_id;
pub mod routes;
pub mod secrets;
pub mod services;
pub mod telemetry;
pub mod test_hooks;
pub mod webhooks;

pub use app::{build_router, AppState, SharedState};
pub use config::Config;

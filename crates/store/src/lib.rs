//! Quota's persistence: the storage interface over SQLite (embedded default) and PostgreSQL, their
//! migrations, and the ledger engines that turn holds and settlements into durable transfers.
//!
//! Everything that reads or writes the database goes through [`Store`], over SQLite (one
//! instance, embedded) or PostgreSQL (several instances sharing it; `db.rs` runs each query on
//! either); the money rules it enforces come from `quota-core`. [`Ledger`] runs the engine that
//! fits the backend — in-memory holds on SQLite (`ledger/sqlite.rs`), holds in the database on
//! PostgreSQL (`ledger/postgres.rs`) — behind one API, with one planner (`ledger/plan.rs`) and
//! one group-commit loop (`ledger/writer.rs`).

pub mod account_limits;
pub mod at_rest;
pub mod clock;
mod db;
pub mod events;
pub mod idempotency;
mod last_used;
pub mod ledger;
pub mod models;
pub mod oauth;
pub mod payments;
pub mod profile;
pub mod sqlite_busy;
mod store;
pub mod testing;
pub mod usage;
pub mod verify;
pub mod webhooks;

pub use clock::now_ms;
pub use db::{Both, DbRow, Pool, Tx};
pub use events::OutboxEvent;
pub use ledger::{BalanceUpdate, Ledger, LedgerConfig, LedgerError, LowBalanceWatch, Settlement};
pub use models::*;
pub use store::{Change, Changes, Store, StoreConfig, StoreError, Synchronous, CHANGES_CHANNEL};

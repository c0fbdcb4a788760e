//! Quota's persistence: the storage interface over SQLite (embedded default), its migrations, and
//! the ledger engine that turns holds and settlements into durable, group-committed transfers.
//!
//! Everything that reads or writes the database goes through [`Store`]; the money rules it
//! enforces come from `quota-core`. PostgreSQL (scale-out) implements the same interface in a
//! later change; the SQL here sticks to what both dialects share where that costs nothing.

pub mod clock;
pub mod events;
pub mod idempotency;
pub mod ledger;
pub mod models;
pub mod oauth;
pub mod payments;
mod store;
pub mod usage;
pub mod verify;
pub mod webhooks;

pub use clock::now_ms;
pub use events::OutboxEvent;
pub use ledger::{Ledger, LedgerConfig, LedgerError, LowBalanceWatch, Settlement};
pub use models::*;
pub use store::{Store, StoreConfig, StoreError, Synchronous};

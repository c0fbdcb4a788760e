//! Webhooks (SPEC §8), by job: the kinds of event ([`events`]), signing ([`sign`]), which
//! addresses a delivery may reach ([`ssrf`]), the in-memory directory of endpoints the request
//! path consults ([`directory`]), one delivery attempt ([`attempt`]), the delivery worker
//! ([`worker`]) and its low-priority thread ([`sender`]).
//!
//! The request path only *adds events to a settlement* ([`Directory::settlement_events`]): a
//! hash-map read and an id, no I/O. Everything else happens in the worker, off the request
//! path. Not here: managing endpoints (`crate::services::webhooks`), the rows
//! (`quota_store::webhooks`).

pub mod attempt;
pub mod directory;
pub mod events;
mod sender;
pub mod sign;
pub mod ssrf;
pub mod worker;

pub use directory::Directory;
pub use events::EventKind;
pub use sender::{Priority, Sender};
pub use sign::{new_secret, sign, Signatures};
pub use ssrf::is_private;
pub use worker::spawn_worker;

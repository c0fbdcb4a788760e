//! Quota's money core: credits, prices, markup, the model catalog, the ledger's rules and
//! reservation arithmetic.
//!
//! Pure code with no I/O, so every rule that decides an amount of money can be tested
//! exhaustively (see the property tests in each module). Nothing here talks to a database, a
//! clock or the network; callers pass those in.

pub mod billing;
pub mod calendar;
pub mod catalog;
pub mod credits;
pub mod hold;
pub mod ids;
pub mod ledger;
pub mod markup;
pub mod price;
pub mod tokens;
pub mod transfers;

pub use billing::BillingMode;
pub use catalog::{Catalog, Model, ModelKind, Provider};
pub use credits::Credits;
pub use ledger::{AccountId, PlatformAccount, Transfer, TransferKind};
pub use markup::Margin;
pub use price::{Price, Usage};

//! The ledger (DESIGN §3): one API — [`Ledger`] and its [`Hold`]s — over two engines, chosen by
//! the store's backend. This file holds the API; the rest is one pipeline:
//!
//! * `plan.rs` — the pure planning of a batch (deltas, duplicates, balances after,
//!   `balance.low` crossings; Σ = 0, held ≥ 0 and settlement ≤ hold asserted there);
//! * `writer.rs` — the one group-commit loop, and the [`Engine`](writer::Engine) trait whose
//!   methods are the statements that apply a plan;
//! * `sqlite.rs` — the embedded engine: holds and balances in memory, the writer on a thread of
//!   its own that owns its connection (prepared statements, no async hop per statement);
//! * `postgres.rs` — the engine several instances share: holds in the database.
//!
//! * **hold** — reserve credits on an account (the hold rule: [`Ledger::hold`]).
//! * **settle** — turn a hold into transfers (plus the usage record, the idempotent response and
//!   the key's last-use time), committed in a group with others; the caller is answered only
//!   after the commit: a charge is durable before the response that reports it ends (SPEC
//!   §4.3.6).
//! * **release** — dropping a [`Hold`] without settling it frees its credits; holds that outlive
//!   `hold_ttl` (a request stuck past every timeout, a dead instance) are freed by a tick.

use crate::db::Pool;
use crate::events::OutboxEvent;
use crate::idempotency::IdempotencyCompletion;
use crate::store::{Store, StoreError};
use crate::usage::UsageRecord;
use postgres::Shared;
use quota_core::ledger::TransferError;
use quota_core::{AccountId, Credits, Transfer};
use sqlite::Local;
pub(crate) use sqlite::SqliteFile;
use std::sync::Arc;
use std::time::Duration;

mod plan;
mod postgres;
mod sqlite;
mod writer;

#[derive(Debug, Clone)]
pub struct LedgerConfig {
    /// Most settlements committed in one transaction.
    pub batch_max: usize,
    /// Most settlements waiting for the writer; beyond it callers wait (backpressure).
    pub queue_max: usize,
    /// A hold not settled or released within this time is freed (on PostgreSQL, by any
    /// instance: this is how a crashed instance's holds come back).
    pub hold_ttl: Duration,
    /// How often the writer looks for other processes' transfers (SQLite) and expired holds.
    pub tick: Duration,
    /// Written on every transfer this process commits, to tell its rows from others'.
    pub origin: String,
    /// WAL length (pages) past which the checkpointer makes the WAL start over (see
    /// `checkpoint`); the default, 10,000 pages, is ~40 MB.
    pub wal_restart_frames: i64,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            batch_max: 512,
            queue_max: 16_384,
            hold_ttl: Duration::from_secs(660),
            tick: Duration::from_millis(250),
            origin: quota_core::ids::new_id("proc_"),
            wal_restart_frames: 10_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("insufficient credits: {available} available, {needed} needed")]
    Insufficient { available: Credits, needed: Credits },
    #[error("invalid transfer: {0}")]
    Invalid(#[from] TransferError),
    #[error("a settlement of {debited} from {account} exceeds its hold of {held} (SPEC §4.3(3) caps it)")]
    AboveHold { account: AccountId, debited: Credits, held: Credits },
    #[error("the ledger writer has stopped")]
    Stopped,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What to commit when a hold settles (or a plain transfer is made).
#[derive(Debug, Default, Clone)]
pub struct Settlement {
    pub transfers: Vec<Transfer>,
    pub usage: Option<UsageRecord>,
    pub idempotency: Option<IdempotencyCompletion>,
    /// The API key to mark as used at the commit time.
    pub key_used: Option<String>,
    /// Webhook events caused by this settlement (outbox), committed with it.
    pub events: Vec<OutboxEvent>,
    /// Events to commit only if this settlement takes an account's balance from at or above a
    /// threshold to below it (`balance.low`, SPEC §8): decided by the writer, which alone
    /// knows the balance each settlement starts from, so a crossing fires once however many
    /// requests run below the threshold afterwards.
    pub low_balance: Vec<LowBalanceWatch>,
    /// Events that report an account's balance right after this settlement (`balance.updated`
    /// after a charge, SPEC §14): the writer, which alone knows it, fills `data.new_balance`.
    pub balance_updates: Vec<BalanceUpdate>,
}

/// An event to write with `data.new_balance` = `account`'s balance after the settlement.
#[derive(Debug, Clone)]
pub struct BalanceUpdate {
    pub account: AccountId,
    pub event: OutboxEvent,
}

impl BalanceUpdate {
    /// The event, with the balance the settlement left.
    pub(crate) fn filled(&self, after: i64) -> OutboxEvent {
        let mut e = self.event.clone();
        if let Some(data) = e.data.as_object_mut() {
            data.insert("new_balance".into(), after.into());
        }
        e
    }
}

/// A `balance.low` event to write if `account` crosses `threshold` downwards.
#[derive(Debug, Clone)]
pub struct LowBalanceWatch {
    pub account: AccountId,
    pub threshold: i64,
    /// Written with `data.balance` set to the balance after the settlement.
    pub event: OutboxEvent,
}

impl LowBalanceWatch {
    /// The event to write if a settlement took the balance from `before` to `after`: only when
    /// it crosses the threshold downwards (`data.balance` is the balance after).
    pub(crate) fn crossed(&self, before: i64, after: i64) -> Option<OutboxEvent> {
        if before < self.threshold || after >= self.threshold {
            return None;
        }
        let mut e = self.event.clone();
        if let Some(data) = e.data.as_object_mut() {
            data.insert("balance".into(), after.into());
            // The public docs' name for it (SPEC §14).
            data.insert("current_balance".into(), after.into());
            data.insert("threshold".into(), self.threshold.into());
        }
        Some(e)
    }

    /// The settlement's net effect on the watched account.
    pub(crate) fn delta(&self, transfers: &[Transfer]) -> i64 {
        transfers
            .iter()
            .map(|t| {
                if t.from == self.account {
                    -t.amount.get()
                } else if t.to == self.account {
                    t.amount.get()
                } else {
                    0
                }
            })
            .sum()
    }
}

/// The hold a settlement ends, as the writer needs it: which, on what account, how much.
#[derive(Debug, Clone)]
pub(crate) struct HoldRef {
    pub id: u64,
    pub account: AccountId,
    pub amount: i64,
}

/// The result of a committed settlement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// Cached balances right after this settlement, for every account it touched that is cached.
    pub balances_after: Vec<(AccountId, Credits)>,
    /// Transfers whose id already existed: nothing was written for them (idempotent replay).
    pub duplicates: usize,
}

impl Committed {
    pub fn balance_of(&self, account: &AccountId) -> Option<Credits> {
        self.balances_after.iter().find(|(a, _)| a == account).map(|(_, b)| *b)
    }
}

#[derive(Clone)]
pub struct Ledger {
    engine: Engine,
}

#[derive(Clone)]
enum Engine {
    /// SQLite: holds and balances in memory, one process.
    Local(Local),
    /// PostgreSQL: holds and balances in the database, shared by every instance.
    Shared(Arc<Shared>),
}

/// Reserved credits on one account. Settle it with [`Ledger::settle`]; dropping it releases
/// the credits.
pub struct Hold {
    pub(crate) id: u64,
    pub(crate) account: AccountId,
    pub(crate) amount: Credits,
    pub(crate) balance_at_hold: Credits,
    /// The engine to release it to when dropped; `None` once settled.
    pub(crate) owner: Option<Owner>,
}

pub(crate) enum Owner {
    Local(Arc<sqlite::Inner>),
    Shared(Arc<Shared>),
}

impl Hold {
    pub fn account(&self) -> &AccountId {
        &self.account
    }
    pub fn amount(&self) -> Credits {
        self.amount
    }
    /// The account's balance when the hold was taken (`balance_before` in the `quota` object).
    pub fn balance_at_hold(&self) -> Credits {
        self.balance_at_hold
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        match self.owner.take() {
            Some(Owner::Local(inner)) => inner.release(self.id),
            Some(Owner::Shared(shared)) => shared.release(self.id),
            None => {}
        }
    }
}

impl Ledger {
    /// Start the engine that fits `store`'s backend, and its background tasks.
    pub async fn start(store: Store, config: LedgerConfig) -> Result<Ledger, LedgerError> {
        let engine = match store.pool() {
            Pool::Sqlite(_) => Engine::Local(Local::start(store, config).await?),
            Pool::Postgres(_) => Engine::Shared(Shared::start(store, config).await?),
        };
        Ok(Ledger { engine })
    }

    /// The name written on every transfer this process commits.
    pub fn origin(&self) -> &str {
        match &self.engine {
            Engine::Local(l) => l.origin(),
            Engine::Shared(s) => s.origin(),
        }
    }

    /// The account's balance (not counting holds).
    pub async fn balance(&self, account: &AccountId) -> Result<Credits, LedgerError> {
        match &self.engine {
            Engine::Local(l) => l.balance(account).await,
            Engine::Shared(s) => Ok(s.balance_and_held(account).await?.0),
        }
    }

    /// The balance and what is held on it (every instance's holds, on PostgreSQL), read once.
    pub async fn balance_and_held(&self, account: &AccountId) -> Result<(Credits, Credits), LedgerError> {
        match &self.engine {
            Engine::Local(l) => {
                let balance = l.balance(account).await?;
                let available = l.available(account).await?;
                Ok((balance, Credits::new(balance.get() - available.get())))
            }
            Engine::Shared(s) => Ok(s.balance_and_held(account).await?),
        }
    }

    /// Balance minus open holds (every instance's, on PostgreSQL).
    pub async fn available(&self, account: &AccountId) -> Result<Credits, LedgerError> {
        match &self.engine {
            Engine::Local(l) => l.available(account).await,
            Engine::Shared(s) => {
                let (balance, held) = s.balance_and_held(account).await?;
                Ok(Credits::new(balance.get() - held.get()))
            }
        }
    }

    /// Reserve `amount` on `account` (SPEC §4.3.1–2): refused only when the available balance
    /// (balance − open holds) is below `amount`, or the balance is below zero (a refund debt,
    /// SPEC §4.5: a wallet below zero starts no request): [`quota_core::hold::can_hold`]. On
    /// PostgreSQL the hold is committed in the database, visible to every instance, before
    /// this returns.
    pub async fn hold(&self, account: &AccountId, amount: Credits) -> Result<Hold, LedgerError> {
        assert!(amount.get() >= 0, "hold of a negative amount");
        match &self.engine {
            Engine::Local(l) => l.hold(account, amount).await,
            Engine::Shared(s) => s.hold(account, amount).await,
        }
    }

    /// Commit `settlement` and free `hold` in the same step. Its debit from the held account
    /// must not exceed the hold (SPEC §4.3(3): the gateway caps the charge,
    /// `quota_core::transfers::usage_charge`, and books any excess to `platform:losses`); one
    /// that does is refused with `AboveHold` and charges nothing (the planner asserts the same
    /// inside the batch). Returns once the commit is durable.
    pub async fn settle(&self, mut hold: Hold, settlement: Settlement) -> Result<Committed, LedgerError> {
        for t in &settlement.transfers {
            t.validate()?;
        }
        let debited = plan::debit(&settlement.transfers, &hold.account);
        if debited > i128::from(hold.amount.get()) {
            return Err(LedgerError::AboveHold {
                account: hold.account.clone(),
                debited: Credits::new(i64::try_from(debited).unwrap_or(i64::MAX)),
                held: hold.amount,
            });
        }
        // From here the engine owns the hold: it frees it when it applies the commit.
        hold.owner = None;
        let ends = HoldRef { id: hold.id, account: hold.account.clone(), amount: hold.amount.get() };
        self.commit(Some(ends), settlement).await
    }

    /// Make one transfer now. A debit from an account that may not go negative is held first,
    /// so it fails with `Insufficient` rather than overdrawing.
    pub async fn transfer(&self, transfer: Transfer) -> Result<Committed, LedgerError> {
        self.transfer_with_events(transfer, Vec::new()).await
    }

    /// [`Ledger::transfer`], with the webhook events it causes committed in the same
    /// transaction (none are written if the transfer id already existed).
    pub async fn transfer_with_events(
        &self,
        transfer: Transfer,
        events: Vec<OutboxEvent>,
    ) -> Result<Committed, LedgerError> {
        self.transfer_settling(transfer, Settlement { events, ..Default::default() }).await
    }

    /// [`Ledger::transfer`], with events that report a balance right after it (see
    /// [`Settlement::balance_updates`]), committed in the same transaction.
    pub async fn transfer_with_balance_updates(
        &self,
        transfer: Transfer,
        balance_updates: Vec<BalanceUpdate>,
    ) -> Result<Committed, LedgerError> {
        self.transfer_settling(transfer, Settlement { balance_updates, ..Default::default() }).await
    }

    /// One transfer, with what else `settlement` commits beside it.
    async fn transfer_settling(&self, transfer: Transfer, settlement: Settlement) -> Result<Committed, LedgerError> {
        transfer.validate()?;
        let settlement = Settlement { transfers: vec![transfer.clone()], ..settlement };
        if transfer.from.may_go_negative() {
            if let Engine::Local(l) = &self.engine {
                l.ensure_loaded(&[&transfer.from, &transfer.to]).await?;
            }
            return self.commit(None, settlement).await;
        }
        let hold = self.hold(&transfer.from, transfer.amount).await?;
        if let Engine::Local(l) = &self.engine {
            l.ensure_loaded(&[&transfer.to]).await?;
        }
        self.settle(hold, settlement).await
    }

    async fn commit(&self, hold: Option<HoldRef>, settlement: Settlement) -> Result<Committed, LedgerError> {
        match &self.engine {
            Engine::Local(l) => l.commit(hold, settlement).await,
            Engine::Shared(s) => s.commit(hold, settlement).await,
        }
    }

    /// Commit records that move no money (e.g. the usage record of a failed request).
    pub async fn record(&self, usage: UsageRecord) -> Result<Committed, LedgerError> {
        self.commit(None, Settlement { usage: Some(usage), ..Default::default() }).await
    }

    /// Wait until everything queued before this call is committed.
    pub async fn flush(&self) -> Result<(), LedgerError> {
        match &self.engine {
            Engine::Local(l) => l.flush().await,
            Engine::Shared(s) => s.flush().await,
        }
    }

    /// How many times the SQLite WAL was made to start over (see `checkpoint`); 0 on PostgreSQL.
    pub fn wal_restarts(&self) -> u64 {
        match &self.engine {
            Engine::Local(l) => l.wal_restarts(),
            Engine::Shared(_) => 0,
        }
    }

    /// Holds this process has open (for metrics and tests).
    pub fn open_holds(&self) -> usize {
        match &self.engine {
            Engine::Local(l) => l.open_holds(),
            Engine::Shared(s) => s.open_holds(),
        }
    }

    /// Credits held on an account right now (by this process on SQLite, by every instance on
    /// PostgreSQL).
    pub async fn held(&self, account: &AccountId) -> Result<Credits, LedgerError> {
        match &self.engine {
            Engine::Local(l) => Ok(l.held(account)),
            Engine::Shared(s) => Ok(s.balance_and_held(account).await?.1),
        }
    }
}

/// A batch the planner refused fails like a statement: rolled back, then retried job by job.
pub(crate) fn refused(e: plan::PlanError) -> StoreError {
    tracing::error!(error = %e, "ledger invariant violated; batch refused");
    metrics::counter!("quota_ledger_refused_total").increment(1);
    StoreError::Corrupt(format!("ledger batch refused: {e}"))
}

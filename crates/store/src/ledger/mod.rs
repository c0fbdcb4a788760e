//! The ledger (DESIGN §3): one API — [`Ledger`] and its [`Hold`]s — over two engines, chosen by
//! the store's backend. This file holds the API and the SQLite engine; `postgres.rs` holds the
//! PostgreSQL one; `plan.rs` the pure planning of a batch that both use, for several instances sharing a database.
//!
//! The SQLite engine keeps balances and holds in memory in front of an append-only,
//! group-committed transfer table:
//!
//! * **hold** — reserve credits on an account. Checked and recorded in memory under one lock:
//!   no database read or write on the request path once the account is cached.
//! * **settle** — turn a hold into transfers (plus the usage record, the idempotent response and
//!   the key's last-use time). Settlements queue to one writer task that commits many of them in
//!   one transaction (group commit) and answers each caller only after the commit: a charge is
//!   durable before the response that reports it ends (SPEC §4.3.6).
//! * **release** — dropping a [`Hold`] without settling it frees its credits at once; holds that
//!   outlive `hold_ttl` (a request stuck past every timeout) are freed by the writer's tick.
//!
//! The writer is the only code that mutates cached balances from the database, so loads, its own
//! commits and other processes' transfers (the admin CLI) are applied in one order and never
//! twice: each batch runs under `BEGIN IMMEDIATE`, first catching up on foreign transfers (rows
//! with `seq` beyond what this process has seen), then loading accounts, then committing.
//!
//! This engine assumes it is the only process that *debits* wallets in its database (true for
//! the embedded SQLite deployment). Several instances on PostgreSQL need holds in the database:
//! the PostgreSQL engine implements the same operations that way.

use crate::db::Pool;
use crate::events::{insert_events_sqlite, OutboxEvent};
use crate::idempotency::IdempotencyCompletion;
use crate::last_used::LastUsed;
use crate::now_ms;
use crate::store::{complete_idempotency, Store, StoreError};
use crate::usage::UsageRecord;
use parking_lot::Mutex;
use postgres::Shared;
use quota_core::ledger::TransferError;
use quota_core::{AccountId, Credits, Transfer};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

mod plan;
mod postgres;

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
                    -t.amount.0
                } else if t.to == self.account {
                    t.amount.0
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

struct AccountState {
    balance: i64,
    held: i64,
}

struct HoldState {
    account: AccountId,
    amount: i64,
    expires_at: Instant,
}

#[derive(Default)]
struct State {
    accounts: HashMap<AccountId, AccountState>,
    holds: HashMap<u64, HoldState>,
}

impl State {
    fn release(&mut self, hold_id: u64) {
        if let Some(h) = self.holds.remove(&hold_id) {
            if let Some(a) = self.accounts.get_mut(&h.account) {
                a.held -= h.amount;
                debug_assert!(a.held >= 0, "held went negative on {}", h.account);
            }
        }
    }
}

// Jobs move once through the channel; boxing the big variant would cost an allocation per
// settlement for nothing.
#[allow(clippy::large_enum_variant)]
enum Job {
    Load { accounts: Vec<AccountId>, reply: oneshot::Sender<Result<(), LedgerError>> },
    Commit { hold: Option<HoldRef>, settlement: Settlement, reply: oneshot::Sender<Result<Committed, LedgerError>> },
    Flush { reply: oneshot::Sender<()> },
}

pub(crate) struct Inner {
    state: Mutex<State>,
    jobs: mpsc::Sender<Job>,
    next_hold: AtomicU64,
    config: LedgerConfig,
    /// How many times the checkpointer made the WAL start over.
    wal_restarts: AtomicU64,
}

/// The ledger. Cheap to clone; all clones share one engine (and its writer).
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

/// The SQLite engine.
#[derive(Clone)]
struct Local {
    inner: Arc<Inner>,
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
    Local(Arc<Inner>),
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
            Some(Owner::Local(inner)) => inner.state.lock().release(self.id),
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
            Engine::Local(l) => &l.inner.config.origin,
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

    /// Balance minus open holds (every instance's, on PostgreSQL).
    pub async fn available(&self, account: &AccountId) -> Result<Credits, LedgerError> {
        match &self.engine {
            Engine::Local(l) => l.available(account).await,
            Engine::Shared(s) => {
                let (balance, held) = s.balance_and_held(account).await?;
                Ok(Credits(balance.0 - held.0))
            }
        }
    }

    /// Reserve `amount` on `account` (SPEC §4.3.1–2): refused only when the available balance
    /// (balance − open holds) is below `amount`, or the balance is below zero (a refund debt,
    /// SPEC §4.5: a wallet below zero starts no request). On PostgreSQL the hold is committed
    /// in the database, visible to every instance, before this returns.
    pub async fn hold(&self, account: &AccountId, amount: Credits) -> Result<Hold, LedgerError> {
        assert!(amount.0 >= 0, "hold of a negative amount");
        match &self.engine {
            Engine::Local(l) => l.hold(account, amount).await,
            Engine::Shared(s) => s.hold(account, amount).await,
        }
    }

    /// Commit `settlement` and free `hold` in the same step. Its debit from the held account
    /// must not exceed the hold (SPEC §4.3.3: the caller caps the charge and books any excess
    /// to the platform's `losses`); one that does is refused and charges nothing. Returns once
    /// the commit is durable.
    pub async fn settle(&self, mut hold: Hold, settlement: Settlement) -> Result<Committed, LedgerError> {
        for t in &settlement.transfers {
            t.validate()?;
        }
        // From here the engine owns the hold: it frees it when it applies the commit.
        hold.owner = None;
        let ends = HoldRef { id: hold.id, account: hold.account.clone(), amount: hold.amount.0 };
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
        transfer.validate()?;
        let settlement = Settlement { transfers: vec![transfer.clone()], events, ..Default::default() };
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
            Engine::Local(l) => l.inner.wal_restarts.load(Ordering::Relaxed),
            Engine::Shared(_) => 0,
        }
    }

    /// Holds this process has open (for metrics and tests).
    pub fn open_holds(&self) -> usize {
        match &self.engine {
            Engine::Local(l) => l.inner.state.lock().holds.len(),
            Engine::Shared(s) => s.open_holds(),
        }
    }

    /// Credits held on an account right now (by this process on SQLite, by every instance on
    /// PostgreSQL).
    pub async fn held(&self, account: &AccountId) -> Result<Credits, LedgerError> {
        match &self.engine {
            Engine::Local(l) => Ok(Credits(l.inner.state.lock().accounts.get(account).map(|a| a.held).unwrap_or(0))),
            Engine::Shared(s) => Ok(s.balance_and_held(account).await?.1),
        }
    }
}

impl Local {
    async fn start(store: Store, config: LedgerConfig) -> Result<Local, LedgerError> {
        let mut conn = store.dedicated_sqlite_connection().await?;
        let last_seq: i64 = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS s FROM transfers")
            .fetch_one(&mut conn)
            .await
            .map_err(StoreError::from)?
            .get("s");
        let (tx, rx) = mpsc::channel(config.queue_max.max(1));
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            jobs: tx,
            next_hold: AtomicU64::new(1),
            config,
            wal_restarts: AtomicU64::new(0),
        });
        // Checkpoints run from a pool connection every second (PASSIVE: they never block the
        // writer) instead of inline in the commit that crosses SQLite's threshold (every
        // connection is opened with `wal_autocheckpoint = 0`, see `Store::open`).
        let checkpointer = store.clone();
        let alive = Arc::downgrade(&inner);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(CHECKPOINT_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(inner) = alive.upgrade() else {
                    break;
                };
                let Pool::Sqlite(pool) = checkpointer.pool() else { break };
                match checkpoint(pool, inner.config.wal_restart_frames).await {
                    Ok(true) => {
                        inner.wal_restarts.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("quota_sqlite_wal_restarts_total").increment(1);
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
                }
            }
        });
        let writer = Writer {
            last_used: LastUsed::default(),
            conn,
            inner: Arc::downgrade(&inner),
            last_seq,
            origin: inner.config.origin.clone(),
        };
        tokio::spawn(writer.run(Jobs::new(rx, inner.config.tick, inner.config.batch_max.max(1))));
        Ok(Local { inner })
    }

    async fn send(&self, job: Job) -> Result<(), LedgerError> {
        self.inner.jobs.send(job).await.map_err(|_| LedgerError::Stopped)
    }

    async fn ensure_loaded(&self, accounts: &[&AccountId]) -> Result<(), LedgerError> {
        let missing: Vec<AccountId> = {
            let st = self.inner.state.lock();
            accounts.iter().filter(|a| !st.accounts.contains_key(a)).map(|a| (*a).clone()).collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let (reply, rx) = oneshot::channel();
        self.send(Job::Load { accounts: missing, reply }).await?;
        rx.await.map_err(|_| LedgerError::Stopped)?
    }

    async fn balance(&self, account: &AccountId) -> Result<Credits, LedgerError> {
        self.ensure_loaded(&[account]).await?;
        let st = self.inner.state.lock();
        Ok(Credits(st.accounts.get(account).map(|a| a.balance).unwrap_or(0)))
    }

    async fn available(&self, account: &AccountId) -> Result<Credits, LedgerError> {
        self.ensure_loaded(&[account]).await?;
        let st = self.inner.state.lock();
        Ok(Credits(st.accounts.get(account).map(|a| a.balance - a.held).unwrap_or(0)))
    }

    async fn hold(&self, account: &AccountId, amount: Credits) -> Result<Hold, LedgerError> {
        for _ in 0..2 {
            {
                let mut st = self.inner.state.lock();
                if let Some(acct) = st.accounts.get_mut(account) {
                    let available = acct.balance - acct.held;
                    if refuses_hold(acct.balance, available, amount.0) {
                        return Err(LedgerError::Insufficient { available: Credits(available.max(0)), needed: amount });
                    }
                    acct.held += amount.0;
                    let balance_at_hold = Credits(acct.balance);
                    let id = self.inner.next_hold.fetch_add(1, Ordering::Relaxed);
                    st.holds.insert(
                        id,
                        HoldState {
                            account: account.clone(),
                            amount: amount.0,
                            expires_at: Instant::now() + self.inner.config.hold_ttl,
                        },
                    );
                    return Ok(Hold {
                        id,
                        account: account.clone(),
                        amount,
                        balance_at_hold,
                        owner: Some(Owner::Local(self.inner.clone())),
                    });
                }
            }
            self.ensure_loaded(&[account]).await?;
        }
        Err(LedgerError::Stopped)
    }

    async fn commit(&self, hold: Option<HoldRef>, settlement: Settlement) -> Result<Committed, LedgerError> {
        let (reply, rx) = oneshot::channel();
        let id = hold.as_ref().map(|h| h.id);
        if let Err(e) = self.send(Job::Commit { hold, settlement, reply }).await {
            if let Some(id) = id {
                self.inner.state.lock().release(id);
            }
            return Err(e);
        }
        rx.await.map_err(|_| LedgerError::Stopped)?
    }

    async fn flush(&self) -> Result<(), LedgerError> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Flush { reply }).await?;
        rx.await.map_err(|_| LedgerError::Stopped)
    }
}

/// The hold rule (SPEC §4.3.2, §4.5), the one the PostgreSQL engine's `quota_hold` applies
/// too: a hold is refused only when the available balance is below its amount, or the balance
/// is below zero (a refund debt). Nothing else: a free request on an empty wallet may run.
fn refuses_hold(balance: i64, available: i64, amount: i64) -> bool {
    balance < 0 || available < amount
}

/// How often committed WAL frames are copied into the database, off the commit path.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Copy committed WAL frames into the database without blocking anyone (PASSIVE). Under
/// continuous writes no moment is ever fully checkpointed, so SQLite never starts the WAL over
/// and the file would grow without bound: past `restart_frames`, a RESTART checkpoint
/// follows, which holds the writer back only while it copies the frames written since the
/// PASSIVE pass and waits for readers to move to the newest snapshot.
/// Returns whether the WAL was made to start over.
async fn checkpoint(pool: &sqlx::SqlitePool, restart_frames: i64) -> Result<bool, sqlx::Error> {
    // (busy, frames in the WAL, frames checkpointed)
    let r = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(pool).await?;
    let frames: i64 = r.try_get(1)?;
    if frames >= restart_frames {
        let r = sqlx::query("PRAGMA wal_checkpoint(RESTART)").fetch_one(pool).await?;
        let busy: i64 = r.try_get(0)?;
        tracing::debug!(frames, restarted = busy == 0, "WAL restart checkpoint");
        return Ok(busy == 0);
    }
    Ok(false)
}

struct Writer {
    conn: SqliteConnection,
    last_used: LastUsed,
    inner: std::sync::Weak<Inner>,
    last_seq: i64,
    origin: String,
}

/// Accumulated effects of one batch, applied to memory after the commit.
struct BatchEffects {
    foreign: Vec<(AccountId, i64)>,
    loaded: Vec<(AccountId, i64)>,
    /// The stored balance after the batch of every account it moved.
    after: HashMap<AccountId, i64>,
    /// Per job: its accounts' balances right after it, and how many of its transfers were
    /// duplicates.
    per_job: Vec<(Vec<(AccountId, Credits)>, usize)>,
    max_seq: i64,
}

impl Writer {
    async fn run(mut self, mut jobs: Jobs<Job>) {
        loop {
            match jobs.next().await {
                Next::Batch(batch) => self.process(batch).await,
                Next::Tick => self.on_tick().await,
                Next::Stop => break,
            }
        }
        tracing::debug!("ledger writer stopped");
    }

    async fn on_tick(&mut self) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        {
            let now = Instant::now();
            let mut st = inner.state.lock();
            let expired: Vec<u64> = st.holds.iter().filter(|(_, h)| h.expires_at <= now).map(|(id, _)| *id).collect();
            for id in expired {
                tracing::warn!(hold = id, "hold expired without settlement; credits released");
                st.release(id);
            }
        }
        drop(inner);
        let max: Result<i64, _> = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS s FROM transfers")
            .fetch_one(&mut self.conn)
            .await
            .map(|r| r.get("s"));
        match max {
            Ok(m) if m > self.last_seq => self.process(Vec::new()).await,
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "ledger writer could not read the transfer sequence")
            }
        }
    }

    async fn process(&mut self, batch: Vec<Job>) {
        match timed(batch.len(), self.commit_batch(&batch)).await {
            Ok(effects) => self.apply(batch, effects),
            Err(e) if batch.len() > 1 => {
                // Isolate the job that fails; the others commit on their own.
                tracing::warn!(error = %e, size = batch.len(), "ledger batch failed; retrying one by one");
                for job in batch {
                    let jobs = vec![job];
                    match self.commit_batch(&jobs).await {
                        Ok(effects) => self.apply(jobs, effects),
                        Err(e) => self.fail(jobs, e),
                    }
                }
            }
            Err(e) => self.fail(batch, e),
        }
    }

    async fn commit_batch(&mut self, batch: &[Job]) -> Result<BatchEffects, StoreError> {
        sqlx::query("BEGIN IMMEDIATE").execute(&mut self.conn).await?;
        match self.commit_batch_in_tx(batch).await {
            Ok(effects) => match sqlx::query("COMMIT").execute(&mut self.conn).await {
                Ok(_) => Ok(effects),
                Err(e) => {
                    let _ = sqlx::query("ROLLBACK").execute(&mut self.conn).await;
                    Err(e.into())
                }
            },
            Err(e) => {
                let _ = sqlx::query("ROLLBACK").execute(&mut self.conn).await;
                Err(e)
            }
        }
    }

    async fn commit_batch_in_tx(&mut self, batch: &[Job]) -> Result<BatchEffects, StoreError> {
        let Some(inner) = self.inner.upgrade() else {
            return Err(StoreError::Corrupt("ledger dropped".into()));
        };
        let conn = &mut self.conn;
        // 1. Other processes' transfers since we last looked.
        let mut foreign = Vec::new();
        let mut max_seq = self.last_seq;
        let rows = sqlx::query(
            "SELECT seq, from_account, to_account, amount, origin FROM transfers WHERE seq > $1 ORDER BY seq",
        )
        .bind(self.last_seq)
        .fetch_all(&mut *conn)
        .await?;
        for r in rows {
            max_seq = max_seq.max(r.get::<i64, _>("seq"));
            if r.get::<String, _>("origin") == self.origin {
                continue;
            }
            let amount: i64 = r.get("amount");
            let from: AccountId = r.get::<String, _>("from_account").parse().map_err(StoreError::Corrupt)?;
            let to: AccountId = r.get::<String, _>("to_account").parse().map_err(StoreError::Corrupt)?;
            foreign.push((from, -amount));
            foreign.push((to, amount));
        }
        // 2. Accounts to load into the cache, read in the same snapshot.
        let mut loaded = Vec::new();
        let mut seen = HashSet::new();
        for job in batch {
            if let Job::Load { accounts, .. } = job {
                for a in accounts {
                    let cached = inner.state.lock().accounts.contains_key(a);
                    if cached || !seen.insert(a.clone()) {
                        continue;
                    }
                    let b: i64 = sqlx::query("SELECT balance FROM accounts WHERE id = $1")
                        .bind(a.to_string())
                        .fetch_optional(&mut *conn)
                        .await?
                        .map(|r| r.get("balance"))
                        .unwrap_or(0);
                    loaded.push((a.clone(), b));
                }
            }
        }
        // 3. The batch's transfers, in one statement; RETURNING names those that were new.
        let now = now_ms();
        let all: Vec<&Transfer> = batch
            .iter()
            .filter_map(
                |j| if let Job::Commit { settlement, .. } = j { Some(settlement.transfers.iter()) } else { None },
            )
            .flatten()
            .collect();
        let mut inserted: HashSet<String> = HashSet::new();
        // SQLite allows 32,766 bound values per statement; 8 per row.
        for chunk in all.chunks(4000) {
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO transfers (id, from_account, to_account, amount, kind, cause, created_at, origin) ",
            );
            qb.push_values(chunk, |mut b, t| {
                b.push_bind(&t.id)
                    .push_bind(t.from.to_string())
                    .push_bind(t.to.to_string())
                    .push_bind(t.amount.0)
                    .push_bind(t.kind.as_str())
                    .push_bind(&t.cause)
                    .push_bind(t.created_at_ms)
                    .push_bind(&self.origin);
            });
            qb.push(" ON CONFLICT (id) DO NOTHING RETURNING id, seq");
            for r in qb.build().fetch_all(&mut *conn).await? {
                max_seq = max_seq.max(r.get::<i64, _>("seq"));
                inserted.insert(r.get("id"));
            }
        }
        // 4. The plan; the holds it ends are those still open in memory.
        let freed: Vec<(AccountId, i64)> = {
            let st = inner.state.lock();
            batch
                .iter()
                .filter_map(|j| match j {
                    Job::Commit { hold: Some(h), .. } if st.holds.contains_key(&h.id) => {
                        Some((h.account.clone(), h.amount))
                    }
                    _ => None,
                })
                .collect()
        };
        let plan = plan::plan(entries(batch), &inserted, &freed).map_err(refused)?;
        // 5. One statement for every balance the batch moved; `held` lives in memory.
        let stored = upsert_balances(conn, &plan, now).await?;
        let after = {
            let st = inner.state.lock();
            plan.accounts
                .iter()
                .map(|(a, moved)| {
                    let cached = st.accounts.get(a);
                    let balance = stored.get(a).copied().unwrap_or_else(|| {
                        // Moved only by a freed hold: the balance it will have in memory.
                        cached.map(|c| c.balance).unwrap_or(0) + foreign_delta(&foreign, a)
                    });
                    let held = cached.map(|c| c.held).unwrap_or(0) + moved.held;
                    (a.clone(), plan::Movement { balance, held })
                })
                .collect()
        };
        let outcome = plan.outcome(&after).map_err(refused)?;
        // 6. What the applied settlements write with their transfers.
        for c in &plan.idempotency {
            complete_idempotency(c).execute(&mut *conn).await?;
        }
        insert_events_sqlite(conn, plan.events.iter().copied().chain(&outcome.crossings)).await?;
        // SQLite allows 32,766 bound values per statement; 20 per row.
        for chunk in plan.usage.chunks(1500) {
            insert_usage(conn, chunk).await?;
        }
        for key in self.last_used.due(plan.keys_used.iter().copied(), now) {
            sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2")
                .bind(now)
                .bind(key)
                .execute(&mut *conn)
                .await?;
        }
        let per_job = outcome.balances_after.into_iter().zip(plan.jobs.iter().map(|j| j.duplicates)).collect();
        let after = after.into_iter().map(|(a, m)| (a, m.balance)).collect();
        Ok(BatchEffects { foreign, loaded, after, per_job, max_seq })
    }

    fn apply(&mut self, batch: Vec<Job>, effects: BatchEffects) {
        self.last_seq = effects.max_seq;
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let mut replies = Vec::new();
        {
            let mut st = inner.state.lock();
            for (account, delta) in effects.foreign {
                if let Some(a) = st.accounts.get_mut(&account) {
                    a.balance += delta;
                }
            }
            for (account, balance) in effects.loaded {
                st.accounts.entry(account).or_insert(AccountState { balance, held: 0 });
            }
            // The database's balances after the batch include the foreign transfers above.
            for (account, balance) in effects.after {
                if let Some(a) = st.accounts.get_mut(&account) {
                    a.balance = balance;
                }
            }
            let mut per_job = effects.per_job.into_iter();
            for job in batch {
                let (balances_after, duplicates) = per_job.next().unwrap_or_default();
                match job {
                    Job::Load { reply, .. } => replies.push(Reply::Load(reply)),
                    Job::Flush { reply } => replies.push(Reply::Flush(reply)),
                    Job::Commit { hold, reply, .. } => {
                        if let Some(h) = hold {
                            st.release(h.id);
                        }
                        replies.push(Reply::Commit(reply, Committed { balances_after, duplicates }));
                    }
                }
            }
        }
        for r in replies {
            match r {
                Reply::Load(tx) => {
                    let _ = tx.send(Ok(()));
                }
                Reply::Flush(tx) => {
                    let _ = tx.send(());
                }
                Reply::Commit(tx, c) => {
                    let _ = tx.send(Ok(c));
                }
            }
        }
    }

    fn fail(&mut self, batch: Vec<Job>, error: StoreError) {
        tracing::error!(error = %error, "ledger commit failed");
        let inner = self.inner.upgrade();
        for job in batch {
            match job {
                Job::Load { reply, .. } => {
                    let _ = reply.send(Err(StoreError::Corrupt(format!("load failed: {error}")).into()));
                }
                Job::Flush { reply } => {
                    let _ = reply.send(());
                }
                Job::Commit { hold, reply, .. } => {
                    if let (Some(h), Some(inner)) = (hold, inner.as_ref()) {
                        inner.state.lock().release(h.id);
                    }
                    let _ = reply.send(Err(StoreError::Corrupt(format!("commit failed: {error}")).into()));
                }
            }
        }
    }
}

/// The planner's view of a batch: one entry per job, `None` for jobs that are not commits.
fn entries(batch: &[Job]) -> Vec<Option<plan::Entry<'_>>> {
    batch
        .iter()
        .map(|j| match j {
            Job::Commit { hold, settlement, .. } => Some(plan::Entry { hold: hold.as_ref(), settlement }),
            _ => None,
        })
        .collect()
}

/// A batch the planner refused fails like a statement: rolled back, then retried job by job.
pub(crate) fn refused(e: plan::PlanError) -> StoreError {
    tracing::error!(error = %e, "ledger invariant violated; batch refused");
    metrics::counter!("quota_ledger_refused_total").increment(1);
    StoreError::Corrupt(format!("ledger batch refused: {e}"))
}

/// What other processes' transfers moved `account` by.
fn foreign_delta(foreign: &[(AccountId, i64)], account: &AccountId) -> i64 {
    foreign.iter().filter(|(a, _)| a == account).map(|(_, d)| d).sum()
}

/// Add each account's balance movement (creating new accounts), returning the balances after.
async fn upsert_balances(
    conn: &mut SqliteConnection,
    plan: &plan::Plan<'_>,
    now: i64,
) -> Result<HashMap<AccountId, i64>, StoreError> {
    let moved: Vec<(&AccountId, i64)> = plan.transferred().collect();
    let mut out = HashMap::with_capacity(moved.len());
    // SQLite allows 32,766 bound values per statement; 3 per row.
    for chunk in moved.chunks(10_000) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("INSERT INTO accounts (id, balance, updated_at) ");
        qb.push_values(chunk, |mut b, (account, delta)| {
            b.push_bind(account.to_string()).push_bind(*delta).push_bind(now);
        });
        qb.push(
            " ON CONFLICT (id) DO UPDATE SET balance = accounts.balance + excluded.balance, \
             updated_at = excluded.updated_at RETURNING id, balance",
        );
        for r in qb.build().fetch_all(&mut *conn).await? {
            let id: AccountId = r.get::<String, _>("id").parse().map_err(StoreError::Corrupt)?;
            out.insert(id, r.get("balance"));
        }
    }
    Ok(out)
}

/// Run one batch's commit, recording its latency and size (the same metrics on both engines).
pub(crate) async fn timed<T>(size: usize, commit: impl std::future::Future<Output = T>) -> T {
    let started = Instant::now();
    let result = commit.await;
    metrics::histogram!("quota_ledger_commit_seconds").record(started.elapsed().as_secs_f64());
    metrics::histogram!("quota_ledger_batch_size").record(size as f64);
    result
}

/// What a writer does next.
pub(crate) enum Next<J> {
    /// Commit these: the first job to arrive and whatever else was already queued.
    Batch(Vec<J>),
    /// Its periodic work (expiry, catching up).
    Tick,
    /// Every sender is gone.
    Stop,
}

/// A writer's queue and tick.
pub(crate) struct Jobs<J> {
    rx: mpsc::Receiver<J>,
    ticker: tokio::time::Interval,
    batch_max: usize,
}

impl<J> Jobs<J> {
    pub(crate) fn new(rx: mpsc::Receiver<J>, tick: Duration, batch_max: usize) -> Jobs<J> {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Jobs { rx, ticker, batch_max }
    }

    /// Wait for the next job or tick; a job comes with the rest of the queue, up to
    /// `batch_max` (group commit: a batch is whatever accumulated while the last committed).
    pub(crate) async fn next(&mut self) -> Next<J> {
        let first = tokio::select! {
            job = self.rx.recv() => match job { Some(j) => j, None => return Next::Stop },
            _ = self.ticker.tick() => return Next::Tick,
        };
        Next::Batch(drain(first, &mut self.rx, self.batch_max))
    }
}

/// `first` and whatever else is queued, up to `max` jobs.
pub(crate) fn drain<J>(first: J, rx: &mut mpsc::Receiver<J>, max: usize) -> Vec<J> {
    let mut batch = vec![first];
    while batch.len() < max {
        match rx.try_recv() {
            Ok(j) => batch.push(j),
            Err(_) => break,
        }
    }
    batch
}

enum Reply {
    Load(oneshot::Sender<Result<(), LedgerError>>),
    Flush(oneshot::Sender<()>),
    Commit(oneshot::Sender<Result<Committed, LedgerError>>, Committed),
}

async fn insert_usage(conn: &mut SqliteConnection, records: &[&UsageRecord]) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
        "INSERT INTO usage_records (id, created_at, developer_id, key_id, app_id, payer_account, billing_mode, model, provider, \
         input_tokens, cached_tokens, cache_write_tokens, output_tokens, base_cost, markup, total, status, latency_ms, sandbox, \
         pending_event) ",
    );
    qb.push_values(records, |mut b, u| {
        b.push_bind(&u.id)
            .push_bind(u.created_at)
            .push_bind(&u.developer_id)
            .push_bind(&u.key_id)
            .push_bind(&u.app_id)
            .push_bind(&u.payer_account)
            .push_bind(&u.billing_mode)
            .push_bind(&u.model)
            .push_bind(&u.provider)
            .push_bind(u.input_tokens)
            .push_bind(u.cached_tokens)
            .push_bind(u.cache_write_tokens)
            .push_bind(u.output_tokens)
            .push_bind(u.base_cost)
            .push_bind(u.markup)
            .push_bind(u.total)
            .push_bind(&u.status)
            .push_bind(u.latency_ms)
            .push_bind(u.sandbox)
            .push_bind(&u.pending_event);
    });
    qb.push(" ON CONFLICT (id) DO NOTHING");
    qb.build().execute(&mut *conn).await?;
    Ok(())
}

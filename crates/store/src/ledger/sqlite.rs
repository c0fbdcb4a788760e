//! The SQLite engine (the embedded deployment, one process): balances and holds in memory in
//! front of an append-only, group-committed transfer table, and the writer on a thread of its
//! own.
//!
//! * **hold** — checked and recorded in memory under one lock: no database read or write on the
//!   request path once the account is cached.
//! * **the writer** — [`writer::Writer`] over [`SqliteEngine`], on a dedicated thread (with a
//!   one-thread runtime for its queue and tick) that owns a `rusqlite` connection and its
//!   prepared statements: a batch is one wake of that thread and runs every statement
//!   synchronously, with no async driver hop per statement.
//! * **checkpoints** — every connection runs with `wal_autocheckpoint = 0`, so no commit ever
//!   copies WAL frames inline; a pool connection checkpoints PASSIVE once a second (never
//!   blocking the writer), with a RESTART only past `wal_restart_frames`.
//!
//! The writer is the only code that mutates cached balances from the database, so loads, its
//! own commits and other processes' transfers (the admin CLI) are applied in one order and never
//! twice: each batch runs under `BEGIN IMMEDIATE`, first catching up on foreign transfers (rows
//! with `seq` beyond what this process has seen), then loading accounts, then committing; the
//! balances the database returns after the batch are what the cache holds.
//!
//! This engine assumes it is the only process that *debits* wallets in its database (true for
//! the embedded SQLite deployment); several instances need PostgreSQL (`postgres.rs`).

use super::plan::{Movement, Plan};
use super::writer::{Effects, Engine, Job, Jobs, Writer, Written};
use super::{Committed, Hold, HoldRef, LedgerConfig, LedgerError, Owner, Settlement};
use crate::db::Pool;
use crate::events::OutboxEvent;
use crate::store::{Store, StoreError, Synchronous};
use parking_lot::Mutex;
use quota_core::{AccountId, Credits};
use rusqlite::{params, OptionalExtension};
use sqlx::Row;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

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

pub(crate) struct Inner {
    state: Mutex<State>,
    jobs: mpsc::Sender<Job>,
    next_hold: AtomicU64,
    config: LedgerConfig,
    /// How many times the checkpointer made the WAL start over.
    wal_restarts: AtomicU64,
}

impl Inner {
    /// Free a hold now (a dropped [`Hold`]).
    pub(super) fn release(&self, hold_id: u64) {
        self.state.lock().release(hold_id);
    }
}

/// The SQLite engine's handle: what [`Ledger`](super::Ledger) calls.
#[derive(Clone)]
pub(super) struct Local {
    inner: Arc<Inner>,
}

/// Where the writer's connection opens, and how it syncs.
pub(crate) struct SqliteFile {
    pub path: PathBuf,
    pub synchronous: Synchronous,
    /// `sqlite::memory:`: the pool's shared-cache in-memory database, opened by its name.
    pub in_memory: bool,
}

impl Local {
    pub(super) async fn start(store: Store, config: LedgerConfig) -> Result<Local, LedgerError> {
        let file = store.sqlite_file().ok_or_else(|| StoreError::UnsupportedUrl("not sqlite".into()))?;
        let (tx, rx) = mpsc::channel(config.queue_max.max(1));
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            jobs: tx,
            next_hold: AtomicU64::new(1),
            config,
            wal_restarts: AtomicU64::new(0),
        });
        spawn_checkpointer(store, Arc::downgrade(&inner));
        let (opened, opened_rx) = oneshot::channel();
        let (alive, origin) = (Arc::downgrade(&inner), inner.config.origin.clone());
        let (tick, batch_max) = (inner.config.tick, inner.config.batch_max.max(1));
        std::thread::Builder::new()
            .name("quota-ledger".into())
            .spawn(move || {
                let engine = match SqliteEngine::open(&file, alive, origin) {
                    Ok(engine) => engine,
                    Err(e) => {
                        let _ = opened.send(Err(e));
                        return;
                    }
                };
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = opened.send(Err(StoreError::Corrupt(format!("ledger runtime: {e}"))));
                        return;
                    }
                };
                let _ = opened.send(Ok(()));
                // The queue's ticker needs the runtime's timer: made inside it.
                runtime.block_on(async move { Writer::new(engine).run(Jobs::new(rx, tick, batch_max)).await });
            })
            .map_err(|e| StoreError::Corrupt(format!("cannot start the ledger thread: {e}")))?;
        opened_rx.await.map_err(|_| LedgerError::Stopped)??;
        Ok(Local { inner })
    }

    pub(super) fn origin(&self) -> &str {
        &self.inner.config.origin
    }

    pub(super) fn wal_restarts(&self) -> u64 {
        self.inner.wal_restarts.load(Ordering::Relaxed)
    }

    pub(super) fn open_holds(&self) -> usize {
        self.inner.state.lock().holds.len()
    }

    pub(super) fn held(&self, account: &AccountId) -> Credits {
        Credits::new(self.inner.state.lock().accounts.get(account).map(|a| a.held).unwrap_or(0))
    }

    async fn send(&self, job: Job) -> Result<(), LedgerError> {
        self.inner.jobs.send(job).await.map_err(|_| LedgerError::Stopped)
    }

    pub(super) async fn ensure_loaded(&self, accounts: &[&AccountId]) -> Result<(), LedgerError> {
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

    pub(super) async fn balance(&self, account: &AccountId) -> Result<Credits, LedgerError> {
        self.ensure_loaded(&[account]).await?;
        let st = self.inner.state.lock();
        Ok(Credits::new(st.accounts.get(account).map(|a| a.balance).unwrap_or(0)))
    }

    pub(super) async fn available(&self, account: &AccountId) -> Result<Credits, LedgerError> {
        self.ensure_loaded(&[account]).await?;
        let st = self.inner.state.lock();
        Ok(Credits::new(st.accounts.get(account).map(|a| a.balance - a.held).unwrap_or(0)))
    }

    pub(super) async fn hold(&self, account: &AccountId, amount: Credits) -> Result<Hold, LedgerError> {
        for _ in 0..2 {
            {
                let mut st = self.inner.state.lock();
                if let Some(acct) = st.accounts.get_mut(account) {
                    let available = acct.balance - acct.held;
                    if !quota_core::hold::can_hold(Credits::new(acct.balance), Credits::new(acct.held), amount) {
                        return Err(LedgerError::Insufficient {
                            available: Credits::new(available.max(0)),
                            needed: amount,
                        });
                    }
                    acct.held += amount.get();
                    let balance_at_hold = Credits::new(acct.balance);
                    let id = self.inner.next_hold.fetch_add(1, Ordering::Relaxed);
                    st.holds.insert(
                        id,
                        HoldState {
                            account: account.clone(),
                            amount: amount.get(),
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

    pub(super) async fn commit(&self, hold: Option<HoldRef>, settlement: Settlement) -> Result<Committed, LedgerError> {
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

    pub(super) async fn flush(&self) -> Result<(), LedgerError> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Flush { reply }).await?;
        rx.await.map_err(|_| LedgerError::Stopped)
    }
}

/// Checkpoints run from a pool connection every second (PASSIVE: they never block the writer)
/// instead of inline in the commit that crosses SQLite's threshold.
fn spawn_checkpointer(store: Store, alive: Weak<Inner>) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(CHECKPOINT_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let Some(inner) = alive.upgrade() else {
                break;
            };
            let Pool::Sqlite(pool) = store.pool() else { break };
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

/// The writer's side of the engine: its own connection, and what the batch in progress read
/// before it commits.
struct SqliteEngine {
    conn: rusqlite::Connection,
    inner: Weak<Inner>,
    /// The highest transfer `seq` this process has applied to its cache.
    last_seq: i64,
    origin: String,
    pending: Pending,
}

/// What the open batch read or wrote that memory takes once it commits.
#[derive(Default)]
struct Pending {
    /// Other processes' transfers since `last_seq`, as balance deltas.
    foreign: Vec<(AccountId, i64)>,
    /// Accounts read for `Load` jobs, with their balances.
    loaded: Vec<(AccountId, i64)>,
    max_seq: i64,
}

/// Statements run often enough to keep prepared (`prepare_cached`).
const STATEMENTS_CACHED: usize = 32;

const INSERT_TRANSFER: &str = "INSERT INTO transfers (id, from_account, to_account, amount, kind, cause, created_at, \
     origin) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (id) DO NOTHING RETURNING seq";
const MOVE_ACCOUNT: &str = "INSERT INTO accounts (id, balance, updated_at) VALUES (?1, ?2, ?3) ON CONFLICT (id) DO \
     UPDATE SET balance = accounts.balance + excluded.balance, updated_at = excluded.updated_at RETURNING balance";
const INSERT_USAGE: &str = "INSERT INTO usage_records (id, created_at, developer_id, key_id, app_id, payer_account, \
     billing_mode, model, provider, input_tokens, cached_tokens, cache_write_tokens, output_tokens, base_cost, markup, \
     total, status, latency_ms, sandbox, pending_event, client_request_id) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21) \
     ON CONFLICT (id) DO NOTHING";
const INSERT_EVENT: &str = "INSERT INTO events (id, type, developer_id, data, sandbox, created_at, endpoint_id) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (id) DO NOTHING";
const COMPLETE_IDEMPOTENCY: &str =
    "UPDATE idempotency_keys SET status = ?1, content_type = ?2, response_body = ?3 WHERE scope = ?4 AND key = ?5";

impl SqliteEngine {
    /// Open the writer's connection: the same file and sync setting as the store's pool, no
    /// checkpoint as a side effect of a commit, and the store's busy handler.
    fn open(file: &SqliteFile, inner: Weak<Inner>, origin: String) -> Result<SqliteEngine, StoreError> {
        use rusqlite::OpenFlags;
        let mut flags =
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
        if file.in_memory {
            flags |= OpenFlags::SQLITE_OPEN_MEMORY | OpenFlags::SQLITE_OPEN_SHARED_CACHE;
        }
        let conn = rusqlite::Connection::open_with_flags(&file.path, flags)?;
        let synchronous = match file.synchronous {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        };
        conn.execute_batch(&format!(
            "PRAGMA synchronous = {synchronous}; PRAGMA foreign_keys = ON; PRAGMA wal_autocheckpoint = 0;"
        ))?;
        conn.busy_handler(Some(crate::sqlite_busy::wait_or_give_up))?;
        conn.set_prepared_statement_cache_capacity(STATEMENTS_CACHED);
        let last_seq = conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM transfers", [], |r| r.get(0))?;
        Ok(SqliteEngine { conn, inner, last_seq, origin, pending: Pending::default() })
    }

    fn inner(&self) -> Result<Arc<Inner>, StoreError> {
        self.inner.upgrade().ok_or_else(|| StoreError::Corrupt("ledger dropped".into()))
    }

    /// Other processes' transfers since `last_seq`.
    fn read_foreign(&mut self) -> Result<(), StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, from_account, to_account, amount, origin FROM transfers WHERE seq > ?1 ORDER BY seq",
        )?;
        let mut rows = stmt.query([self.last_seq])?;
        while let Some(r) = rows.next()? {
            self.pending.max_seq = self.pending.max_seq.max(r.get(0)?);
            if r.get_ref(4)?.as_str().map_err(rusqlite::Error::from)? == self.origin {
                continue;
            }
            let amount: i64 = r.get(3)?;
            let from: AccountId = r.get::<_, String>(1)?.parse().map_err(StoreError::Corrupt)?;
            let to: AccountId = r.get::<_, String>(2)?.parse().map_err(StoreError::Corrupt)?;
            self.pending.foreign.push((from, -amount));
            self.pending.foreign.push((to, amount));
        }
        Ok(())
    }

    /// Accounts `Load` jobs ask for that are not cached yet, read in the batch's snapshot.
    fn read_accounts(&mut self, batch: &[Job]) -> Result<(), StoreError> {
        let inner = self.inner()?;
        let mut seen = HashSet::new();
        let mut stmt = self.conn.prepare_cached("SELECT balance FROM accounts WHERE id = ?1")?;
        for job in batch {
            let Job::Load { accounts, .. } = job else { continue };
            for a in accounts {
                if inner.state.lock().accounts.contains_key(a) || !seen.insert(a) {
                    continue;
                }
                let balance: Option<i64> = stmt.query_row([a.to_string()], |r| r.get(0)).optional()?;
                self.pending.loaded.push((a.clone(), balance.unwrap_or(0)));
            }
        }
        Ok(())
    }

    fn run(&self, sql: &str) -> Result<(), StoreError> {
        self.conn.prepare_cached(sql)?.execute([])?;
        Ok(())
    }
}

/// Every method runs synchronously on the writer's thread: nothing here awaits.
impl Engine for SqliteEngine {
    async fn begin(&mut self, batch: &[Job]) -> Result<(), StoreError> {
        self.pending = Pending { max_seq: self.last_seq, ..Pending::default() };
        self.run("BEGIN IMMEDIATE")?;
        self.read_foreign()?;
        self.read_accounts(batch)
    }

    async fn insert_transfers(&mut self, batch: &[Job]) -> Result<Written, StoreError> {
        let inner = self.inner()?;
        // The holds it ends are those still open in memory (one freed by expiry is not).
        let freed = {
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
        let mut inserted = HashSet::new();
        let mut stmt = self.conn.prepare_cached(INSERT_TRANSFER)?;
        for job in batch {
            let Job::Commit { settlement, .. } = job else { continue };
            for t in &settlement.transfers {
                let p = params![
                    t.id,
                    t.from.to_string(),
                    t.to.to_string(),
                    t.amount.get(),
                    t.kind.as_str(),
                    t.cause,
                    t.created_at_ms,
                    self.origin
                ];
                if let Some(seq) = stmt.query_row(p, |r| r.get::<_, i64>(0)).optional()? {
                    self.pending.max_seq = self.pending.max_seq.max(seq);
                    inserted.insert(t.id.clone());
                }
            }
        }
        Ok(Written { inserted, freed })
    }

    async fn write_records(&mut self, plan: &Plan<'_>, keys_used: &[&str], now_ms: i64) -> Result<(), StoreError> {
        let mut usage = self.conn.prepare_cached(INSERT_USAGE)?;
        for u in &plan.usage {
            usage.execute(params![
                u.id,
                u.created_at,
                u.developer_id,
                u.key_id,
                u.app_id,
                u.payer_account,
                u.billing_mode,
                u.model,
                u.provider,
                u.input_tokens,
                u.cached_tokens,
                u.cache_write_tokens,
                u.output_tokens,
                u.base_cost,
                u.markup,
                u.total,
                u.status,
                u.latency_ms,
                u.sandbox,
                u.pending_event,
                u.client_request_id
            ])?;
        }
        let mut key = self.conn.prepare_cached("UPDATE api_keys SET last_used_at = ?1 WHERE id = ?2")?;
        for k in keys_used {
            key.execute(params![now_ms, k])?;
        }
        let mut complete = self.conn.prepare_cached(COMPLETE_IDEMPOTENCY)?;
        for c in &plan.idempotency {
            complete.execute(params![i64::from(c.status), c.content_type, c.body, c.scope, c.key])?;
        }
        Ok(())
    }

    async fn move_accounts(
        &mut self,
        plan: &Plan<'_>,
        now_ms: i64,
    ) -> Result<HashMap<AccountId, Movement>, StoreError> {
        let mut stored = HashMap::new();
        let mut stmt = self.conn.prepare_cached(MOVE_ACCOUNT)?;
        for (account, delta) in plan.transferred() {
            let balance: i64 = stmt.query_row(params![account.to_string(), delta, now_ms], |r| r.get(0))?;
            stored.insert(account, balance);
        }
        // `held` lives in memory; an account moved only by a freed hold keeps its balance.
        let inner = self.inner()?;
        let st = inner.state.lock();
        let after = plan
            .accounts
            .iter()
            .map(|(a, moved)| {
                let cached = st.accounts.get(a);
                let balance = stored.get(a).copied().unwrap_or_else(|| {
                    let foreign: i64 = self.pending.foreign.iter().filter(|(f, _)| f == a).map(|(_, d)| d).sum();
                    cached.map(|c| c.balance).unwrap_or(0) + foreign
                });
                let held = cached.map(|c| c.held).unwrap_or(0) + moved.held;
                (a.clone(), Movement { balance, held })
            })
            .collect();
        Ok(after)
    }

    async fn insert_events(&mut self, events: Vec<&OutboxEvent>) -> Result<(), StoreError> {
        let mut stmt = self.conn.prepare_cached(INSERT_EVENT)?;
        for e in events {
            stmt.execute(params![
                e.id,
                e.kind,
                e.developer_id,
                e.data.to_string(),
                e.sandbox,
                e.created_at_ms,
                e.endpoint_id
            ])?;
        }
        Ok(())
    }

    async fn commit(&mut self) -> Result<(), StoreError> {
        self.run("COMMIT")
    }

    async fn rollback(&mut self) {
        if !self.conn.is_autocommit() {
            if let Err(e) = self.run("ROLLBACK") {
                tracing::error!(error = %e, "ledger rollback failed");
            }
        }
    }

    fn committed(&mut self, batch: &[Job], effects: &Effects) {
        let pending = std::mem::take(&mut self.pending);
        self.last_seq = pending.max_seq;
        let Some(inner) = self.inner.upgrade() else { return };
        let mut st = inner.state.lock();
        for (account, delta) in pending.foreign {
            if let Some(a) = st.accounts.get_mut(&account) {
                a.balance += delta;
            }
        }
        for (account, balance) in pending.loaded {
            st.accounts.entry(account).or_insert(AccountState { balance, held: 0 });
        }
        // The database's balances after the batch include the foreign transfers above.
        for (account, after) in &effects.after {
            if let Some(a) = st.accounts.get_mut(account) {
                a.balance = after.balance;
            }
        }
        for job in batch {
            if let Job::Commit { hold: Some(h), .. } = job {
                st.release(h.id);
            }
        }
    }

    fn failed(&mut self, holds: Vec<u64>) -> Vec<Job> {
        self.pending = Pending::default();
        if let Some(inner) = self.inner.upgrade() {
            let mut st = inner.state.lock();
            for id in holds {
                st.release(id);
            }
        }
        Vec::new()
    }

    async fn tick(&mut self) -> bool {
        if let Some(inner) = self.inner.upgrade() {
            let now = Instant::now();
            let mut st = inner.state.lock();
            let expired: Vec<u64> = st.holds.iter().filter(|(_, h)| h.expires_at <= now).map(|(id, _)| *id).collect();
            for id in expired {
                tracing::warn!(hold = id, "hold expired without settlement; credits released");
                st.release(id);
            }
        }
        match self.conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM transfers", [], |r| r.get::<_, i64>(0)) {
            Ok(m) => m > self.last_seq,
            Err(e) => {
                tracing::error!(error = %e, "ledger writer could not read the transfer sequence");
                false
            }
        }
    }
}

//! The PostgreSQL ledger engine: the same operations as the SQLite engine, for several `quota
//! serve` instances sharing one database. Nothing about money is cached in memory; the
//! database is the only place instances agree.
//!
//! * **hold** — a conditional update in the database (`balance ≥ 0 AND balance − held ≥
//!   amount`: the hold rule, SPEC §4.3.2), committed before [`Ledger::hold`](crate::Ledger::hold) returns, so every
//!   instance sees it before the upstream is called. Requests queue to one task that grants
//!   everything waiting in one round trip (`quota_hold`, a PL/pgSQL loop over arrays): a hot
//!   wallet costs one row lock per batch, not per request.
//! * **settle** — one transaction per batch of settlements (group commit): the holds are
//!   deleted, the transfers inserted (`ON CONFLICT (id) DO NOTHING RETURNING`: a transfer id
//!   is written once, whatever the retries), balances and `held` updated, usage records,
//!   idempotent responses, key use and outbox events written, and `balance.low` crossings
//!   decided from the balances the batch leaves. The caller is answered after the commit.
//! * **release** — dropping a [`Hold`] queues its deletion to the same writer.
//! * **expiry** — a hold outlives `hold_ttl` only if its instance died; every instance's writer
//!   deletes expired holds on its tick with `FOR UPDATE SKIP LOCKED`, so all of them may run it
//!   at once, each taking different rows, and a hold being settled is never expired under it.
//!
//! Deadlocks are avoided by order: every transaction that changes accounts locks them sorted
//! by id (bytewise, `COLLATE "C"`), and deletes holds before touching accounts.

use super::plan::{Movement, Plan};
use super::writer::{drain, Effects, Engine, Job, Jobs, Writer, Written};
use super::{Committed, Hold, HoldRef, LedgerConfig, LedgerError, Owner, Settlement};
use crate::db::Pool;
use crate::events::{insert_events_pg, OutboxEvent};
use crate::store::{complete_idempotency, Store, StoreError};
use crate::usage::UsageRecord;
use quota_core::{AccountId, Credits, Transfer};
use sqlx::postgres::{PgConnection, PgPool};
use sqlx::Connection;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// The hold connection commits without waiting for its WAL flush. A hold is a reservation, not
/// money: it is visible to every instance the moment it commits (asynchronous commit delays only
/// durability, never visibility), so no two instances can reserve the same credits. What a
/// database crash could lose is the last few milliseconds of holds, with their `held`, together
/// (verify stays exact); the settlements that follow them are synchronous and charge in full.
/// The gain: no fsync per hold batch, and the wallet's row lock is held for microseconds
/// instead of a disk flush, which is what bounds a hot wallet.
const HOLD_SESSION: &str = "SET synchronous_commit = off";

/// Most expired holds one tick frees (the rest wait for the next tick).
const EXPIRE_BATCH_MAX: i64 = 1000;

pub(crate) struct Shared {
    pool: PgPool,
    jobs: mpsc::Sender<Job>,
    holds: mpsc::Sender<HoldRequest>,
    next_hold: AtomicU64,
    /// Holds granted to this process and not yet settled or released in the database.
    open: Arc<AtomicUsize>,
    origin: String,
}

struct HoldRequest {
    id: u64,
    /// The account's text form: what the database stores, and the lock order.
    account: String,
    amount: i64,
    reply: oneshot::Sender<Result<Grant, LedgerError>>,
}

enum Grant {
    Granted { balance: i64 },
    Refused { available: i64 },
}

/// A hold's id in the database: unique across instances and restarts.
fn hold_key(origin: &str, id: u64) -> String {
    format!("{origin}.{id}")
}

impl Shared {
    pub(crate) async fn start(store: Store, config: LedgerConfig) -> Result<Arc<Shared>, LedgerError> {
        let Pool::Postgres(pool) = store.pool() else {
            return Err(StoreError::UnsupportedUrl("the shared ledger needs PostgreSQL".into()).into());
        };
        let pool = pool.clone();
        let (jobs, jobs_rx) = mpsc::channel(config.queue_max.max(1));
        let (holds, holds_rx) = mpsc::channel(config.queue_max.max(1));
        let open = Arc::new(AtomicUsize::new(0));
        let batch_max = config.batch_max.max(1);
        let holder = Holder {
            conn: Conn::new(pool.clone(), Some(HOLD_SESSION)),
            jobs: jobs.clone(),
            open: open.clone(),
            origin: config.origin.clone(),
            ttl_ms: i64::try_from(config.hold_ttl.as_millis()).unwrap_or(i64::MAX),
            batch_max,
        };
        let writer = Writer::new(PgEngine {
            conn: Conn::new(pool.clone(), None),
            open: open.clone(),
            origin: config.origin.clone(),
        });
        // Connect both now, so a bad database fails `start`, not the first request.
        holder.conn.check().await?;
        writer.engine.conn.check().await?;
        tokio::spawn(holder.run(holds_rx));
        tokio::spawn(writer.run(Jobs::new(jobs_rx, config.tick, batch_max)));
        Ok(Arc::new(Shared { pool, jobs, holds, next_hold: AtomicU64::new(1), open, origin: config.origin }))
    }

    pub(crate) fn origin(&self) -> &str {
        &self.origin
    }

    pub(crate) fn open_holds(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// The account's stored balance and what is held on it, by every instance.
    pub(crate) async fn balance_and_held(&self, account: &AccountId) -> Result<(Credits, Credits), LedgerError> {
        let row: Option<(i64, i64)> = sqlx::query_as("SELECT balance, held FROM accounts WHERE id = $1")
            .bind(account.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::from)?;
        let (balance, held) = row.unwrap_or((0, 0));
        Ok((Credits::new(balance), Credits::new(held)))
    }

    pub(crate) async fn hold(self: &Arc<Self>, account: &AccountId, amount: Credits) -> Result<Hold, LedgerError> {
        let id = self.next_hold.fetch_add(1, Ordering::Relaxed);
        let (reply, rx) = oneshot::channel();
        let request = HoldRequest { id, account: account.to_string(), amount: amount.get(), reply };
        self.holds.send(request).await.map_err(|_| LedgerError::Stopped)?;
        // If this future is dropped while waiting, the holder cannot answer and releases the
        // hold itself; once the answer is here, nothing awaits before the `Hold` owns it.
        match rx.await.map_err(|_| LedgerError::Stopped)?? {
            Grant::Granted { balance } => Ok(Hold {
                id,
                account: account.clone(),
                amount,
                balance_at_hold: Credits::new(balance),
                owner: Some(Owner::Shared(self.clone())),
            }),
            Grant::Refused { available } => {
                Err(LedgerError::Insufficient { available: Credits::new(available.max(0)), needed: amount })
            }
        }
    }

    /// Queue the deletion of a dropped hold. Called from `Drop`: never waits.
    pub(crate) fn release(&self, hold: u64) {
        match self.jobs.try_send(Job::Release { hold }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(job)) => {
                // Backpressure: wait for room on the runtime rather than here.
                let jobs = self.jobs.clone();
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        rt.spawn(async move {
                            let _ = jobs.send(job).await;
                        });
                    }
                    Err(_) => tracing::warn!(hold, "hold dropped outside the runtime; it will expire"),
                }
            }
            // The engine stopped: the hold expires like a crashed instance's.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    pub(crate) async fn commit(&self, hold: Option<HoldRef>, settlement: Settlement) -> Result<Committed, LedgerError> {
        let (reply, rx) = oneshot::channel();
        if self.jobs.send(Job::Commit { hold, settlement, reply }).await.is_err() {
            return Err(LedgerError::Stopped);
        }
        rx.await.map_err(|_| LedgerError::Stopped)?
    }

    pub(crate) async fn flush(&self) -> Result<(), LedgerError> {
        let (reply, rx) = oneshot::channel();
        self.jobs.send(Job::Flush { reply }).await.map_err(|_| LedgerError::Stopped)?;
        rx.await.map_err(|_| LedgerError::Stopped)
    }
}

/// A dedicated connection (outside the pool's budget for queries), replaced after any error so
/// that a restarted database or a broken socket costs one failed batch, not the engine.
struct Conn {
    pool: PgPool,
    conn: Option<PgConnection>,
    /// Session settings run on every new connection.
    setup: Option<&'static str>,
}

impl Conn {
    fn new(pool: PgPool, setup: Option<&'static str>) -> Conn {
        Conn { pool, conn: None, setup }
    }

    async fn get(&mut self) -> Result<&mut PgConnection, StoreError> {
        if self.conn.is_none() {
            let mut conn = self.pool.acquire().await?.detach();
            if let Some(setup) = self.setup {
                sqlx::query(setup).execute(&mut conn).await?;
            }
            self.conn = Some(conn);
        }
        self.conn.as_mut().ok_or_else(|| StoreError::Corrupt("no connection".into()))
    }

    async fn check(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        conn.ping().await?;
        Ok(())
    }

    /// Forget the connection after an error; the next batch opens a new one.
    fn reset(&mut self) {
        self.conn = None;
    }
}

/// Grants holds in batches.
struct Holder {
    conn: Conn,
    jobs: mpsc::Sender<Job>,
    open: Arc<AtomicUsize>,
    origin: String,
    ttl_ms: i64,
    batch_max: usize,
}

impl Holder {
    async fn run(mut self, mut rx: mpsc::Receiver<HoldRequest>) {
        while let Some(first) = rx.recv().await {
            let mut batch = drain(first, &mut rx, self.batch_max);
            // The lock order; a stable sort keeps each account's requests in arrival order.
            batch.sort_by(|a, b| a.account.cmp(&b.account));
            let started = Instant::now();
            let result = self.grant(&batch).await;
            metrics::histogram!("quota_ledger_hold_seconds").record(started.elapsed().as_secs_f64());
            match result {
                Ok(mut grants) => {
                    for request in batch {
                        let grant = grants.remove(&request.id).ok_or_else(|| {
                            LedgerError::from(StoreError::Corrupt(format!("hold {} not answered", request.id)))
                        });
                        let granted = matches!(grant, Ok(Grant::Granted { .. }));
                        if granted {
                            self.open.fetch_add(1, Ordering::Relaxed);
                        }
                        if request.reply.send(grant).is_err() && granted {
                            // The request went away while its hold was being granted.
                            let _ = self.jobs.send(Job::Release { hold: request.id }).await;
                        }
                    }
                }
                Err(e) => {
                    self.conn.reset();
                    tracing::error!(error = %e, size = batch.len(), "granting holds failed");
                    for request in batch {
                        let _ = request.reply.send(Err(StoreError::Corrupt(format!("hold failed: {e}")).into()));
                    }
                }
            }
        }
    }

    async fn grant(&mut self, batch: &[HoldRequest]) -> Result<HashMap<u64, Grant>, StoreError> {
        let ids: Vec<String> = batch.iter().map(|r| hold_key(&self.origin, r.id)).collect();
        let accounts: Vec<&str> = batch.iter().map(|r| r.account.as_str()).collect();
        let amounts: Vec<i64> = batch.iter().map(|r| r.amount).collect();
        let rows: Vec<(String, bool, i64, i64)> =
            sqlx::query_as("SELECT r_id, r_granted, r_balance, r_available FROM quota_hold($1, $2, $3, $4, $5)")
                .bind(&ids)
                .bind(&accounts)
                .bind(&amounts)
                .bind(self.ttl_ms)
                .bind(&self.origin)
                .fetch_all(self.conn.get().await?)
                .await?;
        let by_key: HashMap<&str, u64> = ids.iter().map(String::as_str).zip(batch.iter().map(|r| r.id)).collect();
        let mut out = HashMap::with_capacity(rows.len());
        for (key, granted, balance, available) in rows {
            let id = by_key.get(key.as_str()).ok_or_else(|| StoreError::Corrupt(format!("unknown hold {key}")))?;
            out.insert(*id, if granted { Grant::Granted { balance } } else { Grant::Refused { available } });
        }
        Ok(out)
    }
}

/// Group-commits settlements and releases (the statements of [`writer::Engine`]); frees
/// expired holds on its tick.
struct PgEngine {
    conn: Conn,
    open: Arc<AtomicUsize>,
    origin: String,
}

/// Column arrays of the batch's transfers, for one `UNNEST` insert.
#[derive(Default)]
struct TransferColumns<'a> {
    id: Vec<&'a str>,
    from: Vec<String>,
    to: Vec<String>,
    amount: Vec<i64>,
    kind: Vec<&'static str>,
    cause: Vec<&'a str>,
    created_at: Vec<i64>,
}

impl<'a> TransferColumns<'a> {
    fn push(&mut self, t: &'a Transfer) {
        self.id.push(&t.id);
        self.from.push(t.from.to_string());
        self.to.push(t.to.to_string());
        self.amount.push(t.amount.get());
        self.kind.push(t.kind.as_str());
        self.cause.push(&t.cause);
        self.created_at.push(t.created_at_ms);
    }
}

impl Engine for PgEngine {
    async fn begin(&mut self, _batch: &[Job]) -> Result<(), StoreError> {
        sqlx::query("BEGIN").execute(self.conn.get().await?).await?;
        Ok(())
    }

    /// The holds this batch ends and its transfers, in one statement. A hold that already
    /// expired is simply not there: its `held` was given back by the expiry, and the charge
    /// still applies. Transfers go in id order (two instances replaying the same charges lock
    /// the same ids in one order); RETURNING names those that were new.
    async fn insert_transfers(&mut self, batch: &[Job]) -> Result<Written, StoreError> {
        let hold_ids: Vec<String> = batch
            .iter()
            .filter_map(|j| match j {
                Job::Commit { hold: Some(h), .. } => Some(hold_key(&self.origin, h.id)),
                Job::Release { hold } => Some(hold_key(&self.origin, *hold)),
                _ => None,
            })
            .collect();
        let mut transfers: Vec<&Transfer> = batch
            .iter()
            .filter_map(|j| match j {
                Job::Commit { settlement, .. } => Some(settlement.transfers.iter()),
                _ => None,
            })
            .flatten()
            .collect();
        let mut written = Written { inserted: HashSet::new(), freed: Vec::new() };
        if hold_ids.is_empty() && transfers.is_empty() {
            return Ok(written);
        }
        transfers.sort_by(|a, b| a.id.cmp(&b.id));
        let mut columns = TransferColumns::default();
        transfers.into_iter().for_each(|t| columns.push(t));
        let rows: Vec<(bool, String, i64)> = sqlx::query_as(
            "WITH freed AS (DELETE FROM holds WHERE id = ANY($1) RETURNING account, amount), \
             added AS (INSERT INTO transfers (id, from_account, to_account, amount, kind, cause, created_at, origin) \
                 SELECT t.*, $9 FROM UNNEST($2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::text[], \
                 $8::bigint[]) AS t(id, from_account, to_account, amount, kind, cause, created_at) \
                 ON CONFLICT (id) DO NOTHING RETURNING id) \
             SELECT TRUE, account, amount FROM freed UNION ALL SELECT FALSE, id, 0 FROM added",
        )
        .bind(&hold_ids)
        .bind(&columns.id)
        .bind(&columns.from)
        .bind(&columns.to)
        .bind(&columns.amount)
        .bind(&columns.kind)
        .bind(&columns.cause)
        .bind(&columns.created_at)
        .bind(&self.origin)
        .fetch_all(self.conn.get().await?)
        .await?;
        for (is_freed, name, amount) in rows {
            if is_freed {
                written.freed.push((name.parse::<AccountId>().map_err(StoreError::Corrupt)?, amount));
            } else {
                written.inserted.insert(name);
            }
        }
        Ok(written)
    }

    /// Usage records and key use in one statement (new rows, and key rows locked in id order
    /// as by every other instance's writer); idempotent responses (rare).
    async fn write_records(&mut self, plan: &Plan<'_>, keys_used: &[&str], now_ms: i64) -> Result<(), StoreError> {
        let conn = self.conn.get().await?;
        if !plan.usage.is_empty() || !keys_used.is_empty() {
            record_usage(conn, &plan.usage, keys_used, now_ms).await?;
        }
        for c in &plan.idempotency {
            complete_idempotency(c).execute(&mut *conn).await?;
        }
        Ok(())
    }

    /// Balances and `held` last, so their row locks are held for the shortest time; the row
    /// locks make the balances after exact.
    async fn move_accounts(
        &mut self,
        plan: &Plan<'_>,
        now_ms: i64,
    ) -> Result<HashMap<AccountId, Movement>, StoreError> {
        update_accounts(self.conn.get().await?, &plan.accounts, now_ms).await
    }

    async fn insert_events(&mut self, events: Vec<&OutboxEvent>) -> Result<(), StoreError> {
        insert_events_pg(self.conn.get().await?, events).await?;
        Ok(())
    }

    async fn commit(&mut self) -> Result<(), StoreError> {
        sqlx::query("COMMIT").execute(self.conn.get().await?).await?;
        Ok(())
    }

    /// After an error: a connection that cannot even roll back is replaced, so a restarted
    /// database or a broken socket costs one failed batch, not the engine.
    async fn rollback(&mut self) {
        let Some(conn) = self.conn.conn.as_mut() else { return };
        if sqlx::query("ROLLBACK").execute(conn).await.is_err() {
            self.conn.reset();
        }
    }

    fn committed(&mut self, _batch: &[Job], effects: &Effects) {
        self.open.fetch_sub(effects.freed, Ordering::Relaxed);
    }

    fn failed(&mut self, holds: Vec<u64>) -> Vec<Job> {
        holds.into_iter().map(|hold| Job::Release { hold }).collect()
    }

    async fn tick(&mut self) -> bool {
        if let Err(e) = self.expire().await {
            self.conn.reset();
            tracing::error!(error = %e, "expiring holds failed");
        }
        false
    }
}

impl PgEngine {
    /// Free holds past their expiry, whoever took them (an instance that died). Safe on every
    /// instance at once: `SKIP LOCKED` hands each its own rows.
    async fn expire(&mut self) -> Result<(), StoreError> {
        let conn = self.conn.get().await?;
        let mut tx = Connection::begin(conn).await?;
        let freed: Vec<(String, i64, String)> = sqlx::query_as(
            "DELETE FROM holds WHERE id IN (SELECT id FROM holds WHERE expires_at <= quota_now_ms() \
             ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING account, amount, origin",
        )
        .bind(EXPIRE_BATCH_MAX)
        .fetch_all(&mut *tx)
        .await?;
        if freed.is_empty() {
            tx.rollback().await?;
            return Ok(());
        }
        let count = freed.len();
        let mut accounts: BTreeMap<AccountId, Movement> = BTreeMap::new();
        let mut own = 0;
        for (account, amount, origin) in freed {
            accounts.entry(account.parse().map_err(StoreError::Corrupt)?).or_default().held -= amount;
            own += usize::from(origin == self.origin);
        }
        update_accounts(&mut tx, &accounts, crate::now_ms()).await?;
        tx.commit().await?;
        // This process's own stuck holds are no longer open (a late settle or drop of one finds
        // nothing to delete and does not count it again: see `apply`).
        self.open.fetch_sub(own, Ordering::Relaxed);
        metrics::counter!("quota_ledger_holds_expired_total").increment(count as u64);
        tracing::warn!(count, "holds expired without settlement (an instance died?); credits released");
        Ok(())
    }
}

/// Apply each account's movement (balance, held), in id order (the lock order), creating rows
/// for new accounts. Returns each one's balance and `held` after.
async fn update_accounts(
    conn: &mut PgConnection,
    accounts: &BTreeMap<AccountId, Movement>,
    now: i64,
) -> Result<HashMap<AccountId, Movement>, StoreError> {
    if accounts.is_empty() {
        return Ok(HashMap::new());
    }
    let mut sorted: Vec<(String, &Movement)> = accounts.iter().map(|(a, m)| (a.to_string(), m)).collect();
    sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let ids: Vec<&str> = sorted.iter().map(|(a, _)| a.as_str()).collect();
    let balance: Vec<i64> = sorted.iter().map(|(_, m)| m.balance).collect();
    let held: Vec<i64> = sorted.iter().map(|(_, m)| m.held).collect();
    let rows: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT r_id, r_balance, r_held FROM quota_apply($1, $2, $3, $4)")
            .bind(&ids)
            .bind(&balance)
            .bind(&held)
            .bind(now)
            .fetch_all(&mut *conn)
            .await?;
    rows.into_iter()
        .map(|(id, balance, held)| Ok((id.parse().map_err(StoreError::Corrupt)?, Movement { balance, held })))
        .collect()
}

/// Insert the batch's usage records and mark its keys used, in one statement.
async fn record_usage(
    conn: &mut PgConnection,
    records: &[&UsageRecord],
    keys_used: &[&str],
    now: i64,
) -> Result<(), StoreError> {
    fn col<'a, T>(records: &[&'a UsageRecord], f: impl Fn(&'a UsageRecord) -> T) -> Vec<T> {
        records.iter().map(|r| f(r)).collect()
    }
    sqlx::query(
        "WITH usage AS (INSERT INTO usage_records (id, created_at, developer_id, key_id, app_id, payer_account, billing_mode, model, \
         provider, input_tokens, cached_tokens, cache_write_tokens, output_tokens, base_cost, markup, total, status, \
         latency_ms, sandbox, pending_event, client_request_id) \
         SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
         $8::text[], $9::text[], $10::bigint[], $11::bigint[], $12::bigint[], $13::bigint[], $14::bigint[], \
         $15::bigint[], $16::bigint[], $17::text[], $18::bigint[], $19::boolean[], $22::text[], $23::text[]) \
         ON CONFLICT (id) DO NOTHING) \
         UPDATE api_keys SET last_used_at = $20 WHERE id IN \
         (SELECT id FROM api_keys WHERE id = ANY($21) ORDER BY id COLLATE \"C\" FOR UPDATE)",
    )
    .bind(col(records, |r| r.id.as_str()))
    .bind(col(records, |r| r.created_at))
    .bind(col(records, |r| r.developer_id.as_str()))
    .bind(col(records, |r| r.key_id.as_deref()))
    .bind(col(records, |r| r.app_id.as_deref()))
    .bind(col(records, |r| r.payer_account.as_str()))
    .bind(col(records, |r| r.billing_mode.as_str()))
    .bind(col(records, |r| r.model.as_str()))
    .bind(col(records, |r| r.provider.as_str()))
    .bind(col(records, |r| r.input_tokens))
    .bind(col(records, |r| r.cached_tokens))
    .bind(col(records, |r| r.cache_write_tokens))
    .bind(col(records, |r| r.output_tokens))
    .bind(col(records, |r| r.base_cost))
    .bind(col(records, |r| r.markup))
    .bind(col(records, |r| r.total))
    .bind(col(records, |r| r.status.as_str()))
    .bind(col(records, |r| r.latency_ms))
    .bind(col(records, |r| r.sandbox))
    .bind(now)
    .bind(keys_used)
    .bind(col(records, |r| r.pending_event.as_deref()))
    .bind(col(records, |r| r.client_request_id.as_deref()))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

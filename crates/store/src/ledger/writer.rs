//! The one group-commit loop (DESIGN §3), run by both engines: take the first job and whatever
//! queued behind it (up to `batch_max`), commit them in one transaction, update the engine's
//! memory, then answer every caller — so a charge is durable before its response ends (SPEC
//! §4.3.6) and a thousand requests cost a few commits, not a thousand.
//!
//! A batch always runs the same steps: `begin` → insert the transfers and end the holds →
//! [`plan`](super::plan) → records (usage, key use, idempotent responses) → balance and `held`
//! movements → [`Plan::outcome`] → outbox events → `commit`. What differs between SQLite and
//! PostgreSQL is only how each step is written to the database: the [`Engine`] trait, whose
//! methods are statements. A batch that fails is rolled back and its jobs retried one by one, so
//! one bad job fails alone.
//!
//! Not here: granting holds (in memory on SQLite, the PostgreSQL holder's batches), and where
//! the loop runs (SQLite: a thread of its own that owns the connection; PostgreSQL: a task).

use super::plan::{self, Movement, Plan};
use super::{refused, Committed, HoldRef, LedgerError, Settlement};
use crate::events::OutboxEvent;
use crate::last_used::LastUsed;
use crate::store::StoreError;
use quota_core::{AccountId, Credits};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// What callers ask a writer for.
// Jobs move once through the channel; boxing the big variant would cost an allocation per
// settlement for nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Job {
    /// Commit a settlement (or a plain transfer, or a record), ending `hold` in the same step.
    Commit { hold: Option<HoldRef>, settlement: Settlement, reply: oneshot::Sender<Result<Committed, LedgerError>> },
    /// End a dropped hold in the database (PostgreSQL; SQLite releases in memory at once).
    Release { hold: u64 },
    /// Read accounts into the cache (SQLite; PostgreSQL caches nothing).
    Load { accounts: Vec<AccountId>, reply: oneshot::Sender<Result<(), LedgerError>> },
    /// Answer once everything queued before it is committed.
    Flush { reply: oneshot::Sender<()> },
}

/// What inserting a batch's transfers and ending its holds found.
pub(crate) struct Written {
    /// The transfer ids that were new (the others already existed: idempotent replays).
    pub inserted: HashSet<String>,
    /// The holds the batch ended, as (account, amount): their `held` goes back.
    pub freed: Vec<(AccountId, i64)>,
}

/// What a committed batch did, for the engine's memory and the replies.
pub(crate) struct Effects {
    /// Per job: the balances right after it of the accounts it moved, and its duplicates.
    pub per_job: Vec<(Vec<(AccountId, Credits)>, usize)>,
    /// Balance and `held` after the batch of every account it moved.
    pub after: HashMap<AccountId, Movement>,
    /// How many holds it ended.
    pub freed: usize,
}

/// The statements that apply a plan, and the memory an engine keeps. Each method is one step
/// of every batch (see the module doc); none decides anything the planner decides.
pub(crate) trait Engine {
    /// Open the batch's transaction, reading what planning needs first (SQLite: other
    /// processes' transfers since the last batch, and the accounts `Load` jobs ask for).
    async fn begin(&mut self, batch: &[Job]) -> Result<(), StoreError>;
    /// Insert the batch's transfers (`ON CONFLICT (id) DO NOTHING`) and end its holds.
    async fn insert_transfers(&mut self, batch: &[Job]) -> Result<Written, StoreError>;
    /// Usage records, the keys' last use (`keys_used`: those due a write) and idempotent
    /// responses of the applied jobs.
    async fn write_records(&mut self, plan: &Plan<'_>, keys_used: &[&str], now_ms: i64) -> Result<(), StoreError>;
    /// Move every account by the plan; each one's balance and `held` after.
    async fn move_accounts(&mut self, plan: &Plan<'_>, now_ms: i64)
        -> Result<HashMap<AccountId, Movement>, StoreError>;
    /// Outbox events (the applied jobs' own, then the `balance.low` crossings and the
    /// `balance.updated` events with their balances).
    async fn insert_events(&mut self, events: Vec<&OutboxEvent>) -> Result<(), StoreError>;
    async fn commit(&mut self) -> Result<(), StoreError>;
    /// Undo the open transaction (after an error: best effort).
    async fn rollback(&mut self);
    /// After the commit, before any caller is answered: bring memory up to date.
    fn committed(&mut self, batch: &[Job], effects: &Effects);
    /// A batch failed: free what the failed settlements held. Returns the jobs to commit to
    /// do so (PostgreSQL: releases in the database), or none.
    fn failed(&mut self, holds: Vec<u64>) -> Vec<Job>;
    /// The periodic work (expiry); `true` when a batch should run now (SQLite: another
    /// process wrote transfers this process has not seen).
    async fn tick(&mut self) -> bool;
}

/// The loop over one engine.
pub(crate) struct Writer<E> {
    pub engine: E,
    last_used: LastUsed,
}

impl<E: Engine> Writer<E> {
    pub fn new(engine: E) -> Writer<E> {
        Writer { engine, last_used: LastUsed::default() }
    }

    pub async fn run(mut self, mut jobs: Jobs<Job>) {
        loop {
            match jobs.next().await {
                Next::Batch(batch) => self.process(batch).await,
                Next::Tick => {
                    if self.engine.tick().await {
                        self.process(Vec::new()).await;
                    }
                }
                Next::Stop => break,
            }
        }
        tracing::debug!("ledger writer stopped");
    }

    async fn process(&mut self, batch: Vec<Job>) {
        match timed(batch.len(), self.commit(&batch)).await {
            Ok(effects) => self.answer(batch, effects),
            Err(e) if batch.len() > 1 => {
                // Isolate the job that fails (or outlive a lost connection); the others commit
                // on their own.
                tracing::warn!(error = %e, size = batch.len(), "ledger batch failed; retrying one by one");
                for job in batch {
                    let jobs = vec![job];
                    match self.commit(&jobs).await {
                        Ok(effects) => self.answer(jobs, effects),
                        Err(e) => self.fail(jobs, e).await,
                    }
                }
            }
            Err(e) => self.fail(batch, e).await,
        }
    }

    async fn commit(&mut self, batch: &[Job]) -> Result<Effects, StoreError> {
        if let Err(e) = self.engine.begin(batch).await {
            self.engine.rollback().await;
            return Err(e);
        }
        let result = match self.steps(batch).await {
            Ok(effects) => self.engine.commit().await.map(|()| effects),
            Err(e) => Err(e),
        };
        if result.is_err() {
            self.engine.rollback().await;
        }
        result
    }

    /// The steps of a batch inside its transaction.
    async fn steps(&mut self, batch: &[Job]) -> Result<Effects, StoreError> {
        let written = self.engine.insert_transfers(batch).await?;
        let plan = plan::plan(entries(batch), &written.inserted, &written.freed).map_err(refused)?;
        let now = crate::now_ms();
        let keys_used = self.last_used.due(plan.keys_used.iter().copied(), now);
        self.engine.write_records(&plan, &keys_used, now).await?;
        let after = self.engine.move_accounts(&plan, now).await?;
        let outcome = plan.outcome(&after).map_err(refused)?;
        let events = plan.events.iter().copied().chain(&outcome.crossings).chain(&outcome.balance_updates).collect();
        self.engine.insert_events(events).await?;
        let per_job = outcome.balances_after.into_iter().zip(plan.jobs.iter().map(|j| j.duplicates)).collect();
        Ok(Effects { per_job, after, freed: written.freed.len() })
    }

    fn answer(&mut self, batch: Vec<Job>, effects: Effects) {
        self.engine.committed(&batch, &effects);
        for (job, (balances_after, duplicates)) in batch.into_iter().zip(effects.per_job) {
            match job {
                Job::Commit { reply, .. } => {
                    let _ = reply.send(Ok(Committed { balances_after, duplicates }));
                }
                Job::Load { reply, .. } => {
                    let _ = reply.send(Ok(()));
                }
                Job::Flush { reply } => {
                    let _ = reply.send(());
                }
                Job::Release { .. } => {}
            }
        }
    }

    async fn fail(&mut self, batch: Vec<Job>, error: StoreError) {
        tracing::error!(error = %error, "ledger commit failed");
        let mut holds = Vec::new();
        for job in batch {
            match job {
                Job::Commit { hold, reply, .. } => {
                    holds.extend(hold.map(|h| h.id));
                    let _ = reply.send(Err(StoreError::Corrupt(format!("commit failed: {error}")).into()));
                }
                Job::Load { reply, .. } => {
                    let _ = reply.send(Err(StoreError::Corrupt(format!("load failed: {error}")).into()));
                }
                Job::Flush { reply } => {
                    let _ = reply.send(());
                }
                Job::Release { hold } => holds.push(hold),
            }
        }
        // Nothing was charged: the holds go back now; if even that fails, they expire.
        let releases = self.engine.failed(holds);
        if !releases.is_empty() {
            match self.commit(&releases).await {
                Ok(effects) => self.answer(releases, effects),
                Err(e) => tracing::error!(error = %e, "releasing holds failed; they will expire"),
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

//! Batch planning (DESIGN §3): what one group commit writes and what it answers, computed by
//! pure code from the batch, the transfer ids the database found new, and the balances it
//! reports. No database, no clock, no engine: both engines call this, so the rules of a batch
//! (which transfers count, what each job's balances are, which `balance.low` events fire) are
//! written once and property-tested without a database.
//!
//! A batch is planned in two steps around the statements that apply it:
//!
//! 1. [`plan`] — after the transfers are inserted (`ON CONFLICT (id) DO NOTHING`, so the
//!    database names the ids that were new): each job's deltas, its duplicates (a job with one
//!    is a replay and writes nothing else), the net movement of every account, and the rows to
//!    write. Asserted here: Σ deltas = 0, every transfer valid, and a settlement debits its held
//!    account at most the hold (SPEC §4.3.3: the caller caps the charge; more is a bug).
//! 2. [`Plan::outcome`] — once the engine has applied the movements and knows each touched
//!    account's balance and `held` after the batch: each job's balances after and the
//!    `balance.low` crossings. Asserted here: `held` ≥ 0, and no settlement takes a wallet
//!    (an account that may not go negative) from ≥ 0 to below zero.
//!
//! A failed assertion is a [`PlanError`]: the engine rolls the batch back and retries its jobs
//! one by one, so one bad settlement is refused alone and nothing wrong is ever committed.

use super::{HoldRef, Settlement};
use crate::events::OutboxEvent;
use crate::idempotency::IdempotencyCompletion;
use crate::usage::UsageRecord;
use quota_core::{AccountId, Credits, Transfer};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// One commit job of a batch, as the planner sees it.
#[derive(Clone, Copy)]
pub(crate) struct Entry<'a> {
    /// The hold this settlement ends, if any.
    pub hold: Option<&'a HoldRef>,
    pub settlement: &'a Settlement,
}

/// How an account's balance and `held` move (or stand) in credits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Movement {
    pub balance: i64,
    pub held: i64,
}

/// A batch the planner refuses: nothing of it may be committed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PlanError {
    #[error("invalid transfer {id}: {reason}")]
    InvalidTransfer { id: String, reason: String },
    #[error("settlement debits {debit_credits} from {account}, above its hold of {hold_credits}")]
    AboveHold { account: AccountId, debit_credits: i64, hold_credits: i64 },
    #[error("held on {account} would be {held_credits} after the batch")]
    NegativeHeld { account: AccountId, held_credits: i64 },
    #[error("a settlement takes {account} from {before_credits} to {after_credits}")]
    Overdraft { account: AccountId, before_credits: i64, after_credits: i64 },
    #[error("the engine reported no balance for {0}, which the batch moved")]
    MissingBalance(AccountId),
}

/// What one job of the batch does.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct JobPlan {
    /// The deltas of its new transfers, in order (two per transfer).
    pub deltas: Vec<(AccountId, i64)>,
    /// Its transfers whose id already existed (in the database or earlier in this batch).
    pub duplicates: usize,
}

impl JobPlan {
    /// A job with no duplicate is applied whole; one with any is a replay and writes nothing
    /// but its new transfers (there are none in a true replay: its ids are all taken).
    pub fn applied(&self) -> bool {
        self.duplicates == 0
    }
}

/// The plan of a batch: step 1's result.
pub(crate) struct Plan<'a> {
    entries: Vec<Option<Entry<'a>>>,
    /// One per job of the batch, in order (empty for jobs that are not commits).
    pub jobs: Vec<JobPlan>,
    /// Every account the batch moves (new transfers and freed holds), with its net movement.
    pub accounts: BTreeMap<AccountId, Movement>,
    /// The accounts among them that new transfers touch (their rows must be written, even
    /// when the net movement is zero).
    transferred: BTreeSet<AccountId>,
    /// The rows the applied jobs write with their transfers.
    pub usage: Vec<&'a UsageRecord>,
    pub idempotency: Vec<&'a IdempotencyCompletion>,
    pub events: Vec<&'a OutboxEvent>,
    /// Keys used by any commit job (a replay's key was used too), sorted and once each.
    pub keys_used: Vec<&'a str>,
}

/// What the batch answers: step 2's result.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Per job: the balance of each account its new transfers touched, right after the job.
    pub balances_after: Vec<Vec<(AccountId, Credits)>>,
    /// `balance.low` events of the applied jobs whose watched account crossed its threshold.
    pub crossings: Vec<OutboxEvent>,
    /// The applied jobs' [`crate::ledger::BalanceUpdate`] events, their balance filled in.
    pub balance_updates: Vec<OutboxEvent>,
}

/// Step 1. `entries` has one item per job of the batch (`None` for jobs that are not commits);
/// `inserted` names the transfer ids the database wrote just now; `freed` the holds the engine
/// ended in this batch (account, amount): their `held` goes back.
pub(crate) fn plan<'a>(
    entries: Vec<Option<Entry<'a>>>,
    inserted: &HashSet<String>,
    freed: &[(AccountId, i64)],
) -> Result<Plan<'a>, PlanError> {
    let mut unclaimed: HashSet<&str> = inserted.iter().map(String::as_str).collect();
    let mut plan = Plan {
        jobs: Vec::with_capacity(entries.len()),
        accounts: BTreeMap::new(),
        transferred: BTreeSet::new(),
        usage: Vec::new(),
        idempotency: Vec::new(),
        events: Vec::new(),
        keys_used: Vec::new(),
        entries: Vec::new(),
    };
    for (account, amount) in freed {
        plan.accounts.entry(account.clone()).or_default().held -= amount;
    }
    for entry in &entries {
        let Some(entry) = entry else {
            plan.jobs.push(JobPlan::default());
            continue;
        };
        let job = plan_job(entry, &mut unclaimed)?;
        for (account, delta) in &job.deltas {
            plan.accounts.entry(account.clone()).or_default().balance += delta;
            if !plan.transferred.contains(account) {
                plan.transferred.insert(account.clone());
            }
        }
        let s = entry.settlement;
        if job.applied() {
            plan.usage.extend(s.usage.iter());
            plan.idempotency.extend(s.idempotency.iter());
            plan.events.extend(s.events.iter());
        }
        plan.keys_used.extend(s.key_used.as_deref());
        plan.jobs.push(job);
    }
    plan.keys_used.sort_unstable();
    plan.keys_used.dedup();
    // Double entry: every transfer moves what it takes. By construction; a failure is a bug here.
    let sum: i128 = plan.accounts.values().map(|m| i128::from(m.balance)).sum();
    assert_eq!(sum, 0, "a batch's deltas must sum to zero");
    plan.entries = entries;
    Ok(plan)
}

/// One job's deltas and duplicates; claims its new ids from `unclaimed` so that a second
/// transfer with the same id in the batch is a duplicate.
fn plan_job(entry: &Entry<'_>, unclaimed: &mut HashSet<&str>) -> Result<JobPlan, PlanError> {
    let mut job = JobPlan::default();
    let mut new = Vec::with_capacity(entry.settlement.transfers.len());
    for t in &entry.settlement.transfers {
        t.validate().map_err(|e| PlanError::InvalidTransfer { id: t.id.clone(), reason: e.to_string() })?;
        if !unclaimed.remove(t.id.as_str()) {
            job.duplicates += 1;
            continue;
        }
        job.deltas.push((t.from.clone(), -t.amount.get()));
        job.deltas.push((t.to.clone(), t.amount.get()));
        new.push(t);
    }
    if let Some(h) = entry.hold {
        let debited = debit(new, &h.account);
        if debited > i128::from(h.amount) {
            return Err(PlanError::AboveHold {
                account: h.account.clone(),
                debit_credits: i64::try_from(debited).unwrap_or(i64::MAX),
                hold_credits: h.amount,
            });
        }
    }
    Ok(job)
}

/// What `transfers` take from `account` (SPEC §4.3(3): a settlement's, at most its hold).
pub(crate) fn debit<'t>(transfers: impl IntoIterator<Item = &'t Transfer>, account: &AccountId) -> i128 {
    transfers.into_iter().filter(|t| t.from == *account).map(|t| i128::from(t.amount.get())).sum()
}

impl Plan<'_> {
    /// The accounts new transfers touch, with their net balance movement.
    pub fn transferred(&self) -> impl Iterator<Item = (&AccountId, i64)> {
        self.transferred.iter().map(|a| (a, self.accounts.get(a).map(|m| m.balance).unwrap_or(0)))
    }

    /// Step 2. `after` has the balance and `held` after the batch of every account in
    /// [`Plan::accounts`]; each job's balances are those minus what later jobs moved.
    pub fn outcome(&self, after: &HashMap<AccountId, Movement>) -> Result<Outcome, PlanError> {
        let mut running: HashMap<&AccountId, i64> = HashMap::with_capacity(self.accounts.len());
        for (account, moved) in &self.accounts {
            let now = after.get(account).ok_or_else(|| PlanError::MissingBalance(account.clone()))?;
            if now.held < 0 {
                return Err(PlanError::NegativeHeld { account: account.clone(), held_credits: now.held });
            }
            running.insert(account, now.balance - moved.balance);
        }
        let mut out = Outcome {
            balances_after: Vec::with_capacity(self.jobs.len()),
            crossings: Vec::new(),
            balance_updates: Vec::new(),
        };
        for (job, entry) in self.jobs.iter().zip(&self.entries) {
            let held_before = entry.and_then(|e| e.hold).map(|h| (h, running.get(&h.account).copied().unwrap_or(0)));
            let mut touched: Vec<(AccountId, Credits)> = Vec::new();
            for (account, delta) in &job.deltas {
                let b = running.get_mut(account).expect("every delta's account is in the plan");
                *b += delta;
                match touched.iter_mut().find(|(a, _)| a == account) {
                    Some((_, c)) => *c = Credits::new(*b),
                    None => touched.push((account.clone(), Credits::new(*b))),
                }
            }
            if let Some((hold, before)) = held_before {
                let after = running.get(&hold.account).copied().unwrap_or(0);
                if !hold.account.may_go_negative() && before >= 0 && after < 0 {
                    return Err(PlanError::Overdraft {
                        account: hold.account.clone(),
                        before_credits: before,
                        after_credits: after,
                    });
                }
            }
            if let (Some(entry), true) = (entry, job.applied()) {
                out.crossings.extend(crossings(entry.settlement, &running));
                out.balance_updates.extend(
                    entry.settlement.balance_updates.iter().filter_map(|u| Some(u.filled(*running.get(&u.account)?))),
                );
            }
            out.balances_after.push(touched);
        }
        Ok(out)
    }
}

/// The `balance.low` events of `settlement`'s watches whose account it took from at or above
/// the threshold to below it; `running` holds the balances right after the settlement.
fn crossings<'s>(
    settlement: &'s Settlement,
    running: &'s HashMap<&AccountId, i64>,
) -> impl Iterator<Item = OutboxEvent> + 's {
    settlement.low_balance.iter().filter_map(move |w| {
        let after = *running.get(&w.account)?;
        w.crossed(after - w.delta(&settlement.transfers), after)
    })
}

#[cfg(test)]
mod tests;

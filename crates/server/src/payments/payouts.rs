//! Earnings and payouts (SPEC §10.2, §10.3): the daily batch that moves each developer's
//! user-mode markup through the ledger
//!
//! ```text
//! earnings_pending ──(7 days after the charge)──▶ earnings_available ──▶ payout_in_transit ──▶ platform:payouts_clearing
//!                                                    │      ▲             (Stripe transfer sent)   (Stripe confirmed)
//!                              10% reserve_hold ─────▼      │ reserve_release (90 days later)
//!                                                 payout_reserve
//! ```
//!
//! and pays the available balance to the developer's Connect account: nothing below $10
//! (carried over), cents = floor(credits / 10,000), the sub-cent remainder carried over.
//!
//! **One at a time, never twice.** A run works on a developer only under that developer's
//! lease (a database row, so it holds across instances and `quota payouts run`); a concurrent
//! run skips the developer (`busy`). Beneath that, every step's transfer id is derived from the developer and the cumulative
//! amount that step has already moved (`ledg_erel_{dev}_{released so far}`, …): two runs that
//! read the same state write the same id, and the ledger writes an id once, so a re-run, a
//! concurrent run in this process or another instance can only repeat a no-op. A payout row is
//! unique per (developer, start of the earnings it covers); its Stripe `Idempotency-Key` is
//! the developer plus the covered range, so a retried transfer is the same transfer at Stripe.
//!
//! **Failures.** A refused or unreachable Stripe transfer leaves the money in transit, marks
//! the payout `failed` (with `payout.failed`), and the next batch retries it with the same key
//! before starting any new payout.

use super::Provider;
use crate::app::SharedState;
use crate::webhooks::EventKind;
use quota_core::transfers::payout;
pub use quota_core::transfers::payout::{payout_for, reserve_for, PAYOUT_MINIMUM};
use quota_core::{AccountId, Credits, Transfer, TransferKind};
use quota_store::payments::Payout;
use quota_store::{LedgerError, OutboxEvent};
use serde::Serialize;
use serde_json::json;

pub const DAY_MS: i64 = 86_400_000;
/// Earnings become eligible this long after the charge (SPEC §10.2).
pub const EARNINGS_HOLD_MS: i64 = 7 * DAY_MS;
/// The reserve is returned this long after it was held (SPEC §10.3).
pub const RESERVE_HOLD_MS: i64 = 90 * DAY_MS;
/// How long a run may hold a developer's lease (far beyond a few Stripe calls).
pub const LEASE_MS: i64 = 10 * 60 * 1000;

/// What one batch did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct BatchReport {
    pub as_of: String,
    pub developers: usize,
    /// Credits released from pending to available.
    pub released: i64,
    pub reserved: i64,
    pub reserve_released: i64,
    /// Payouts confirmed paid in this run (ids).
    pub paid: Vec<String>,
    /// Payouts whose transfer failed in this run (ids).
    pub failed: Vec<String>,
    /// Developers whose available balance was below the minimum (carried over).
    pub below_minimum: usize,
    /// Developers skipped after an unexpected error (logged).
    pub errors: usize,
    /// Developers skipped because another run holds their lease.
    pub busy: usize,
}

/// Unix ms of 00:00 UTC on `YYYY-MM-DD`.
pub fn parse_date(date: &str) -> Result<i64, String> {
    quota_core::calendar::parse_date(date)
        .map(|days| days * 86_400_000)
        .ok_or_else(|| format!("`{date}` is not a date (YYYY-MM-DD)"))
}

/// The instant a batch for `date` looks at: the end of that day, or now if the day is today.
/// A day in the future is refused.
pub fn as_of_for_date(date: &str, now_ms: i64) -> Result<i64, String> {
    let start = parse_date(date)?;
    if start > now_ms {
        return Err(format!("{date} is in the future"));
    }
    Ok((start + DAY_MS - 1).min(now_ms))
}

/// Run the batch as of `as_of_ms` for every developer who has earned.
pub async fn run(state: &SharedState, as_of_ms: i64) -> anyhow::Result<BatchReport> {
    let provider = state.payments.as_ref().ok_or_else(|| anyhow::anyhow!("payments are not configured"))?;
    state.ledger.flush().await?;
    let developers = state.store.developers_with_earnings().await?;
    let mut report = BatchReport {
        as_of: quota_store::clock::rfc3339(as_of_ms),
        developers: developers.len(),
        ..Default::default()
    };
    let holder = quota_core::ids::new_id("run_");
    for dev in developers {
        let now = state.clock.now_ms();
        if !state.store.take_payout_lease(&dev, &holder, now, now + LEASE_MS).await? {
            report.busy += 1;
            continue;
        }
        let result = settle_developer(state, provider, &dev, as_of_ms, &mut report).await;
        state.store.free_payout_lease(&dev, &holder).await?;
        if let Err(e) = result {
            tracing::error!(developer = %dev, error = %e, "payout batch: developer skipped");
            report.errors += 1;
        }
    }
    tracing::info!(
        as_of = %report.as_of,
        released = report.released,
        paid = report.paid.len(),
        failed = report.failed.len(),
        "payout batch done"
    );
    Ok(report)
}

/// Commit one batch step. `Ok(amount moved)`; 0 when another run made this step already (same
/// id) or moved the money first (the account can no longer cover it).
async fn step(state: &SharedState, transfer: Transfer) -> anyhow::Result<i64> {
    let amount = transfer.amount.get();
    // Catch up with transfers other instances (or `quota payouts run`) committed, so the hold
    // below sees the account as the database has it.
    state.ledger.flush().await?;
    match state.ledger.transfer(transfer).await {
        Ok(c) if c.duplicates == 0 => Ok(amount),
        Ok(_) => Ok(0),
        Err(LedgerError::Insufficient { .. }) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

async fn settle_developer(
    state: &SharedState,
    provider: &Provider,
    dev: &str,
    as_of: i64,
    report: &mut BatchReport,
) -> anyhow::Result<()> {
    let store = &state.store;
    let pending = AccountId::EarningsPending(dev.to_string());
    let available = AccountId::EarningsAvailable(dev.to_string());
    let reserve = AccountId::PayoutReserve(dev.to_string());
    let cause = format!("payout_batch:{}", quota_store::clock::rfc3339(as_of));

    // 1. Earnings from charges at least 7 days old become available.
    let eligible = store.sum_transfers_to(TransferKind::Markup, &pending, as_of - EARNINGS_HOLD_MS).await?;
    let released = store.sum_transfers_from(TransferKind::EarningsRelease, &pending).await?;
    if eligible > released {
        let t = payout::earnings_release(dev, released, Credits::new(eligible - released), &cause, as_of);
        report.released += step(state, t).await?;
    }

    // 2. 10% of everything released is held in the reserve (cumulative, so a crash between
    //    steps 1 and 2 is made good by the next run).
    let released = store.sum_transfers_from(TransferKind::EarningsRelease, &pending).await?;
    let held = store.sum_transfers_to(TransferKind::ReserveHold, &reserve, i64::MAX).await?;
    let target = reserve_for(released);
    if target > held {
        let t = payout::reserve_hold(dev, held, Credits::new(target - held), &cause, as_of);
        report.reserved += step(state, t).await?;
    }

    // 3. Reserve held at least 90 days ago returns to available.
    let due = store.sum_transfers_to(TransferKind::ReserveHold, &reserve, as_of - RESERVE_HOLD_MS).await?;
    let returned = store.sum_transfers_from(TransferKind::ReserveRelease, &reserve).await?;
    if due > returned {
        let t = payout::reserve_release(dev, returned, Credits::new(due - returned), &cause, as_of);
        report.reserve_released += step(state, t).await?;
    }

    // 4. Only onboarded developers are paid; the others' earnings wait.
    let Some(account) = store.connect_account(dev).await? else {
        return Ok(());
    };
    // 5. Payouts sent before and not confirmed are retried first, with their own key.
    let mut settled = true;
    for p in store.unsettled_payouts(dev).await? {
        settled &= attempt(state, provider, &p, report).await?;
    }
    if !settled {
        return Ok(());
    }

    // 6. A new payout of the available balance, in whole cents, if it reaches the minimum.
    state.ledger.flush().await?;
    let balance = Credits::new(store.balance(&available).await?);
    let Some((cents, credits)) = payout_for(balance) else {
        report.below_minimum += 1;
        return Ok(());
    };
    let covered_from = store.sum_transfers_from(TransferKind::PayoutSent, &available).await?;
    let covered_to = covered_from + credits.get();
    let now = state.clock.now_ms();
    let claimed = store
        .claim_payout(&Payout {
            id: quota_core::ids::new_id("po_"),
            developer_id: dev.to_string(),
            idempotency_key: format!("quota-payout-{dev}-{covered_from}-{covered_to}"),
            stripe_account_id: account,
            amount_credits: credits.get(),
            amount_cents: cents,
            covered_from,
            covered_to,
            status: "pending".into(),
            attempts: 0,
            failure_message: None,
            stripe_transfer_id: None,
            created_at: now,
            updated_at: now,
            paid_at: None,
        })
        .await?;
    if claimed.status != "paid" {
        attempt(state, provider, &claimed, report).await?;
    }
    Ok(())
}

/// Send (or resend) one payout: move it into transit if it is not there yet, ask the provider
/// for the transfer with the payout's idempotency key, and record the answer. `Ok(true)` when
/// it is paid.
async fn attempt(
    state: &SharedState,
    provider: &Provider,
    p: &Payout,
    report: &mut BatchReport,
) -> anyhow::Result<bool> {
    let dev = &p.developer_id;
    let now = state.clock.now_ms();
    let sent = payout::sent(dev, p.covered_from, Credits::new(p.amount_credits), &p.id, now);
    state.ledger.flush().await?;
    if !state.store.transfer_exists(&sent.id).await? {
        match state.ledger.transfer(sent).await {
            Ok(_) => {}
            // Another run is moving the same money; it finishes this payout.
            Err(LedgerError::Insufficient { .. }) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
    let answer = match provider {
        Provider::Stripe { client, .. } => {
            client.create_transfer(p.amount_cents, &p.stripe_account_id, &p.id, &p.idempotency_key).await
        }
        Provider::Dev => Ok(format!("tr_dev_{}", p.id)),
    };
    let data = |extra: serde_json::Value| {
        let mut d = json!({
            "payout_id": p.id,
            "amount": p.amount_credits,
            "amount_cents": p.amount_cents,
            "currency": "usd",
            "stripe_account_id": p.stripe_account_id,
            "covered_from": p.covered_from,
            "covered_to": p.covered_to,
        });
        if let (Some(d), Some(e)) = (d.as_object_mut(), extra.as_object()) {
            d.extend(e.clone());
        }
        d
    };
    match answer {
        Ok(transfer_id) => {
            let paid = payout::paid(dev, p.covered_from, Credits::new(p.amount_credits), &p.id, now);
            let event = OutboxEvent::new(
                EventKind::PayoutPaid.as_str(),
                dev,
                data(json!({"stripe_transfer_id": transfer_id})),
                now,
            );
            state.ledger.flush().await?;
            if !state.store.transfer_exists(&paid.id).await? {
                match state.ledger.transfer_with_events(paid, vec![event]).await {
                    Ok(c) if c.duplicates == 0 => report.paid.push(p.id.clone()),
                    Ok(_) => {}
                    // A concurrent run's confirmation is moving the same money; Stripe's answer
                    // is the same transfer, so the payout is recorded by whichever commits.
                    Err(LedgerError::Insufficient { .. }) => return Ok(false),
                    Err(e) => return Err(e.into()),
                }
            }
            state.store.mark_payout_paid(&p.id, &transfer_id, now).await?;
            Ok(true)
        }
        Err(e) => {
            let message = e.to_string();
            tracing::warn!(payout = %p.id, developer = %dev, error = %message, "payout transfer failed; retried by the next batch");
            let event =
                OutboxEvent::new(EventKind::PayoutFailed.as_str(), dev, data(json!({"failure_message": message})), now);
            state.store.mark_payout_failed(&p.id, &message, now, &event).await?;
            report.failed.push(p.id.clone());
            Ok(false)
        }
    }
}

/// The in-process daily batch: once per UTC day, at or after `payouts_hour_utc` by the server's
/// clock. Holds only a weak reference, so it ends with the server.
pub fn spawn_schedule(state: &SharedState) {
    let weak = std::sync::Arc::downgrade(state);
    let hour = i64::from(state.config.payouts_hour_utc);
    tokio::spawn(async move {
        let mut last_day: Option<i64> = None;
        let mut ticker = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            ticker.tick().await;
            let Some(state) = weak.upgrade() else { return };
            let now = state.clock.now_ms();
            let day = now.div_euclid(DAY_MS);
            if last_day == Some(day) || now.rem_euclid(DAY_MS) < hour * 3_600_000 {
                continue;
            }
            last_day = Some(day);
            if let Err(e) = run(&state, now).await {
                tracing::error!(error = %e, "scheduled payout batch failed");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_parse_to_utc_midnight() {
        assert_eq!(parse_date("1970-01-01"), Ok(0));
        assert_eq!(parse_date("2025-11-01"), Ok(1_761_955_200_000));
        assert_eq!(parse_date("2000-02-29"), Ok(951_782_400_000));
        assert!(parse_date("2001-02-29").is_err());
        assert!(parse_date("2025-1-01").is_err());
        assert!(parse_date("nope").is_err());
        let now = 1_761_955_200_000 + 3_600_000;
        assert_eq!(as_of_for_date("2025-11-01", now), Ok(now));
        assert_eq!(as_of_for_date("2025-10-31", now), Ok(1_761_955_200_000 - 1));
        assert!(as_of_for_date("2025-11-02", now).is_err());
    }
}

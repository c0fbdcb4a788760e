//! `quota ledger verify`: recompute every balance from the transfers and compare with the cached
//! balances; prove Σ balances = 0 and that no wallet is below zero: inference never takes a
//! wallet below zero (settlement is capped at the hold, SPEC §4.3(3)); only the reversal of a
//! refunded top-up may (SPEC §10.4), and no such transfer exists in this build.
//! On PostgreSQL it also checks that each account's `held` is the sum of its open holds.

use crate::db::{DbRow, Pool};
use crate::store::{Store, StoreError};
use futures::TryStreamExt;
use quota_core::AccountId;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Mismatch {
    pub account: String,
    pub stored: i64,
    pub recomputed: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub transfers: u64,
    pub accounts: u64,
    /// Σ of recomputed balances; must be 0.
    pub sum_of_balances: i128,
    /// Σ of the cached balances; must be 0.
    pub sum_of_stored_balances: i128,
    pub mismatches: Vec<Mismatch>,
    /// Wallets whose recomputed balance is negative. None may be (see the module doc).
    pub negative_accounts: Vec<(String, i64)>,
    /// Other accounts that may not go negative (earnings, reserves) but are.
    pub invalid_negative_accounts: Vec<(String, i64)>,
    /// PostgreSQL: accounts whose `held` differs from the sum of their open holds (`stored` is
    /// `held`, `recomputed` the sum).
    pub held_mismatches: Vec<Mismatch>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.sum_of_balances == 0
            && self.sum_of_stored_balances == 0
            && self.mismatches.is_empty()
            && self.negative_accounts.is_empty()
            && self.invalid_negative_accounts.is_empty()
            && self.held_mismatches.is_empty()
    }
}

impl Store {
    /// Stream every transfer and recompute. Reads one consistent snapshot.
    pub async fn verify_ledger(&self) -> Result<VerifyReport, StoreError> {
        let mut tx = self.pool().begin_snapshot().await?;
        let (recomputed, transfers, stored, held_mismatches) = crate::on_tx!(&mut tx, |c| {
            let mut recomputed: BTreeMap<String, i128> = BTreeMap::new();
            let mut transfers = 0u64;
            {
                let mut rows = sqlx::query("SELECT from_account, to_account, amount FROM transfers").fetch(&mut *c);
                while let Some(r) = rows.try_next().await? {
                    let amount: i64 = r.get("amount");
                    if amount <= 0 {
                        return Err(StoreError::Corrupt(format!("transfer with non-positive amount {amount}")));
                    }
                    *recomputed.entry(r.get("from_account")).or_default() -= i128::from(amount);
                    *recomputed.entry(r.get("to_account")).or_default() += i128::from(amount);
                    transfers += 1;
                }
            }
            let stored: BTreeMap<String, i64> =
                sqlx::query_as("SELECT id, balance FROM accounts").fetch_all(&mut *c).await?.into_iter().collect();
            let held_mismatches: Vec<Mismatch> = if matches!(self.pool(), Pool::Postgres(_)) {
                sqlx::query_as(
                    "SELECT a.id, a.held, CAST(COALESCE(h.total, 0) AS BIGINT) FROM accounts a \
                     LEFT JOIN (SELECT account, SUM(amount) AS total FROM holds GROUP BY account) h ON h.account = a.id \
                     WHERE a.held <> COALESCE(h.total, 0) ORDER BY a.id",
                )
                .fetch_all(&mut *c)
                .await?
                .into_iter()
                .map(|(account, stored, recomputed)| Mismatch { account, stored, recomputed })
                .collect()
            } else {
                Vec::new()
            };
            (recomputed, transfers, stored, held_mismatches)
        });
        tx.commit().await?;
        let mut mismatches = Vec::new();
        let mut all: std::collections::BTreeSet<&String> = recomputed.keys().collect();
        all.extend(stored.keys());
        let mut negative_accounts = Vec::new();
        let mut invalid_negative_accounts = Vec::new();
        for account in all {
            let r = recomputed.get(account).copied().unwrap_or(0);
            let s = stored.get(account).copied().unwrap_or(0);
            let r64 = i64::try_from(r).unwrap_or(i64::MIN);
            if i128::from(s) != r {
                mismatches.push(Mismatch { account: account.clone(), stored: s, recomputed: r64 });
            }
            if r < 0 {
                match account.parse::<AccountId>() {
                    Ok(a) if a.may_go_negative() => {}
                    Ok(a) if a.is_wallet() => negative_accounts.push((account.clone(), r64)),
                    _ => invalid_negative_accounts.push((account.clone(), r64)),
                }
            }
        }
        Ok(VerifyReport {
            transfers,
            accounts: recomputed.len().max(stored.len()) as u64,
            sum_of_balances: recomputed.values().sum(),
            sum_of_stored_balances: stored.values().map(|v| i128::from(*v)).sum(),
            mismatches,
            negative_accounts,
            invalid_negative_accounts,
            held_mismatches,
        })
    }
}

//! `quota ledger verify`: recompute every balance from the transfers and compare with the cached
//! balances; prove Σ balances = 0 and that no wallet is below zero by more than one overshoot.

use crate::store::{Store, StoreError};
use futures::TryStreamExt;
use quota_core::AccountId;
use serde::Serialize;
use sqlx::Row;
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
    /// Non-platform accounts whose recomputed balance is negative (each must be a single
    /// settlement overshoot, SPEC §4.3.3; listed for a person to look at).
    pub negative_accounts: Vec<(String, i64)>,
    /// Accounts that may not go negative and are not wallets (earnings) but are.
    pub invalid_negative_accounts: Vec<(String, i64)>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.sum_of_balances == 0
            && self.sum_of_stored_balances == 0
            && self.mismatches.is_empty()
            && self.invalid_negative_accounts.is_empty()
    }
}

impl Store {
    /// Stream every transfer and recompute. Reads one consistent snapshot.
    pub async fn verify_ledger(&self) -> Result<VerifyReport, StoreError> {
        let mut tx = self.pool().begin().await?;
        let mut recomputed: BTreeMap<String, i128> = BTreeMap::new();
        let mut transfers = 0u64;
        {
            let mut rows = sqlx::query("SELECT from_account, to_account, amount FROM transfers").fetch(&mut *tx);
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
        let stored: BTreeMap<String, i64> = sqlx::query("SELECT id, balance FROM accounts")
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| (r.get("id"), r.get("balance")))
            .collect();
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
        })
    }
}

//! Persistence for payments and payouts (SPEC §10): checkout sessions, the Stripe events already
//! applied, Connect accounts, payout records, and the ledger sums the payout batch works from.
//!
//! Money never moves here: top-ups and payouts are ledger transfers (`ledger/`). These rows
//! say what the payment provider was asked and answered; each state change that causes a webhook
//! event writes that event (outbox) in the same transaction. SQL uses `$n` placeholders and
//! nothing SQLite-only, so the PostgreSQL backend can share it.

use crate::db::DbRow;
use crate::events::{insert_events, OutboxEvent};
use crate::store::{Store, StoreError};
use crate::{on_pool, on_tx};
use quota_core::{AccountId, TransferKind};

/// A top-up attempt at the payment provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutSession {
    pub id: String,
    /// `stripe` or `dev`.
    pub provider: String,
    pub user_id: String,
    pub package_id: String,
    pub price_cents: i64,
    pub credits: i64,
    /// `open` or `completed`.
    pub status: String,
    pub success_url: String,
    pub cancel_url: String,
    pub created_at: i64,
    pub completed_at: Option<i64>,
}

/// A payout to a developer's Connect account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payout {
    pub id: String,
    pub developer_id: String,
    pub idempotency_key: String,
    pub stripe_account_id: String,
    pub amount_credits: i64,
    pub amount_cents: i64,
    pub covered_from: i64,
    pub covered_to: i64,
    /// `pending` (sent or about to be), `paid`, or `failed` (retried by the next batch).
    pub status: String,
    pub attempts: i64,
    pub failure_message: Option<String>,
    pub stripe_transfer_id: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub paid_at: Option<i64>,
}

fn session_from_row(r: &impl DbRow) -> CheckoutSession {
    CheckoutSession {
        id: r.get("id"),
        provider: r.get("provider"),
        user_id: r.get("user_id"),
        package_id: r.get("package_id"),
        price_cents: r.get("price_cents"),
        credits: r.get("credits"),
        status: r.get("status"),
        success_url: r.get("success_url"),
        cancel_url: r.get("cancel_url"),
        created_at: r.get("created_at"),
        completed_at: r.get("completed_at"),
    }
}

fn payout_from_row(r: &impl DbRow) -> Payout {
    Payout {
        id: r.get("id"),
        developer_id: r.get("developer_id"),
        idempotency_key: r.get("idempotency_key"),
        stripe_account_id: r.get("stripe_account_id"),
        amount_credits: r.get("amount_credits"),
        amount_cents: r.get("amount_cents"),
        covered_from: r.get("covered_from"),
        covered_to: r.get("covered_to"),
        status: r.get("status"),
        attempts: r.get("attempts"),
        failure_message: r.get("failure_message"),
        stripe_transfer_id: r.get("stripe_transfer_id"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
        paid_at: r.get("paid_at"),
    }
}

const PAYOUT_COLUMNS: &str = "id, developer_id, idempotency_key, stripe_account_id, amount_credits, amount_cents, \
     covered_from, covered_to, status, attempts, failure_message, stripe_transfer_id, created_at, updated_at, paid_at";

impl Store {
    pub async fn insert_checkout_session(&self, s: &CheckoutSession) -> Result<(), StoreError> {
        on_pool!(self.pool(), |p| {
            sqlx::query(
                "INSERT INTO checkout_sessions (id, provider, user_id, package_id, price_cents, credits, status, \
                 success_url, cancel_url, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&s.id)
            .bind(&s.provider)
            .bind(&s.user_id)
            .bind(&s.package_id)
            .bind(s.price_cents)
            .bind(s.credits)
            .bind(&s.status)
            .bind(&s.success_url)
            .bind(&s.cancel_url)
            .bind(s.created_at)
            .execute(p)
            .await?;
            Ok(())
        })
    }

    pub async fn checkout_session(&self, id: &str) -> Result<Option<CheckoutSession>, StoreError> {
        on_pool!(self.pool(), |p| {
            let row = sqlx::query("SELECT * FROM checkout_sessions WHERE id = $1").bind(id).fetch_optional(p).await?;
            Ok(row.as_ref().map(session_from_row))
        })
    }

    /// Mark a session completed (after its top-up transfer committed). Idempotent.
    pub async fn complete_checkout_session(&self, id: &str, event_id: &str, now_ms: i64) -> Result<(), StoreError> {
        on_pool!(self.pool(), |p| {
            sqlx::query(
                "UPDATE checkout_sessions SET status = 'completed', completed_at = $1, event_id = $2 \
                 WHERE id = $3 AND status = 'open'",
            )
            .bind(now_ms)
            .bind(event_id)
            .bind(id)
            .execute(p)
            .await?;
            Ok(())
        })
    }

    /// Whether a provider event was applied before.
    pub async fn stripe_event_seen(&self, id: &str) -> Result<bool, StoreError> {
        on_pool!(self.pool(), |p| {
            let row =
                sqlx::query("SELECT 1 AS one FROM stripe_events WHERE id = $1").bind(id).fetch_optional(p).await?;
            Ok(row.is_some())
        })
    }

    /// Record that a provider event was applied; `false` if it already was.
    pub async fn record_stripe_event(&self, id: &str, kind: &str, now_ms: i64) -> Result<bool, StoreError> {
        on_pool!(self.pool(), |p| {
            let done = sqlx::query(
                "INSERT INTO stripe_events (id, type, received_at) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
            )
            .bind(id)
            .bind(kind)
            .bind(now_ms)
            .execute(p)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    pub async fn connect_account(&self, developer_id: &str) -> Result<Option<String>, StoreError> {
        on_pool!(self.pool(), |p| {
            let row = sqlx::query("SELECT stripe_account_id FROM connect_accounts WHERE developer_id = $1")
                .bind(developer_id)
                .fetch_optional(p)
                .await?;
            Ok(row.map(|r| r.get("stripe_account_id")))
        })
    }

    /// Remember a developer's Connect account; if one was stored meanwhile, that one wins and is
    /// returned.
    pub async fn insert_connect_account(
        &self,
        developer_id: &str,
        stripe_account_id: &str,
        now_ms: i64,
    ) -> Result<String, StoreError> {
        on_pool!(self.pool(), |p| {
            sqlx::query(
                "INSERT INTO connect_accounts (developer_id, stripe_account_id, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (developer_id) DO NOTHING",
            )
            .bind(developer_id)
            .bind(stripe_account_id)
            .bind(now_ms)
            .execute(p)
            .await?;
            self.connect_account(developer_id).await?.ok_or(StoreError::NotFound)
        })
    }

    /// Every developer who has ever earned markup, in a stable order.
    pub async fn developers_with_earnings(&self) -> Result<Vec<String>, StoreError> {
        on_pool!(self.pool(), |p| {
            let rows = sqlx::query("SELECT DISTINCT to_account FROM transfers WHERE kind = $1 ORDER BY to_account")
                .bind(TransferKind::Markup.as_str())
                .fetch_all(p)
                .await?;
            Ok(rows
                .iter()
                .filter_map(|r| match r.get::<String>("to_account").parse::<AccountId>() {
                    Ok(AccountId::EarningsPending(d)) => Some(d),
                    _ => None,
                })
                .collect())
        })
    }

    /// Σ of `kind` transfers into `account` created at or before `until_ms`.
    pub async fn sum_transfers_to(
        &self,
        kind: TransferKind,
        account: &AccountId,
        until_ms: i64,
    ) -> Result<i64, StoreError> {
        on_pool!(self.pool(), |p| {
            let r = sqlx::query(
                "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) AS s FROM transfers WHERE kind = $1 AND to_account = $2 AND created_at <= $3",
            )
            .bind(kind.as_str())
            .bind(account.to_string())
            .bind(until_ms)
            .fetch_one(p)
            .await?;
            Ok(r.get("s"))
        })
    }

    /// Σ of `kind` transfers out of `account` (at any time).
    pub async fn sum_transfers_from(&self, kind: TransferKind, account: &AccountId) -> Result<i64, StoreError> {
        on_pool!(self.pool(), |p| {
            let r =
                sqlx::query("SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) AS s FROM transfers WHERE kind = $1 AND from_account = $2")
                    .bind(kind.as_str())
                    .bind(account.to_string())
                    .fetch_one(p)
                    .await?;
            Ok(r.get("s"))
        })
    }

    /// Insert a payout unless one starting at the same point exists; return the stored one.
    pub async fn claim_payout(&self, p: &Payout) -> Result<Payout, StoreError> {
        on_pool!(self.pool(), |db| {
            sqlx::query(
                "INSERT INTO payouts (id, developer_id, idempotency_key, stripe_account_id, amount_credits, amount_cents, \
                 covered_from, covered_to, status, attempts, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, $10, $10) ON CONFLICT DO NOTHING",
            )
            .bind(&p.id)
            .bind(&p.developer_id)
            .bind(&p.idempotency_key)
            .bind(&p.stripe_account_id)
            .bind(p.amount_credits)
            .bind(p.amount_cents)
            .bind(p.covered_from)
            .bind(p.covered_to)
            .bind(&p.status)
            .bind(p.created_at)
            .execute(db)
            .await?;
            let row = sqlx::query(&format!(
                "SELECT {PAYOUT_COLUMNS} FROM payouts WHERE developer_id = $1 AND covered_from = $2"
            ))
            .bind(&p.developer_id)
            .bind(p.covered_from)
            .fetch_one(db)
            .await?;
            Ok(payout_from_row(&row))
        })
    }

    /// Payouts not yet confirmed paid, oldest first.
    pub async fn unsettled_payouts(&self, developer_id: &str) -> Result<Vec<Payout>, StoreError> {
        on_pool!(self.pool(), |p| {
            let rows = sqlx::query(&format!(
                "SELECT {PAYOUT_COLUMNS} FROM payouts WHERE developer_id = $1 AND status <> 'paid' ORDER BY covered_from"
            ))
            .bind(developer_id)
            .fetch_all(p)
            .await?;
            Ok(rows.iter().map(payout_from_row).collect())
        })
    }

    /// A developer's payouts, newest first.
    pub async fn payouts_of(&self, developer_id: &str) -> Result<Vec<Payout>, StoreError> {
        on_pool!(self.pool(), |p| {
            let rows = sqlx::query(&format!(
                "SELECT {PAYOUT_COLUMNS} FROM payouts WHERE developer_id = $1 ORDER BY covered_from DESC"
            ))
            .bind(developer_id)
            .fetch_all(p)
            .await?;
            Ok(rows.iter().map(payout_from_row).collect())
        })
    }

    /// Record a confirmed payout (its ledger transfer and `payout.paid` event are already
    /// committed). Idempotent.
    pub async fn mark_payout_paid(&self, id: &str, stripe_transfer_id: &str, now_ms: i64) -> Result<(), StoreError> {
        on_pool!(self.pool(), |p| {
            sqlx::query(
                "UPDATE payouts SET status = 'paid', stripe_transfer_id = $1, attempts = attempts + 1, \
                 failure_message = NULL, updated_at = $2, paid_at = $2 WHERE id = $3 AND status <> 'paid'",
            )
            .bind(stripe_transfer_id)
            .bind(now_ms)
            .bind(id)
            .execute(p)
            .await?;
            Ok(())
        })
    }

    /// Record a failed attempt and its `payout.failed` event in one transaction. The money
    /// stays in transit; the next batch retries with the same idempotency key.
    pub async fn mark_payout_failed(
        &self,
        id: &str,
        message: &str,
        now_ms: i64,
        event: &OutboxEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        let done = on_tx!(&mut tx, |c| sqlx::query(
            "UPDATE payouts SET status = 'failed', attempts = attempts + 1, failure_message = $1, updated_at = $2 \
             WHERE id = $3 AND status <> 'paid'",
        )
        .bind(message)
        .bind(now_ms)
        .bind(id)
        .execute(&mut *c)
        .await?
        .rows_affected());
        if done == 1 {
            insert_events(&mut tx, std::slice::from_ref(event)).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Take the developer's payout lease for `holder` until `expires_at`, unless another
    /// holder's lease is still live. `true` when taken.
    pub async fn take_payout_lease(
        &self,
        developer_id: &str,
        holder: &str,
        now_ms: i64,
        expires_at: i64,
    ) -> Result<bool, StoreError> {
        on_pool!(self.pool(), |p| {
            let done = sqlx::query(
                "INSERT INTO payout_leases (developer_id, holder, expires_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (developer_id) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
                 WHERE payout_leases.expires_at < $4",
            )
            .bind(developer_id)
            .bind(holder)
            .bind(expires_at)
            .bind(now_ms)
            .execute(p)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Free a lease this holder took.
    pub async fn free_payout_lease(&self, developer_id: &str, holder: &str) -> Result<(), StoreError> {
        on_pool!(self.pool(), |p| {
            sqlx::query("DELETE FROM payout_leases WHERE developer_id = $1 AND holder = $2")
                .bind(developer_id)
                .bind(holder)
                .execute(p)
                .await?;
            Ok(())
        })
    }
}

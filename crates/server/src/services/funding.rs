//! Credits from a developer's wallet to a connected user's (SPEC §6): `POST
//! /v1/funding/oauth_user` and an app's welcome credits on a user's first connection. One
//! ledger transfer each, held first so the developer's wallet can never overdraw, with its
//! `balance.updated` event committed in the same transaction.

use crate::app::SharedState;
use crate::webhooks::EventKind;
use quota_core::{Credits, TransferKind};
use quota_store::ledger::Committed;
use quota_store::oauth::App;
use quota_store::{LedgerError, OutboxEvent};
use serde_json::json;

/// One developer → user movement.
pub struct Funding<'a> {
    pub developer_id: &'a str,
    pub user_id: &'a str,
    pub amount: Credits,
    pub kind: TransferKind,
    /// Idempotent: the same id never moves money twice.
    pub transfer_id: String,
    /// The request or event that caused it.
    pub cause: String,
    pub description: Option<&'a str>,
}

/// Commit a funding transfer and its `balance.updated` event (with the user's `new_balance`).
pub async fn fund_user(state: &SharedState, f: Funding<'_>) -> Result<Committed, LedgerError> {
    let now = state.clock.now_ms();
    let event = OutboxEvent::new(
        EventKind::BalanceUpdated.as_str(),
        f.developer_id,
        json!({
            "user_id": f.user_id,
            "amount": f.amount,
            "reason": f.kind.as_str(),
            "ledger_id": f.transfer_id,
            "description": f.description,
        }),
        now,
    );
    let transfer = quota_core::transfers::developer_to_user(
        f.kind,
        f.transfer_id,
        f.developer_id,
        f.user_id,
        f.amount,
        &f.cause,
        now,
    );
    // `new_balance` (the public docs' field, SPEC §14) is the user's balance right after.
    let update = quota_store::BalanceUpdate { account: quota_core::AccountId::wallet(f.user_id), event };
    state.ledger.transfer_with_balance_updates(transfer, vec![update]).await
}

/// An app's welcome credits for a user who connected: once per user and app (the transfer id
/// is derived from both), from the developer's wallet. If the developer cannot pay, the
/// connection still stands and the grant is skipped (logged) until the user's next approval.
pub async fn grant_app_welcome(state: &SharedState, app: &App, user_id: &str) {
    if app.welcome_credits <= 0 || user_id == app.developer_id {
        return;
    }
    let result = fund_user(
        state,
        Funding {
            developer_id: &app.developer_id,
            user_id,
            amount: Credits::new(app.welcome_credits),
            kind: TransferKind::AppWelcome,
            transfer_id: format!("ledg_appwelcome_{}_{}", app.id, user_id),
            cause: app.id.clone(),
            description: Some("welcome credits"),
        },
    )
    .await;
    match result {
        Ok(c) if c.duplicates == 0 => tracing::info!(app = %app.id, user = %user_id, "app welcome credits granted"),
        Ok(_) => {}
        Err(LedgerError::Insufficient { .. }) => {
            tracing::warn!(app = %app.id, user = %user_id, "app welcome credits skipped: the developer's wallet cannot pay")
        }
        Err(e) => tracing::error!(app = %app.id, error = %e, "app welcome credits failed"),
    }
}

//! The account as Quota's public documentation shows it (SPEC §14): `GET /account`, `PATCH
//! /account` (name, avatar, metadata), the account's `plan`, and the 30-day summary of
//! `GET /v1/me`. Sessions and user tokens with `account.read`/`account.write` reach these;
//! deciding which is the HTTP layer's. Not here: sign-up and sessions (`accounts`), JSON.

use crate::app::SharedState;
use crate::error::{internal, ApiError};
use quota_core::{AccountId, Credits};
use quota_store::profile::{Profile, ProfileChange};
use quota_store::usage::{PayerModelUsage, DAY_MS};
use quota_store::User;
use serde_json::Value;

const NAME_MAX_CHARS: usize = 100;
const AVATAR_URL_MAX_CHARS: usize = 2048;
/// Largest `user_metadata`, as JSON text.
const METADATA_MAX_BYTES: usize = 16 * 1024;
/// The window of `GET /v1/me`'s summary.
pub const SUMMARY_DAYS: i64 = 30;

/// An account's plan: `free` until it has paid for a top-up, then `paid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Free,
    Paid,
}

impl Plan {
    pub fn as_str(self) -> &'static str {
        match self {
            Plan::Free => "free",
            Plan::Paid => "paid",
        }
    }
}

/// The account's plan.
pub async fn plan(state: &SharedState, user_id: &str) -> Result<Plan, ApiError> {
    let paid = state.store.has_completed_checkout(user_id).await.map_err(internal("plan"))?;
    Ok(if paid { Plan::Paid } else { Plan::Free })
}

/// Everything `GET /account` shows.
pub struct AccountView {
    pub user: User,
    pub profile: Profile,
    pub balance: Credits,
    pub plan: Plan,
    /// A checkout was paid (a card was used); auto top-up does not exist yet.
    pub has_payment_method: bool,
}

/// The account's view.
pub async fn account(state: &SharedState, user_id: &str) -> Result<AccountView, ApiError> {
    let user = state
        .store
        .user_by_id(user_id)
        .await
        .map_err(internal("account"))?
        .ok_or_else(|| ApiError::invalid_api_key("the account behind this credential no longer exists"))?;
    let profile = state.store.profile(user_id).await.map_err(internal("profile"))?.unwrap_or_default();
    let balance = state.ledger.balance(&AccountId::wallet(user_id)).await.map_err(internal("balance"))?;
    let plan = plan(state, user_id).await?;
    Ok(AccountView { user, profile, balance, plan, has_payment_method: plan == Plan::Paid })
}

/// A `PATCH /account` body, checked: only `name`, `avatar_url` and `user_metadata`; `null`
/// clears the first two; `user_metadata` (an object) replaces the stored one whole.
pub fn parse_change(body: &Value) -> Result<ProfileChange, ApiError> {
    let Some(fields) = body.as_object() else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    let mut change = ProfileChange::default();
    for (field, value) in fields {
        match field.as_str() {
            "name" => change.name = Some(text(field, value, NAME_MAX_CHARS)?),
            "avatar_url" => {
                let url = text(field, value, AVATAR_URL_MAX_CHARS)?;
                if let Some(u) = &url {
                    let ok = url::Url::parse(u).is_ok_and(|p| matches!(p.scheme(), "http" | "https"));
                    if !ok {
                        return Err(ApiError::bad_request("avatar_url must be an http(s) URL"));
                    }
                }
                change.avatar_url = Some(url);
            }
            "user_metadata" => {
                if !value.is_object() {
                    return Err(ApiError::bad_request("user_metadata must be a JSON object"));
                }
                let text = value.to_string();
                if text.len() > METADATA_MAX_BYTES {
                    return Err(ApiError::bad_request(format!(
                        "user_metadata must be at most {METADATA_MAX_BYTES} bytes of JSON"
                    )));
                }
                change.user_metadata = Some(text);
            }
            other => {
                return Err(ApiError::bad_request(format!("unknown field `{other}`"))
                    .with_hint("PATCH /account sets name, avatar_url and user_metadata"))
            }
        }
    }
    Ok(change)
}

/// A string field of at most `max` characters, or `null`.
fn text(field: &str, value: &Value, max: usize) -> Result<Option<String>, ApiError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) if s.trim().chars().count() <= max => Ok(Some(s.trim().to_string()).filter(|s| !s.is_empty())),
        _ => Err(ApiError::bad_request(format!("{field} must be a string of at most {max} characters, or null"))),
    }
}

/// Apply a checked change; the account after.
pub async fn update(state: &SharedState, user_id: &str, change: &ProfileChange) -> Result<AccountView, ApiError> {
    state.store.update_profile(user_id, change).await.map_err(internal("update profile"))?;
    account(state, user_id).await
}

/// What the account's wallet paid over the last [`SUMMARY_DAYS`] days.
pub struct UsageSummary {
    pub from_ms: i64,
    pub to_ms: i64,
    pub requests: i64,
    pub tokens: i64,
    pub credits_spent: i64,
    pub by_model: Vec<PayerModelUsage>,
}

/// The summary of `GET /v1/me`: summed by the database per model (the records and the daily
/// aggregates), then totalled here.
pub async fn usage_summary(state: &SharedState, user_id: &str) -> Result<UsageSummary, ApiError> {
    let to_ms = state.clock.now_ms() + 1;
    let from_ms = to_ms - SUMMARY_DAYS * DAY_MS;
    let payer = AccountId::wallet(user_id).to_string();
    let by_model = state.store.payer_usage_by_model(&payer, from_ms, to_ms).await.map_err(internal("usage summary"))?;
    Ok(UsageSummary {
        from_ms,
        to_ms,
        requests: by_model.iter().map(|m| m.requests).sum(),
        tokens: by_model.iter().map(|m| m.tokens).sum(),
        credits_spent: by_model.iter().map(|m| m.credits).sum(),
        by_model,
    })
}

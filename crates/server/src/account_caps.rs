//! Per-account caps (SPEC §1): at most `max_api_keys_per_account` active API keys,
//! `max_apps_per_account` apps and `max_webhooks_per_account` webhook endpoints (100, 20, 20
//! by default). Creating one more is 403 `limit_reached`; the JSON routes call this, and the
//! dashboard calls those routes, so every way in is capped. Not here: the counts (`quota_store`).

use crate::app::SharedState;
use crate::error::{internal, ApiError};
use axum::http::StatusCode;
pub use quota_store::account_limits::Capped;

/// `Ok` if `user_id` may create one more of `what`.
pub async fn ensure_room(state: &SharedState, what: Capped, user_id: &str) -> Result<(), ApiError> {
    let (cap, noun) = match what {
        Capped::ApiKeys => (state.config.max_api_keys_per_account, "active API keys"),
        Capped::Apps => (state.config.max_apps_per_account, "apps"),
        Capped::WebhookEndpoints => (state.config.max_webhooks_per_account, "webhook endpoints"),
    };
    let have = state.store.count_owned(what, user_id).await.map_err(internal("count for cap"))?;
    if have >= i64::from(cap) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "limit_reached",
            format!("an account may have at most {cap} {noun}, and this one has {have}"),
        )
        .with_hint("delete (or revoke) one you no longer use, then try again"));
    }
    Ok(())
}

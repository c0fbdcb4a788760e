//! `/v1/models` (SPEC §3.4) and `/v1/balance` (SPEC §6).

use crate::app::SharedState;
use crate::auth::admit_with_scope;
use crate::error::{internal, ApiError};
use crate::gateway::limit;
use crate::oauth::Scope;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use quota_core::BillingMode;
use serde_json::{json, Value};

/// Credits per 1M tokens → USD per 1K tokens, as an exact decimal string.
/// (credits/1M tokens) × 1000 / 1e6 credits per USD = credits / 1e9 USD per 1K tokens.
pub fn usd_per_1k(credits_per_million: u64) -> String {
    let int = credits_per_million / 1_000_000_000;
    let frac = credits_per_million % 1_000_000_000;
    if frac == 0 {
        return int.to_string();
    }
    format!("{int}.{frac:09}").trim_end_matches('0').to_string()
}

#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "reporting",
    summary = "Models and prices (USD per 1K tokens)",
    responses(
        (status = 200, description = "OpenAI's list shape", body = crate::openapi::schemas::ModelList),
        crate::openapi::KeyErrors,
    ),
    security(("apiKey" = []), ("apiKeyHeader" = []), ("userToken" = []))
)]
pub async fn models(State(state): State<SharedState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let principal = admit_with_scope(&state, &headers, Scope::CreditsRead).await?;
    let limited = limit(&state, &principal).await?;
    let data: Vec<Value> = state
        .catalog
        .iter()
        .map(|m| {
            json!({
                "id": m.id,
                "object": "model",
                "created": m.price_changed_at,
                "owned_by": m.provider.as_str(),
                "context_window": m.context_window,
                "max_output_tokens": m.max_output_tokens,
                "pricing": {
                    "prompt_per_1k_tokens": usd_per_1k(m.price.base.input),
                    "completion_per_1k_tokens": usd_per_1k(m.price.base.output),
                    "cached_prompt_per_1k_tokens": usd_per_1k(m.price.base.cached_input),
                },
            })
        })
        .collect();
    Ok(limited.apply(Json(json!({"object": "list", "data": data})).into_response()))
}

/// `GET /v1/balance` (SPEC §6, §14): the payer's wallet — the developer's for keys, the user's
/// (`wallet: "oauth_user"`) for user tokens — and the wallet owner's `plan`.
#[utoipa::path(
    get,
    path = "/v1/balance",
    tag = "reporting",
    summary = "The paying wallet's balance",
    responses(
        (status = 200, description = "the balance", body = crate::openapi::schemas::Balance),
        crate::openapi::KeyErrors,
    ),
    security(("apiKey" = []), ("apiKeyHeader" = []), ("userToken" = []))
)]
pub async fn balance(State(state): State<SharedState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let p = admit_with_scope(&state, &headers, Scope::CreditsRead).await?;
    let limited = limit(&state, &p).await?;
    let balance = state.ledger.balance(&p.payer).await.map_err(internal("balance"))?;
    let body = match (&p.user_id, p.mode) {
        (Some(user), BillingMode::User) => {
            let plan = crate::services::profile::plan(&state, user).await?;
            json!({"wallet": "oauth_user", "balance": balance, "plan": plan.as_str(), "user_id": user, "billing_mode": p.mode})
        }
        // `developer_balance` is the public docs' name for the same number (SPEC §14).
        _ => {
            let plan = crate::services::profile::plan(&state, &p.developer_id).await?;
            json!({
                "wallet": "developer",
                "balance": balance,
                "developer_balance": balance,
                "plan": plan.as_str(),
                "user_id": p.developer_id,
                "billing_mode": p.mode,
            })
        }
    };
    Ok(limited.apply(Json(body).into_response()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn prices_convert_exactly() {
        assert_eq!(super::usd_per_1k(150_000), "0.00015");
        assert_eq!(super::usd_per_1k(2_500_000), "0.0025");
        assert_eq!(super::usd_per_1k(312_500), "0.0003125");
        assert_eq!(super::usd_per_1k(0), "0");
    }
}

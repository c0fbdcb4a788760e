//! `POST /v1/funding/oauth_user` (SPEC §6): a developer moves credits from their wallet to a
//! user connected to one of their apps, with `Idempotency-Key` (SPEC §0). Sandbox keys may not
//! move real credits (403).

use crate::app::SharedState;
use crate::auth::{admit_key, api_key_secret};
use crate::body::RawBody;
use crate::error::{internal, ApiError};
use crate::gateway::idempotency::{self, Begin};
use crate::request_id::RequestId;
use crate::services::funding::{fund_user, Funding};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use quota_core::{AccountId, BillingMode, Credits, TransferKind};
use quota_store::LedgerError;
use serde::Deserialize;
use serde_json::json;

/// Largest single funding: $1,000,000.
const FUNDING_MAX: Credits = Credits::new(1_000_000_000_000);
const DESCRIPTION_MAX_CHARS: usize = 500;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct FundUser {
    user_id: String,
    /// Credits, from 1 to 1,000,000,000,000.
    amount: i64,
    /// At most 500 characters.
    description: Option<String>,
}

#[utoipa::path(
    post,
    path = "/v1/funding/oauth_user",
    tag = "apps",
    summary = "Move credits from the developer's wallet to a user connected to one of their apps",
    request_body = FundUser,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$", description = "At most 255 characters; the same key and body within 24 h answer the first response again (SPEC §0)")),
    responses(
        (status = 200, description = "moved", body = crate::openapi::schemas::FundingResult),
        (status = 400, description = "`bad_request`", body = crate::openapi::schemas::ErrorBody),
        (status = 401, description = "`invalid_api_key`", body = crate::openapi::schemas::ErrorBody),
        (status = 402, description = "`insufficient_credits`", body = crate::openapi::schemas::ErrorBody),
        (status = 403, description = "`forbidden`: sandbox (test) keys cannot move real credits", body = crate::openapi::schemas::ErrorBody),
        (status = 404, description = "`user_not_found`: not connected to any of your apps", body = crate::openapi::schemas::ErrorBody),
        (status = 409, description = "`idempotency_conflict`", body = crate::openapi::schemas::ErrorBody),
        crate::openapi::Errors,
    ),
    security(("apiKey" = []), ("apiKeyHeader" = []))
)]
pub async fn fund_oauth_user(
    State(state): State<SharedState>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let key = admit_key(&state, api_key_secret(&headers)).await?;
    if key.billing_mode == BillingMode::Test {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "sandbox (test) keys cannot move real credits")
            .with_hint("use a developer or user key"));
    }
    let req: FundUser = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(quota_providers::openai::describe_json_error(&e)))?;
    if req.amount <= 0 || req.amount > FUNDING_MAX.get() {
        return Err(ApiError::bad_request(format!(
            "amount must be a whole number of credits from 1 to {}",
            FUNDING_MAX.get()
        )));
    }
    if req.description.as_ref().is_some_and(|d| d.chars().count() > DESCRIPTION_MAX_CHARS) {
        return Err(ApiError::bad_request(format!("description must be at most {DESCRIPTION_MAX_CHARS} characters")));
    }
    let developer = key.user_id.clone();
    if req.user_id == developer {
        return Err(ApiError::bad_request("user_id is your own account; fund a user connected to your apps"));
    }
    let claim =
        match idempotency::begin(&state, &headers, format!("funding:{developer}"), &[b"/v1/funding/oauth_user", &body])
            .await?
        {
            Begin::Replay(resp) => return Ok(resp),
            Begin::Claimed(c) => Some(c),
            Begin::None => None,
        };
    let connected = state.store.connected_to_developer(&req.user_id, &developer).await.map_err(internal("funding"))?;
    if !connected {
        if let Some(c) = claim {
            c.abandon().await;
        }
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "user_not_found",
            "no user with this id is connected to any of your apps",
        ));
    }
    let transfer_id = claim.as_ref().map(|c| c.charge_id()).unwrap_or_else(|| quota_core::ids::new_id("ledg_"));
    let funding = Funding {
        developer_id: &developer,
        user_id: &req.user_id,
        amount: Credits::new(req.amount),
        kind: TransferKind::Funding,
        transfer_id: transfer_id.clone(),
        cause: request_id,
        description: req.description.as_deref(),
    };
    let committed = match fund_user(&state, funding).await {
        Ok(c) => c,
        Err(e) => {
            if let Some(c) = claim {
                c.abandon().await;
            }
            return Err(match e {
                LedgerError::Insufficient { available, needed } => {
                    ApiError::insufficient_credits(available.get(), needed.get()).with_hint("top up your wallet first")
                }
                other => internal("funding")(other),
            });
        }
    };
    if committed.duplicates > 0 {
        if let Some(c) = claim {
            c.keep();
        }
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_conflict",
            "this Idempotency-Key's funding was made, but its response was lost when the gateway stopped",
        )
        .with_hint("the funding stands and will not be repeated"));
    }
    let wallet = AccountId::wallet(&req.user_id);
    let balance_after = match committed.balance_of(&wallet) {
        Some(b) => b,
        None => state.ledger.balance(&wallet).await.map_err(internal("balance"))?,
    };
    let out = json!({
        "success": true,
        "user_id": req.user_id,
        "amount": req.amount,
        "balance_after": balance_after,
        "ledger_id": transfer_id,
    });
    let bytes = serde_json::to_vec(&out).map_err(internal("serialize"))?;
    if let Some(c) = claim {
        c.complete(200, "application/json", bytes.clone()).await;
    }
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], bytes).into_response())
}

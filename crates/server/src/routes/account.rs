//! The account surface of Quota's public documentation (SPEC §14): `GET /account`, `PATCH
//! /account` (a session, or a user token with `account.read` / `account.write`) and `GET
//! /v1/me` (a key, or a user token with `account.read`). Thin: the caller, then
//! [`crate::services::profile`].

use crate::app::SharedState;
use crate::auth::{admit_with_scope, AccountHolder, AccountRead, AccountWrite};
use crate::body::JsonBody;
use crate::error::ApiError;
use crate::gateway::limit;
use crate::oauth::Scope;
use crate::services::profile::{self, AccountView, UsageSummary};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use quota_store::clock::rfc3339;
use serde_json::{json, Value};

/// The account's fields, as `GET /account` and `GET /v1/me` show them.
fn account_json(a: &AccountView) -> Value {
    let metadata: Value = serde_json::from_str(&a.profile.user_metadata).unwrap_or_else(|_| json!({}));
    json!({
        "id": a.user.id,
        "email": a.user.email,
        "balance": a.balance,
        "plan": a.plan.as_str(),
        "created_at": rfc3339(a.user.created_at),
        "name": a.profile.name,
        "avatar_url": a.profile.avatar_url,
        "user_metadata": metadata,
        "linked_providers": [],
        "billing": {
            "has_payment_method": a.has_payment_method,
            "auto_topoff_enabled": false,
            "auto_topoff_threshold": 0,
            "auto_topoff_amount": 0,
        },
    })
}

#[utoipa::path(
    get,
    path = "/account",
    tag = "accounts",
    summary = "The signed-in account (SPEC §14)",
    responses(
        (status = 200, description = "the account", body = crate::openapi::schemas::AccountProfile),
        crate::openapi::SessionErrors,
    ),
    security(("session" = []), ("sessionCookie" = []), ("userToken" = []))
)]
pub async fn get(
    State(state): State<SharedState>,
    holder: AccountHolder<AccountRead>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(account_json(&profile::account(&state, &holder.user_id).await?)))
}

#[utoipa::path(
    patch,
    path = "/account",
    tag = "accounts",
    summary = "Change the account's profile fields (SPEC §14)",
    request_body = crate::openapi::schemas::AccountPatch,
    responses(
        (status = 200, description = "the account, changed", body = crate::openapi::schemas::AccountProfile),
        (status = 400, description = "`bad_request`", body = crate::openapi::schemas::ErrorBody),
        crate::openapi::SessionErrors,
    ),
    security(("session" = []), ("sessionCookie" = []), ("userToken" = []))
)]
pub async fn patch(
    State(state): State<SharedState>,
    holder: AccountHolder<AccountWrite>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Json<Value>, ApiError> {
    let change = profile::parse_change(&body)?;
    Ok(Json(account_json(&profile::update(&state, &holder.user_id, &change).await?)))
}

fn summary_json(s: &UsageSummary) -> Value {
    let by_model: Vec<Value> = s
        .by_model
        .iter()
        .map(|m| json!({"model": m.model, "requests": m.requests, "tokens": m.tokens, "credits_spent": m.credits}))
        .collect();
    json!({
        "period": {"start": rfc3339(s.from_ms), "end": rfc3339(s.to_ms), "days": profile::SUMMARY_DAYS},
        "requests": s.requests,
        "tokens": s.tokens,
        "credits_spent": s.credits_spent,
        "by_model": by_model,
    })
}

#[utoipa::path(
    get,
    path = "/v1/me",
    tag = "accounts",
    summary = "The calling account and its last 30 days of usage (SPEC §14)",
    responses(
        (status = 200, description = "the account and its usage", body = crate::openapi::schemas::Me),
        crate::openapi::KeyErrors,
    ),
    security(("apiKey" = []), ("apiKeyHeader" = []), ("userToken" = []))
)]
/// `GET /v1/me`: the calling account (the key's owner, or the token's user) and what its wallet
/// paid over the last 30 days.
pub async fn me(State(state): State<SharedState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let p = admit_with_scope(&state, &headers, Scope::AccountRead).await?;
    let limited = limit(&state, &p).await?;
    let account_id = p.user_id.clone().unwrap_or_else(|| p.developer_id.clone());
    let account = profile::account(&state, &account_id).await?;
    let summary = profile::usage_summary(&state, &account_id).await?;
    let mut body = account_json(&account);
    body["billing_mode"] = json!(p.mode);
    body["usage"] = summary_json(&summary);
    Ok(limited.apply(Json(body).into_response()))
}

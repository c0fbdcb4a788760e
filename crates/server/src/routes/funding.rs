//! Funding a connected user from the developer's wallet (SPEC §6, §14), with `Idempotency-Key`
//! (SPEC §0): `POST /v1/funding/oauth_user {user_id, amount, description?}` and the public
//! docs' older `POST /v1/funding/credit {external_user_id | user_id, amount}`. Both are one
//! transfer ([`fund_user`]) under one idempotency space (`funding:<developer>`, the same
//! transfer id for the same key): a key used on one route and sent to the other is a
//! different request, so 409 `idempotency_conflict` — never a second transfer. Sandbox keys
//! may not move real credits (403).

use crate::app::SharedState;
use crate::auth::{admit_key, api_key_secret};
use crate::body::RawBody;
use crate::error::{internal, ApiError};
use crate::gateway::idempotency::{self, Begin, Claim};
use crate::request_id::RequestId;
use crate::services::funding::{fund_user, Funding};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use quota_core::{AccountId, BillingMode, Credits, TransferKind};
use quota_store::LedgerError;
use serde::Deserialize;
use serde_json::{json, Value};

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

/// `/v1/funding/credit`'s body: Quota has no external ids of its own, so `external_user_id`
/// is the user's Quota id (their OIDC `sub`), like `user_id`. `idempotency_key` in the body is
/// the older docs' form of the `Idempotency-Key` header (the header wins).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreditUser {
    user_id: Option<String>,
    external_user_id: Option<String>,
    amount: i64,
    description: Option<String>,
    idempotency_key: Option<String>,
}

/// A funding request, checked, as both routes make it.
struct FundingRequest<'a> {
    route: &'static str,
    headers: &'a HeaderMap,
    body: &'a [u8],
    request_id: String,
    user_id: String,
    amount: i64,
    description: Option<String>,
}

/// A committed funding: the user's balance after it, and the claim to complete with the answer.
struct Funded {
    transfer_id: String,
    balance_after: Credits,
    claim: Option<Claim>,
}

enum Outcome {
    Replay(Response),
    Funded(Funded),
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
        crate::openapi::FundingErrors,
    ),
    security(("apiKey" = []), ("apiKeyHeader" = []))
)]
pub async fn fund_oauth_user(
    State(state): State<SharedState>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let developer = funding_developer(&state, &headers).await?;
    let req: FundUser = parse(&body)?;
    let request = FundingRequest {
        route: "/v1/funding/oauth_user",
        headers: &headers,
        body: &body,
        request_id,
        user_id: req.user_id,
        amount: req.amount,
        description: req.description,
    };
    fund_and_answer(&state, &developer, request, |r, f| {
        json!({
            "success": true,
            "user_id": r.user_id,
            "amount": r.amount,
            "balance_after": f.balance_after,
            "ledger_id": f.transfer_id,
        })
    })
    .await
}

#[utoipa::path(
    post,
    path = "/v1/funding/credit",
    tag = "apps",
    summary = "The public docs' funding call: credits from the developer's wallet to a connected user",
    request_body = crate::openapi::schemas::FundingCreditRequest,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$", description = "Shared with /v1/funding/oauth_user: the same key and body answer the first response again (SPEC §0)")),
    responses(
        (status = 200, description = "moved", body = crate::openapi::schemas::FundingCreditResult),
        crate::openapi::FundingErrors,
    ),
    security(("apiKey" = []), ("apiKeyHeader" = []))
)]
pub async fn fund_credit(
    State(state): State<SharedState>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    mut headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let developer = funding_developer(&state, &headers).await?;
    let req: CreditUser = parse(&body)?;
    let user_id = match (req.user_id, req.external_user_id) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::bad_request("user_id and external_user_id name different users; send one"))
        }
        (Some(id), _) | (None, Some(id)) => id,
        (None, None) => return Err(ApiError::bad_request("missing field `user_id` (or `external_user_id`)")),
    };
    if let Some(key) = req.idempotency_key.filter(|_| !headers.contains_key("idempotency-key")) {
        let value = HeaderValue::from_str(&key)
            .map_err(|_| ApiError::bad_request("idempotency_key must be visible ASCII characters"))?;
        headers.insert("idempotency-key", value);
    }
    let request = FundingRequest {
        route: "/v1/funding/credit",
        headers: &headers,
        body: &body,
        request_id,
        user_id,
        amount: req.amount,
        description: req.description,
    };
    // `ledger_id` is ours, beside the documented four (SPEC §14).
    fund_and_answer(&state, &developer, request, |r, f| {
        json!({
            "success": true,
            "user_id": r.user_id,
            "new_balance": f.balance_after,
            "amount_added": r.amount,
            "ledger_id": f.transfer_id,
        })
    })
    .await
}

/// Fund, then answer with `shape`'s JSON (stored for the key's replays), or replay.
async fn fund_and_answer(
    state: &SharedState,
    developer: &str,
    request: FundingRequest<'_>,
    shape: impl FnOnce(&Checked, &Funded) -> Value,
) -> Result<Response, ApiError> {
    let checked = Checked { user_id: request.user_id.clone(), amount: request.amount };
    match fund(state, developer, request).await? {
        Outcome::Replay(resp) => Ok(resp),
        Outcome::Funded(mut f) => {
            let out = shape(&checked, &f);
            answer(f.claim.take(), &out).await
        }
    }
}

/// Who was funded, and by how much, for the answer.
struct Checked {
    user_id: String,
    amount: i64,
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(quota_providers::openai::describe_json_error(&e)))
}

/// The developer whose key funds (never a sandbox key).
async fn funding_developer(state: &SharedState, headers: &HeaderMap) -> Result<String, ApiError> {
    let key = admit_key(state, api_key_secret(headers)).await?;
    if key.billing_mode == BillingMode::Test {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "sandbox (test) keys cannot move real credits")
            .with_hint("use a developer or user key"));
    }
    Ok(key.user_id.clone())
}

fn check(developer: &str, req: &FundingRequest<'_>) -> Result<(), ApiError> {
    if req.amount <= 0 || req.amount > FUNDING_MAX.get() {
        return Err(ApiError::bad_request(format!(
            "amount must be a whole number of credits from 1 to {}",
            FUNDING_MAX.get()
        )));
    }
    if req.description.as_ref().is_some_and(|d| d.chars().count() > DESCRIPTION_MAX_CHARS) {
        return Err(ApiError::bad_request(format!("description must be at most {DESCRIPTION_MAX_CHARS} characters")));
    }
    if req.user_id == developer {
        return Err(ApiError::bad_request("user_id is your own account; fund a user connected to your apps"));
    }
    Ok(())
}

/// Claim the idempotency key, check the user is connected, commit the transfer.
async fn fund(state: &SharedState, developer: &str, req: FundingRequest<'_>) -> Result<Outcome, ApiError> {
    check(developer, &req)?;
    let identity: [&[u8]; 2] = [req.route.as_bytes(), req.body];
    let claim = match idempotency::begin(state, req.headers, format!("funding:{developer}"), &identity).await? {
        Begin::Replay(resp) => return Ok(Outcome::Replay(resp)),
        Begin::Claimed(c) => Some(c),
        Begin::None => None,
    };
    let abandon = |claim: Option<Claim>| async move {
        if let Some(c) = claim {
            c.abandon().await;
        }
    };
    let connected = state.store.connected_to_developer(&req.user_id, developer).await.map_err(internal("funding"))?;
    if !connected {
        abandon(claim).await;
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "user_not_found",
            "no user with this id is connected to any of your apps",
        ));
    }
    let transfer_id = claim.as_ref().map(|c| c.charge_id()).unwrap_or_else(|| quota_core::ids::new_id("ledg_"));
    let funding = Funding {
        developer_id: developer,
        user_id: &req.user_id,
        amount: Credits::new(req.amount),
        kind: TransferKind::Funding,
        transfer_id: transfer_id.clone(),
        cause: req.request_id,
        description: req.description.as_deref(),
    };
    let committed = match fund_user(state, funding).await {
        Ok(c) => c,
        Err(e) => {
            abandon(claim).await;
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
    Ok(Outcome::Funded(Funded { transfer_id, balance_after, claim }))
}

/// The JSON answer, stored for the key's replays.
async fn answer(claim: Option<Claim>, out: &Value) -> Result<Response, ApiError> {
    let bytes = serde_json::to_vec(out).map_err(internal("serialize"))?;
    if let Some(c) = claim {
        c.complete(200, "application/json", bytes.clone()).await;
    }
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], bytes).into_response())
}

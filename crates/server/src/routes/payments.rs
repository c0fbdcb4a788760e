//! Payment and payout routes (SPEC §10), thin: who pays (session, user token or key), then
//! [`crate::services::payments`], then the JSON answer.
//!
//! * `GET /v1/packages` (no auth), `POST /api/payments/checkout` (session, user token with
//!   `account.write`, or API key — the caller's own wallet is topped up);
//! * `POST /webhooks/stripe` (Stripe-signed; credits `checkout.session.completed` once);
//! * `GET|POST /payments/dev/checkout/{id}` (the dev provider's page);
//! * `POST /developers/connect/onboard|refresh`, `GET /developers/earnings|payouts` (session).

use crate::app::SharedState;
use crate::auth::{admit_key, api_key_secret, cookie, require_scope, session_user, user_access_token, SessionUser};
use crate::auth::{SESSION_COOKIE, SESSION_PREFIX, USER_TOKEN_PREFIX};
use crate::body::{JsonBody, RawBody};
use crate::error::ApiError;
use crate::oauth::pages::escape;
use crate::oauth::Scope;
use crate::payments::stripe::{verify_signature, SIGNATURE_TOLERANCE_SECS};
use crate::payments::{provider, Provider};
use crate::routes::PageQuery;
use crate::services::payments::{self as service, CheckoutStart, Onboarding, StripeOutcome};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use quota_store::clock::rfc3339;
use serde::Deserialize;
use serde_json::{json, Value};

/// `GET /v1/packages`.
#[utoipa::path(
    get,
    path = "/v1/packages",
    tag = "payments",
    summary = "The credit packages on sale",
    responses(
        (status = 200, description = "the packages", body = crate::openapi::schemas::PackageList),
        crate::openapi::Errors,
    ),
    security(())
)]
pub async fn packages(State(state): State<SharedState>) -> Json<Value> {
    let data: Vec<Value> = state
        .config
        .packages
        .iter()
        .map(|p| {
            json!({"id": p.id, "name": p.name, "price_cents": p.price_cents, "currency": "usd", "credits": p.credits})
        })
        .collect();
    Json(json!({"data": data}))
}

/// The wallet a checkout tops up: a session's user, a user token's user (needs
/// `account.write`), or an API key's owner.
async fn checkout_payer(state: &SharedState, headers: &HeaderMap) -> Result<String, ApiError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    let session = match bearer {
        Some(b) if b.starts_with(SESSION_PREFIX) => Some(b),
        None if api_key_secret(headers).is_none() => cookie(headers, SESSION_COOKIE),
        _ => None,
    };
    if let Some(token) = session {
        let user = session_user(state, token)
            .await?
            .ok_or_else(|| ApiError::invalid_api_key("unknown, expired or revoked session"))?;
        return Ok(user.user.id);
    }
    if let Some(token) = bearer.filter(|b| b.starts_with(USER_TOKEN_PREFIX)) {
        let grant = user_access_token(state, token).await?;
        require_scope(&grant, Scope::AccountWrite)?;
        return Ok(grant.user_id.clone());
    }
    Ok(admit_key(state, api_key_secret(headers)).await?.user_id.clone())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutBody {
    package_id: String,
    success_url: String,
    cancel_url: String,
}

/// `POST /api/payments/checkout` → `{checkout_url, session_id}`.
#[utoipa::path(
    post,
    path = "/api/payments/checkout",
    tag = "payments",
    summary = "Start a checkout that tops up the caller's own wallet",
    request_body = CheckoutBody,
    responses(
        (status = 201, description = "where to send the buyer", body = crate::openapi::schemas::CheckoutStarted),
        (status = 403, description = "`insufficient_scope`: a user token without `account.write`", body = crate::openapi::schemas::ErrorBody),
        (status = 404, description = "`not_found`: no such package", body = crate::openapi::schemas::ErrorBody),
        (status = 503, description = "`provider_unavailable`: no payment provider is configured", body = crate::openapi::schemas::ErrorBody),
        crate::openapi::SessionErrors,
    ),
    security(("session" = []), ("sessionCookie" = []), ("userToken" = []), ("apiKey" = []), ("apiKeyHeader" = []))
)]
pub async fn checkout(
    State(state): State<SharedState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CheckoutBody>,
) -> Result<Response, ApiError> {
    let user_id = checkout_payer(&state, &headers).await?;
    let base_url = crate::oauth::issuer(&state.config, &headers);
    let start = CheckoutStart {
        user_id: &user_id,
        package_id: &body.package_id,
        success_url: &body.success_url,
        cancel_url: &body.cancel_url,
        base_url: &base_url,
    };
    let c = service::checkout(&state, start).await?;
    Ok((StatusCode::CREATED, Json(json!({"checkout_url": c.checkout_url, "session_id": c.session_id}))).into_response())
}

/// `POST /webhooks/stripe`: verify, then apply each event at most once.
#[utoipa::path(
    post,
    path = "/webhooks/stripe",
    tag = "payments",
    summary = "Stripe's events, signed (`Stripe-Signature`); each applied at most once",
    request_body(content = Object, description = "a Stripe event"),
    params(("Stripe-Signature" = Option<String>, Header, description = "`t=…,v1=…`")),
    responses(
        (status = 200, description = "received", body = crate::openapi::schemas::StripeReceived),
        (status = 400, description = "`bad_request`: a missing or wrong signature, or not JSON", body = crate::openapi::schemas::ErrorBody),
        (status = 404, description = "`not_found`: Stripe is not the configured provider", body = crate::openapi::schemas::ErrorBody),
        crate::openapi::Errors,
    ),
    security(())
)]
pub async fn stripe_webhook(
    State(state): State<SharedState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Json<Value>, ApiError> {
    let Provider::Stripe { webhook_secret, .. } = provider(&state)? else {
        return Err(ApiError::not_found("Stripe webhooks (the dev payment provider is configured)"));
    };
    let signature = headers.get("stripe-signature").and_then(|v| v.to_str().ok());
    let now_secs = state.clock.now_ms().div_euclid(1000);
    verify_signature(signature, &body, webhook_secret, now_secs, SIGNATURE_TOLERANCE_SECS).map_err(|e| {
        tracing::warn!(error = %e, "stripe webhook refused");
        ApiError::bad_request(format!("invalid Stripe-Signature: {e}"))
    })?;
    let event: Value = serde_json::from_slice(&body).map_err(|_| ApiError::bad_request("event is not JSON"))?;
    Ok(Json(match service::stripe_event(&state, &event).await? {
        StripeOutcome::Duplicate => json!({"received": true, "duplicate": true}),
        StripeOutcome::Applied(applied) => json!({"received": true, "applied": applied}),
    }))
}

/// `GET /payments/dev/checkout/{id}`: the dev provider's checkout page.
#[utoipa::path(
    get,
    path = "/payments/dev/checkout/{id}",
    tag = "payments",
    summary = "The dev provider's checkout page (HTML)",
    params(("id" = String, Path, description = "the checkout session id")),
    responses(
        (status = 200, description = "the page", body = String, content_type = "text/html"),
        (status = 404, description = "`not_found`", body = crate::openapi::schemas::ErrorBody),
        crate::openapi::Errors,
    ),
    security(())
)]
pub async fn dev_checkout_page(State(state): State<SharedState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let session = service::dev_session(&state, &id).await?;
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>Quota dev checkout</title></head><body><h1>Dev checkout</h1>\
         <p>Package <b>{}</b>: pay {} for {} credits. No money moves: this is the <code>dev</code> provider.</p>\
         <form method=\"post\"><button type=\"submit\">Pay now</button></form>\
         <p><a href=\"{}\">Cancel</a></p></body></html>",
        escape(&session.package_id),
        quota_core::credits::cents_to_usd(session.price_cents),
        session.credits,
        escape(&session.cancel_url),
    );
    // Not frameable, no script, not cached: it is a form that moves credits.
    Ok(super::oauth::html(StatusCode::OK, html, None))
}

/// `POST /payments/dev/checkout/{id}`: "pay" at once, then go to the success URL.
#[utoipa::path(
    post,
    path = "/payments/dev/checkout/{id}",
    tag = "payments",
    summary = "Pay a dev checkout at once (no money moves), then go to its success URL",
    params(("id" = String, Path, description = "the checkout session id")),
    responses(
        (status = 303, description = "to the success URL"),
        (status = 404, description = "`not_found`", body = crate::openapi::schemas::ErrorBody),
        crate::openapi::Errors,
    ),
    security(())
)]
pub async fn dev_checkout_pay(State(state): State<SharedState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let s = service::dev_pay(&state, &id).await?;
    Ok(Redirect::to(&s.success_url).into_response())
}

fn onboarding_json(o: &Onboarding) -> Value {
    json!({"onboarding_url": o.url, "stripe_account_id": o.stripe_account_id})
}

/// `POST /developers/connect/onboard` → `{onboarding_url, stripe_account_id}`.
#[utoipa::path(
    post,
    path = "/developers/connect/onboard",
    tag = "payments",
    summary = "Start payout onboarding (a connected account)",
    responses(
        (status = 200, description = "where to onboard", body = crate::openapi::schemas::Onboarding),
        (status = 503, description = "`provider_unavailable`", body = crate::openapi::schemas::ErrorBody),
        crate::openapi::SessionErrors,
    ),
    security(("session" = []), ("sessionCookie" = []))
)]
pub async fn connect_onboard(
    State(state): State<SharedState>,
    headers: HeaderMap,
    user: SessionUser,
) -> Result<Json<Value>, ApiError> {
    let base_url = crate::oauth::issuer(&state.config, &headers);
    let o = service::connect_onboard(&state, &user.user.id, &user.user.email, &base_url).await?;
    Ok(Json(onboarding_json(&o)))
}

/// `POST /developers/connect/refresh`: a new onboarding link for the existing account.
#[utoipa::path(
    post,
    path = "/developers/connect/refresh",
    tag = "payments",
    summary = "A new onboarding link for the existing connected account",
    responses(
        (status = 200, description = "where to onboard", body = crate::openapi::schemas::Onboarding),
        (status = 503, description = "`provider_unavailable`", body = crate::openapi::schemas::ErrorBody),
        crate::openapi::SessionErrors,
    ),
    security(("session" = []), ("sessionCookie" = []))
)]
pub async fn connect_refresh(
    State(state): State<SharedState>,
    headers: HeaderMap,
    user: SessionUser,
) -> Result<Json<Value>, ApiError> {
    let base_url = crate::oauth::issuer(&state.config, &headers);
    Ok(Json(onboarding_json(&service::connect_refresh(&state, &user.user.id, &base_url).await?)))
}

/// `GET /developers/earnings`: the developer's earnings accounts, straight from the ledger.
#[utoipa::path(
    get,
    path = "/developers/earnings",
    tag = "payments",
    summary = "The developer's earnings accounts, from the ledger",
    responses(
        (status = 200, description = "the earnings", body = crate::openapi::schemas::Earnings),
        crate::openapi::SessionErrors,
    ),
    security(("session" = []), ("sessionCookie" = []))
)]
pub async fn earnings(State(state): State<SharedState>, user: SessionUser) -> Result<Json<Value>, ApiError> {
    let e = service::earnings(&state, &user.user.id).await?;
    Ok(Json(json!({
        "currency": "credits",
        "total_earned": e.total_earned,
        "pending": e.pending,
        "pending_eligible": e.pending_eligible,
        "available": e.available,
        "reserve": e.reserve,
        "in_transit": e.in_transit,
        "paid": e.paid,
        "minimum_payout": e.minimum_payout,
        "stripe_account_id": e.stripe_account_id,
    })))
}

/// `GET /developers/payouts`: newest first, paginated.
#[utoipa::path(
    get,
    path = "/developers/payouts",
    tag = "payments",
    summary = "Payouts, newest first",
    params(crate::routes::PageQuery),
    responses(
        (status = 200, description = "a page of payouts", body = crate::openapi::schemas::Page<crate::openapi::schemas::Payout>),
        crate::openapi::SessionErrors,
    ),
    security(("session" = []), ("sessionCookie" = []))
)]
pub async fn payouts(
    State(state): State<SharedState>,
    user: SessionUser,
    Query(page): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let rows = service::payouts(&state, &user.user.id).await?;
    page.json(rows, |p| {
        json!({
            "id": p.id,
            "status": p.status,
            "amount": p.amount_credits,
            "amount_cents": p.amount_cents,
            "currency": "usd",
            "stripe_account_id": p.stripe_account_id,
            "stripe_transfer_id": p.stripe_transfer_id,
            "idempotency_key": p.idempotency_key,
            "covered_from": p.covered_from,
            "covered_to": p.covered_to,
            "attempts": p.attempts,
            "failure_message": p.failure_message,
            "created_at": rfc3339(p.created_at),
            "updated_at": rfc3339(p.updated_at),
            "paid_at": p.paid_at.map(rfc3339),
        })
    })
}

//! Payment and payout routes (SPEC §10), thin: parse, call `crate::payments`, shape the answer.
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
use crate::error::{internal, ApiError};
use crate::oauth::pages::escape;
use crate::oauth::Scope;
use crate::payments::payouts::{EARNINGS_HOLD_MS, PAYOUT_MINIMUM};
use crate::payments::stripe::{verify_signature, CheckoutRequest, SIGNATURE_TOLERANCE_SECS};
use crate::payments::{apply_topup, new_session, package, provider, stripe_error, ConfirmedTopup, Provider};
use crate::routes::PageQuery;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use quota_core::{AccountId, Credits, TransferKind};
use quota_store::clock::rfc3339;
use serde::Deserialize;
use serde_json::{json, Value};

const URL_MAX_CHARS: usize = 2048;

/// `GET /v1/packages`.
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

fn parse_return_url(name: &str, value: &str) -> Result<(), ApiError> {
    let ok = value.chars().count() <= URL_MAX_CHARS
        && url::Url::parse(value).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!("{name} must be an http(s) URL of at most {URL_MAX_CHARS} characters")))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckoutBody {
    package_id: String,
    success_url: String,
    cancel_url: String,
}

/// `POST /api/payments/checkout` → `{checkout_url, session_id}`.
pub async fn checkout(
    State(state): State<SharedState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CheckoutBody>,
) -> Result<Response, ApiError> {
    let user_id = checkout_payer(&state, &headers).await?;
    let provider = provider(&state)?;
    let package = package(&state.config, &body.package_id).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no package `{}`", body.package_id))
            .with_hint("GET /v1/packages lists the packages")
    })?;
    parse_return_url("success_url", &body.success_url)?;
    parse_return_url("cancel_url", &body.cancel_url)?;
    let (session_id, checkout_url) = match provider {
        Provider::Stripe { client, .. } => {
            let key = quota_core::ids::new_id("quota-checkout-");
            client
                .create_checkout_session(&CheckoutRequest {
                    user_id: &user_id,
                    package_id: &package.id,
                    package_name: &package.name,
                    price_cents: package.price_cents,
                    credits: package.credits,
                    success_url: &body.success_url,
                    cancel_url: &body.cancel_url,
                    idempotency_key: &key,
                })
                .await
                .map_err(stripe_error)?
        }
        Provider::Dev => {
            let id = quota_core::ids::new_secret("cs_dev_");
            let url = format!("{}/payments/dev/checkout/{id}", crate::oauth::issuer(&state.config, &headers));
            (id, url)
        }
    };
    let session = new_session(
        session_id.clone(),
        provider,
        &user_id,
        package,
        &body.success_url,
        &body.cancel_url,
        state.clock.now_ms(),
    );
    state.store.insert_checkout_session(&session).await.map_err(internal("checkout session"))?;
    Ok((StatusCode::CREATED, Json(json!({"checkout_url": checkout_url, "session_id": session_id}))).into_response())
}

/// `POST /webhooks/stripe`: verify, then apply each event at most once.
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
    let (Some(event_id), Some(kind)) = (event["id"].as_str(), event["type"].as_str()) else {
        return Err(ApiError::bad_request("event without id or type"));
    };
    if state.store.stripe_event_seen(event_id).await.map_err(internal("stripe event"))? {
        return Ok(Json(json!({"received": true, "duplicate": true})));
    }
    let object = &event["data"]["object"];
    let applied = match kind {
        // Card payments are paid when the session completes; delayed methods (bank debits)
        // complete unpaid and confirm with `async_payment_succeeded`.
        "checkout.session.completed" | "checkout.session.async_payment_succeeded"
            if object["payment_status"].as_str() == Some("paid") =>
        {
            credit_session(&state, object, event_id).await?
        }
        _ => false,
    };
    // Recorded after applying: a crash in between means Stripe's retry applies it again,
    // which the session-derived transfer id makes a no-op.
    state.store.record_stripe_event(event_id, kind, state.clock.now_ms()).await.map_err(internal("stripe event"))?;
    Ok(Json(json!({"received": true, "applied": applied})))
}

/// Credit the session a paid Checkout Session object names. Our own record of the session
/// decides the amount; a session we have no record of (created before a restore, say) is
/// credited from the metadata Quota put on it, which Stripe's signature vouches for.
async fn credit_session(state: &SharedState, object: &Value, event_id: &str) -> Result<bool, ApiError> {
    let Some(session_id) = object["id"].as_str() else {
        return Err(ApiError::bad_request("checkout session without id"));
    };
    let stored = state.store.checkout_session(session_id).await.map_err(internal("checkout session"))?;
    let (user_id, package_id, credits) = match stored {
        Some(s) => (s.user_id, s.package_id, s.credits),
        None => {
            let m = &object["metadata"];
            let parsed = (
                m["quota_user_id"].as_str(),
                m["quota_package_id"].as_str(),
                m["quota_credits"].as_str().and_then(|c| c.parse::<i64>().ok()).filter(|c| *c > 0),
            );
            let (Some(u), Some(p), Some(c)) = parsed else {
                tracing::warn!(session = %session_id, "paid checkout session that is not Quota's; ignored");
                return Ok(false);
            };
            if state.store.user_by_id(u).await.map_err(internal("topup user"))?.is_none() {
                tracing::warn!(session = %session_id, "paid checkout session for an unknown user; ignored");
                return Ok(false);
            }
            (u.to_string(), p.to_string(), c)
        }
    };
    let topup = ConfirmedTopup {
        session_id,
        user_id: &user_id,
        package_id: &package_id,
        credits: Credits::new(credits),
        cause: event_id,
    };
    apply_topup(state, topup).await.map_err(internal("topup"))
}

/// `GET /payments/dev/checkout/{id}`: the dev provider's checkout page.
pub async fn dev_checkout_page(State(state): State<SharedState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let session = dev_session(&state, &id).await?;
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
pub async fn dev_checkout_pay(State(state): State<SharedState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let s = dev_session(&state, &id).await?;
    let topup = ConfirmedTopup {
        session_id: &s.id,
        user_id: &s.user_id,
        package_id: &s.package_id,
        credits: Credits::new(s.credits),
        cause: &format!("dev_checkout:{}", s.id),
    };
    apply_topup(&state, topup).await.map_err(internal("dev topup"))?;
    Ok(Redirect::to(&s.success_url).into_response())
}

async fn dev_session(state: &SharedState, id: &str) -> Result<quota_store::payments::CheckoutSession, ApiError> {
    if !matches!(state.payments, Some(Provider::Dev)) {
        return Err(ApiError::not_found("checkout session"));
    }
    state
        .store
        .checkout_session(id)
        .await
        .map_err(internal("checkout session"))?
        .filter(|s| s.provider == "dev")
        .ok_or_else(|| ApiError::not_found("checkout session"))
}

/// Where Stripe sends the developer after onboarding, and when a link has expired.
fn connect_urls(state: &SharedState, headers: &HeaderMap) -> (String, String) {
    let base = crate::oauth::issuer(&state.config, headers);
    (format!("{base}/dashboard/payouts?connect=refresh"), format!("{base}/dashboard/payouts?connect=return"))
}

async fn onboarding_link(state: &SharedState, headers: &HeaderMap, account: &str) -> Result<String, ApiError> {
    let (refresh_url, return_url) = connect_urls(state, headers);
    match provider(state)? {
        Provider::Stripe { client, .. } => {
            client.create_account_link(account, &refresh_url, &return_url).await.map_err(stripe_error)
        }
        Provider::Dev => Ok(return_url),
    }
}

/// `POST /developers/connect/onboard` → `{onboarding_url, stripe_account_id}`.
pub async fn connect_onboard(
    State(state): State<SharedState>,
    headers: HeaderMap,
    user: SessionUser,
) -> Result<Json<Value>, ApiError> {
    let dev = &user.user.id;
    let account = match state.store.connect_account(dev).await.map_err(internal("connect account"))? {
        Some(a) => a,
        None => {
            let created = match provider(&state)? {
                Provider::Stripe { client, .. } => {
                    client.create_express_account(dev, &user.user.email).await.map_err(stripe_error)?
                }
                Provider::Dev => quota_core::ids::new_id("acct_dev_"),
            };
            state
                .store
                .insert_connect_account(dev, &created, state.clock.now_ms())
                .await
                .map_err(internal("connect account"))?
        }
    };
    let url = onboarding_link(&state, &headers, &account).await?;
    Ok(Json(json!({"onboarding_url": url, "stripe_account_id": account})))
}

/// `POST /developers/connect/refresh`: a new onboarding link for the existing account.
pub async fn connect_refresh(
    State(state): State<SharedState>,
    headers: HeaderMap,
    user: SessionUser,
) -> Result<Json<Value>, ApiError> {
    let account =
        state.store.connect_account(&user.user.id).await.map_err(internal("connect account"))?.ok_or_else(|| {
            ApiError::not_found("Connect account").with_hint("POST /developers/connect/onboard first")
        })?;
    let url = onboarding_link(&state, &headers, &account).await?;
    Ok(Json(json!({"onboarding_url": url, "stripe_account_id": account})))
}

/// `GET /developers/earnings`: the developer's earnings accounts, straight from the ledger.
pub async fn earnings(State(state): State<SharedState>, user: SessionUser) -> Result<Json<Value>, ApiError> {
    let dev = user.user.id;
    let balance = |a: AccountId| {
        let ledger = state.ledger.clone();
        async move { ledger.balance(&a).await.map(|c| c.get()).map_err(internal("earnings balance")) }
    };
    let pending = AccountId::EarningsPending(dev.clone());
    let now = state.clock.now_ms();
    state.ledger.flush().await.map_err(internal("earnings"))?;
    let store = &state.store;
    let eligible = store
        .sum_transfers_to(TransferKind::Markup, &pending, now - EARNINGS_HOLD_MS)
        .await
        .map_err(internal("earnings"))?;
    let released =
        store.sum_transfers_from(TransferKind::EarningsRelease, &pending).await.map_err(internal("earnings"))?;
    let total = store.sum_transfers_to(TransferKind::Markup, &pending, i64::MAX).await.map_err(internal("earnings"))?;
    let paid = store
        .sum_transfers_from(TransferKind::Payout, &AccountId::PayoutInTransit(dev.clone()))
        .await
        .map_err(internal("earnings"))?;
    let onboarded = store.connect_account(&dev).await.map_err(internal("earnings"))?;
    Ok(Json(json!({
        "currency": "credits",
        "total_earned": total,
        "pending": balance(pending.clone()).await?,
        "pending_eligible": (eligible - released).max(0),
        "available": balance(AccountId::EarningsAvailable(dev.clone())).await?,
        "reserve": balance(AccountId::PayoutReserve(dev.clone())).await?,
        "in_transit": balance(AccountId::PayoutInTransit(dev.clone())).await?,
        "paid": paid,
        "minimum_payout": PAYOUT_MINIMUM,
        "stripe_account_id": onboarded,
    })))
}

/// `GET /developers/payouts`: newest first, paginated.
pub async fn payouts(
    State(state): State<SharedState>,
    user: SessionUser,
    Query(page): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let rows = state.store.payouts_of(&user.user.id).await.map_err(internal("payouts"))?;
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

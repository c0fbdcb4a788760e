//! `/v1/webhooks` (SPEC §8, session only): endpoints, their secrets (shown once, on creation
//! and rotation), the delivery log, replay and test events. Delivery itself is the worker's
//! (`crate::webhooks`).

use crate::app::SharedState;
use crate::auth::SessionUser;
use crate::error::{internal, ApiError};
use crate::routes::PageQuery;
use crate::secrets::at_rest::Purpose;
use crate::webhooks::{new_secret, parse_events, validate_url, DESCRIPTION_MAX_CHARS};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use quota_store::clock::rfc3339;
use quota_store::webhooks::{EndpointPatch, WebhookEndpoint};
use quota_store::OutboxEvent;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    pub url: String,
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
    pub low_balance_threshold: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateEndpoint {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
    #[serde(default, deserialize_with = "crate::routes::webhooks::double_option")]
    pub low_balance_threshold: Option<Option<i64>>,
    pub enabled: Option<bool>,
}

/// `null` → `Some(None)` (clear), absent → `None` (unchanged).
pub fn double_option<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<i64>>, D::Error> {
    Option::<i64>::deserialize(d).map(Some)
}

fn description(d: Option<String>) -> Result<Option<String>, ApiError> {
    match d {
        Some(d) if d.chars().count() > DESCRIPTION_MAX_CHARS => {
            Err(ApiError::bad_request(format!("description is longer than {DESCRIPTION_MAX_CHARS} characters")))
        }
        d => Ok(d),
    }
}

fn threshold(t: Option<i64>) -> Result<Option<i64>, ApiError> {
    match t {
        Some(t) if t < 0 => Err(ApiError::bad_request("low_balance_threshold must be ≥ 0 credits")),
        t => Ok(t),
    }
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// An endpoint as the API shows it (never its secret).
fn endpoint_json(e: &WebhookEndpoint) -> Value {
    json!({
        "id": e.id,
        "object": "webhook_endpoint",
        "url": e.url,
        "description": e.description,
        "events": if e.events.is_empty() { crate::webhooks::EVENT_TYPES.iter().map(|s| s.to_string()).collect() } else { e.events.clone() },
        "low_balance_threshold": e.low_balance_threshold,
        "status": if e.disabled_at.is_some() { "disabled" } else { "enabled" },
        "disabled_at": e.disabled_at.map(rfc3339),
        "disabled_reason": e.disabled_reason,
        "failing_since": e.failing_since.map(rfc3339),
        "created_at": rfc3339(e.created_at),
        "updated_at": rfc3339(e.updated_at),
    })
}

async fn reload(state: &SharedState) -> Result<(), ApiError> {
    state.webhooks.reload(&state.store).await.map_err(internal("webhook directory"))?;
    crate::changes::announce(state, crate::changes::WEBHOOKS).await;
    Ok(())
}

async fn owned(state: &SharedState, s: &SessionUser, id: &str) -> Result<WebhookEndpoint, ApiError> {
    state
        .store
        .webhook_endpoint(&s.user.id, id)
        .await
        .map_err(internal("webhook lookup"))?
        .ok_or_else(|| ApiError::not_found("webhook endpoint"))
}

/// `POST /v1/webhooks` → the endpoint and its `secret` (the only time it is shown).
/// A new endpoint URL, checked (SPEC §8): its form, a literal address, and — unless private
/// URLs are allowed — what its hostname resolves to now. A name that does not resolve yet is
/// accepted; every delivery checks again.
async fn checked_url(state: &SharedState, raw: &str) -> Result<String, ApiError> {
    let allow_private = state.config.webhook_allow_private_urls;
    let url = validate_url(raw, allow_private)?;
    if allow_private {
        return Ok(url);
    }
    if let Some(host) = url::Url::parse(&url).ok().and_then(|u| u.domain().map(str::to_string)) {
        if let Err(e) = crate::webhooks::ssrf::resolve_checked(state.webhook_resolver.as_ref(), &host, false).await {
            if e.starts_with("refused") {
                return Err(ApiError::bad_request(format!("url `{raw}`: {e}"))
                    .with_hint("use an https:// URL on a public host"));
            }
        }
    }
    Ok(url)
}

pub async fn create(
    State(state): State<SharedState>,
    s: SessionUser,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req: CreateEndpoint = parse_body(&body)?;
    let url = checked_url(&state, &req.url).await?;
    crate::account_caps::ensure_room(&state, crate::account_caps::Capped::WebhookEndpoints, &s.user.id).await?;
    let now = state.clock.now_ms();
    let endpoint = WebhookEndpoint {
        id: quota_core::ids::new_id("whk_"),
        developer_id: s.user.id.clone(),
        url,
        description: description(req.description)?.unwrap_or_default(),
        events: parse_events(&req.events.unwrap_or_default())?,
        low_balance_threshold: threshold(req.low_balance_threshold)?,
        secret: String::new(),
        created_at: now,
        updated_at: now,
        failing_since: None,
        disabled_at: None,
        disabled_reason: None,
    };
    // Stored sealed with the master key (SPEC §12); shown in clear this once.
    let secret = new_secret();
    let stored = WebhookEndpoint { secret: state.master_key.seal_text(Purpose::WebhookSecret, &secret), ..endpoint };
    state.store.create_webhook_endpoint(&stored).await.map_err(internal("create webhook"))?;
    reload(&state).await?;
    let mut out = endpoint_json(&stored);
    out["secret"] = Value::String(secret);
    Ok((StatusCode::CREATED, Json(out)))
}

pub async fn list(
    State(state): State<SharedState>,
    s: SessionUser,
    Query(page): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let all = state.store.webhook_endpoints(&s.user.id).await.map_err(internal("list webhooks"))?;
    page.json(all, endpoint_json)
}

pub async fn get(
    State(state): State<SharedState>,
    s: SessionUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(endpoint_json(&owned(&state, &s, &id).await?)))
}

pub async fn update(
    State(state): State<SharedState>,
    s: SessionUser,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: UpdateEndpoint = parse_body(&body)?;
    let patch = EndpointPatch {
        url: match req.url {
            Some(u) => Some(checked_url(&state, &u).await?),
            None => None,
        },
        description: description(req.description)?,
        events: req.events.map(|e| parse_events(&e)).transpose()?,
        low_balance_threshold: req.low_balance_threshold.map(threshold).transpose()?,
        enabled: req.enabled,
    };
    let now = state.clock.now_ms();
    let e = state
        .store
        .update_webhook_endpoint(&s.user.id, &id, &patch, now)
        .await
        .map_err(internal("update webhook"))?
        .ok_or_else(|| ApiError::not_found("webhook endpoint"))?;
    reload(&state).await?;
    Ok(Json(endpoint_json(&e)))
}

pub async fn delete(
    State(state): State<SharedState>,
    s: SessionUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let now = state.clock.now_ms();
    if !state.store.delete_webhook_endpoint(&s.user.id, &id, now).await.map_err(internal("delete webhook"))? {
        return Err(ApiError::not_found("webhook endpoint"));
    }
    reload(&state).await?;
    Ok(Json(json!({"id": id, "object": "webhook_endpoint", "deleted": true})))
}

/// `POST /v1/webhooks/:id/rotate-secret`: a new secret at once; the old one stops signing.
pub async fn rotate_secret(
    State(state): State<SharedState>,
    s: SessionUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let secret = new_secret();
    let sealed = state.master_key.seal_text(Purpose::WebhookSecret, &secret);
    let now = state.clock.now_ms();
    if !state.store.rotate_webhook_secret(&s.user.id, &id, &sealed, now).await.map_err(internal("rotate secret"))? {
        return Err(ApiError::not_found("webhook endpoint"));
    }
    let mut out = endpoint_json(&owned(&state, &s, &id).await?);
    out["secret"] = Value::String(secret);
    Ok(Json(out))
}

pub async fn deliveries(
    State(state): State<SharedState>,
    s: SessionUser,
    Path(id): Path<String>,
    Query(page): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    owned(&state, &s, &id).await?;
    let (offset, limit) = page.parse()?;
    // One more than the page tells whether there is a next one.
    let rows = state
        .store
        .webhook_deliveries(&id, offset as i64, limit as i64 + 1)
        .await
        .map_err(internal("list deliveries"))?;
    let next = (rows.len() > limit).then(|| crate::routes::cursor_at(offset + limit));
    let data: Vec<Value> = rows
        .iter()
        .take(limit)
        .map(|d| {
            json!({
                "id": d.id,
                "object": "webhook_delivery",
                "event_id": d.event_id,
                "event_type": d.event_type,
                "status": d.state,
                "attempts": d.attempts,
                "next_attempt_at": d.next_attempt_at.map(rfc3339),
                "created_at": rfc3339(d.created_at),
                "log": d.log.iter().map(|a| json!({
                    "id": a.id,
                    "attempted_at": rfc3339(a.attempted_at),
                    "status_code": a.status_code,
                    "latency_ms": a.latency_ms,
                    "response_snippet": a.response_snippet,
                    "error": a.error,
                    "succeeded": a.succeeded,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Json(json!({"data": data, "next_cursor": next})))
}

/// `POST /v1/webhooks/:id/deliveries/:delivery_id/replay`: send the same event (same `evt_…`
/// id) again, now.
pub async fn replay(
    State(state): State<SharedState>,
    s: SessionUser,
    Path((id, delivery_id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    owned(&state, &s, &id).await?;
    let now = state.clock.now_ms();
    if !state.store.replay_delivery(&id, &delivery_id, now).await.map_err(internal("replay"))? {
        return Err(ApiError::not_found("delivery"));
    }
    Ok((StatusCode::ACCEPTED, Json(json!({"id": delivery_id, "object": "webhook_delivery", "status": "pending"}))))
}

/// `POST /v1/webhooks/:id/test`: a `webhook.test` event for this endpoint only, delivered like
/// any other (signed, logged, retried).
pub async fn test(
    State(state): State<SharedState>,
    s: SessionUser,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let e = owned(&state, &s, &id).await?;
    let now = state.clock.now_ms();
    let mut event = OutboxEvent::new("webhook.test", &s.user.id, json!({"endpoint_id": e.id, "test": true}), now);
    event.endpoint_id = Some(e.id.clone());
    state.store.insert_outbox_events(std::slice::from_ref(&event)).await.map_err(internal("test event"))?;
    Ok((StatusCode::ACCEPTED, Json(json!({"event_id": event.id, "type": "webhook.test"}))))
}

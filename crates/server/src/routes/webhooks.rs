//! `/v1/webhooks` (SPEC §8, session only), thin: parse the body into
//! [`crate::services::webhooks`]' typed input, call it, shape the answer. The secret is in the
//! answer to create and rotate-secret only. Delivery is the worker's (`crate::webhooks`).

use crate::app::SharedState;
use crate::auth::SessionUser;
use crate::error::ApiError;
use crate::routes::PageQuery;
use crate::services::webhooks::{self as service, parse_description, parse_threshold, EndpointUrl};
use crate::services::webhooks::{EndpointChanges, IssuedEndpoint, NewEndpoint};
use crate::webhooks::events::parse_subscription;
use crate::webhooks::EventKind;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use quota_store::clock::rfc3339;
use quota_store::webhooks::{DeliveryView, WebhookEndpoint};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    pub url: String,
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
    pub low_balance_threshold: Option<i64>,
}

impl CreateEndpoint {
    fn parse(self, allow_private: bool) -> Result<NewEndpoint, ApiError> {
        Ok(NewEndpoint {
            url: EndpointUrl::parse(&self.url, allow_private)?,
            description: parse_description(self.description)?.unwrap_or_default(),
            events: parse_subscription(&self.events.unwrap_or_default())?,
            low_balance_threshold: parse_threshold(self.low_balance_threshold)?,
        })
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateEndpoint {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
    #[serde(default, deserialize_with = "crate::routes::webhooks::double_option")]
    pub low_balance_threshold: Option<Option<i64>>,
    pub enabled: Option<bool>,
}

impl UpdateEndpoint {
    fn parse(self, allow_private: bool) -> Result<EndpointChanges, ApiError> {
        Ok(EndpointChanges {
            url: self.url.map(|u| EndpointUrl::parse(&u, allow_private)).transpose()?,
            description: parse_description(self.description)?,
            events: self.events.map(|e| parse_subscription(&e)).transpose()?,
            low_balance_threshold: self.low_balance_threshold.map(parse_threshold).transpose()?,
            enabled: self.enabled,
        })
    }
}

/// `null` → `Some(None)` (clear), absent → `None` (unchanged).
pub fn double_option<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<i64>>, D::Error> {
    Option::<i64>::deserialize(d).map(Some)
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
        "events": service::subscribed(e),
        "low_balance_threshold": e.low_balance_threshold,
        "status": if e.disabled_at.is_some() { "disabled" } else { "enabled" },
        "disabled_at": e.disabled_at.map(rfc3339),
        "disabled_reason": e.disabled_reason,
        "failing_since": e.failing_since.map(rfc3339),
        "created_at": rfc3339(e.created_at),
        "updated_at": rfc3339(e.updated_at),
    })
}

fn issued_json(issued: &IssuedEndpoint) -> Value {
    let mut out = endpoint_json(&issued.endpoint);
    out["secret"] = Value::String(issued.secret.clone());
    out
}

fn delivery_json(d: &DeliveryView) -> Value {
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
}

/// `POST /v1/webhooks` → the endpoint and its `secret` (the only time it is shown).
#[utoipa::path(
    post,
    path = "/v1/webhooks",
    tag = "webhooks",
    summary = "Add an endpoint; its signing secret is shown once",
    request_body = CreateEndpoint,
    responses(
        (status = 201, description = "the endpoint with its secret", body = crate::openapi::schemas::IssuedWebhookEndpoint),
        (status = 403, description = "`limit_reached`", body = crate::openapi::schemas::ErrorBody),
        crate::openapi::SessionErrors,
    ),
    security(("session" = []), ("sessionCookie" = []))
)]
pub async fn create(
    State(state): State<SharedState>,
    s: SessionUser,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let new = parse_body::<CreateEndpoint>(&body)?.parse(state.config.webhook_allow_private_urls)?;
    let issued = service::create(&state, &s.user.id, new).await?;
    Ok((StatusCode::CREATED, Json(issued_json(&issued))))
}

#[utoipa::path(
    get,
    path = "/v1/webhooks",
    tag = "webhooks",
    summary = "The developer's endpoints",
    params(crate::routes::PageQuery),
    responses(
        (status = 200, description = "a page of endpoints", body = crate::openapi::schemas::Page<crate::openapi::schemas::WebhookEndpoint>),
        crate::openapi::SessionErrors,
    ),
    security(("session" = []), ("sessionCookie" = []))
)]
pub async fn list(
    State(state): State<SharedState>,
    s: SessionUser,
    Query(page): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    page.json(service::list(&state, &s.user.id).await?, endpoint_json)
}

#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    summary = "One endpoint",
    params(("id" = String, Path, description = "the endpoint id, `whk_…`")),
    responses(
        (status = 200, description = "the endpoint", body = crate::openapi::schemas::WebhookEndpoint),
        crate::openapi::SessionErrors,
    ),
    security(("session" = []), ("sessionCookie" = []))
)]
pub async fn get(
    State(state): State<SharedState>,
    s: SessionUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(endpoint_json(&service::get(&state, &s.user.id, &id).await?)))
}

#[utoipa::path(
    patch,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    summary = "Change url, events, description, low_balance_threshold, enabled",
    request_body = UpdateEndpoint,
    params(("id" = String, Path, description = "the endpoint id, `whk_…`")),
    responses(
        (status = 200, description = "the endpoint", body = crate::openapi::schemas::WebhookEndpoint),
        crate::openapi::SessionErrors,
    ),
    security(("session" = []), ("sessionCookie" = []))
)]
pub async fn update(
    State(state): State<SharedState>,
    s: SessionUser,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let changes = parse_body::<UpdateEndpoint>(&body)?.parse(state.config.webhook_allow_private_urls)?;
    Ok(Json(endpoint_json(&service::update(&state, &s.user.id, &id, changes).await?)))
}

#[utoipa::path(
    delete,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    summary = "Delete an endpoint",
    params(("id" = String, Path, description = "the endpoint id, `whk_…`")),
    responses(
        (status = 200, description = "deleted", body = crate::openapi::schemas::Deleted),
        crate::openapi::SessionErrors,
    ),
    security(("session" = []), ("sessionCookie" = []))
)]
pub async fn delete(
    State(state): State<SharedState>,
    s: SessionUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    service::delete(&state, &s.user.id, &id).await?;
    Ok(Json(json!({"id": id, "object": "webhook_endpoint", "deleted": true})))
}

/// `POST /v1/webhooks/:id/rotate-secret`: a new secret at once; the old one stops signing.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/rotate-secret",
    tag = "webhooks",
    summary = "A new signing secret at once; the old one stops signing",
    params(("id" = String, Path, description = "the endpoint id, `whk_…`")),
    responses(
        (status = 200, description = "the endpoint with its new secret", body = crate::openapi::schemas::IssuedWebhookEndpoint),
        crate::openapi::SessionErrors,
    ),
    security(("session" = []), ("sessionCookie" = []))
)]
pub async fn rotate_secret(
    State(state): State<SharedState>,
    s: SessionUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(issued_json(&service::rotate_secret(&state, &s.user.id, &id).await?)))
}

#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}/deliveries",
    tag = "webhooks",
    summary = "Deliveries to an endpoint, with each attempt",
    params(("id" = String, Path, description = "the endpoint id, `whk_…`"), crate::routes::PageQuery),
    responses(
        (status = 200, description = "a page of deliveries", body = crate::openapi::schemas::Page<crate::openapi::schemas::WebhookDelivery>),
        crate::openapi::SessionErrors,
    ),
    security(("session" = []), ("sessionCookie" = []))
)]
pub async fn deliveries(
    State(state): State<SharedState>,
    s: SessionUser,
    Path(id): Path<String>,
    Query(page): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let page = service::deliveries(&state, &s.user.id, &id, page.paging()?).await?;
    let data: Vec<Value> = page.items.iter().map(delivery_json).collect();
    Ok(Json(json!({"data": data, "next_cursor": page.next_cursor})))
}

/// `POST /v1/webhooks/:id/deliveries/:delivery_id/replay`: send the same event (same `evt_…`
/// id) again, now.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/deliveries/{delivery_id}/replay",
    tag = "webhooks",
    summary = "Send the same event (same `evt_…` id) again, now",
    params(("id" = String, Path, description = "the endpoint id, `whk_…`"), ("delivery_id" = String, Path, description = "the delivery id")),
    responses(
        (status = 202, description = "queued", body = crate::openapi::schemas::ReplayQueued),
        crate::openapi::SessionErrors,
    ),
    security(("session" = []), ("sessionCookie" = []))
)]
pub async fn replay(
    State(state): State<SharedState>,
    s: SessionUser,
    Path((id, delivery_id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    service::replay(&state, &s.user.id, &id, &delivery_id).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"id": delivery_id, "object": "webhook_delivery", "status": "pending"}))))
}

/// `POST /v1/webhooks/:id/test`: a `webhook.test` event for this endpoint only.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/test",
    tag = "webhooks",
    summary = "Send a `webhook.test` event to this endpoint only",
    params(("id" = String, Path, description = "the endpoint id, `whk_…`")),
    responses(
        (status = 202, description = "queued", body = crate::openapi::schemas::TestEventQueued),
        crate::openapi::SessionErrors,
    ),
    security(("session" = []), ("sessionCookie" = []))
)]
pub async fn test(
    State(state): State<SharedState>,
    s: SessionUser,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let event = service::send_test(&state, &s.user.id, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"event_id": event.id, "type": EventKind::WebhookTest.as_str()}))))
}

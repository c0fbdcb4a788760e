//! SPEC §2: API keys over JSON (session only). Thin: parse the body into
//! [`crate::services::keys`]' typed input, call it, shape the answer. The secret is in the
//! answer to create and rotate only.

use crate::app::SharedState;
use crate::auth::SessionUser;
use crate::body::JsonBody;
use crate::error::ApiError;
use crate::routes::PageQuery;
use crate::services::keys::{self, IssuedKey, KeyPatch, NewKey, RateLimit};
use crate::services::Name;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use quota_store::clock::rfc3339;
use quota_store::ApiKey;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize, utoipa::ToSchema)]
pub struct CreateKey {
    name: String,
    /// `developer` (the default), `user` or `test` (the sandbox).
    #[schema(example = "test")]
    billing_mode: Option<String>,
    rate_limit_per_minute: Option<i64>,
    app_id: Option<String>,
}

impl CreateKey {
    fn parse(self) -> Result<NewKey, ApiError> {
        Ok(NewKey {
            name: Name::parse(&self.name)?,
            billing_mode: keys::parse_mode(self.billing_mode.as_deref())?,
            rate_limit: self.rate_limit_per_minute.map(RateLimit::parse).transpose()?,
            app_id: self.app_id,
        })
    }
}

/// `PATCH` body: only `name`, `rate_limit_per_minute` (an integer, or `null` to clear) and
/// `quota_usage_event` (`false`: `/v1/messages` streams leave the separate `event:
/// quota_usage` out; `quota` stays on their final `message_delta`).
fn parse_patch(body: &serde_json::Map<String, Value>) -> Result<KeyPatch, ApiError> {
    let name = match body.get("name") {
        None => None,
        Some(Value::String(s)) => Some(Name::parse(s)?),
        Some(_) => return Err(ApiError::bad_request("name must be a string")),
    };
    let rate_limit = match body.get("rate_limit_per_minute") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(v) => Some(Some(RateLimit::parse(
            v.as_i64().ok_or_else(|| ApiError::bad_request("rate_limit_per_minute must be an integer or null"))?,
        )?)),
    };
    let quota_usage_event = match body.get("quota_usage_event") {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(ApiError::bad_request("quota_usage_event must be true or false")),
    };
    const CHANGEABLE: [&str; 3] = ["name", "rate_limit_per_minute", "quota_usage_event"];
    if let Some(other) = body.keys().find(|k| !CHANGEABLE.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "`{other}` cannot be changed; only name, rate_limit_per_minute and quota_usage_event can"
        )));
    }
    Ok(KeyPatch { name, rate_limit, quota_usage_event })
}

pub fn key_json(k: &ApiKey) -> Value {
    json!({
        "id": k.id,
        "name": k.name,
        "prefix": k.prefix,
        "billing_mode": k.billing_mode,
        "rate_limit_per_minute": k.rate_limit_per_minute,
        "quota_usage_event": k.quota_usage_event,
        "app_id": k.app_id,
        "created_at": rfc3339(k.created_at),
        "last_used_at": k.last_used_at.map(rfc3339),
        "revoked_at": k.revoked_at.map(rfc3339),
    })
}

fn issued_json(issued: &IssuedKey) -> Value {
    let mut out = key_json(&issued.key);
    out["key"] = json!(issued.secret);
    out
}

#[utoipa::path(
    post,
    path = "/developers/keys",
    tag = "keys",
    summary = "Create an API key (its secret is shown once)",
    request_body = CreateKey,
    responses(
        (status = 201, description = "the key with its secret", body = crate::openapi::schemas::IssuedKey),
        (status = 403, description = "`limit_reached`: the account has as many keys as it may", body = crate::openapi::schemas::ErrorBody),
        crate::openapi::SessionErrors,
    ),
    security(("session" = []), ("sessionCookie" = []))
)]
pub async fn create(
    State(state): State<SharedState>,
    session: SessionUser,
    JsonBody(body): JsonBody<CreateKey>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let issued = keys::create(&state, &session.user.id, body.parse()?).await?;
    Ok((StatusCode::CREATED, Json(issued_json(&issued))))
}

#[utoipa::path(
    get,
    path = "/developers/keys",
    tag = "keys",
    summary = "The account's keys (no secrets)",
    params(crate::routes::PageQuery),
    responses(
        (status = 200, description = "a page of keys", body = crate::openapi::schemas::Page<crate::openapi::schemas::Key>),
        crate::openapi::SessionErrors,
    ),
    security(("session" = []), ("sessionCookie" = []))
)]
pub async fn list(
    State(state): State<SharedState>,
    session: SessionUser,
    Query(page): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    page.json(keys::list(&state, &session.user.id).await?, key_json)
}

#[utoipa::path(
    patch,
    path = "/developers/keys/{id}",
    tag = "keys",
    summary = "Change a key's name or rate_limit_per_minute",
    request_body = crate::openapi::schemas::KeyPatchBody,
    params(("id" = String, Path, description = "the key id, `key_…`")),
    responses(
        (status = 200, description = "the key", body = crate::openapi::schemas::Key),
        crate::openapi::SessionErrors,
    ),
    security(("session" = []), ("sessionCookie" = []))
)]
pub async fn update(
    State(state): State<SharedState>,
    session: SessionUser,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<serde_json::Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    let key = keys::update(&state, &session.user.id, &id, parse_patch(&body)?).await?;
    Ok(Json(key_json(&key)))
}

#[utoipa::path(
    delete,
    path = "/developers/keys/{id}",
    tag = "keys",
    summary = "Revoke a key",
    params(("id" = String, Path, description = "the key id, `key_…`")),
    responses(
        (status = 200, description = "the revoked key", body = crate::openapi::schemas::Key),
        crate::openapi::SessionErrors,
    ),
    security(("session" = []), ("sessionCookie" = []))
)]
pub async fn revoke(
    State(state): State<SharedState>,
    session: SessionUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(key_json(&keys::revoke(&state, &session.user.id, &id).await?)))
}

#[utoipa::path(
    post,
    path = "/developers/keys/{id}/rotate",
    tag = "keys",
    summary = "A new secret with the same settings; the old key is revoked",
    params(("id" = String, Path, description = "the key id, `key_…`")),
    responses(
        (status = 201, description = "the new key with its secret and `replaces`", body = crate::openapi::schemas::IssuedKey),
        crate::openapi::SessionErrors,
    ),
    security(("session" = []), ("sessionCookie" = []))
)]
pub async fn rotate(
    State(state): State<SharedState>,
    session: SessionUser,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let issued = keys::rotate(&state, &session.user.id, &id).await?;
    let mut out = issued_json(&issued);
    out["replaces"] = json!(id);
    Ok((StatusCode::CREATED, Json(out)))
}

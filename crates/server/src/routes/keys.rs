//! SPEC §2: API keys. The secret is shown once at creation (and rotation); only its hash is
//! stored. Revocation and rotation evict the key from this instance's cache at once.

use crate::app::SharedState;
use crate::auth::{SessionUser, API_KEY_PREFIX};
use crate::body::JsonBody;
use crate::error::{internal, ApiError};
use crate::routes::PageQuery;
use crate::secrets::hash_token;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use quota_core::BillingMode;
use quota_store::clock::rfc3339;
use quota_store::{ApiKey, NewApiKey, StoreError};
use serde::Deserialize;
use serde_json::{json, Value};

const NAME_MAX_CHARS: usize = 100;
/// Highest per-key override accepted, requests per minute.
const RATE_LIMIT_MAX: i64 = 1_000_000;
/// Characters of the secret shown in listings.
const PREFIX_CHARS: usize = 12;

#[derive(Deserialize)]
pub struct CreateKey {
    name: String,
    billing_mode: Option<String>,
    rate_limit_per_minute: Option<i64>,
    app_id: Option<String>,
}

/// A key's or app's name: 1 to 100 characters after trimming.
pub fn check_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > NAME_MAX_CHARS {
        return Err(ApiError::bad_request(format!("name must be 1 to {NAME_MAX_CHARS} characters")));
    }
    Ok(name.to_string())
}

fn check_rate_limit(limit: i64) -> Result<i64, ApiError> {
    if !(1..=RATE_LIMIT_MAX).contains(&limit) {
        return Err(ApiError::bad_request(format!("rate_limit_per_minute must be between 1 and {RATE_LIMIT_MAX}")));
    }
    Ok(limit)
}

pub fn key_json(k: &ApiKey) -> Value {
    json!({
        "id": k.id,
        "name": k.name,
        "prefix": k.prefix,
        "billing_mode": k.billing_mode,
        "rate_limit_per_minute": k.rate_limit_per_minute,
        "app_id": k.app_id,
        "created_at": rfc3339(k.created_at),
        "last_used_at": k.last_used_at.map(rfc3339),
        "revoked_at": k.revoked_at.map(rfc3339),
    })
}

fn new_secret() -> (String, String, String) {
    let secret = quota_core::ids::new_secret(API_KEY_PREFIX);
    let prefix: String = secret.chars().take(PREFIX_CHARS).collect();
    let hash = hash_token(&secret);
    (secret, prefix, hash)
}

pub async fn create(
    State(state): State<SharedState>,
    session: SessionUser,
    JsonBody(body): JsonBody<CreateKey>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let name = check_name(&body.name)?;
    let billing_mode = match body.billing_mode.as_deref() {
        None => BillingMode::Developer,
        Some(m) => m.parse::<BillingMode>().map_err(ApiError::bad_request)?,
    };
    let rate_limit_per_minute = body.rate_limit_per_minute.map(check_rate_limit).transpose()?;
    // A key may be bound to one of its owner's apps: a `user` key then accepts only that
    // app's user tokens (SPEC §2).
    let app_id = match &body.app_id {
        None => None,
        Some(id) => Some(
            state
                .store
                .app_of(&session.user.id, id)
                .await
                .map_err(internal("read app"))?
                .ok_or_else(|| ApiError::not_found("app"))?
                .id,
        ),
    };
    crate::account_caps::ensure_room(&state, crate::account_caps::Capped::ApiKeys, &session.user.id).await?;
    let (secret, prefix, key_hash) = new_secret();
    let key = state
        .store
        .create_key(&NewApiKey {
            id: quota_core::ids::new_id("key_"),
            user_id: session.user.id.clone(),
            name,
            prefix,
            key_hash,
            billing_mode,
            rate_limit_per_minute,
            app_id,
        })
        .await
        .map_err(internal("create key"))?;
    let mut out = key_json(&key);
    out["key"] = json!(secret);
    Ok((StatusCode::CREATED, Json(out)))
}

pub async fn list(
    State(state): State<SharedState>,
    session: SessionUser,
    Query(page): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let keys = state.store.list_keys(&session.user.id).await.map_err(internal("list keys"))?;
    page.json(keys, key_json)
}

pub async fn update(
    State(state): State<SharedState>,
    session: SessionUser,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<serde_json::Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    let name = match body.get("name") {
        None => None,
        Some(Value::String(s)) => Some(check_name(s)?),
        Some(_) => return Err(ApiError::bad_request("name must be a string")),
    };
    let rate_limit = match body.get("rate_limit_per_minute") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(v) => Some(Some(check_rate_limit(
            v.as_i64().ok_or_else(|| ApiError::bad_request("rate_limit_per_minute must be an integer or null"))?,
        )?)),
    };
    if let Some(other) = body.keys().find(|k| !["name", "rate_limit_per_minute"].contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "`{other}` cannot be changed; only name and rate_limit_per_minute can"
        )));
    }
    let key = match state.store.update_key(&session.user.id, &id, name.as_deref(), rate_limit).await {
        Ok(k) => k,
        Err(StoreError::NotFound) => return Err(ApiError::not_found("key")),
        Err(e) => return Err(internal("update key")(e)),
    };
    state.keys.evict_id(&key.id);
    crate::changes::announce(&state, &crate::changes::key(&key.id)).await;
    Ok(Json(key_json(&key)))
}

pub async fn revoke(
    State(state): State<SharedState>,
    session: SessionUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let hash = match state.store.revoke_key(&session.user.id, &id).await {
        Ok(h) => h,
        Err(StoreError::NotFound) => return Err(ApiError::not_found("key")),
        Err(e) => return Err(internal("revoke key")(e)),
    };
    state.keys.evict(&hash);
    crate::changes::announce(&state, &crate::changes::key(&id)).await;
    let key = state
        .store
        .key(&session.user.id, &id)
        .await
        .map_err(internal("read key"))?
        .ok_or_else(|| ApiError::not_found("key"))?;
    Ok(Json(key_json(&key)))
}

pub async fn rotate(
    State(state): State<SharedState>,
    session: SessionUser,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (secret, prefix, key_hash) = new_secret();
    let new_id = quota_core::ids::new_id("key_");
    let (key, old_hash) = match state.store.rotate_key(&session.user.id, &id, &new_id, &prefix, &key_hash).await {
        Ok(r) => r,
        Err(StoreError::NotFound) => return Err(ApiError::not_found("key")),
        Err(e) => return Err(internal("rotate key")(e)),
    };
    state.keys.evict(&old_hash);
    crate::changes::announce(&state, &crate::changes::key(&id)).await;
    let mut out = key_json(&key);
    out["key"] = json!(secret);
    out["replaces"] = json!(id);
    Ok((StatusCode::CREATED, Json(out)))
}

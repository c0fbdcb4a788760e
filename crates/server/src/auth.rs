//! Phase *admit* (DESIGN §1) and session authentication.
//!
//! Inference credentials (`/v1`) resolve to a [`Principal`]: who calls, who pays, in which
//! mode, under which app and scopes. API keys are looked up by hash in an in-memory cache (one
//! database read the first time a key is seen, none after); revoking or rotating a key evicts
//! it at once on this instance. Management routes take a session (`sess_…` bearer or the
//! `quota_session` cookie); each kind of credential is refused where the other belongs.

use crate::app::SharedState;
use crate::error::{internal, ApiError};
use crate::secrets::hash_token;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use parking_lot::RwLock;
use quota_core::{AccountId, BillingMode, Margin};
use quota_store::{ApiKey, Store, User};
use std::collections::HashMap;
use std::sync::Arc;

pub const API_KEY_PREFIX: &str = "sk-quota-";
pub const SESSION_PREFIX: &str = "sess_";
pub const USER_TOKEN_PREFIX: &str = "quota_token_";
pub const SESSION_COOKIE: &str = "quota_session";

/// Who is calling an inference route and who pays.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The developer whose key (or app) makes the request.
    pub developer_id: String,
    pub key_id: Option<String>,
    pub mode: BillingMode,
    /// The wallet that is debited.
    pub payer: AccountId,
    /// The end user in user mode (or sandbox with a user token).
    pub user_id: Option<String>,
    pub app_id: Option<String>,
    /// Markup applied on top of the base price (zero outside user mode).
    pub margin: Margin,
    /// The key's per-minute override, for the rate limiter.
    pub rate_limit_per_minute: Option<i64>,
}

impl Principal {
    pub fn sandbox(&self) -> bool {
        self.mode == BillingMode::Test
    }

    /// The scope of this caller's idempotency keys: the developer, the end user, and the mode,
    /// so a sandbox answer is never replayed to a production key (as Stripe keeps test and live
    /// apart).
    pub fn idempotency_scope(&self) -> String {
        format!("{}:{}:{}", self.developer_id, self.user_id.as_deref().unwrap_or("-"), self.mode)
    }
}

/// API keys by hash. Holds only live keys.
#[derive(Default)]
pub struct KeyCache {
    by_hash: RwLock<HashMap<String, Arc<ApiKey>>>,
}

impl KeyCache {
    pub async fn lookup(&self, store: &Store, hash: &str) -> Result<Option<Arc<ApiKey>>, ApiError> {
        if let Some(k) = self.by_hash.read().get(hash) {
            return Ok(Some(k.clone()));
        }
        let Some(key) = store.live_key_by_hash(hash).await.map_err(internal("key lookup"))? else {
            return Ok(None);
        };
        let key = Arc::new(key);
        self.by_hash.write().insert(hash.to_string(), key.clone());
        Ok(Some(key))
    }

    /// Drop a key (revoked, rotated, or changed) so the next use reads it afresh.
    pub fn evict(&self, hash: &str) {
        self.by_hash.write().remove(hash);
    }

    /// Drop every cached key with this id (after a settings change).
    pub fn evict_id(&self, key_id: &str) {
        self.by_hash.write().retain(|_, k| k.id != key_id);
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = header(headers, "authorization")?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Admit an inference request: resolve its credentials to a principal (SPEC §2 table).
pub async fn admit(state: &SharedState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    admit_with_key_param(state, headers, None).await
}

/// [`admit`], also accepting the key as the `key` query parameter (SPEC §3.3: Gemini clients
/// send `?key=`); a key in a header wins over one in the query.
pub async fn admit_with_key_param(
    state: &SharedState,
    headers: &HeaderMap,
    key_param: Option<&str>,
) -> Result<Principal, ApiError> {
    // `x-api-key` (the Anthropic SDK's header) and `X-API-Key` are the same header in HTTP;
    // `x-goog-api-key` is the Google GenAI SDK's.
    let api_key = header(headers, "x-api-key")
        .or_else(|| header(headers, "x-goog-api-key"))
        .or_else(|| key_param.map(str::trim).filter(|k| !k.is_empty()));
    let bearer = bearer(headers);
    let (key_secret, user_token) = match (api_key, bearer) {
        (Some(k), b) => (Some(k), b.filter(|b| b.starts_with(USER_TOKEN_PREFIX))),
        (None, Some(b)) if b.starts_with(USER_TOKEN_PREFIX) => (None, Some(b)),
        (None, Some(b)) => (Some(b), None),
        (None, None) => {
            return Err(ApiError::invalid_api_key("missing API key")
                .with_hint("send `Authorization: Bearer sk-quota-…` or `X-API-Key: sk-quota-…`"))
        }
    };
    if let Some(token) = user_token {
        // User access tokens come from the OAuth authorization server, which this build does
        // not include yet; no such token can be valid here.
        let _ = token;
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", "unknown or expired user access token"));
    }
    let Some(secret) = key_secret else {
        return Err(ApiError::invalid_api_key("missing API key"));
    };
    if secret.starts_with(SESSION_PREFIX) {
        return Err(ApiError::invalid_api_key("session tokens cannot call /v1; use an API key (sk-quota-…)"));
    }
    if !secret.starts_with(API_KEY_PREFIX) {
        return Err(ApiError::invalid_api_key("malformed API key: Quota keys start with sk-quota-"));
    }
    let key = state
        .keys
        .lookup(&state.store, &hash_token(secret))
        .await?
        .ok_or_else(|| ApiError::invalid_api_key("unknown or revoked API key"))?;
    match key.billing_mode {
        BillingMode::User => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "user_token_required",
            "this key bills users: send the user's access token as `Authorization: Bearer quota_token_…` and the key as `X-API-Key`",
        )),
        mode @ (BillingMode::Developer | BillingMode::Test) => Ok(Principal {
            developer_id: key.user_id.clone(),
            key_id: Some(key.id.clone()),
            mode,
            payer: AccountId::wallet(&key.user_id),
            user_id: None,
            app_id: key.app_id.clone(),
            margin: Margin::ZERO,
            rate_limit_per_minute: key.rate_limit_per_minute,
        }),
    }
}

/// A signed-in account on a management route.
pub struct SessionUser {
    pub user: User,
    pub token_hash: String,
}

fn session_token(parts: &Parts) -> Result<&str, ApiError> {
    if let Some(b) = bearer(&parts.headers) {
        if b.starts_with(API_KEY_PREFIX) {
            return Err(ApiError::invalid_api_key(
                "API keys cannot call management routes; sign in and use the session token",
            ));
        }
        return Ok(b);
    }
    if header(&parts.headers, "x-api-key").is_some() {
        return Err(ApiError::invalid_api_key(
            "API keys cannot call management routes; sign in and use the session token",
        ));
    }
    for cookie_header in parts.headers.get_all("cookie") {
        let Ok(text) = cookie_header.to_str() else {
            continue;
        };
        for pair in text.split(';') {
            if let Some((name, value)) = pair.trim().split_once('=') {
                if name == SESSION_COOKIE && !value.is_empty() {
                    return Ok(value);
                }
            }
        }
    }
    Err(ApiError::invalid_api_key("missing session: send `Authorization: Bearer sess_…` or the quota_session cookie"))
}

impl FromRequestParts<SharedState> for SessionUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &SharedState) -> Result<Self, Self::Rejection> {
        let token = session_token(parts)?;
        if !token.starts_with(SESSION_PREFIX) {
            return Err(ApiError::invalid_api_key("malformed session token"));
        }
        let token_hash = hash_token(token);
        let session = state.store.session(&token_hash).await.map_err(internal("session lookup"))?;
        let Some(session) = session else {
            return Err(ApiError::invalid_api_key("unknown, expired or revoked session"));
        };
        let user = state
            .store
            .user_by_id(&session.user_id)
            .await
            .map_err(internal("session user"))?
            .ok_or_else(|| ApiError::invalid_api_key("unknown session"))?;
        Ok(SessionUser { user, token_hash })
    }
}

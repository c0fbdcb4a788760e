//! API keys (SPEC §2): create (bound to one of the owner's apps, or not), list, update the name
//! and per-key rate limit, revoke, rotate. The secret comes back once, in [`IssuedKey`]; only
//! its hash is stored. Revocation and rotation evict the key from this instance's cache at
//! once and tell the other instances. Not here: who the owner is (the HTTP layer's session),
//! JSON or HTML.

use crate::account_caps::{ensure_room, Capped};
use crate::app::SharedState;
use crate::auth::API_KEY_PREFIX;
use crate::error::{internal, ApiError};
use crate::secrets::hash_token;
use crate::services::Name;
use quota_core::BillingMode;
use quota_store::{ApiKey, NewApiKey, StoreError};

/// Highest per-key override accepted, requests per minute.
const RATE_LIMIT_MAX: i64 = 1_000_000;
/// Characters of the secret shown in listings.
const PREFIX_CHARS: usize = 12;

/// A per-key rate limit: 1 to 1,000,000 requests per minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit(i64);

impl RateLimit {
    pub fn parse(per_minute: i64) -> Result<RateLimit, ApiError> {
        if !(1..=RATE_LIMIT_MAX).contains(&per_minute) {
            return Err(ApiError::bad_request(format!("rate_limit_per_minute must be between 1 and {RATE_LIMIT_MAX}")));
        }
        Ok(RateLimit(per_minute))
    }

    pub fn per_minute(self) -> i64 {
        self.0
    }
}

/// A billing mode as given (`developer` when absent).
pub fn parse_mode(mode: Option<&str>) -> Result<BillingMode, ApiError> {
    match mode {
        None => Ok(BillingMode::Developer),
        Some(m) => m.parse::<BillingMode>().map_err(ApiError::bad_request),
    }
}

/// A key to create.
pub struct NewKey {
    pub name: Name,
    pub billing_mode: BillingMode,
    pub rate_limit: Option<RateLimit>,
    /// One of the owner's apps: a `user` key then accepts only that app's user tokens.
    pub app_id: Option<String>,
}

/// What may change on a key: `None` leaves a field as it is; `Some(None)` clears the limit.
#[derive(Default)]
pub struct KeyPatch {
    pub name: Option<Name>,
    pub rate_limit: Option<Option<RateLimit>>,
    /// Whether `/v1/messages` streams end with the separate `event: quota_usage`.
    pub quota_usage_event: Option<bool>,
}

/// A key and its secret, which is shown this once.
pub struct IssuedKey {
    pub key: ApiKey,
    pub secret: String,
}

fn new_secret() -> (String, String, String) {
    let secret = quota_core::ids::new_secret(API_KEY_PREFIX);
    let prefix: String = secret.chars().take(PREFIX_CHARS).collect();
    let hash = hash_token(&secret);
    (secret, prefix, hash)
}

fn not_found_or(context: &'static str) -> impl FnOnce(StoreError) -> ApiError {
    move |e| match e {
        StoreError::NotFound => ApiError::not_found("key"),
        e => internal(context)(e),
    }
}

/// The owner's keys, newest first (revoked ones included).
pub async fn list(state: &SharedState, owner: &str) -> Result<Vec<ApiKey>, ApiError> {
    state.store.list_keys(owner).await.map_err(internal("list keys"))
}

pub async fn create(state: &SharedState, owner: &str, new: NewKey) -> Result<IssuedKey, ApiError> {
    let app_id = match &new.app_id {
        None => None,
        Some(id) => Some(
            state
                .store
                .app_of(owner, id)
                .await
                .map_err(internal("read app"))?
                .ok_or_else(|| ApiError::not_found("app"))?
                .id,
        ),
    };
    ensure_room(state, Capped::ApiKeys, owner).await?;
    let (secret, prefix, key_hash) = new_secret();
    let key = state
        .store
        .create_key(&NewApiKey {
            id: quota_core::ids::new_id("key_"),
            user_id: owner.to_string(),
            name: new.name.into_string(),
            prefix,
            key_hash,
            billing_mode: new.billing_mode,
            rate_limit_per_minute: new.rate_limit.map(RateLimit::per_minute),
            app_id,
        })
        .await
        .map_err(internal("create key"))?;
    Ok(IssuedKey { key, secret })
}

pub async fn update(state: &SharedState, owner: &str, id: &str, patch: KeyPatch) -> Result<ApiKey, ApiError> {
    let name = patch.name.map(Name::into_string);
    let limit = patch.rate_limit.map(|l| l.map(RateLimit::per_minute));
    let key = state
        .store
        .update_key(owner, id, name.as_deref(), limit, patch.quota_usage_event)
        .await
        .map_err(not_found_or("update key"))?;
    state.keys.evict_id(&key.id);
    crate::changes::announce(state, &crate::changes::key(&key.id)).await;
    Ok(key)
}

/// Revoke a key (it stops working within a second everywhere); the key as it now is.
pub async fn revoke(state: &SharedState, owner: &str, id: &str) -> Result<ApiKey, ApiError> {
    let hash = state.store.revoke_key(owner, id).await.map_err(not_found_or("revoke key"))?;
    state.keys.evict(&hash);
    crate::changes::announce(state, &crate::changes::key(id)).await;
    state.store.key(owner, id).await.map_err(internal("read key"))?.ok_or_else(|| ApiError::not_found("key"))
}

/// A new key with the old one's settings and a new secret; the old one stops working.
pub async fn rotate(state: &SharedState, owner: &str, id: &str) -> Result<IssuedKey, ApiError> {
    let (secret, prefix, key_hash) = new_secret();
    let new_id = quota_core::ids::new_id("key_");
    let (key, old_hash) =
        state.store.rotate_key(owner, id, &new_id, &prefix, &key_hash).await.map_err(not_found_or("rotate key"))?;
    state.keys.evict(&old_hash);
    crate::changes::announce(state, &crate::changes::key(id)).await;
    Ok(IssuedKey { key, secret })
}

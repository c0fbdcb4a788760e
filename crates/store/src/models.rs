//! Rows as the rest of Quota sees them.

use quota_core::BillingMode;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub id: String,
    pub email: String,
    #[serde(skip)]
    pub password_hash: String,
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct Session {
    pub user_id: String,
    pub expires_at: i64,
}

/// An API key's metadata; the secret itself is never stored, only its hash.
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub prefix: String,
    pub billing_mode: BillingMode,
    pub rate_limit_per_minute: Option<i64>,
    pub app_id: Option<String>,
    /// Whether its `/v1/messages` streams end with the separate `event: quota_usage` (SPEC
    /// §14: strict Anthropic parsers reject it; `quota` is on the final `message_delta` too).
    pub quota_usage_event: bool,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// What a new key is made of (the hash of a secret the caller generated).
#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub prefix: String,
    pub key_hash: String,
    pub billing_mode: BillingMode,
    pub rate_limit_per_minute: Option<i64>,
    pub app_id: Option<String>,
}

//! Usage records (SPEC §9): one per inference request, written in the same transaction as its
//! charge. Never the prompt or completion text.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct UsageRecord {
    pub id: String,
    pub created_at: i64,
    /// The developer whose key or app made the request.
    pub developer_id: String,
    pub key_id: Option<String>,
    pub app_id: Option<String>,
    /// The ledger account that paid (`wallet:usr_…`).
    pub payer_account: String,
    pub billing_mode: String,
    pub model: String,
    pub provider: String,
    pub input_tokens: i64,
    pub cached_tokens: i64,
    pub cache_write_tokens: i64,
    pub output_tokens: i64,
    pub base_cost: i64,
    pub markup: i64,
    pub total: i64,
    /// `succeeded`, `client_disconnected`, `upstream_error`, …
    pub status: String,
    pub latency_ms: i64,
    pub sandbox: bool,
}

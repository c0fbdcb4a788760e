//! The shapes of Quota's JSON answers, for the OpenAPI document only: the handlers build their
//! bodies with `serde_json::json!`, and these types say what those bodies hold. They are never
//! constructed; a field's type, name and optionality here must match the handler's `json!`
//! (the schemathesis run in `tests/python/test_fuzz.py` fails on any difference).
//!
//! Quota's own request bodies are not here: they derive `ToSchema` where they are parsed (the
//! handlers' `Deserialize` types), so the document cannot drift from what is accepted. The
//! inference request types here are the minimum of a provider's shape (the rest is forwarded).

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// SPEC §0, §13: every error. `code` is one of §13's codes; `error` may carry more detail
/// fields beside these (a 402's `required` and `available`, a spend limit's `limit`).
#[derive(Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable §13 code (`bad_request`, `invalid_api_key`, `insufficient_credits`, …).
    pub code: String,
    /// What went wrong, for a person.
    pub message: String,
    /// The OpenAI-compatible error type (`invalid_request_error`, `authentication_error`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// Advice, when there is some.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// An error of `/oauth/token` and `/oauth/revoke`, in RFC 6749 §5.2's shape.
#[derive(Serialize, ToSchema)]
pub struct OAuthErrorBody {
    /// `invalid_request`, `invalid_client`, `invalid_grant`, `unsupported_grant_type`, …
    pub error: String,
    pub error_description: String,
}

/// A page of a list (SPEC §0): `next_cursor` is `null` on the last page.
#[derive(Serialize, ToSchema)]
pub struct Page<T: ToSchema> {
    pub data: Vec<T>,
    pub next_cursor: Option<String>,
}

/// `{"status": "ok"}` / `{"status": "ready"}`.
#[derive(Serialize, ToSchema)]
pub struct Status {
    pub status: String,
}

/// `{"success": true}`.
#[derive(Serialize, ToSchema)]
pub struct Success {
    pub success: bool,
}

// ---- accounts and keys ---------------------------------------------------------------------

/// An account with its wallet's balance (credits).
#[derive(Serialize, ToSchema)]
pub struct Account {
    pub id: String,
    pub email: String,
    pub balance: i64,
}

/// Register and login: the account and a new session (also set as the `quota_session` cookie).
#[derive(Serialize, ToSchema)]
pub struct SessionResponse {
    pub user: Account,
    /// `sess_…`.
    pub session_token: String,
    /// RFC 3339.
    pub expires_at: String,
}

/// An API key as listed (never its secret).
#[derive(Serialize, ToSchema)]
pub struct Key {
    pub id: String,
    pub name: String,
    pub prefix: String,
    /// `developer`, `user` or `test`.
    pub billing_mode: String,
    pub rate_limit_per_minute: Option<i64>,
    pub app_id: Option<String>,
    pub created_at: String,
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
}

/// A key with its secret (`sk-quota-…`), shown on create and rotate only.
#[derive(Serialize, ToSchema)]
pub struct IssuedKey {
    #[serde(flatten)]
    pub key: Key,
    /// The secret, shown once.
    #[serde(rename = "key")]
    pub secret: String,
    /// On rotate: the id of the key this one replaces (now revoked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
}

/// `PATCH /developers/keys/{id}`: only these two fields may be sent.
#[derive(Serialize, ToSchema)]
#[schema(as = KeyPatch)]
pub struct KeyPatchBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A per-minute limit, or `null` to use the default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_minute: Option<Option<i64>>,
}

// ---- inference -----------------------------------------------------------------------------

/// A provider's answer, passed through unchanged (OpenAI, Anthropic or Google shape, per
/// route), with Quota's `quota` object added.
#[derive(Serialize, ToSchema)]
pub struct InferenceResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<crate::gateway::settle::QuotaObject>,
}

/// A chat message, at its simplest (content may also be a list of parts, as the provider's API
/// allows).
#[derive(Serialize, ToSchema)]
pub struct ChatMessage {
    #[schema(example = "user")]
    pub role: String,
    #[schema(example = "Hello")]
    pub content: String,
}

/// One server-sent event of a stream (`stream: true`): the provider's events, unchanged, and
/// Quota's `quota` in the last (SPEC §3.5).
#[derive(Serialize, ToSchema)]
pub struct SseEvent {
    /// The event's JSON, as text (`[DONE]` ends an OpenAI stream).
    pub data: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub event: Option<String>,
}

/// The minimum of an OpenAI Chat Completions request; every other OpenAI field is accepted
/// and forwarded as sent.
#[derive(Serialize, ToSchema)]
pub struct ChatCompletionRequest {
    #[schema(example = "gpt-4o-mini")]
    pub model: String,
    #[schema(min_items = 1)]
    pub messages: Vec<ChatMessage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, minimum = 1, example = 32)]
    pub max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub stream: Option<bool>,
}

/// The minimum of an Anthropic Messages request; the rest is Anthropic's and forwarded.
#[derive(Serialize, ToSchema)]
pub struct MessagesRequest {
    #[schema(example = "claude-3-5-haiku-latest")]
    pub model: String,
    #[schema(minimum = 1, example = 64)]
    pub max_tokens: u32,
    #[schema(min_items = 1)]
    pub messages: Vec<ChatMessage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub stream: Option<bool>,
}

/// An Anthropic `count_tokens` request: the Messages request without `max_tokens`.
#[derive(Serialize, ToSchema)]
pub struct CountTokensRequest {
    #[schema(example = "claude-3-5-haiku-latest")]
    pub model: String,
    #[schema(min_items = 1)]
    pub messages: Vec<ChatMessage>,
}

/// `{"input_tokens": n}` (Anthropic's).
#[derive(Serialize, ToSchema)]
pub struct InputTokens {
    pub input_tokens: i64,
}

/// The minimum of an OpenAI Responses request; the rest is OpenAI's and forwarded.
#[derive(Serialize, ToSchema)]
pub struct ResponsesRequest {
    #[schema(example = "gpt-4o-mini")]
    pub model: String,
    /// A string (or a list of input items, as OpenAI's API allows).
    #[schema(min_length = 1, example = "Hello")]
    pub input: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub stream: Option<bool>,
}

/// An OpenAI embeddings request.
#[derive(Serialize, ToSchema)]
pub struct EmbeddingsRequest {
    #[schema(example = "text-embedding-3-small")]
    pub model: String,
    /// A string (or a list of strings or token ids, as OpenAI's API allows).
    #[schema(min_length = 1, example = "Hello")]
    pub input: String,
}

/// A Gemini request body (`generateContent`, `streamGenerateContent`, `countTokens`,
/// `embedContent`, `batchEmbedContents`): Google's shape, forwarded.
#[derive(Serialize, ToSchema)]
pub struct GeminiRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = json!([{"role": "user", "parts": [{"text": "Hello"}]}]))]
    pub contents: Option<Vec<Value>>,
}

// ---- models and balance --------------------------------------------------------------------

/// Prices in USD per 1K tokens, as exact decimal strings.
#[derive(Serialize, ToSchema)]
pub struct ModelPricing {
    pub prompt_per_1k_tokens: String,
    pub completion_per_1k_tokens: String,
    pub cached_prompt_per_1k_tokens: String,
}

#[derive(Serialize, ToSchema)]
pub struct ModelInfo {
    pub id: String,
    pub object: String,
    /// Unix seconds of the last price change.
    pub created: i64,
    pub owned_by: String,
    pub context_window: u64,
    pub max_output_tokens: u64,
    pub pricing: ModelPricing,
}

/// OpenAI's list shape.
#[derive(Serialize, ToSchema)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelInfo>,
}

/// The paying wallet (SPEC §6): the developer's for keys, the user's for user tokens.
#[derive(Serialize, ToSchema)]
pub struct Balance {
    /// `developer` or `oauth_user`.
    pub wallet: String,
    pub balance: i64,
    pub user_id: String,
    pub billing_mode: String,
}

// ---- usage, ledger, analytics --------------------------------------------------------------

/// A usage record: `usage.completed`'s data with the record's id and time.
#[derive(Serialize, ToSchema)]
pub struct UsageRecord {
    pub id: String,
    pub created_at: String,
    pub request_id: String,
    pub client_request_id: Option<String>,
    pub key_id: Option<String>,
    pub app_id: Option<String>,
    pub payer: String,
    pub billing_mode: String,
    pub model: String,
    pub provider: String,
    pub input_tokens: i64,
    pub cached_tokens: i64,
    pub output_tokens: i64,
    pub base_cost: i64,
    pub markup: i64,
    pub total: i64,
    pub status: String,
    pub latency_ms: i64,
    pub sandbox: bool,
}

/// One transfer touching the caller's accounts.
#[derive(Serialize, ToSchema)]
pub struct LedgerEntry {
    pub id: String,
    pub object: String,
    pub from: String,
    pub to: String,
    pub amount: i64,
    /// `in` or `out`.
    pub direction: String,
    pub kind: String,
    pub cause: String,
    pub created_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct Period {
    pub start: String,
    pub end: String,
}

#[derive(Serialize, ToSchema)]
pub struct Totals {
    pub revenue: i64,
    pub cost: i64,
    pub profit: i64,
    pub users: u64,
    pub requests: i64,
    pub tokens: i64,
}

#[derive(Serialize, ToSchema)]
pub struct AnalyticsSummary {
    pub summary: Totals,
    pub period: Period,
}

/// A bucket: the totals, its `start` and the chosen metric's `value`.
#[derive(Serialize, ToSchema)]
pub struct TimeseriesBucket {
    #[serde(flatten)]
    pub totals: Totals,
    pub start: String,
    pub value: i64,
}

#[derive(Serialize, ToSchema)]
pub struct AnalyticsTimeseries {
    pub metric: String,
    pub interval: String,
    pub data: Vec<TimeseriesBucket>,
    pub period: Period,
}

/// A group: the totals, its `key` (`null` when the record has none) and the metric's `value`.
#[derive(Serialize, ToSchema)]
pub struct BreakdownRow {
    #[serde(flatten)]
    pub totals: Totals,
    pub key: Option<String>,
    pub value: i64,
}

#[derive(Serialize, ToSchema)]
pub struct AnalyticsBreakdown {
    pub metric: String,
    #[serde(rename = "groupBy")]
    pub group_by: String,
    pub data: Vec<BreakdownRow>,
    pub period: Period,
}

// ---- webhooks ------------------------------------------------------------------------------

/// A webhook endpoint (never its secret).
#[derive(Serialize, ToSchema)]
pub struct WebhookEndpoint {
    pub id: String,
    pub object: String,
    pub url: String,
    pub description: String,
    pub events: Vec<String>,
    pub low_balance_threshold: Option<i64>,
    /// `enabled` or `disabled`.
    pub status: String,
    pub disabled_at: Option<String>,
    pub disabled_reason: Option<String>,
    pub failing_since: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// An endpoint with its signing secret (`whsec_…`), shown on create and rotate-secret only.
#[derive(Serialize, ToSchema)]
pub struct IssuedWebhookEndpoint {
    #[serde(flatten)]
    pub endpoint: WebhookEndpoint,
    pub secret: String,
}

#[derive(Serialize, ToSchema)]
pub struct Deleted {
    pub id: String,
    pub object: String,
    pub deleted: bool,
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryAttempt {
    pub id: String,
    pub attempted_at: String,
    pub status_code: Option<i64>,
    pub latency_ms: i64,
    pub response_snippet: Option<String>,
    pub error: Option<String>,
    pub succeeded: bool,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookDelivery {
    pub id: String,
    pub object: String,
    pub event_id: String,
    pub event_type: String,
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: Option<String>,
    pub created_at: String,
    pub log: Vec<DeliveryAttempt>,
}

/// A replay queued: `{id, object: "webhook_delivery", status: "pending"}`.
#[derive(Serialize, ToSchema)]
pub struct ReplayQueued {
    pub id: String,
    pub object: String,
    pub status: String,
}

/// A `webhook.test` event queued.
#[derive(Serialize, ToSchema)]
pub struct TestEventQueued {
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: String,
}

// ---- OAuth apps, connections, funding ------------------------------------------------------

/// A developer's OAuth app (never its secret).
#[derive(Serialize, ToSchema)]
pub struct App {
    pub id: String,
    pub name: String,
    pub client_id: String,
    /// `client_secret_post` or `none` (a public client).
    pub token_endpoint_auth_method: String,
    pub redirect_uris: Vec<String>,
    pub allowed_scopes: Vec<String>,
    /// 0 to 10, as a number.
    pub profit_margin: f64,
    pub profit_margin_bps: i64,
    pub welcome_credits: i64,
    pub created_at: String,
    pub updated_at: String,
}

/// A new app with its `client_secret` (`null` for public clients), shown once.
#[derive(Serialize, ToSchema)]
pub struct CreatedApp {
    #[serde(flatten)]
    pub app: App,
    pub client_secret: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct DeletedApp {
    pub id: String,
    pub deleted: bool,
    pub disconnected_users: i64,
}

/// A user connected to an app; `email` and `balance` only when the user granted them.
#[derive(Serialize, ToSchema)]
pub struct AppUser {
    pub user_id: String,
    pub email: Option<String>,
    pub balance: Option<i64>,
    pub spend: i64,
    pub scopes: Vec<String>,
    pub connected_at: String,
}

/// An app the signed-in user connected, with what they spent through it.
#[derive(Serialize, ToSchema)]
pub struct Connection {
    pub app_id: String,
    pub app_name: String,
    pub scopes: Vec<String>,
    pub spend: i64,
    pub connected_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct Disconnected {
    pub success: bool,
    pub app_id: String,
}

/// `POST /v1/funding/credit`'s answer, as the public docs give it (plus `ledger_id`).
#[derive(Serialize, ToSchema)]
pub struct FundingCreditResult {
    pub success: bool,
    pub user_id: String,
    pub new_balance: i64,
    pub amount_added: i64,
    pub ledger_id: String,
}

/// `POST /v1/funding/credit`'s body: `user_id` or `external_user_id` (the same Quota id), an
/// amount in credits, and the older docs' `idempotency_key` (the header wins).
#[derive(Serialize, ToSchema)]
pub struct FundingCreditRequest {
    pub user_id: Option<String>,
    pub external_user_id: Option<String>,
    #[schema(minimum = 1)]
    pub amount: i64,
    pub description: Option<String>,
    pub idempotency_key: Option<String>,
}

/// The account as `GET /account` shows it (SPEC §14): id, email, balance, plan, profile fields
/// and `billing{…}`.
#[derive(Serialize, ToSchema)]
pub struct AccountProfile {
    pub id: String,
    pub email: String,
    pub balance: i64,
    pub plan: String,
    pub created_at: String,
    pub name: Option<String>,
    pub avatar_url: Option<String>,
    #[schema(value_type = Object)]
    pub user_metadata: serde_json::Value,
    #[schema(value_type = Vec<Object>)]
    pub linked_providers: Vec<serde_json::Value>,
    #[schema(value_type = Object)]
    pub billing: serde_json::Value,
}

/// `PATCH /account`'s body: the profile fields a user may change.
#[derive(Serialize, ToSchema)]
pub struct AccountPatch {
    pub name: Option<String>,
    pub avatar_url: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub user_metadata: Option<serde_json::Value>,
}

/// `GET /v1/me`: the account's fields (as `GET /account`), the credential's `billing_mode`, and
/// `usage`: what its wallet paid over the last 30 days (`period`, `requests`, `tokens`,
/// `credits_spent`, `by_model[]`).
#[derive(Serialize, ToSchema)]
pub struct Me {
    #[serde(flatten)]
    pub account: AccountProfile,
    pub billing_mode: String,
    #[schema(value_type = Object)]
    pub usage: serde_json::Value,
}

#[derive(Serialize, ToSchema)]
pub struct FundingResult {
    pub success: bool,
    pub user_id: String,
    pub amount: i64,
    pub balance_after: i64,
    pub ledger_id: String,
}

// ---- the authorization server --------------------------------------------------------------

/// OpenID Connect discovery: endpoints under the issuer, and what is supported.
#[derive(Serialize, ToSchema)]
pub struct Discovery {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub userinfo_endpoint: String,
    pub revocation_endpoint: String,
    pub jwks_uri: String,
    pub response_types_supported: Vec<String>,
    pub grant_types_supported: Vec<String>,
    pub scopes_supported: Vec<String>,
    pub token_endpoint_auth_methods_supported: Vec<String>,
    pub code_challenge_methods_supported: Vec<String>,
    pub id_token_signing_alg_values_supported: Vec<String>,
}

/// `{"keys": [JWK]}`: the RS256 key that signs id_tokens.
#[derive(Serialize, ToSchema)]
pub struct Jwks {
    pub keys: Vec<Value>,
}

/// The token and revocation endpoints' form (`application/x-www-form-urlencoded`).
#[derive(Serialize, ToSchema)]
pub struct TokenForm {
    /// `authorization_code` or `refresh_token` (token endpoint only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect_uri: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code_verifier: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The token to revoke (revocation endpoint only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
}

/// The claims a token's scopes release, plus the user's balance.
#[derive(Serialize, ToSchema)]
pub struct UserInfo {
    pub sub: String,
    pub balance: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_verified: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `{}`.
#[derive(Serialize, ToSchema)]
pub struct Empty {}

// ---- payments ------------------------------------------------------------------------------

#[derive(Serialize, ToSchema)]
pub struct Package {
    pub id: String,
    pub name: String,
    pub price_cents: i64,
    pub currency: String,
    pub credits: i64,
}

#[derive(Serialize, ToSchema)]
pub struct PackageList {
    pub data: Vec<Package>,
}

#[derive(Serialize, ToSchema)]
pub struct CheckoutStarted {
    pub checkout_url: String,
    pub session_id: String,
}

/// `{received: true}` and either `duplicate: true` or `applied`.
#[derive(Serialize, ToSchema)]
pub struct StripeReceived {
    pub received: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
    /// Whether the event credited a wallet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct Onboarding {
    pub onboarding_url: String,
    pub stripe_account_id: String,
}

/// The developer's earnings accounts (credits).
#[derive(Serialize, ToSchema)]
pub struct Earnings {
    pub currency: String,
    pub total_earned: i64,
    pub pending: i64,
    pub pending_eligible: i64,
    pub available: i64,
    pub reserve: i64,
    pub in_transit: i64,
    pub paid: i64,
    pub minimum_payout: i64,
    pub stripe_account_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Payout {
    pub id: String,
    /// `pending`, `paid` or `failed`.
    pub status: String,
    pub amount: i64,
    pub amount_cents: i64,
    pub currency: String,
    pub stripe_account_id: String,
    pub stripe_transfer_id: Option<String>,
    pub idempotency_key: String,
    pub covered_from: i64,
    pub covered_to: i64,
    pub attempts: i64,
    pub failure_message: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub paid_at: Option<String>,
}

//! The life of one inference request (DESIGN §1), phase by phase:
//!
//! 1. **admit** — [`crate::auth::admit`]: credentials → [`Principal`].
//! 2. **limit** — [`limit`]: the rate limits that apply, all checked before any counts.
//! 3. **route** — [`route`]: model id → catalog entry + provider adapter (sandbox for `test`).
//! 4. **reserve** — [`reserve`]: a ledger hold for the most the request can cost; 402 here.
//! 5. **forward** — [`forward::Inference::run`] calls the adapter (`chat`, or `call` on a native
//!    route): the upstream call, chunks as they arrive. Every inference route goes through it.
//! 6. **meter** — the adapter's [`quota_providers::Meter`] or the complete body's usage.
//! 7. **settle** — [`Billing::settle`]: the hold becomes the metered charge, durably.
//! 8. **record** — the usage record (marked as owing `usage.completed` when an endpoint wants
//!    it) and `balance.low` watches ([`crate::webhooks::Directory::settlement_events`]),
//!    committed with the charge in the same transaction (outbox).
//!
//! Streams run phases 6–8 from [`stream::billed_stream`], including when the client leaves.

pub mod forward;
pub mod idempotency;
pub mod stream;

use crate::app::SharedState;
use crate::auth::Principal;
use crate::error::{internal, ApiError};
use axum::http::HeaderMap;
use quota_core::billing::{reservation, Charge};
use quota_core::Provider;
use quota_core::{AccountId, BillingMode, Credits, Model, PlatformAccount, Transfer, TransferKind, Usage};
use quota_providers::{ChatProvider, Fault};
use quota_store::ledger::Hold;
use quota_store::usage::UsageRecord;
use quota_store::{LedgerError, Settlement};
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;

/// A request that passed its rate limits; its headers go on whatever the request answers.
pub struct Limited(Option<crate::limit::gcra::Decision>);

/// The window every `/v1` limit is expressed in.
const LIMIT_WINDOW_SECS: i64 = 60;

impl Limited {
    pub fn apply(self, mut resp: axum::response::Response) -> axum::response::Response {
        if let Some(d) = self.0 {
            let now = (quota_store::now_ms() / 1000) as i64;
            crate::limit::apply_headers(resp.headers_mut(), &d, LIMIT_WINDOW_SECS, now);
        }
        resp
    }
}

/// Phase *limit* (SPEC §7): per key (its override or the default), and per (app, user) for
/// user tokens. A refusal is 429 `rate_limit_exceeded`, before anything is reserved or sent.
pub async fn limit(state: &SharedState, principal: &Principal) -> Result<Limited, ApiError> {
    use crate::limit::{gcra::Quota, Limit};
    let default = state.config.rate_limit_per_minute;
    let mut limits = Vec::with_capacity(2);
    if let Some(key) = &principal.key_id {
        let per_minute =
            principal.rate_limit_per_minute.map(|l| l.clamp(1, i64::from(u32::MAX)) as u32).unwrap_or(default);
        limits.push(Limit { key: format!("key:{key}"), quota: Quota::per_minute(per_minute) });
    }
    if let (Some(app), Some(user)) = (&principal.app_id, &principal.user_id) {
        limits.push(Limit { key: format!("appuser:{app}:{user}"), quota: Quota::per_minute(default) });
    }
    if limits.is_empty() {
        return Ok(Limited(None));
    }
    let decisions = state.limiter.check(&limits).await;
    let Some(shown) = crate::limit::shown(&decisions) else { return Ok(Limited(None)) };
    metrics::counter!("quota_ratelimit_decisions_total", "allowed" => if shown.allowed { "true" } else { "false" })
        .increment(1);
    if !shown.allowed {
        let mut e = crate::limit::refusal(&shown);
        e.rate_limit = Some(shown);
        return Err(e);
    }
    Ok(Limited(Some(shown)))
}

/// Phase *route*: the model and the adapter that serves it for this principal.
pub fn route(
    state: &SharedState,
    principal: &Principal,
    model_id: &str,
) -> Result<(Arc<Model>, Arc<dyn ChatProvider>), ApiError> {
    let model = state.catalog.get(model_id).ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "model_not_found",
            format!("model `{model_id}` does not exist"),
        )
        .with_hint("GET /v1/models lists the models this key may use")
    })?;
    let provider = state.chat_provider(model, principal.sandbox());
    Ok((model.clone(), provider))
}

/// Phase *route* on a provider's native route: the Quota id or the provider's bare id
/// (`claude-sonnet-4-5`, `gemini-2.5-flash`) of one of that provider's models.
pub fn route_native(state: &SharedState, provider: Provider, model_id: &str) -> Result<Arc<Model>, ApiError> {
    state.catalog.get_native(provider, model_id).cloned().ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "model_not_found",
            format!("model `{model_id}` is not a {provider} model this gateway serves"),
        )
        .with_hint("GET /v1/models lists the models this key may use")
    })
}

/// `X-Quota-Sandbox-Fault` (SPEC §4.4), read for sandbox principals only (ignored otherwise).
pub fn sandbox_fault(headers: &HeaderMap, principal: &Principal) -> Result<Option<Fault>, ApiError> {
    match headers.get("x-quota-sandbox-fault") {
        Some(v) if principal.sandbox() => {
            Ok(Some(v.to_str().unwrap_or("").parse::<Fault>().map_err(ApiError::bad_request)?))
        }
        _ => Ok(None),
    }
}

/// Phase *reserve*: hold the most this request can cost on the payer's wallet (SPEC §4.3.1–2):
/// base + markup in user mode. In the sandbox the developer's wallet holds the base only; with
/// a user token the user's wallet must still be able to cover base + markup (SPEC §4.4), which
/// is checked but not held: the user's money is never spent in the sandbox.
pub async fn reserve(
    state: &SharedState,
    principal: &Principal,
    model: &Model,
    prompt_tokens_max: u64,
    output_tokens_max: u64,
) -> Result<Hold, ApiError> {
    let held = reservation(model, prompt_tokens_max, output_tokens_max, principal.margin);
    let amount = if principal.sandbox() {
        if let Some(user) = &principal.user_id {
            let wallet = AccountId::wallet(user);
            let balance = state.ledger.balance(&wallet).await.map_err(internal("reserve"))?;
            let available = state.ledger.available(&wallet).await.map_err(internal("reserve"))?;
            if balance.0 <= 0 || available < held.total() {
                return Err(ApiError::insufficient_credits(available.0.max(0), held.total().0)
                    .with_hint("the user's wallet could not pay for this request in production (sandbox check)"));
            }
        }
        held.base
    } else {
        held.total()
    };
    match state.ledger.hold(&principal.payer, amount).await {
        Ok(h) => {
            metrics::counter!("quota_reservations_total", "outcome" => "held").increment(1);
            Ok(h)
        }
        Err(LedgerError::Insufficient { available, needed }) => {
            metrics::counter!("quota_reservations_total", "outcome" => "insufficient").increment(1);
            Err(ApiError::insufficient_credits(available.0, needed.0))
        }
        Err(e) => Err(internal("reserve")(e)),
    }
}

/// The `quota` object (SPEC §3.5).
#[derive(Debug, Clone, Serialize)]
pub struct QuotaObject {
    pub credits_used: i64,
    pub balance_before: i64,
    pub balance_after: i64,
    pub billing_mode: BillingMode,
    pub request_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_cost: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub markup: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<bool>,
}

impl QuotaObject {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("serializing the quota object cannot fail")
    }
}

/// Everything needed to settle and record one request, whichever way it ends.
pub struct Billing {
    pub state: SharedState,
    pub principal: Principal,
    pub model: Arc<Model>,
    pub request_id: String,
    /// Prefix of this request's transfer ids: random, or derived from its Idempotency-Key so a
    /// replayed request can never be charged twice.
    pub charge_id: String,
    pub started: Instant,
}

impl Billing {
    fn usage_record(&self, usage: &Usage, charge: &Charge, status: &str) -> UsageRecord {
        UsageRecord {
            id: self.request_id.clone(),
            created_at: self.state.clock.now_ms(),
            developer_id: self.principal.developer_id.clone(),
            key_id: self.principal.key_id.clone(),
            app_id: self.principal.app_id.clone(),
            payer_account: self.principal.payer.to_string(),
            billing_mode: self.principal.mode.as_str().to_string(),
            model: self.model.id.clone(),
            provider: self.model.provider.as_str().to_string(),
            input_tokens: usage.input_tokens as i64,
            cached_tokens: usage.cached_tokens as i64,
            cache_write_tokens: usage.cache_write_tokens as i64,
            output_tokens: usage.output_tokens as i64,
            base_cost: charge.base.0,
            markup: charge.markup.0,
            total: charge.total().0,
            status: status.to_string(),
            latency_ms: self.started.elapsed().as_millis() as i64,
            pending_event: None,
            sandbox: self.principal.sandbox(),
        }
    }

    /// The transfers that charge `charge` to the payer.
    fn transfers(&self, charge: &Charge) -> Vec<Transfer> {
        let now = self.state.clock.now_ms();
        let sandbox = self.principal.sandbox();
        let mut out = Vec::with_capacity(2);
        if charge.base.is_positive() {
            out.push(Transfer {
                id: format!("{}_base", self.charge_id),
                from: self.principal.payer.clone(),
                to: AccountId::Platform(if sandbox {
                    PlatformAccount::SandboxRevenue
                } else {
                    PlatformAccount::Revenue
                }),
                amount: charge.base,
                kind: if sandbox { TransferKind::SandboxCharge } else { TransferKind::UsageCharge },
                cause: self.request_id.clone(),
                created_at_ms: now,
            });
        }
        if charge.markup.is_positive() && !sandbox {
            out.push(Transfer {
                id: format!("{}_markup", self.charge_id),
                from: self.principal.payer.clone(),
                to: AccountId::EarningsPending(self.principal.developer_id.clone()),
                amount: charge.markup,
                kind: TransferKind::Markup,
                cause: self.request_id.clone(),
                created_at_ms: now,
            });
        }
        out
    }

    /// Phases *settle* and *record*: charge exactly the metered cost, free the rest of the hold,
    /// write the usage record, all in one commit; answer once it is durable.
    pub async fn settle(&self, hold: Hold, usage: Usage, status: &str) -> Result<QuotaObject, ApiError> {
        let charge = Charge::for_usage(&self.model, &usage, self.principal.margin);
        // In the sandbox the developer pays the base price; the markup is reported, not taken.
        let charged = if self.principal.sandbox() { charge.base } else { charge.total() };
        let balance_before = hold.balance_at_hold();
        let mut record = self.usage_record(&usage, &charge, status);
        let low_balance = self.state.webhooks.settlement_events(&self.principal, &mut record);
        let settlement = Settlement {
            transfers: self.transfers(&charge),
            usage: Some(record),
            idempotency: None,
            key_used: self.principal.key_id.clone(),
            events: Vec::new(),
            low_balance,
        };
        let committed = self.state.ledger.settle(hold, settlement).await.map_err(|e| {
            tracing::error!(request_id = %self.request_id, error = %e, "settlement failed");
            ApiError::internal()
        })?;
        if committed.duplicates > 0 {
            // Only an Idempotency-Key charge can repeat an id, and `idempotency::begin` refuses
            // those whose first attempt was charged; report the truth if it happens anyway.
            tracing::error!(request_id = %self.request_id, charge = %self.charge_id, "charge already existed; not charged again");
            let balance = self.state.ledger.balance(&self.principal.payer).await.unwrap_or(balance_before);
            return Ok(QuotaObject {
                credits_used: 0,
                balance_before: balance.0,
                balance_after: balance.0,
                billing_mode: self.principal.mode,
                request_id: self.request_id.clone(),
                base_cost: None,
                markup: None,
                sandbox: self.principal.sandbox().then_some(true),
            });
        }
        let balance_after = match committed.balance_of(&self.principal.payer) {
            Some(b) => b,
            None => {
                self.state.ledger.balance(&self.principal.payer).await.unwrap_or(Credits(balance_before.0 - charged.0))
            }
        };
        let user_mode = self.principal.user_id.is_some();
        Ok(QuotaObject {
            credits_used: charged.0,
            balance_before: balance_before.0,
            balance_after: balance_after.0,
            billing_mode: self.principal.mode,
            request_id: self.request_id.clone(),
            base_cost: user_mode.then_some(charge.base.0),
            markup: user_mode.then_some(charge.markup.0),
            sandbox: self.principal.sandbox().then_some(true),
        })
    }

    /// A request that ends without a charge still leaves a usage record (SPEC §9).
    pub async fn record_failure(&self, status: &str) {
        if status != "client_disconnected" {
            metrics::counter!("quota_upstream_errors_total", "provider" => self.model.provider.as_str(), "code" => status.to_string())
                .increment(1);
        }
        let record = self.usage_record(&Usage::default(), &Charge::default(), status);
        if let Err(e) = self.state.ledger.record(record).await {
            tracing::error!(request_id = %self.request_id, error = %e, "could not record a failed request");
        }
    }
}

/// The usage-record status for an error.
pub fn failure_status(e: &ApiError) -> &'static str {
    e.code
}

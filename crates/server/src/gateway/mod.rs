//! The life of one inference request (DESIGN §1). Every inference route runs the same phases,
//! in this order, in one function — [`pipeline::serve`] — over one request context; a route
//! supplies only what differs through the [`pipeline::Route`] trait
//! ([`routes::chat`], [`routes::messages`], [`routes::gemini`]):
//!
//! 1. **admit** — [`crate::auth::admit`]: credentials → [`Principal`].
//! 2. **limit** — [`limit`]: the rate limits that apply, all checked before any counts.
//! 3. **parse** — the route's `parse`: the body into its typed request; 400 on anything wrong.
//! 4. **route** — the route's `route`: model id → catalog entry + adapter (sandbox for `test`).
//! 5. **idempotency** — [`idempotency::begin`]: replay, refuse, or claim the key.
//! 6. **reserve** — [`reserve::reserve`]: a hold of the request's upper bound
//!    ([`quota_core::hold`]); 402 here, saying what would fit, before anything is sent.
//! 7. **forward** — the route's `call`: the adapter's upstream call, chunks as they arrive.
//!    From here the request runs detached from the client's connection: a provider-billed
//!    call is charged whatever the client does (SPEC §4.3(5)).
//! 8. **meter** — the adapter's [`quota_providers::Meter`] or the complete body's usage.
//! 9. **settle** — [`settle::Billing::settle`]: the hold becomes the metered charge, capped at
//!    the hold ([`quota_core::transfers`]), durably.
//! 10. **record** — the usage record and webhook watches, committed with the charge (outbox).
//!
//! The end phase — failures recorded, the idempotency claim completed or released, the limit
//! headers applied — is in [`pipeline`] too. Streams run phases 8–10 from
//! [`stream::billed_stream`], including when the client leaves.

pub mod count_tokens;
pub mod idempotency;
pub mod inbound;
pub mod pipeline;
pub mod reserve;
pub mod routes;
pub mod settle;
pub mod stream;

use crate::app::SharedState;
use crate::auth::Principal;
use crate::error::ApiError;
use axum::http::HeaderMap;
use quota_core::{Model, ModelKind, Provider};
use quota_providers::Fault;
use std::sync::Arc;

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
        e.rate_limit = Some(Box::new(shown));
        return Err(e);
    }
    Ok(Limited(Some(shown)))
}

/// The catalog entry of `model_id` (a Quota id), or 404 `model_not_found`.
pub fn model(state: &SharedState, model_id: &str) -> Result<Arc<Model>, ApiError> {
    state.catalog.get(model_id).cloned().ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "model_not_found",
            format!("model `{model_id}` does not exist"),
        )
        .with_hint("GET /v1/models lists the models this key may use")
    })
}

/// On a provider's native route: the Quota id or the provider's bare id (`claude-sonnet-4-5`,
/// `gemini-2.5-flash`) of one of that provider's models.
pub fn native_model(state: &SharedState, provider: Provider, model_id: &str) -> Result<Arc<Model>, ApiError> {
    state.catalog.get_native(provider, model_id).cloned().ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "model_not_found",
            format!("model `{model_id}` is not a {provider} model this gateway serves"),
        )
        .with_hint("GET /v1/models lists the models this key may use")
    })
}

/// `model` if it is of `kind` (a chat model on a generation route, an embedding model on an
/// embedding route), else 400 naming the route that serves it.
pub fn of_kind(model: Arc<Model>, kind: ModelKind) -> Result<Arc<Model>, ApiError> {
    if model.kind == kind {
        return Ok(model);
    }
    let message = match model.kind {
        ModelKind::Embedding => format!("`{}` is an embedding model: use POST /v1/embeddings", model.id),
        ModelKind::Chat => format!("`{}` is not an embedding model", model.id),
    };
    Err(ApiError::bad_request(message))
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

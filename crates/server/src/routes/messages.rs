//! `POST /v1/messages` (SPEC §3.2): the Anthropic Messages API, forwarded to Anthropic (or
//! answered by the sandbox) through every phase of [`crate::gateway`]. The answer is
//! Anthropic's, unchanged, plus `quota`; a stream ends with an extra `event: quota_usage`.

use crate::auth::admit;
use crate::error::ApiError;
use crate::gateway::forward::{Bounds, Inbound};
use crate::gateway::stream::StreamShape;
use crate::gateway::{route_native, sandbox_fault, QuotaObject};
use axum::response::Response;
use bytes::Bytes;
use quota_core::billing::output_tokens_to_reserve;
use quota_core::{Provider, Usage};
use quota_providers::anthropic::MessagesRequest;
use quota_providers::sse::frame;
use quota_providers::{Meter, NativeCall};
use std::sync::Arc;

/// Longest `anthropic-version` passed through.
const VERSION_MAX_LEN: usize = 64;

pub async fn messages(inbound: Inbound) -> Result<Response, ApiError> {
    let principal = admit(&inbound.state, &inbound.headers).await?;
    inbound.limited(principal, messages_admitted).await
}

async fn messages_admitted(inbound: Inbound, principal: crate::auth::Principal) -> Result<Response, ApiError> {
    let request = MessagesRequest::parse(&inbound.body).map_err(ApiError::bad_request)?;
    let model = route_native(&inbound.state, Provider::Anthropic, &request.model)?;
    let fault = sandbox_fault(&inbound.headers, &principal)?;
    let version = match inbound.headers.get("anthropic-version") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.len() <= VERSION_MAX_LEN)
                .ok_or_else(|| ApiError::bad_request("`anthropic-version` must be a version such as 2023-06-01"))?,
        ),
    };
    let provider = inbound.state.messages_provider(principal.sandbox());
    let call = NativeCall { model: &model, request: &request, raw: &inbound.body, version, fault };
    let bounds = Bounds {
        prompt_tokens_max: provider.prompt_tokens_max(&call),
        output_tokens_max: output_tokens_to_reserve(&model, Some(request.max_tokens)),
    };
    inbound.run(principal, model.clone(), bounds, Arc::new(AnthropicEvents), provider.call(call)).await
}

/// Anthropic's stream ending: its own events, then `event: quota_usage` whose data is the
/// `quota` object (with `"type": "quota_usage"`, as every Anthropic event data names its type,
/// so SDKs that read events by type see it for what it is).
pub struct AnthropicEvents;

impl StreamShape for AnthropicEvents {
    fn final_events(&self, _usage: &Usage, quota: &QuotaObject, _meter: &Meter) -> Bytes {
        let mut data = serde_json::to_value(quota).unwrap_or_default();
        data["type"] = serde_json::json!("quota_usage");
        frame(Some("quota_usage"), data.to_string().as_bytes())
    }

    /// `event: error` as Anthropic sends it, with Quota's §13 error object (its `type` is
    /// Anthropic's error type name too: `api_error`, `rate_limit_error`…).
    fn error_event(&self, error: &ApiError) -> Bytes {
        let mut data = error.body_json();
        data["type"] = serde_json::json!("error");
        frame(Some("error"), data.to_string().as_bytes())
    }
}

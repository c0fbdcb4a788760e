//! `POST /v1/messages` (SPEC §3.2): the Anthropic Messages API, forwarded to Anthropic (or
//! answered by the sandbox) through the one pipeline. The answer is Anthropic's, unchanged,
//! plus `quota`; a stream ends with an extra `event: quota_usage`.

use crate::auth::Principal;
use crate::error::ApiError;
use crate::gateway::inbound::Inbound;
use crate::gateway::pipeline::{serve, Call, Route};
use crate::gateway::settle::QuotaObject;
use crate::gateway::stream::StreamShape;
use axum::response::Response;
use bytes::Bytes;
use futures::future::BoxFuture;
use quota_core::hold::HoldBound;
use quota_core::{Model, Provider, Usage};
use quota_providers::anthropic::MessagesRequest;
use quota_providers::sse::frame;
use quota_providers::{ChatResponse, Meter, NativeCall, NativeProvider, UpstreamError};
use std::sync::Arc;

/// Longest `anthropic-version` passed through.
const VERSION_MAX_LEN: usize = 64;
/// Longest `anthropic-beta` passed through (a comma-separated list of feature names).
const BETA_MAX_LEN: usize = 512;
/// Beta features that change what a request costs beyond the catalog's prices: refused rather
/// than billed at the wrong price (DESIGN §4: no charge Quota cannot price).
const UNPRICED_BETAS: &[&str] = &["fast-mode"];

/// `anthropic-beta`, passed through when it is a list of feature names Quota can price.
fn anthropic_beta(headers: &axum::http::HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("anthropic-beta") else { return Ok(None) };
    let bad = || ApiError::bad_request("`anthropic-beta` must be a comma-separated list of beta feature names");
    let text = value.to_str().map_err(|_| bad())?.trim();
    let names_ok = text
        .split(',')
        .map(str::trim)
        .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'));
    if text.len() > BETA_MAX_LEN || !names_ok {
        return Err(bad());
    }
    if let Some(n) = text.split(',').map(str::trim).find(|n| UNPRICED_BETAS.iter().any(|u| n.starts_with(u))) {
        return Err(ApiError::bad_request(format!(
            "the beta feature `{n}` is billed at prices this gateway does not know, so it is not forwarded"
        )));
    }
    Ok(Some(text.to_string()))
}

#[utoipa::path(
    post,
    path = "/v1/messages",
    tag = "inference",
    summary = "Anthropic Messages, forwarded and charged (`anthropic-version` passed through)",
    request_body(content = crate::openapi::schemas::MessagesRequest, description = "Anthropic's request; fields beyond these are forwarded"),
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$", description = "At most 255 characters; the same key and body within 24 h answer the first response again (SPEC §0)")),
    responses(
        (status = 200, description = "Anthropic's message plus `quota`, or Anthropic's event stream then `event: quota_usage`", content((crate::openapi::schemas::InferenceResponse = "application/json"), (crate::openapi::schemas::SseEvent = "text/event-stream"))),
        crate::openapi::InferenceErrors,
    ),
    security(("apiKey" = []), ("apiKeyHeader" = []), ("userToken" = []))
)]
pub async fn messages(inbound: Inbound) -> Response {
    serve(Messages, inbound).await
}

/// The Messages route.
pub struct Messages;

/// A Messages request and the API version its client asked for.
pub struct MessagesCall {
    request: MessagesRequest,
    version: Option<String>,
    beta: Option<String>,
}

fn native_call<'a>(call: Call<'a, Messages>) -> NativeCall<'a, MessagesRequest> {
    NativeCall {
        model: call.model,
        request: &call.request.request,
        raw: call.raw,
        version: call.request.version.as_deref(),
        beta: call.request.beta.as_deref(),
        fault: call.fault,
    }
}

impl Route for Messages {
    type Request = MessagesCall;
    type Adapter = dyn NativeProvider<MessagesRequest>;

    fn parse(&self, inbound: &Inbound) -> Result<MessagesCall, ApiError> {
        let request = MessagesRequest::parse(&inbound.body).map_err(ApiError::bad_request)?;
        let version = match inbound.headers.get("anthropic-version") {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .map(str::trim)
                    .filter(|v| !v.is_empty() && v.len() <= VERSION_MAX_LEN)
                    .ok_or_else(|| ApiError::bad_request("`anthropic-version` must be a version such as 2023-06-01"))?
                    .to_string(),
            ),
        };
        let beta = anthropic_beta(&inbound.headers)?;
        Ok(MessagesCall { request, version, beta })
    }

    fn route(
        &self,
        inbound: &Inbound,
        principal: &Principal,
        call: &MessagesCall,
    ) -> Result<(Arc<Model>, Arc<Self::Adapter>), ApiError> {
        let model = crate::gateway::native_model(&inbound.state, Provider::Anthropic, &call.request.model)?;
        let model = crate::gateway::of_kind(model, quota_core::ModelKind::Chat)?;
        Ok((model, inbound.state.messages_provider(principal.sandbox())))
    }

    fn bounds(&self, call: Call<'_, Self>) -> HoldBound {
        let prompt = call.adapter.prompt_tokens_max(&native_call(call));
        HoldBound::counted(call.model, prompt, Some(call.request.request.max_tokens), 1)
    }

    fn call<'a>(&'a self, call: Call<'a, Self>) -> BoxFuture<'a, Result<ChatResponse, UpstreamError>> {
        call.adapter.call(native_call(call))
    }

    fn shape(&self, _call: Call<'_, Self>, _request_id: &str) -> Arc<dyn StreamShape> {
        Arc::new(AnthropicEvents)
    }
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

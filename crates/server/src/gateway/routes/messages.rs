//! `POST /v1/messages` (SPEC §3.2): the Anthropic Messages API, forwarded to Anthropic (or
//! answered by the sandbox) through the one pipeline. The answer is Anthropic's, unchanged,
//! plus `quota`. A stream's final `message_delta` is held back until the charge is settled
//! and carries `quota` too (SPEC §14: strict parsers such as the Vercel AI SDK's ignore an
//! extra field but reject unknown event types); then `message_stop`, then the documented
//! `event: quota_usage` — unless the key's `quota_usage_event` is off or the request sends
//! `X-Quota-Usage-Event: off`.

use crate::auth::Principal;
use crate::error::ApiError;
use crate::gateway::inbound::Inbound;
use crate::gateway::pipeline::{serve, Call, Route};
use crate::gateway::settle::QuotaObject;
use crate::gateway::stream::StreamShape;
use axum::response::Response;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt;
use quota_core::hold::HoldBound;
use quota_core::{Model, Provider, Usage};
use quota_providers::anthropic::MessagesRequest;
use quota_providers::sse::frame;
use quota_providers::{ChatResponse, Meter, NativeCall, NativeProvider, UpstreamError};
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Whether the stream ends with `event: quota_usage`: the request's header, then (phase
    /// *route*) the key's setting.
    usage_event: AtomicBool,
}

/// `X-Quota-Usage-Event: off` (or `false`, `0`) leaves `event: quota_usage` out.
fn usage_event_header(headers: &axum::http::HeaderMap) -> bool {
    let off = |v: &str| ["off", "false", "0"].iter().any(|o| v.trim().eq_ignore_ascii_case(o));
    !headers.get("x-quota-usage-event").and_then(|v| v.to_str().ok()).is_some_and(off)
}

fn native_call<'a>(call: Call<'a, Messages>) -> NativeCall<'a, MessagesRequest> {
    let (version, beta) = (call.request.version.as_deref(), call.request.beta.as_deref());
    NativeCall { version, beta, ..call.native(&call.request.request) }
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
        let usage_event = AtomicBool::new(usage_event_header(&inbound.headers));
        Ok(MessagesCall { request, version, beta, usage_event })
    }

    fn route(
        &self,
        inbound: &Inbound,
        principal: &Principal,
        call: &MessagesCall,
    ) -> Result<(Arc<Model>, Arc<Self::Adapter>), ApiError> {
        let model = crate::gateway::native_model(&inbound.state, Provider::Anthropic, &call.request.model)?;
        let model = crate::gateway::of_kind(model, quota_core::ModelKind::Chat)?;
        if !principal.quota_usage_event {
            call.usage_event.store(false, Ordering::Relaxed);
        }
        Ok((model, inbound.state.messages_provider(principal.sandbox())))
    }

    fn bounds(&self, call: Call<'_, Self>) -> HoldBound {
        let prompt = call.adapter.prompt_tokens_max(&native_call(call));
        HoldBound::counted(call.model, prompt, Some(call.request.request.max_tokens), 1)
    }

    fn call<'a>(&'a self, call: Call<'a, Self>) -> BoxFuture<'a, Result<ChatResponse, UpstreamError>> {
        Box::pin(async move {
            match call.adapter.call(native_call(call)).await? {
                ChatResponse::Stream { events, meter } => {
                    Ok(ChatResponse::Stream { events: hold_back_the_end(events, meter.clone()), meter })
                }
                complete => Ok(complete),
            }
        })
    }

    fn shape(&self, call: Call<'_, Self>, _request_id: &str) -> Arc<dyn StreamShape> {
        Arc::new(AnthropicEvents { usage_event: call.request.usage_event.load(Ordering::Relaxed) })
    }
}

/// The name of an Anthropic SSE event.
fn event_name(event: &[u8]) -> Option<&str> {
    quota_providers::sse::parse_event(event).0
}

/// Hold the stream's `message_delta` back in the meter (the final one is re-sent with `quota`
/// once the charge settles) and leave `message_stop` to the ending, which sends it after.
fn hold_back_the_end(
    events: futures::stream::BoxStream<'static, Result<Bytes, UpstreamError>>,
    meter: Arc<Meter>,
) -> futures::stream::BoxStream<'static, Result<Bytes, UpstreamError>> {
    events
        .filter_map(move |item| {
            let out = match item {
                Ok(bytes) => match event_name(&bytes) {
                    // An earlier delta (Anthropic sends one) is no longer final: send it now.
                    Some("message_delta") => meter.hold_final_event(bytes).map(Ok),
                    Some("message_stop") => None,
                    _ => Some(Ok(bytes)),
                },
                Err(e) => Some(Err(e)),
            };
            std::future::ready(out)
        })
        .boxed()
}

/// Anthropic's stream ending: the held-back final `message_delta` with `quota` added, then
/// `message_stop`, then (unless turned off) `event: quota_usage` whose data is the `quota`
/// object (with `"type": "quota_usage"`, as every Anthropic event data names its type, so SDKs
/// that read events by type see it for what it is).
pub struct AnthropicEvents {
    pub usage_event: bool,
}

impl StreamShape for AnthropicEvents {
    fn final_events(&self, usage: &Usage, quota: &QuotaObject, meter: &Meter) -> Bytes {
        let quota_value = serde_json::to_value(quota).unwrap_or_default();
        let held = meter.take_final_event();
        let mut delta: serde_json::Value = held
            .as_deref()
            .and_then(|h| serde_json::from_str(&quota_providers::sse::parse_event(h).1).ok())
            .unwrap_or_else(|| {
                serde_json::json!({"type": "message_delta", "delta": {"stop_reason": null, "stop_sequence": null},
                    "usage": {"output_tokens": usage.output_tokens}})
            });
        delta["quota"] = quota_value.clone();
        let mut out = frame(Some("message_delta"), delta.to_string().as_bytes()).to_vec();
        out.extend_from_slice(&frame(Some("message_stop"), br#"{"type":"message_stop"}"#));
        if self.usage_event {
            let mut data = quota_value;
            data["type"] = serde_json::json!("quota_usage");
            out.extend_from_slice(&frame(Some("quota_usage"), data.to_string().as_bytes()));
        }
        Bytes::from(out)
    }

    /// `event: error` as Anthropic sends it, with Quota's §13 error object (its `type` is
    /// Anthropic's error type name too: `api_error`, `rate_limit_error`…).
    fn error_event(&self, error: &ApiError) -> Bytes {
        let mut data = error.body_json();
        data["type"] = serde_json::json!("error");
        frame(Some("error"), data.to_string().as_bytes())
    }
}

//! `POST /v1/chat/completions` (SPEC §3.1): the OpenAI shape, through every phase of
//! [`crate::gateway`].

use crate::app::SharedState;
use crate::auth::admit;
use crate::body::RawBody;
use crate::error::ApiError;
use crate::gateway::idempotency::{self, Begin};
use crate::gateway::stream::{billed_stream, StreamShape};
use crate::gateway::{failure_status, limit, reserve, route, Billing, QuotaObject};
use crate::request_id::RequestId;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;
use quota_core::billing::output_tokens_to_reserve;
use quota_core::Usage;
use quota_providers::openai::{splice_quota, ChatRequest};
use quota_providers::{ChatCall, ChatResponse, Fault, Meter};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

pub async fn chat_completions(
    State(state): State<SharedState>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let principal = admit(&state, &headers).await?;
    let limited = limit(&state, &principal).await?;
    let resp = completions(&state, principal, request_id, &headers, body, started).await;
    Ok(limited.apply(resp.unwrap_or_else(IntoResponse::into_response)))
}

async fn completions(
    state: &SharedState,
    principal: crate::auth::Principal,
    request_id: String,
    headers: &HeaderMap,
    body: Bytes,
    started: Instant,
) -> Result<Response, ApiError> {
    let request = ChatRequest::parse(&body).map_err(ApiError::bad_request)?;
    let (model, provider) = route(state, &principal, &request.model)?;
    let fault = match headers.get("x-quota-sandbox-fault") {
        Some(v) if principal.sandbox() => {
            Some(v.to_str().unwrap_or("").parse::<Fault>().map_err(ApiError::bad_request)?)
        }
        _ => None,
    };
    let mut claim = match idempotency::begin(state, headers, principal.idempotency_scope(), &body).await? {
        Begin::Replay(resp) => return Ok(resp),
        Begin::Claimed(c) => Some(c),
        Begin::None => None,
    };
    match forward(state, &request, &body, fault, &model, provider, principal, request_id, started, &mut claim).await {
        Ok(resp) => Ok(resp),
        Err(e) => {
            // Nothing was charged: release the key before answering, so a retry can run.
            if let Some(c) = claim.take() {
                c.abandon().await;
            }
            Err(e)
        }
    }
}

/// Phases reserve → forward → meter → settle → record. Takes the idempotency claim when the
/// request charges; leaves it in `claim` when it fails without charging.
#[allow(clippy::too_many_arguments)]
async fn forward(
    state: &SharedState,
    request: &ChatRequest,
    body: &Bytes,
    fault: Option<Fault>,
    model: &Arc<quota_core::Model>,
    provider: Arc<dyn quota_providers::ChatProvider>,
    principal: crate::auth::Principal,
    request_id: String,
    started: Instant,
    claim: &mut Option<idempotency::Claim>,
) -> Result<Response, ApiError> {
    let call = ChatCall { model, request, raw: body, fault };
    let prompt_max = provider.prompt_tokens_max(&call);
    let output_max = output_tokens_to_reserve(model, request.max_output()).saturating_mul(request.choices());
    let hold = reserve(state, &principal, model, prompt_max, output_max).await?;
    let charge_id = claim
        .as_ref()
        .map(|c| c.charge_id())
        .unwrap_or_else(|| quota_core::ids::new_ordered_id("ledg_", quota_store::clock::now_us()));
    let billing = Billing { state: state.clone(), principal, model: model.clone(), request_id, charge_id, started };
    match provider.chat(call).await {
        Err(e) => {
            drop(hold);
            let error = ApiError::from(e);
            billing.record_failure(failure_status(&error)).await;
            Err(error)
        }
        Ok(ChatResponse::Complete { body, usage }) => {
            let quota = billing.settle(hold, usage, "succeeded").await?;
            let out = splice_quota(&body, &quota.to_json()).ok_or_else(|| {
                tracing::error!(request_id = %billing.request_id, "the provider's body is not a JSON object");
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream_error",
                    "the provider returned a body that is not a JSON object",
                )
            })?;
            if let Some(c) = claim.take() {
                c.complete(200, "application/json", out.clone()).await;
            }
            Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], out).into_response())
        }
        Ok(ChatResponse::Stream { events, meter }) => {
            let shape = Arc::new(OpenAiChunks {
                model: request.model.clone(),
                fallback_id: format!("chatcmpl-{}", billing.request_id),
            });
            let stream = billed_stream(events, meter, hold, billing, shape, claim.take());
            Ok(sse_response(Body::from_stream(stream)))
        }
    }
}

pub fn sse_response(body: Body) -> Response {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// OpenAI's stream ending: a chunk with `choices: []`, `usage` and `quota`, then `[DONE]`.
struct OpenAiChunks {
    model: String,
    fallback_id: String,
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

impl StreamShape for OpenAiChunks {
    fn final_events(&self, usage: &Usage, quota: &QuotaObject, meter: &Meter) -> Bytes {
        let (id, created, model) =
            meter.identity().unwrap_or_else(|| (self.fallback_id.clone(), now_secs(), self.model.clone()));
        let prompt = usage.prompt_tokens_total();
        let chunk = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
            "usage": {
                "prompt_tokens": prompt, "completion_tokens": usage.output_tokens, "total_tokens": prompt + usage.output_tokens,
                "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
            },
            "quota": quota,
        });
        Bytes::from(format!("data: {chunk}\n\ndata: [DONE]\n\n"))
    }

    fn error_event(&self, error: &ApiError) -> Bytes {
        Bytes::from(format!("data: {}\n\n", error.body_json()))
    }
}

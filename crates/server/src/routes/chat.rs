//! `POST /v1/chat/completions` (SPEC §3.1): the OpenAI shape, through every phase of
//! [`crate::gateway`]. Models of every provider: `anthropic/…` and `google/…` ones are translated
//! by their adapters, both ways.

use crate::app::SharedState;
use crate::auth::admit;
use crate::body::RawBody;
use crate::error::ApiError;
use crate::gateway::forward::{Bounds, Inference};
use crate::gateway::stream::StreamShape;
use crate::gateway::{route, sandbox_fault, QuotaObject};
use crate::request_id::RequestId;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Extension;
use bytes::Bytes;
use quota_core::billing::output_tokens_to_reserve;
use quota_core::Usage;
use quota_providers::openai::{openai_usage, ChatRequest};
use quota_providers::{ChatCall, Meter};
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
    let request = ChatRequest::parse(&body).map_err(ApiError::bad_request)?;
    let (model, provider) = route(&state, &principal, &request.model)?;
    let fault = sandbox_fault(&headers, &principal)?;
    let call = ChatCall { model: &model, request: &request, raw: &body, fault };
    let bounds = Bounds {
        prompt_tokens_max: provider.prompt_tokens_max(&call),
        output_tokens_max: output_tokens_to_reserve(&model, request.max_output()).saturating_mul(request.choices()),
    };
    let shape = Arc::new(OpenAiChunks { model: request.model.clone(), fallback_id: format!("chatcmpl-{request_id}") });
    let inference = Inference { state: state.clone(), principal, model: model.clone(), request_id, started };
    inference.run(&headers, &body, bounds, shape, provider.chat(call)).await
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
        let chunk = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
            "usage": openai_usage(usage, None), "quota": quota,
        });
        Bytes::from(format!("data: {chunk}\n\ndata: [DONE]\n\n"))
    }

    fn error_event(&self, error: &ApiError) -> Bytes {
        Bytes::from(format!("data: {}\n\n", error.body_json()))
    }
}

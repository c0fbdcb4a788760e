//! `POST /v1/chat/completions` (SPEC §3.1): the OpenAI shape, through every phase of
//! [`crate::gateway`]. Models of every provider: `anthropic/…` and `google/…` ones are translated
//! by their adapters, both ways.

use crate::auth::admit;
use crate::error::ApiError;
use crate::gateway::forward::{Bounds, Inbound};
use crate::gateway::stream::StreamShape;
use crate::gateway::{route, sandbox_fault, QuotaObject};
use axum::response::Response;
use bytes::Bytes;
use quota_core::billing::output_tokens_to_reserve;
use quota_core::Usage;
use quota_providers::openai::{openai_usage, ChatRequest};
use quota_providers::{ChatCall, Meter};
use serde_json::json;
use std::sync::Arc;

pub async fn chat_completions(inbound: Inbound) -> Result<Response, ApiError> {
    let principal = admit(&inbound.state, &inbound.headers).await?;
    inbound.limited(principal, chat_completions_admitted).await
}

async fn chat_completions_admitted(inbound: Inbound, principal: crate::auth::Principal) -> Result<Response, ApiError> {
    let request = ChatRequest::parse(&inbound.body).map_err(ApiError::bad_request)?;
    let (model, provider) = route(&inbound.state, &principal, &request.model)?;
    let fault = sandbox_fault(&inbound.headers, &principal)?;
    let call = ChatCall { model: &model, request: &request, raw: &inbound.body, fault };
    let bounds = Bounds {
        prompt_tokens_max: provider.prompt_tokens_max(&call),
        output_tokens_max: output_tokens_to_reserve(&model, request.max_output()).saturating_mul(request.choices()),
    };
    let fallback_id = format!("chatcmpl-{}", inbound.request_id);
    let shape = Arc::new(OpenAiChunks { model: request.model.clone(), fallback_id });
    inbound.run(principal, model.clone(), bounds, shape, provider.chat(call)).await
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

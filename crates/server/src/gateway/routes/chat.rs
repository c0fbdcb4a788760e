//! `POST /v1/chat/completions` (SPEC §3.1): the OpenAI shape, through the one pipeline. Models
//! of every provider: `anthropic/…` and `google/…` ones are translated by their adapters, both
//! ways.

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
use quota_core::{Model, ModelKind, Usage};
use quota_providers::openai::{openai_usage, ChatRequest};
use quota_providers::{ChatCall, ChatProvider, ChatResponse, Meter, UpstreamError};
use serde_json::json;
use std::sync::Arc;

#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "inference",
    summary = "OpenAI Chat Completions, metered and charged (models of every provider)",
    request_body(content = crate::openapi::schemas::ChatCompletionRequest, description = "OpenAI's request; fields beyond these are forwarded"),
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$", description = "At most 255 characters; the same key and body within 24 h answer the first response again (SPEC §0)")),
    responses(
        (status = 200, description = "`chat.completion` plus `quota`; with `stream: true`, an SSE stream ending with a chunk carrying `usage` and `quota`, then `[DONE]`. Sandbox (`test`) keys may send `X-Quota-Sandbox-Fault` to simulate provider failures.", content((crate::openapi::schemas::InferenceResponse = "application/json"), (crate::openapi::schemas::SseEvent = "text/event-stream"))),
        crate::openapi::InferenceErrors,
    ),
    security(("apiKey" = []), ("apiKeyHeader" = []), ("userToken" = []))
)]
pub async fn chat_completions(inbound: Inbound) -> Response {
    serve(Chat, inbound).await
}

/// The chat completions route.
pub struct Chat;

fn chat_call<'a>(call: Call<'a, Chat>) -> ChatCall<'a> {
    ChatCall { model: call.model, request: call.request, raw: call.raw, fault: call.fault }
}

impl Route for Chat {
    type Request = ChatRequest;
    type Adapter = dyn ChatProvider;

    fn parse(&self, inbound: &Inbound) -> Result<ChatRequest, ApiError> {
        ChatRequest::parse(&inbound.body).map_err(ApiError::bad_request)
    }

    fn route(
        &self,
        inbound: &Inbound,
        principal: &Principal,
        request: &ChatRequest,
    ) -> Result<(Arc<Model>, Arc<dyn ChatProvider>), ApiError> {
        let model = crate::gateway::of_kind(crate::gateway::model(&inbound.state, &request.model)?, ModelKind::Chat)?;
        let adapter = inbound.state.chat_provider(&model, principal.sandbox());
        Ok((model, adapter))
    }

    fn bounds(&self, call: Call<'_, Self>) -> HoldBound {
        let prompt = call.adapter.prompt_tokens_max(&chat_call(call));
        HoldBound::counted(call.model, prompt, call.request.max_output(), call.request.choices())
    }

    fn call<'a>(&'a self, call: Call<'a, Self>) -> BoxFuture<'a, Result<ChatResponse, UpstreamError>> {
        call.adapter.chat(chat_call(call))
    }

    fn shape(&self, call: Call<'_, Self>, request_id: &str) -> Arc<dyn StreamShape> {
        Arc::new(OpenAiChunks { model: call.request.model.clone(), fallback_id: format!("chatcmpl-{request_id}") })
    }
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

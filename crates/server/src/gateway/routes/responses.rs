//! `POST /v1/responses` (SPEC §3.7): the OpenAI Responses API for OpenAI models, forwarded (or
//! answered by the sandbox) through the one pipeline. The answer is OpenAI's, plus `quota` — in
//! the body, or in the stream's `response.completed` event's `response`. `previous_response_id`
//! and `conversation` pass through: OpenAI keeps that state, so such a request's prompt is held
//! at the model's whole context window (Quota cannot see what the provider adds).

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
use quota_core::{Model, ModelKind, Provider, Usage};
use quota_providers::openai::responses::{completed_with_quota, ResponsesRequest};
use quota_providers::sse::frame;
use quota_providers::{ChatResponse, Meter, NativeCall, NativeProvider, UpstreamError};
use serde_json::json;
use std::sync::Arc;

#[utoipa::path(
    post,
    path = "/v1/responses",
    tag = "inference",
    summary = "OpenAI Responses, forwarded and charged",
    request_body(content = crate::openapi::schemas::ResponsesRequest, description = "OpenAI's request; fields beyond these are forwarded"),
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$", description = "At most 255 characters; the same key and body within 24 h answer the first response again (SPEC §0)")),
    responses(
        (status = 200, description = "OpenAI's response plus `quota`, or its event stream with `quota` in `response.completed`", content((crate::openapi::schemas::InferenceResponse = "application/json"), (crate::openapi::schemas::SseEvent = "text/event-stream"))),
        crate::openapi::InferenceErrors,
    ),
    security(("apiKey" = []), ("apiKeyHeader" = []), ("userToken" = []))
)]
pub async fn responses(inbound: Inbound) -> Response {
    serve(Responses, inbound).await
}

/// The Responses route.
pub struct Responses;

fn native_call<'a>(call: Call<'a, Responses>) -> NativeCall<'a, ResponsesRequest> {
    call.native(call.request)
}

impl Route for Responses {
    type Request = ResponsesRequest;
    type Adapter = dyn NativeProvider<ResponsesRequest>;

    fn parse(&self, inbound: &Inbound) -> Result<ResponsesRequest, ApiError> {
        ResponsesRequest::parse(&inbound.body).map_err(ApiError::bad_request)
    }

    fn route(
        &self,
        inbound: &Inbound,
        principal: &Principal,
        request: &ResponsesRequest,
    ) -> Result<(Arc<Model>, Arc<Self::Adapter>), ApiError> {
        let model = crate::gateway::of_kind(crate::gateway::model(&inbound.state, &request.model)?, ModelKind::Chat)?;
        if model.provider != Provider::Openai {
            return Err(ApiError::bad_request(format!(
                "the Responses API serves OpenAI models; `{}` is served on /v1/chat/completions",
                model.id
            )));
        }
        Ok((model, inbound.state.responses_provider(principal.sandbox())))
    }

    fn bounds(&self, call: Call<'_, Self>) -> HoldBound {
        let prompt = call.adapter.prompt_tokens_max(&native_call(call));
        HoldBound::counted(call.model, prompt, call.request.max_output_tokens, 1)
    }

    fn call<'a>(&'a self, call: Call<'a, Self>) -> BoxFuture<'a, Result<ChatResponse, UpstreamError>> {
        call.adapter.call(native_call(call))
    }

    fn shape(&self, _call: Call<'_, Self>, _request_id: &str) -> Arc<dyn StreamShape> {
        Arc::new(ResponsesStreamEnd)
    }
}

/// The Responses stream's ending: the held-back `response.completed` with `quota` in its
/// `response` object.
struct ResponsesStreamEnd;

impl StreamShape for ResponsesStreamEnd {
    fn final_events(&self, _usage: &Usage, quota: &QuotaObject, meter: &Meter) -> Bytes {
        let quota_value = serde_json::to_value(quota).unwrap_or_default();
        meter.take_final_event().and_then(|held| completed_with_quota(&held, &quota_value)).unwrap_or_else(|| {
            let data = json!({"type": "response.completed", "response": {"object": "response", "status": "completed", "quota": quota}});
            frame(Some("response.completed"), data.to_string().as_bytes())
        })
    }

    /// OpenAI's in-stream `error` event, carrying Quota's §13 error object too (the SDK raises
    /// on an event whose data has `error`).
    fn error_event(&self, error: &ApiError) -> Bytes {
        let body = error.body_json();
        let data = json!({"type": "error", "code": error.code, "message": error.message, "param": null,
            "error": body["error"]});
        frame(Some("error"), data.to_string().as_bytes())
    }
}

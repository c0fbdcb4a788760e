//! `POST /v1beta/models/{model}:generateContent` and `:streamGenerateContent?alt=sse`
//! (SPEC §3.3): Gemini, forwarded to Google (or answered by the sandbox) through the one
//! pipeline. The answer is Google's, unchanged, plus `quota` (in the body, or in the stream's
//! last chunk). The same routes answer under `/v1/models/…`, the Google GenAI SDK's default API
//! version.

use crate::auth::Principal;
use crate::error::ApiError;
use crate::gateway::inbound::Inbound;
use crate::gateway::pipeline::{serve, Call, Route};
use crate::gateway::settle::QuotaObject;
use crate::gateway::stream::StreamShape;
use axum::extract::{Path, Query};
use axum::response::Response;
use bytes::Bytes;
use futures::future::BoxFuture;
use quota_core::hold::HoldBound;
use quota_core::{Model, Provider, Usage};
use quota_providers::google::{splice_quota_into_chunk, GenerateRequest};
use quota_providers::sse::frame;
use quota_providers::{ChatResponse, Meter, NativeCall, NativeProvider, UpstreamError};
use serde_json::json;
use std::sync::Arc;

/// `?alt=` and `?key=`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GeminiQuery {
    /// `sse` with `:streamGenerateContent`.
    pub alt: Option<String>,
    /// The API key (as `x-goog-api-key`).
    pub key: Option<String>,
}

#[utoipa::path(
    post,
    path = "/v1beta/models/{model_action}",
    tag = "inference",
    summary = "Gemini: generateContent, streamGenerateContent, countTokens, embedContent, batchEmbedContents (also under /v1/models/)",
    request_body(content = crate::openapi::schemas::GeminiRequest, description = "Google's request for the method; forwarded"),
    params(("model_action" = String, Path, description = "`{model}:{method}`, e.g. `gemini-2.0-flash:generateContent`", example = "gemini-2.0-flash:generateContent"), GeminiQuery, ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$", description = "At most 255 characters; the same key and body within 24 h answer the first response again (SPEC §0)")),
    responses(
        (status = 200, description = "Google's answer plus `quota` (none for countTokens), or SSE chunks with `quota` in the last (`:streamGenerateContent?alt=sse`)", content((crate::openapi::schemas::InferenceResponse = "application/json"), (crate::openapi::schemas::SseEvent = "text/event-stream"))),
        crate::openapi::InferenceErrors,
    ),
    security(("apiKey" = []), ("apiKeyHeader" = []), ("userToken" = []))
)]
pub async fn generate_content(
    Path(model_action): Path<String>,
    Query(query): Query<GeminiQuery>,
    inbound: Inbound,
) -> Response {
    // One URL pattern serves every Gemini method: embeddings go to their own route.
    if let Some((model_id, action)) = model_action.rsplit_once(':') {
        let model_id = model_id.strip_prefix("models/").unwrap_or(model_id).to_string();
        match action {
            "embedContent" => return super::embeddings::gemini_embed(model_id, false, query.key, inbound).await,
            "batchEmbedContents" => return super::embeddings::gemini_embed(model_id, true, query.key, inbound).await,
            "countTokens" => return crate::gateway::count_tokens::gemini(model_id, query.key, inbound).await,
            _ => {}
        }
    }
    serve(Gemini { model_action, query }, inbound).await
}

/// The `generateContent` route, with what its URL says.
pub struct Gemini {
    /// `{model}:{action}` from the path.
    model_action: String,
    query: GeminiQuery,
}

/// A `generateContent` request and the model its URL names.
pub struct GeminiCall {
    request: GenerateRequest,
    model_id: String,
}

fn native_call<'a>(call: Call<'a, Gemini>) -> NativeCall<'a, GenerateRequest> {
    call.native(&call.request.request)
}

impl Route for Gemini {
    type Request = GeminiCall;
    type Adapter = dyn NativeProvider<GenerateRequest>;

    fn key_param(&self) -> Option<&str> {
        self.query.key.as_deref()
    }

    fn parse(&self, inbound: &Inbound) -> Result<GeminiCall, ApiError> {
        let (model_id, action) = self.model_action.rsplit_once(':').ok_or_else(|| ApiError::not_found("route"))?;
        let stream = match action {
            "generateContent" => false,
            "streamGenerateContent" if self.query.alt.as_deref() == Some("sse") => true,
            "streamGenerateContent" => {
                return Err(ApiError::bad_request("streamGenerateContent is served as Server-Sent Events only")
                    .with_hint("add ?alt=sse (the Google GenAI SDKs do)"))
            }
            _ => return Err(ApiError::not_found("route")),
        };
        let model_id = model_id.strip_prefix("models/").unwrap_or(model_id).to_string();
        let request = GenerateRequest::parse(&inbound.body, stream).map_err(ApiError::bad_request)?;
        Ok(GeminiCall { request, model_id })
    }

    fn route(
        &self,
        inbound: &Inbound,
        principal: &Principal,
        call: &GeminiCall,
    ) -> Result<(Arc<Model>, Arc<Self::Adapter>), ApiError> {
        let model = crate::gateway::native_model(&inbound.state, Provider::Google, &call.model_id)?;
        let model = crate::gateway::of_kind(model, quota_core::ModelKind::Chat)?;
        Ok((model, inbound.state.gemini_provider(principal.sandbox())))
    }

    fn bounds(&self, call: Call<'_, Self>) -> HoldBound {
        let prompt = call.adapter.prompt_tokens_max(&native_call(call));
        let request = &call.request.request;
        HoldBound::counted(call.model, prompt, request.max_output(), request.candidates())
    }

    fn call<'a>(&'a self, call: Call<'a, Self>) -> BoxFuture<'a, Result<ChatResponse, UpstreamError>> {
        call.adapter.call(native_call(call))
    }

    fn shape(&self, _call: Call<'_, Self>, _request_id: &str) -> Arc<dyn StreamShape> {
        Arc::new(GeminiChunks)
    }
}

/// Gemini's stream ending: the last chunk (held back by the adapter) with `quota` added.
pub struct GeminiChunks;

impl StreamShape for GeminiChunks {
    fn final_events(&self, _usage: &Usage, quota: &QuotaObject, meter: &Meter) -> Bytes {
        let quota_json = quota.to_json();
        meter
            .take_final_event()
            .and_then(|held| splice_quota_into_chunk(&held, &quota_json))
            .unwrap_or_else(|| frame(None, json!({"quota": quota}).to_string().as_bytes()))
    }

    /// Google's own in-stream error shape, `{"error": {"code": <HTTP status>, "message",
    /// "status"}}`, with Quota's §13 code as `status`: the Google GenAI SDK raises its typed
    /// error from a numeric `code` (a §13 string code there would crash it).
    fn error_event(&self, error: &ApiError) -> Bytes {
        let data = json!({"error": {"code": error.status.as_u16(), "message": error.message, "status": error.code}});
        frame(None, data.to_string().as_bytes())
    }
}

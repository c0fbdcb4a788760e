//! `POST /v1beta/models/{model}:generateContent` and `:streamGenerateContent?alt=sse`
//! (SPEC §3.3): Gemini, forwarded to Google (or answered by the sandbox) through every phase of
//! [`crate::gateway`]. The answer is Google's, unchanged, plus `quota` (in the body, or in the
//! stream's last chunk). The same routes answer under `/v1/models/…`, the Google GenAI SDK's
//! default API version.

use crate::auth::admit_with_key_param;
use crate::error::ApiError;
use crate::gateway::forward::{Bounds, Inbound};
use crate::gateway::stream::StreamShape;
use crate::gateway::{route_native, sandbox_fault, QuotaObject};
use axum::extract::{Path, Query};
use axum::response::Response;
use bytes::Bytes;
use quota_core::billing::output_tokens_to_reserve;
use quota_core::{Provider, Usage};
use quota_providers::google::{splice_quota_into_chunk, GenerateRequest};
use quota_providers::sse::frame;
use quota_providers::{Meter, NativeCall};
use serde_json::json;
use std::sync::Arc;

/// `?alt=` and `?key=`.
#[derive(Debug, serde::Deserialize)]
pub struct GeminiQuery {
    pub alt: Option<String>,
    pub key: Option<String>,
}

pub async fn generate_content(
    Path(model_action): Path<String>,
    Query(query): Query<GeminiQuery>,
    inbound: Inbound,
) -> Result<Response, ApiError> {
    let principal = admit_with_key_param(&inbound.state, &inbound.headers, query.key.as_deref()).await?;
    inbound.limited(principal, |inbound, principal| generate_admitted(inbound, principal, model_action, query)).await
}

async fn generate_admitted(
    inbound: Inbound,
    principal: crate::auth::Principal,
    model_action: String,
    query: GeminiQuery,
) -> Result<Response, ApiError> {
    let (model_id, action) = model_action.rsplit_once(':').ok_or_else(|| ApiError::not_found("route"))?;
    let stream = match action {
        "generateContent" => false,
        "streamGenerateContent" if query.alt.as_deref() == Some("sse") => true,
        "streamGenerateContent" => {
            return Err(ApiError::bad_request("streamGenerateContent is served as Server-Sent Events only")
                .with_hint("add ?alt=sse (the Google GenAI SDKs do)"))
        }
        _ => return Err(ApiError::not_found("route")),
    };
    let model_id = model_id.strip_prefix("models/").unwrap_or(model_id);
    let request = GenerateRequest::parse(&inbound.body, stream).map_err(ApiError::bad_request)?;
    let model = route_native(&inbound.state, Provider::Google, model_id)?;
    let fault = sandbox_fault(&inbound.headers, &principal)?;
    let provider = inbound.state.gemini_provider(principal.sandbox());
    let call = NativeCall { model: &model, request: &request, raw: &inbound.body, version: None, fault };
    let bounds = Bounds {
        prompt_tokens_max: provider.prompt_tokens_max(&call),
        output_tokens_max: output_tokens_to_reserve(&model, request.max_output()).saturating_mul(request.candidates()),
    };
    inbound.run(principal, model.clone(), bounds, Arc::new(GeminiChunks), provider.call(call)).await
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

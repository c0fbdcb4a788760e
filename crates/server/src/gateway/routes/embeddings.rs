//! Embeddings (SPEC §3.8) through the one pipeline: `POST /v1/embeddings` (OpenAI's shape, OpenAI
//! models) and Gemini's `:embedContent` / `:batchEmbedContents` (Google's shape, Google models).
//! Priced per input token; held at one token per byte of input, settled at the provider's count
//! (OpenAI) or the gateway's (Gemini reports none), recorded and signed like any inference.

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
use quota_providers::embeddings::EmbedRequest;
use quota_providers::{ChatResponse, Meter, NativeCall, NativeProvider, UpstreamError};
use std::sync::Arc;

#[utoipa::path(
    post,
    path = "/v1/embeddings",
    tag = "inference",
    summary = "OpenAI embeddings, metered and charged",
    request_body = crate::openapi::schemas::EmbeddingsRequest,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$", description = "At most 255 characters; the same key and body within 24 h answer the first response again (SPEC §0)")),
    responses(
        (status = 200, description = "OpenAI's embeddings list plus `quota`", body = crate::openapi::schemas::InferenceResponse),
        crate::openapi::InferenceErrors,
    ),
    security(("apiKey" = []), ("apiKeyHeader" = []), ("userToken" = []))
)]
pub async fn embeddings(inbound: Inbound) -> Response {
    serve(Embeddings { gemini: None, key_param: None }, inbound).await
}

/// Gemini's `{model}:embedContent` (`batch` false) or `:batchEmbedContents`.
pub async fn gemini_embed(model_id: String, batch: bool, key_param: Option<String>, inbound: Inbound) -> Response {
    serve(Embeddings { gemini: Some((model_id, batch)), key_param }, inbound).await
}

/// The embeddings route: OpenAI's (`gemini: None`) or Gemini's, with the model its URL names.
pub struct Embeddings {
    gemini: Option<(String, bool)>,
    key_param: Option<String>,
}

/// A parsed embeddings request and the model id it names.
pub struct EmbedCall {
    request: EmbedRequest,
    model_id: String,
}

fn native_call<'a>(call: Call<'a, Embeddings>) -> NativeCall<'a, EmbedRequest> {
    call.native(&call.request.request)
}

impl Route for Embeddings {
    type Request = EmbedCall;
    type Adapter = dyn NativeProvider<EmbedRequest>;

    fn key_param(&self) -> Option<&str> {
        self.key_param.as_deref()
    }

    fn parse(&self, inbound: &Inbound) -> Result<EmbedCall, ApiError> {
        match &self.gemini {
            None => {
                let (model_id, request) = EmbedRequest::parse_openai(&inbound.body).map_err(ApiError::bad_request)?;
                Ok(EmbedCall { request, model_id })
            }
            Some((model_id, batch)) => {
                let request = EmbedRequest::parse_gemini(&inbound.body, *batch).map_err(ApiError::bad_request)?;
                Ok(EmbedCall { request, model_id: model_id.clone() })
            }
        }
    }

    fn route(
        &self,
        inbound: &Inbound,
        principal: &Principal,
        call: &EmbedCall,
    ) -> Result<(Arc<Model>, Arc<Self::Adapter>), ApiError> {
        let state = &inbound.state;
        let (model, provider) = match self.gemini {
            None => (crate::gateway::model(state, &call.model_id)?, Provider::Openai),
            Some(_) => (crate::gateway::native_model(state, Provider::Google, &call.model_id)?, Provider::Google),
        };
        let model = crate::gateway::of_kind(model, ModelKind::Embedding)?;
        if model.provider != provider {
            let route = if provider == Provider::Openai { "POST /v1/embeddings" } else { ":embedContent" };
            return Err(ApiError::bad_request(format!("`{}` is not served on {route}", model.id)));
        }
        call.request.dimensions_for(&model).map_err(ApiError::bad_request)?;
        Ok((model.clone(), state.embeddings_provider(&model, principal.sandbox())))
    }

    fn bounds(&self, call: Call<'_, Self>) -> HoldBound {
        let prompt = call.adapter.prompt_tokens_max(&native_call(call));
        HoldBound::counted(call.model, prompt, Some(0), 1)
    }

    fn call<'a>(&'a self, call: Call<'a, Self>) -> BoxFuture<'a, Result<ChatResponse, UpstreamError>> {
        call.adapter.call(native_call(call))
    }

    fn shape(&self, _call: Call<'_, Self>, _request_id: &str) -> Arc<dyn StreamShape> {
        Arc::new(NoStream)
    }
}

/// Embeddings never stream; a shape is still owed to the pipeline.
struct NoStream;

impl StreamShape for NoStream {
    fn final_events(&self, _usage: &Usage, _quota: &QuotaObject, _meter: &Meter) -> Bytes {
        Bytes::new()
    }

    fn error_event(&self, error: &ApiError) -> Bytes {
        Bytes::from(error.body_json().to_string())
    }
}

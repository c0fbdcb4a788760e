//! Token counting (SPEC §3.8): `POST /v1/messages/count_tokens` (Anthropic) and Gemini's
//! `{model}:countTokens`. Free, so not an inference: phases *admit* (a key, or a user token with
//! `credits.read`), *limit*, *parse* and *route* as every route, then the provider's count (the
//! sandbox's own, with the tokenizer it bills by) — never a hold, a charge or a usage record.

use super::inbound::Inbound;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::oauth::scopes::Scope;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use quota_core::{ModelKind, Provider};
use quota_providers::count_tokens::{parse_gemini_count, parse_messages_count};
use quota_providers::NativeCall;

/// `POST /v1/messages/count_tokens`: Anthropic's `{"input_tokens": n}`.
#[utoipa::path(
    post,
    path = "/v1/messages/count_tokens",
    tag = "inference",
    summary = "Count a Messages request's input tokens (free: no hold, no charge)",
    request_body = crate::openapi::schemas::CountTokensRequest,
    responses(
        (status = 200, description = "Anthropic's count", body = crate::openapi::schemas::InputTokens),
        (status = 404, description = "`model_not_found`", body = crate::openapi::schemas::ErrorBody),
        (status = 502, description = "`upstream_error`", body = crate::openapi::schemas::ErrorBody),
        crate::openapi::KeyErrors,
    ),
    security(("apiKey" = []), ("apiKeyHeader" = []), ("userToken" = []))
)]
pub async fn messages(inbound: Inbound) -> Response {
    let (principal, limited) = match admitted(&inbound, None).await {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    limited.apply(json(count_messages(&inbound, &principal).await))
}

async fn count_messages(inbound: &Inbound, principal: &Principal) -> Result<bytes::Bytes, ApiError> {
    let request = parse_messages_count(&inbound.body).map_err(ApiError::bad_request)?;
    let model = super::native_model(&inbound.state, Provider::Anthropic, &request.model)?;
    let model = super::of_kind(model, ModelKind::Chat)?;
    let version = header_text(inbound, "anthropic-version")?;
    let beta = header_text(inbound, "anthropic-beta")?;
    let call = NativeCall { model: &model, request: &request, raw: &inbound.body, version, beta, fault: None };
    Ok(inbound.state.messages_counter(principal.sandbox()).count_tokens(call).await?)
}

/// `POST /v1beta/models/{model}:countTokens`: Google's `{"totalTokens": n}`.
pub async fn gemini(model_id: String, key_param: Option<String>, inbound: Inbound) -> Response {
    let (principal, limited) = match admitted(&inbound, key_param.as_deref()).await {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    limited.apply(json(count_gemini(&inbound, &principal, &model_id).await))
}

async fn count_gemini(inbound: &Inbound, principal: &Principal, model_id: &str) -> Result<bytes::Bytes, ApiError> {
    let request = parse_gemini_count(&inbound.body).map_err(ApiError::bad_request)?;
    let model = super::native_model(&inbound.state, Provider::Google, model_id)?;
    let model = super::of_kind(model, ModelKind::Chat)?;
    let call =
        NativeCall { model: &model, request: &request, raw: &inbound.body, version: None, beta: None, fault: None };
    Ok(inbound.state.gemini_counter(principal.sandbox()).count_tokens(call).await?)
}

/// A header passed through to the provider as text, or 400 when it is not visible ASCII.
fn header_text<'a>(inbound: &'a Inbound, name: &str) -> Result<Option<&'a str>, ApiError> {
    match inbound.headers.get(name) {
        None => Ok(None),
        Some(v) => v.to_str().map(Some).map_err(|_| ApiError::bad_request(format!("`{name}` must be ASCII text"))),
    }
}

/// Phases *admit* (user tokens need `credits.read`) and *limit*; a refusal is the answer.
async fn admitted(inbound: &Inbound, key_param: Option<&str>) -> Result<(Principal, super::Limited), Response> {
    let state = &inbound.state;
    let principal = crate::auth::admit_with_key_param_and_scope(state, &inbound.headers, key_param, Scope::CreditsRead)
        .await
        .map_err(IntoResponse::into_response)?;
    let limited = super::limit(state, &principal).await.map_err(IntoResponse::into_response)?;
    Ok((principal, limited))
}

fn json(result: Result<bytes::Bytes, ApiError>) -> Response {
    match result {
        Ok(body) => ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response(),
        Err(e) => e.into_response(),
    }
}

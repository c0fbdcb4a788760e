//! Token counting without running a request (SPEC §3.8): Anthropic's
//! `POST /v1/messages/count_tokens` and Gemini's `:countTokens`, forwarded to the provider (its
//! answer unchanged) or, in the sandbox, counted with the same tokenizer the sandbox bills by.
//! Free: nothing here holds or charges anything.

use crate::anthropic::MessagesRequest;
use crate::google::GenerateRequest;
use crate::sandbox::Sandbox;
use crate::{NativeCall, UpstreamError};
use bytes::Bytes;
use serde_json::{json, Value};

/// A provider (or the sandbox) that counts a request of shape `R` in that provider's answer
/// shape (`{"input_tokens"}`, `{"totalTokens"}`).
#[async_trait::async_trait]
pub trait TokenCounter<R: Sync + 'static>: Send + Sync {
    async fn count_tokens(&self, call: NativeCall<'_, R>) -> Result<Bytes, UpstreamError>;
}

/// A count_tokens body as a Messages request (`max_tokens` is not part of it).
pub fn parse_messages_count(body: &[u8]) -> Result<MessagesRequest, String> {
    let mut v: Value = serde_json::from_slice(body).map_err(|e| crate::openai::describe_json_error(&e))?;
    let Some(obj) = v.as_object_mut() else { return Err("the body must be a JSON object".into()) };
    obj.entry("max_tokens").or_insert(json!(1));
    MessagesRequest::parse(v.to_string().as_bytes())
}

/// A `:countTokens` body — `{contents}` or `{generateContentRequest: {…}}` — as a generate
/// request, and the body to forward (the client's, unchanged).
pub fn parse_gemini_count(body: &[u8]) -> Result<GenerateRequest, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| crate::openai::describe_json_error(&e))?;
    let inner = v.get("generateContentRequest").unwrap_or(&v);
    GenerateRequest::parse(inner.to_string().as_bytes(), false)
}

#[async_trait::async_trait]
impl TokenCounter<MessagesRequest> for Sandbox {
    async fn count_tokens(&self, call: NativeCall<'_, MessagesRequest>) -> Result<Bytes, UpstreamError> {
        let n = crate::sandbox::anthropic_prompt_tokens(call.request);
        Ok(Bytes::from(json!({"input_tokens": n}).to_string()))
    }
}

#[async_trait::async_trait]
impl TokenCounter<GenerateRequest> for Sandbox {
    async fn count_tokens(&self, call: NativeCall<'_, GenerateRequest>) -> Result<Bytes, UpstreamError> {
        let n = crate::sandbox::gemini_prompt_tokens(call.request);
        Ok(Bytes::from(json!({"totalTokens": n}).to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_bodies_parse_without_max_tokens_and_in_both_gemini_forms() {
        assert!(parse_messages_count(br#"{"model":"claude-haiku-4-5","messages":[{"role":"user","content":"hi"}]}"#)
            .is_ok());
        assert!(parse_messages_count(br#"{"model":"claude-haiku-4-5","messages":[]}"#).is_err());
        assert!(parse_gemini_count(br#"{"contents":[{"parts":[{"text":"hi"}]}]}"#).is_ok());
        assert!(parse_gemini_count(
            br#"{"generateContentRequest":{"model":"models/x","contents":[{"parts":[{"text":"hi"}]}]}}"#
        )
        .is_ok());
        assert!(parse_gemini_count(br#"{"contents":[]}"#).is_err());
    }
}

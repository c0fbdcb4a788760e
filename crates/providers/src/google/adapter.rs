//! Calls to the Gemini API (`{google_base_url}/v1beta/models/{upstream_id}:generateContent`, or
//! `:streamGenerateContent?alt=sse`; `x-goog-api-key` with Quota's key): forwarded for the
//! native routes, translated for `/v1/chat/completions`.
//!
//! The native stream is forwarded chunk by chunk as each arrives, except that from the first
//! chunk carrying a `finishReason` on (in practice: only the last chunk) each chunk is held back
//! until the next one arrives or the stream ends, so the gateway can add `quota` to the true
//! last chunk (SPEC §3.3) after the charge is committed.

use super::translate::{completion_from_response, observe_chunk, peek_chunk, request_from_openai, ChunkTranslator};
use super::wire::{forward_body, GenerateRequest, ResponsePeek};
use crate::embeddings::{EmbedRequest, EmbedShape};
use crate::http::{Upstream, UpstreamConfig};
use crate::openai::estimate_prompt_tokens;
use crate::sse::{event_stream, EventTranslator};
use crate::{ChatCall, ChatProvider, ChatResponse, Meter, NativeCall, NativeProvider, UpstreamError};
use bytes::{Bytes, BytesMut};
use quota_core::tokens::count_tokens;
use quota_core::{Model, Usage};
use std::sync::Arc;

/// The Google adapter. Cheap to share: one connection pool for all requests.
pub struct GoogleAdapter {
    upstream: Upstream,
}

impl GoogleAdapter {
    /// `config.base_url` is the API root (`https://generativelanguage.googleapis.com`).
    pub fn new(config: UpstreamConfig) -> Result<GoogleAdapter, String> {
        Ok(GoogleAdapter { upstream: Upstream::new("google", config)? })
    }

    async fn post(&self, model: &Model, body: Vec<u8>, stream: bool) -> Result<crate::http::Answer, UpstreamError> {
        let key = self.upstream.key()?;
        let action = if stream { "streamGenerateContent?alt=sse" } else { "generateContent" };
        let url = self.upstream.url(&format!("/v1beta/models/{}:{action}", model.upstream_id));
        self.upstream.post_json(&url, &[("x-goog-api-key", key)], body, stream).await
    }
}

/// `:embedContent` / `:batchEmbedContents`, forwarded (a batch's per-request `model` set to the
/// upstream model, as the API requires). Gemini reports no usage for embeddings: the gateway's
/// own count of the inputs is billed (never above the hold's byte-per-token bound).
#[async_trait::async_trait]
impl NativeProvider<EmbedRequest> for GoogleAdapter {
    fn prompt_tokens_max(&self, call: &NativeCall<'_, EmbedRequest>) -> u64 {
        call.request.tokens_max(call.model)
    }

    async fn call(&self, call: NativeCall<'_, EmbedRequest>) -> Result<ChatResponse, UpstreamError> {
        let key = self.upstream.key()?;
        let mut body: serde_json::Value =
            serde_json::from_slice(call.raw).map_err(|e| UpstreamError::InvalidRequest(e.to_string()))?;
        let model_name = format!("models/{}", call.model.upstream_id);
        let action = match call.request.shape {
            EmbedShape::GeminiBatch => {
                for r in body["requests"].as_array_mut().into_iter().flatten() {
                    r["model"] = serde_json::Value::String(model_name.clone());
                }
                "batchEmbedContents"
            }
            _ => "embedContent",
        };
        let url = self.upstream.url(&format!("/v1beta/{model_name}:{action}"));
        let body = serde_json::to_vec(&body).map_err(|e| UpstreamError::InvalidRequest(e.to_string()))?;
        let answer = self.upstream.post_json(&url, &[("x-goog-api-key", key)], body, false).await?;
        let body = answer.body().await?;
        let usage = Usage { input_tokens: call.request.tokens_counted(), ..Default::default() };
        Ok(ChatResponse::Complete { body, usage })
    }
}

/// `:countTokens`, forwarded (the client's body unchanged); Google's `{"totalTokens"}` answer.
#[async_trait::async_trait]
impl crate::count_tokens::TokenCounter<GenerateRequest> for GoogleAdapter {
    async fn count_tokens(&self, call: NativeCall<'_, GenerateRequest>) -> Result<Bytes, UpstreamError> {
        let key = self.upstream.key()?;
        let url = self.upstream.url(&format!("/v1beta/models/{}:countTokens", call.model.upstream_id));
        self.upstream.post_json(&url, &[("x-goog-api-key", key)], call.raw.to_vec(), false).await?.body().await
    }
}

fn prompt_estimate(raw: &[u8], model: &Model) -> u64 {
    estimate_prompt_tokens(raw).min(model.context_window)
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

#[async_trait::async_trait]
impl NativeProvider<GenerateRequest> for GoogleAdapter {
    fn prompt_tokens_max(&self, call: &NativeCall<'_, GenerateRequest>) -> u64 {
        call.request.prompt_bound().tokens_max(call.model)
    }

    async fn call(&self, call: NativeCall<'_, GenerateRequest>) -> Result<ChatResponse, UpstreamError> {
        self.upstream.key()?;
        let body = forward_body(call.raw).map_err(UpstreamError::InvalidRequest)?;
        let stream = call.request.stream;
        let answer = self.post(call.model, body, stream).await?;
        let estimate = prompt_estimate(call.raw, call.model);
        if !stream {
            let body = answer.body().await?;
            let usage = usage_of_response(&body, estimate)?;
            return Ok(ChatResponse::Complete { body, usage });
        }
        let meter = Arc::new(Meter::new(estimate));
        let (bytes, deadline) = answer.byte_stream();
        let events = event_stream(bytes, meter.clone(), deadline, NativeChunks::default());
        Ok(ChatResponse::Stream { events, meter })
    }
}

#[async_trait::async_trait]
impl ChatProvider for GoogleAdapter {
    fn prompt_tokens_max(&self, call: &ChatCall<'_>) -> u64 {
        call.request.prompt_bound().tokens_max(call.model)
    }

    async fn chat(&self, call: ChatCall<'_>) -> Result<ChatResponse, UpstreamError> {
        let translated = request_from_openai(call.request).map_err(UpstreamError::InvalidRequest)?;
        self.upstream.key()?;
        let stream = call.request.stream();
        let body = serde_json::to_vec(&translated).map_err(|e| UpstreamError::InvalidRequest(e.to_string()))?;
        let answer = self.post(call.model, body, stream).await?;
        let estimate = prompt_estimate(call.raw, call.model);
        let created = now_secs();
        if !stream {
            let body = answer.body().await?;
            let (body, usage) = completion_from_response(&body, &call.request.model, created, estimate)?;
            return Ok(ChatResponse::Complete { body, usage });
        }
        let meter = Arc::new(Meter::new(estimate));
        let (bytes, deadline) = answer.byte_stream();
        let translator = ChunkTranslator::new(&call.request.model, created, quota_core::ids::new_id("chatcmpl-"));
        let events = event_stream(bytes, meter.clone(), deadline, translator);
        Ok(ChatResponse::Stream { events, meter })
    }
}

/// Usage of a complete response: `usageMetadata`, else counted from the candidates.
fn usage_of_response(body: &[u8], prompt_estimate: u64) -> Result<Usage, UpstreamError> {
    let resp: ResponsePeek = serde_json::from_slice(body)
        .map_err(|e| UpstreamError::Transport(format!("the provider sent an unreadable body: {e}")))?;
    if let Some(u) = resp.usage_metadata {
        return Ok(u.to_usage());
    }
    let mut output = 0;
    resp.for_each_generated(|t| output += count_tokens(t));
    Ok(Usage { input_tokens: prompt_estimate, output_tokens: output, ..Default::default() })
}

/// The native stream: chunks forwarded unchanged and metered; from the first finished chunk on,
/// each is held back until the next (see the module doc).
#[derive(Default)]
struct NativeChunks {
    holding: bool,
}

impl EventTranslator for NativeChunks {
    fn event(&mut self, event: Bytes, meter: &Meter) -> Result<Option<Bytes>, UpstreamError> {
        let Some(chunk) = peek_chunk(&event) else { return Ok(Some(event)) };
        observe_chunk(&chunk, meter)?;
        self.holding |= chunk.finished();
        if !self.holding {
            return Ok(Some(event));
        }
        Ok(meter.hold_final_event(event))
    }
}

/// A held-back final chunk with `"quota": quota_json` added to its data (SSE framing kept).
pub fn splice_quota_into_chunk(event: &[u8], quota_json: &[u8]) -> Option<Bytes> {
    let (_, data) = crate::sse::parse_event(event);
    let spliced = crate::json::splice_quota(data.trim().as_bytes(), quota_json)?;
    let sep: &[u8] = if event.ends_with(b"\r\n\r\n") { b"\r\n\r\n" } else { b"\n\n" };
    let mut out = BytesMut::with_capacity(spliced.len() + 10);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(&spliced);
    out.extend_from_slice(sep);
    Some(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[test]
    fn only_the_final_chunk_is_held_back_and_it_can_take_quota() {
        let chunks = [
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"a\"}]}}],\"usageMetadata\":{\"promptTokenCount\":3}}\r\n\r\n",
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"b\"}]},\"finishReason\":\"STOP\"}],\"usageMetadata\":{\"promptTokenCount\":3,\"candidatesTokenCount\":2}}\r\n\r\n",
        ];
        let meter = Arc::new(Meter::new(0));
        let upstream = futures::stream::iter(chunks.map(|c| Ok(Bytes::from_static(c.as_bytes()))));
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        let out: Vec<_> =
            rt.block_on(event_stream(upstream, meter.clone(), deadline, NativeChunks::default()).collect());
        assert_eq!(out.len(), 1, "the finished chunk waits for the gateway");
        assert_eq!(out[0].as_ref().unwrap(), chunks[0].as_bytes());
        assert_eq!(meter.usage(), Usage { input_tokens: 3, output_tokens: 2, ..Default::default() });
        let held = meter.take_final_event().unwrap();
        let spliced = splice_quota_into_chunk(&held, b"{\"credits_used\":1}").unwrap();
        let v: serde_json::Value = serde_json::from_str(crate::sse::parse_event(&spliced).1.as_str()).unwrap();
        assert_eq!(v["quota"]["credits_used"], 1);
        assert_eq!(v["candidates"][0]["finishReason"], "STOP");
        assert!(spliced.ends_with(b"\r\n\r\n"));
    }
}

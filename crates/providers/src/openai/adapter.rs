//! Forwarding to an OpenAI-compatible upstream over a pooled HTTP client: non-streaming bodies
//! and SSE streams (forwarded event by event as each completes), usage read from the body or
//! the stream's usage chunk, errors mapped per SPEC §3.6.

use super::responses::{self, ResponsesEvents, ResponsesRequest};
use super::wire::{forward_body, ChunkPeek, CompletionPeek};
use crate::embeddings::EmbedRequest;
use crate::http::{Upstream, UpstreamConfig};
use crate::sse::{event_stream, parse_event, EventTranslator};
use crate::{
    scrub_credentials, ChatCall, ChatProvider, ChatResponse, Meter, NativeCall, NativeProvider, UpstreamError,
};
use bytes::Bytes;
use quota_core::Usage;
use std::sync::Arc;
use tokio::time::Instant;

/// The OpenAI adapter's configuration: the base URL includes `/v1` (`https://api.openai.com/v1`).
pub type OpenAiConfig = UpstreamConfig;

/// The OpenAI adapter. Cheap to share: one connection pool for all requests.
pub struct OpenAiAdapter {
    upstream: Upstream,
    url: String,
    responses_url: String,
    embeddings_url: String,
}

impl OpenAiAdapter {
    pub fn new(config: OpenAiConfig) -> Result<OpenAiAdapter, String> {
        let upstream = Upstream::new("openai", config)?;
        let url = upstream.url("/chat/completions");
        let responses_url = upstream.url("/responses");
        let embeddings_url = upstream.url("/embeddings");
        Ok(OpenAiAdapter { upstream, url, responses_url, embeddings_url })
    }
}

/// `POST /v1/responses`, forwarded: the body as the client wrote it (allowed fields), the answer
/// unchanged; a stream's events forwarded as they arrive (see [`ResponsesEvents`]).
#[async_trait::async_trait]
impl NativeProvider<ResponsesRequest> for OpenAiAdapter {
    fn prompt_tokens_max(&self, call: &NativeCall<'_, ResponsesRequest>) -> u64 {
        call.request.prompt_bound().tokens_max(call.model)
    }

    async fn call(&self, call: NativeCall<'_, ResponsesRequest>) -> Result<ChatResponse, UpstreamError> {
        let key = self.upstream.key()?;
        let stream = call.request.stream();
        let body =
            responses::forward_body(call.raw, call.model, call.request).map_err(UpstreamError::InvalidRequest)?;
        let authorization = format!("Bearer {key}");
        let answer =
            self.upstream.post_json(&self.responses_url, &[("authorization", &authorization)], body, stream).await?;
        let prompt_estimate = estimate_prompt_tokens(call.raw).min(call.model.context_window);
        if !stream {
            let body = answer.body().await?;
            let usage = responses::usage_of_response(&body, prompt_estimate)?;
            return Ok(ChatResponse::Complete { body, usage });
        }
        let meter = Arc::new(Meter::new(prompt_estimate));
        let (bytes, deadline) = answer.byte_stream();
        let events = event_stream(bytes, meter.clone(), deadline, ResponsesEvents);
        Ok(ChatResponse::Stream { events, meter })
    }
}

#[async_trait::async_trait]
impl ChatProvider for OpenAiAdapter {
    fn prompt_tokens_max(&self, call: &ChatCall<'_>) -> u64 {
        call.request.prompt_bound().tokens_max(call.model)
    }

    async fn chat(&self, call: ChatCall<'_>) -> Result<ChatResponse, UpstreamError> {
        let key = self.upstream.key()?;
        let stream = call.request.stream();
        let body = forward_body(call.raw, call.model, call.request)
            .map_err(|m| UpstreamError::Status { status: 400, message: m })?;
        let authorization = format!("Bearer {key}");
        let answer = self.upstream.post_json(&self.url, &[("authorization", &authorization)], body, stream).await?;
        // Charged only if the upstream never reports usage (a stream cut short): a fair count of
        // the request, not the reservation's upper bound.
        let prompt_estimate = estimate_prompt_tokens(call.raw).min(call.model.context_window);
        if !stream {
            let body = answer.body().await?;
            let usage = usage_of_completion(&body, prompt_estimate)?;
            return Ok(ChatResponse::Complete { body, usage });
        }
        let meter = Arc::new(Meter::new(prompt_estimate));
        let (bytes, deadline) = answer.byte_stream();
        let events = openai_event_stream(bytes, meter.clone(), deadline);
        Ok(ChatResponse::Stream { events, meter })
    }
}

/// `POST /v1/embeddings`, forwarded: the allowed fields as written, the answer unchanged, the
/// provider's `usage.prompt_tokens` billed.
#[async_trait::async_trait]
impl NativeProvider<EmbedRequest> for OpenAiAdapter {
    fn prompt_tokens_max(&self, call: &NativeCall<'_, EmbedRequest>) -> u64 {
        call.request.tokens_max(call.model)
    }

    async fn call(&self, call: NativeCall<'_, EmbedRequest>) -> Result<ChatResponse, UpstreamError> {
        let key = self.upstream.key()?;
        let fields = ["input", "dimensions", "encoding_format", "user"];
        let body = crate::json::forward_fields(call.raw, Some(&call.model.upstream_id), &fields, b"")
            .map_err(UpstreamError::InvalidRequest)?;
        let authorization = format!("Bearer {key}");
        let answer =
            self.upstream.post_json(&self.embeddings_url, &[("authorization", &authorization)], body, false).await?;
        let body = answer.body().await?;
        let input_tokens = crate::embeddings::openai_usage(&body)?;
        Ok(ChatResponse::Complete { body, usage: Usage { input_tokens, ..Default::default() } })
    }
}

/// The sandbox tokenizer over the request body: close to the provider's count for text.
pub fn estimate_prompt_tokens(raw: &[u8]) -> u64 {
    quota_core::tokens::count_tokens(&String::from_utf8_lossy(raw))
}

/// Usage of a complete body: the upstream's report, else counted from the choices.
fn usage_of_completion(body: &[u8], prompt_estimate: u64) -> Result<Usage, UpstreamError> {
    let peek: CompletionPeek = serde_json::from_slice(body)
        .map_err(|e| UpstreamError::Transport(format!("the provider sent an unreadable body: {e}")))?;
    if let Some(u) = peek.usage {
        return Ok(u.to_usage());
    }
    let mut output = 0;
    for choice in &peek.choices {
        if let Some(m) = &choice.message {
            m.for_each_text(|t| output += quota_core::tokens::count_tokens(t));
        }
    }
    Ok(Usage { input_tokens: prompt_estimate, output_tokens: output, ..Default::default() })
}

/// Turn an upstream OpenAI SSE byte stream into client events: every chunk forwarded as soon as
/// it is complete, except the usage-only chunk (absorbed into the meter) and `[DONE]` (the
/// gateway sends its own after the final chunk).
pub fn openai_event_stream(
    upstream: impl futures::Stream<Item = Result<Bytes, UpstreamError>> + Send + 'static,
    meter: Arc<Meter>,
    deadline: Instant,
) -> futures::stream::BoxStream<'static, Result<Bytes, UpstreamError>> {
    event_stream(upstream, meter, deadline, OpenAiChunks)
}

/// Forwards OpenAI chunks unchanged (see [`inspect_chunk`]).
struct OpenAiChunks;

impl EventTranslator for OpenAiChunks {
    fn event(&mut self, event: Bytes, meter: &Meter) -> Result<Option<Bytes>, UpstreamError> {
        Ok(inspect_chunk(&event, meter)?.then_some(event))
    }
}

/// Read one upstream event: record identity, usage and output; say whether to forward it.
fn inspect_chunk(event: &[u8], meter: &Meter) -> Result<bool, UpstreamError> {
    let (_, data) = parse_event(event);
    let data = data.trim();
    if data.is_empty() {
        return Ok(false);
    }
    if data == "[DONE]" {
        meter.mark_finished();
        return Ok(false);
    }
    let Ok(chunk) = serde_json::from_str::<ChunkPeek>(data) else {
        // Not ours to judge: forward what the provider sent.
        return Ok(true);
    };
    if let Some(err) = chunk.error {
        let message = err.get("message").and_then(|m| m.as_str()).unwrap_or("stream error").to_string();
        return Err(UpstreamError::Status { status: 502, message: scrub_credentials(&message, &[]) });
    }
    if let (Some(id), Some(created), Some(model)) = (&chunk.id, chunk.created, &chunk.model) {
        meter.set_identity(id, created, model);
    }
    let choices = chunk.choices.as_deref().unwrap_or(&[]);
    for c in choices {
        if let Some(d) = &c.delta {
            d.for_each_text(|t| meter.count_output(t));
        }
    }
    if let Some(u) = chunk.usage {
        meter.report_usage(u.to_usage());
        if choices.is_empty() {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::time::Duration;

    fn run(chunks: Vec<&'static str>) -> (Vec<Result<Bytes, UpstreamError>>, Arc<Meter>) {
        let meter = Arc::new(Meter::new(7));
        let upstream = futures::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from_static(c.as_bytes()))));
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let out = rt.block_on(
            openai_event_stream(upstream, meter.clone(), Instant::now() + Duration::from_secs(5)).collect::<Vec<_>>(),
        );
        (out, meter)
    }

    #[test]
    fn forwards_content_and_absorbs_usage_and_done() {
        let (out, meter) = run(vec![
            "data: {\"id\":\"c1\",\"created\":1,\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n",
            "data: {\"id\":\"c1\",\"created\":1,\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\ndata: {\"id\":\"c1\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\n",
            "data: [DONE]\n\n",
        ]);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|r| r.is_ok()));
        assert_eq!(meter.usage(), Usage { input_tokens: 5, output_tokens: 2, ..Default::default() });
        assert_eq!(meter.identity(), Some(("c1".into(), 1, "m".into())));
    }

    #[test]
    fn an_early_close_is_an_error_and_output_is_counted() {
        let (out, meter) = run(vec!["data: {\"id\":\"c1\",\"created\":1,\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"Hello there\"}}]}\n\n"]);
        assert_eq!(out.len(), 2);
        assert!(matches!(out[1], Err(UpstreamError::Transport(_))));
        assert_eq!(meter.usage(), Usage { input_tokens: 7, output_tokens: 2, ..Default::default() });
    }
}

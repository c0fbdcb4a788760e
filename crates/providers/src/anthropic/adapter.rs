//! Calls to Anthropic's Messages API (`{anthropic_base_url}/v1/messages`, `x-api-key` with
//! Quota's key, `anthropic-version` passed through): forwarded for the native route, translated
//! for `/v1/chat/completions`.

use super::bound::TOOL_USE_PROMPT_TOKENS_MAX;
use super::translate::{completion_from_message, peek_event, request_from_openai, ChunkTranslator, EventMeter};
use super::wire::{forward_body, MessagePeek, MessagesRequest};
use crate::http::{Upstream, UpstreamConfig};
use crate::openai::estimate_prompt_tokens;
use crate::sse::{event_stream, EventTranslator};
use crate::{ChatCall, ChatProvider, ChatResponse, Meter, NativeCall, NativeProvider, UpstreamError};
use bytes::Bytes;
use quota_core::tokens::count_tokens;
use quota_core::{Model, Usage};
use std::sync::Arc;

/// The API version sent when the client names none.
pub const DEFAULT_VERSION: &str = "2023-06-01";

/// The Anthropic adapter. Cheap to share: one connection pool for all requests.
pub struct AnthropicAdapter {
    upstream: Upstream,
    url: String,
    count_url: String,
}

impl AnthropicAdapter {
    /// `config.base_url` is the API root (`https://api.anthropic.com`).
    pub fn new(config: UpstreamConfig) -> Result<AnthropicAdapter, String> {
        let upstream = Upstream::new("anthropic", config)?;
        let url = upstream.url("/v1/messages");
        let count_url = upstream.url("/v1/messages/count_tokens");
        Ok(AnthropicAdapter { upstream, url, count_url })
    }

    async fn post(
        &self,
        body: Vec<u8>,
        version: &str,
        beta: Option<&str>,
        stream: bool,
    ) -> Result<crate::http::Answer, UpstreamError> {
        self.post_to(&self.url, body, version, beta, stream).await
    }

    async fn post_to(
        &self,
        url: &str,
        body: Vec<u8>,
        version: &str,
        beta: Option<&str>,
        stream: bool,
    ) -> Result<crate::http::Answer, UpstreamError> {
        let key = self.upstream.key()?;
        let (auth, version) = (("x-api-key", key), ("anthropic-version", version));
        match beta {
            Some(beta) => self.upstream.post_json(url, &[auth, version, ("anthropic-beta", beta)], body, stream).await,
            None => self.upstream.post_json(url, &[auth, version], body, stream).await,
        }
    }
}

/// `POST /v1/messages/count_tokens`, forwarded (the fields a Messages request carries, as
/// written; no `max_tokens`); Anthropic's `{"input_tokens"}` answer unchanged.
#[async_trait::async_trait]
impl crate::count_tokens::TokenCounter<MessagesRequest> for AnthropicAdapter {
    async fn count_tokens(&self, call: NativeCall<'_, MessagesRequest>) -> Result<Bytes, UpstreamError> {
        let fields = ["messages", "system", "tools", "tool_choice", "thinking", "mcp_servers"];
        let body = crate::json::forward_fields(call.raw, Some(&call.model.upstream_id), &fields, b"")
            .map_err(UpstreamError::InvalidRequest)?;
        let version = call.version.unwrap_or(DEFAULT_VERSION);
        self.post_to(&self.count_url, body, version, call.beta, false).await?.body().await
    }
}

/// Prompt tokens to charge if the upstream never reports usage: a fair count of the request.
fn prompt_estimate(raw: &[u8], model: &Model) -> u64 {
    estimate_prompt_tokens(raw).min(model.context_window)
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

#[async_trait::async_trait]
impl NativeProvider<MessagesRequest> for AnthropicAdapter {
    fn prompt_tokens_max(&self, call: &NativeCall<'_, MessagesRequest>) -> u64 {
        call.request.prompt_bound().tokens_max(call.model)
    }

    async fn call(&self, call: NativeCall<'_, MessagesRequest>) -> Result<ChatResponse, UpstreamError> {
        self.upstream.key()?;
        let body = forward_body(call.raw, &call.model.upstream_id).map_err(UpstreamError::InvalidRequest)?;
        let stream = call.request.stream();
        let answer = self.post(body, call.version.unwrap_or(DEFAULT_VERSION), call.beta, stream).await?;
        let estimate = prompt_estimate(call.raw, call.model);
        if !stream {
            let body = answer.body().await?;
            let usage = usage_of_message(&body, estimate)?;
            return Ok(ChatResponse::Complete { body, usage });
        }
        let meter = Arc::new(Meter::new(estimate));
        let (bytes, deadline) = answer.byte_stream();
        let events = event_stream(bytes, meter.clone(), deadline, NativeEvents::default());
        Ok(ChatResponse::Stream { events, meter })
    }
}

#[async_trait::async_trait]
impl ChatProvider for AnthropicAdapter {
    /// The OpenAI-shaped request's bound, plus the tool-use prompt Anthropic adds for tools.
    fn prompt_tokens_max(&self, call: &ChatCall<'_>) -> u64 {
        let mut bound = call.request.prompt_bound();
        if call.request.tools.as_ref().is_some_and(|t| !t.is_empty()) {
            bound.add(TOOL_USE_PROMPT_TOKENS_MAX);
        }
        bound.tokens_max(call.model)
    }

    async fn chat(&self, call: ChatCall<'_>) -> Result<ChatResponse, UpstreamError> {
        let translated = request_from_openai(call.request, call.model).map_err(UpstreamError::InvalidRequest)?;
        self.upstream.key()?;
        let stream = call.request.stream();
        let body = serde_json::to_vec(&translated).map_err(|e| UpstreamError::InvalidRequest(e.to_string()))?;
        let answer = self.post(body, DEFAULT_VERSION, None, stream).await?;
        let estimate = prompt_estimate(call.raw, call.model);
        let created = now_secs();
        if !stream {
            let body = answer.body().await?;
            let (body, usage) = completion_from_message(&body, &call.request.model, created, estimate)?;
            return Ok(ChatResponse::Complete { body, usage });
        }
        let meter = Arc::new(Meter::new(estimate));
        let (bytes, deadline) = answer.byte_stream();
        let fallback_id = format!("chatcmpl-{}", quota_core::ids::new_id("msg_"));
        let translator = ChunkTranslator::new(&call.request.model, created, fallback_id);
        let events = event_stream(bytes, meter.clone(), deadline, translator);
        Ok(ChatResponse::Stream { events, meter })
    }
}

/// Usage of a complete `message`: the upstream's report, else counted from its content.
fn usage_of_message(body: &[u8], prompt_estimate: u64) -> Result<Usage, UpstreamError> {
    let msg: MessagePeek = serde_json::from_slice(body)
        .map_err(|e| UpstreamError::Transport(format!("the provider sent an unreadable body: {e}")))?;
    if let Some(u) = msg.usage {
        return Ok(u.to_usage());
    }
    let mut output = 0;
    for b in &msg.content {
        for t in [&b.text, &b.thinking, &b.name].into_iter().flatten() {
            output += count_tokens(t);
        }
        if let Some(input) = &b.input {
            output += count_tokens(&input.to_string());
        }
    }
    Ok(Usage { input_tokens: prompt_estimate, output_tokens: output, ..Default::default() })
}

/// The native stream: every event forwarded unchanged, metered on the way.
#[derive(Default)]
struct NativeEvents {
    metering: EventMeter,
}

impl EventTranslator for NativeEvents {
    fn event(&mut self, event: Bytes, meter: &Meter) -> Result<Option<Bytes>, UpstreamError> {
        if let Some(ev) = peek_event(&event) {
            self.metering.observe(&ev, meter)?;
        }
        Ok(Some(event))
    }
}

//! Forwarding to an OpenAI-compatible upstream over a pooled HTTP client: non-streaming bodies
//! and SSE streams (forwarded event by event as each completes), usage read from the body or
//! the stream's usage chunk, errors mapped per SPEC §3.6.

use super::wire::{forward_body, ChunkPeek, CompletionPeek};
use crate::sse::{parse_event, SseSplitter};
use crate::{scrub_credentials, ChatCall, ChatProvider, ChatResponse, Meter, UpstreamError};
use bytes::Bytes;
use futures::StreamExt;
use quota_core::tokens::prompt_upper_bound;
use quota_core::Usage;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// Base URL including `/v1` (`https://api.openai.com/v1`).
    pub base_url: String,
    /// `None`: the provider is not configured (503 `provider_unavailable`).
    pub api_key: Option<String>,
    pub first_byte_timeout: Duration,
    pub total_timeout: Duration,
}

/// The OpenAI adapter. Cheap to share: one connection pool for all requests.
pub struct OpenAiAdapter {
    client: reqwest::Client,
    url: String,
    config: OpenAiConfig,
}

/// Largest error body read from a provider.
const ERROR_BODY_MAX_BYTES: usize = 64 * 1024;

impl OpenAiAdapter {
    pub fn new(config: OpenAiConfig) -> Result<OpenAiAdapter, String> {
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .connect_timeout(config.first_byte_timeout.min(Duration::from_secs(30)))
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        let url = format!("{}/chat/completions", config.base_url.trim_end_matches('/'));
        Ok(OpenAiAdapter { client, url, config })
    }

    fn scrub(&self, message: &str) -> String {
        let keys: Vec<&str> = self.config.api_key.as_deref().into_iter().collect();
        scrub_credentials(message, &keys)
    }

    async fn error_from(&self, resp: reqwest::Response, deadline: Instant) -> UpstreamError {
        let status = resp.status().as_u16();
        let body = read_limited(resp, deadline, ERROR_BODY_MAX_BYTES).await.unwrap_or_default();
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.pointer("/error/message").and_then(|m| m.as_str()).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned());
        let message = self.scrub(&message);
        if status == 429 {
            UpstreamError::RateLimited(message)
        } else {
            UpstreamError::Status { status, message }
        }
    }
}

async fn read_limited(resp: reqwest::Response, deadline: Instant, max: usize) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(deadline, stream.next()).await {
        out.extend_from_slice(&chunk[..chunk.len().min(max - out.len())]);
        if out.len() >= max {
            break;
        }
    }
    Some(out)
}

fn transport(e: reqwest::Error) -> UpstreamError {
    if e.is_timeout() {
        return UpstreamError::Timeout;
    }
    // reqwest's messages name the URL (never a key); keep them short.
    UpstreamError::Transport(e.without_url().to_string())
}

#[async_trait::async_trait]
impl ChatProvider for OpenAiAdapter {
    fn prompt_tokens_max(&self, call: &ChatCall<'_>) -> u64 {
        prompt_upper_bound(call.raw)
    }

    async fn chat(&self, call: ChatCall<'_>) -> Result<ChatResponse, UpstreamError> {
        let Some(key) = &self.config.api_key else {
            return Err(UpstreamError::NotConfigured("openai"));
        };
        let stream = call.request.stream();
        let body = forward_body(call.raw, &call.model.upstream_id, stream)
            .map_err(|m| UpstreamError::Status { status: 400, message: m })?;
        let start = Instant::now();
        let deadline = start + self.config.total_timeout;
        let send = self
            .client
            .post(&self.url)
            .bearer_auth(key)
            .header("content-type", "application/json")
            .header("accept", if stream { "text/event-stream" } else { "application/json" })
            .body(body)
            .send();
        let resp = match tokio::time::timeout(self.config.first_byte_timeout, send).await {
            Err(_) => return Err(UpstreamError::Timeout),
            Ok(Err(e)) => return Err(transport(e)),
            Ok(Ok(r)) => r,
        };
        if !resp.status().is_success() {
            return Err(self.error_from(resp, deadline).await);
        }
        // Charged only if the upstream never reports usage (a stream cut short): a fair count of
        // the request, not the reservation's upper bound.
        let prompt_estimate = estimate_prompt_tokens(call.raw).min(call.model.context_window);
        if !stream {
            let body = match tokio::time::timeout_at(deadline, resp.bytes()).await {
                Err(_) => return Err(UpstreamError::Timeout),
                Ok(Err(e)) => return Err(transport(e)),
                Ok(Ok(b)) => b,
            };
            let usage = usage_of_completion(&body, prompt_estimate)?;
            return Ok(ChatResponse::Complete { body, usage });
        }
        let meter = Arc::new(Meter::new(prompt_estimate));
        let events = openai_event_stream(resp.bytes_stream().map(|r| r.map_err(transport)), meter.clone(), deadline);
        Ok(ChatResponse::Stream { events, meter })
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
    struct St<S> {
        upstream: std::pin::Pin<Box<S>>,
        splitter: SseSplitter,
        pending: std::collections::VecDeque<Bytes>,
        meter: Arc<Meter>,
        done: bool,
    }
    let state = St {
        upstream: Box::pin(upstream),
        splitter: SseSplitter::default(),
        pending: Default::default(),
        meter,
        done: false,
    };
    futures::stream::unfold(state, move |mut st| async move {
        loop {
            if let Some(event) = st.pending.pop_front() {
                match inspect_chunk(&event, &st.meter) {
                    Ok(true) => return Some((Ok(event), st)),
                    Ok(false) => continue,
                    Err(e) => {
                        st.done = true;
                        st.pending.clear();
                        return Some((Err(e), st));
                    }
                }
            }
            if st.done {
                return None;
            }
            match tokio::time::timeout_at(deadline, st.upstream.next()).await {
                Err(_) => {
                    st.done = true;
                    return Some((Err(UpstreamError::Timeout), st));
                }
                Ok(None) => {
                    st.done = true;
                    if let Some(rest) = st.splitter.finish() {
                        st.pending.push_back(rest);
                        continue;
                    }
                    if !st.meter.finished() {
                        return Some((
                            Err(UpstreamError::Transport("the provider closed the stream early".into())),
                            st,
                        ));
                    }
                    return None;
                }
                Ok(Some(Err(e))) => {
                    st.done = true;
                    return Some((Err(e), st));
                }
                Ok(Some(Ok(bytes))) => match st.splitter.push(&bytes) {
                    Ok(events) => st.pending.extend(events),
                    Err(m) => {
                        st.done = true;
                        return Some((Err(UpstreamError::Transport(m)), st));
                    }
                },
            }
        }
    })
    .boxed()
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

//! The upstream HTTP client every adapter shares: one pooled `reqwest` client per provider with
//! `TCP_NODELAY`, the first-byte and total timeouts of SPEC §3.6, the provider's error bodies read
//! (bounded) and mapped to [`UpstreamError`] with credentials scrubbed. Provider-specific request
//! building and response reading stay in each adapter.
//!
//! All three providers put their error message at `error.message` (OpenAI
//! `{"error":{"message"}}`, Anthropic `{"type":"error","error":{"type","message"}}`, Google
//! `{"error":{"code","message","status"}}`), so one reader serves them all.

use crate::{scrub_credentials, UpstreamError};
use bytes::Bytes;
use futures::StreamExt;
use std::time::Duration;
use tokio::time::Instant;

/// Where a provider lives and how long it may take.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The provider's base URL (each adapter documents what it appends).
    pub base_url: String,
    /// `None`: the provider is not configured (503 `provider_unavailable`).
    pub api_key: Option<String>,
    pub first_byte_timeout: Duration,
    pub total_timeout: Duration,
}

/// Largest error body read from a provider.
const ERROR_BODY_MAX_BYTES: usize = 64 * 1024;

/// A pooled client bound to one provider's configuration.
pub struct Upstream {
    client: reqwest::Client,
    pub config: UpstreamConfig,
    /// The provider's name, for `provider_unavailable`.
    provider: &'static str,
}

/// A successful upstream response and the deadline the rest of it must meet.
pub struct Answer {
    pub response: reqwest::Response,
    pub deadline: Instant,
}

impl Upstream {
    pub fn new(provider: &'static str, config: UpstreamConfig) -> Result<Upstream, String> {
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .connect_timeout(config.first_byte_timeout.min(Duration::from_secs(30)))
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        Ok(Upstream { client, config, provider })
    }

    /// The configured key, or `NotConfigured`.
    pub fn key(&self) -> Result<&str, UpstreamError> {
        self.config.api_key.as_deref().ok_or(UpstreamError::NotConfigured(self.provider))
    }

    /// `base_url` without a trailing slash, followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.config.base_url.trim_end_matches('/'), path)
    }

    pub fn scrub(&self, message: &str) -> String {
        let keys: Vec<&str> = self.config.api_key.as_deref().into_iter().collect();
        scrub_credentials(message, &keys)
    }

    /// POST `body` as JSON with `headers`; wait for the response headers within the first-byte
    /// timeout; map a non-2xx answer to its [`UpstreamError`].
    pub async fn post_json(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
        stream: bool,
    ) -> Result<Answer, UpstreamError> {
        let start = Instant::now();
        let deadline = start + self.config.total_timeout;
        let mut request = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("accept", if stream { "text/event-stream" } else { "application/json" });
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let send = request.body(body).send();
        let response = match tokio::time::timeout(self.config.first_byte_timeout, send).await {
            Err(_) => return Err(UpstreamError::Timeout),
            Ok(Err(e)) => return Err(transport(e)),
            Ok(Ok(r)) => r,
        };
        if !response.status().is_success() {
            return Err(self.error_from(response, deadline).await);
        }
        Ok(Answer { response, deadline })
    }

    /// A provider's error answer, mapped per SPEC §3.6 (429 → rate limit, else a status error
    /// with the provider's own message).
    async fn error_from(&self, resp: reqwest::Response, deadline: Instant) -> UpstreamError {
        let status = resp.status().as_u16();
        let body = read_limited(resp, deadline, ERROR_BODY_MAX_BYTES).await;
        let message =
            error_message(&body).unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned());
        let message = self.scrub(&message);
        if status == 429 {
            UpstreamError::RateLimited(message)
        } else {
            UpstreamError::Status { status, message }
        }
    }
}

impl Answer {
    /// The whole body, within the total timeout.
    pub async fn body(self) -> Result<Bytes, UpstreamError> {
        match tokio::time::timeout_at(self.deadline, self.response.bytes()).await {
            Err(_) => Err(UpstreamError::Timeout),
            Ok(Err(e)) => Err(transport(e)),
            Ok(Ok(b)) => Ok(b),
        }
    }

    /// The body as a byte stream (for SSE), with transport errors mapped.
    pub fn byte_stream(self) -> (impl futures::Stream<Item = Result<Bytes, UpstreamError>> + Send + 'static, Instant) {
        (self.response.bytes_stream().map(|r| r.map_err(transport)), self.deadline)
    }
}

/// `error.message` of a provider's error body (all three providers put it there).
pub fn error_message(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()?
        .pointer("/error/message")
        .and_then(|m| m.as_str())
        .map(str::to_string)
}

async fn read_limited(resp: reqwest::Response, deadline: Instant, max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(deadline, stream.next()).await {
        out.extend_from_slice(&chunk[..chunk.len().min(max - out.len())]);
        if out.len() >= max {
            break;
        }
    }
    out
}

pub fn transport(e: reqwest::Error) -> UpstreamError {
    if e.is_timeout() {
        return UpstreamError::Timeout;
    }
    // reqwest's messages name the URL (never a key: keys travel in headers); keep them short.
    UpstreamError::Transport(e.without_url().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_message_of_every_providers_error_shape() {
        let openai = br#"{"error":{"message":"bad key","type":"invalid_request_error","param":null,"code":null}}"#;
        let anthropic = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let google = br#"{"error":{"code":429,"message":"Resource has been exhausted","status":"RESOURCE_EXHAUSTED"}}"#;
        assert_eq!(error_message(openai).as_deref(), Some("bad key"));
        assert_eq!(error_message(anthropic).as_deref(), Some("Overloaded"));
        assert_eq!(error_message(google).as_deref(), Some("Resource has been exhausted"));
        assert_eq!(error_message(b"<html>502</html>"), None);
    }
}

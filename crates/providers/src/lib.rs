//! Provider adapters (DESIGN §2): each one turns an OpenAI-shaped chat request into a call to its
//! upstream (or, for the sandbox, into a synthetic answer) and gives back either a complete body
//! or a stream of client-ready SSE events, with a [`Meter`] that knows the usage at any moment.
//! The Anthropic and Google adapters (and the sandbox) also serve their provider's native route
//! ([`NativeProvider`]): the request in the provider's own shape, the answer unchanged.
//!
//! Adapters do not know about money, credentials of Quota's callers, or HTTP status codes of
//! Quota's own API: the gateway's phases (admit, limit, reserve, settle, record) live in the
//! server crate. What an adapter owns: translation, the upstream call, SSE framing, usage
//! extraction, and the provider's errors mapped to [`UpstreamError`].

pub mod anthropic;
pub mod count_tokens;
pub mod embeddings;
pub mod google;
pub mod http;
pub mod json;
pub mod meter;
pub mod openai;
pub mod sandbox;
pub mod sse;

use bytes::Bytes;
use futures::stream::BoxStream;
pub use meter::Meter;
use quota_core::{Model, Usage};
use std::sync::Arc;

/// A failure of the upstream, in the terms SPEC §3.6 maps to Quota's errors. None is charged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// The provider said 429.
    #[error("the provider is rate limiting requests: {0}")]
    RateLimited(String),
    /// Any other provider error, with its (scrubbed) message.
    #[error("the provider returned an error ({status}): {message}")]
    Status { status: u16, message: String },
    /// Could not talk to the provider, or it broke off.
    #[error("could not reach the provider: {0}")]
    Transport(String),
    /// No first byte within the first-byte timeout, or not done within the total timeout.
    #[error("the provider did not answer in time")]
    Timeout,
    /// The provider has no API key configured.
    #[error("the provider {0} is not configured on this gateway")]
    NotConfigured(&'static str),
    /// The request cannot be expressed in the provider's API (found while translating it,
    /// before any call): the client's mistake, a 400.
    #[error("{0}")]
    InvalidRequest(String),
}

/// Failures the sandbox can be told to imitate (`X-Quota-Sandbox-Fault`, SPEC §4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    UpstreamError,
    RateLimit,
    Timeout,
    DisconnectMidStream,
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "upstream_error" => Ok(Fault::UpstreamError),
            "rate_limit" => Ok(Fault::RateLimit),
            "timeout" => Ok(Fault::Timeout),
            "disconnect_mid_stream" => Ok(Fault::DisconnectMidStream),
            other => Err(format!(
                "X-Quota-Sandbox-Fault must be one of upstream_error, rate_limit, timeout, disconnect_mid_stream; got `{other}`"
            )),
        }
    }
}

/// One OpenAI-shaped chat call, as the gateway hands it to an adapter.
pub struct ChatCall<'a> {
    pub model: &'a Arc<Model>,
    /// The parsed request (validated by the gateway).
    pub request: &'a openai::ChatRequest,
    /// The client's raw JSON body, from which the adapter forwards the allowed fields.
    pub raw: &'a Bytes,
    pub fault: Option<Fault>,
}

/// A successful answer in the client's shape (the route's: OpenAI on `/v1/chat/completions`,
/// the provider's own on its native route).
pub enum ChatResponse {
    /// A complete JSON body (`chat.completion`, Anthropic `message`, Gemini
    /// `GenerateContentResponse`) and its metered usage.
    Complete { body: Bytes, usage: Usage },
    /// SSE events ready for the client, without the upstream's usage chunk and `[DONE]`: the
    /// gateway appends its own final chunk (usage + `quota`) and `[DONE]` after settling.
    Stream { events: BoxStream<'static, Result<Bytes, UpstreamError>>, meter: Arc<Meter> },
}

/// An upstream that answers OpenAI-shaped chat requests (translating if it is not OpenAI).
#[async_trait::async_trait]
pub trait ChatProvider: Send + Sync {
    /// The most prompt tokens this request can be billed for (SPEC §4.3.1): exact where the
    /// adapter tokenizes itself (sandbox), a proven upper bound otherwise.
    fn prompt_tokens_max(&self, call: &ChatCall<'_>) -> u64;

    /// Send the request and return the answer or a mapped upstream failure.
    async fn chat(&self, call: ChatCall<'_>) -> Result<ChatResponse, UpstreamError>;
}

/// One call on a provider's native route (`/v1/messages`, `…:generateContent`): the request in
/// that provider's own shape `R`, forwarded rather than translated.
pub struct NativeCall<'a, R> {
    pub model: &'a Arc<Model>,
    /// The parsed request (validated by its `parse`).
    pub request: &'a R,
    /// The client's raw JSON body, from which the adapter forwards the allowed fields.
    pub raw: &'a Bytes,
    /// The API version the client asked for, passed through (Anthropic's `anthropic-version`).
    pub version: Option<&'a str>,
    /// Beta features the client asked for, passed through (Anthropic's `anthropic-beta`).
    pub beta: Option<&'a str>,
    pub fault: Option<Fault>,
}

/// An upstream that answers requests in its own native shape `R` (Anthropic Messages, Gemini
/// `generateContent`), streamed or not; the sandbox answers every shape.
#[async_trait::async_trait]
pub trait NativeProvider<R: Sync + 'static>: Send + Sync {
    /// The most prompt tokens this request can be billed for (as [`ChatProvider::prompt_tokens_max`]).
    fn prompt_tokens_max(&self, call: &NativeCall<'_, R>) -> u64;

    /// Send the request and return the provider's answer or a mapped upstream failure.
    async fn call(&self, call: NativeCall<'_, R>) -> Result<ChatResponse, UpstreamError>;
}

/// Remove anything that looks like a credential from a provider's message before it reaches a
/// client or a log: bearer tokens and API-key-shaped words (`sk-…`, `AIza…`, `quota_…`).
pub fn scrub_credentials(message: &str, configured_keys: &[&str]) -> String {
    let mut out = message.to_string();
    for key in configured_keys {
        if key.len() >= 8 {
            out = out.replace(key, "[redacted]");
        }
    }
    out.split_inclusive(char::is_whitespace)
        .map(|word| {
            let trimmed = word.trim_matches(|c: char| c.is_whitespace() || "\"'.,;:()[]{}".contains(c));
            let looks_secret = trimmed.len() >= 16
                && ["sk-", "sk_", "AIza", "quota_", "sess_", "Bearer"].iter().any(|p| trimmed.starts_with(p));
            if looks_secret {
                word.replace(trimmed, "[redacted]")
            } else {
                word.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_keys_from_provider_messages() {
        let msg = "Incorrect API key provided: sk-proj-abcdefghijklmnop1234. You can find your key at x.";
        let s = scrub_credentials(msg, &[]);
        assert!(!s.contains("abcdefghijklmnop"), "{s}");
        assert!(s.contains("Incorrect API key provided"));
        let s = scrub_credentials("key mysecretkey123 was bad", &["mysecretkey123"]);
        assert_eq!(s, "key [redacted] was bad");
    }

    #[test]
    fn faults_parse() {
        assert_eq!("timeout".parse::<Fault>(), Ok(Fault::Timeout));
        assert!("explode".parse::<Fault>().is_err());
    }
}

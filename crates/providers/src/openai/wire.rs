//! OpenAI wire types: the validated request, the fields Quota forwards, and usage parsing.

use quota_core::Usage;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Fields forwarded upstream (SPEC §3.1). Everything else a client sends is ignored, so no field
/// Quota does not price (e.g. a dearer `service_tier`) reaches the provider.
pub const FORWARDED_FIELDS: &[&str] = &[
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
    "stop",
    "seed",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "reasoning_effort",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "user",
    "logprobs",
    "top_logprobs",
    "prompt_cache_key",
    "verbosity",
    "metadata",
    "store",
    "prediction",
];

/// Sampling parameters that reasoning models (o-series, GPT-5 family) refuse with a 400 unless
/// they hold their defaults (SPEC §3.1b): dropped for those models rather than forwarded.
pub const REASONING_REFUSED_FIELDS: &[&str] =
    &["temperature", "top_p", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs"];

/// Most choices a request may ask for (OpenAI's own limit).
pub const N_MAX: u64 = 128;

/// The request body, typed where Quota reads it and type-checked where it forwards it.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    pub stream: Option<bool>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub n: Option<u64>,
    pub tools: Option<Vec<Tool>>,
    pub tool_choice: Option<serde_json::Value>,
    // Checked for type only: forwarded as the client wrote them.
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub parallel_tool_calls: Option<bool>,
    pub user: Option<String>,
    pub stop: Option<Stop>,
    pub response_format: Option<serde_json::Map<String, serde_json::Value>>,
    pub reasoning_effort: Option<String>,
    pub logit_bias: Option<BTreeMap<String, f64>>,
    pub stream_options: Option<serde_json::Map<String, serde_json::Value>>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u32>,
    pub prompt_cache_key: Option<String>,
    pub verbosity: Option<String>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub store: Option<bool>,
    pub prediction: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    pub name: Option<String>,
    pub tool_calls: Option<Vec<ToolCall>>,
    pub tool_call_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
    pub refusal: Option<String>,
    pub image_url: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub struct ToolCall {
    pub id: Option<String>,
    pub function: Option<FunctionCall>,
}

#[derive(Debug, Deserialize)]
pub struct FunctionCall {
    pub name: Option<String>,
    pub arguments: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Tool {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: Option<FunctionDef>,
}

#[derive(Debug, Deserialize)]
pub struct FunctionDef {
    pub name: String,
    pub description: Option<String>,
    pub parameters: Option<serde_json::Value>,
}

impl Content {
    /// The text of the content (text parts joined), for counting and the sandbox.
    pub fn text(&self) -> String {
        match self {
            Content::Text(t) => t.clone(),
            Content::Parts(parts) => parts.iter().filter_map(|p| p.text.as_deref()).collect::<Vec<_>>().join("\n"),
        }
    }
}

impl ChatRequest {
    /// Parse and check a body. The error message says what is wrong, for a 400 `bad_request`.
    pub fn parse(body: &[u8]) -> Result<ChatRequest, String> {
        let req: ChatRequest = serde_json::from_slice(body).map_err(|e| describe_json_error(&e))?;
        if req.model.is_empty() {
            return Err("`model` must not be empty".into());
        }
        if req.messages.is_empty() {
            return Err("`messages` must contain at least one message".into());
        }
        for (i, m) in req.messages.iter().enumerate() {
            if !matches!(m.role.as_str(), "system" | "developer" | "user" | "assistant" | "tool" | "function") {
                return Err(format!("messages[{i}].role `{}` is not a valid role", m.role));
            }
        }
        if let Some(0) = req.max_tokens.or(req.max_completion_tokens) {
            return Err("`max_tokens` must be at least 1".into());
        }
        if let Some(n) = req.n {
            if n == 0 || n > N_MAX {
                return Err(format!("`n` must be between 1 and {N_MAX}"));
            }
        }
        if let Some(tools) = &req.tools {
            for (i, t) in tools.iter().enumerate() {
                if t.kind == "function" && t.function.is_none() {
                    return Err(format!("tools[{i}].function is required"));
                }
            }
        }
        Ok(req)
    }

    pub fn stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// `max_completion_tokens` wins over the legacy `max_tokens`.
    pub fn max_output(&self) -> Option<u64> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    pub fn choices(&self) -> u64 {
        self.n.unwrap_or(1)
    }
}

/// A serde error as a message for people (no Rust type names).
pub fn describe_json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof => format!("the body is not valid JSON ({e})"),
        Category::Data => format!("the body does not match the expected shape: {e}"),
        Category::Io => "the body could not be read".into(),
    }
}

/// The upstream body: the forwarded fields as the client wrote them, the upstream model id, and
/// for streams `stream_options.include_usage` forced on (SPEC §3.1).
pub fn forward_body(raw: &[u8], model: &quota_core::Model, request: &ChatRequest) -> Result<Vec<u8>, String> {
    let mut tail = Vec::new();
    if request.stream() {
        tail.extend_from_slice(b",\"stream\":true,\"stream_options\":{\"include_usage\":true}");
    }
    if !model.reasoning {
        return crate::json::forward_fields(raw, Some(&model.upstream_id), FORWARDED_FIELDS, &tail);
    }
    // A reasoning model takes `max_completion_tokens` only; the client's `max_tokens` becomes it.
    if let (Some(max), None) = (request.max_tokens, request.max_completion_tokens) {
        tail.extend_from_slice(format!(",\"max_completion_tokens\":{max}").as_bytes());
    }
    let allowed: Vec<&str> = FORWARDED_FIELDS
        .iter()
        .copied()
        .filter(|f| *f != "max_tokens" && !REASONING_REFUSED_FIELDS.contains(f))
        .collect();
    crate::json::forward_fields(raw, Some(&model.upstream_id), &allowed, &tail)
}

/// OpenAI's `usage` object.
#[derive(Debug, Deserialize, Clone, Copy)]
pub struct UsageWire {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    pub prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Debug, Deserialize, Clone, Copy)]
pub struct PromptDetails {
    pub cached_tokens: Option<u64>,
}

impl UsageWire {
    /// OpenAI's `prompt_tokens` includes cached tokens; reasoning tokens are already inside
    /// `completion_tokens` (reference/prices.md).
    pub fn to_usage(self) -> Usage {
        let cached = self.prompt_tokens_details.and_then(|d| d.cached_tokens).unwrap_or(0).min(self.prompt_tokens);
        Usage {
            input_tokens: self.prompt_tokens - cached,
            cached_tokens: cached,
            cache_write_tokens: 0,
            output_tokens: self.completion_tokens,
            ..Default::default()
        }
    }
}

/// The parts of a `chat.completion` body Quota reads.
#[derive(Debug, Deserialize)]
pub struct CompletionPeek {
    pub usage: Option<UsageWire>,
    #[serde(default)]
    pub choices: Vec<CompletionChoicePeek>,
}

#[derive(Debug, Deserialize)]
pub struct CompletionChoicePeek {
    pub message: Option<DeltaPeek>,
}

/// The parts of a `chat.completion.chunk` Quota reads.
#[derive(Debug, Deserialize)]
pub struct ChunkPeek {
    pub id: Option<String>,
    pub created: Option<i64>,
    pub model: Option<String>,
    pub choices: Option<Vec<ChunkChoicePeek>>,
    pub usage: Option<UsageWire>,
    pub error: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub struct ChunkChoicePeek {
    pub delta: Option<DeltaPeek>,
}

#[derive(Debug, Deserialize)]
pub struct DeltaPeek {
    pub content: Option<String>,
    pub refusal: Option<String>,
    pub tool_calls: Option<Vec<ToolCallDeltaPeek>>,
}

#[derive(Debug, Deserialize)]
pub struct ToolCallDeltaPeek {
    pub function: Option<FunctionDeltaPeek>,
}

#[derive(Debug, Deserialize)]
pub struct FunctionDeltaPeek {
    pub name: Option<String>,
    pub arguments: Option<String>,
}

impl DeltaPeek {
    /// Every piece of generated text in this delta or message.
    pub fn for_each_text(&self, mut f: impl FnMut(&str)) {
        if let Some(c) = &self.content {
            f(c);
        }
        if let Some(r) = &self.refusal {
            f(r);
        }
        for tc in self.tool_calls.iter().flatten() {
            if let Some(func) = &tc.function {
                if let Some(n) = &func.name {
                    f(n);
                }
                if let Some(a) = &func.arguments {
                    f(a);
                }
            }
        }
    }
}

/// The URL of an OpenAI `image_url` part (`{"url": …}`, or a bare string).
pub fn image_url(v: Option<&Value>) -> Option<&str> {
    let v = v?;
    v.as_str().or_else(|| v.get("url").and_then(Value::as_str))
}

/// `data:<media type>;base64,<data>` → (media type, data).
pub fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media_type = meta.strip_suffix(";base64")?;
    Some((media_type, data))
}

/// OpenAI's `usage` object for metered usage (prompt tokens include cache reads and writes, as
/// OpenAI's do).
pub fn openai_usage(u: &Usage, reasoning_tokens: Option<u64>) -> Value {
    let prompt = u.prompt_tokens_total();
    let mut usage = json!({"prompt_tokens": prompt, "completion_tokens": u.output_tokens,
        "total_tokens": prompt + u.output_tokens, "prompt_tokens_details": {"cached_tokens": u.cached_tokens}});
    if let Some(r) = reasoning_tokens {
        usage["completion_tokens_details"] = json!({"reasoning_tokens": r});
    }
    usage
}

pub use crate::json::splice_quota;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_only_allowed_fields_with_the_upstream_model() {
        let raw = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"service_tier":"priority","temperature":0.5,"stream":true}"#;
        let catalog = quota_core::Catalog::builtin();
        let model = catalog.get("gpt-4o-mini").unwrap();
        let out = forward_body(raw, model, &ChatRequest::parse(raw).unwrap()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "gpt-4o-mini");
        assert_eq!(v["temperature"], 0.5);
        assert!(v.get("service_tier").is_none());
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["messages"][0]["content"], "hi");
    }

    #[test]
    fn reasoning_models_get_max_completion_tokens_and_no_refused_sampling_parameters() {
        let raw = br#"{"model":"gpt-5","messages":[{"role":"user","content":"hi"}],"max_tokens":300,"temperature":0.2,"top_p":0.9,"presence_penalty":0.1,"logprobs":true,"seed":7,"reasoning_effort":"low","verbosity":"low","prompt_cache_key":"k1"}"#;
        let catalog = quota_core::Catalog::builtin();
        let out = forward_body(raw, catalog.get("gpt-5").unwrap(), &ChatRequest::parse(raw).unwrap()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["max_completion_tokens"], 300);
        for dropped in ["max_tokens", "temperature", "top_p", "presence_penalty", "logprobs"] {
            assert!(v.get(dropped).is_none(), "{dropped} forwarded: {v}");
        }
        assert_eq!((v["seed"].clone(), v["reasoning_effort"].clone()), (7.into(), "low".into()));
        assert_eq!((v["verbosity"].clone(), v["prompt_cache_key"].clone()), ("low".into(), "k1".into()));
        // The client's own max_completion_tokens wins, and is not duplicated.
        let raw =
            br#"{"model":"o3","messages":[{"role":"user","content":"hi"}],"max_tokens":5,"max_completion_tokens":900}"#;
        let out = forward_body(raw, catalog.get("o3").unwrap(), &ChatRequest::parse(raw).unwrap()).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("max_completion_tokens").count(), 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["max_completion_tokens"], 900);
        // Others keep their sampling parameters and max_tokens as written.
        let raw = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"max_tokens":5,"temperature":0.3,"logprobs":true,"top_logprobs":2}"#;
        let out = forward_body(raw, catalog.get("gpt-4o").unwrap(), &ChatRequest::parse(raw).unwrap()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!((v["max_tokens"].clone(), v["temperature"].clone()), (5.into(), 0.3.into()));
        assert_eq!((v["logprobs"].clone(), v["top_logprobs"].clone()), (true.into(), 2.into()));
    }

    #[test]
    fn usage_excludes_cached_from_input() {
        let u: UsageWire = serde_json::from_str(r#"{"prompt_tokens":100,"completion_tokens":20,"prompt_tokens_details":{"cached_tokens":30},"completion_tokens_details":{"reasoning_tokens":5}}"#).unwrap();
        assert_eq!(
            u.to_usage(),
            Usage {
                input_tokens: 70,
                cached_tokens: 30,
                cache_write_tokens: 0,
                output_tokens: 20,
                ..Default::default()
            }
        );
    }

    #[test]
    fn rejects_bad_requests_with_a_reason() {
        assert!(ChatRequest::parse(b"{").unwrap_err().contains("not valid JSON"));
        assert!(ChatRequest::parse(br#"{"messages":[]}"#).unwrap_err().contains("model"));
        assert!(ChatRequest::parse(br#"{"model":"m","messages":[]}"#).unwrap_err().contains("at least one"));
        assert!(ChatRequest::parse(br#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#)
            .is_err());
        assert!(
            ChatRequest::parse(br#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":-1}"#).is_err()
        );
        assert!(ChatRequest::parse(br#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#).is_err());
        assert!(ChatRequest::parse(br#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":0}"#).is_err());
        assert!(ChatRequest::parse(br#"{"model":"m","messages":[{"role":"user","content":"x"}],"whatever":{"a":1}}"#)
            .is_ok());
    }
}

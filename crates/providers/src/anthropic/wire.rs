//! Anthropic Messages wire types: the request Quota accepts on `/v1/messages`, the fields it
//! forwards, and the usage it meters from bodies and stream events.

use crate::openai::describe_json_error;
use quota_core::Usage;
use serde::Deserialize;
use serde_json::Value;

/// Fields forwarded upstream (SPEC §3.2, plus `thinking`, whose tokens are billed as output and
/// bounded by `max_tokens`). Anything else (`service_tier`, `mcp_servers`, `container`…) is
/// ignored, so nothing Quota does not price reaches the provider.
pub const FORWARDED_FIELDS: &[&str] = &[
    "max_tokens",
    "messages",
    "system",
    "tools",
    "tool_choice",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "stream",
    "metadata",
    "thinking",
];

/// Anthropic server tools billed per use on top of tokens; Quota does not price them, so it
/// does not forward them.
const UNPRICED_TOOL_PREFIXES: &[&str] = &["web_search", "web_fetch", "code_execution"];

/// The request body of `/v1/messages`, typed where Quota reads it, type-checked where it
/// forwards it.
#[derive(Debug, Deserialize)]
pub struct MessagesRequest {
    pub model: String,
    pub max_tokens: u64,
    pub messages: Vec<Message>,
    pub system: Option<TextOrBlocks>,
    pub tools: Option<Vec<Tool>>,
    pub tool_choice: Option<serde_json::Map<String, Value>>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u64>,
    pub stop_sequences: Option<Vec<String>>,
    pub stream: Option<bool>,
    pub metadata: Option<serde_json::Map<String, Value>>,
    pub thinking: Option<serde_json::Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: TextOrBlocks,
}

/// A string, or an array of content blocks (`{"type": "text" | "image" | "tool_use" | …}`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum TextOrBlocks {
    Text(String),
    Blocks(Vec<serde_json::Map<String, Value>>),
}

#[derive(Debug, Deserialize)]
pub struct Tool {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub description: Option<String>,
    pub input_schema: Option<Value>,
}

impl TextOrBlocks {
    /// Every piece of text in it (text blocks, tool inputs and results), for counting and the
    /// sandbox's seed.
    pub fn for_each_text(&self, mut f: impl FnMut(&str)) {
        match self {
            TextOrBlocks::Text(t) => f(t),
            TextOrBlocks::Blocks(blocks) => {
                for b in blocks {
                    block_text(b, &mut f);
                }
            }
        }
    }

    pub fn text(&self) -> String {
        let mut out = Vec::new();
        self.for_each_text(|t| out.push(t.to_string()));
        out.join("\n")
    }

    /// Whether this is a user turn carrying tool results.
    pub fn has_tool_result(&self) -> bool {
        matches!(self, TextOrBlocks::Blocks(b) if b.iter().any(|b| b.get("type").and_then(Value::as_str) == Some("tool_result")))
    }
}

fn block_text(block: &serde_json::Map<String, Value>, f: &mut impl FnMut(&str)) {
    for key in ["text", "thinking", "name"] {
        if let Some(t) = block.get(key).and_then(Value::as_str) {
            f(t);
        }
    }
    if let Some(input) = block.get("input") {
        f(&input.to_string());
    }
    match block.get("content") {
        Some(Value::String(s)) => f(s),
        Some(Value::Array(parts)) => {
            for p in parts.iter().filter_map(Value::as_object) {
                block_text(p, f);
            }
        }
        _ => {}
    }
}

impl MessagesRequest {
    /// Parse and check a body. The error says what is wrong, for a 400 `bad_request`.
    pub fn parse(body: &[u8]) -> Result<MessagesRequest, String> {
        let req: MessagesRequest = serde_json::from_slice(body).map_err(|e| describe_json_error(&e))?;
        if req.model.is_empty() {
            return Err("`model` must not be empty".into());
        }
        if req.max_tokens == 0 {
            return Err("`max_tokens` must be at least 1".into());
        }
        if req.messages.is_empty() {
            return Err("`messages` must contain at least one message".into());
        }
        for (i, m) in req.messages.iter().enumerate() {
            if !matches!(m.role.as_str(), "user" | "assistant") {
                return Err(format!("messages[{i}].role must be `user` or `assistant`, not `{}`", m.role));
            }
        }
        for t in req.tools.iter().flatten() {
            if let Some(kind) = &t.kind {
                if UNPRICED_TOOL_PREFIXES.iter().any(|p| kind.starts_with(p)) {
                    return Err(format!(
                        "the server tool `{kind}` is billed per use by Anthropic and is not available through Quota"
                    ));
                }
            }
        }
        Ok(req)
    }

    pub fn stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }
}

/// The upstream body: the forwarded fields as the client wrote them, with the upstream model id.
pub fn forward_body(raw: &[u8], upstream_model: &str) -> Result<Vec<u8>, String> {
    crate::json::forward_fields(raw, Some(upstream_model), FORWARDED_FIELDS, b"")
}

/// Anthropic's `usage` object. Every field may be absent (a `message_delta` carries only what
/// changed).
#[derive(Debug, Deserialize, Clone, Copy, Default)]
pub struct UsageWire {
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cache_creation_input_tokens: Option<u64>,
    pub cache_read_input_tokens: Option<u64>,
    /// The cache writes split by lifetime (5 minutes, 1 hour), which are priced differently.
    pub cache_creation: Option<CacheCreationWire>,
}

/// `usage.cache_creation`: `cache_creation_input_tokens` split by the cache's lifetime.
#[derive(Debug, Deserialize, Clone, Copy, Default)]
pub struct CacheCreationWire {
    pub ephemeral_5m_input_tokens: Option<u64>,
    pub ephemeral_1h_input_tokens: Option<u64>,
}

impl UsageWire {
    /// `input_tokens` already excludes cache reads and writes (reference/prices.md): each class
    /// maps to its own Quota class. Cache writes are 5-minute ones unless `cache_creation`
    /// says how many were 1-hour; a total larger than the split is billed at the 5-minute
    /// rate, and a split larger than the total counts as reported (never fewer tokens).
    pub fn to_usage(self) -> Usage {
        let total = self.cache_creation_input_tokens.unwrap_or(0);
        let (write_5m, write_1h) = match self.cache_creation {
            Some(c) => {
                let write_1h = c.ephemeral_1h_input_tokens.unwrap_or(0);
                let write_5m = c.ephemeral_5m_input_tokens.unwrap_or(0).max(total.saturating_sub(write_1h));
                (write_5m, write_1h)
            }
            None => (total, 0),
        };
        Usage {
            input_tokens: self.input_tokens.unwrap_or(0),
            cached_tokens: self.cache_read_input_tokens.unwrap_or(0),
            cache_write_tokens: write_5m,
            cache_write_1h_tokens: write_1h,
            output_tokens: self.output_tokens.unwrap_or(0),
        }
    }

    /// `self` updated with the fields `later` reports (a `message_delta`'s cumulative counts).
    pub fn updated(self, later: UsageWire) -> UsageWire {
        UsageWire {
            input_tokens: later.input_tokens.or(self.input_tokens),
            output_tokens: later.output_tokens.or(self.output_tokens),
            cache_creation_input_tokens: later.cache_creation_input_tokens.or(self.cache_creation_input_tokens),
            cache_read_input_tokens: later.cache_read_input_tokens.or(self.cache_read_input_tokens),
            cache_creation: later.cache_creation.or(self.cache_creation),
        }
    }
}

/// The parts of a `message` Quota reads.
#[derive(Debug, Deserialize)]
pub struct MessagePeek {
    pub id: Option<String>,
    pub model: Option<String>,
    #[serde(default)]
    pub content: Vec<ContentPeek>,
    pub stop_reason: Option<String>,
    pub usage: Option<UsageWire>,
}

/// A content block of an answer.
#[derive(Debug, Deserialize)]
pub struct ContentPeek {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
    pub thinking: Option<String>,
    pub id: Option<String>,
    pub name: Option<String>,
    pub input: Option<Value>,
}

/// One stream event's data.
#[derive(Debug, Deserialize)]
pub struct EventPeek {
    #[serde(rename = "type")]
    pub kind: String,
    pub message: Option<MessagePeek>,
    pub index: Option<u64>,
    pub content_block: Option<ContentPeek>,
    pub delta: Option<DeltaPeek>,
    pub usage: Option<UsageWire>,
    pub error: Option<ErrorPeek>,
}

#[derive(Debug, Deserialize)]
pub struct DeltaPeek {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub text: Option<String>,
    pub partial_json: Option<String>,
    pub thinking: Option<String>,
    pub stop_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ErrorPeek {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub message: Option<String>,
}

impl DeltaPeek {
    /// Generated text in this delta (text, tool input, thinking), for counting output.
    pub fn generated(&self) -> Option<&str> {
        self.text.as_deref().or(self.partial_json.as_deref()).or(self.thinking.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_hour_cache_writes_are_their_own_class() {
        let u: UsageWire = serde_json::from_str(
            r#"{"input_tokens":10,"cache_creation_input_tokens":1500,"cache_read_input_tokens":0,"output_tokens":5,
                "cache_creation":{"ephemeral_5m_input_tokens":500,"ephemeral_1h_input_tokens":1000}}"#,
        )
        .unwrap();
        let usage = u.to_usage();
        assert_eq!((usage.cache_write_tokens, usage.cache_write_1h_tokens), (500, 1000));
        assert_eq!(usage.cache_writes_total(), 1500);
        // A message_delta without the split keeps the start's split.
        let later: UsageWire = serde_json::from_str(r#"{"output_tokens":40}"#).unwrap();
        assert_eq!(u.updated(later).to_usage().cache_write_1h_tokens, 1000);
    }

    #[test]
    fn usage_maps_each_cache_class_to_its_own_price_class() {
        let u: UsageWire = serde_json::from_str(
            r#"{"input_tokens":12,"cache_creation_input_tokens":300,"cache_read_input_tokens":4000,"output_tokens":55}"#,
        )
        .unwrap();
        assert_eq!(
            u.to_usage(),
            Usage {
                input_tokens: 12,
                cached_tokens: 4000,
                cache_write_tokens: 300,
                output_tokens: 55,
                ..Default::default()
            }
        );
        let later: UsageWire = serde_json::from_str(r#"{"output_tokens":99}"#).unwrap();
        assert_eq!(u.updated(later).to_usage().output_tokens, 99);
        assert_eq!(u.updated(later).to_usage().cached_tokens, 4000);
    }

    #[test]
    fn rejects_bad_requests_with_a_reason() {
        let ok = br#"{"model":"claude-sonnet-4-5","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#;
        assert!(MessagesRequest::parse(ok).is_ok());
        let no_max = br#"{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"hi"}]}"#;
        assert!(MessagesRequest::parse(no_max).unwrap_err().contains("max_tokens"));
        let system_role = br#"{"model":"m","max_tokens":5,"messages":[{"role":"system","content":"hi"}]}"#;
        assert!(MessagesRequest::parse(system_role).unwrap_err().contains("role"));
        let search = br#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"web_search_20250305","name":"web_search"}]}"#;
        assert!(MessagesRequest::parse(search).unwrap_err().contains("web_search"));
    }

    #[test]
    fn forwards_only_allowed_fields_with_the_upstream_model() {
        let raw =
            br#"{"model":"anthropic/claude-sonnet-4.5","max_tokens":10,"messages":[],"service_tier":"auto","top_k":3}"#;
        let v: Value = serde_json::from_slice(&forward_body(raw, "claude-sonnet-4-5").unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"model":"claude-sonnet-4-5","max_tokens":10,"messages":[],"top_k":3}));
    }
}

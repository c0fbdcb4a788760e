//! Gemini wire types: the `generateContent` request Quota accepts, the fields it forwards, and
//! the usage it meters from `usageMetadata`. The REST API accepts camelCase and snake_case field
//! names; so does Quota.

use crate::openai::describe_json_error;
use quota_core::Usage;
use serde::Deserialize;
use serde_json::Value;

/// Fields forwarded upstream, in both spellings the API accepts. The model travels in the URL.
pub const FORWARDED_FIELDS: &[&str] = &[
    "contents",
    "systemInstruction",
    "system_instruction",
    "tools",
    "toolConfig",
    "tool_config",
    "generationConfig",
    "generation_config",
    "safetySettings",
    "safety_settings",
    "cachedContent",
    "cached_content",
];

/// Tool kinds billed by tokens only. Google Search grounding, Maps, URL context and the like are
/// billed per request on top; Quota does not price them, so it does not forward them.
const PRICED_TOOL_KINDS: &[&str] =
    &["functionDeclarations", "function_declarations", "codeExecution", "code_execution"];

/// Most candidates Gemini returns for one request.
pub const CANDIDATES_MAX: u64 = 8;

/// The `generateContent` body, typed where Quota reads it.
#[derive(Debug, Deserialize)]
pub struct GenerateRequest {
    pub contents: Vec<Content>,
    #[serde(alias = "systemInstruction")]
    pub system_instruction: Option<Content>,
    pub tools: Option<Vec<serde_json::Map<String, Value>>>,
    #[serde(alias = "toolConfig")]
    pub tool_config: Option<serde_json::Map<String, Value>>,
    #[serde(alias = "generationConfig")]
    pub generation_config: Option<GenerationConfig>,
    /// A `cachedContents/…` name: content cached at Google beforehand, billed at the cached rate.
    #[serde(alias = "cachedContent")]
    pub cached_content: Option<String>,
    /// `streamGenerateContent` rather than `generateContent`: Gemini says it in the URL.
    #[serde(skip)]
    pub stream: bool,
}

#[derive(Debug, Deserialize)]
pub struct Content {
    pub role: Option<String>,
    #[serde(default)]
    pub parts: Vec<serde_json::Map<String, Value>>,
}

#[derive(Debug, Deserialize, Default)]
pub struct GenerationConfig {
    #[serde(alias = "maxOutputTokens")]
    pub max_output_tokens: Option<u64>,
    #[serde(alias = "candidateCount")]
    pub candidate_count: Option<u64>,
    /// Structured-output schemas, rendered into the prompt.
    #[serde(alias = "responseSchema")]
    pub response_schema: Option<Value>,
    #[serde(alias = "responseJsonSchema")]
    pub response_json_schema: Option<Value>,
}

impl Content {
    /// Every piece of text in the parts (text, function calls and responses), for counting and
    /// the sandbox's seed.
    pub fn for_each_text(&self, mut f: impl FnMut(&str)) {
        for p in &self.parts {
            if let Some(t) = p.get("text").and_then(Value::as_str) {
                f(t);
            }
            for key in ["functionCall", "function_call", "functionResponse", "function_response"] {
                if let Some(v) = p.get(key) {
                    f(&v.to_string());
                }
            }
        }
    }

    pub fn text(&self) -> String {
        let mut out = Vec::new();
        self.for_each_text(|t| out.push(t.to_string()));
        out.join("\n")
    }

    /// Whether this turn answers function calls.
    pub fn has_function_response(&self) -> bool {
        self.parts.iter().any(|p| p.contains_key("functionResponse") || p.contains_key("function_response"))
    }
}

impl GenerateRequest {
    /// Parse and check a body. The error says what is wrong, for a 400 `bad_request`.
    pub fn parse(body: &[u8], stream: bool) -> Result<GenerateRequest, String> {
        let mut req: GenerateRequest = serde_json::from_slice(body).map_err(|e| describe_json_error(&e))?;
        req.stream = stream;
        if req.contents.is_empty() {
            return Err("`contents` must contain at least one turn".into());
        }
        for (i, c) in req.contents.iter().enumerate() {
            if let Some(role) = &c.role {
                if !matches!(role.as_str(), "user" | "model") {
                    return Err(format!("contents[{i}].role must be `user` or `model`, not `{role}`"));
                }
            }
            if c.parts.is_empty() {
                return Err(format!("contents[{i}].parts must not be empty"));
            }
        }
        for (i, tool) in req.tools.iter().flatten().enumerate() {
            if let Some(kind) = tool.keys().find(|k| !PRICED_TOOL_KINDS.contains(&k.as_str())) {
                return Err(format!(
                    "tools[{i}].{kind} is billed per request by Google and is not available through Quota"
                ));
            }
        }
        if let Some(g) = &req.generation_config {
            if g.max_output_tokens == Some(0) {
                return Err("`generationConfig.maxOutputTokens` must be at least 1".into());
            }
            if let Some(n) = g.candidate_count {
                if n == 0 || n > CANDIDATES_MAX {
                    return Err(format!("`generationConfig.candidateCount` must be between 1 and {CANDIDATES_MAX}"));
                }
            }
        }
        Ok(req)
    }

    pub fn max_output(&self) -> Option<u64> {
        self.generation_config.as_ref().and_then(|g| g.max_output_tokens)
    }

    pub fn candidates(&self) -> u64 {
        self.generation_config.as_ref().and_then(|g| g.candidate_count).unwrap_or(1)
    }
}

/// The upstream body: the forwarded fields as the client wrote them.
pub fn forward_body(raw: &[u8]) -> Result<Vec<u8>, String> {
    crate::json::forward_fields(raw, None, FORWARDED_FIELDS, b"")
}

/// Gemini's `usageMetadata`.
#[derive(Debug, Deserialize, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UsageWire {
    #[serde(default)]
    pub prompt_token_count: u64,
    #[serde(default)]
    pub candidates_token_count: u64,
    #[serde(default)]
    pub cached_content_token_count: u64,
    #[serde(default)]
    pub thoughts_token_count: u64,
    #[serde(default)]
    pub tool_use_prompt_token_count: u64,
}

impl UsageWire {
    /// `promptTokenCount` includes the cached tokens; thoughts are output outside
    /// `candidatesTokenCount`; tool-use prompt tokens are input outside `promptTokenCount`.
    pub fn to_usage(self) -> Usage {
        let cached = self.cached_content_token_count.min(self.prompt_token_count);
        Usage {
            input_tokens: (self.prompt_token_count - cached).saturating_add(self.tool_use_prompt_token_count),
            cached_tokens: cached,
            cache_write_tokens: 0,
            output_tokens: self.candidates_token_count.saturating_add(self.thoughts_token_count),
            ..Default::default()
        }
    }
}

/// The parts of a `GenerateContentResponse` (or one stream chunk) Quota reads.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ResponsePeek {
    #[serde(default)]
    pub candidates: Vec<CandidatePeek>,
    pub usage_metadata: Option<UsageWire>,
    pub response_id: Option<String>,
    pub error: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CandidatePeek {
    pub content: Option<ContentPeek>,
    pub finish_reason: Option<String>,
    pub index: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub struct ContentPeek {
    #[serde(default)]
    pub parts: Vec<PartPeek>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartPeek {
    pub text: Option<String>,
    pub thought: Option<bool>,
    pub function_call: Option<FunctionCallPeek>,
}

#[derive(Debug, Deserialize)]
pub struct FunctionCallPeek {
    pub id: Option<String>,
    pub name: Option<String>,
    pub args: Option<Value>,
}

impl ResponsePeek {
    /// Every piece of generated text (thoughts included: they are billed output).
    pub fn for_each_generated(&self, mut f: impl FnMut(&str)) {
        for c in &self.candidates {
            for p in c.content.iter().flat_map(|c| &c.parts) {
                if let Some(t) = &p.text {
                    f(t);
                }
                if let Some(call) = &p.function_call {
                    if let Some(n) = &call.name {
                        f(n);
                    }
                    if let Some(a) = &call.args {
                        f(&a.to_string());
                    }
                }
            }
        }
    }

    pub fn finished(&self) -> bool {
        self.candidates.iter().any(|c| c.finish_reason.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_includes_cached_and_thoughts_are_added_to_output() {
        let u: UsageWire = serde_json::from_str(
            r#"{"promptTokenCount":1000,"cachedContentTokenCount":600,"candidatesTokenCount":50,"thoughtsTokenCount":200,"totalTokenCount":1250}"#,
        )
        .unwrap();
        assert_eq!(
            u.to_usage(),
            Usage {
                input_tokens: 400,
                cached_tokens: 600,
                cache_write_tokens: 0,
                output_tokens: 250,
                ..Default::default()
            }
        );
    }

    #[test]
    fn rejects_bad_requests_with_a_reason() {
        assert!(GenerateRequest::parse(br#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#, false).is_ok());
        assert!(GenerateRequest::parse(br#"{"contents":[]}"#, false).unwrap_err().contains("contents"));
        assert!(GenerateRequest::parse(br#"{"contents":[{"role":"assistant","parts":[{"text":"x"}]}]}"#, false)
            .unwrap_err()
            .contains("role"));
        let search = br#"{"contents":[{"parts":[{"text":"x"}]}],"tools":[{"googleSearch":{}}]}"#;
        assert!(GenerateRequest::parse(search, false).unwrap_err().contains("googleSearch"));
        let snake = br#"{"contents":[{"parts":[{"text":"x"}]}],"generation_config":{"max_output_tokens":7,"candidate_count":2}}"#;
        let r = GenerateRequest::parse(snake, true).unwrap();
        assert_eq!((r.max_output(), r.candidates()), (Some(7), 2));
    }
}

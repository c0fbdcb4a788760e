//! What the sandbox says: a deterministic function of the conversation, shared by every shape.

use quota_core::tokens::{count_tokens, split_tokens};

const WORDS: &[&str] = &[
    "quota",
    "ledger",
    "credit",
    "balance",
    "request",
    "stream",
    "token",
    "model",
    "sandbox",
    "answer",
    "synthetic",
    "metered",
    "charged",
    "settled",
    "reserved",
    "wallet",
    "gateway",
    "upstream",
    "provider",
    "usage",
    "record",
    "webhook",
    "signed",
    "deterministic",
    "reply",
    "message",
    "prompt",
    "output",
    "input",
    "cost",
    "exact",
    "integer",
    "double",
    "entry",
    "transfer",
    "hold",
    "release",
    "commit",
    "durable",
    "fast",
];

/// Words in a full sandbox answer (before `max_tokens` truncation).
const ANSWER_WORDS: usize = 24;

/// What one choice outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlannedOutput {
    /// Text, already truncated to the output budget.
    Text { text: String, truncated: bool },
    /// A call of `name` with JSON `arguments`.
    ToolCall { id: String, name: String, arguments: String },
}

impl PlannedOutput {
    pub fn output_tokens(&self) -> u64 {
        match self {
            PlannedOutput::Text { text, .. } => count_tokens(text),
            PlannedOutput::ToolCall { name, arguments, .. } => count_tokens(name) + count_tokens(arguments),
        }
    }

    /// The OpenAI finish reason for this output.
    pub fn finish_reason(&self) -> &'static str {
        match self {
            PlannedOutput::Text { truncated: true, .. } => "length",
            PlannedOutput::Text { .. } => "stop",
            PlannedOutput::ToolCall { .. } => "tool_calls",
        }
    }
}

/// The sandbox's answer to a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub outputs: Vec<PlannedOutput>,
}

impl Plan {
    pub fn output_tokens(&self) -> u64 {
        self.outputs.iter().map(PlannedOutput::output_tokens).sum()
    }
}

/// A tool the caller offered: its name and JSON-schema parameters.
pub struct OfferedTool<'a> {
    pub name: &'a str,
    pub parameters: Option<&'a serde_json::Value>,
}

/// Plan the answer. `seed_text` identifies the conversation (same text → same answer);
/// `last_user_text` is quoted back; a tool is called when `tool` is given (the caller decides
/// from `tool_choice` and whether the last message was a tool result).
pub fn plan(
    seed_text: &str,
    last_user_text: &str,
    tool: Option<OfferedTool<'_>>,
    max_output: Option<u64>,
    choices: u64,
) -> Plan {
    let outputs = (0..choices.max(1))
        .map(|index| {
            let seed = fnv1a(seed_text.as_bytes()) ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            if let Some(t) = &tool {
                let arguments = synth_arguments(t.parameters, seed);
                return PlannedOutput::ToolCall {
                    id: format!("call_{:016x}", seed),
                    name: t.name.to_string(),
                    arguments,
                };
            }
            let text = answer_text(last_user_text, seed);
            truncate(&text, max_output)
        })
        .collect();
    Plan { outputs }
}

fn answer_text(last_user_text: &str, mut seed: u64) -> String {
    let quoted: Vec<&str> = last_user_text.split_whitespace().take(6).collect();
    let mut text = if quoted.is_empty() {
        "This is a sandbox reply.".to_string()
    } else {
        format!("This is a sandbox reply to \"{}\".", quoted.join(" ").replace('"', "'"))
    };
    for i in 0..ANSWER_WORDS {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let word = WORDS[(seed >> 33) as usize % WORDS.len()];
        text.push(' ');
        text.push_str(word);
        if i % 8 == 7 {
            text.push('.');
        }
    }
    text
}

fn truncate(text: &str, max_output: Option<u64>) -> PlannedOutput {
    match max_output {
        Some(max) if count_tokens(text) > max => {
            let pieces = split_tokens(text);
            let kept: String = pieces[..max as usize].concat();
            PlannedOutput::Text { text: kept, truncated: true }
        }
        _ => PlannedOutput::Text { text: text.to_string(), truncated: false },
    }
}

/// Arguments that satisfy the tool's schema in shape: every required property (or every
/// property, when none is marked required) with a value of its type.
fn synth_arguments(schema: Option<&serde_json::Value>, seed: u64) -> String {
    let mut args = serde_json::Map::new();
    if let Some(props) = schema.and_then(|s| s.get("properties")).and_then(|p| p.as_object()) {
        let required: Vec<&str> = schema
            .and_then(|s| s.get("required"))
            .and_then(|r| r.as_array())
            .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        for (name, prop) in props {
            if !required.is_empty() && !required.contains(&name.as_str()) {
                continue;
            }
            args.insert(name.clone(), synth_value(prop, seed));
        }
    }
    serde_json::Value::Object(args).to_string()
}

fn synth_value(prop: &serde_json::Value, seed: u64) -> serde_json::Value {
    if let Some(first) = prop.get("enum").and_then(|e| e.as_array()).and_then(|e| e.first()) {
        return first.clone();
    }
    match prop.get("type").and_then(|t| t.as_str()).unwrap_or("string") {
        "integer" => serde_json::json!((seed % 100) as i64),
        "number" => serde_json::json!((seed % 1000) as f64 / 10.0),
        "boolean" => serde_json::json!(seed.is_multiple_of(2)),
        "array" => serde_json::json!([]),
        "object" => serde_json::json!({}),
        _ => serde_json::json!(format!("sandbox-{}", WORDS[(seed % WORDS.len() as u64) as usize])),
    }
}

/// FNV-1a: a tiny, stable hash (the answer must not change between builds or platforms).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_conversation_same_answer() {
        let a = plan("conv", "Hello there", None, None, 1);
        let b = plan("conv", "Hello there", None, None, 1);
        let c = plan("other", "Hello there", None, None, 1);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn respects_max_tokens_exactly() {
        let p = plan("conv", "Hello there", None, Some(5), 1);
        assert_eq!(p.output_tokens(), 5);
        assert_eq!(p.outputs[0].finish_reason(), "length");
        let full = plan("conv", "Hello there", None, Some(10_000), 1);
        assert_eq!(full.outputs[0].finish_reason(), "stop");
    }

    #[test]
    fn tool_calls_fill_required_arguments_by_type() {
        let schema = serde_json::json!({"type":"object","properties":{"city":{"type":"string"},"days":{"type":"integer"},"unit":{"enum":["c","f"]}},"required":["city","unit"]});
        let p = plan("conv", "weather?", Some(OfferedTool { name: "get_weather", parameters: Some(&schema) }), None, 1);
        let PlannedOutput::ToolCall { name, arguments, .. } = &p.outputs[0] else { panic!("expected a tool call") };
        assert_eq!(name, "get_weather");
        let args: serde_json::Value = serde_json::from_str(arguments).unwrap();
        assert!(args["city"].is_string());
        assert_eq!(args["unit"], "c");
        assert!(args.get("days").is_none());
    }
}

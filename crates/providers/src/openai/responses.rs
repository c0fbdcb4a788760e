//! The OpenAI Responses API (SPEC §3.7) on the wire: the validated request, its hold bound
//! (SPEC §4.3(1)), the fields forwarded, usage read from a `response` object, and the typed
//! event stream forwarded as it arrives with the final `response.completed` held back so the
//! gateway can add `quota` to its `response`.
//!
//! Not here: the route's phases (the gateway's `routes::responses`), and the sandbox's answer
//! (`sandbox::responses`).

use super::wire::describe_json_error;
use crate::sse::{parse_event, EventTranslator};
use crate::{scrub_credentials, Meter, UpstreamError};
use bytes::Bytes;
use quota_core::hold::PromptBound;
use quota_core::{Model, Usage};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Fields forwarded upstream. Everything else is ignored, so nothing Quota does not price (a
/// dearer `service_tier`, `background` runs it cannot meter) reaches the provider.
pub const FORWARDED_FIELDS: &[&str] = &[
    "input",
    "instructions",
    "max_output_tokens",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "reasoning",
    "text",
    "previous_response_id",
    "conversation",
    "store",
    "metadata",
    "temperature",
    "top_p",
    "truncation",
    "user",
    "prompt_cache_key",
    "safety_identifier",
    "include",
    "max_tool_calls",
    "top_logprobs",
];

/// Sampling parameters reasoning models refuse (SPEC §3.1b): dropped for them.
const REASONING_REFUSED_FIELDS: &[&str] = &["temperature", "top_p", "top_logprobs"];

/// Tool types that run on the provider's side and are billed by it per call, at prices the
/// catalog does not hold (web search, file search, code interpreter, computer use, …): only
/// `function` and `custom` tools, which the client runs, are accepted.
const CLIENT_TOOL_TYPES: &[&str] = &["function", "custom"];

/// A `POST /v1/responses` body, typed where Quota reads it; the rest is forwarded as written.
#[derive(Debug, Deserialize)]
pub struct ResponsesRequest {
    pub model: String,
    #[serde(default)]
    pub input: Option<Input>,
    pub instructions: Option<String>,
    pub max_output_tokens: Option<u64>,
    pub tools: Option<Vec<Map<String, Value>>>,
    pub tool_choice: Option<Value>,
    pub stream: Option<bool>,
    pub previous_response_id: Option<String>,
    pub conversation: Option<Value>,
    pub background: Option<bool>,
    pub prompt: Option<Value>,
    pub text: Option<Map<String, Value>>,
    pub store: Option<bool>,
    pub metadata: Option<Map<String, Value>>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
}

/// `input`: a string, or a list of input items (messages, function calls and their outputs…).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Input {
    Text(String),
    Items(Vec<Value>),
}

impl ResponsesRequest {
    pub fn parse(body: &[u8]) -> Result<ResponsesRequest, String> {
        let req: ResponsesRequest = serde_json::from_slice(body).map_err(|e| describe_json_error(&e))?;
        if req.model.is_empty() {
            return Err("`model` must not be empty".into());
        }
        if req.input.is_none() && req.previous_response_id.is_none() && req.prompt.is_none() {
            return Err("`input` is required".into());
        }
        if req.background == Some(true) {
            return Err("`background` responses are not supported: Quota meters a response while it runs".into());
        }
        if req.max_output_tokens == Some(0) {
            return Err("`max_output_tokens` must be at least 1".into());
        }
        for (i, tool) in req.tools.iter().flatten().enumerate() {
            let kind = tool.get("type").and_then(Value::as_str).unwrap_or("");
            if !CLIENT_TOOL_TYPES.contains(&kind) {
                return Err(format!(
                    "tools[{i}]: the `{kind}` tool runs on the provider's side at prices this gateway cannot meter; \
                     only `function` and `custom` tools are supported"
                ));
            }
        }
        Ok(req)
    }

    pub fn stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// What this request's prompt can be billed for at most (SPEC §4.3(1)): text at one token
    /// per byte, inline images at the model's maximum, and the whole window when the provider
    /// adds context Quota cannot see (`previous_response_id`, `conversation`, a stored
    /// `prompt`, items by reference, media by URL or file id).
    pub fn prompt_bound(&self) -> PromptBound {
        let mut bound = PromptBound::new();
        if self.previous_response_id.is_some() || self.conversation.is_some() || self.prompt.is_some() {
            bound.unmeasurable();
        }
        bound.text(self.instructions.as_deref().unwrap_or(""));
        match &self.input {
            None => {}
            Some(Input::Text(t)) => {
                bound.message();
                bound.text(t);
            }
            Some(Input::Items(items)) => items.iter().for_each(|item| item_bound(item, &mut bound)),
        }
        for tool in self.tools.iter().flatten() {
            bound.tool();
            bound.json_map(tool);
        }
        if let Some(choice) = &self.tool_choice {
            bound.json(choice);
        }
        if let Some(text) = &self.text {
            bound.json_map(text);
        }
        bound
    }

    /// The text of the input, for the sandbox's seed and reply.
    pub fn input_texts(&self) -> Vec<(String, String)> {
        match &self.input {
            None => Vec::new(),
            Some(Input::Text(t)) => vec![("user".into(), t.clone())],
            Some(Input::Items(items)) => items
                .iter()
                .map(|item| {
                    let role = item.get("role").and_then(Value::as_str).unwrap_or("user").to_string();
                    let mut text = String::new();
                    each_text(item, &mut |t| text.push_str(t));
                    (role, text)
                })
                .collect(),
        }
    }
}

/// Every text an input item carries (message text, call arguments, outputs), in order.
pub fn each_text(item: &Value, f: &mut impl FnMut(&str)) {
    for key in ["name", "arguments"] {
        if let Some(t) = item.get(key).and_then(Value::as_str) {
            f(t);
        }
    }
    match item.get("content").or_else(|| item.get("output")) {
        Some(Value::String(t)) => f(t),
        Some(Value::Array(parts)) => {
            for p in parts {
                for key in ["text", "refusal"] {
                    if let Some(t) = p.get(key).and_then(Value::as_str) {
                        f(t);
                    }
                }
            }
        }
        _ => {}
    }
}

fn item_bound(item: &Value, bound: &mut PromptBound) {
    bound.message();
    let kind = item.get("type").and_then(Value::as_str).unwrap_or("message");
    match kind {
        "message" => {}
        "function_call" | "function_call_output" | "custom_tool_call" | "custom_tool_call_output" => {
            for key in ["call_id", "name", "arguments", "input"] {
                bound.text(item.get(key).and_then(Value::as_str).unwrap_or(""));
            }
            match item.get("output") {
                Some(Value::String(t)) => bound.text(t),
                Some(Value::Array(parts)) => parts.iter().for_each(|p| part_bound(p, bound)),
                Some(other) => bound.json(other),
                None => {}
            }
            return;
        }
        // Reasoning items (encrypted), item references, and anything else: rendered by the
        // provider from state Quota cannot see.
        _ => return bound.unmeasurable(),
    }
    match item.get("content") {
        Some(Value::String(t)) => bound.text(t),
        Some(Value::Array(parts)) => parts.iter().for_each(|p| part_bound(p, bound)),
        None | Some(Value::Null) => {}
        Some(_) => bound.unmeasurable(),
    }
}

fn part_bound(part: &Value, bound: &mut PromptBound) {
    let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "input_text" | "output_text" | "text" | "summary_text" => {
            bound.text(part.get("text").and_then(Value::as_str).unwrap_or(""))
        }
        "refusal" => bound.text(part.get("refusal").and_then(Value::as_str).unwrap_or("")),
        "input_image" => match part.get("image_url").and_then(Value::as_str) {
            Some(url) if url.starts_with("data:") => bound.image(),
            _ => bound.unmeasurable(),
        },
        // Files (PDF pages become images and text), audio, and unknown parts.
        _ => bound.unmeasurable(),
    }
}

/// The upstream body: the forwarded fields as written, the upstream model id, and `stream`
/// (Responses streams always carry usage in `response.completed`).
pub fn forward_body(raw: &[u8], model: &Model, request: &ResponsesRequest) -> Result<Vec<u8>, String> {
    let tail: &[u8] = if request.stream() { b",\"stream\":true" } else { b"" };
    if !model.reasoning {
        return crate::json::forward_fields(raw, Some(&model.upstream_id), FORWARDED_FIELDS, tail);
    }
    let allowed: Vec<&str> =
        FORWARDED_FIELDS.iter().copied().filter(|f| !REASONING_REFUSED_FIELDS.contains(f)).collect();
    crate::json::forward_fields(raw, Some(&model.upstream_id), &allowed, tail)
}

/// A `response` object's `usage` (SPEC §3.7): `input_tokens` includes the cached ones;
/// `output_tokens` includes reasoning tokens (both billed as output).
#[derive(Debug, Deserialize, Clone, Copy, Default)]
pub struct ResponsesUsageWire {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    pub input_tokens_details: Option<InputDetails>,
}

#[derive(Debug, Deserialize, Clone, Copy, Default)]
pub struct InputDetails {
    pub cached_tokens: Option<u64>,
}

impl ResponsesUsageWire {
    pub fn to_usage(self) -> Usage {
        let cached = self.input_tokens_details.and_then(|d| d.cached_tokens).unwrap_or(0).min(self.input_tokens);
        Usage {
            input_tokens: self.input_tokens - cached,
            cached_tokens: cached,
            output_tokens: self.output_tokens,
            ..Default::default()
        }
    }
}

/// The parts of a `response` object Quota reads.
#[derive(Debug, Deserialize)]
pub struct ResponsePeek {
    pub usage: Option<ResponsesUsageWire>,
    #[serde(default)]
    pub output: Vec<Value>,
}

impl ResponsePeek {
    /// Output tokens counted from the output items, for a response without usage.
    pub fn counted_output(&self) -> u64 {
        let mut n = 0;
        for item in &self.output {
            each_text(item, &mut |t| n += quota_core::tokens::count_tokens(t));
        }
        n
    }
}

/// Usage of a complete `response` body: the provider's report, else counted.
pub fn usage_of_response(body: &[u8], prompt_estimate: u64) -> Result<Usage, UpstreamError> {
    let peek: ResponsePeek = serde_json::from_slice(body)
        .map_err(|e| UpstreamError::Transport(format!("the provider sent an unreadable body: {e}")))?;
    Ok(match peek.usage {
        Some(u) => u.to_usage(),
        None => Usage { input_tokens: prompt_estimate, output_tokens: peek.counted_output(), ..Default::default() },
    })
}

/// One streamed event, as far as Quota reads it.
#[derive(Debug, Deserialize)]
struct EventPeek {
    #[serde(rename = "type")]
    kind: Option<String>,
    delta: Option<Value>,
    response: Option<ResponsePeek>,
    message: Option<String>,
    error: Option<Value>,
}

/// Forwards the Responses event stream as it arrives: text and argument deltas counted, the
/// final `response.completed` (or `response.incomplete`, which is billed too) held back in the
/// meter with its usage, `error` and `response.failed` mapped to a stream failure.
#[derive(Default)]
pub struct ResponsesEvents;

impl EventTranslator for ResponsesEvents {
    fn event(&mut self, event: Bytes, meter: &Meter) -> Result<Option<Bytes>, UpstreamError> {
        let (name, data) = parse_event(&event);
        let name = name.map(str::to_string);
        let Ok(peek) = serde_json::from_str::<EventPeek>(data.trim()) else {
            return Ok(Some(event));
        };
        let kind = peek.kind.as_deref().or(name.as_deref()).unwrap_or("");
        match kind {
            "response.completed" | "response.incomplete" => {
                if let Some(u) = peek.response.as_ref().and_then(|r| r.usage) {
                    meter.report_usage(u.to_usage());
                }
                meter.mark_finished();
                Ok(meter.hold_final_event(event))
            }
            "error" | "response.failed" => {
                let message = peek
                    .message
                    .or_else(|| peek.error.as_ref().and_then(|e| e.get("message")?.as_str().map(str::to_string)))
                    .unwrap_or_else(|| "the provider reported a failed response".into());
                Err(UpstreamError::Status { status: 502, message: scrub_credentials(&message, &[]) })
            }
            k if k.ends_with(".delta") => {
                if let Some(Value::String(d)) = &peek.delta {
                    meter.count_output(d);
                }
                Ok(Some(event))
            }
            _ => Ok(Some(event)),
        }
    }
}

/// The held-back `response.completed` event with `quota` added to its `response` object.
pub fn completed_with_quota(held: &[u8], quota: &Value) -> Option<Bytes> {
    let (name, data) = parse_event(held);
    let mut v: Value = serde_json::from_str(data.trim()).ok()?;
    v.get_mut("response")?.as_object_mut()?.insert("quota".into(), quota.clone());
    let name = name.unwrap_or("response.completed").to_string();
    Some(crate::sse::frame(Some(&name), v.to_string().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use quota_core::Catalog;

    #[test]
    fn server_side_tools_are_refused_by_name() {
        let body =
            br#"{"model":"gpt-4o","input":"x","tools":[{"type":"function","name":"f"},{"type":"web_search_preview"}]}"#;
        let err = ResponsesRequest::parse(body).unwrap_err();
        assert!(err.contains("tools[1]") && err.contains("web_search_preview"), "{err}");
        assert!(ResponsesRequest::parse(br#"{"model":"gpt-4o","input":"x","background":true}"#).is_err());
        assert!(ResponsesRequest::parse(br#"{"model":"gpt-4o"}"#).is_err());
        assert!(ResponsesRequest::parse(br#"{"model":"gpt-4o","input":"x","tools":[{"type":"custom","name":"c"}]}"#)
            .is_ok());
    }

    #[test]
    fn state_the_provider_keeps_makes_the_prompt_unmeasurable() {
        let m = Catalog::builtin().get("gpt-4o").unwrap().clone();
        let small = ResponsesRequest::parse(br#"{"model":"gpt-4o","input":"hello"}"#).unwrap();
        assert!(small.prompt_bound().tokens_max(&m) < 100);
        for body in [
            r#"{"model":"gpt-4o","input":"hello","previous_response_id":"resp_1"}"#,
            r#"{"model":"gpt-4o","input":[{"type":"item_reference","id":"msg_1"}]}"#,
            r#"{"model":"gpt-4o","input":[{"role":"user","content":[{"type":"input_image","image_url":"https://x/y.png"}]}]}"#,
            r#"{"model":"gpt-4o","input":[{"role":"user","content":[{"type":"input_file","file_id":"file_1"}]}]}"#,
        ] {
            let req = ResponsesRequest::parse(body.as_bytes()).unwrap();
            assert_eq!(req.prompt_bound().tokens_max(&m), m.context_window, "{body}");
        }
        let inline = ResponsesRequest::parse(
            br#"{"model":"gpt-4o","input":[{"role":"user","content":[{"type":"input_image","image_url":"data:image/png;base64,AA"}]}]}"#,
        )
        .unwrap();
        assert!(inline.prompt_bound().tokens_max(&m) >= m.image_part_tokens_max);
    }

    #[test]
    fn usage_separates_cached_input_and_counts_reasoning_as_output() {
        let body = br#"{"usage":{"input_tokens":100,"input_tokens_details":{"cached_tokens":40},"output_tokens":30,"output_tokens_details":{"reasoning_tokens":20},"total_tokens":130}}"#;
        let u = usage_of_response(body, 0).unwrap();
        assert_eq!((u.input_tokens, u.cached_tokens, u.output_tokens), (60, 40, 30));
    }

    #[test]
    fn reasoning_models_lose_sampling_parameters() {
        let raw = br#"{"model":"gpt-5","input":"x","temperature":0.2,"top_p":0.5,"reasoning":{"effort":"low"},"service_tier":"priority"}"#;
        let catalog = Catalog::builtin();
        let req = ResponsesRequest::parse(raw).unwrap();
        let v: Value =
            serde_json::from_slice(&forward_body(raw, catalog.get("gpt-5").unwrap(), &req).unwrap()).unwrap();
        assert!(v.get("temperature").is_none() && v.get("top_p").is_none() && v.get("service_tier").is_none());
        assert_eq!(v["reasoning"]["effort"], "low");
        let v: Value =
            serde_json::from_slice(&forward_body(raw, catalog.get("gpt-4o").unwrap(), &req).unwrap()).unwrap();
        assert_eq!(v["temperature"], 0.2);
    }

    #[test]
    fn the_completed_event_is_held_back_with_its_usage_and_takes_quota() {
        let meter = Meter::new(0);
        let mut t = ResponsesEvents;
        let delta = Bytes::from_static(b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hello there\"}\n\n");
        assert!(t.event(delta, &meter).unwrap().is_some());
        let done = Bytes::from_static(b"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"usage\":{\"input_tokens\":5,\"output_tokens\":2}}}\n\n");
        assert!(t.event(done, &meter).unwrap().is_none());
        assert_eq!(meter.usage().output_tokens, 2);
        let out =
            completed_with_quota(&meter.take_final_event().unwrap(), &serde_json::json!({"credits_used": 7})).unwrap();
        let (name, data) = parse_event(&out);
        assert_eq!(name, Some("response.completed"));
        let v: Value = serde_json::from_str(&data).unwrap();
        assert_eq!(v["response"]["quota"]["credits_used"], 7);
        assert_eq!(v["response"]["id"], "r");
        let failed = Bytes::from_static(b"event: error\ndata: {\"type\":\"error\",\"message\":\"boom\"}\n\n");
        assert!(matches!(t.event(failed, &meter), Err(UpstreamError::Status { status: 502, .. })));
    }
}

//! OpenAI Chat Completions ⇄ Anthropic Messages, for `anthropic/…` models on
//! `/v1/chat/completions`: the request (system prompt, turns, images, tools and tool results,
//! stop, sampling, max tokens), the answer (text, tool calls, finish reason, usage), and the
//! stream, translated one upstream event at a time.

use super::wire::{EventPeek, MessagePeek, UsageWire};
use crate::openai::{image_url, openai_usage, parse_data_url, ChatRequest, Content, Message, Stop};
use crate::sse::{frame, parse_event, EventTranslator};
use crate::{scrub_credentials, Meter, UpstreamError};
use bytes::Bytes;
use quota_core::{Model, Usage};
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// The Anthropic Messages body for an OpenAI-shaped request. Errors name what cannot be
/// expressed (a 400 for the client).
pub fn request_from_openai(req: &ChatRequest, model: &Model) -> Result<Value, String> {
    if req.choices() > 1 {
        return Err("`n` greater than 1 is not supported by Anthropic models".into());
    }
    let mut system: Vec<String> = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    for (i, m) in req.messages.iter().enumerate() {
        match m.role.as_str() {
            "system" | "developer" => system.push(m.content.as_ref().map(Content::text).unwrap_or_default()),
            "user" => messages.push(json!({"role": "user", "content": user_content(m, i)?})),
            "assistant" => {
                if let Some(content) = assistant_content(m, i)? {
                    messages.push(json!({"role": "assistant", "content": content}));
                }
            }
            "tool" => {
                let id = m
                    .tool_call_id
                    .as_deref()
                    .ok_or_else(|| format!("messages[{i}].tool_call_id is required for tool messages"))?;
                let block = json!({"type": "tool_result", "tool_use_id": id,
                    "content": m.content.as_ref().map(Content::text).unwrap_or_default()});
                // Results of parallel calls go together in one user turn, as Anthropic requires.
                match messages.last_mut() {
                    Some(last) if is_tool_result_turn(last) => {
                        if let Some(blocks) = last["content"].as_array_mut() {
                            blocks.push(block);
                        }
                    }
                    _ => messages.push(json!({"role": "user", "content": [block]})),
                }
            }
            other => return Err(format!("messages[{i}]: `{other}` messages cannot be sent to Anthropic models")),
        }
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(model.upstream_id));
    // Anthropic requires max_tokens: without one, the model's maximum (what was reserved).
    body.insert("max_tokens".into(), json!(req.max_output().unwrap_or(model.max_output_tokens)));
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    body.insert("messages".into(), Value::Array(messages));
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.top_p {
        body.insert("top_p".into(), json!(p));
    }
    match &req.stop {
        Some(Stop::One(s)) => {
            body.insert("stop_sequences".into(), json!([s]));
        }
        Some(Stop::Many(v)) if !v.is_empty() => {
            body.insert("stop_sequences".into(), json!(v));
        }
        _ => {}
    }
    if let Some(user) = &req.user {
        body.insert("metadata".into(), json!({"user_id": user}));
    }
    if let Some(tools) = req.tools.as_ref().filter(|t| !t.is_empty()) {
        let mut out = Vec::with_capacity(tools.len());
        for (i, t) in tools.iter().enumerate() {
            let f = t
                .function
                .as_ref()
                .filter(|_| t.kind == "function")
                .ok_or_else(|| format!("tools[{i}]: only `function` tools can be sent to Anthropic models"))?;
            let mut tool = json!({"name": f.name,
                "input_schema": f.parameters.clone().unwrap_or_else(|| json!({"type": "object", "properties": {}}))});
            if let Some(d) = &f.description {
                tool["description"] = json!(d);
            }
            out.push(tool);
        }
        body.insert("tools".into(), Value::Array(out));
        let mut choice = match &req.tool_choice {
            None => None,
            Some(Value::String(s)) if s == "auto" => Some(json!({"type": "auto"})),
            Some(Value::String(s)) if s == "none" => Some(json!({"type": "none"})),
            Some(Value::String(s)) if s == "required" => Some(json!({"type": "any"})),
            Some(v) => match v.pointer("/function/name").and_then(Value::as_str) {
                Some(name) => Some(json!({"type": "tool", "name": name})),
                None => return Err("`tool_choice` must be auto, none, required or a named function".into()),
            },
        };
        if req.parallel_tool_calls == Some(false) {
            let c = choice.get_or_insert_with(|| json!({"type": "auto"}));
            if c["type"] != "none" {
                c["disable_parallel_tool_use"] = json!(true);
            }
        }
        if let Some(c) = choice {
            body.insert("tool_choice".into(), c);
        }
    }
    if req.stream() {
        body.insert("stream".into(), json!(true));
    }
    Ok(Value::Object(body))
}

fn is_tool_result_turn(message: &Value) -> bool {
    message["role"] == "user"
        && message["content"].as_array().is_some_and(|b| b.iter().all(|b| b["type"] == "tool_result"))
}

fn user_content(m: &Message, i: usize) -> Result<Value, String> {
    match &m.content {
        None => Ok(json!("")),
        Some(Content::Text(t)) => Ok(json!(t)),
        Some(Content::Parts(parts)) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for (j, p) in parts.iter().enumerate() {
                match p.kind.as_str() {
                    "text" => blocks.push(json!({"type": "text", "text": p.text.as_deref().unwrap_or("")})),
                    "image_url" => {
                        let url = image_url(p.image_url.as_ref())
                            .ok_or_else(|| format!("messages[{i}].content[{j}].image_url.url is required"))?;
                        let source = match parse_data_url(url) {
                            Some((media_type, data)) => {
                                json!({"type": "base64", "media_type": media_type, "data": data})
                            }
                            None => json!({"type": "url", "url": url}),
                        };
                        blocks.push(json!({"type": "image", "source": source}));
                    }
                    other => {
                        return Err(format!(
                            "messages[{i}].content[{j}]: `{other}` parts are not supported by Anthropic models"
                        ))
                    }
                }
            }
            Ok(Value::Array(blocks))
        }
    }
}

fn assistant_content(m: &Message, i: usize) -> Result<Option<Value>, String> {
    let text = m.content.as_ref().map(Content::text).unwrap_or_default();
    let calls = m.tool_calls.as_deref().unwrap_or(&[]);
    if calls.is_empty() {
        return Ok((!text.is_empty()).then(|| json!(text)));
    }
    let mut blocks = Vec::with_capacity(calls.len() + 1);
    if !text.is_empty() {
        blocks.push(json!({"type": "text", "text": text}));
    }
    for (j, c) in calls.iter().enumerate() {
        let f = c.function.as_ref().ok_or_else(|| format!("messages[{i}].tool_calls[{j}].function is required"))?;
        let args = f.arguments.as_deref().filter(|a| !a.trim().is_empty()).unwrap_or("{}");
        let input: Value = serde_json::from_str(args)
            .map_err(|_| format!("messages[{i}].tool_calls[{j}].function.arguments is not valid JSON"))?;
        blocks.push(json!({"type": "tool_use", "id": c.id.as_deref().unwrap_or_default(),
            "name": f.name.as_deref().unwrap_or_default(), "input": input}));
    }
    Ok(Some(Value::Array(blocks)))
}

/// OpenAI's finish reason for Anthropic's stop reason.
pub fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens") | Some("model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        _ => "stop",
    }
}

/// A `chat.completion` body for an Anthropic `message`, and its metered usage.
pub fn completion_from_message(
    body: &[u8],
    model_id: &str,
    created: i64,
    prompt_estimate: u64,
) -> Result<(Bytes, Usage), UpstreamError> {
    let msg: MessagePeek = serde_json::from_slice(body)
        .map_err(|e| UpstreamError::Transport(format!("the provider sent an unreadable body: {e}")))?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    let mut counted = 0;
    for block in &msg.content {
        match block.kind.as_str() {
            "text" => text.push_str(block.text.as_deref().unwrap_or("")),
            "tool_use" => {
                let args = block.input.as_ref().map(Value::to_string).unwrap_or_else(|| "{}".into());
                counted += quota_core::tokens::count_tokens(&args);
                tool_calls.push(json!({"id": block.id, "type": "function",
                    "function": {"name": block.name, "arguments": args}}));
            }
            _ => {}
        }
        for t in [&block.text, &block.thinking].into_iter().flatten() {
            counted += quota_core::tokens::count_tokens(t);
        }
    }
    let usage = match msg.usage {
        Some(u) => u.to_usage(),
        None => Usage { input_tokens: prompt_estimate, output_tokens: counted, ..Default::default() },
    };
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { json!(text) }, "refusal": null});
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    let out = json!({
        "id": msg.id.unwrap_or_default(), "object": "chat.completion", "created": created, "model": model_id,
        "choices": [{"index": 0, "message": message, "logprobs": null,
            "finish_reason": finish_reason(msg.stop_reason.as_deref())}],
        "usage": openai_usage(&usage, None),
    });
    Ok((Bytes::from(out.to_string()), usage))
}

/// What both stream readers (native and translated) record from Anthropic's events: the
/// prompt side from `message_start`, output as it is generated, the final counts from
/// `message_delta`, the end from `message_stop`; an `error` event fails the stream.
#[derive(Default)]
pub struct EventMeter {
    usage: UsageWire,
}

impl EventMeter {
    pub fn observe(&mut self, ev: &EventPeek, meter: &Meter) -> Result<(), UpstreamError> {
        match ev.kind.as_str() {
            "message_start" => {
                if let Some(u) = ev.message.as_ref().and_then(|m| m.usage) {
                    self.usage = u;
                    meter.report_prompt(u.to_usage());
                }
            }
            "content_block_start" => {
                if let Some(name) = ev.content_block.as_ref().and_then(|b| b.name.as_deref()) {
                    meter.count_output(name);
                }
            }
            "content_block_delta" => {
                if let Some(t) = ev.delta.as_ref().and_then(|d| d.generated()) {
                    meter.count_output(t);
                }
            }
            "message_delta" => {
                if let Some(u) = ev.usage {
                    self.usage = self.usage.updated(u);
                    meter.report_usage(self.usage.to_usage());
                }
            }
            "message_stop" => meter.mark_finished(),
            "error" => return Err(stream_error(ev)),
            _ => {}
        }
        Ok(())
    }
}

/// An in-stream `error` event as an upstream failure (`overloaded_error` is Anthropic's 529).
fn stream_error(ev: &EventPeek) -> UpstreamError {
    let kind = ev.error.as_ref().and_then(|e| e.kind.as_deref()).unwrap_or("api_error");
    let message = ev.error.as_ref().and_then(|e| e.message.as_deref()).unwrap_or("stream error");
    let message = scrub_credentials(message, &[]);
    match kind {
        "rate_limit_error" => UpstreamError::RateLimited(message),
        "overloaded_error" => UpstreamError::Status { status: 529, message },
        _ => UpstreamError::Status { status: 500, message },
    }
}

/// Parse one SSE event's data as an Anthropic stream event (`None` for empty or foreign data).
pub fn peek_event(event: &[u8]) -> Option<EventPeek> {
    let (_, data) = parse_event(event);
    serde_json::from_str(data.trim()).ok()
}

/// Translates Anthropic's stream into `chat.completion.chunk`s, event by event.
pub struct ChunkTranslator {
    id: String,
    model: String,
    created: i64,
    metering: EventMeter,
    /// Anthropic content-block index → OpenAI tool-call index.
    tool_index: HashMap<u64, u64>,
}

impl ChunkTranslator {
    /// `model` is the id the client asked for, echoed in every chunk.
    pub fn new(model: &str, created: i64, fallback_id: String) -> ChunkTranslator {
        ChunkTranslator {
            id: fallback_id,
            model: model.to_string(),
            created,
            metering: EventMeter::default(),
            tool_index: HashMap::new(),
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Bytes {
        let c = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        frame(None, c.to_string().as_bytes())
    }
}

impl EventTranslator for ChunkTranslator {
    fn event(&mut self, event: Bytes, meter: &Meter) -> Result<Option<Bytes>, UpstreamError> {
        let Some(ev) = peek_event(&event) else { return Ok(None) };
        self.metering.observe(&ev, meter)?;
        let out = match ev.kind.as_str() {
            "message_start" => {
                if let Some(id) = ev.message.as_ref().and_then(|m| m.id.clone()) {
                    self.id = id;
                }
                meter.set_identity(&self.id, self.created, &self.model);
                Some(self.chunk(json!({"role": "assistant", "content": ""}), None))
            }
            "content_block_start" => match ev.content_block.as_ref() {
                Some(b) if b.kind == "tool_use" => {
                    let index = self.tool_index.len() as u64;
                    self.tool_index.insert(ev.index.unwrap_or(0), index);
                    Some(self.chunk(
                        json!({"tool_calls": [{"index": index, "id": b.id, "type": "function",
                            "function": {"name": b.name, "arguments": ""}}]}),
                        None,
                    ))
                }
                Some(b) if b.kind == "text" && b.text.as_deref().is_some_and(|t| !t.is_empty()) => {
                    Some(self.chunk(json!({"content": b.text}), None))
                }
                _ => None,
            },
            "content_block_delta" => match ev.delta.as_ref() {
                Some(d) if d.kind.as_deref() == Some("text_delta") => {
                    Some(self.chunk(json!({"content": d.text}), None))
                }
                Some(d) if d.kind.as_deref() == Some("input_json_delta") => {
                    let index = self.tool_index.get(&ev.index.unwrap_or(0)).copied().unwrap_or(0);
                    Some(self.chunk(
                        json!({"tool_calls": [{"index": index, "function": {"arguments": d.partial_json}}]}),
                        None,
                    ))
                }
                _ => None,
            },
            "message_delta" => {
                let stop = ev.delta.as_ref().and_then(|d| d.stop_reason.as_deref());
                Some(self.chunk(json!({}), Some(finish_reason(stop))))
            }
            _ => None,
        };
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quota_core::Catalog;

    fn translate(body: Value) -> Result<Value, String> {
        let raw = serde_json::to_vec(&body).unwrap();
        let req = ChatRequest::parse(&raw).unwrap();
        let catalog = Catalog::builtin();
        request_from_openai(&req, catalog.get("anthropic/claude-sonnet-4.5").unwrap())
    }

    #[test]
    fn a_tool_conversation_translates_to_anthropic_blocks() {
        let got = translate(json!({
            "model": "anthropic/claude-sonnet-4.5",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}}]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                {"role": "tool", "tool_call_id": "call_2", "content": "24C"}
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": "required", "parallel_tool_calls": false,
            "stop": "END", "temperature": 0.5, "max_tokens": 100, "user": "u1"
        }))
        .unwrap();
        assert_eq!(
            got,
            json!({
                "model": "claude-sonnet-4-5", "max_tokens": 100, "system": "Be brief.",
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}}]},
                    {"role": "assistant", "content": [
                        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                        {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Rome"}}]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                        {"type": "tool_result", "tool_use_id": "call_2", "content": "24C"}]}
                ],
                "tools": [{"name": "get_weather", "description": "Weather",
                    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
                "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
                "stop_sequences": ["END"], "temperature": 0.5, "metadata": {"user_id": "u1"}
            })
        );
    }

    #[test]
    fn max_tokens_defaults_to_the_models_maximum() {
        let got = translate(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})).unwrap();
        assert_eq!(got["max_tokens"], 64_000);
        assert_eq!(got["messages"], json!([{"role": "user", "content": "hi"}]));
        assert!(got.get("system").is_none());
    }

    #[test]
    fn what_anthropic_cannot_express_is_refused() {
        assert!(translate(json!({"model": "m", "n": 2, "messages": [{"role": "user", "content": "hi"}]}))
            .unwrap_err()
            .contains("`n`"));
        let bad_args = json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{nope"}}]}]});
        assert!(translate(bad_args).unwrap_err().contains("not valid JSON"));
    }

    #[test]
    fn a_message_becomes_a_chat_completion_with_usage_mapped() {
        let body = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
            "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"}, {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 10, "cache_creation_input_tokens": 20, "cache_read_input_tokens": 30, "output_tokens": 40}});
        let (out, usage) =
            completion_from_message(body.to_string().as_bytes(), "anthropic/claude-sonnet-4.5", 7, 0).unwrap();
        assert_eq!(
            usage,
            Usage {
                input_tokens: 10,
                cached_tokens: 30,
                cache_write_tokens: 20,
                output_tokens: 40,
                ..Default::default()
            }
        );
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "Let me check.");
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"], "{\"city\":\"Paris\"}");
        assert_eq!(v["usage"]["prompt_tokens"], 60);
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 30);
        assert_eq!(v["model"], "anthropic/claude-sonnet-4.5");
    }

    #[test]
    fn a_stream_translates_event_by_event() {
        let meter = Meter::new(5);
        let mut t = ChunkTranslator::new("anthropic/claude-haiku-4.5", 1, "x".into());
        let events = [
            r#"{"type":"message_start","message":{"id":"msg_9","model":"claude-haiku-4-5","content":[],"usage":{"input_tokens":11,"cache_read_input_tokens":100,"output_tokens":1}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"f","input":{}}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\":1}"}}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":17}}"#,
            r#"{"type":"message_stop"}"#,
        ];
        let mut out = Vec::new();
        for e in events {
            let ev = Bytes::from(format!("event: x\ndata: {e}\n\n"));
            if let Some(b) = t.event(ev, &meter).unwrap() {
                out.push(serde_json::from_str::<Value>(parse_event(&b).1.as_str()).unwrap());
            }
        }
        assert_eq!(out.len(), 5);
        assert_eq!(out[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(out[1]["choices"][0]["delta"]["content"], "Hi");
        assert_eq!(out[2]["choices"][0]["delta"]["tool_calls"][0]["id"], "toolu_1");
        assert_eq!(out[3]["choices"][0]["delta"]["tool_calls"][0]["index"], 0);
        assert_eq!(out[4]["choices"][0]["finish_reason"], "tool_calls");
        assert!(out.iter().all(|c| c["id"] == "msg_9" && c["model"] == "anthropic/claude-haiku-4.5"));
        assert!(meter.finished());
        assert_eq!(
            meter.usage(),
            Usage {
                input_tokens: 11,
                cached_tokens: 100,
                cache_write_tokens: 0,
                output_tokens: 17,
                ..Default::default()
            }
        );
    }

    #[test]
    fn an_overloaded_event_fails_the_stream() {
        let meter = Meter::new(5);
        let mut t = ChunkTranslator::new("m", 1, "x".into());
        let ev = Bytes::from_static(
            b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
        );
        assert_eq!(t.event(ev, &meter), Err(UpstreamError::Status { status: 529, message: "Overloaded".into() }));
    }
}

//! The sandbox in the Anthropic Messages shape: `message` bodies and the event stream
//! (`message_start` … `message_stop`) that the official SDK accepts, tool use included.

use super::synth::{plan, OfferedTool, Plan, PlannedOutput};
use super::{
    disconnected_before_answer, fault_error, response_id, synthetic_stream, Sandbox, TOKENS_PER_CONVERSATION,
    TOKENS_PER_MESSAGE,
};
use crate::anthropic::MessagesRequest;
use crate::sse::frame;
use crate::{ChatResponse, Fault, Meter, NativeCall, NativeProvider, UpstreamError};
use bytes::Bytes;
use quota_core::tokens::{count_tokens, split_tokens};
use quota_core::Usage;
use serde_json::{json, Value};
use std::sync::Arc;

/// The sandbox's exact prompt token count for a Messages request.
pub fn prompt_tokens(req: &MessagesRequest) -> u64 {
    let mut n = TOKENS_PER_CONVERSATION;
    if let Some(system) = &req.system {
        n += TOKENS_PER_MESSAGE;
        system.for_each_text(|t| n += count_tokens(t));
    }
    for m in &req.messages {
        n += TOKENS_PER_MESSAGE;
        m.content.for_each_text(|t| n += count_tokens(t));
    }
    for t in req.tools.iter().flatten() {
        n += count_tokens(&t.name) + t.description.as_deref().map(count_tokens).unwrap_or(0);
        n += t.input_schema.as_ref().map(|s| count_tokens(&s.to_string())).unwrap_or(0);
    }
    n
}

/// The tool to call: tools offered, `tool_choice` not `none`, and the last turn is not already
/// tool results.
fn tool_to_call(req: &MessagesRequest) -> Option<OfferedTool<'_>> {
    let tools = req.tools.as_ref()?;
    if req.messages.last().is_some_and(|m| m.role == "user" && m.content.has_tool_result()) {
        return None;
    }
    let choice = req.tool_choice.as_ref();
    let kind = choice.and_then(|c| c.get("type")).and_then(Value::as_str);
    if kind == Some("none") {
        return None;
    }
    let named = choice.filter(|_| kind == Some("tool")).and_then(|c| c.get("name")).and_then(Value::as_str);
    let custom = tools.iter().filter(|t| t.input_schema.is_some() || t.kind.is_none());
    let chosen = match named {
        Some(name) => custom.clone().find(|t| t.name == name).or_else(|| custom.clone().next()),
        None => custom.clone().next(),
    }?;
    Some(OfferedTool { name: &chosen.name, parameters: chosen.input_schema.as_ref() })
}

fn plan_for(req: &MessagesRequest) -> Plan {
    let mut seed = String::new();
    if let Some(s) = &req.system {
        seed.push_str(&s.text());
        seed.push('\u{2}');
    }
    for m in &req.messages {
        seed.push_str(&m.role);
        seed.push('\u{1}');
        seed.push_str(&m.content.text());
        seed.push('\u{2}');
    }
    let last_user = req
        .messages
        .iter()
        .rev()
        .find(|m| m.role == "user" && !m.content.has_tool_result())
        .map(|m| m.content.text())
        .unwrap_or_default();
    plan(&seed, &last_user, tool_to_call(req), Some(req.max_tokens), 1)
}

fn stop_reason(output: &PlannedOutput) -> &'static str {
    match output {
        PlannedOutput::Text { truncated: true, .. } => "max_tokens",
        PlannedOutput::Text { .. } => "end_turn",
        PlannedOutput::ToolCall { .. } => "tool_use",
    }
}

fn tool_use_id(call_id: &str) -> String {
    format!("toolu_{}", call_id.trim_start_matches("call_"))
}

fn content_block(output: &PlannedOutput) -> Value {
    match output {
        PlannedOutput::Text { text, .. } => json!({"type": "text", "text": text}),
        PlannedOutput::ToolCall { id, name, arguments } => {
            let input: Value = serde_json::from_str(arguments).unwrap_or_else(|_| json!({}));
            json!({"type": "tool_use", "id": tool_use_id(id), "name": name, "input": input})
        }
    }
}

fn usage_json(prompt: u64, output: u64) -> Value {
    json!({"input_tokens": prompt, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": output})
}

fn event(value: &Value) -> Bytes {
    let kind = value["type"].as_str().unwrap_or("message");
    frame(Some(kind), value.to_string().as_bytes())
}

/// The events of a streamed answer, each with the text it generates (for the meter).
fn stream_events(id: &str, model: &str, prompt: u64, output: &PlannedOutput) -> Vec<(Bytes, Option<String>)> {
    let mut out = vec![(
        event(&json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant",
            "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": usage_json(prompt, 0)}})),
        None,
    )];
    match output {
        PlannedOutput::Text { text, .. } => {
            out.push((
                event(
                    &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                ),
                None,
            ));
            out.push((event(&json!({"type": "ping"})), None));
            for piece in split_tokens(text) {
                let delta =
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}});
                out.push((event(&delta), Some(piece.to_string())));
            }
        }
        PlannedOutput::ToolCall { id: call_id, name, arguments } => {
            let start = json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "tool_use", "id": tool_use_id(call_id), "name": name, "input": {}}});
            out.push((event(&start), Some(name.clone())));
            out.push((event(&json!({"type": "ping"})), None));
            for piece in split_tokens(arguments) {
                let delta = json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": piece}});
                out.push((event(&delta), Some(piece.to_string())));
            }
        }
    }
    out.push((event(&json!({"type": "content_block_stop", "index": 0})), None));
    let delta = json!({"type": "message_delta", "delta": {"stop_reason": stop_reason(output), "stop_sequence": null},
        "usage": {"output_tokens": output.output_tokens()}});
    out.push((event(&delta), None));
    out.push((event(&json!({"type": "message_stop"})), None));
    out
}

#[async_trait::async_trait]
impl NativeProvider<MessagesRequest> for Sandbox {
    fn prompt_tokens_max(&self, call: &NativeCall<'_, MessagesRequest>) -> u64 {
        prompt_tokens(call.request)
    }

    async fn call(&self, call: NativeCall<'_, MessagesRequest>) -> Result<ChatResponse, UpstreamError> {
        if let Some(err) = call.fault.and_then(fault_error) {
            return Err(err);
        }
        let req = call.request;
        let prompt = prompt_tokens(req);
        let plan = plan_for(req);
        let output = &plan.outputs[0];
        let output_tokens = output.output_tokens();
        let usage = Usage { input_tokens: prompt, output_tokens, ..Default::default() };
        let id = response_id("msg_sbx", call.raw);
        if !req.stream() {
            if call.fault == Some(Fault::DisconnectMidStream) {
                return Err(disconnected_before_answer());
            }
            let body = json!({"id": id, "type": "message", "role": "assistant", "model": req.model,
                "content": [content_block(output)], "stop_reason": stop_reason(output), "stop_sequence": null,
                "usage": usage_json(prompt, output_tokens)});
            return Ok(ChatResponse::Complete { body: Bytes::from(body.to_string()), usage });
        }
        let meter = Arc::new(Meter::new(prompt));
        let events = stream_events(&id, &req.model, prompt, output);
        let events = synthetic_stream(events, None, meter.clone(), usage, call.fault);
        Ok(ChatResponse::Stream { events, meter })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use quota_core::Catalog;

    fn run(body: Value) -> (ChatResponse, u64) {
        let raw = Bytes::from(body.to_string());
        let req = MessagesRequest::parse(&raw).unwrap();
        let catalog = Catalog::builtin();
        let model = catalog.get("anthropic/claude-haiku-4.5").unwrap().clone();
        let call = NativeCall { model: &model, request: &req, raw: &raw, version: None, beta: None, fault: None };
        let max = NativeProvider::<MessagesRequest>::prompt_tokens_max(&Sandbox, &call);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        (rt.block_on(Sandbox.call(call)).unwrap(), max)
    }

    #[test]
    fn a_message_respects_max_tokens_and_reports_the_reserved_prompt() {
        let (resp, prompt_max) = run(
            json!({"model": "claude-haiku-4-5", "max_tokens": 5, "system": "Be terse.", "messages": [{"role": "user", "content": "Hello"}]}),
        );
        let ChatResponse::Complete { body, usage } = resp else { panic!("expected a body") };
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["stop_reason"], "max_tokens");
        assert_eq!(v["usage"]["output_tokens"], 5);
        assert_eq!(v["usage"]["input_tokens"], prompt_max);
        assert_eq!(usage, Usage { input_tokens: prompt_max, output_tokens: 5, ..Default::default() });
        // 3 + (4 + "Be terse." 3) + (4 + "Hello" 1)
        assert_eq!(prompt_max, 15);
    }

    #[test]
    fn tools_get_a_tool_use_and_tool_results_get_text() {
        let tools = json!([{"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]);
        let (resp, _) = run(
            json!({"model": "m", "max_tokens": 100, "tools": tools, "messages": [{"role": "user", "content": "Weather?"}]}),
        );
        let ChatResponse::Complete { body, .. } = resp else { panic!() };
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["stop_reason"], "tool_use");
        assert_eq!(v["content"][0]["name"], "get_weather");
        assert!(v["content"][0]["input"]["city"].is_string());
        assert!(v["content"][0]["id"].as_str().unwrap().starts_with("toolu_"));
        let (resp, _) = run(json!({"model": "m", "max_tokens": 100, "tools": tools, "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "x"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"}]}]}));
        let ChatResponse::Complete { body, .. } = resp else { panic!() };
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["stop_reason"], "end_turn");
        assert_eq!(v["content"][0]["type"], "text");
    }

    #[test]
    fn a_stream_has_anthropics_event_sequence() {
        let (resp, _) = run(
            json!({"model": "m", "max_tokens": 4, "stream": true, "messages": [{"role": "user", "content": "Hi"}]}),
        );
        let ChatResponse::Stream { events, meter } = resp else { panic!() };
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let items: Vec<Bytes> = rt.block_on(events.map(|r| r.unwrap()).collect());
        let names: Vec<String> =
            items.iter().map(|e| crate::sse::parse_event(e).0.unwrap_or_default().to_string()).collect();
        assert_eq!(names[..3], ["message_start", "content_block_start", "ping"]);
        assert_eq!(names[names.len() - 3..], ["content_block_stop", "message_delta", "message_stop"]);
        assert_eq!(names.iter().filter(|n| *n == "content_block_delta").count(), 4);
        assert_eq!(meter.usage().output_tokens, 4);
        assert!(meter.finished());
    }
}

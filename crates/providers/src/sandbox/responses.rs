//! The sandbox in the OpenAI Responses shape (SPEC §3.7, §4.4): a `response` object, or the
//! typed event stream (`response.created` … `response.completed`, with sequence numbers) that
//! the official SDK's `responses.create` and `responses.stream` accept. The final
//! `response.completed` is held back in the meter so the gateway can add `quota` to it.

use super::synth::{plan, OfferedTool, PlannedOutput};
use super::{
    disconnected_before_answer, fault_error, now_secs, response_id, synthetic_stream, Sandbox, TOKENS_PER_CONVERSATION,
    TOKENS_PER_MESSAGE,
};
use crate::openai::responses::ResponsesRequest;
use crate::{ChatResponse, Fault, Meter, NativeCall, NativeProvider, UpstreamError};
use bytes::Bytes;
use quota_core::tokens::{count_tokens, split_tokens};
use quota_core::Usage;
use serde_json::{json, Value};
use std::sync::Arc;

/// The sandbox's exact prompt count: framing, instructions, every input text, tool definitions.
pub fn prompt_tokens(req: &ResponsesRequest) -> u64 {
    let mut n = TOKENS_PER_CONVERSATION + req.instructions.as_deref().map(count_tokens).unwrap_or(0);
    for (_, text) in req.input_texts() {
        n += TOKENS_PER_MESSAGE + count_tokens(&text);
    }
    for tool in req.tools.iter().flatten() {
        n += count_tokens(&Value::Object(tool.clone()).to_string());
    }
    n
}

/// The function tool to call, when tools are offered and the last item is not a tool result.
fn tool_to_call(req: &ResponsesRequest) -> Option<OfferedTool<'_>> {
    let tools = req.tools.as_ref()?;
    if matches!(&req.tool_choice, Some(Value::String(s)) if s == "none") {
        return None;
    }
    if let Some(crate::openai::responses::Input::Items(items)) = &req.input {
        let last = items.last().and_then(|i| i.get("type")).and_then(Value::as_str);
        if last == Some("function_call_output") {
            return None;
        }
    }
    let tool = tools.iter().find(|t| t.get("type").and_then(Value::as_str) == Some("function"))?;
    Some(OfferedTool { name: tool.get("name")?.as_str()?, parameters: tool.get("parameters") })
}

/// A `response` object: `status`, `output` and `usage` as given, the request's settings echoed.
fn response_json(id: &str, created: i64, req: &ResponsesRequest, status: &str, output: Value, usage: Value) -> Value {
    json!({
        "id": id, "object": "response", "created_at": created, "status": status, "model": req.model,
        "output": output, "usage": usage, "error": null, "incomplete_details": null,
        "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
        "parallel_tool_calls": true, "previous_response_id": req.previous_response_id,
        "reasoning": {"effort": null, "summary": null}, "store": req.store.unwrap_or(true),
        "temperature": req.temperature.unwrap_or(1.0), "top_p": req.top_p.unwrap_or(1.0),
        "text": req.text.clone().map(Value::Object).unwrap_or_else(|| json!({"format": {"type": "text"}})),
        "tool_choice": req.tool_choice.clone().unwrap_or_else(|| json!("auto")),
        "tools": req.tools.clone().unwrap_or_default(), "truncation": "disabled", "user": null,
        "metadata": req.metadata.clone().unwrap_or_default(),
    })
}

fn usage_json(prompt: u64, output: u64) -> Value {
    json!({"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": prompt + output})
}

/// The output item of a planned answer (`in_progress` items are streamed first, empty).
fn output_item(item_id: &str, output: &PlannedOutput, done: bool) -> Value {
    let status = if done { "completed" } else { "in_progress" };
    match output {
        PlannedOutput::Text { text, .. } => {
            let content =
                if done { json!([{"type": "output_text", "text": text, "annotations": []}]) } else { json!([]) };
            json!({"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content})
        }
        PlannedOutput::ToolCall { id, name, arguments } => json!({
            "type": "function_call", "id": item_id, "call_id": id, "name": name,
            "arguments": if done { arguments.as_str() } else { "" }, "status": status,
        }),
    }
}

/// The events of a streamed answer, numbered, each with the text it carries (for the meter);
/// the last is `response.completed`, returned apart so it can be held back.
fn stream_events(
    id: &str,
    created: i64,
    req: &ResponsesRequest,
    output: &PlannedOutput,
    usage: Value,
) -> (Vec<(Bytes, Option<String>)>, Bytes) {
    let mut seq = 0u64;
    let mut event = |kind: &str, mut data: Value| {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(seq);
        seq += 1;
        crate::sse::frame(Some(kind), data.to_string().as_bytes())
    };
    let item_id = format!("{}_item0", id.replacen("resp_", "msg_", 1));
    let pending = response_json(id, created, req, "in_progress", json!([]), Value::Null);
    let mut out = vec![
        (event("response.created", json!({"response": pending})), None),
        (event("response.in_progress", json!({"response": pending})), None),
        (
            event(
                "response.output_item.added",
                json!({"output_index": 0, "item": output_item(&item_id, output, false)}),
            ),
            None,
        ),
    ];
    match output {
        PlannedOutput::Text { text, .. } => {
            let part = |t: &str| json!({"type": "output_text", "text": t, "annotations": []});
            let at = json!({"item_id": item_id, "output_index": 0, "content_index": 0});
            let with = |mut v: Value, extra: Value| {
                for (k, x) in extra.as_object().into_iter().flatten() {
                    v[k] = x.clone();
                }
                v
            };
            out.push((event("response.content_part.added", with(at.clone(), json!({"part": part("")}))), None));
            for piece in split_tokens(text) {
                let delta = with(at.clone(), json!({"delta": piece, "logprobs": []}));
                out.push((event("response.output_text.delta", delta), Some(piece.to_string())));
            }
            out.push((
                event("response.output_text.done", with(at.clone(), json!({"text": text, "logprobs": []}))),
                None,
            ));
            out.push((event("response.content_part.done", with(at, json!({"part": part(text)}))), None));
        }
        PlannedOutput::ToolCall { name, arguments, .. } => {
            for piece in split_tokens(arguments) {
                let delta = json!({"item_id": item_id, "output_index": 0, "delta": piece});
                out.push((event("response.function_call_arguments.delta", delta), Some(piece.to_string())));
            }
            let done = json!({"item_id": item_id, "output_index": 0, "name": name, "arguments": arguments});
            out.push((event("response.function_call_arguments.done", done), Some(name.clone())));
        }
    }
    let item = output_item(&item_id, output, true);
    out.push((event("response.output_item.done", json!({"output_index": 0, "item": item.clone()})), None));
    let completed = response_json(id, created, req, "completed", json!([item]), usage);
    let completed = event("response.completed", json!({"response": completed}));
    (out, completed)
}

#[async_trait::async_trait]
impl NativeProvider<ResponsesRequest> for Sandbox {
    fn prompt_tokens_max(&self, call: &NativeCall<'_, ResponsesRequest>) -> u64 {
        prompt_tokens(call.request)
    }

    async fn call(&self, call: NativeCall<'_, ResponsesRequest>) -> Result<ChatResponse, UpstreamError> {
        if let Some(err) = call.fault.and_then(fault_error) {
            return Err(err);
        }
        let req = call.request;
        let texts = req.input_texts();
        let seed: String = texts.iter().map(|(role, text)| format!("{role}\u{1}{text}\u{2}")).collect();
        let last_user = texts.iter().rev().find(|(role, _)| role == "user").map(|(_, t)| t.as_str()).unwrap_or("");
        let planned = plan(&seed, last_user, tool_to_call(req), req.max_output_tokens, 1);
        let output = &planned.outputs[0];
        let prompt = prompt_tokens(req);
        let output_tokens = output.output_tokens();
        let usage = Usage { input_tokens: prompt, output_tokens, ..Default::default() };
        let id = response_id("resp_sbx", call.raw);
        let created = now_secs();
        if !req.stream() {
            if call.fault == Some(Fault::DisconnectMidStream) {
                return Err(disconnected_before_answer());
            }
            let item_id = format!("{}_item0", id.replacen("resp_", "msg_", 1));
            let output = json!([output_item(&item_id, output, true)]);
            let body = response_json(&id, created, req, "completed", output, usage_json(prompt, output_tokens));
            return Ok(ChatResponse::Complete { body: Bytes::from(body.to_string()), usage });
        }
        let meter = Arc::new(Meter::new(prompt));
        let (events, completed) = stream_events(&id, created, req, output, usage_json(prompt, output_tokens));
        let events = synthetic_stream(events, Some(completed), meter.clone(), usage, call.fault);
        Ok(ChatResponse::Stream { events, meter })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use quota_core::Catalog;

    fn run(body: Value) -> (ChatResponse, u64, Arc<quota_core::Model>) {
        let raw = Bytes::from(body.to_string());
        let req = ResponsesRequest::parse(&raw).unwrap();
        let catalog = Catalog::builtin();
        let model = catalog.get("gpt-4o-mini").unwrap().clone();
        let call = NativeCall { model: &model, request: &req, raw: &raw, version: None, beta: None, fault: None };
        let max = NativeProvider::<ResponsesRequest>::prompt_tokens_max(&Sandbox, &call);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        (rt.block_on(Sandbox.call(call)).unwrap(), max, model)
    }

    #[test]
    fn a_response_reports_the_reserved_prompt_and_respects_max_output_tokens() {
        let (resp, prompt_max, _) = run(json!({"model": "gpt-4o-mini", "input": "Say hello", "max_output_tokens": 6}));
        let ChatResponse::Complete { body, usage } = resp else { panic!("expected a body") };
        assert_eq!((usage.input_tokens, usage.output_tokens), (prompt_max, 6));
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["object"], "response");
        assert_eq!(v["output"][0]["content"][0]["type"], "output_text");
        assert_eq!(v["usage"]["output_tokens"], 6);
    }

    #[test]
    fn a_stream_numbers_its_events_and_holds_back_the_completed_one() {
        let (resp, _, _) =
            run(json!({"model": "gpt-4o-mini", "input": [{"role": "user", "content": "Hi"}], "stream": true}));
        let ChatResponse::Stream { events, meter } = resp else { panic!("expected a stream") };
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let items: Vec<Bytes> = rt.block_on(events.map(|e| e.unwrap()).collect());
        let kinds: Vec<String> = items.iter().map(|e| crate::sse::parse_event(e).0.unwrap().to_string()).collect();
        assert_eq!(kinds.first().map(String::as_str), Some("response.created"));
        assert!(kinds.iter().any(|k| k == "response.output_text.delta"));
        assert!(!kinds.iter().any(|k| k == "response.completed"));
        let held = meter.take_final_event().expect("the completed event is held back");
        let (name, data) = crate::sse::parse_event(&held);
        assert_eq!(name, Some("response.completed"));
        let v: Value = serde_json::from_str(&data).unwrap();
        assert_eq!(v["sequence_number"], items.len() as u64);
        assert_eq!(v["response"]["usage"]["output_tokens"], meter.usage().output_tokens);
    }

    #[test]
    fn offered_functions_are_called() {
        let (resp, _, _) = run(json!({"model": "gpt-4o-mini", "input": "weather?", "tools": [
            {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]}));
        let ChatResponse::Complete { body, .. } = resp else { panic!() };
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["output"][0]["type"], "function_call");
        assert_eq!(v["output"][0]["name"], "get_weather");
    }
}

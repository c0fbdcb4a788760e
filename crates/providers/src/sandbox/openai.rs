//! The sandbox in the OpenAI Chat Completions shape: `chat.completion` bodies and
//! `chat.completion.chunk` streams that the official SDKs accept.

use super::synth::{plan, OfferedTool, Plan, PlannedOutput};
use super::{
    disconnected_before_answer, fault_error, now_secs, response_id, synthetic_stream, Sandbox, TOKENS_PER_CONVERSATION,
    TOKENS_PER_MESSAGE,
};
use crate::openai::{ChatRequest, Content};
use crate::{ChatCall, ChatProvider, ChatResponse, Fault, Meter, UpstreamError};
use bytes::Bytes;
use quota_core::tokens::{count_tokens, split_tokens};
use quota_core::{Provider, Usage};
use serde_json::json;
use std::sync::Arc;

/// The sandbox's exact prompt token count for an OpenAI-shaped request.
pub fn prompt_tokens(req: &ChatRequest) -> u64 {
    let mut n = TOKENS_PER_CONVERSATION;
    for m in &req.messages {
        n += TOKENS_PER_MESSAGE;
        n += m.content.as_ref().map(|c| count_tokens(&c.text())).unwrap_or(0);
        n += m.name.as_deref().map(count_tokens).unwrap_or(0);
        for tc in m.tool_calls.iter().flatten() {
            if let Some(f) = &tc.function {
                n += f.name.as_deref().map(count_tokens).unwrap_or(0)
                    + f.arguments.as_deref().map(count_tokens).unwrap_or(0);
            }
        }
    }
    for t in req.tools.iter().flatten() {
        if let Some(f) = &t.function {
            n += count_tokens(&f.name) + f.description.as_deref().map(count_tokens).unwrap_or(0);
            n += f.parameters.as_ref().map(|p| count_tokens(&p.to_string())).unwrap_or(0);
        }
    }
    n
}

/// The tool to call, if the conversation invites one: tools offered, `tool_choice` not "none",
/// and the last message is not already a tool result.
fn tool_to_call(req: &ChatRequest) -> Option<OfferedTool<'_>> {
    let tools = req.tools.as_ref()?;
    if req.messages.last().is_some_and(|m| m.role == "tool") {
        return None;
    }
    let named = match &req.tool_choice {
        Some(serde_json::Value::String(s)) if s == "none" => return None,
        Some(v) => v.pointer("/function/name").and_then(|n| n.as_str()),
        None => None,
    };
    let functions = tools.iter().filter_map(|t| t.function.as_ref());
    let chosen = match named {
        Some(name) => functions.clone().find(|f| f.name == name).or_else(|| functions.clone().next()),
        None => functions.clone().next(),
    }?;
    Some(OfferedTool { name: &chosen.name, parameters: chosen.parameters.as_ref() })
}

fn plan_for(req: &ChatRequest) -> Plan {
    let mut seed = String::new();
    for m in &req.messages {
        seed.push_str(&m.role);
        seed.push('\u{1}');
        if let Some(c) = &m.content {
            seed.push_str(&c.text());
        }
        seed.push('\u{2}');
    }
    let last_user = req
        .messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .and_then(|m| m.content.as_ref())
        .map(Content::text)
        .unwrap_or_default();
    plan(&seed, &last_user, tool_to_call(req), req.max_output(), req.choices())
}

fn usage_json(prompt: u64, output: u64) -> serde_json::Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt + output,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
    })
}

fn message_json(output: &PlannedOutput) -> serde_json::Value {
    match output {
        PlannedOutput::Text { text, .. } => {
            json!({"role": "assistant", "content": text, "refusal": null})
        }
        PlannedOutput::ToolCall { id, name, arguments } => json!({
            "role": "assistant", "content": null, "refusal": null,
            "tool_calls": [{"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}]
        }),
    }
}

fn sse(value: &serde_json::Value) -> Bytes {
    crate::sse::frame(None, value.to_string().as_bytes())
}

/// The chunks of a streamed answer, each with the text it carries (for the meter).
fn stream_chunks(id: &str, created: i64, model: &str, plan: &Plan) -> Vec<(Bytes, Option<String>)> {
    let chunk = |index: usize, delta: serde_json::Value, finish: Option<&str>| {
        sse(&json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": "fp_quota_sandbox",
            "choices": [{"index": index, "delta": delta, "logprobs": null, "finish_reason": finish}]
        }))
    };
    let mut out = Vec::new();
    for (index, output) in plan.outputs.iter().enumerate() {
        match output {
            PlannedOutput::Text { text, .. } => {
                out.push((chunk(index, json!({"role": "assistant", "content": "", "refusal": null}), None), None));
                for piece in split_tokens(text) {
                    out.push((chunk(index, json!({"content": piece}), None), Some(piece.to_string())));
                }
            }
            PlannedOutput::ToolCall { id: call_id, name, arguments } => {
                let head = json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": [
                    {"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}]});
                out.push((chunk(index, head, None), Some(name.clone())));
                for piece in split_tokens(arguments) {
                    let delta = json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]});
                    out.push((chunk(index, delta, None), Some(piece.to_string())));
                }
            }
        }
        out.push((chunk(index, json!({}), Some(output.finish_reason())), None));
    }
    out
}

#[async_trait::async_trait]
impl ChatProvider for Sandbox {
    fn prompt_tokens_max(&self, call: &ChatCall<'_>) -> u64 {
        prompt_tokens(call.request)
    }

    async fn chat(&self, call: ChatCall<'_>) -> Result<ChatResponse, UpstreamError> {
        if let Some(err) = call.fault.and_then(fault_error) {
            return Err(err);
        }
        let req = call.request;
        // Refuse what production would refuse when translating for the provider.
        match call.model.provider {
            Provider::Anthropic => {
                crate::anthropic::request_from_openai(req, call.model).map_err(UpstreamError::InvalidRequest)?;
            }
            Provider::Google => {
                crate::google::request_from_openai(req).map_err(UpstreamError::InvalidRequest)?;
            }
            Provider::Openai => {}
        }
        let prompt = prompt_tokens(req);
        let plan = plan_for(req);
        let output_tokens = plan.output_tokens();
        let id = response_id("chatcmpl-sbx", call.raw);
        let created = now_secs();
        let model = req.model.as_str();
        if !req.stream() {
            if call.fault == Some(Fault::DisconnectMidStream) {
                return Err(disconnected_before_answer());
            }
            let choices: Vec<serde_json::Value> = plan
                .outputs
                .iter()
                .enumerate()
                .map(|(i, o)| json!({"index": i, "message": message_json(o), "logprobs": null, "finish_reason": o.finish_reason()}))
                .collect();
            let body = json!({
                "id": id, "object": "chat.completion", "created": created, "model": model,
                "system_fingerprint": "fp_quota_sandbox", "choices": choices, "usage": usage_json(prompt, output_tokens),
            });
            let usage = Usage { input_tokens: prompt, output_tokens, ..Default::default() };
            return Ok(ChatResponse::Complete { body: Bytes::from(body.to_string()), usage });
        }
        let meter = Arc::new(Meter::new(prompt));
        meter.set_identity(&id, created, model);
        let chunks = stream_chunks(&id, created, model, &plan);
        let final_usage = Usage { input_tokens: prompt, output_tokens, ..Default::default() };
        let events = synthetic_stream(chunks, None, meter.clone(), final_usage, call.fault);
        Ok(ChatResponse::Stream { events, meter })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use quota_core::Catalog;

    fn call_with(body: &str, fault: Option<Fault>) -> (Result<ChatResponse, UpstreamError>, u64) {
        let raw = Bytes::from(body.to_string());
        let req = ChatRequest::parse(&raw).unwrap();
        let catalog = Catalog::builtin();
        let model = catalog.get("gpt-4o-mini").unwrap().clone();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let call = ChatCall { model: &model, request: &req, raw: &raw, fault };
        let max = Sandbox.prompt_tokens_max(&call);
        (rt.block_on(Sandbox.chat(call)), max)
    }

    #[test]
    fn completion_usage_matches_the_reserved_prompt_and_max_tokens() {
        let (resp, prompt_max) = call_with(
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}],"max_tokens":5}"#,
            None,
        );
        let Ok(ChatResponse::Complete { body, usage }) = resp else { panic!("expected a body") };
        assert_eq!(usage.input_tokens, prompt_max);
        assert_eq!(usage.output_tokens, 5);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["completion_tokens"], 5);
    }

    #[test]
    fn tools_get_a_tool_call() {
        let (resp, _) = call_with(
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"weather in Paris?"}],"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}]}"#,
            None,
        );
        let Ok(ChatResponse::Complete { body, .. }) = resp else { panic!() };
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(v["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "get_weather");
    }

    #[test]
    fn faults_imitate_upstream_failures() {
        let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}]}"#;
        assert!(matches!(call_with(body, Some(Fault::RateLimit)).0, Err(UpstreamError::RateLimited(_))));
        assert!(matches!(call_with(body, Some(Fault::Timeout)).0, Err(UpstreamError::Timeout)));
        assert!(matches!(call_with(body, Some(Fault::UpstreamError)).0, Err(UpstreamError::Status { .. })));
    }

    #[test]
    fn streams_count_what_they_forward() {
        let (resp, _) = call_with(
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"stream":true,"max_tokens":7}"#,
            Some(Fault::DisconnectMidStream),
        );
        let Ok(ChatResponse::Stream { events, meter }) = resp else { panic!() };
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let items: Vec<_> = rt.block_on(events.collect());
        assert!(items.last().unwrap().is_err());
        assert!(meter.reported().is_none());
        let counted = meter.usage().output_tokens;
        assert!(counted > 0 && counted < 7, "counted {counted}");
    }
}

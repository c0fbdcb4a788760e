//! The sandbox in the Gemini shape: `GenerateContentResponse` bodies and the SSE chunk stream of
//! `streamGenerateContent?alt=sse` that the official SDK accepts, function calls included. As
//! from the real adapter, the stream's last chunk is held back for the gateway to add `quota`.

use super::synth::{plan, OfferedTool, Plan, PlannedOutput};
use super::{
    disconnected_before_answer, fault_error, response_id, synthetic_stream, Sandbox, TOKENS_PER_CONVERSATION,
    TOKENS_PER_MESSAGE,
};
use crate::google::GenerateRequest;
use crate::sse::frame;
use crate::{ChatResponse, Fault, Meter, NativeCall, NativeProvider, UpstreamError};
use bytes::Bytes;
use quota_core::tokens::{count_tokens, split_tokens};
use quota_core::Usage;
use serde_json::{json, Value};
use std::sync::Arc;

/// The sandbox's exact prompt token count for a `generateContent` request.
pub fn prompt_tokens(req: &GenerateRequest) -> u64 {
    let mut n = TOKENS_PER_CONVERSATION;
    if let Some(system) = &req.system_instruction {
        n += TOKENS_PER_MESSAGE;
        system.for_each_text(|t| n += count_tokens(t));
    }
    for c in &req.contents {
        n += TOKENS_PER_MESSAGE;
        c.for_each_text(|t| n += count_tokens(t));
    }
    for d in declarations(req) {
        n += count_tokens(&Value::Object(d.clone()).to_string());
    }
    n
}

/// Every function declaration offered, in order.
fn declarations(req: &GenerateRequest) -> impl Iterator<Item = &serde_json::Map<String, Value>> + Clone {
    req.tools
        .iter()
        .flatten()
        .filter_map(|t| t.get("functionDeclarations").or_else(|| t.get("function_declarations")))
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(Value::as_object)
}

/// The function to call: declarations offered, calling mode not `NONE`, and the last turn is not
/// already function responses.
fn tool_to_call(req: &GenerateRequest) -> Option<OfferedTool<'_>> {
    if req.contents.last().is_some_and(|c| c.has_function_response()) {
        return None;
    }
    let config = req
        .tool_config
        .as_ref()
        .and_then(|c| c.get("functionCallingConfig").or_else(|| c.get("function_calling_config")));
    if config.and_then(|c| c.get("mode")).and_then(Value::as_str) == Some("NONE") {
        return None;
    }
    let allowed = config
        .and_then(|c| c.get("allowedFunctionNames").or_else(|| c.get("allowed_function_names")))
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str);
    let name_of = |d: &&serde_json::Map<String, Value>| d.get("name").and_then(Value::as_str).map(str::to_string);
    let chosen = match allowed {
        Some(name) => {
            declarations(req).find(|d| name_of(d).as_deref() == Some(name)).or_else(|| declarations(req).next())
        }
        None => declarations(req).next(),
    }?;
    let parameters =
        ["parametersJsonSchema", "parameters_json_schema", "parameters"].iter().find_map(|k| chosen.get(*k));
    Some(OfferedTool { name: chosen.get("name").and_then(Value::as_str)?, parameters })
}

fn plan_for(req: &GenerateRequest) -> Plan {
    let mut seed = String::new();
    if let Some(s) = &req.system_instruction {
        seed.push_str(&s.text());
        seed.push('\u{2}');
    }
    for c in &req.contents {
        seed.push_str(c.role.as_deref().unwrap_or("user"));
        seed.push('\u{1}');
        seed.push_str(&c.text());
        seed.push('\u{2}');
    }
    let last_user = req
        .contents
        .iter()
        .rev()
        .find(|c| c.role.as_deref() != Some("model") && !c.has_function_response())
        .map(|c| c.text())
        .unwrap_or_default();
    plan(&seed, &last_user, tool_to_call(req), req.max_output(), req.candidates())
}

fn finish_reason(output: &PlannedOutput) -> &'static str {
    match output {
        PlannedOutput::Text { truncated: true, .. } => "MAX_TOKENS",
        _ => "STOP",
    }
}

fn part(output: &PlannedOutput) -> Value {
    match output {
        PlannedOutput::Text { text, .. } => json!({"text": text}),
        PlannedOutput::ToolCall { name, arguments, .. } => {
            let args: Value = serde_json::from_str(arguments).unwrap_or_else(|_| json!({}));
            json!({"functionCall": {"name": name, "args": args}})
        }
    }
}

fn usage_json(prompt: u64, output: u64) -> Value {
    json!({"promptTokenCount": prompt, "candidatesTokenCount": output, "totalTokenCount": prompt + output,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]})
}

/// The chunks of a streamed answer, each with the text it generates (for the meter). Every
/// chunk carries `usageMetadata` with the output so far, as Gemini's do.
fn stream_chunks(id: &str, version: &str, prompt: u64, plan: &Plan) -> Vec<(Bytes, Option<String>)> {
    let mut out = Vec::new();
    let mut generated = 0;
    for (index, output) in plan.outputs.iter().enumerate() {
        let pieces: Vec<(Value, String)> = match output {
            PlannedOutput::Text { text, .. } => {
                let p: Vec<(Value, String)> =
                    split_tokens(text).into_iter().map(|t| (json!({"text": t}), t.to_string())).collect();
                if p.is_empty() {
                    vec![(json!({"text": ""}), String::new())]
                } else {
                    p
                }
            }
            PlannedOutput::ToolCall { name, arguments, .. } => vec![(part(output), format!("{name} {arguments}"))],
        };
        let last = pieces.len() - 1;
        for (k, (part, text)) in pieces.into_iter().enumerate() {
            generated += count_tokens(&text);
            let mut candidate = json!({"content": {"parts": [part], "role": "model"}, "index": index});
            if k == last {
                candidate["finishReason"] = json!(finish_reason(output));
            }
            let mut usage = usage_json(prompt, generated);
            if generated == 0 {
                usage = json!({"promptTokenCount": prompt, "totalTokenCount": prompt});
            }
            let chunk =
                json!({"candidates": [candidate], "usageMetadata": usage, "modelVersion": version, "responseId": id});
            out.push((frame(None, chunk.to_string().as_bytes()), Some(text)));
        }
    }
    out
}

#[async_trait::async_trait]
impl NativeProvider<GenerateRequest> for Sandbox {
    fn prompt_tokens_max(&self, call: &NativeCall<'_, GenerateRequest>) -> u64 {
        prompt_tokens(call.request)
    }

    async fn call(&self, call: NativeCall<'_, GenerateRequest>) -> Result<ChatResponse, UpstreamError> {
        if let Some(err) = call.fault.and_then(fault_error) {
            return Err(err);
        }
        let req = call.request;
        let prompt = prompt_tokens(req);
        let plan = plan_for(req);
        let output_tokens = plan.output_tokens();
        let usage = Usage { input_tokens: prompt, output_tokens, ..Default::default() };
        let id = response_id("sbx", call.raw);
        let version = call.model.upstream_id.as_str();
        if !req.stream {
            if call.fault == Some(Fault::DisconnectMidStream) {
                return Err(disconnected_before_answer());
            }
            let candidates: Vec<Value> = plan
                .outputs
                .iter()
                .enumerate()
                .map(|(i, o)| json!({"content": {"parts": [part(o)], "role": "model"}, "finishReason": finish_reason(o), "index": i}))
                .collect();
            let body = json!({"candidates": candidates, "usageMetadata": usage_json(prompt, output_tokens),
                "modelVersion": version, "responseId": id});
            return Ok(ChatResponse::Complete { body: Bytes::from(body.to_string()), usage });
        }
        let meter = Arc::new(Meter::new(prompt));
        let mut chunks = stream_chunks(&id, version, prompt, &plan);
        // The last chunk waits in the meter for the gateway to add `quota` (its text counted now).
        let held = chunks.pop().map(|(bytes, text)| {
            if let Some(t) = text {
                meter.count_output(&t);
            }
            bytes
        });
        let events = synthetic_stream(chunks, held, meter.clone(), usage, call.fault);
        Ok(ChatResponse::Stream { events, meter })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use quota_core::Catalog;

    fn run(body: Value, stream: bool) -> (ChatResponse, u64) {
        let raw = Bytes::from(body.to_string());
        let req = GenerateRequest::parse(&raw, stream).unwrap();
        let catalog = Catalog::builtin();
        let model = catalog.get("google/gemini-2.5-flash").unwrap().clone();
        let call = NativeCall { model: &model, request: &req, raw: &raw, version: None, beta: None, fault: None };
        let max = NativeProvider::<GenerateRequest>::prompt_tokens_max(&Sandbox, &call);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        (rt.block_on(Sandbox.call(call)).unwrap(), max)
    }

    #[test]
    fn a_response_respects_max_output_tokens_and_candidates() {
        let (resp, prompt_max) = run(
            json!({"contents": [{"role": "user", "parts": [{"text": "Hello"}]}], "generationConfig": {"maxOutputTokens": 6, "candidateCount": 2}}),
            false,
        );
        let ChatResponse::Complete { body, usage } = resp else { panic!() };
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["candidates"].as_array().unwrap().len(), 2);
        assert_eq!(v["candidates"][0]["finishReason"], "MAX_TOKENS");
        assert_eq!(v["usageMetadata"]["candidatesTokenCount"], 12);
        assert_eq!(v["usageMetadata"]["promptTokenCount"], prompt_max);
        assert_eq!(usage, Usage { input_tokens: prompt_max, output_tokens: 12, ..Default::default() });
    }

    #[test]
    fn declarations_get_a_function_call() {
        let tools = json!([{"functionDeclarations": [{"name": "get_weather", "parametersJsonSchema": {"type": "object", "properties": {"city": {"type": "string"}}}}]}]);
        let (resp, _) = run(json!({"contents": [{"parts": [{"text": "Weather?"}]}], "tools": tools}), false);
        let ChatResponse::Complete { body, .. } = resp else { panic!() };
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["candidates"][0]["content"]["parts"][0]["functionCall"]["name"], "get_weather");
        assert!(v["candidates"][0]["content"]["parts"][0]["functionCall"]["args"]["city"].is_string());
    }

    #[test]
    fn a_stream_holds_its_last_chunk_for_the_gateway() {
        let (resp, _) =
            run(json!({"contents": [{"parts": [{"text": "Hi"}]}], "generationConfig": {"maxOutputTokens": 3}}), true);
        let ChatResponse::Stream { events, meter } = resp else { panic!() };
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let items: Vec<Bytes> = rt.block_on(events.map(|r| r.unwrap()).collect());
        assert_eq!(items.len(), 2);
        let last: Value = serde_json::from_str(&crate::sse::parse_event(&meter.take_final_event().unwrap()).1).unwrap();
        assert_eq!(last["candidates"][0]["finishReason"], "MAX_TOKENS");
        assert_eq!(last["usageMetadata"]["candidatesTokenCount"], 3);
        assert_eq!(meter.usage().output_tokens, 3);
    }
}

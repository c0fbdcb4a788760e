//! OpenAI Chat Completions ⇄ Gemini `generateContent`, for `google/…` models on
//! `/v1/chat/completions`: the request (system instruction, turns, images, function
//! declarations, calls and responses, stop, sampling, max tokens, candidates), the answer (text,
//! tool calls, finish reasons, usage with thoughts as reasoning tokens), and the stream,
//! translated one upstream chunk at a time.

use super::wire::{CandidatePeek, ResponsePeek};
use crate::openai::{image_url, openai_usage, parse_data_url, ChatRequest, Content, Stop};
use crate::sse::{frame, parse_event, EventTranslator};
use crate::{scrub_credentials, Meter, UpstreamError};
use bytes::Bytes;
use quota_core::Usage;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// The Gemini body for an OpenAI-shaped request. Errors name what cannot be expressed.
pub fn request_from_openai(req: &ChatRequest) -> Result<Value, String> {
    let mut system: Vec<String> = Vec::new();
    let mut contents: Vec<Value> = Vec::new();
    // Tool-call id → function name: Gemini answers a call by the function's name.
    let mut call_names: HashMap<&str, &str> = HashMap::new();
    for (i, m) in req.messages.iter().enumerate() {
        match m.role.as_str() {
            "system" | "developer" => system.push(m.content.as_ref().map(Content::text).unwrap_or_default()),
            "user" => contents.push(json!({"role": "user", "parts": user_parts(m.content.as_ref(), i)?})),
            "assistant" => {
                let mut parts = Vec::new();
                let text = m.content.as_ref().map(Content::text).unwrap_or_default();
                if !text.is_empty() {
                    parts.push(json!({"text": text}));
                }
                for (j, c) in m.tool_calls.iter().flatten().enumerate() {
                    let f = c
                        .function
                        .as_ref()
                        .ok_or_else(|| format!("messages[{i}].tool_calls[{j}].function is required"))?;
                    let name = f.name.as_deref().unwrap_or_default();
                    let args = f.arguments.as_deref().filter(|a| !a.trim().is_empty()).unwrap_or("{}");
                    let args: Value = serde_json::from_str(args)
                        .map_err(|_| format!("messages[{i}].tool_calls[{j}].function.arguments is not valid JSON"))?;
                    if let Some(id) = c.id.as_deref() {
                        call_names.insert(id, name);
                    }
                    parts.push(json!({"functionCall": {"name": name, "args": args}}));
                }
                if !parts.is_empty() {
                    contents.push(json!({"role": "model", "parts": parts}));
                }
            }
            "tool" => {
                let id = m.tool_call_id.as_deref().unwrap_or_default();
                let name = call_names
                    .get(id)
                    .ok_or_else(|| format!("messages[{i}].tool_call_id `{id}` does not answer an earlier tool call"))?;
                let part = json!({"functionResponse": {"name": name,
                    "response": {"content": m.content.as_ref().map(Content::text).unwrap_or_default()}}});
                // Responses to parallel calls go together in one turn, as Gemini requires.
                match contents.last_mut() {
                    Some(last) if is_function_response_turn(last) => {
                        if let Some(parts) = last["parts"].as_array_mut() {
                            parts.push(part);
                        }
                    }
                    _ => contents.push(json!({"role": "user", "parts": [part]})),
                }
            }
            other => return Err(format!("messages[{i}]: `{other}` messages cannot be sent to Gemini models")),
        }
    }
    let mut body = Map::new();
    body.insert("contents".into(), Value::Array(contents));
    if !system.is_empty() {
        body.insert("systemInstruction".into(), json!({"parts": [{"text": system.join("\n\n")}]}));
    }
    if let Some(tools) = req.tools.as_ref().filter(|t| !t.is_empty()) {
        let mut declarations = Vec::with_capacity(tools.len());
        for (i, t) in tools.iter().enumerate() {
            let f = t
                .function
                .as_ref()
                .filter(|_| t.kind == "function")
                .ok_or_else(|| format!("tools[{i}]: only `function` tools can be sent to Gemini models"))?;
            let mut d = json!({"name": f.name});
            if let Some(desc) = &f.description {
                d["description"] = json!(desc);
            }
            if let Some(p) = &f.parameters {
                // JSON Schema as OpenAI clients write it (Gemini's `parameters` takes only an
                // OpenAPI subset).
                d["parametersJsonSchema"] = p.clone();
            }
            declarations.push(d);
        }
        body.insert("tools".into(), json!([{"functionDeclarations": declarations}]));
        let config = match &req.tool_choice {
            None => None,
            Some(Value::String(s)) if s == "auto" => Some(json!({"mode": "AUTO"})),
            Some(Value::String(s)) if s == "none" => Some(json!({"mode": "NONE"})),
            Some(Value::String(s)) if s == "required" => Some(json!({"mode": "ANY"})),
            Some(v) => match v.pointer("/function/name").and_then(Value::as_str) {
                Some(name) => Some(json!({"mode": "ANY", "allowedFunctionNames": [name]})),
                None => return Err("`tool_choice` must be auto, none, required or a named function".into()),
            },
        };
        if let Some(c) = config {
            body.insert("toolConfig".into(), json!({"functionCallingConfig": c}));
        }
    }
    let mut generation = Map::new();
    if let Some(max) = req.max_output() {
        generation.insert("maxOutputTokens".into(), json!(max));
    }
    if let Some(t) = req.temperature {
        generation.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.top_p {
        generation.insert("topP".into(), json!(p));
    }
    match &req.stop {
        Some(Stop::One(s)) => {
            generation.insert("stopSequences".into(), json!([s]));
        }
        Some(Stop::Many(v)) if !v.is_empty() => {
            generation.insert("stopSequences".into(), json!(v));
        }
        _ => {}
    }
    if let Some(n) = req.n {
        generation.insert("candidateCount".into(), json!(n));
    }
    if let Some(seed) = req.seed {
        generation.insert("seed".into(), json!(seed));
    }
    if let Some(p) = req.presence_penalty {
        generation.insert("presencePenalty".into(), json!(p));
    }
    if let Some(p) = req.frequency_penalty {
        generation.insert("frequencyPenalty".into(), json!(p));
    }
    if let Some(format) = &req.response_format {
        match format.get("type").and_then(Value::as_str) {
            Some("json_object") => {
                generation.insert("responseMimeType".into(), json!("application/json"));
            }
            Some("json_schema") => {
                generation.insert("responseMimeType".into(), json!("application/json"));
                if let Some(schema) = format.get("json_schema").and_then(|s| s.get("schema")) {
                    generation.insert("responseJsonSchema".into(), schema.clone());
                }
            }
            _ => {}
        }
    }
    if !generation.is_empty() {
        body.insert("generationConfig".into(), Value::Object(generation));
    }
    Ok(Value::Object(body))
}

fn is_function_response_turn(content: &Value) -> bool {
    content["role"] == "user"
        && content["parts"].as_array().is_some_and(|p| p.iter().all(|p| p.get("functionResponse").is_some()))
}

fn user_parts(content: Option<&Content>, i: usize) -> Result<Vec<Value>, String> {
    match content {
        None => Ok(vec![json!({"text": ""})]),
        Some(Content::Text(t)) => Ok(vec![json!({"text": t})]),
        Some(Content::Parts(parts)) => parts
            .iter()
            .enumerate()
            .map(|(j, p)| match p.kind.as_str() {
                "text" => Ok(json!({"text": p.text.as_deref().unwrap_or("")})),
                "image_url" => {
                    let url = image_url(p.image_url.as_ref())
                        .ok_or_else(|| format!("messages[{i}].content[{j}].image_url.url is required"))?;
                    Ok(match parse_data_url(url) {
                        Some((mime, data)) => json!({"inlineData": {"mimeType": mime, "data": data}}),
                        None => json!({"fileData": {"mimeType": mime_of(url), "fileUri": url}}),
                    })
                }
                other => Err(format!("messages[{i}].content[{j}]: `{other}` parts are not supported by Gemini models")),
            })
            .collect(),
    }
}

/// The image media type a URL's extension suggests (Gemini needs one for `fileData`).
fn mime_of(url: &str) -> &'static str {
    let path = url.split(['?', '#']).next().unwrap_or(url).to_ascii_lowercase();
    match path.rsplit('.').next() {
        Some("png") => "image/png",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        Some("heic") => "image/heic",
        _ => "image/jpeg",
    }
}

/// OpenAI's finish reason for a Gemini candidate.
pub fn finish_reason(c: &CandidatePeek, has_calls: bool) -> &'static str {
    match c.finish_reason.as_deref() {
        Some("MAX_TOKENS") => "length",
        Some("SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY") => {
            "content_filter"
        }
        _ if has_calls => "tool_calls",
        _ => "stop",
    }
}

/// (text, tool calls) of a candidate; thought parts are not part of the answer.
fn candidate_output(c: &CandidatePeek, call_ids: &mut impl FnMut() -> String) -> (String, Vec<Value>) {
    let mut text = String::new();
    let mut calls = Vec::new();
    for p in c.content.iter().flat_map(|c| &c.parts) {
        if p.thought == Some(true) {
            continue;
        }
        if let Some(t) = &p.text {
            text.push_str(t);
        }
        if let Some(f) = &p.function_call {
            let args = f.args.as_ref().map(Value::to_string).unwrap_or_else(|| "{}".into());
            calls.push(json!({"id": f.id.clone().unwrap_or_else(&mut *call_ids), "type": "function",
                "function": {"name": f.name, "arguments": args}}));
        }
    }
    (text, calls)
}

fn new_call_id() -> String {
    quota_core::ids::new_id("call_")
}

/// A `chat.completion` body for a Gemini response, and its metered usage.
pub fn completion_from_response(
    body: &[u8],
    model_id: &str,
    created: i64,
    prompt_estimate: u64,
) -> Result<(Bytes, Usage), UpstreamError> {
    let resp: ResponsePeek = serde_json::from_slice(body)
        .map_err(|e| UpstreamError::Transport(format!("the provider sent an unreadable body: {e}")))?;
    let mut choices = Vec::with_capacity(resp.candidates.len());
    let mut ids = new_call_id;
    for (i, c) in resp.candidates.iter().enumerate() {
        let (text, calls) = candidate_output(c, &mut ids);
        let mut message = json!({"role": "assistant",
            "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }, "refusal": null});
        let finish = finish_reason(c, !calls.is_empty());
        if !calls.is_empty() {
            message["tool_calls"] = Value::Array(calls);
        }
        choices.push(json!({"index": c.index.unwrap_or(i as u64), "message": message, "logprobs": null, "finish_reason": finish}));
    }
    let usage = match resp.usage_metadata {
        Some(u) => u.to_usage(),
        None => {
            let mut output = 0;
            resp.for_each_generated(|t| output += quota_core::tokens::count_tokens(t));
            Usage { input_tokens: prompt_estimate, output_tokens: output, ..Default::default() }
        }
    };
    let reasoning = resp.usage_metadata.map(|u| u.thoughts_token_count);
    let id = resp.response_id.clone().unwrap_or_else(|| quota_core::ids::new_id("chatcmpl-"));
    let out = json!({"id": id, "object": "chat.completion", "created": created, "model": model_id,
        "choices": choices, "usage": openai_usage(&usage, reasoning)});
    Ok((Bytes::from(out.to_string()), usage))
}

/// Parse one SSE event's data as a Gemini chunk (`None` for empty or foreign data).
pub fn peek_chunk(event: &[u8]) -> Option<ResponsePeek> {
    let (_, data) = parse_event(event);
    serde_json::from_str(data.trim()).ok()
}

/// What both stream readers (native and translated) record from a Gemini chunk: the prompt side
/// of `usageMetadata` while the answer runs, all of it once a candidate finishes (Gemini sends
/// no other end marker), output as it is generated; an `error` object fails the stream.
pub fn observe_chunk(chunk: &ResponsePeek, meter: &Meter) -> Result<(), UpstreamError> {
    if let Some(err) = &chunk.error {
        let message = err.get("message").and_then(Value::as_str).unwrap_or("stream error");
        let message = scrub_credentials(message, &[]);
        return Err(match err.get("code").and_then(Value::as_u64) {
            Some(429) => UpstreamError::RateLimited(message),
            code => UpstreamError::Status { status: code.unwrap_or(500) as u16, message },
        });
    }
    chunk.for_each_generated(|t| meter.count_output(t));
    let usage = chunk.usage_metadata.unwrap_or_default();
    if chunk.finished() {
        if chunk.usage_metadata.is_some() {
            meter.report_usage(usage.to_usage());
        }
        meter.mark_finished();
    } else if chunk.usage_metadata.is_some() {
        meter.report_prompt(usage.to_usage());
    }
    Ok(())
}

/// Translates Gemini's stream into `chat.completion.chunk`s, chunk by chunk.
pub struct ChunkTranslator {
    id: Option<String>,
    fallback_id: String,
    model: String,
    created: i64,
    /// Candidates that already sent their role, and their tool calls so far.
    started: HashMap<u64, u64>,
}

impl ChunkTranslator {
    /// `model` is the id the client asked for, echoed in every chunk.
    pub fn new(model: &str, created: i64, fallback_id: String) -> ChunkTranslator {
        ChunkTranslator { id: None, fallback_id, model: model.to_string(), created, started: HashMap::new() }
    }
}

impl EventTranslator for ChunkTranslator {
    fn event(&mut self, event: Bytes, meter: &Meter) -> Result<Option<Bytes>, UpstreamError> {
        let Some(chunk) = peek_chunk(&event) else { return Ok(None) };
        observe_chunk(&chunk, meter)?;
        if self.id.is_none() {
            self.id = Some(chunk.response_id.clone().unwrap_or_else(|| self.fallback_id.clone()));
        }
        let id = self.id.clone().unwrap_or_default();
        meter.set_identity(&id, self.created, &self.model);
        let mut choices = Vec::new();
        for (i, c) in chunk.candidates.iter().enumerate() {
            let index = c.index.unwrap_or(i as u64);
            let first = !self.started.contains_key(&index);
            let calls_before = *self.started.entry(index).or_insert(0);
            let (text, calls) = candidate_output(c, &mut new_call_id);
            let mut delta = Map::new();
            if first {
                delta.insert("role".into(), json!("assistant"));
            }
            if !text.is_empty() || (first && calls.is_empty()) {
                delta.insert("content".into(), json!(text));
            }
            if !calls.is_empty() {
                let n = calls.len() as u64;
                let calls: Vec<Value> = calls
                    .into_iter()
                    .enumerate()
                    .map(|(k, mut call)| {
                        call["index"] = json!(calls_before + k as u64);
                        call
                    })
                    .collect();
                self.started.insert(index, calls_before + n);
                delta.insert("tool_calls".into(), Value::Array(calls));
            }
            let finish = c
                .finish_reason
                .as_ref()
                .map(|_| finish_reason(c, calls_before > 0 || delta.contains_key("tool_calls")));
            choices.push(json!({"index": index, "delta": delta, "logprobs": null, "finish_reason": finish}));
        }
        if choices.is_empty() {
            return Ok(None);
        }
        let out = json!({"id": id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": choices});
        Ok(Some(frame(None, out.to_string().as_bytes())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translate(body: Value) -> Result<Value, String> {
        let raw = serde_json::to_vec(&body).unwrap();
        request_from_openai(&ChatRequest::parse(&raw).unwrap())
    }

    #[test]
    fn a_tool_conversation_translates_to_gemini_contents() {
        let got = translate(json!({
            "model": "google/gemini-2.5-flash",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.webp?x=1"}}]},
                {"role": "assistant", "content": "Checking.", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": ""}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                {"role": "tool", "tool_call_id": "call_2", "content": "noon"}
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
                {"type": "function", "function": {"name": "get_time"}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "stop": ["END"], "temperature": 0.5, "top_p": 0.9, "max_completion_tokens": 100, "n": 2, "seed": 3
        }))
        .unwrap();
        assert_eq!(
            got,
            json!({
                "systemInstruction": {"parts": [{"text": "Be brief."}]},
                "contents": [
                    {"role": "user", "parts": [{"text": "Weather?"},
                        {"inlineData": {"mimeType": "image/png", "data": "iVBOR"}},
                        {"fileData": {"mimeType": "image/webp", "fileUri": "https://example.com/a.webp?x=1"}}]},
                    {"role": "model", "parts": [{"text": "Checking."},
                        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                        {"functionCall": {"name": "get_time", "args": {}}}]},
                    {"role": "user", "parts": [
                        {"functionResponse": {"name": "get_weather", "response": {"content": "18C"}}},
                        {"functionResponse": {"name": "get_time", "response": {"content": "noon"}}}]}
                ],
                "tools": [{"functionDeclarations": [
                    {"name": "get_weather", "description": "Weather",
                        "parametersJsonSchema": {"type": "object", "properties": {"city": {"type": "string"}}}},
                    {"name": "get_time"}]}],
                "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}},
                "generationConfig": {"maxOutputTokens": 100, "temperature": 0.5, "topP": 0.9, "stopSequences": ["END"],
                    "candidateCount": 2, "seed": 3}
            })
        );
    }

    #[test]
    fn a_tool_result_must_answer_a_known_call() {
        let err = translate(json!({"model": "m", "messages": [{"role": "tool", "tool_call_id": "x", "content": "1"}]}))
            .unwrap_err();
        assert!(err.contains("does not answer"), "{err}");
    }

    #[test]
    fn a_response_becomes_a_chat_completion_with_thoughts_as_reasoning() {
        let body = json!({"candidates": [{"content": {"role": "model", "parts": [
                {"text": "thinking...", "thought": true}, {"text": "Paris "}, {"text": "is sunny."},
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
            "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 100, "cachedContentTokenCount": 40, "candidatesTokenCount": 10,
                "thoughtsTokenCount": 25, "totalTokenCount": 135},
            "modelVersion": "gemini-2.5-flash", "responseId": "resp_1"});
        let (out, usage) =
            completion_from_response(body.to_string().as_bytes(), "google/gemini-2.5-flash", 9, 0).unwrap();
        assert_eq!(
            usage,
            Usage {
                input_tokens: 60,
                cached_tokens: 40,
                cache_write_tokens: 0,
                output_tokens: 35,
                ..Default::default()
            }
        );
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["id"], "resp_1");
        assert_eq!(v["choices"][0]["message"]["content"], "Paris is sunny.");
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"], "{\"city\":\"Paris\"}");
        assert_eq!(
            v["usage"],
            json!({"prompt_tokens": 100, "completion_tokens": 35, "total_tokens": 135,
            "prompt_tokens_details": {"cached_tokens": 40}, "completion_tokens_details": {"reasoning_tokens": 25}})
        );
    }

    #[test]
    fn a_stream_translates_chunk_by_chunk() {
        let meter = Meter::new(5);
        let mut t = ChunkTranslator::new("google/gemini-2.5-flash", 1, "fallback".into());
        let chunks = [
            r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hel"}]},"index":0}],"usageMetadata":{"promptTokenCount":9,"totalTokenCount":9},"responseId":"r1"}"#,
            r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"lo"}]},"finishReason":"MAX_TOKENS","index":0}],"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":2,"thoughtsTokenCount":4,"totalTokenCount":15},"responseId":"r1"}"#,
        ];
        let mut out = Vec::new();
        for c in chunks {
            let b = t.event(Bytes::from(format!("data: {c}\r\n\r\n")), &meter).unwrap().unwrap();
            out.push(serde_json::from_str::<Value>(&parse_event(&b).1).unwrap());
        }
        assert_eq!(out[0]["choices"][0]["delta"], json!({"role": "assistant", "content": "Hel"}));
        assert_eq!(out[1]["choices"][0]["delta"], json!({"content": "lo"}));
        assert_eq!(out[1]["choices"][0]["finish_reason"], "length");
        assert!(out.iter().all(|c| c["id"] == "r1"));
        assert!(meter.finished());
        assert_eq!(meter.usage(), Usage { input_tokens: 9, output_tokens: 6, ..Default::default() });
    }
}

//! A fake Google Gemini upstream speaking the `generateContent` wire format
//! (`POST /v1beta/models/{model}:generateContent`, `:streamGenerateContent?alt=sse` with
//! `\r\n\r\n`-separated chunks that each carry `usageMetadata`, `{"error":{"code","message",
//! "status"}}` errors), scripted by the test: it records each request (path, query, headers,
//! body) and can stream chunk by chunk on the test's command.
#![allow(dead_code)]

use super::fake::{async_stream, FakeServer, Scripted};
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Gemini's usage numbers: `prompt` includes `cached`; `thoughts` are outside `candidates`.
#[derive(Clone, Copy, Debug)]
pub struct GeminiUsage {
    pub prompt: u64,
    pub cached: u64,
    pub candidates: u64,
    pub thoughts: u64,
}

#[derive(Clone)]
pub enum Script {
    /// Answer with these parts (streamed one part per chunk when the request streams).
    Answer { parts: Vec<Value>, finish: &'static str, usage: GeminiUsage },
    /// An error status with Google's error object.
    Error { status: u16, status_text: &'static str, message: String },
    /// A stream whose text chunks leave one per `()` on the gate; when the gate closes, the
    /// finished chunk with the full usage follows.
    GatedStream { usage: GeminiUsage },
}

#[derive(Clone, Debug)]
pub struct Recorded {
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Value,
}

pub type Fake = Scripted<Script, Recorded>;
pub type FakeGemini = FakeServer<Script, Recorded>;

impl FakeGemini {
    pub async fn start() -> FakeGemini {
        FakeServer::serve(
            |fake| Router::new().route("/v1beta/models/{model_action}", post(handle)).with_state(fake),
            "",
        )
        .await
    }
}

pub fn usage_json(u: &GeminiUsage) -> Value {
    json!({"promptTokenCount": u.prompt, "cachedContentTokenCount": u.cached, "candidatesTokenCount": u.candidates,
        "thoughtsTokenCount": u.thoughts, "totalTokenCount": u.prompt + u.candidates + u.thoughts})
}

fn chunk(parts: Vec<Value>, finish: Option<&str>, usage: Value) -> Bytes {
    let mut candidate = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
    if let Some(f) = finish {
        candidate["finishReason"] = json!(f);
    }
    let c = json!({"candidates": [candidate], "usageMetadata": usage, "modelVersion": "gemini-2.5-flash", "responseId": "resp_fake01"});
    Bytes::from(format!("data: {c}\r\n\r\n"))
}

/// The answers of Gemini's other methods, as the API reference gives them: `embedContent`
/// (`{"embedding": {"values"}}`, no usage), `batchEmbedContents` (one embedding per request)
/// and `countTokens` (`{"totalTokens"}`: the scripted prompt count).
fn other_method(model_action: &str, request: &Value, script: &Script) -> Option<Value> {
    let vector = json!({"values": [0.6, 0.8, 0.0]});
    match model_action.rsplit_once(':')?.1 {
        "embedContent" => Some(json!({"embedding": vector})),
        "batchEmbedContents" => {
            let n = request["requests"].as_array().map(Vec::len).unwrap_or(0);
            Some(json!({"embeddings": vec![vector; n]}))
        }
        "countTokens" => {
            let total = match script {
                Script::Answer { usage, .. } => usage.prompt,
                _ => 0,
            };
            Some(json!({"totalTokens": total}))
        }
        _ => None,
    }
}

async fn handle(
    State(fake): State<Arc<Fake>>,
    Path(model_action): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let path = format!("/v1beta/models/{model_action}");
    fake.record(Recorded { path, query: query.clone(), headers, body: v.clone() });
    fake.wait_while_paused().await;
    let script = fake.script_or(Script::Answer {
        parts: vec![json!({"text": "Hello from Gemini."})],
        finish: "STOP",
        usage: GeminiUsage { prompt: 10, cached: 0, candidates: 5, thoughts: 0 },
    });
    if let Some(body) = other_method(&model_action, &v, &script) {
        return ([("content-type", "application/json")], body.to_string()).into_response();
    }
    let stream = model_action.ends_with(":streamGenerateContent");
    let prompt_only = |u: &GeminiUsage| json!({"promptTokenCount": u.prompt, "totalTokenCount": u.prompt});
    match script {
        Script::Error { status, status_text, message } => {
            let body = json!({"error": {"code": status, "message": message, "status": status_text}});
            (StatusCode::from_u16(status).unwrap(), [("content-type", "application/json")], body.to_string())
                .into_response()
        }
        Script::Answer { parts, finish, usage } if !stream => {
            let body = json!({"candidates": [{"content": {"parts": parts, "role": "model"}, "finishReason": finish, "index": 0}],
                "usageMetadata": usage_json(&usage), "modelVersion": "gemini-2.5-flash", "responseId": "resp_fake01"});
            ([("content-type", "application/json")], body.to_string()).into_response()
        }
        Script::Answer { parts, finish, usage } => {
            let last = parts.len().saturating_sub(1);
            let chunks: Vec<Bytes> = parts
                .into_iter()
                .enumerate()
                .map(|(i, p)| {
                    if i == last {
                        chunk(vec![p], Some(finish), usage_json(&usage))
                    } else {
                        chunk(vec![p], None, prompt_only(&usage))
                    }
                })
                .collect();
            let s = futures::stream::iter(chunks.into_iter().map(Ok::<_, std::convert::Infallible>));
            ([("content-type", "text/event-stream")], Body::from_stream(s)).into_response()
        }
        Script::GatedStream { usage } => {
            let mut gate = fake.take_gate();
            let s = async_stream(move |tx: mpsc::UnboundedSender<Bytes>| async move {
                while gate.recv().await.is_some() {
                    if tx.send(chunk(vec![json!({"text": "word "})], None, prompt_only(&usage))).is_err() {
                        return;
                    }
                }
                let _ = tx.send(chunk(vec![json!({"text": "end."})], Some("STOP"), usage_json(&usage)));
            });
            ([("content-type", "text/event-stream")], Body::from_stream(s)).into_response()
        }
    }
}

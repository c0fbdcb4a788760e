//! A fake OpenAI upstream speaking the Chat Completions and Responses wire formats (as OpenAI's
//! API reference publishes them), scripted by the test: it records each request, answers with
//! the usage it is given, and can stream chunk by chunk on the test's command (so a test decides
//! exactly when each chunk leaves).
#![allow(dead_code)]

use super::fake::{async_stream, FakeServer, Scripted};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::sync::mpsc;

#[derive(Clone)]
pub enum Script {
    /// Answer with this usage (prompt, cached, completion) and text.
    Complete { prompt: u64, cached: u64, completion: u64, text: String },
    /// Error status with an OpenAI error object.
    Error { status: u16, message: String },
    /// Stream: each `()` received on the gate sends the next content chunk; when the gate
    /// closes, the usage chunk and `[DONE]` follow.
    GatedStream { prompt: u64, completion: u64 },
}

pub type Fake = Scripted<Script, (HeaderMap, Value)>;
pub type FakeUpstream = FakeServer<Script, (HeaderMap, Value)>;

impl FakeUpstream {
    pub async fn start() -> FakeUpstream {
        FakeServer::serve(
            |fake| {
                Router::new()
                    .route("/v1/chat/completions", post(handle))
                    .route("/v1/responses", post(handle_responses))
                    .route("/v1/embeddings", post(handle_embeddings))
                    .with_state(fake)
            },
            "/v1",
        )
        .await
    }
}

fn chunk(content: &str) -> Bytes {
    let c = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]});
    Bytes::from(format!("data: {c}\n\n"))
}

/// Record the request, wait while paused, and take the script (default: a small answer).
async fn receive(fake: &Fake, headers: HeaderMap, body: &[u8]) -> (Value, Script) {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    fake.record((headers, v.clone()));
    fake.wait_while_paused().await;
    (v, fake.script_or(Script::Complete { prompt: 10, cached: 0, completion: 5, text: "hello".into() }))
}

/// OpenAI's error object under `status`.
fn error_reply(status: u16, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}});
    (StatusCode::from_u16(status).unwrap(), [("content-type", "application/json")], body.to_string()).into_response()
}

async fn handle(State(fake): State<Arc<Fake>>, headers: HeaderMap, body: Bytes) -> Response {
    let (v, script) = receive(&fake, headers, &body).await;
    let stream = v["stream"] == json!(true);
    let include_usage = v["stream_options"]["include_usage"] == json!(true);
    match script {
        Script::Error { status, message } => error_reply(status, &message),
        Script::Complete { prompt, cached, completion, text } if !stream => {
            let body = json!({
                "id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini-2024-07-18",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                          "prompt_tokens_details": {"cached_tokens": cached}, "completion_tokens_details": {"reasoning_tokens": 0}},
            });
            ([("content-type", "application/json")], body.to_string()).into_response()
        }
        Script::Complete { prompt, cached, completion, text } => {
            let mut out = vec![chunk(&text)];
            if include_usage {
                let u = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini-2024-07-18", "choices": [],
                    "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion, "prompt_tokens_details": {"cached_tokens": cached}}});
                out.push(Bytes::from(format!("data: {u}\n\n")));
            }
            out.push(Bytes::from_static(b"data: [DONE]\n\n"));
            let s = futures::stream::iter(out.into_iter().map(Ok::<_, std::convert::Infallible>));
            ([("content-type", "text/event-stream")], Body::from_stream(s)).into_response()
        }
        Script::GatedStream { prompt, completion } => {
            let mut gate = fake.take_gate();
            let s = async_stream(move |tx: mpsc::UnboundedSender<Bytes>| async move {
                while gate.recv().await.is_some() {
                    if tx.send(chunk("word ")).is_err() {
                        return;
                    }
                }
                let u = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
                    "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}});
                let _ = tx.send(Bytes::from(format!("data: {u}\n\n")));
                let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n"));
            });
            ([("content-type", "text/event-stream")], Body::from_stream(s)).into_response()
        }
    }
}

/// A Responses API event: `event: <type>` and its data, numbered.
fn response_event(kind: &str, seq: u64, mut data: Value) -> Bytes {
    data["type"] = json!(kind);
    data["sequence_number"] = json!(seq);
    Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
}

/// A `response` object with one output message of `text` and this usage (`prompt` includes
/// `cached`; `completion` includes the reasoning tokens).
fn response_object(status: &str, text: &str, usage: Option<(u64, u64, u64)>) -> Value {
    let usage = usage.map(|(prompt, cached, completion)| {
        json!({"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion})
    });
    json!({"id": "resp_fake", "object": "response", "created_at": 1, "status": status, "model": "gpt-4o-mini-2024-07-18",
        "output": [{"type": "message", "id": "msg_fake", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}],
        "usage": usage, "parallel_tool_calls": true, "tool_choice": "auto", "tools": [], "error": null})
}

async fn handle_responses(State(fake): State<Arc<Fake>>, headers: HeaderMap, body: Bytes) -> Response {
    let (v, script) = receive(&fake, headers, &body).await;
    let stream = v["stream"] == json!(true);
    let sse = |events: Vec<Bytes>| {
        let s = futures::stream::iter(events.into_iter().map(Ok::<_, std::convert::Infallible>));
        ([("content-type", "text/event-stream")], Body::from_stream(s)).into_response()
    };
    match script {
        Script::Error { status, message } => error_reply(status, &message),
        Script::Complete { prompt, cached, completion, text } if !stream => {
            let body = response_object("completed", &text, Some((prompt, cached, completion)));
            ([("content-type", "application/json")], body.to_string()).into_response()
        }
        Script::Complete { prompt, cached, completion, text } => sse(vec![
            response_event("response.created", 0, json!({"response": response_object("in_progress", "", None)})),
            response_event(
                "response.output_text.delta",
                1,
                json!({"item_id": "msg_fake", "output_index": 0, "content_index": 0, "delta": text}),
            ),
            response_event(
                "response.completed",
                2,
                json!({"response": response_object("completed", &text, Some((prompt, cached, completion)))}),
            ),
        ]),
        Script::GatedStream { prompt, completion } => {
            let mut gate = fake.take_gate();
            let s = async_stream(move |tx: mpsc::UnboundedSender<Bytes>| async move {
                let _ = tx.send(response_event(
                    "response.created",
                    0,
                    json!({"response": response_object("in_progress", "", None)}),
                ));
                let mut seq = 1;
                while gate.recv().await.is_some() {
                    let delta = json!({"item_id": "msg_fake", "output_index": 0, "content_index": 0, "delta": "word "});
                    if tx.send(response_event("response.output_text.delta", seq, delta)).is_err() {
                        return;
                    }
                    seq += 1;
                }
                let done = json!({"response": response_object("completed", "word", Some((prompt, 0, completion)))});
                let _ = tx.send(response_event("response.completed", seq, done));
            });
            ([("content-type", "text/event-stream")], Body::from_stream(s)).into_response()
        }
    }
}

/// `POST /v1/embeddings`: one 3-dimensional vector per input (floats, or base64 of
/// little-endian float32s), `usage.prompt_tokens` from the script's prompt count.
async fn handle_embeddings(State(fake): State<Arc<Fake>>, headers: HeaderMap, body: Bytes) -> Response {
    let (v, script) = receive(&fake, headers, &body).await;
    let prompt = match script {
        Script::Error { status, message } => return error_reply(status, &message),
        Script::Complete { prompt, .. } | Script::GatedStream { prompt, .. } => prompt,
    };
    let n = v["input"].as_array().map(Vec::len).unwrap_or(1);
    let vector = [0.6f32, 0.8, 0.0];
    let embedding = if v["encoding_format"] == "base64" {
        use base64::Engine;
        let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
        json!(base64::engine::general_purpose::STANDARD.encode(bytes))
    } else {
        json!(vector)
    };
    let data: Vec<Value> =
        (0..n).map(|i| json!({"object": "embedding", "index": i, "embedding": embedding.clone()})).collect();
    let body = json!({"object": "list", "data": data, "model": v["model"],
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt}});
    ([("content-type", "application/json")], body.to_string()).into_response()
}

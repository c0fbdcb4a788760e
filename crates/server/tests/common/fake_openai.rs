//! A fake OpenAI upstream speaking the Chat Completions wire format, scripted by the test: it
//! records each request, answers with the usage it is given, and can stream chunk by chunk on
//! the test's command (so a test decides exactly when each chunk leaves).
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
        FakeServer::serve(|fake| Router::new().route("/v1/chat/completions", post(handle)).with_state(fake), "/v1")
            .await
    }
}

fn chunk(content: &str) -> Bytes {
    let c = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]});
    Bytes::from(format!("data: {c}\n\n"))
}

async fn handle(State(fake): State<Arc<Fake>>, headers: HeaderMap, body: Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    fake.record((headers, v.clone()));
    fake.wait_while_paused().await;
    let script = fake.script_or(Script::Complete { prompt: 10, cached: 0, completion: 5, text: "hello".into() });
    let stream = v["stream"] == json!(true);
    let include_usage = v["stream_options"]["include_usage"] == json!(true);
    match script {
        Script::Error { status, message } => {
            let body = json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}});
            (StatusCode::from_u16(status).unwrap(), [("content-type", "application/json")], body.to_string())
                .into_response()
        }
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

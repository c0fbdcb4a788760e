//! A fake Anthropic upstream speaking the Messages API wire format (`POST /v1/messages`, JSON
//! `message` bodies, the `message_start` … `message_stop` event stream, `{"type":"error"}`
//! errors), scripted by the test: it records each request and can stream event by event on the
//! test's command.
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

/// Anthropic's usage numbers: `input` excludes cache reads and writes.
#[derive(Clone, Copy, Debug)]
pub struct AnthropicUsage {
    pub input: u64,
    pub cache_read: u64,
    /// 5-minute cache writes.
    pub cache_write: u64,
    pub output: u64,
    /// 1-hour cache writes (sent in `usage.cache_creation` when non-zero).
    pub cache_write_1h: u64,
}

#[derive(Clone)]
pub enum Script {
    /// Answer with these content blocks (streamed as events when the request streams).
    Answer { content: Vec<Value>, stop_reason: &'static str, usage: AnthropicUsage },
    /// An error status with Anthropic's error object.
    Error { status: u16, kind: &'static str, message: String },
    /// A stream whose text deltas leave one per `()` on the gate; when the gate closes,
    /// `message_delta` (with `usage.output`) and `message_stop` follow.
    GatedStream { usage: AnthropicUsage },
    /// A stream that sends one text delta, then an `error` event.
    StreamThenError { kind: &'static str, message: String },
}

pub type Fake = Scripted<Script, (HeaderMap, Value)>;
pub type FakeAnthropic = FakeServer<Script, (HeaderMap, Value)>;

impl FakeAnthropic {
    pub async fn start() -> FakeAnthropic {
        FakeServer::serve(
            |fake| {
                Router::new()
                    .route("/v1/messages", post(handle))
                    .route("/v1/messages/count_tokens", post(count_tokens))
                    .with_state(fake)
            },
            "",
        )
        .await
    }
}

pub fn text(t: &str) -> Value {
    json!({"type": "text", "text": t})
}

pub fn tool_use(id: &str, name: &str, input: Value) -> Value {
    json!({"type": "tool_use", "id": id, "name": name, "input": input})
}

fn usage_json(u: &AnthropicUsage) -> Value {
    let mut v = json!({"input_tokens": u.input, "cache_creation_input_tokens": u.cache_write + u.cache_write_1h,
        "cache_read_input_tokens": u.cache_read, "output_tokens": u.output});
    if u.cache_write_1h > 0 {
        v["cache_creation"] =
            json!({"ephemeral_5m_input_tokens": u.cache_write, "ephemeral_1h_input_tokens": u.cache_write_1h});
    }
    v
}

pub fn event(v: Value) -> Bytes {
    Bytes::from(format!("event: {}\ndata: {v}\n\n", v["type"].as_str().unwrap()))
}

fn message(model: &Value, content: Vec<Value>, stop: Option<&str>, usage: Value) -> Value {
    json!({"id": "msg_fake01", "type": "message", "role": "assistant", "model": model, "content": content,
        "stop_reason": stop, "stop_sequence": null, "usage": usage})
}

fn start_event(model: &Value, u: &AnthropicUsage) -> Bytes {
    let mut usage = usage_json(u);
    usage["output_tokens"] = json!(1);
    event(json!({"type": "message_start", "message": message(model, vec![], None, usage)}))
}

/// The events of an answer, as Anthropic streams it.
fn answer_events(model: &Value, content: &[Value], stop: &str, u: &AnthropicUsage) -> Vec<Bytes> {
    let mut out = vec![start_event(model, u), event(json!({"type": "ping"}))];
    for (i, block) in content.iter().enumerate() {
        match block["type"].as_str() {
            Some("tool_use") => {
                let mut start = block.clone();
                start["input"] = json!({});
                out.push(event(json!({"type": "content_block_start", "index": i, "content_block": start})));
                out.push(event(json!({"type": "content_block_delta", "index": i,
                    "delta": {"type": "input_json_delta", "partial_json": block["input"].to_string()}})));
            }
            _ => {
                out.push(event(
                    json!({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}}),
                ));
                out.push(event(json!({"type": "content_block_delta", "index": i,
                    "delta": {"type": "text_delta", "text": block["text"]}})));
            }
        }
        out.push(event(json!({"type": "content_block_stop", "index": i})));
    }
    out.push(event(json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
        "usage": {"output_tokens": u.output}})));
    out.push(event(json!({"type": "message_stop"})));
    out
}

fn sse(events: Vec<Bytes>) -> Response {
    let s = futures::stream::iter(events.into_iter().map(Ok::<_, std::convert::Infallible>));
    ([("content-type", "text/event-stream; charset=utf-8")], Body::from_stream(s)).into_response()
}

/// `POST /v1/messages/count_tokens`: `{"input_tokens"}`, the scripted answer's input count.
async fn count_tokens(State(fake): State<Arc<Fake>>, headers: HeaderMap, body: Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    fake.record((headers, v));
    let input = match fake.script_or(Script::Answer { content: vec![], stop_reason: "end_turn", usage: DEFAULT_USAGE })
    {
        Script::Answer { usage, .. } | Script::GatedStream { usage } => usage.input,
        _ => 0,
    };
    ([("content-type", "application/json")], json!({"input_tokens": input}).to_string()).into_response()
}

const DEFAULT_USAGE: AnthropicUsage =
    AnthropicUsage { input: 10, cache_read: 0, cache_write: 0, output: 5, cache_write_1h: 0 };

async fn handle(State(fake): State<Arc<Fake>>, headers: HeaderMap, body: Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    fake.record((headers, v.clone()));
    fake.wait_while_paused().await;
    let script = fake.script_or(Script::Answer {
        content: vec![text("Hello from Claude.")],
        stop_reason: "end_turn",
        usage: AnthropicUsage { input: 10, cache_read: 0, cache_write: 0, output: 5, cache_write_1h: 0 },
    });
    let stream = v["stream"] == json!(true);
    let model = v["model"].clone();
    match script {
        Script::Error { status, kind, message } => {
            let body = json!({"type": "error", "error": {"type": kind, "message": message}});
            (StatusCode::from_u16(status).unwrap(), [("content-type", "application/json")], body.to_string())
                .into_response()
        }
        Script::Answer { content, stop_reason, usage } if !stream => {
            let body = message(&model, content, Some(stop_reason), usage_json(&usage));
            ([("content-type", "application/json")], body.to_string()).into_response()
        }
        Script::Answer { content, stop_reason, usage } => sse(answer_events(&model, &content, stop_reason, &usage)),
        Script::StreamThenError { kind, message } => sse(vec![
            start_event(
                &model,
                &AnthropicUsage { input: 10, cache_read: 0, cache_write: 0, output: 1, cache_write_1h: 0 },
            ),
            event(json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})),
            event(
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Partial"}}),
            ),
            event(json!({"type": "error", "error": {"type": kind, "message": message}})),
        ]),
        Script::GatedStream { usage } => {
            let mut gate = fake.take_gate();
            let s = async_stream(move |tx: mpsc::UnboundedSender<Bytes>| async move {
                let _ = tx.send(start_event(&model, &usage));
                let _ = tx.send(event(
                    json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                ));
                while gate.recv().await.is_some() {
                    let delta = json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "word "}});
                    if tx.send(event(delta)).is_err() {
                        return;
                    }
                }
                let _ = tx.send(event(json!({"type": "content_block_stop", "index": 0})));
                let _ = tx.send(event(json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": usage.output}})));
                let _ = tx.send(event(json!({"type": "message_stop"})));
            });
            ([("content-type", "text/event-stream")], Body::from_stream(s)).into_response()
        }
    }
}

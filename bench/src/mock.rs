//! Canned OpenAI Chat Completions and Anthropic Messages answers for the mock upstream.
//!
//! Everything is rendered once at start-up into `Bytes`; serving a request clones a reference-counted
//! buffer, so the mock costs a few microseconds per request and is never the bottleneck. The shapes
//! follow OpenAI's wire format (`chat.completion`, `chat.completion.chunk` SSE with a final usage chunk
//! whose `choices` is empty, then `data: [DONE]`), which is what Quota's OpenAI adapter parses.

use bytes::Bytes;
use serde_json::json;

/// Model id the mock reports (a dated snapshot id, as OpenAI answers for `gpt-4o-mini`).
pub const MOCK_MODEL: &str = "gpt-4o-mini-2024-07-18";
/// Prompt tokens the mock reports for every request.
pub const PROMPT_TOKENS: u64 = 12;
/// Completion tokens the non-streaming answer reports (below the bench's `max_tokens: 16`, so the
/// gateway never sees an over-report).
pub const COMPLETION_TOKENS: u64 = 9;
const CREATED: u64 = 1_700_000_000;

/// The non-streaming `chat.completion` body.
pub fn completion_body() -> Bytes {
    let body = json!({
        "id": "chatcmpl-bench0000000000000000000001",
        "object": "chat.completion",
        "created": CREATED,
        "model": MOCK_MODEL,
        "system_fingerprint": "fp_bench",
        "choices": [{
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Hello! This is the Quota bench mock.",
                "refusal": null
            },
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": usage(COMPLETION_TOKENS),
    });
    Bytes::from(body.to_string())
}

fn usage(completion_tokens: u64) -> serde_json::Value {
    json!({
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": completion_tokens,
        "total_tokens": PROMPT_TOKENS + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0}
    })
}

fn sse_event(value: &serde_json::Value) -> String {
    format!("data: {value}\n\n")
}

fn chunk(delta: serde_json::Value, finish_reason: Option<&str>) -> serde_json::Value {
    json!({
        "id": "chatcmpl-bench0000000000000000000002",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MOCK_MODEL,
        "system_fingerprint": "fp_bench",
        "choices": [{
            "index": 0,
            "delta": delta,
            "logprobs": null,
            "finish_reason": finish_reason
        }]
    })
}

/// The frames of one SSE answer, each written to the socket as one piece.
///
/// `content` holds `chunks` frames, one content token each (the first also carries
/// `role: assistant`, as OpenAI's first chunk does). The `tail` frame is the `finish_reason` chunk,
/// the usage chunk (`choices: []`, only when the request asked `stream_options.include_usage`, as
/// OpenAI does) and `data: [DONE]`.
#[derive(Clone, Debug)]
pub struct SseFrames {
    pub content: Vec<Bytes>,
    pub tail_with_usage: Bytes,
    pub tail_without_usage: Bytes,
}

impl SseFrames {
    /// Renders `chunks` content frames (at least one).
    pub fn new(chunks: usize) -> Self {
        let chunks = chunks.max(1);
        let content = (0..chunks)
            .map(|i| {
                let delta = if i == 0 {
                    json!({"role": "assistant", "content": "tok", "refusal": null})
                } else {
                    json!({"content": " tok"})
                };
                Bytes::from(sse_event(&chunk(delta, None)))
            })
            .collect();
        let finish = sse_event(&chunk(json!({}), Some("stop")));
        let usage_chunk = sse_event(&json!({
            "id": "chatcmpl-bench0000000000000000000002",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": MOCK_MODEL,
            "system_fingerprint": "fp_bench",
            "choices": [],
            "usage": usage(chunks as u64),
        }));
        let done = "data: [DONE]\n\n";
        SseFrames {
            content,
            tail_with_usage: Bytes::from(format!("{finish}{usage_chunk}{done}")),
            tail_without_usage: Bytes::from(format!("{finish}{done}")),
        }
    }
}

/// The non-streaming Responses API `response` body (OpenAI's wire format), with the same text
/// and usage as [`completion_body`].
pub fn response_body() -> Bytes {
    let body = json!({
        "id": "resp_bench0000000000000000000001",
        "object": "response",
        "created_at": CREATED,
        "status": "completed",
        "model": MOCK_MODEL,
        "output": [{"type": "message", "id": "msg_bench01", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": "Hello! This is the Quota bench mock.", "annotations": []}]}],
        "usage": {"input_tokens": PROMPT_TOKENS, "input_tokens_details": {"cached_tokens": 0},
                  "output_tokens": COMPLETION_TOKENS, "output_tokens_details": {"reasoning_tokens": 0},
                  "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS},
        "parallel_tool_calls": true, "tool_choice": "auto", "tools": [], "error": null
    });
    Bytes::from(body.to_string())
}

/// Anthropic's non-streaming `message` body (Messages API wire format).
pub fn anthropic_message_body() -> Bytes {
    let body = json!({
        "id": "msg_bench0000000000000000000001",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5-20251001",
        "content": [{"type": "text", "text": "Hello! This is the Quota bench mock."}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": COMPLETION_TOKENS,
                  "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
    });
    Bytes::from(body.to_string())
}

fn anthropic_event(name: &str, data: serde_json::Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

impl SseFrames {
    /// Anthropic's event stream: `message_start` and `content_block_start` with the first text
    /// delta, one `content_block_delta` per further frame, then `content_block_stop`,
    /// `message_delta` (output usage) and `message_stop`. Anthropic always reports usage.
    pub fn anthropic(chunks: usize) -> Self {
        let chunks = chunks.max(1);
        let start = anthropic_event(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_bench0000000000000000000002", "type": "message",
                "role": "assistant", "model": "claude-haiku-4-5-20251001", "content": [], "stop_reason": null,
                "stop_sequence": null, "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": 1}}}),
        ) + &anthropic_event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        );
        let delta = |text: &str| {
            anthropic_event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
            )
        };
        let content = (0..chunks)
            .map(|i| Bytes::from(if i == 0 { start.clone() + &delta("tok") } else { delta(" tok") }))
            .collect();
        let tail = anthropic_event("content_block_stop", json!({"type": "content_block_stop", "index": 0}))
            + &anthropic_event(
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                       "usage": {"output_tokens": chunks}}),
            )
            + &anthropic_event("message_stop", json!({"type": "message_stop"}));
        let tail = Bytes::from(tail);
        SseFrames { content, tail_with_usage: tail.clone(), tail_without_usage: tail }
    }
}

/// True when the JSON `body` has `"key": true` somewhere (whitespace allowed around the colon).
///
/// A byte scan instead of a JSON parse: the mock must stay cheap, and inside a JSON string a quote is
/// always escaped, so `"key"` followed by a colon can only be an object key. It can match a nested
/// key of the same name; the bench's request bodies have none.
pub fn json_flag_is_true(body: &[u8], key: &str) -> bool {
    let needle = format!("\"{key}\"");
    let needle = needle.as_bytes();
    let mut from = 0;
    while let Some(pos) = find(&body[from..], needle) {
        let mut rest = &body[from + pos + needle.len()..];
        rest = trim_start(rest);
        if let Some(after_colon) = rest.strip_prefix(b":") {
            if trim_start(after_colon).starts_with(b"true") {
                return true;
            }
        }
        from += pos + needle.len();
    }
    false
}

fn trim_start(mut s: &[u8]) -> &[u8] {
    while let Some((first, rest)) = s.split_first() {
        if first.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    s
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_body_is_an_openai_chat_completion_with_usage() {
        let v: serde_json::Value = serde_json::from_slice(&completion_body()).expect("valid JSON");
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["usage"]["prompt_tokens"], PROMPT_TOKENS);
        assert_eq!(v["usage"]["completion_tokens"], COMPLETION_TOKENS);
        assert_eq!(v["usage"]["total_tokens"], PROMPT_TOKENS + COMPLETION_TOKENS);
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    }

    #[test]
    fn sse_frames_end_with_usage_chunk_then_done() {
        let frames = SseFrames::new(3);
        assert_eq!(frames.content.len(), 3);
        let tail = std::str::from_utf8(&frames.tail_with_usage).expect("utf-8");
        let events: Vec<&str> = tail
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| e.strip_prefix("data: ").expect("data: prefix"))
            .collect();
        assert_eq!(events.len(), 3);
        let finish: serde_json::Value = serde_json::from_str(events[0]).expect("json");
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
        let usage: serde_json::Value = serde_json::from_str(events[1]).expect("json");
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["completion_tokens"], 3);
        assert_eq!(events[2], "[DONE]");
        for frame in &frames.content {
            let text = std::str::from_utf8(frame).expect("utf-8");
            let data = text.strip_prefix("data: ").expect("prefix");
            let v: serde_json::Value = serde_json::from_str(data.trim_end()).expect("json");
            assert_eq!(v["object"], "chat.completion.chunk");
        }
    }

    #[test]
    fn sse_tail_without_usage_has_no_usage_chunk() {
        let frames = SseFrames::new(1);
        let tail = std::str::from_utf8(&frames.tail_without_usage).expect("utf-8");
        assert!(!tail.contains("usage"));
        assert!(tail.ends_with("data: [DONE]\n\n"));
    }

    #[test]
    fn json_flag_scan_finds_true_with_or_without_spaces() {
        assert!(json_flag_is_true(br#"{"model":"m","stream":true}"#, "stream"));
        assert!(json_flag_is_true(br#"{"stream" : 	true}"#, "stream"));
        assert!(!json_flag_is_true(br#"{"stream":false}"#, "stream"));
        assert!(!json_flag_is_true(br#"{"model":"stream"}"#, "stream"));
        assert!(!json_flag_is_true(br#"{"x":"\"stream\": no","stream":false}"#, "stream"));
        assert!(json_flag_is_true(br#"{"stream_options":{"include_usage":true},"stream":true}"#, "include_usage"));
        assert!(!json_flag_is_true(b"", "stream"));
    }
}

//! The sandbox (SPEC §4.4): a provider that never calls anyone. It answers in the route's shape
//! (OpenAI, Anthropic Messages, Gemini) with deterministic synthetic text (same request → same
//! text), counts tokens with the sandbox tokenizer, respects `max_tokens`, calls a tool when
//! tools are offered, and imitates upstream failures on request (`X-Quota-Sandbox-Fault`).
//! Metering, reservation and the ledger treat it exactly like a real upstream.

mod anthropic;
mod embeddings;
mod gemini;
mod openai;
mod responses;
mod synth;

pub use anthropic::prompt_tokens as anthropic_prompt_tokens;
pub use gemini::prompt_tokens as gemini_prompt_tokens;
pub use synth::{fnv1a, plan, Plan, PlannedOutput};

use crate::{Fault, Meter, UpstreamError};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use quota_core::Usage;
use std::sync::Arc;

/// The sandbox adapter. Stateless.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sandbox;

/// Tokens of framing per message and per conversation (the chat formats add about these).
const TOKENS_PER_MESSAGE: u64 = 4;
const TOKENS_PER_CONVERSATION: u64 = 3;

/// The failure a fault imitates before any answer (`disconnect_mid_stream` imitates one later).
fn fault_error(fault: Fault) -> Option<UpstreamError> {
    match fault {
        Fault::UpstreamError => {
            Some(UpstreamError::Status { status: 500, message: "sandbox: simulated provider error".into() })
        }
        Fault::RateLimit => Some(UpstreamError::RateLimited("sandbox: simulated provider rate limit".into())),
        Fault::Timeout => Some(UpstreamError::Timeout),
        Fault::DisconnectMidStream => None,
    }
}

/// `disconnect_mid_stream` on a request that does not stream.
fn disconnected_before_answer() -> UpstreamError {
    UpstreamError::Transport("sandbox: simulated disconnect before the answer completed".into())
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// A response id: the request's hash (stable) and a process-wide counter (unique).
fn response_id(prefix: &str, raw: &[u8]) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}{:016x}{:08x}", synth::fnv1a(raw), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Stream `events` (each with the generated text it carries, for the meter), then report
/// `final_usage` and finish; `held` becomes the meter's held-back final event. With
/// `disconnect_mid_stream`, half the events are sent and the stream breaks.
fn synthetic_stream(
    mut events: Vec<(Bytes, Option<String>)>,
    held: Option<Bytes>,
    meter: Arc<Meter>,
    final_usage: Usage,
    fault: Option<Fault>,
) -> BoxStream<'static, Result<Bytes, UpstreamError>> {
    let disconnect = fault == Some(Fault::DisconnectMidStream);
    if disconnect {
        events.truncate(events.len() / 2);
    }
    let mut held = held;
    futures::stream::iter(events.into_iter().map(Some).chain(std::iter::once(None)))
        .filter_map(move |item| {
            let m = meter.clone();
            let held = if item.is_none() { held.take() } else { None };
            async move {
                match item {
                    Some((bytes, text)) => {
                        if let Some(t) = text {
                            m.count_output(&t);
                        }
                        Some(Ok(bytes))
                    }
                    None if disconnect => {
                        Some(Err(UpstreamError::Transport("sandbox: simulated disconnect mid-stream".into())))
                    }
                    None => {
                        if let Some(h) = held {
                            m.hold_final_event(h);
                        }
                        m.report_usage(final_usage);
                        m.mark_finished();
                        None
                    }
                }
            }
        })
        .boxed()
}

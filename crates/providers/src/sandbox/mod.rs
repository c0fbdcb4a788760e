//! The sandbox (SPEC §4.4): a provider that never calls anyone. It answers in the route's shape
//! with deterministic synthetic text (same request → same text), counts tokens with the
//! sandbox tokenizer, respects `max_tokens`, calls a tool when tools are offered, and imitates
//! upstream failures on request (`X-Quota-Sandbox-Fault`). Metering, reservation and the ledger
//! treat it exactly like a real upstream.

mod openai;
mod synth;

pub use synth::{plan, Plan, PlannedOutput};

/// The sandbox adapter. Stateless.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sandbox;

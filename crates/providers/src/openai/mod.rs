//! The OpenAI Chat Completions shape: the request Quota accepts on `/v1/chat/completions`, the
//! usage fields it meters, and the adapter that forwards to an OpenAI-compatible upstream.

mod adapter;
mod bound;
mod wire;

pub use adapter::{estimate_prompt_tokens, OpenAiAdapter, OpenAiConfig};
pub use wire::*;

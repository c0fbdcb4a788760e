//! The OpenAI shapes: the Chat Completions request Quota accepts on `/v1/chat/completions`,
//! the Responses API's ([`responses`]), the usage fields it meters, and the adapter that
//! forwards both to an OpenAI-compatible upstream.

mod adapter;
mod bound;
pub mod responses;
mod wire;

pub use adapter::{estimate_prompt_tokens, OpenAiAdapter, OpenAiConfig};
pub use wire::*;

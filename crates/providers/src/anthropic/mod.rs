//! Anthropic: the Messages API on Quota's native `/v1/messages` route (forwarded, answered
//! unchanged), and translation of OpenAI-shaped chat requests for `anthropic/…` models, both
//! ways and event by event for streams.
//!
//! Usage trap (reference/prices.md): Anthropic's `input_tokens` excludes
//! `cache_read_input_tokens` and `cache_creation_input_tokens`, so the three map one-to-one to
//! Quota's input, cached and cache-write classes.

mod adapter;
mod bound;
mod translate;
mod wire;

pub use adapter::{AnthropicAdapter, DEFAULT_VERSION};
pub use translate::{completion_from_message, request_from_openai, ChunkTranslator};
pub use wire::*;

//! Google Gemini: `generateContent` and `streamGenerateContent` on Quota's native
//! `/v1beta/models/{model}:…` routes (forwarded, answered unchanged), and translation of
//! OpenAI-shaped chat requests for `google/…` models, both ways and chunk by chunk for streams.
//!
//! Usage traps (reference/prices.md): `promptTokenCount` includes `cachedContentTokenCount`;
//! `thoughtsTokenCount` is not inside `candidatesTokenCount` and is billed as output.

mod adapter;
mod bound;
mod translate;
mod wire;

pub use adapter::{splice_quota_into_chunk, GoogleAdapter};
pub use translate::{completion_from_response, request_from_openai, ChunkTranslator};
pub use wire::*;

//! The inference routes: each is a [`super::pipeline::Route`] — how its requests are parsed,
//! routed, bounded and called, and how its streams end — served by the one pipeline.

pub mod chat;
pub mod embeddings;
pub mod gemini;
pub mod messages;
pub mod responses;

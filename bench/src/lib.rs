//! Shared pieces of Quota's benchmark harness (`bench/`).
//!
//! - [`mock`]: the canned OpenAI answers the mock upstream sends, built once at start-up so a request
//!   costs a clone of `Bytes`, and the cheap request-body scan that decides streaming or not.
//! - [`report`]: the JSON shape `loadgen` prints and `bench_report` reads.
//! - [`procfs`]: CPU time and peak RSS of a process, read from `/proc` (Linux only).
//!
//! This crate measures the gateway; it is not part of it, and nothing in `crates/` depends on it.

pub mod mock;
pub mod procfs;
pub mod report;

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

/// The tokio runtime of a bench binary: one thread runs everything on the calling thread (best
/// when the process is pinned to one core), more use a multi-thread runtime.
pub fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    }
    .context("building the tokio runtime")
}

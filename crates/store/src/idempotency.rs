//! Idempotency-Key records (SPEC §0, §4.3.7): the first response to a (caller, key) is kept for
//! 24 h and replayed; a different body under the same key is a conflict.

/// How long a key is remembered.
pub const IDEMPOTENCY_TTL_MS: i64 = 24 * 3600 * 1000;

/// What `Store::idempotency_begin` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyStart {
    /// First use: the caller proceeds and later completes the record.
    New,
    /// An earlier claim went stale unfinished (its process died). The caller proceeds, but must
    /// first check whether that attempt's charge was committed.
    Retaken,
    /// Same key, same body, finished: replay this.
    Replay { status: u16, content_type: String, body: Vec<u8> },
    /// Same key, different body.
    Conflict,
    /// Same key, same body, still running (or its process died mid-request).
    InProgress,
}

/// The finished response to store under a key, written with the request's charge.
#[derive(Debug, Clone)]
pub struct IdempotencyCompletion {
    pub scope: String,
    pub key: String,
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

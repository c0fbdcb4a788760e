//! `Idempotency-Key` on inference requests (SPEC §0, §4.3.7). A claim is taken before the
//! request runs. If the request charged anything (a success, or a stream cut short after some
//! output), its response is stored and replayed; if it charged nothing, the claim is released
//! before the error is answered, so a retry (say after a 402 and a top-up) runs. Charges under a
//! key use transfer ids derived from it: even if a crash loses the stored response, the key is
//! never charged twice (the retry is refused instead of answered for free).

use crate::app::SharedState;
use crate::error::{internal, ApiError};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use quota_store::idempotency::{IdempotencyCompletion, IdempotencyStart};
use sha2::{Digest, Sha256};

/// Longest key accepted.
pub const IDEMPOTENCY_KEY_MAX_LEN: usize = 255;

/// A claim on an idempotency key; releases itself when dropped unfinished.
pub struct Claim {
    state: SharedState,
    scope: String,
    key: String,
    done: bool,
}

/// What `begin` decided.
pub enum Begin {
    /// No key on the request.
    None,
    /// Run the request under this claim.
    Claimed(Claim),
    /// Answer with the stored response.
    Replay(Response),
}

impl Claim {
    /// Transfer-id prefix for this key's charge: the same key always yields the same id.
    pub fn charge_id(&self) -> String {
        let digest = Sha256::digest(format!("{}\u{0}{}", self.scope, self.key).as_bytes());
        format!("ledg_idem_{}", &hex::encode(digest)[..32])
    }

    /// Release the claim now (the request charged nothing), before the error is answered.
    pub async fn abandon(mut self) {
        self.done = true;
        if let Err(e) = self.state.store.idempotency_abandon(&self.scope, &self.key).await {
            tracing::error!(error = %e, "could not release an idempotency key");
        }
    }

    /// Leave the claim in place unfinished (its earlier attempt was charged; see `begin`).
    pub fn keep(mut self) {
        self.done = true;
    }

    /// Store the response of a request that charged, for replay.
    pub async fn complete(mut self, status: u16, content_type: &str, body: Vec<u8>) {
        self.done = true;
        let completion = IdempotencyCompletion {
            scope: self.scope.clone(),
            key: self.key.clone(),
            status,
            content_type: content_type.into(),
            body,
        };
        if let Err(e) = self.state.store.idempotency_complete(&completion).await {
            tracing::error!(error = %e, "could not store an idempotent response");
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (state, scope, key) = (self.state.clone(), std::mem::take(&mut self.scope), std::mem::take(&mut self.key));
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = state.store.idempotency_abandon(&scope, &key).await {
                    tracing::error!(error = %e, "could not release an idempotency key");
                }
            });
        }
    }
}

/// What a key's request is compared by: SHA-256 over each part, length-prefixed.
pub fn request_hash(request: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in request {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hex::encode(hasher.finalize())
}

/// Claim the request's Idempotency-Key, if it has one. `request` is what identifies the request
/// (its path and body: the path names the model on Gemini's routes), hashed in order.
pub async fn begin(
    state: &SharedState,
    headers: &HeaderMap,
    scope: String,
    request: &[&[u8]],
) -> Result<Begin, ApiError> {
    let Some(raw) = headers.get("idempotency-key") else {
        return Ok(Begin::None);
    };
    let key = raw
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= IDEMPOTENCY_KEY_MAX_LEN)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX_LEN} visible ASCII characters"
            ))
        })?
        .to_string();
    let request_hash = request_hash(request);
    // A claim whose process died before charging may be retaken after every timeout passed.
    let stale_after_ms = (state.config.upstream_timeout_secs as i64 + 120) * 1000;
    match state
        .store
        .idempotency_begin(&scope, &key, &request_hash, stale_after_ms)
        .await
        .map_err(internal("idempotency begin"))?
    {
        IdempotencyStart::New => Ok(Begin::Claimed(Claim { state: state.clone(), scope, key, done: false })),
        IdempotencyStart::Retaken => {
            let claim = Claim { state: state.clone(), scope, key, done: false };
            let charged = state
                .store
                .transfer_exists(&format!("{}_base", claim.charge_id()))
                .await
                .map_err(internal("idempotency check"))?;
            if charged {
                claim.keep();
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "idempotency_conflict",
                    "the request under this Idempotency-Key was charged, but its response was lost when the gateway stopped",
                )
                .with_hint("the charge stands and will not be repeated; send the request again with a new key"));
            }
            Ok(Begin::Claimed(claim))
        }
        IdempotencyStart::Replay { status, content_type, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let mut resp = (status, body).into_response();
            if let Ok(ct) = HeaderValue::from_str(&content_type) {
                resp.headers_mut().insert("content-type", ct);
            }
            resp.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            Ok(Begin::Replay(resp))
        }
        IdempotencyStart::Conflict => Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_conflict",
            "this Idempotency-Key was already used with a different request body",
        )),
        IdempotencyStart::InProgress => Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_conflict",
            "a request with this Idempotency-Key is still in progress",
        )
        .with_hint("retry after it finishes to get its response")),
    }
}

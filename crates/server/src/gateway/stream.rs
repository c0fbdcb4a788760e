//! Phases *meter*, *settle* and *record* for streams. Chunks are forwarded as they arrive; when
//! the upstream ends, the charge is committed before the final chunk (usage + `quota`) and the
//! terminator are sent (SPEC §4.3(6)). If the upstream fails mid-stream, what was produced is
//! charged and an error event ends the stream; if nothing was produced, nothing is charged. If
//! the client goes away, the stream is dropped — which stops the upstream — and its guard
//! charges what the provider billed: its usage if it arrived, else the prompt plus the tokens
//! counted in the forwarded chunks (SPEC §4.3(5)), recorded as `client_disconnected`.
//!
//! The settlement at the end of a stream runs as a task of its own that the stream waits for,
//! so a client hanging up during it cannot cut it short.
//!
//! Under an Idempotency-Key, whatever the stream charged is stored for replay (the bytes sent,
//! plus the error event if it ended in one); a stream that charged nothing releases its key.

use super::idempotency::Claim;
use super::settle::{Billing, QuotaObject};
use crate::error::ApiError;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use quota_core::Usage;
use quota_providers::{Meter, UpstreamError};
use quota_store::ledger::Hold;
use std::sync::Arc;

/// How a route's stream ends, in its own wire shape.
pub trait StreamShape: Send + Sync + 'static {
    /// The events after a settled stream: usage and `quota`, then the terminator.
    fn final_events(&self, usage: &Usage, quota: &QuotaObject, meter: &Meter) -> Bytes;
    /// An in-band error that ends the stream.
    fn error_event(&self, error: &ApiError) -> Bytes;
}

/// A hold waiting for its stream to end, with the idempotency claim and the bytes sent so far.
struct Pending {
    hold: Hold,
    billing: Billing,
    meter: Arc<Meter>,
    /// The route's shape, for an error event if the settlement itself fails.
    shape: Arc<dyn StreamShape>,
    claim: Option<(Claim, Vec<u8>)>,
}

impl Pending {
    /// Settle what was produced — or, when `billed` (the client left after the provider
    /// accepted the request), what the provider bills even without output — else release
    /// everything. Stores or releases the idempotency claim accordingly, with `tail` appended
    /// to the stored bytes. Returns the bytes that end the stream.
    async fn end(
        self,
        status: &'static str,
        billed: bool,
        tail: impl FnOnce(Option<&QuotaObject>, &Usage) -> Bytes,
    ) -> Bytes {
        let Pending { hold, billing, meter, shape, claim } = self;
        metrics::histogram!("quota_stream_duration_seconds", "provider" => billing.model.provider.as_str())
            .record(billing.started.elapsed().as_secs_f64());
        let usage = meter.usage();
        let produced = billed || meter.reported().is_some() || usage.output_tokens > 0;
        let quota = if produced {
            match billing.settle(hold, usage, status).await {
                Ok(q) => Some(q),
                Err(e) => {
                    if let Some((c, _)) = claim {
                        c.abandon().await;
                    }
                    return shape.error_event(&e);
                }
            }
        } else {
            drop(hold);
            billing.record_failure(status).await;
            None
        };
        let tail = tail(quota.as_ref(), &usage);
        if let Some((c, mut buf)) = claim {
            if quota.is_some() {
                buf.extend_from_slice(&tail);
                c.complete(200, "text/event-stream", buf).await;
            } else {
                c.abandon().await;
            }
        }
        tail
    }
}

/// Run a stream's settlement as its own task and wait for it: if the client leaves meanwhile,
/// the stream is dropped but the settlement (and its idempotency claim) still finishes.
async fn detached(end: impl std::future::Future<Output = Bytes> + Send + 'static) -> Bytes {
    tokio::spawn(end).await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "a stream's settlement failed");
        Bytes::new()
    })
}

struct SettleOnDrop(Option<Pending>);

impl Drop for SettleOnDrop {
    fn drop(&mut self) {
        let Some(p) = self.0.take() else { return };
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        handle.spawn(async move {
            tracing::info!(request_id = %p.billing.request_id, "client disconnected mid-stream; charging what was produced");
            p.end("client_disconnected", true, |_, _| Bytes::new()).await;
        });
    }
}

struct State {
    events: BoxStream<'static, Result<Bytes, UpstreamError>>,
    guard: SettleOnDrop,
    shape: Arc<dyn StreamShape>,
    finished: bool,
    /// Whether a chunk went out yet (time to first token).
    started_sending: bool,
}

/// Wrap an adapter's event stream with settlement. The returned stream is the response body.
pub fn billed_stream(
    events: BoxStream<'static, Result<Bytes, UpstreamError>>,
    meter: Arc<Meter>,
    hold: Hold,
    billing: Billing,
    shape: Arc<dyn StreamShape>,
    claim: Option<Claim>,
) -> BoxStream<'static, Result<Bytes, std::convert::Infallible>> {
    let pending = Pending { hold, billing, meter, shape: shape.clone(), claim: claim.map(|c| (c, Vec::new())) };
    let state = State { events, guard: SettleOnDrop(Some(pending)), shape, finished: false, started_sending: false };
    futures::stream::unfold(state, |mut st| async move {
        if st.finished {
            return None;
        }
        let out = match st.events.next().await {
            Some(Ok(bytes)) => {
                if let (false, Some(p)) = (st.started_sending, st.guard.0.as_ref()) {
                    st.started_sending = true;
                    metrics::histogram!("quota_time_to_first_token_seconds", "provider" => p.billing.model.provider.as_str())
                        .record(p.billing.started.elapsed().as_secs_f64());
                }
                if let Some(Pending { claim: Some((_, buf)), .. }) = st.guard.0.as_mut() {
                    buf.extend_from_slice(&bytes);
                }
                return Some((Ok(bytes), st));
            }
            Some(Err(e)) => {
                st.finished = true;
                let pending = st.guard.0.take()?;
                let error = ApiError::from(e);
                let event = st.shape.error_event(&error);
                detached(pending.end(error.code, false, |_, _| event)).await
            }
            None => {
                st.finished = true;
                let pending = st.guard.0.take()?;
                let shape = st.shape.clone();
                let meter = pending.meter.clone();
                detached(pending.end("succeeded", false, move |quota, usage| match quota {
                    Some(q) => shape.final_events(usage, q, &meter),
                    None => shape.error_event(&ApiError::new(
                        axum::http::StatusCode::BAD_GATEWAY,
                        "upstream_error",
                        "the provider ended the stream without any output",
                    )),
                }))
                .await
            }
        };
        Some((Ok(out), st))
    })
    .boxed()
}

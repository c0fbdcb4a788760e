//! Phases *meter*, *settle* and *record* for streams. Chunks are forwarded as they arrive; when
//! the upstream ends, the charge is committed before the final chunk (usage + `quota`) and the
//! terminator are sent (SPEC §4.3.6). If the upstream fails mid-stream, what was produced is
//! charged and an error event ends the stream; if nothing was produced, nothing is charged. If
//! the client goes away, the stream is dropped and its guard settles what was produced.

use super::idempotency::Claim;
use super::{Billing, QuotaObject};
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

/// A hold waiting for its stream to end; settles on drop if the stream did not finish.
struct Pending {
    hold: Hold,
    billing: Billing,
    meter: Arc<Meter>,
}

struct SettleOnDrop(Option<Pending>);

impl Drop for SettleOnDrop {
    fn drop(&mut self) {
        let Some(p) = self.0.take() else { return };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        handle.spawn(async move {
            let usage = p.meter.usage();
            if produced(&p.meter, &usage) {
                tracing::info!(request_id = %p.billing.request_id, "client disconnected mid-stream; charging what was produced");
                let _ = p.billing.settle(p.hold, usage, "client_disconnected").await;
            } else {
                drop(p.hold);
                p.billing.record_failure("client_disconnected").await;
            }
        });
    }
}

/// Whether anything billable was produced: the upstream reported usage, or output was counted.
fn produced(meter: &Meter, usage: &Usage) -> bool {
    meter.reported().is_some() || usage.output_tokens > 0
}

struct State {
    events: BoxStream<'static, Result<Bytes, UpstreamError>>,
    guard: SettleOnDrop,
    shape: Arc<dyn StreamShape>,
    claim: Option<(Claim, Vec<u8>)>,
    finished: bool,
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
    let state = State {
        events,
        guard: SettleOnDrop(Some(Pending {
            hold,
            billing,
            meter,
        })),
        shape,
        claim: claim.map(|c| (c, Vec::new())),
        finished: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        if st.finished {
            return None;
        }
        let item = st.events.next().await;
        let out = match item {
            Some(Ok(bytes)) => {
                if let Some((_, buf)) = st.claim.as_mut() {
                    buf.extend_from_slice(&bytes);
                }
                return Some((Ok(bytes), st));
            }
            Some(Err(e)) => {
                st.finished = true;
                let p = st.guard.0.take()?;
                let usage = p.meter.usage();
                let error = ApiError::from(e);
                if produced(&p.meter, &usage) {
                    let _ = p.billing.settle(p.hold, usage, error.code).await;
                } else {
                    drop(p.hold);
                    p.billing.record_failure(error.code).await;
                }
                st.claim = None;
                st.shape.error_event(&error)
            }
            None => {
                st.finished = true;
                let p = st.guard.0.take()?;
                let usage = p.meter.usage();
                match p.billing.settle(p.hold, usage, "succeeded").await {
                    Ok(quota) => {
                        let tail = st.shape.final_events(&usage, &quota, &p.meter);
                        if let Some((claim, mut buf)) = st.claim.take() {
                            buf.extend_from_slice(&tail);
                            claim.complete(200, "text/event-stream", buf).await;
                        }
                        tail
                    }
                    Err(e) => {
                        st.claim = None;
                        st.shape.error_event(&e)
                    }
                }
            }
        };
        Some((Ok(out), st))
    })
    .boxed()
}

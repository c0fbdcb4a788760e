//! One inference pipeline (DESIGN §1): [`serve`] runs admit → limit → parse → route →
//! idempotency → reserve → forward → meter → settle → record, in that order, for every route;
//! a [`Route`] supplies only what differs. A new inference endpoint is a new `Route`, never a
//! new sequence of phases.
//!
//! From *forward* on, the request runs as a task of its own, detached from the client's
//! connection, and the handler waits for it: a client that hangs up after the request went
//! upstream still pays what the provider bills (SPEC §4.3(5)) — the non-streaming answer is
//! read to its end and settled, a stream is stopped and what it produced is charged — and a
//! request under an Idempotency-Key always completes its claim, so a retry replays the first
//! answer instead of running (and calling the provider) again (SPEC §4.3(7)).

use super::idempotency::{self, Begin, Claim};
use super::inbound::Inbound;
use super::reserve::reserve;
use super::settle::{failure_status, Billing};
use super::stream::{billed_stream, StreamShape};
use super::{limit, sandbox_fault};
use crate::auth::Principal;
use crate::error::ApiError;
use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::future::BoxFuture;
use quota_core::hold::HoldBound;
use quota_core::Model;
use quota_providers::json::splice_quota;
use quota_providers::{ChatResponse, Fault, UpstreamError};
use quota_store::ledger::Hold;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// What one inference route brings to the pipeline. Each method is one phase's route-specific
/// part; none sequences phases.
pub trait Route: Send + Sync + Sized + 'static {
    /// The parsed request (with whatever else the route read from the URL or headers).
    type Request: Send + Sync + 'static;
    /// The adapter that serves the request (a provider's, or the sandbox).
    type Adapter: ?Sized + Send + Sync + 'static;

    /// A credential this route also accepts from the URL (Gemini's `?key=`).
    fn key_param(&self) -> Option<&str> {
        None
    }

    /// Phase *parse*: the request, or 400 saying what is wrong with it.
    fn parse(&self, inbound: &Inbound) -> Result<Self::Request, ApiError>;

    /// Phase *route*: the model and the adapter that serves it for this principal.
    fn route(
        &self,
        inbound: &Inbound,
        principal: &Principal,
        request: &Self::Request,
    ) -> Result<(Arc<Model>, Arc<Self::Adapter>), ApiError>;

    /// The most the request can use (the hold's bound), from the parsed request.
    fn bounds(&self, call: Call<'_, Self>) -> HoldBound;

    /// Phase *forward*: the adapter's call.
    fn call<'a>(&'a self, call: Call<'a, Self>) -> BoxFuture<'a, Result<ChatResponse, UpstreamError>>;

    /// How this route's streams end (usage and `quota`, or an in-band error), in its shape.
    fn shape(&self, call: Call<'_, Self>, request_id: &str) -> Arc<dyn StreamShape>;
}

/// One routed request as a route's phases see it.
pub struct Call<'a, R: Route> {
    pub adapter: &'a R::Adapter,
    pub model: &'a Arc<Model>,
    pub request: &'a R::Request,
    /// The client's raw body, from which adapters forward the allowed fields.
    pub raw: &'a Bytes,
    pub fault: Option<Fault>,
}

impl<R: Route> Clone for Call<'_, R> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<R: Route> Copy for Call<'_, R> {}

impl<'a, R: Route> Call<'a, R> {
    /// The adapter's view of this call on a provider's native route, for `request` (the
    /// route's parsed request, or the part of it the adapter reads); no version or beta header.
    pub fn native<Q>(self, request: &'a Q) -> quota_providers::NativeCall<'a, Q> {
        let Call { model, raw, fault, .. } = self;
        quota_providers::NativeCall { model, request, raw, version: None, beta: None, fault }
    }
}

/// Serve one inference request through every phase. Whatever it answers, success or error,
/// carries the rate-limit headers once the limit phase ran (SPEC §7).
pub async fn serve<R: Route>(route: R, inbound: Inbound) -> Response {
    let state = inbound.state.clone();
    let admitted = match route.key_param() {
        Some(key) => crate::auth::admit_with_key_param(&state, &inbound.headers, Some(key)).await,
        None => crate::auth::admit(&state, &inbound.headers).await,
    };
    let principal = match admitted {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let limited = match limit(&state, &principal).instrument(tracing::debug_span!("limit")).await {
        Ok(l) => l,
        Err(e) => return e.into_response(),
    };
    let answer = admitted_request(route, inbound, principal).await;
    limited.apply(answer.unwrap_or_else(IntoResponse::into_response))
}

/// Phases *parse* to *reserve* on the client's connection, then the rest detached from it.
async fn admitted_request<R: Route>(route: R, inbound: Inbound, principal: Principal) -> Result<Response, ApiError> {
    let request = route.parse(&inbound)?;
    let (model, adapter) = route.route(&inbound, &principal, &request)?;
    let fault = sandbox_fault(&inbound.headers, &principal)?;
    let bound = route.bounds(Call { adapter: &*adapter, model: &model, request: &request, raw: &inbound.body, fault });
    let state = inbound.state.clone();
    let identity: [&[u8]; 2] = [inbound.path.as_bytes(), &inbound.body];
    let claim = match idempotency::begin(&state, &inbound.headers, principal.idempotency_scope(), &identity).await? {
        Begin::Replay(resp) => return Ok(resp),
        Begin::Claimed(c) => Some(c),
        Begin::None => None,
    };
    let hold = match reserve(&state, &principal, &model, &bound).instrument(tracing::debug_span!("reserve")).await {
        Ok(h) => h,
        Err(e) => {
            // Nothing was charged: release the key before answering, so a retry can run.
            if let Some(c) = claim {
                c.abandon().await;
            }
            return Err(e);
        }
    };
    let charge_id = claim
        .as_ref()
        .map(Claim::charge_id)
        .unwrap_or_else(|| quota_core::ids::new_ordered_id("ledg_", quota_store::clock::now_us()));
    let billing = Billing {
        state,
        principal,
        model: model.clone(),
        request_id: inbound.request_id,
        client_request_id: inbound.client_request_id,
        endpoint: inbound.endpoint,
        charge_id,
        started: inbound.started,
        exchange: inbound.exchange,
    };
    let watch = ClientWatch { gone: Arc::default(), state: billing.state.clone(), armed: true };
    let gone = watch.gone.clone();
    let flight = Flight { route, request, model, adapter, raw: inbound.body, fault, hold, claim, billing };
    let answer = tokio::spawn(flight.fly(gone).in_current_span()).await;
    watch.disarm();
    answer.unwrap_or_else(|e| {
        tracing::error!(error = %e, "an inference task failed");
        Err(ApiError::internal())
    })
}

/// Sets `gone` when the client's connection goes away (its handler is dropped) while the
/// request is in flight; disarmed once the flight answered.
struct ClientWatch {
    gone: Arc<AtomicBool>,
    state: crate::app::SharedState,
    armed: bool,
}

impl ClientWatch {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for ClientWatch {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.gone.store(true, Ordering::Relaxed);
        metrics::counter!("quota_client_disconnects_total").increment(1);
        self.state.test_hooks.client_hung_up();
    }
}

/// A reserved request from *forward* to *record*: everything it needs, owned, so it can finish
/// without the connection that started it.
struct Flight<R: Route> {
    route: R,
    request: R::Request,
    model: Arc<Model>,
    adapter: Arc<R::Adapter>,
    raw: Bytes,
    fault: Option<Fault>,
    hold: Hold,
    claim: Option<Claim>,
    billing: Billing,
}

impl<R: Route> Flight<R> {
    async fn fly(self, client_gone: Arc<AtomicBool>) -> Result<Response, ApiError> {
        let Flight { route, request, model, adapter, raw, fault, hold, claim, billing } = self;
        let call = Call { adapter: &*adapter, model: &model, request: &request, raw: &raw, fault };
        let shape = route.shape(call, &billing.request_id);
        let provider = model.provider.as_str();
        let upstream = tracing::debug_span!("upstream", provider, time_to_first_byte_ms = tracing::field::Empty);
        let called = Instant::now();
        let answer = route.call(call).instrument(upstream.clone()).await;
        // A stream's call returns with the provider's response headers; a complete answer with its body.
        upstream.record("time_to_first_byte_ms", called.elapsed().as_millis() as u64);
        metrics::histogram!("quota_upstream_latency_seconds", "provider" => provider)
            .record(called.elapsed().as_secs_f64());
        match answer {
            Err(e) => {
                drop(hold);
                let error = ApiError::from(e);
                billing.record_failure(failure_status(&error)).await;
                if let Some(c) = claim {
                    c.abandon().await;
                }
                Err(error)
            }
            Ok(ChatResponse::Complete { body, usage }) => {
                let status = if client_gone.load(Ordering::Relaxed) { "client_disconnected" } else { "succeeded" };
                complete(billing, hold, claim, body, usage, status).await
            }
            Ok(ChatResponse::Stream { events, meter }) => {
                let stream = billed_stream(events, meter, hold, billing, shape, claim);
                Ok(sse_response(Body::from_stream(stream)))
            }
        }
    }
}

/// A complete answer: settle it, add `quota` to its body, store it for its Idempotency-Key.
async fn complete(
    billing: Billing,
    hold: Hold,
    claim: Option<Claim>,
    body: Bytes,
    usage: quota_core::Usage,
    status: &str,
) -> Result<Response, ApiError> {
    let quota = match billing.settle(hold, usage, status).await {
        Ok(q) => q,
        Err(e) => {
            if let Some(c) = claim {
                c.abandon().await;
            }
            return Err(e);
        }
    };
    let Some(out) = splice_quota(&body, &quota.to_json()) else {
        tracing::error!(request_id = %billing.request_id, "the provider's body is not a JSON object");
        let error = ApiError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "the provider returned a body that is not a JSON object",
        );
        // The request was charged: a retry under its key gets this answer again, not a second run.
        if let Some(c) = claim {
            c.complete(error.status.as_u16(), "application/json", error.body_json().to_string().into_bytes()).await;
        }
        return Err(error);
    };
    if let Some(c) = claim {
        c.complete(200, "application/json", out.clone()).await;
    }
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], out).into_response())
}

pub fn sse_response(body: Body) -> Response {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

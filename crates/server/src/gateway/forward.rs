//! Phases *reserve* → *forward* → *meter* → *settle* → *record* for one admitted and routed
//! inference request, whatever its route's shape: the route parses its body, picks the adapter
//! and hands over the adapter's call; this runs it under the request's Idempotency-Key, adds the
//! `quota` object to a complete body, or wraps a stream with its route's [`StreamShape`].

use super::idempotency::{self, Begin, Claim};
use super::stream::{billed_stream, StreamShape};
use super::{failure_status, reserve, Billing};
use crate::app::SharedState;
use crate::auth::Principal;
use crate::body::RawBody;
use crate::error::ApiError;
use crate::request_id::RequestId;
use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use quota_core::Model;
use quota_providers::json::splice_quota;
use quota_providers::{ChatResponse, UpstreamError};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

/// What every inference handler reads from its HTTP request: the state, the request id, the
/// headers (credentials, Idempotency-Key, sandbox fault) and the raw body.
pub struct Inbound {
    pub state: SharedState,
    pub request_id: String,
    /// The URL path (part of the request's identity for its Idempotency-Key).
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub started: Instant,
}

impl FromRequest<SharedState> for Inbound {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &SharedState) -> Result<Self, Self::Rejection> {
        let started = Instant::now();
        let (mut parts, body) = req.into_parts();
        let headers = std::mem::take(&mut parts.headers);
        let path = parts.uri.path().to_string();
        let request_id = match parts.extensions.get::<RequestId>() {
            Some(RequestId(id)) => id.clone(),
            None => quota_core::ids::new_ordered_id("req_", quota_store::clock::now_us()),
        };
        let RawBody(body) = RawBody::from_request(Request::from_parts(parts, body), state).await?;
        Ok(Inbound { state: state.clone(), request_id, path, headers, body, started })
    }
}

impl Inbound {
    /// Phase *limit* around the rest of an admitted request: a refusal is 429 before anything
    /// else happens; otherwise `rest` runs and whatever it answers, success or error, carries
    /// the rate-limit headers (SPEC §7).
    pub async fn limited<F, Fut>(self, principal: Principal, rest: F) -> Result<Response, ApiError>
    where
        F: FnOnce(Inbound, Principal) -> Fut,
        Fut: Future<Output = Result<Response, ApiError>>,
    {
        let limited = crate::gateway::limit(&self.state, &principal).await?;
        Ok(limited.apply(rest(self, principal).await.unwrap_or_else(axum::response::IntoResponse::into_response)))
    }

    /// Run the admitted and routed request (see [`Inference::run`]).
    pub async fn run(
        &self,
        principal: Principal,
        model: Arc<Model>,
        bounds: Bounds,
        shape: Arc<dyn StreamShape>,
        call: impl Future<Output = Result<ChatResponse, UpstreamError>>,
    ) -> Result<Response, ApiError> {
        let inference = Inference {
            state: self.state.clone(),
            principal,
            model,
            request_id: self.request_id.clone(),
            started: self.started,
        };
        let request: [&[u8]; 2] = [self.path.as_bytes(), &self.body];
        inference.run(&self.headers, &request, bounds, shape, call).await
    }
}

/// An inference request after *admit* and *route*.
pub struct Inference {
    pub state: SharedState,
    pub principal: Principal,
    pub model: Arc<Model>,
    pub request_id: String,
    pub started: Instant,
}

/// What the route knows before the call: its bounds and how its streams end.
pub struct Bounds {
    /// The most prompt tokens the request can be billed for (the adapter's bound).
    pub prompt_tokens_max: u64,
    /// The most output tokens, all choices together.
    pub output_tokens_max: u64,
}

impl Inference {
    /// Run the request (`request`: its identity for the Idempotency-Key, see
    /// [`idempotency::begin`]): replay it if its Idempotency-Key already answered; else reserve, let
    /// `call` reach the adapter, and settle. `call` is not polled before the hold is taken.
    pub async fn run(
        self,
        headers: &HeaderMap,
        request: &[&[u8]],
        bounds: Bounds,
        shape: Arc<dyn StreamShape>,
        call: impl Future<Output = Result<ChatResponse, UpstreamError>>,
    ) -> Result<Response, ApiError> {
        let scope = self.principal.idempotency_scope();
        let mut claim = match idempotency::begin(&self.state, headers, scope, request).await? {
            Begin::Replay(resp) => return Ok(resp),
            Begin::Claimed(c) => Some(c),
            Begin::None => None,
        };
        match self.forward(bounds, shape, call, &mut claim).await {
            Ok(resp) => Ok(resp),
            Err(e) => {
                // Nothing was charged: release the key before answering, so a retry can run.
                if let Some(c) = claim.take() {
                    c.abandon().await;
                }
                Err(e)
            }
        }
    }

    /// Takes the idempotency claim when the request charges; leaves it in `claim` when it fails
    /// without charging.
    async fn forward(
        self,
        bounds: Bounds,
        shape: Arc<dyn StreamShape>,
        call: impl Future<Output = Result<ChatResponse, UpstreamError>>,
        claim: &mut Option<Claim>,
    ) -> Result<Response, ApiError> {
        let Inference { state, principal, model, request_id, started } = self;
        let hold = reserve(&state, &principal, &model, bounds.prompt_tokens_max, bounds.output_tokens_max).await?;
        let charge_id = claim
            .as_ref()
            .map(|c| c.charge_id())
            .unwrap_or_else(|| quota_core::ids::new_ordered_id("ledg_", quota_store::clock::now_us()));
        let billing = Billing { state, principal, model, request_id, charge_id, started };
        match call.await {
            Err(e) => {
                drop(hold);
                let error = ApiError::from(e);
                billing.record_failure(failure_status(&error)).await;
                Err(error)
            }
            Ok(ChatResponse::Complete { body, usage }) => {
                let quota = billing.settle(hold, usage, "succeeded").await?;
                let out = splice_quota(&body, &quota.to_json()).ok_or_else(|| {
                    tracing::error!(request_id = %billing.request_id, "the provider's body is not a JSON object");
                    ApiError::new(
                        StatusCode::BAD_GATEWAY,
                        "upstream_error",
                        "the provider returned a body that is not a JSON object",
                    )
                })?;
                if let Some(c) = claim.take() {
                    c.complete(200, "application/json", out.clone()).await;
                }
                Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], out).into_response())
            }
            Ok(ChatResponse::Stream { events, meter }) => {
                let stream = billed_stream(events, meter, hold, billing, shape, claim.take());
                Ok(sse_response(Body::from_stream(stream)))
            }
        }
    }
}

pub fn sse_response(body: Body) -> Response {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

//! What every inference handler reads from its HTTP request before the phases run: the state,
//! the request ids, the path, the headers (credentials, Idempotency-Key, sandbox fault) and the
//! raw body (kept as `Bytes`: forwarded and hashed without copies).

use crate::app::SharedState;
use crate::body::RawBody;
use crate::error::ApiError;
use crate::request_id::{new_request_id, ClientRequestId, RequestId};
use axum::extract::{FromRequest, MatchedPath, Request};
use axum::http::HeaderMap;
use bytes::Bytes;
use std::time::Instant;

pub struct Inbound {
    pub state: SharedState,
    /// Quota's own `req_…` id: keys the usage record and the charge.
    pub request_id: String,
    /// The client's `x-request-id`, stored beside the record, never a key.
    pub client_request_id: Option<String>,
    /// The URL path (part of the request's identity for its Idempotency-Key).
    pub path: String,
    /// The route template (`/v1/chat/completions`, `/v1beta/models/{model}:generateContent`):
    /// `balance.updated`'s `endpoint` (SPEC §14).
    pub endpoint: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub started: Instant,
    /// The request's trace span and access-log note (`telemetry`).
    pub exchange: crate::telemetry::Exchange,
}

impl FromRequest<SharedState> for Inbound {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &SharedState) -> Result<Self, Self::Rejection> {
        let started = Instant::now();
        let (mut parts, body) = req.into_parts();
        let headers = std::mem::take(&mut parts.headers);
        let path = parts.uri.path().to_string();
        let endpoint = route_template(parts.extensions.get::<MatchedPath>().map(MatchedPath::as_str), &path);
        let request_id = match parts.extensions.get::<RequestId>() {
            Some(RequestId(id)) => id.clone(),
            None => new_request_id(),
        };
        let client_request_id = parts.extensions.get::<ClientRequestId>().map(|c| c.0.clone());
        let exchange = parts.extensions.get::<crate::telemetry::Exchange>().cloned().unwrap_or_default();
        let RawBody(body) = RawBody::from_request(Request::from_parts(parts, body), state).await?;
        Ok(Inbound {
            state: state.clone(),
            request_id,
            client_request_id,
            path,
            endpoint,
            headers,
            body,
            started,
            exchange,
        })
    }
}

/// The route's template, with Gemini's `{*model_action}` written as `{model}:<action>`.
fn route_template(matched: Option<&str>, path: &str) -> String {
    match matched {
        Some(t) if t.ends_with("{*model_action}") => {
            let prefix = t.trim_end_matches("{*model_action}");
            match path.rsplit_once(':') {
                Some((_, action)) => format!("{prefix}{{model}}:{action}"),
                None => format!("{prefix}{{model}}"),
            }
        }
        Some(t) => t.to_string(),
        None => path.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn route_templates_name_the_route_not_the_model() {
        let t = |m, p| super::route_template(Some(m), p);
        assert_eq!(t("/v1/chat/completions", "/v1/chat/completions"), "/v1/chat/completions");
        assert_eq!(
            t("/v1beta/models/{*model_action}", "/v1beta/models/gemini-2.5-flash:streamGenerateContent"),
            "/v1beta/models/{model}:streamGenerateContent"
        );
    }
}

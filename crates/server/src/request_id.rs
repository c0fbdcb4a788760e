//! Request ids (SPEC §0, §4.3(9)). Every request gets Quota's own `req_…` id, which keys its
//! usage record and charges; a valid `x-request-id` from the client is echoed in the response
//! header and kept as the record's `client_request_id`, never used as a key, so no client can
//! make its records collide with another's. When the client sent its own id, the response also
//! carries Quota's in `x-quota-request-id` (it is always in the `quota` object).

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

/// Quota's own id of the request being served (`req_…`). Handlers read it from the request's
/// extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The `x-request-id` the client sent, when it was a plain id (see `valid`).
#[derive(Debug, Clone)]
pub struct ClientRequestId(pub String);

/// Longest incoming id echoed.
const REQUEST_ID_MAX_LEN: usize = 128;

fn valid(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= REQUEST_ID_MAX_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// A new `req_…` id, time-ordered.
pub fn new_request_id() -> String {
    quota_core::ids::new_ordered_id("req_", quota_store::clock::now_us())
}

pub async fn layer(mut req: Request, next: Next) -> Response {
    let id = new_request_id();
    let client =
        req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).filter(|v| valid(v)).map(str::to_string);
    let ours = HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("req_invalid"));
    let echoed = client.as_deref().and_then(|c| HeaderValue::from_str(c).ok());
    req.extensions_mut().insert(RequestId(id));
    if let Some(c) = client {
        req.extensions_mut().insert(ClientRequestId(c));
    }
    let mut resp = next.run(req).await;
    match echoed {
        Some(theirs) => {
            resp.headers_mut().insert("x-request-id", theirs);
            resp.headers_mut().insert("x-quota-request-id", ours);
        }
        None => {
            resp.headers_mut().insert("x-request-id", ours);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_plain_ids_are_echoed() {
        assert!(super::valid("abc-123_x.y:z"));
        assert!(!super::valid(""));
        assert!(!super::valid("has space"));
        assert!(!super::valid(&"a".repeat(200)));
    }
}

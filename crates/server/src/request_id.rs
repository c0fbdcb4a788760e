//! `x-request-id` on every response (SPEC §0): a valid incoming id is echoed, otherwise a new
//! `req_…` id is made. Handlers read it from the request's extensions.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

/// The id of the request being served.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Longest incoming id echoed.
const REQUEST_ID_MAX_LEN: usize = 128;

fn valid(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= REQUEST_ID_MAX_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

pub async fn layer(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid(v))
        .map(str::to_string)
        .unwrap_or_else(|| quota_core::ids::new_ordered_id("req_", quota_store::clock::now_us()));
    let header = HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("req_invalid"));
    req.extensions_mut().insert(RequestId(id));
    let mut resp = next.run(req).await;
    resp.headers_mut().insert("x-request-id", header);
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

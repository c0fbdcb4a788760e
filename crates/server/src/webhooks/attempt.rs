//! One delivery attempt (SPEC §8): the envelope (the same bytes at every attempt), the signed
//! POST with a 15 s timeout and no redirects, a response read up to 64 KiB of which 1 KiB is
//! logged, and when to try again. Not here: which deliveries are due and recording what
//! happened (`worker`), the SSRF checks themselves (`ssrf`).

use super::sign::{sign, Signatures};
use super::ssrf;
use crate::app::SharedState;
use quota_store::webhooks::{AttemptLog, DueDelivery, FinishedAttempt, WebhookEndpoint};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Delays before the 2nd…8th attempts (SPEC §8): 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
pub const RETRY_SCHEDULE_SECS: [i64; 7] = [5, 300, 1800, 7200, 18_000, 36_000, 36_000];
/// A success is a 2xx within this time.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// Most bytes of an endpoint's response read (SPEC §8): reading stops there.
pub const RESPONSE_READ_MAX_BYTES: usize = 64 * 1024;
/// Most response bytes kept in the delivery log (SPEC §8).
pub const SNIPPET_MAX_BYTES: usize = 1024;

/// The JSON body of a delivery: `{id, type, created_at, data}` (+ `sandbox: true`). Built from
/// the stored event, so every attempt of an event sends the same bytes.
pub fn envelope(d: &DueDelivery) -> Vec<u8> {
    let data: Value = serde_json::from_str(&d.event_data).unwrap_or(Value::Null);
    let mut body = json!({
        "id": d.event_id,
        "type": d.event_type,
        "created_at": quota_store::clock::rfc3339(d.event_created_at),
        "data": data,
    });
    if d.sandbox {
        body["sandbox"] = Value::Bool(true);
    }
    serde_json::to_vec(&body).unwrap_or_default()
}

/// When to try again after `attempts` failed attempts (`None`: give up).
pub fn next_attempt_at(attempts: i64, now_ms: i64) -> Option<i64> {
    let i = usize::try_from(attempts - 1).ok()?;
    RETRY_SCHEDULE_SECS.get(i).map(|s| now_ms + s * 1000)
}

/// Send one delivery; what to log about it.
pub async fn attempt(state: &SharedState, client: &reqwest::Client, d: DueDelivery) -> FinishedAttempt {
    let body = envelope(&d);
    let started_ms = state.clock.now_ms();
    let timestamp = started_ms.div_euclid(1000);
    let started = Instant::now();
    let outcome = match open_secret(state, &d.endpoint.secret) {
        Ok(secret) => {
            let sig = sign(&secret, &d.event_id, timestamp, &body);
            send(state, client, &d.endpoint, &d.event_id, timestamp, &sig, body).await
        }
        Err(e) => Err(e),
    };
    let latency_ms = started.elapsed().as_millis() as i64;
    let (status_code, snippet, error) = match &outcome {
        Ok((status, text)) => (Some(i64::from(*status)), Some(text.clone()), None),
        Err(e) => (None, None, Some(e.clone())),
    };
    let succeeded = matches!(outcome, Ok((s, _)) if (200..300).contains(&s));
    metrics::counter!("quota_webhook_attempts_total", "outcome" => if succeeded { "success" } else { "failure" })
        .increment(1);
    let now = state.clock.now_ms();
    FinishedAttempt {
        log: AttemptLog {
            id: quota_core::ids::new_ordered_id("wha_", quota_store::clock::now_us()),
            delivery_id: d.id.clone(),
            attempted_at: now,
            status_code,
            latency_ms,
            response_snippet: snippet,
            error,
            succeeded,
        },
        endpoint_id: d.endpoint.id.clone(),
        next_attempt_at: if succeeded { None } else { next_attempt_at(d.attempts + 1, now) },
    }
}

/// An endpoint's signing secret, opened with the master key (SPEC §12). A clear one (written
/// by an older instance during a rolling upgrade) is used as it is; the next start seals it.
fn open_secret(state: &SharedState, stored: &str) -> Result<String, String> {
    if !stored.starts_with(crate::secrets::at_rest::SEALED_TEXT_PREFIX) {
        return Ok(stored.to_string());
    }
    state.master_key.open_text(crate::secrets::at_rest::Purpose::WebhookSecret, stored).map_err(|e| {
        tracing::error!(error = %e, "a webhook secret cannot be opened with the master key");
        "the endpoint's secret cannot be read (master key)".to_string()
    })
}

/// POST the body; `Ok((status, response snippet))` or a transport error's text.
async fn send(
    state: &SharedState,
    client: &reqwest::Client,
    endpoint: &WebhookEndpoint,
    msg_id: &str,
    timestamp: i64,
    sig: &Signatures,
    body: Vec<u8>,
) -> Result<(u16, String), String> {
    let url = url::Url::parse(&endpoint.url).map_err(|e| e.to_string())?;
    ssrf::check_literal(&url, state.config.webhook_allow_private_urls)?;
    let mut resp = client
        .post(url)
        .header("content-type", "application/json")
        .header("user-agent", "Quota-Webhooks/1")
        .header("x-quota-signature", &sig.quota)
        .header("webhook-id", msg_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", &sig.standard)
        .body(body)
        .send()
        .await
        .map_err(|e| if e.is_timeout() { "timeout after 15 s".to_string() } else { error_chain(&e) })?;
    let status = resp.status().as_u16();
    let (head, _read) = read_capped(&mut resp, RESPONSE_READ_MAX_BYTES).await;
    Ok((status, snippet(&head)))
}

/// A transport error with its causes (the SSRF refusal is a cause of reqwest's error).
fn error_chain(e: &reqwest::Error) -> String {
    let mut text = format!("request failed: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Read at most `max` bytes of a response body, then stop (the rest is never read: dropping
/// the response closes the connection). Returns the first [`SNIPPET_MAX_BYTES`] and how many
/// bytes were read in all. A body that fails midway keeps what arrived.
pub async fn read_capped(resp: &mut reqwest::Response, max: usize) -> (Vec<u8>, usize) {
    let mut head = Vec::new();
    let mut read = 0usize;
    while read < max {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let take = chunk.len().min(max - read);
                read += take;
                let room = SNIPPET_MAX_BYTES.saturating_sub(head.len());
                head.extend_from_slice(&chunk[..take.min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    (head, read)
}

/// The text kept in the delivery log: at most [`SNIPPET_MAX_BYTES`] bytes of UTF-8.
fn snippet(head: &[u8]) -> String {
    let mut text = String::from_utf8_lossy(&head[..head.len().min(SNIPPET_MAX_BYTES)]).into_owned();
    let mut end = text.len().min(SNIPPET_MAX_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_response_is_read_up_to_64_kib_and_1_kib_is_kept() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        // An endless body; count what the reader pulls from it.
        let pulled = Arc::new(AtomicUsize::new(0));
        let p = pulled.clone();
        let chunks = futures::stream::repeat_with(move || {
            p.fetch_add(4096, Ordering::SeqCst);
            Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 4096]))
        });
        let http = axum::http::Response::new(reqwest::Body::wrap_stream(chunks));
        let mut resp = reqwest::Response::from(http);
        let (head, read) = read_capped(&mut resp, RESPONSE_READ_MAX_BYTES).await;
        assert_eq!(read, RESPONSE_READ_MAX_BYTES);
        assert_eq!(head.len(), SNIPPET_MAX_BYTES);
        assert_eq!(pulled.load(Ordering::SeqCst), RESPONSE_READ_MAX_BYTES, "reading stopped at 64 KiB");
        assert!(snippet(&"é".repeat(1000).into_bytes()).len() <= SNIPPET_MAX_BYTES);
    }

    #[test]
    fn retries_follow_the_schedule_then_stop() {
        assert_eq!(next_attempt_at(1, 0), Some(5_000));
        assert_eq!(next_attempt_at(2, 0), Some(300_000));
        assert_eq!(next_attempt_at(7, 0), Some(36_000_000));
        assert_eq!(next_attempt_at(8, 0), None);
    }
}

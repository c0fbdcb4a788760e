//! A developer's webhook endpoints (SPEC §8): create (the signing secret comes back once, in
//! [`IssuedEndpoint`]), list, read, change (URL, events, description, low-balance threshold,
//! enabled), delete, rotate the secret, the delivery log, replay a delivery, send a test
//! event. Every change reloads this instance's [`crate::webhooks::Directory`] and tells the
//! others. Not here: delivery (`crate::webhooks::worker`), JSON or HTML.

use crate::account_caps::{ensure_room, Capped};
use crate::app::SharedState;
use crate::error::{internal, ApiError};
use crate::secrets::at_rest::Purpose;
use crate::services::{Page, Paging};
use crate::webhooks::{is_private, new_secret, ssrf, EventKind};
use quota_store::webhooks::{DeliveryView, EndpointPatch, WebhookEndpoint};
use quota_store::OutboxEvent;
use serde_json::json;
use std::net::IpAddr;

/// Longest endpoint description, in characters.
pub const DESCRIPTION_MAX_CHARS: usize = 500;
/// Longest endpoint URL, in bytes.
pub const URL_MAX_BYTES: usize = 2048;

/// An endpoint URL in good form: http(s), a host, no credentials, at most [`URL_MAX_BYTES`];
/// a private or loopback host (a literal address, `localhost`, `.internal`, `.local`) only
/// when private URLs are allowed. What a hostname resolves to is checked when it is saved
/// and again at every delivery.
#[derive(Debug, Clone)]
pub struct EndpointUrl {
    /// Normalized, as stored.
    url: String,
    /// As given, for messages.
    raw: String,
}

impl EndpointUrl {
    pub fn parse(raw: &str, allow_private: bool) -> Result<EndpointUrl, ApiError> {
        let bad = |m: String| ApiError::bad_request(m).with_hint("use an https:// URL on a public host");
        if raw.len() > URL_MAX_BYTES {
            return Err(bad(format!("url is longer than {URL_MAX_BYTES} bytes")));
        }
        let url = url::Url::parse(raw).map_err(|e| bad(format!("url is not a valid URL: {e}")))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(bad(format!("url scheme `{}` is not allowed: only http and https", url.scheme())));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("url must not carry credentials".into()));
        }
        let private = match url.host() {
            None => return Err(bad("url has no host".into())),
            Some(url::Host::Ipv4(a)) => is_private(IpAddr::V4(a)),
            Some(url::Host::Ipv6(a)) => is_private(IpAddr::V6(a)),
            Some(url::Host::Domain(d)) => {
                let d = d.trim_end_matches('.').to_ascii_lowercase();
                d == "localhost" || d.ends_with(".localhost") || d.ends_with(".internal") || d.ends_with(".local")
            }
        };
        if private && !allow_private {
            return Err(bad(format!("url `{raw}` points to a private or loopback address, which is refused (SSRF)")));
        }
        Ok(EndpointUrl { url: url.to_string(), raw: raw.to_string() })
    }
}

/// An endpoint's description: at most [`DESCRIPTION_MAX_CHARS`] characters.
pub fn parse_description(d: Option<String>) -> Result<Option<String>, ApiError> {
    match d {
        Some(d) if d.chars().count() > DESCRIPTION_MAX_CHARS => {
            Err(ApiError::bad_request(format!("description is longer than {DESCRIPTION_MAX_CHARS} characters")))
        }
        d => Ok(d),
    }
}

/// A low-balance threshold: ≥ 0 credits.
pub fn parse_threshold(t: Option<i64>) -> Result<Option<i64>, ApiError> {
    match t {
        Some(t) if t < 0 => Err(ApiError::bad_request("low_balance_threshold must be ≥ 0 credits")),
        t => Ok(t),
    }
}

/// An endpoint to create. `events` empty: every kind.
pub struct NewEndpoint {
    pub url: EndpointUrl,
    pub description: String,
    pub events: Vec<EventKind>,
    pub low_balance_threshold: Option<i64>,
}

/// What may change on an endpoint; `None` leaves a field as it is (`Some(None)` clears the
/// threshold).
#[derive(Default)]
pub struct EndpointChanges {
    pub url: Option<EndpointUrl>,
    pub description: Option<String>,
    pub events: Option<Vec<EventKind>>,
    pub low_balance_threshold: Option<Option<i64>>,
    pub enabled: Option<bool>,
}

/// An endpoint and its signing secret, shown this once.
pub struct IssuedEndpoint {
    pub endpoint: WebhookEndpoint,
    pub secret: String,
}

/// The kinds an endpoint receives, by wire name (every subscribable kind when it chose none).
pub fn subscribed(e: &WebhookEndpoint) -> Vec<String> {
    if e.events.is_empty() {
        EventKind::SUBSCRIBABLE.iter().map(|k| k.as_str().to_string()).collect()
    } else {
        e.events.clone()
    }
}

fn names(kinds: &[EventKind]) -> Vec<String> {
    kinds.iter().map(|k| k.as_str().to_string()).collect()
}

/// Refuse a hostname that resolves, now, to a private address (unless those are allowed). A
/// name that does not resolve yet is accepted; every delivery checks again.
async fn check_resolved(state: &SharedState, url: &EndpointUrl) -> Result<(), ApiError> {
    if state.config.webhook_allow_private_urls {
        return Ok(());
    }
    if let Some(host) = url::Url::parse(&url.url).ok().and_then(|u| u.domain().map(str::to_string)) {
        if let Err(e) = ssrf::resolve_checked(state.webhook_resolver.as_ref(), &host, false).await {
            if e.starts_with("refused") {
                return Err(ApiError::bad_request(format!("url `{}`: {e}", url.raw))
                    .with_hint("use an https:// URL on a public host"));
            }
        }
    }
    Ok(())
}

async fn reload(state: &SharedState) -> Result<(), ApiError> {
    state.webhooks.reload(&state.store).await.map_err(internal("webhook directory"))?;
    crate::changes::announce(state, crate::changes::WEBHOOKS).await;
    Ok(())
}

/// The secret sealed with the master key (SPEC §12), as stored.
fn sealed(state: &SharedState, secret: &str) -> String {
    state.master_key.seal_text(Purpose::WebhookSecret, secret)
}

pub async fn create(state: &SharedState, developer: &str, new: NewEndpoint) -> Result<IssuedEndpoint, ApiError> {
    check_resolved(state, &new.url).await?;
    ensure_room(state, Capped::WebhookEndpoints, developer).await?;
    let now = state.clock.now_ms();
    let secret = new_secret();
    let endpoint = WebhookEndpoint {
        id: quota_core::ids::new_id("whk_"),
        developer_id: developer.to_string(),
        url: new.url.url,
        description: new.description,
        events: names(&new.events),
        low_balance_threshold: new.low_balance_threshold,
        secret: sealed(state, &secret),
        created_at: now,
        updated_at: now,
        failing_since: None,
        disabled_at: None,
        disabled_reason: None,
    };
    state.store.create_webhook_endpoint(&endpoint).await.map_err(internal("create webhook"))?;
    reload(state).await?;
    Ok(IssuedEndpoint { endpoint, secret })
}

pub async fn list(state: &SharedState, developer: &str) -> Result<Vec<WebhookEndpoint>, ApiError> {
    state.store.webhook_endpoints(developer).await.map_err(internal("list webhooks"))
}

/// One of the developer's endpoints (404 for anyone else's).
pub async fn get(state: &SharedState, developer: &str, id: &str) -> Result<WebhookEndpoint, ApiError> {
    state
        .store
        .webhook_endpoint(developer, id)
        .await
        .map_err(internal("webhook lookup"))?
        .ok_or_else(|| ApiError::not_found("webhook endpoint"))
}

pub async fn update(
    state: &SharedState,
    developer: &str,
    id: &str,
    changes: EndpointChanges,
) -> Result<WebhookEndpoint, ApiError> {
    if let Some(url) = &changes.url {
        check_resolved(state, url).await?;
    }
    let patch = EndpointPatch {
        url: changes.url.map(|u| u.url),
        description: changes.description,
        events: changes.events.as_deref().map(names),
        low_balance_threshold: changes.low_balance_threshold,
        enabled: changes.enabled,
    };
    let now = state.clock.now_ms();
    let e = state
        .store
        .update_webhook_endpoint(developer, id, &patch, now)
        .await
        .map_err(internal("update webhook"))?
        .ok_or_else(|| ApiError::not_found("webhook endpoint"))?;
    reload(state).await?;
    Ok(e)
}

pub async fn delete(state: &SharedState, developer: &str, id: &str) -> Result<(), ApiError> {
    let now = state.clock.now_ms();
    if !state.store.delete_webhook_endpoint(developer, id, now).await.map_err(internal("delete webhook"))? {
        return Err(ApiError::not_found("webhook endpoint"));
    }
    reload(state).await
}

/// A new secret at once; the old one stops signing.
pub async fn rotate_secret(state: &SharedState, developer: &str, id: &str) -> Result<IssuedEndpoint, ApiError> {
    let secret = new_secret();
    let now = state.clock.now_ms();
    let rotated = state
        .store
        .rotate_webhook_secret(developer, id, &sealed(state, &secret), now)
        .await
        .map_err(internal("rotate secret"))?;
    if !rotated {
        return Err(ApiError::not_found("webhook endpoint"));
    }
    Ok(IssuedEndpoint { endpoint: get(state, developer, id).await?, secret })
}

/// An endpoint's deliveries, newest first, with their attempts.
pub async fn deliveries(
    state: &SharedState,
    developer: &str,
    id: &str,
    paging: Paging,
) -> Result<Page<DeliveryView>, ApiError> {
    get(state, developer, id).await?;
    let (offset, limit) = paging.fetch();
    let rows = state.store.webhook_deliveries(id, offset, limit).await.map_err(internal("list deliveries"))?;
    Ok(paging.page(rows))
}

/// Send a delivery's event (the same `evt_…` id) again, now.
pub async fn replay(state: &SharedState, developer: &str, id: &str, delivery_id: &str) -> Result<(), ApiError> {
    get(state, developer, id).await?;
    let now = state.clock.now_ms();
    if !state.store.replay_delivery(id, delivery_id, now).await.map_err(internal("replay"))? {
        return Err(ApiError::not_found("delivery"));
    }
    Ok(())
}

/// Queue a `webhook.test` event for this endpoint only, delivered like any other (signed,
/// logged, retried); the event.
pub async fn send_test(state: &SharedState, developer: &str, id: &str) -> Result<OutboxEvent, ApiError> {
    let e = get(state, developer, id).await?;
    let now = state.clock.now_ms();
    let data = json!({"endpoint_id": e.id, "test": true});
    let mut event = OutboxEvent::new(EventKind::WebhookTest.as_str(), developer, data, now);
    event.endpoint_id = Some(e.id);
    state.store.insert_outbox_events(std::slice::from_ref(&event)).await.map_err(internal("test event"))?;
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        let ok = |raw: &str, allow_private: bool| EndpointUrl::parse(raw, allow_private).is_ok();
        assert!(!ok("ftp://example.com/x", true));
        assert!(!ok("http://127.0.0.1:9/x", false));
        assert!(!ok("http://10.1.2.3/x", false));
        assert!(!ok("http://[::1]/x", false));
        assert!(!ok("http://localhost/x", false));
        assert!(ok("http://127.0.0.1:9/x", true));
        assert!(ok("https://hooks.example.com/x", false));
    }
}

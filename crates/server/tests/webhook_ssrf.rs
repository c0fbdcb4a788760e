//! Webhook SSRF and response limits (SPEC §8; issue 14): private targets refused by default
//! whatever `bind` is, DNS rebinding defeated (one checked lookup per delivery, the connection
//! to a checked address), redirects not followed, at most 64 KiB of a response read and 1 KiB
//! kept. DNS is the tests' own ([`common::TestResolver`]): nothing here looks up a real name or
//! connects anywhere but 127.0.0.1.

mod common;

use common::{TestResolver, TestServer};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A listener on 127.0.0.1 that counts requests and answers each with `respond`.
struct Listener {
    port: u16,
    hits: Arc<AtomicUsize>,
    host_headers: Arc<parking_lot::Mutex<Vec<String>>>,
}

impl Listener {
    async fn start(respond: fn() -> axum::response::Response) -> Listener {
        let hits = Arc::new(AtomicUsize::new(0));
        let host_headers = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let (h, hh) = (hits.clone(), host_headers.clone());
        let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
            let (h, hh) = (h.clone(), hh.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                let host = headers.get("host").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                hh.lock().push(host);
                respond()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Listener { port, hits, host_headers }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn ok() -> axum::response::Response {
    axum::response::IntoResponse::into_response("ok")
}

async fn server(resolver: Arc<TestResolver>, allow_private: bool) -> TestServer {
    TestServer::start_with_resolver(
        move |c| {
            c.webhook_poll_ms = 20;
            c.webhook_allow_private_urls = allow_private;
        },
        resolver,
    )
    .await
}

/// Create an endpoint at `url` and queue a test event for it; (endpoint id, session).
async fn endpoint_with_event(s: &TestServer, url: &str) -> (String, String) {
    let (_, session, _) = s.developer("test").await;
    let r = s.http.post(s.url("/v1/webhooks")).bearer_auth(&session).json(&json!({"url": url})).send().await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let r = s.http.post(s.url(&format!("/v1/webhooks/{id}/test"))).bearer_auth(&session).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    (id, session)
}

/// The first logged attempt of the endpoint's deliveries (waits, bounded, until there is one).
async fn first_attempt(s: &TestServer, session: &str, id: &str) -> Value {
    common::within(Duration::from_secs(20), "a delivery attempt is logged", || async {
        let log = s.get_json(&format!("/v1/webhooks/{id}/deliveries"), session).await;
        log["data"].as_array()?.iter().find_map(|d| d["log"].as_array()?.first().cloned())
    })
    .await
}

#[tokio::test]
async fn private_targets_are_refused_by_default_whatever_bind_is() {
    assert!(!quota_server::Config::default().webhook_allow_private_urls, "off unless set");
    // Bound to loopback, as a development server is: still refused.
    let s = server(Arc::new(TestResolver::default()), false).await;
    let (_, session, _) = s.developer("test").await;
    for url in [
        "http://127.0.0.1:9/h",
        "http://[::ffff:127.0.0.1]:9/h",
        "http://[::ffff:a00:1]/h",
        "http://100.64.1.1/h",
        "http://169.254.169.254/latest/meta-data",
        "http://224.0.0.1/h",
        "http://0.0.0.0/h",
        "http://[fe80::1]/h",
        "http://[fd12::1]/h",
        "http://localhost:9/h",
    ] {
        let r =
            s.http.post(s.url("/v1/webhooks")).bearer_auth(&session).json(&json!({"url": url})).send().await.unwrap();
        assert_eq!(r.status(), 400, "{url} must be refused");
    }
}

#[tokio::test]
async fn a_host_public_at_check_time_and_loopback_afterwards_never_reaches_the_listener() {
    let rx = Listener::start(ok).await;
    let dns = Arc::new(TestResolver::default());
    // Public when the endpoint is added, then it "rebinds" to the loopback listener.
    dns.script("rebind.test", &[&["93.184.216.34"], &["127.0.0.1"]]);
    let s = server(dns.clone(), false).await;
    let (id, session) = endpoint_with_event(&s, &format!("http://rebind.test:{}/hook", rx.port)).await;
    assert_eq!(dns.lookups("rebind.test"), 1, "checked once when added");
    let attempt = first_attempt(&s, &session, &id).await;
    assert!(attempt["error"].as_str().is_some_and(|e| e.contains("private address")), "refused: {attempt}");
    assert_eq!(attempt["status_code"], Value::Null);
    assert_eq!(dns.lookups("rebind.test"), 2, "the delivery looked the host up once, no second lookup");
    assert_eq!(rx.hits(), 0, "nothing reached the loopback listener");
}

#[tokio::test]
async fn an_answer_that_mixes_in_a_private_address_is_refused_whole() {
    let rx = Listener::start(ok).await;
    let dns = Arc::new(TestResolver::default());
    dns.script("mixed.test", &[&["93.184.216.34"], &["93.184.216.34", "127.0.0.1"]]);
    let s = server(dns.clone(), false).await;
    let (id, session) = endpoint_with_event(&s, &format!("http://mixed.test:{}/hook", rx.port)).await;
    let attempt = first_attempt(&s, &session, &id).await;
    assert!(attempt["error"].as_str().is_some_and(|e| e.contains("private address")), "{attempt}");
    assert_eq!(rx.hits(), 0);
    // And when added: the same answer is refused at once.
    let (_, other, _) = s.developer("test").await;
    dns.script("mixed2.test", &[&["93.184.216.34", "::ffff:127.0.0.1"]]);
    let r = s
        .http
        .post(s.url("/v1/webhooks"))
        .bearer_auth(&other)
        .json(&json!({"url": "https://mixed2.test/hook"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn a_delivery_connects_to_the_address_it_looked_up_with_the_original_host() {
    let rx = Listener::start(ok).await;
    let dns = Arc::new(TestResolver::default());
    // Not a name the system could resolve: only the checked resolver knows it.
    dns.script("hooks.test", &[&["127.0.0.1"]]);
    let s = server(dns.clone(), true).await;
    let (id, session) = endpoint_with_event(&s, &format!("http://hooks.test:{}/hook", rx.port)).await;
    let attempt = first_attempt(&s, &session, &id).await;
    assert_eq!(attempt["status_code"], 200, "{attempt}");
    assert_eq!(rx.hits(), 1);
    assert_eq!(dns.lookups("hooks.test"), 1, "one lookup per delivery");
    assert_eq!(rx.host_headers.lock()[0], format!("hooks.test:{}", rx.port), "the Host header is the URL's");
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let target = Listener::start(ok).await;
    static TARGET_PORT: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
    TARGET_PORT.set(target.port).unwrap();
    let redirecting = Listener::start(|| {
        let to = format!("http://127.0.0.1:{}/elsewhere", TARGET_PORT.get().unwrap());
        axum::response::IntoResponse::into_response(axum::response::Redirect::temporary(&to))
    })
    .await;
    let s = server(Arc::new(TestResolver::default()), true).await;
    let (id, session) = endpoint_with_event(&s, &format!("http://127.0.0.1:{}/hook", redirecting.port)).await;
    let attempt = first_attempt(&s, &session, &id).await;
    assert_eq!(attempt["status_code"], 307, "{attempt}");
    assert_eq!(redirecting.hits(), 1);
    assert_eq!(target.hits(), 0, "the redirect was not followed");
}

/// Bytes the huge endpoint has produced so far.
static HUGE_PRODUCED: AtomicUsize = AtomicUsize::new(0);

fn huge() -> axum::response::Response {
    // 300 MiB in 64 KiB chunks, produced only as fast as the client reads.
    let chunk = bytes::Bytes::from(vec![b'a'; 64 * 1024]);
    let body = futures::stream::iter(0..4800).map(move |_| {
        HUGE_PRODUCED.fetch_add(chunk.len(), Ordering::SeqCst);
        Ok::<_, std::io::Error>(chunk.clone())
    });
    axum::response::Response::new(axum::body::Body::from_stream(body))
}

use futures::StreamExt;

#[tokio::test]
async fn a_300_mib_response_is_not_read_and_1_kib_is_kept() {
    let rx = Listener::start(huge).await;
    let s = server(Arc::new(TestResolver::default()), true).await;
    let (id, session) = endpoint_with_event(&s, &format!("http://127.0.0.1:{}/hook", rx.port)).await;
    let attempt = first_attempt(&s, &session, &id).await;
    assert_eq!(attempt["status_code"], 200, "{attempt}");
    assert_eq!(attempt["error"], Value::Null, "a 2xx whose body was cut short is still a success");
    let kept = attempt["response_snippet"].as_str().unwrap();
    assert_eq!(kept.len(), 1024, "1 KiB kept in the delivery log");
    // The client stopped after 64 KiB; what the endpoint managed to write is what the kernel's
    // socket buffers took, not 300 MiB.
    let produced = HUGE_PRODUCED.load(Ordering::SeqCst);
    assert!(produced < 32 * 1024 * 1024, "the endpoint wrote {produced} bytes: the response was read to the end");
}

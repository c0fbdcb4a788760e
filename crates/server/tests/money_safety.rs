//! Money that cannot leak (SPEC §4.3, issue 21): a refused hold never reaches the provider, on
//! any route and in any mode; holds are upper bounds, so parallel requests with unmeasurable
//! media cannot drive a wallet below zero (on one instance or two); a client that hangs up
//! still pays what the provider billed; request ids cannot collide across tenants; streamed and
//! not streamed cost the same; an idempotent request whose client hangs up mid-settlement is
//! replayed, not run again.

mod common;

use common::fake_anthropic::{AnthropicUsage, FakeAnthropic, Script as AnthropicScript};
use common::fake_gemini::{FakeGemini, GeminiUsage, Script as GeminiScript};
use common::fake_openai::{FakeUpstream, Script as OpenAiScript};
use common::{on_postgres, within, TestServer};
use quota_core::hold::{hold_amount, HoldBound};
use quota_core::{AccountId, Catalog, Margin};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const BOUND: Duration = Duration::from_secs(10);

/// The three fake providers behind one gateway.
struct Upstreams {
    openai: FakeUpstream,
    anthropic: FakeAnthropic,
    gemini: FakeGemini,
}

impl Upstreams {
    async fn start() -> Upstreams {
        Upstreams {
            openai: FakeUpstream::start().await,
            anthropic: FakeAnthropic::start().await,
            gemini: FakeGemini::start().await,
        }
    }

    fn configure(&self, c: &mut quota_server::Config) {
        c.openai_base_url = self.openai.base_url.clone();
        c.openai_api_key = Some("sk-upstream-openai-0123456789".into());
        c.anthropic_base_url = self.anthropic.base_url.clone();
        c.anthropic_api_key = Some("sk-upstream-anthropic-0123456789".into());
        c.google_base_url = self.gemini.base_url.clone();
        c.gemini_api_key = Some("upstream-gemini-0123456789".into());
    }

    fn calls(&self) -> usize {
        self.openai.calls() + self.anthropic.calls() + self.gemini.calls()
    }
}

async fn gateway() -> (TestServer, Upstreams) {
    let up = Upstreams::start().await;
    let s = TestServer::start_with(|c| up.configure(c)).await;
    (s, up)
}

#[derive(Clone, Copy, Debug)]
enum Route {
    Chat,
    Messages,
    GeminiGenerate,
    GeminiStream,
    Responses,
}

const ROUTES: [Route; 5] = [Route::Chat, Route::Messages, Route::GeminiGenerate, Route::GeminiStream, Route::Responses];

/// The routes that stream or not as the body says.
const BODY_ROUTES: [Route; 4] = [Route::Chat, Route::Messages, Route::GeminiGenerate, Route::Responses];

/// A small request on `route`: its path and body.
fn request(route: Route, stream: bool) -> (String, Value) {
    match route {
        Route::Chat => (
            "/v1/chat/completions".to_string(),
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi there"}], "max_tokens": 20, "stream": stream}),
        ),
        Route::Responses => (
            "/v1/responses".to_string(),
            json!({"model": "gpt-4o-mini", "input": "hi there", "max_output_tokens": 20, "stream": stream}),
        ),
        Route::Messages => (
            "/v1/messages".to_string(),
            json!({"model": "claude-haiku-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": "hi there"}], "stream": stream}),
        ),
        Route::GeminiGenerate | Route::GeminiStream => {
            let action = if matches!(route, Route::GeminiStream) || stream {
                "streamGenerateContent?alt=sse"
            } else {
                "generateContent"
            };
            (
                format!("/v1beta/models/gemini-2.5-flash:{action}"),
                json!({"contents": [{"role": "user", "parts": [{"text": "hi there"}]}], "generationConfig": {"maxOutputTokens": 20}}),
            )
        }
    }
}

/// Send [`request`]: `bearer` in `Authorization`, `api_key` in `X-API-Key`.
async fn send(s: &TestServer, route: Route, bearer: &str, api_key: Option<&str>, stream: bool) -> reqwest::Response {
    let (path, body) = request(route, stream);
    let mut req = s.http.post(s.url(&path)).bearer_auth(bearer).json(&body);
    if let Some(k) = api_key {
        req = req.header("x-api-key", k);
    }
    req.send().await.unwrap()
}

async fn expect_402(r: reqwest::Response, what: &str) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    assert_eq!(status, 402, "{what}: {text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["code"], "insufficient_credits", "{what}: {text}");
    assert!(v["error"]["required"].as_i64().unwrap() > 0, "{what}: {text}");
    assert_eq!(v["error"]["available"], 0, "{what}: {text}");
}

#[tokio::test]
async fn a_payer_who_cannot_cover_the_hold_gets_402_on_every_route_and_mode_and_nothing_reaches_the_provider() {
    let (s, up) = gateway().await;
    let app = s.app(json!({"profit_margin": 0.25})).await;
    let (user, _, tokens) = s.connected_user(&app, "credits.spend").await;
    let token = tokens["access_token"].as_str().unwrap().to_string();
    let (_, developer_key) = s.key(&app.developer_session, "developer").await;
    let (_, user_key) = s.key(&app.developer_session, "user").await;
    let (_, test_key) = s.key(&app.developer_session, "test").await;
    // The user cannot pay: every mode where the user's wallet pays (or, in the sandbox, is
    // checked) is refused while the developer still has money.
    s.drain(&user, 0).await;
    for route in ROUTES {
        expect_402(send(&s, route, &token, None, false).await, &format!("{route:?}, user token")).await;
        expect_402(send(&s, route, &token, Some(&user_key), false).await, &format!("{route:?}, user key + token"))
            .await;
        expect_402(send(&s, route, &token, Some(&test_key), false).await, &format!("{route:?}, test key + token"))
            .await;
    }
    assert_eq!(send(&s, Route::Chat, &test_key, None, false).await.status(), 200, "the developer can still pay");
    // The developer cannot pay either.
    s.drain(&app.developer_id, 0).await;
    for route in ROUTES {
        expect_402(send(&s, route, &developer_key, None, false).await, &format!("{route:?}, developer key")).await;
        expect_402(send(&s, route, &test_key, None, false).await, &format!("{route:?}, test key")).await;
    }
    assert_eq!(up.calls(), 0, "no refused request reached a provider");
    s.assert_ledger_ok().await;
}

/// A Gemini request whose prompt is a video by URL: the gateway cannot measure it.
fn video_by_url() -> Value {
    json!({"contents": [{"role": "user", "parts": [
        {"text": "Summarise this video."},
        {"fileData": {"mimeType": "video/mp4", "fileUri": "https://example.com/talk.mp4"}}
    ]}], "generationConfig": {"maxOutputTokens": 100}})
}

fn gemini_flash() -> quota_core::Model {
    (**Catalog::builtin().get("google/gemini-2.5-flash").unwrap()).clone()
}

/// The hold of [`video_by_url`]: the whole context window plus 100 output tokens.
fn video_hold(margin: Margin) -> i64 {
    let m = gemini_flash();
    hold_amount(&m, &HoldBound { prompt_tokens_max: m.context_window, output_tokens_max: 100, choices: 1 }, margin)
        .total()
        .get()
}

/// Fire `n` copies of [`video_by_url`] at once against a paused upstream, spread over
/// `servers`; returns how many were refused (402) before the upstream answered anything, and
/// how many then succeeded.
async fn parallel_videos(servers: &[&TestServer], up: &FakeGemini, bearer: &str, n: usize, m: usize) -> usize {
    up.pause();
    let refused = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..n {
        let s = servers[i % servers.len()];
        let (http, url, bearer, refused) = (
            s.http.clone(),
            s.url("/v1beta/models/gemini-2.5-flash:generateContent"),
            bearer.to_string(),
            refused.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let r = http.post(url).bearer_auth(bearer).json(&video_by_url()).send().await.unwrap();
            let status = r.status().as_u16();
            if status == 402 {
                refused.fetch_add(1, Ordering::SeqCst);
            }
            status
        }));
    }
    // Every request either holds (and waits at the upstream) or is refused before it.
    within(BOUND, "every request held or refused", || {
        let done = refused.load(Ordering::SeqCst) + up.calls();
        async move { (done == n).then_some(()) }
    })
    .await;
    assert_eq!(up.calls(), m, "exactly the affordable holds reached the provider");
    up.resume();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            200 => ok += 1,
            402 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_requests_with_media_by_url_never_drive_a_wallet_below_zero() {
    let up = FakeGemini::start().await;
    let s = TestServer::start_with(|c| {
        c.google_base_url = up.base_url.clone();
        c.gemini_api_key = Some("upstream-gemini-0123456789".into());
    })
    .await;
    let (developer, _, key) = s.developer("developer").await;
    let hold = video_hold(Margin::ZERO);
    let (n, m) = (12, 3);
    s.drain(&developer, m as i64 * hold).await;
    // The provider bills the whole context window for the video (what F1's attacker got).
    let window = gemini_flash().context_window;
    up.script(GeminiScript::Answer {
        parts: vec![json!({"text": "A talk about money."})],
        finish: "STOP",
        usage: GeminiUsage { prompt: window, cached: 0, candidates: 50, thoughts: 0 },
    });
    assert_eq!(parallel_videos(&[&s], &up, &key, n, m).await, m);
    let each = common::cost(
        "google/gemini-2.5-flash",
        quota_core::Usage { input_tokens: window, output_tokens: 50, ..Default::default() },
    );
    assert!(each <= hold);
    assert_eq!(s.stored_balance(&developer).await, m as i64 * (hold - each));
    assert!(s.stored_balance(&developer).await >= 0);
    s.assert_ledger_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_postgres_cannot_drive_a_wallet_below_zero_with_media_by_url() {
    if common::skip_unless_postgres("two_instances_on_postgres_cannot_drive_a_wallet_below_zero_with_media_by_url") {
        return;
    }
    let up = FakeGemini::start().await;
    let configure = |c: &mut quota_server::Config| {
        c.google_base_url = up.base_url.clone();
        c.gemini_api_key = Some("upstream-gemini-0123456789".into());
    };
    let a = TestServer::start_with(configure).await;
    let b = TestServer::start_sharing(&a, configure).await;
    let (developer, _, key) = a.developer("developer").await;
    let hold = video_hold(Margin::ZERO);
    let (n, m) = (12, 3);
    a.drain(&developer, m as i64 * hold).await;
    // A hostile provider: three context windows for one video. Each payer pays its hold.
    let window = gemini_flash().context_window;
    up.script(GeminiScript::Answer {
        parts: vec![json!({"text": "A talk."})],
        finish: "STOP",
        usage: GeminiUsage { prompt: 3 * window, cached: 0, candidates: 50, thoughts: 0 },
    });
    assert!(on_postgres());
    assert_eq!(parallel_videos(&[&a, &b], &up, &key, n, m).await, m);
    assert_eq!(a.stored_balance(&developer).await, 0, "each request paid exactly its hold");
    let losses = a.account_balance("platform:losses").await;
    assert!(losses < 0, "the excess is the platform's loss, not the payer's debt");
    a.assert_ledger_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_user_mode_markup_is_earned_only_on_what_the_user_paid() {
    let up = FakeGemini::start().await;
    let s = TestServer::start_with(|c| {
        c.google_base_url = up.base_url.clone();
        c.gemini_api_key = Some("upstream-gemini-0123456789".into());
    })
    .await;
    // 1000% markup (the most an app may ask).
    let app = s.app(json!({"profit_margin": 10})).await;
    let (user, _, tokens) = s.connected_user(&app, "credits.spend").await;
    let token = tokens["access_token"].as_str().unwrap().to_string();
    let margin = Margin::from_bps(100_000).unwrap();
    let hold = video_hold(margin);
    let (n, m) = (8, 2);
    s.credit(&user, m as i64 * hold).await;
    s.drain(&user, m as i64 * hold).await;
    let window = gemini_flash().context_window;
    up.script(GeminiScript::Answer {
        parts: vec![json!({"text": "A talk."})],
        finish: "STOP",
        usage: GeminiUsage { prompt: 5 * window, cached: 0, candidates: 50, thoughts: 0 },
    });
    assert_eq!(parallel_videos(&[&s], &up, &token, n, m).await, m);
    let paid = m as i64 * hold - s.stored_balance(&user).await;
    assert!(s.stored_balance(&user).await >= 0);
    let earnings = s.account_balance(&format!("earnings_pending:{}", app.developer_id)).await;
    let markup_recorded = s
        .count(
            "SELECT CAST(COALESCE(SUM(markup), 0) AS BIGINT) FROM usage_records WHERE payer_account = $1",
            &[&AccountId::wallet(&user).to_string()],
        )
        .await;
    assert_eq!(earnings, markup_recorded, "pending earnings are the markup the records say was paid");
    assert!(earnings > 0 && earnings < paid, "earnings {earnings} never exceed what was collected ({paid})");
    s.assert_ledger_ok().await;
}

/// The calls a route's fake provider received.
fn calls_of(up: &Upstreams, route: Route) -> usize {
    match route {
        Route::Chat | Route::Responses => up.openai.calls(),
        Route::Messages => up.anthropic.calls(),
        Route::GeminiGenerate | Route::GeminiStream => up.gemini.calls(),
    }
}

fn pause(up: &Upstreams, route: Route, paused: bool) {
    match (route, paused) {
        (Route::Chat | Route::Responses, true) => up.openai.pause(),
        (Route::Chat | Route::Responses, false) => up.openai.resume(),
        (Route::Messages, true) => up.anthropic.pause(),
        (Route::Messages, false) => up.anthropic.resume(),
        (_, true) => up.gemini.pause(),
        (_, false) => up.gemini.resume(),
    }
}

/// Start a request on `route` in the background, wait until the provider has it, then hang up
/// and wait until the gateway noticed.
async fn hang_up_once_upstream(s: &TestServer, up: &Upstreams, route: Route, key: &str, stream: bool) {
    let (path, body) = request(route, stream);
    let (http, url, key) = (s.http.clone(), s.url(&path), key.to_string());
    let calls_before = calls_of(up, route);
    let hangups_before = s.state.test_hooks.client_hangups();
    let client = tokio::spawn(async move { http.post(url).bearer_auth(key).json(&body).send().await });
    within(BOUND, "the provider received the request", || {
        let n = calls_of(up, route);
        async move { (n == calls_before + 1).then_some(()) }
    })
    .await;
    client.abort();
    let hooks = &s.state.test_hooks;
    within(BOUND, "the gateway noticed the hang-up", || async {
        (hooks.client_hangups() == hangups_before + 1).then_some(())
    })
    .await;
}

async fn record_of(s: &TestServer, user: &str) -> Option<(String, i64)> {
    s.state.ledger.flush().await.unwrap();
    let rows: Vec<(String, i64)> = quota_store::on_pool!(s.state.store.pool(), |p| sqlx::query_as(
        "SELECT status, total FROM usage_records WHERE developer_id = $1"
    )
    .bind(user)
    .fetch_all(p)
    .await
    .unwrap());
    rows.into_iter().next()
}

#[tokio::test]
async fn a_client_that_hangs_up_before_the_answer_still_pays_what_the_provider_billed_on_every_route() {
    let (s, up) = gateway().await;
    for route in BODY_ROUTES {
        for stream in [false, true] {
            let (user, _, key) = s.developer("developer").await;
            let before = s.balance(&user).await;
            pause(&up, route, true);
            hang_up_once_upstream(&s, &up, route, &key, stream).await;
            pause(&up, route, false);
            let what = format!("{route:?} stream={stream}");
            let (status, total) = within(BOUND, &what, || record_of(&s, &user)).await;
            assert_eq!(status, "client_disconnected", "{what}");
            assert!(total > 0, "{what}: what the provider billed is charged");
            if !stream {
                // The whole answer was read: its reported usage (10 in, 5 out) is the charge.
                let model = match route {
                    Route::Chat | Route::Responses => "gpt-4o-mini",
                    Route::Messages => "anthropic/claude-haiku-4.5",
                    _ => "google/gemini-2.5-flash",
                };
                let usage = quota_core::Usage { input_tokens: 10, output_tokens: 5, ..Default::default() };
                assert_eq!(total, common::cost(model, usage), "{what}");
            }
            assert_eq!(s.stored_balance(&user).await, before - total, "{what}");
        }
    }
    assert_eq!(s.state.ledger.open_holds(), 0);
    s.assert_ledger_ok().await;
}

#[tokio::test]
async fn two_tenants_sending_the_same_x_request_id_are_both_charged_and_recorded() {
    let s = TestServer::start_with(|c| c.webhook_allow_private_urls = true).await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (user, session, key) = s.developer("test").await;
        let r = s
            .http
            .post(s.url("/v1/webhooks"))
            .bearer_auth(&session)
            .json(&json!({"url": "http://127.0.0.1:9/hook", "events": ["usage.completed"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let before = s.balance(&user).await;
        let r = s
            .http
            .post(s.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .header("x-request-id", "order-42")
            .json(&common::simple_chat("hi", 5))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-request-id"], "order-42", "the client's id is echoed");
        let ours = r.headers()["x-quota-request-id"].to_str().unwrap().to_string();
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["quota"]["request_id"], ours.as_str());
        assert!(ours.starts_with("req_"));
        assert!(s.stored_balance(&user).await < before, "charged");
        seen.push((user, ours));
    }
    assert_ne!(seen[0].1, seen[1].1);
    assert_eq!(s.count("SELECT COUNT(*) FROM usage_records WHERE client_request_id = $1", &["order-42"]).await, 2);
    for (user, ours) in &seen {
        assert_eq!(
            s.count("SELECT COUNT(*) FROM usage_records WHERE id = $1 AND developer_id = $2", &[ours, user]).await,
            1
        );
        let events = s
            .count(
                "SELECT (SELECT COUNT(*) FROM events WHERE developer_id = $1 AND type = 'usage.completed') + \
                 (SELECT COUNT(*) FROM usage_records WHERE developer_id = $1 AND pending_event IS NOT NULL)",
                &[user],
            )
            .await;
        assert_eq!(events, 1, "each tenant gets its own usage.completed");
    }
    s.assert_ledger_ok().await;
}

/// The credits a route charges for one small request, streamed or not.
async fn credits_of(s: &TestServer, route: Route, key: &str, stream: bool) -> i64 {
    let r = send(s, route, key, None, stream).await;
    assert_eq!(r.status(), 200, "{route:?} stream={stream}");
    let text = r.text().await.unwrap();
    if !stream && !matches!(route, Route::GeminiStream) {
        let v: Value = serde_json::from_str(&text).unwrap();
        return v["quota"]["credits_used"].as_i64().unwrap();
    }
    // The `quota` object rides on the stream's last data event (or its own event).
    text.split("\n\n")
        .flat_map(|e| e.lines())
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            let quota = v.get("quota").or_else(|| v.get("response").and_then(|r| r.get("quota"))).cloned();
            quota.or_else(|| (v["type"] == "quota_usage").then_some(v))
        })
        .filter_map(|q| q["credits_used"].as_i64())
        .last()
        .unwrap_or_else(|| panic!("no quota object in the {route:?} stream: {text}"))
}

#[tokio::test]
async fn the_same_request_streamed_and_not_is_charged_the_same_on_every_route() {
    let (s, up) = gateway().await;
    up.openai.script(OpenAiScript::Complete { prompt: 9, cached: 0, completion: 4, text: "Hi there you".into() });
    up.anthropic.script(AnthropicScript::Answer {
        content: vec![json!({"type": "text", "text": "Hi there you"})],
        stop_reason: "end_turn",
        usage: AnthropicUsage { input: 9, cache_read: 0, cache_write: 0, output: 4, cache_write_1h: 0 },
    });
    up.gemini.script(GeminiScript::Answer {
        parts: vec![json!({"text": "Hi "}), json!({"text": "there you"})],
        finish: "STOP",
        usage: GeminiUsage { prompt: 9, cached: 0, candidates: 4, thoughts: 0 },
    });
    let (_, _, developer_key) = s.developer("developer").await;
    let (_, _, test_key) = s.developer("test").await;
    for key in [&developer_key, &test_key] {
        for route in BODY_ROUTES {
            let plain = credits_of(&s, route, key, false).await;
            let streamed = credits_of(&s, route, key, true).await;
            assert!(plain > 0);
            assert_eq!(
                plain,
                streamed,
                "{route:?} with {}",
                if key == &test_key { "a test key" } else { "a developer key" }
            );
        }
    }
    s.assert_ledger_ok().await;
}

async fn completed_claims(s: &TestServer) -> i64 {
    s.count("SELECT COUNT(*) FROM idempotency_keys WHERE status IS NOT NULL", &[]).await
}

/// Send a request under an Idempotency-Key on every route, hang up while its settlement waits
/// at the gate, let the settlement finish, and retry: the retry must be the first answer
/// replayed, and the provider must have seen one call.
async fn hang_up_during_settlement_then_retry(stream: bool) {
    let (s, up) = gateway().await;
    let gate = s.state.test_hooks.gate_settlements();
    for (i, route) in BODY_ROUTES.into_iter().enumerate() {
        let (user, _, key) = s.developer("developer").await;
        let (path, body) = request(route, stream);
        let send = || {
            let (http, url, key, body) = (s.http.clone(), s.url(&path), key.clone(), body.clone());
            async move {
                http.post(url).bearer_auth(key).header("idempotency-key", "retry-me").json(&body).send().await.unwrap()
            }
        };
        let first = tokio::spawn({
            let f = send();
            async move { f.await.bytes().await.ok() }
        });
        let hooks = &s.state.test_hooks;
        within(BOUND, "the settlement is waiting", || async { (hooks.settlements_waiting() == 1).then_some(()) }).await;
        let hangups = hooks.client_hangups();
        first.abort();
        if !stream {
            within(BOUND, "the gateway noticed the hang-up", || async {
                (hooks.client_hangups() == hangups + 1).then_some(())
            })
            .await;
        }
        gate.add_permits(1);
        within(BOUND, "the claim was completed", || async {
            (completed_claims(&s).await == i as i64 + 1).then_some(())
        })
        .await;
        let calls = calls_of(&up, route);
        let retry = send().await;
        let what = format!("{route:?} stream={stream}");
        assert_eq!(retry.status(), 200, "{what}");
        assert_eq!(retry.headers()["idempotent-replayed"], "true", "{what}");
        let text = retry.text().await.unwrap();
        assert!(text.contains("\"credits_used\""), "{what}: the replay is the first answer: {text}");
        assert_eq!(calls_of(&up, route), calls, "{what}: the retry did not reach the provider");
        assert_eq!(s.count("SELECT COUNT(*) FROM usage_records WHERE developer_id = $1", &[&user]).await, 1, "{what}");
    }
    s.assert_ledger_ok().await;
}

#[tokio::test]
async fn a_client_hanging_up_while_its_idempotent_request_settles_gets_the_first_answer_on_retry() {
    hang_up_during_settlement_then_retry(false).await;
}

#[tokio::test]
async fn a_client_hanging_up_while_its_idempotent_stream_settles_gets_the_first_answer_on_retry() {
    hang_up_during_settlement_then_retry(true).await;
}

#[tokio::test]
async fn a_402_names_the_max_tokens_that_fits_and_that_request_is_then_held() {
    // Issue 21's example (SPEC §4.3(2)): Claude Sonnet without max_tokens from a $0.50 wallet.
    let (s, up) = gateway().await;
    let (user, _, key) = s.developer("developer").await;
    s.drain(&user, 500_000).await;
    let body = json!({"model": "anthropic/claude-sonnet-4.5", "messages": [{"role": "user", "content": "hi there"}]});
    let r = s.chat(&key, body.clone()).await;
    let v = common::expect_error(r, 402, "insufficient_credits").await;
    let fits = v["error"]["max_affordable_tokens"].as_u64().expect("max_affordable_tokens");
    assert!(v["error"]["hint"].as_str().unwrap().contains(&fits.to_string()));
    assert_eq!(v["error"]["available"], 500_000);
    assert!(v["error"]["required"].as_i64().unwrap() > 500_000);
    // One token more does not fit; exactly that many does, and reaches the provider.
    let r = s.chat(&key, common::with(body.clone(), json!({"max_tokens": fits + 1}))).await;
    common::expect_error(r, 402, "insufficient_credits").await;
    assert_eq!(up.calls(), 0);
    assert_eq!(s.chat(&key, common::with(body, json!({"max_tokens": fits}))).await.status(), 200);
    assert_eq!(up.anthropic.calls(), 1);
    s.assert_ledger_ok().await;
}

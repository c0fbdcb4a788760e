//! Webhooks (SPEC §8) end to end: a local receiver that checks both signatures and fails the
//! first attempts, retries on the injected server clock (no sleeping through the schedule),
//! `balance.low` once per crossing, the outbox surviving a stopped worker, no event for a
//! rolled-back charge, management errors; and usage / analytics equal to the ledger (SPEC §9).

mod common;

use base64::Engine;
use common::{expect_error, on_postgres, simple_chat, skip_unless_postgres, within, TestServer};
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use quota_server::clock::Clock;
use serde_json::{json, Value};
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration;

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Received {
    headers: axum::http::HeaderMap,
    body: bytes::Bytes,
}

/// A loopback webhook receiver that answers 500 to its first `fail_first` requests.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(fail_first: usize) -> Receiver {
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let g = got.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: bytes::Bytes| {
                let g = g.clone();
                async move {
                    let n = {
                        let mut v = g.lock();
                        v.push(Received { headers, body });
                        v.len()
                    };
                    if n <= fail_first {
                        (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "not yet")
                    } else {
                        (axum::http::StatusCode::OK, "ok")
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url: format!("http://{addr}/hook"), got }
    }

    fn count(&self) -> usize {
        self.got.lock().len()
    }

    /// Wait (real time, bounded) until `n` requests arrived.
    async fn wait_for(&self, n: usize) -> Vec<Received> {
        for _ in 0..500 {
            if self.count() >= n {
                return self.got.lock().clone();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("receiver got {} requests, expected {n}", self.count());
    }
}

/// Verify both signature schemes of one delivery; returns the parsed body.
fn verify(secret: &str, r: &Received) -> Value {
    let h = |n: &str| r.headers.get(n).unwrap().to_str().unwrap().to_string();
    let mut mac = <Hmac<Sha256>>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(&r.body);
    mac.verify_slice(&hex::decode(h("x-quota-signature")).unwrap()).expect("X-Quota-Signature verifies");
    let key = base64::engine::general_purpose::STANDARD.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let mut mac = <Hmac<Sha256>>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", h("webhook-id"), h("webhook-timestamp")).as_bytes());
    mac.update(&r.body);
    let sig = h("webhook-signature");
    let b64 = sig.strip_prefix("v1,").expect("v1 signature");
    mac.verify_slice(&base64::engine::general_purpose::STANDARD.decode(b64).unwrap())
        .expect("webhook-signature verifies");
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["id"].as_str().unwrap(), h("webhook-id"));
    body
}

const T0_US: i64 = 1_709_164_800_000_000; // 2024-02-29T00:00:00Z

async fn create_endpoint(s: &TestServer, session: &str, body: Value) -> Value {
    let r = s.http.post(s.url("/v1/webhooks")).bearer_auth(session).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 201);
    r.json().await.unwrap()
}

/// Wait (bounded) until the endpoint's delivery log holds `n` attempts. The worker stamps an
/// attempt's retry time when the send returns, so the test moves the clock only after that.
async fn wait_logged(s: &TestServer, session: &str, id: &str, n: usize) {
    let mut logged = 0;
    for _ in 0..500 {
        let log = s.get_json(&format!("/v1/webhooks/{id}/deliveries"), session).await;
        logged = log["data"].as_array().map_or(0, |d| d.iter().map(|x| x["log"].as_array().map_or(0, Vec::len)).sum());
        if logged >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{logged} attempts logged, expected {n}");
}

/// The committed events of `kind`: in the outbox, or (`usage.completed`) still owed by a
/// usage record that the worker has not written out yet.
async fn events_of(s: &TestServer, kind: &str) -> i64 {
    s.state.ledger.flush().await.unwrap();
    let owed = if kind == "usage.completed" {
        "SELECT COUNT(*) FROM usage_records WHERE pending_event IS NOT NULL"
    } else {
        "SELECT 0"
    };
    let sql = format!("SELECT (SELECT COUNT(*) FROM events WHERE type = $1) + ({owed})");
    quota_store::on_pool!(s.state.store.pool(), |p| sqlx::query_scalar::<_, i64>(&sql)
        .bind(kind)
        .fetch_one(p)
        .await
        .unwrap())
}

#[tokio::test]
async fn sandbox_usage_is_delivered_signed_and_retried_on_the_server_clock() {
    let clock = Arc::new(Clock::manual(T0_US));
    let s = TestServer::start_with_clock(|c| c.webhook_poll_ms = 20, clock.clone()).await;
    let rx = Receiver::start(2).await;
    let (_, session, key) = s.developer("test").await;
    let ep = create_endpoint(&s, &session, json!({"url": rx.url, "events": ["usage.completed"]})).await;
    let secret = ep["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));
    let id = ep["id"].as_str().unwrap().to_string();
    // The secret is shown once.
    let got = s.get_json(&format!("/v1/webhooks/{id}"), &session).await;
    assert!(got.get("secret").is_none());

    let r = s.chat(&key, simple_chat("hi", 8)).await;
    assert_eq!(r.status(), 200);
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_string();

    let first = rx.wait_for(1).await;
    wait_logged(&s, &session, &id, 1).await;
    // Not due yet: nothing more arrives until the clock reaches the first retry (5 s).
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rx.count(), 1);
    clock.advance(Duration::from_secs(5));
    rx.wait_for(2).await;
    wait_logged(&s, &session, &id, 2).await;
    clock.advance(Duration::from_secs(299));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rx.count(), 2, "the third attempt waits for 5 minutes");
    clock.advance(Duration::from_secs(1));
    let all = rx.wait_for(3).await;

    let body = verify(&secret, &first[0]);
    assert_eq!(body["type"], "usage.completed");
    assert_eq!(body["sandbox"], true);
    assert_eq!(body["data"]["sandbox"], true);
    assert_eq!(body["data"]["request_id"], request_id.as_str());
    assert!(body["id"].as_str().unwrap().starts_with("evt_"));
    for r in &all {
        assert_eq!(verify(&secret, r)["id"], body["id"], "every attempt carries the same event id");
        assert_eq!(r.body, first[0].body);
    }
    // The delivery log: two failures, then a success.
    let mut log = Value::Null;
    for _ in 0..200 {
        log = s.get_json(&format!("/v1/webhooks/{id}/deliveries"), &session).await;
        if log["data"][0]["status"] == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let d = &log["data"][0];
    assert_eq!(d["status"], "succeeded");
    let codes: Vec<i64> = d["log"].as_array().unwrap().iter().map(|a| a["status_code"].as_i64().unwrap()).collect();
    assert_eq!(codes, vec![500, 500, 200]);
    assert_eq!(d["log"][0]["response_snippet"], "not yet");

    // Replay sends the same event again; the test event reaches this endpoint too.
    let did = d["id"].as_str().unwrap();
    let r = s
        .http
        .post(s.url(&format!("/v1/webhooks/{id}/deliveries/{did}/replay")))
        .bearer_auth(&session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let again = rx.wait_for(4).await;
    assert_eq!(verify(&secret, &again[3])["id"], body["id"]);
    let r = s.http.post(s.url(&format!("/v1/webhooks/{id}/test"))).bearer_auth(&session).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let t = rx.wait_for(5).await;
    assert_eq!(verify(&secret, &t[4])["type"], "webhook.test");

    // Rotation: later deliveries are signed with the new secret only.
    let rot = s.call_json(reqwest::Method::POST, &format!("/v1/webhooks/{id}/rotate-secret"), &session, None).await;
    let new_secret = rot["secret"].as_str().unwrap().to_string();
    assert_ne!(new_secret, secret);
    s.http.post(s.url(&format!("/v1/webhooks/{id}/test"))).bearer_auth(&session).send().await.unwrap();
    let t = rx.wait_for(6).await;
    verify(&new_secret, &t[5]);
}

#[tokio::test]
async fn an_endpoint_failing_for_five_days_is_disabled() {
    let clock = Arc::new(Clock::manual(T0_US));
    let s = TestServer::start_with_clock(|c| c.webhook_poll_ms = 20, clock.clone()).await;
    let rx = Receiver::start(usize::MAX).await;
    let (_, session, key) = s.developer("test").await;
    let ep = create_endpoint(&s, &session, json!({"url": rx.url})).await;
    let id = ep["id"].as_str().unwrap();
    // A request every 10 hours keeps new deliveries failing. The clock moves only once every
    // attempt received so far is recorded, so the first failure is at T0 exactly.
    let mut hours = 0;
    loop {
        assert_eq!(s.chat(&key, simple_chat("hi", 4)).await.status(), 200);
        let n = rx.count();
        rx.wait_for(n + 1).await;
        // Poll until every attempt received is recorded (bounded at 60 s, then a clear failure:
        // never a guess that it probably happened).
        let mut status = Value::Null;
        let mut recorded_all = false;
        for _ in 0..6_000 {
            let recorded: i64 = quota_store::on_pool!(s.state.store.pool(), |p| sqlx::query_scalar(
                "SELECT COUNT(*) FROM webhook_attempts"
            )
            .fetch_one(p)
            .await
            .unwrap());
            status = s.get_json(&format!("/v1/webhooks/{id}"), &session).await["status"].clone();
            if recorded as usize >= rx.count() {
                recorded_all = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(recorded_all, "the worker never recorded the attempts it made");
        if status == "disabled" {
            break;
        }
        assert!(hours < 120, "still {status} after {hours} hours of failures");
        clock.advance(Duration::from_secs(36_000));
        hours += 10;
    }
    assert_eq!(hours, 120, "disabled once the failures have run for five days, not before");
    let got = s.get_json(&format!("/v1/webhooks/{id}"), &session).await;
    assert!(got["disabled_at"].is_string());
}

#[tokio::test]
async fn balance_low_fires_once_per_crossing() {
    let s = TestServer::start_with(|c| c.webhook_poll_ms = 3_600_000).await;
    let (user, session, key) = s.developer("test").await;
    let before = s.balance(&user).await;
    create_endpoint(
        &s,
        &session,
        json!({"url": "http://127.0.0.1:9/hook", "events": ["balance.low"], "low_balance_threshold": before - 1}),
    )
    .await;
    for _ in 0..4 {
        assert_eq!(s.chat(&key, simple_chat("hi", 4)).await.status(), 200);
    }
    assert_eq!(events_of(&s, "balance.low").await, 1, "below the threshold after the first request only");
    s.credit(&user, 1_000_000).await;
    assert_eq!(s.chat(&key, simple_chat("hi", 4)).await.status(), 200);
    assert_eq!(events_of(&s, "balance.low").await, 1, "above the threshold again: no crossing yet");
    let now = s.balance(&user).await;
    s.state
        .store
        .update_webhook_endpoint(
            &user,
            s.get_json("/v1/webhooks", &session).await["data"][0]["id"].as_str().unwrap(),
            &quota_store::webhooks::EndpointPatch { low_balance_threshold: Some(Some(now)), ..Default::default() },
            0,
        )
        .await
        .unwrap();
    s.state.webhooks.reload(&s.state.store).await.unwrap();
    assert_eq!(s.chat(&key, simple_chat("hi", 4)).await.status(), 200);
    assert_eq!(events_of(&s, "balance.low").await, 2, "a second crossing fires again");
}

#[tokio::test]
async fn the_outbox_outlives_a_worker_that_never_ran_and_rolled_back_charges_leave_no_event() {
    // The first instance charges but never delivers (its worker is idle for an hour): as if it
    // crashed after the commit. A second instance on the same database delivers the event.
    let first = TestServer::start_with(|c| c.webhook_poll_ms = 3_600_000).await;
    let rx = Receiver::start(0).await;
    let (_, session, key) = first.developer("test").await;
    let ep = create_endpoint(&first, &session, json!({"url": rx.url, "events": ["usage.completed"]})).await;
    let r = first.chat(&key, simple_chat("hi", 4)).await;
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(events_of(&first, "usage.completed").await, 1);
    assert_eq!(rx.count(), 0);

    // A charge whose commit fails is rolled back with its event.
    let boom = if on_postgres() {
        "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'boom'; END $$; \
         CREATE TRIGGER boom BEFORE INSERT ON usage_records FOR EACH ROW EXECUTE FUNCTION boom()"
    } else {
        "CREATE TRIGGER boom BEFORE INSERT ON usage_records BEGIN SELECT RAISE(ABORT, 'boom'); END"
    };
    quota_store::on_pool!(first.state.store.pool(), |p| sqlx::raw_sql(boom).execute(p).await.unwrap().rows_affected());
    let failed = first.chat(&key, simple_chat("hi", 4)).await;
    assert_eq!(failed.status(), 500);
    let failed_id = failed.headers()["x-request-id"].to_str().unwrap().to_string();
    quota_store::on_pool!(first.state.store.pool(), |p| sqlx::query(if on_postgres() {
        "DROP TRIGGER boom ON usage_records"
    } else {
        "DROP TRIGGER boom"
    })
    .execute(p)
    .await
    .unwrap()
    .rows_affected());
    assert_eq!(events_of(&first, "usage.completed").await, 1);
    assert_eq!(first.transfers_caused_by(&failed_id).await, 0);

    let second = TestServer::start_sharing(&first, |c| c.webhook_poll_ms = 20).await;
    let got = rx.wait_for(1).await;
    let body = verify(ep["secret"].as_str().unwrap(), &got[0]);
    assert_eq!(body["data"]["request_id"], request_id.as_str());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rx.count(), 1, "one event, one delivery: none for the rolled-back charge");
    drop(second);
}

#[tokio::test]
async fn a_freed_slot_is_refilled_at_once_not_at_the_next_tick() {
    // Twelve events wait in the outbox; a worker with two slots whose next tick is an hour away
    // must still deliver all of them: each finished send frees a slot that is claimed again.
    let first = TestServer::start_with(|c| c.webhook_poll_ms = 3_600_000).await;
    let rx = Receiver::start(0).await;
    let (_, session, key) = first.developer("test").await;
    let ep = create_endpoint(&first, &session, json!({"url": rx.url, "events": ["usage.completed"]})).await;
    for _ in 0..12 {
        assert_eq!(first.chat(&key, simple_chat("hi", 4)).await.status(), 200);
    }
    assert_eq!(events_of(&first, "usage.completed").await, 12);
    let second = TestServer::start_sharing(&first, |c| {
        c.webhook_poll_ms = 3_600_000;
        c.webhook_concurrency = 2;
    })
    .await;
    let got = rx.wait_for(12).await;
    let mut ids: Vec<String> =
        got.iter().map(|r| verify(ep["secret"].as_str().unwrap(), r)["id"].to_string()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 12, "twelve events, each delivered once");
    // The log is written after the sends: wait (bounded) for the last batch to be recorded.
    let mut recorded = (0, 0);
    for _ in 0..500 {
        recorded = (
            second.count("SELECT COUNT(*) FROM webhook_deliveries WHERE state = 'succeeded'", &[]).await,
            second.count("SELECT COUNT(*) FROM webhook_attempts WHERE succeeded", &[]).await,
        );
        if recorded == (12i64, 12i64) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(recorded, (12, 12), "every delivery and attempt recorded once");
}

#[tokio::test]
async fn a_patch_changes_only_what_it_names() {
    // SPEC §8 endpoint management: a disabled endpoint stays disabled when its description
    // changes, comes back with `enabled: true` (its failing run forgotten), and `null` clears
    // the threshold while an absent field leaves it.
    let s = TestServer::start_with(|c| c.webhook_poll_ms = 3_600_000).await;
    let (_, session, _) = s.developer("test").await;
    let ep = create_endpoint(
        &s,
        &session,
        json!({"url": "http://127.0.0.1:9/hook", "events": ["balance.low"], "low_balance_threshold": 500}),
    )
    .await;
    let path = format!("/v1/webhooks/{}", ep["id"].as_str().unwrap());
    let patch = |body: Value| s.call_json(reqwest::Method::PATCH, &path, &session, Some(body));
    let off = patch(json!({"enabled": false})).await;
    assert_eq!(off["status"], "disabled");
    let renamed = patch(json!({"description": "billing alerts"})).await;
    assert_eq!(renamed["status"], "disabled", "a description change does not re-enable");
    assert_eq!(renamed["description"], "billing alerts");
    assert_eq!(renamed["low_balance_threshold"], 500, "absent: unchanged");
    assert_eq!(renamed["events"], json!(["balance.low"]));
    let on = patch(json!({"enabled": true, "low_balance_threshold": null})).await;
    assert_eq!(on["status"], "enabled");
    assert!(on["disabled_at"].is_null());
    assert!(on["low_balance_threshold"].is_null(), "null clears");
    assert_eq!(on["description"], "billing alerts");
    assert_eq!(s.get_json(&path, &session).await, on);
}

#[tokio::test]
async fn bad_webhook_input_gets_clear_errors() {
    let s = TestServer::start_with(|c| c.webhook_allow_private_urls = false).await;
    let (_, session, _) = s.developer("test").await;
    let post = |body: Value| {
        let s = &s;
        let session = session.clone();
        async move { s.http.post(s.url("/v1/webhooks")).bearer_auth(session).json(&body).send().await.unwrap() }
    };
    for url in [
        "ftp://example.com/hook",
        "not a url",
        "http://127.0.0.1:8080/hook",
        "http://10.0.0.5/hook",
        "http://[::1]/h",
        "http://localhost/h",
    ] {
        let e = expect_error(post(json!({"url": url})).await, 400, "bad_request").await;
        assert!(e["error"]["message"].as_str().unwrap().contains("url"), "{e}");
    }
    let e = expect_error(
        post(json!({"url": "https://example.com/h", "description": "x".repeat(501)})).await,
        400,
        "bad_request",
    )
    .await;
    assert!(e["error"]["message"].as_str().unwrap().contains("description"));
    let e = expect_error(
        post(json!({"url": "https://example.com/h", "events": ["usage.completed", "charge.made"]})).await,
        400,
        "bad_request",
    )
    .await;
    assert!(e["error"]["message"].as_str().unwrap().contains("charge.made"));
    expect_error(post(json!({"url": "https://example.com/h", "low_balance_threshold": -1})).await, 400, "bad_request")
        .await;
    // Keys cannot manage webhooks; other developers' endpoints are not found.
    let ok = post(json!({"url": "https://example.com/h"})).await;
    assert_eq!(ok.status(), 201);
    let id = ok.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let (_, other, key) = s.developer("test").await;
    expect_error(s.http.get(s.url("/v1/webhooks")).bearer_auth(&key).send().await.unwrap(), 401, "invalid_api_key")
        .await;
    expect_error(
        s.http.get(s.url(&format!("/v1/webhooks/{id}"))).bearer_auth(&other).send().await.unwrap(),
        404,
        "not_found",
    )
    .await;
}

/// Sums of the ledger over one developer's transfers, by request id.
async fn ledger_charges(s: &TestServer, wallet: &str) -> std::collections::HashMap<String, i64> {
    s.state.ledger.flush().await.unwrap();
    let rows: Vec<(String, i64)> = quota_store::on_pool!(s.state.store.pool(), |p| sqlx::query_as(
        "SELECT cause, CAST(SUM(amount) AS BIGINT) FROM transfers WHERE from_account = $1 GROUP BY cause"
    )
    .bind(wallet)
    .fetch_all(p)
    .await
    .unwrap());
    rows.into_iter().collect()
}

#[tokio::test]
async fn usage_and_analytics_equal_the_ledger_across_days_weeks_and_months() {
    // 2024-02-25 (a Sunday) 20:00 UTC; steps of 7 hours cross day, week and month boundaries.
    let clock = Arc::new(Clock::manual(1_708_891_200_000_000));
    let s = TestServer::start_with_clock(|c| c.webhook_poll_ms = 50, clock.clone()).await;
    let (user, session, _) = s.developer("test").await;
    s.credit(&user, 100_000_000).await;
    let mut keys = Vec::new();
    for _ in 0..3 {
        keys.push(s.key(&session, "test").await);
    }
    let models = ["gpt-4o-mini", "anthropic/claude-haiku-4.5", "google/gemini-2.5-flash"];
    let mut n = 0;
    for step in 0..16 {
        for (i, (_, secret)) in keys.iter().enumerate() {
            let model = models[(step + i) % models.len()];
            let body = json!({"model": model, "messages": [{"role": "user", "content": "x ".repeat(step + 1)}], "max_tokens": 5 + step});
            assert_eq!(s.chat(secret, body).await.status(), 200);
            n += 1;
        }
        clock.advance(Duration::from_secs(7 * 3600));
    }
    let charges = ledger_charges(&s, &format!("wallet:{user}")).await;

    // JSON pages, all of them, equal the ledger request by request.
    let mut records = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("/v1/usage?limit=7&cursor={c}"),
            None => "/v1/usage?limit=7".into(),
        };
        let page = s.get_json(&q, &session).await;
        records.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(records.len(), n);
    for r in &records {
        assert_eq!(r["total"].as_i64().unwrap(), charges[r["id"].as_str().unwrap()], "{r}");
        assert_eq!(r["sandbox"], true);
    }
    // Filters: by key (with that key as the caller) and by model.
    let (kid, ksecret) = &keys[1];
    let by_key = s.get_json(&format!("/v1/usage?key_id={kid}&limit=500"), ksecret).await;
    assert_eq!(by_key["data"].as_array().unwrap().len(), 16);
    let by_model = s.get_json("/v1/usage?model=gpt-4o-mini&limit=500", &session).await;
    let expect = records.iter().filter(|r| r["model"] == "gpt-4o-mini").count();
    assert_eq!(by_model["data"].as_array().unwrap().len(), expect);
    expect_error(
        s.http.get(s.url("/v1/usage?from=yesterday")).bearer_auth(&session).send().await.unwrap(),
        400,
        "bad_request",
    )
    .await;

    // CSV matches JSON.
    let csv = s.http.get(s.url("/v1/usage?format=csv")).bearer_auth(&session).send().await.unwrap();
    assert!(csv.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    let text = csv.text().await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), n + 1);
    let header: Vec<&str> = lines[0].split(',').collect();
    let (id_col, total_col) =
        (header.iter().position(|h| *h == "id").unwrap(), header.iter().position(|h| *h == "total").unwrap());
    for (line, r) in lines[1..].iter().zip(&records) {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f[id_col], r["id"].as_str().unwrap());
        assert_eq!(f[total_col].parse::<i64>().unwrap(), r["total"].as_i64().unwrap());
    }

    // Analytics: the summary is the ledger's sum; every interval and grouping adds up to it.
    let total: i64 = charges.values().sum();
    let q = "startDate=2024-02-01&endDate=2024-03-31";
    let sum = s.get_json(&format!("/developers/analytics/summary?{q}"), &session).await;
    assert_eq!(sum["summary"]["cost"], total);
    assert_eq!(sum["summary"]["requests"], n);
    assert_eq!(sum["summary"]["profit"], -total);
    for interval in ["hour", "day", "week", "month"] {
        let ts = s
            .get_json(&format!("/developers/analytics/timeseries?{q}&metric=cost&interval={interval}"), &session)
            .await;
        let buckets = ts["data"].as_array().unwrap();
        assert_eq!(buckets.iter().map(|b| b["value"].as_i64().unwrap()).sum::<i64>(), total, "{interval}");
        if interval == "month" {
            let starts: Vec<&str> = buckets.iter().map(|b| b["start"].as_str().unwrap()).collect();
            assert_eq!(starts, vec!["2024-02-01T00:00:00.000Z", "2024-03-01T00:00:00.000Z"]);
            let feb: i64 = records
                .iter()
                .filter(|r| r["created_at"].as_str().unwrap() < "2024-03")
                .map(|r| r["total"].as_i64().unwrap())
                .sum();
            assert_eq!(buckets[0]["value"], feb);
        }
        if interval == "week" {
            assert_eq!(buckets[0]["start"], "2024-02-19T00:00:00.000Z");
            assert_eq!(buckets[1]["start"], "2024-02-26T00:00:00.000Z");
        }
    }
    for group in ["model", "key", "user", "app"] {
        let b =
            s.get_json(&format!("/developers/analytics/breakdown?{q}&metric=requests&groupBy={group}"), &session).await;
        let rows = b["data"].as_array().unwrap();
        assert_eq!(rows.iter().map(|r| r["requests"].as_i64().unwrap()).sum::<i64>(), n as i64, "{group}");
        assert_eq!(rows.iter().map(|r| r["cost"].as_i64().unwrap()).sum::<i64>(), total, "{group}");
    }
    expect_error(
        s.http.get(s.url("/developers/analytics/timeseries?interval=year")).bearer_auth(&session).send().await.unwrap(),
        400,
        "bad_request",
    )
    .await;

    // The ledger lists the caller's transfers.
    let ledger = s.get_json("/v1/ledger?limit=500", &session).await;
    let debits: i64 = ledger["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["direction"] == "debit")
        .map(|t| t["amount"].as_i64().unwrap())
        .sum();
    assert_eq!(debits, total);

    // Retention: 91 days later the raw records are gone, the analytics are not.
    clock.advance(Duration::from_secs(91 * 86_400));
    let mut left = usize::MAX;
    for _ in 0..300 {
        left = s.get_json("/v1/usage", &session).await["data"].as_array().unwrap().len();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(left, 0);
    let after = s.get_json(&format!("/developers/analytics/summary?{q}"), &session).await;
    assert_eq!(after["summary"], sum["summary"]);
    let days = s.get_json(&format!("/developers/analytics/timeseries?{q}&metric=cost&interval=day"), &session).await;
    assert_eq!(days["data"].as_array().unwrap().iter().map(|b| b["value"].as_i64().unwrap()).sum::<i64>(), total);
    s.assert_ledger_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_created_or_deleted_on_one_instance_applies_on_another_within_a_second() {
    if skip_unless_postgres("an_endpoint_created_or_deleted_on_one_instance_applies_on_another_within_a_second") {
        return;
    }
    // Neither worker delivers (an hour between passes): only the events written count.
    let a = TestServer::start_with(|c| c.webhook_poll_ms = 3_600_000).await;
    let b = TestServer::start_sharing(&a, |c| c.webhook_poll_ms = 3_600_000).await;
    let (_, session, key) = a.developer("test").await;
    let ep =
        create_endpoint(&a, &session, json!({"url": "https://example.com/hook", "events": ["usage.completed"]})).await;
    // B writes the event for a charge it makes once it knows of the endpoint.
    within(Duration::from_secs(1), "the new endpoint reaches instance B", || async {
        assert_eq!(b.chat(&key, simple_chat("hi", 4)).await.status(), 200);
        (events_of(&b, "usage.completed").await >= 1).then_some(())
    })
    .await;
    let id = ep["id"].as_str().unwrap();
    let r = a.http.delete(a.url(&format!("/v1/webhooks/{id}"))).bearer_auth(&session).send().await.unwrap();
    assert!(r.status().is_success());
    // After the deletion reaches B, its charges write no more events.
    within(Duration::from_secs(1), "the deletion reaches instance B", || async {
        let before = events_of(&b, "usage.completed").await;
        assert_eq!(b.chat(&key, simple_chat("hi", 4)).await.status(), 200);
        (events_of(&b, "usage.completed").await == before).then_some(())
    })
    .await;
}

/// `quota_webhook_backlog{stage=…}` as `/metrics` shows it now.
async fn backlog_gauge(s: &TestServer, stage: &str) -> Option<f64> {
    let text = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let prefix = format!("quota_webhook_backlog{{stage=\"{stage}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(prefix.as_str())).and_then(|v| v.trim().parse().ok())
}

/// Wait (bounded: the worker counts once a second) until the gauge reads `want`.
async fn wait_backlog(s: &TestServer, stage: &str, want: f64) {
    let mut seen = None;
    for _ in 0..500 {
        seen = backlog_gauge(s, stage).await;
        if seen == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("quota_webhook_backlog{{stage={stage}}} is {seen:?}, expected {want}");
}

#[tokio::test]
async fn the_backlog_gauge_counts_a_delivery_waiting_to_retry_until_it_succeeds() {
    // Delivery yields to requests under load, so operators watch its backlog: a delivery whose
    // first attempt failed is pending until its retry succeeds.
    let clock = Arc::new(Clock::manual(T0_US));
    let s = TestServer::start_with_clock(|c| c.webhook_poll_ms = 20, clock.clone()).await;
    let rx = Receiver::start(1).await;
    let (_, session, key) = s.developer("test").await;
    let ep = create_endpoint(&s, &session, json!({"url": rx.url, "events": ["usage.completed"]})).await;
    let id = ep["id"].as_str().unwrap().to_string();
    assert_eq!(s.chat(&key, simple_chat("hi", 4)).await.status(), 200);
    wait_logged(&s, &session, &id, 1).await;
    wait_backlog(&s, "deliveries", 1.0).await;
    assert_eq!(backlog_gauge(&s, "owed").await, Some(0.0));
    clock.advance(Duration::from_secs(5));
    rx.wait_for(2).await;
    wait_logged(&s, &session, &id, 2).await;
    wait_backlog(&s, "deliveries", 0.0).await;
}

#[tokio::test]
async fn a_hostname_that_resolves_to_a_private_address_is_refused_at_delivery() {
    // SPEC §8 SSRF: a hostname is checked again, resolved, at every delivery (its DNS may point
    // somewhere else than when the endpoint was added). The endpoint is added on a development
    // instance (private URLs allowed); a production instance on the same database delivers.
    let dev = TestServer::start_with(|c| {
        c.webhook_poll_ms = 3_600_000;
        c.webhook_allow_private_urls = true;
    })
    .await;
    let rx = Receiver::start(0).await;
    let url = rx.url.replace("127.0.0.1", "localhost");
    let (_, session, key) = dev.developer("test").await;
    let ep = create_endpoint(&dev, &session, json!({"url": url, "events": ["usage.completed"]})).await;
    let id = ep["id"].as_str().unwrap().to_string();
    assert_eq!(dev.chat(&key, simple_chat("hi", 4)).await.status(), 200);
    dev.state.ledger.flush().await.unwrap();

    let prod = TestServer::start_sharing(&dev, |c| {
        c.webhook_poll_ms = 20;
        c.webhook_allow_private_urls = false;
    })
    .await;
    wait_logged(&prod, &session, &id, 1).await;
    let log = prod.get_json(&format!("/v1/webhooks/{id}/deliveries"), &session).await;
    let attempt = &log["data"][0]["log"][0];
    assert!(
        attempt["error"].as_str().is_some_and(|e| e.contains("private address")),
        "the attempt was not refused: {attempt}"
    );
    assert_eq!(attempt["status_code"], Value::Null);
    assert_eq!(rx.count(), 0, "nothing reached the private address");
}

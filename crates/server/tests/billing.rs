//! SPEC §4 over HTTP with sandbox keys: exact ledger effects per request, the `quota` object,
//! streaming settlement, faults, idempotency, and overspend under concurrency.

mod common;

use common::{expect_error, simple_chat, TestServer};
use futures::StreamExt;
use quota_core::billing::Charge;
use quota_core::hold::{hold_amount, HoldBound};
use quota_core::{Catalog, Margin, Usage};
use serde_json::{json, Value};

/// The sandbox's prompt count for one user message "hi": 3 + 4 + 1.
const HI_PROMPT_TOKENS: u64 = 8;

fn cost_gpt4o_mini(prompt: u64, output: u64) -> i64 {
    let c = Catalog::builtin();
    Charge::for_usage(
        c.get("gpt-4o-mini").unwrap(),
        &Usage { input_tokens: prompt, output_tokens: output, ..Default::default() },
        Margin::ZERO,
    )
    .total()
    .get()
}

#[tokio::test]
async fn a_sandbox_completion_charges_exactly_its_metered_cost() {
    let s = TestServer::start().await;
    let (user, _, key) = s.developer("test").await;
    let before = s.balance(&user).await;
    let r = s.chat(&key, simple_chat("hi", 10)).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["usage"]["prompt_tokens"], HI_PROMPT_TOKENS);
    assert_eq!(v["usage"]["completion_tokens"], 10);
    let expected = cost_gpt4o_mini(HI_PROMPT_TOKENS, 10);
    assert_eq!(expected, 8, "ceil((8 × 0.15 + 10 × 0.6)) = ceil(7.2)");
    let q = &v["quota"];
    assert_eq!(q["credits_used"], expected);
    assert_eq!(q["balance_before"], before);
    assert_eq!(q["balance_after"], before - expected);
    assert_eq!(q["billing_mode"], "test");
    assert_eq!(q["sandbox"], true);
    assert!(q.get("markup").is_none());
    assert_eq!(s.stored_balance(&user).await, before - expected);
    let rid = q["request_id"].as_str().unwrap();
    assert_eq!(s.transfers_caused_by(rid).await, 1);
    let (to, kind, amount): (String, String, i64) = quota_store::on_pool!(s.state.store.pool(), |p| sqlx::query_as(
        "SELECT to_account, kind, amount FROM transfers WHERE cause = $1"
    )
    .bind(rid)
    .fetch_one(p)
    .await
    .unwrap());
    assert_eq!((to.as_str(), kind.as_str(), amount), ("platform:sandbox_revenue", "sandbox_charge", expected));
    let (status, total, sandbox): (String, i64, bool) =
        quota_store::on_pool!(s.state.store.pool(), |p| sqlx::query_as(
            "SELECT status, total, sandbox FROM usage_records WHERE id = $1"
        )
        .bind(rid)
        .fetch_one(p)
        .await
        .unwrap());
    assert_eq!((status.as_str(), total, sandbox), ("succeeded", expected, true));
    assert_eq!(s.state.ledger.open_holds(), 0);
    s.assert_ledger_ok().await;
}

#[tokio::test]
async fn the_same_request_gets_the_same_sandbox_text() {
    let s = TestServer::start().await;
    let (_, _, key) = s.developer("test").await;
    let a: Value = s.chat(&key, simple_chat("tell me a story", 30)).await.json().await.unwrap();
    let b: Value = s.chat(&key, simple_chat("tell me a story", 30)).await.json().await.unwrap();
    let c: Value = s.chat(&key, simple_chat("tell me a joke", 30)).await.json().await.unwrap();
    assert_eq!(a["choices"][0]["message"]["content"], b["choices"][0]["message"]["content"]);
    assert_ne!(a["choices"][0]["message"]["content"], c["choices"][0]["message"]["content"]);
    assert_ne!(a["quota"]["request_id"], b["quota"]["request_id"]);
}

/// Read an SSE response into its `data:` payloads.
async fn sse_data(resp: reqwest::Response) -> Vec<String> {
    let text = resp.text().await.unwrap();
    text.split("\n\n").filter_map(|e| e.strip_prefix("data: ").map(str::to_string)).collect()
}

#[tokio::test]
async fn a_stream_ends_with_usage_and_quota_after_the_charge_is_committed() {
    let s = TestServer::start().await;
    let (user, _, key) = s.developer("test").await;
    let before = s.balance(&user).await;
    let mut body = simple_chat("hi", 6);
    body["stream"] = json!(true);
    let r = s.chat(&key, body).await;
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let events = sse_data(r).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 6);
    assert_eq!(last["object"], "chat.completion.chunk");
    let expected = cost_gpt4o_mini(HI_PROMPT_TOKENS, 6);
    assert_eq!(last["quota"]["credits_used"], expected);
    assert_eq!(last["quota"]["balance_after"], before - expected);
    // Committed before the final chunk was sent: the stored balance already shows it.
    assert_eq!(s.state.store.balance(&quota_core::AccountId::wallet(&user)).await.unwrap(), before - expected);
    let text: String = events[..events.len() - 2]
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_string))
        .collect();
    assert_eq!(quota_core::tokens::count_tokens(&text), 6);
    s.assert_ledger_ok().await;
}

#[tokio::test]
async fn faults_are_not_charged_and_map_to_their_errors() {
    let s = TestServer::start().await;
    let (user, _, key) = s.developer("test").await;
    let before = s.balance(&user).await;
    for (fault, status, code) in [
        ("rate_limit", 429, "rate_limit"),
        ("upstream_error", 502, "upstream_error"),
        ("timeout", 504, "gateway_timeout"),
    ] {
        for stream in [false, true] {
            let mut body = simple_chat("hi", 5);
            body["stream"] = json!(stream);
            let r = s
                .http
                .post(s.url("/v1/chat/completions"))
                .bearer_auth(&key)
                .header("X-Quota-Sandbox-Fault", fault)
                .json(&body)
                .send()
                .await
                .unwrap();
            expect_error(r, status, code).await;
        }
    }
    let r = s
        .http
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("X-Quota-Sandbox-Fault", "explode")
        .json(&simple_chat("hi", 5))
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "bad_request").await;
    assert_eq!(s.stored_balance(&user).await, before);
    assert_eq!(s.state.ledger.open_holds(), 0);
    // Failed requests still leave usage records, with nothing charged.
    let (n, total): (i64, i64) = quota_store::on_pool!(s.state.store.pool(), |p| sqlx::query_as(
        "SELECT COUNT(*), CAST(COALESCE(SUM(total), 0) AS BIGINT) FROM usage_records WHERE status <> 'succeeded'"
    )
    .fetch_one(p)
    .await
    .unwrap());
    assert_eq!((n, total), (6, 0));
}

#[tokio::test]
async fn a_mid_stream_disconnect_charges_what_was_produced() {
    let s = TestServer::start().await;
    let (user, _, key) = s.developer("test").await;
    let before = s.balance(&user).await;
    let mut body = simple_chat("hi", 20);
    body["stream"] = json!(true);
    let r = s
        .http
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("X-Quota-Sandbox-Fault", "disconnect_mid_stream")
        .json(&body)
        .send()
        .await
        .unwrap();
    let events = sse_data(r).await;
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_error");
    assert!(!events.contains(&"[DONE]".to_string()));
    let produced: String = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_string))
        .collect();
    let produced_tokens = quota_core::tokens::count_tokens(&produced);
    assert!(produced_tokens > 0 && produced_tokens < 20);
    assert_eq!(s.stored_balance(&user).await, before - cost_gpt4o_mini(HI_PROMPT_TOKENS, produced_tokens));
    s.assert_ledger_ok().await;
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_is_charged_for_what_was_forwarded() {
    let s = TestServer::start().await;
    let (user, _, key) = s.developer("test").await;
    let before = s.balance(&user).await;
    let mut body = simple_chat("hi", 40);
    body["stream"] = json!(true);
    let r = s.chat(&key, body).await;
    let mut stream = r.bytes_stream();
    // Read one chunk, then hang up.
    let _first = stream.next().await.unwrap().unwrap();
    drop(stream);
    // The server notices on its next write; the settlement follows. Wait on the ledger, not a clock.
    let mut charged = 0;
    for _ in 0..500 {
        s.state.ledger.flush().await.unwrap();
        charged = before - s.state.store.balance(&quota_core::AccountId::wallet(&user)).await.unwrap();
        if charged != 0 && s.state.ledger.open_holds() == 0 {
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(s.state.ledger.open_holds(), 0, "the hold was settled or released");
    assert!(charged > 0, "what was forwarded is charged");
    assert!(charged <= cost_gpt4o_mini(HI_PROMPT_TOKENS, 40), "never more than the whole answer");
    s.assert_ledger_ok().await;
}

#[tokio::test]
async fn insufficient_credits_is_402_before_anything_runs() {
    let s = TestServer::start_with(|c| c.welcome_credits = 0).await;
    let (user, _, key) = s.developer("test").await;
    let r = s.chat(&key, simple_chat("hi", 10)).await;
    expect_error(r, 402, "insufficient_credits").await;
    s.credit(&user, 7).await;
    // The reservation for this request is 8 credits: 7 is not enough.
    expect_error(s.chat(&key, simple_chat("hi", 10)).await, 402, "insufficient_credits").await;
    s.credit(&user, 1).await;
    assert_eq!(s.chat(&key, simple_chat("hi", 10)).await.status(), 200);
    assert_eq!(s.stored_balance(&user).await, 0);
    expect_error(s.chat(&key, simple_chat("hi", 10)).await, 402, "insufficient_credits").await;
    s.assert_ledger_ok().await;
}

#[tokio::test]
async fn without_max_tokens_the_reservation_covers_the_models_maximum_output() {
    let s = TestServer::start_with(|c| c.welcome_credits = 0).await;
    let (user, _, key) = s.developer("test").await;
    let model = Catalog::builtin().get("gpt-4o-mini").unwrap().clone();
    let needed = hold_amount(
        &model,
        &HoldBound::counted(&model, HI_PROMPT_TOKENS, Some(model.max_output_tokens), 1),
        Margin::ZERO,
    )
    .total()
    .get();
    s.credit(&user, needed - 1).await;
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    expect_error(s.chat(&key, body.clone()).await, 402, "insufficient_credits").await;
    s.credit(&user, 1).await;
    assert_eq!(s.chat(&key, body).await.status(), 200);
}

#[tokio::test]
async fn n_choices_multiply_the_reservation_and_the_charge() {
    let s = TestServer::start().await;
    let (user, _, key) = s.developer("test").await;
    let before = s.balance(&user).await;
    let mut body = simple_chat("hi", 10);
    body["n"] = json!(3);
    let v: Value = s.chat(&key, body).await.json().await.unwrap();
    assert_eq!(v["choices"].as_array().unwrap().len(), 3);
    assert_eq!(v["usage"]["completion_tokens"], 30);
    assert_eq!(s.stored_balance(&user).await, before - cost_gpt4o_mini(HI_PROMPT_TOKENS, 30));
}

#[tokio::test]
async fn tools_get_a_synthetic_call_and_a_tool_result_gets_text() {
    let s = TestServer::start().await;
    let (_, _, key) = s.developer("test").await;
    let tools = json!([{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}]);
    let v: Value = s
        .chat(&key, json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "find x"}], "tools": tools}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "lookup");
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args["q"].is_string());
    let follow = json!({"model": "gpt-4o", "tools": tools, "messages": [
        {"role": "user", "content": "find x"},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "x is 42"},
    ]});
    let v: Value = s.chat(&key, follow).await.json().await.unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(v["choices"][0]["message"]["content"].is_string());
}

#[tokio::test]
async fn an_idempotency_key_never_charges_twice() {
    let s = TestServer::start().await;
    let (user, _, key) = s.developer("test").await;
    let before = s.balance(&user).await;
    let send = |body: Value, idem: &'static str| {
        s.http.post(s.url("/v1/chat/completions")).bearer_auth(&key).header("Idempotency-Key", idem).json(&body).send()
    };
    let first = send(simple_chat("hi", 10), "order-1").await.unwrap();
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    let again = send(simple_chat("hi", 10), "order-1").await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(first, again);
    expect_error(send(simple_chat("different", 10), "order-1").await.unwrap(), 409, "idempotency_conflict").await;
    assert_eq!(s.stored_balance(&user).await, before - cost_gpt4o_mini(HI_PROMPT_TOKENS, 10));
    // Streams replay too, without a second charge.
    let mut stream_body = simple_chat("hi", 4);
    stream_body["stream"] = json!(true);
    let a = send(stream_body.clone(), "order-2").await.unwrap().text().await.unwrap();
    let b = send(stream_body, "order-2").await.unwrap().text().await.unwrap();
    assert_eq!(a, b);
    assert_eq!(
        s.stored_balance(&user).await,
        before - cost_gpt4o_mini(HI_PROMPT_TOKENS, 10) - cost_gpt4o_mini(HI_PROMPT_TOKENS, 4)
    );
    // A failed request under a key is not replayed: the retry runs.
    let r = s
        .http
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("Idempotency-Key", "order-3")
        .header("X-Quota-Sandbox-Fault", "rate_limit")
        .json(&simple_chat("hi", 10))
        .send()
        .await
        .unwrap();
    expect_error(r, 429, "rate_limit").await;
    let mut retried = None;
    for _ in 0..100 {
        // The failed claim is released just after the error is sent.
        let r = send(simple_chat("hi", 10), "order-3").await.unwrap();
        if r.status() == 200 {
            retried = Some(r);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(retried.is_some());
    let long = "k".repeat(256);
    let r = s
        .http
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("Idempotency-Key", long)
        .json(&simple_chat("hi", 10))
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "bad_request").await;
    s.assert_ledger_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_parallel_requests_against_a_wallet_that_affords_fifty() {
    let s = TestServer::start_with(|c| c.welcome_credits = 0).await;
    let (user, _, key) = s.developer("test").await;
    let per_request = cost_gpt4o_mini(HI_PROMPT_TOKENS, 10);
    let model = Catalog::builtin().get("gpt-4o-mini").unwrap().clone();
    assert_eq!(
        hold_amount(&model, &HoldBound::counted(&model, HI_PROMPT_TOKENS, Some(10), 1), Margin::ZERO).total().get(),
        per_request,
        "hold = charge, so 'affordable' is exact"
    );
    s.credit(&user, 50 * per_request).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (http, url, key) = (s.http.clone(), s.url("/v1/chat/completions"), key.clone());
        let stream = i % 2 == 0;
        tasks.push(tokio::spawn(async move {
            let mut body = simple_chat("hi", 10);
            body["stream"] = json!(stream);
            let r = http.post(url).bearer_auth(key).json(&body).send().await.unwrap();
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            (status, text)
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        let (status, text) = t.await.unwrap();
        match status {
            200 => ok += 1,
            402 => {
                assert!(text.contains("insufficient_credits"));
                refused += 1
            }
            other => panic!("unexpected {other}: {text}"),
        }
    }
    assert_eq!((ok, refused), (50, 150));
    assert_eq!(s.stored_balance(&user).await, 0);
    s.assert_ledger_ok().await;
}

#[tokio::test]
async fn a_key_whose_charged_response_was_lost_in_a_crash_is_refused_not_charged_again() {
    use sha2::Digest;
    let s = TestServer::start().await;
    let (user, _, key) = s.developer("test").await;
    let body = serde_json::to_vec(&simple_chat("hi", 10)).unwrap();
    let scope = format!("{user}:-:test");
    let hash = quota_server::gateway::idempotency::request_hash(&[b"/v1/chat/completions", &body]);
    let stale = quota_store::now_ms() - 3600 * 1000;
    // What a crash between the charge and the stored response leaves behind: an unfinished
    // claim, older than every timeout, and the charge under the key's derived transfer id.
    for (idem, charged) in [("lost-1", true), ("lost-2", false)] {
        quota_store::on_pool!(s.state.store.pool(), |p| sqlx::query(
            "INSERT INTO idempotency_keys (scope, key, request_hash, created_at) VALUES ($1, $2, $3, $4)"
        )
        .bind(&scope)
        .bind(idem)
        .bind(&hash)
        .bind(stale)
        .execute(p)
        .await
        .unwrap()
        .rows_affected());
        if charged {
            let digest = sha2::Sha256::digest(format!("{scope}\u{0}{idem}").as_bytes());
            s.state
                .ledger
                .transfer(quota_core::transfers::restored(
                    format!("ledg_idem_{}_base", &hex::encode(digest)[..32]),
                    quota_core::AccountId::wallet(&user),
                    quota_core::AccountId::Platform(quota_core::PlatformAccount::SandboxRevenue),
                    quota_core::Credits::new(8),
                    quota_core::TransferKind::SandboxCharge,
                    "req_before_crash".into(),
                    stale,
                ))
                .await
                .unwrap();
        }
    }
    let before = s.stored_balance(&user).await;
    let send = |idem: &'static str| {
        s.http
            .post(s.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .header("Idempotency-Key", idem)
            .body(body.clone())
            .send()
    };
    expect_error(send("lost-1").await.unwrap(), 409, "idempotency_conflict").await;
    assert_eq!(s.stored_balance(&user).await, before, "the lost attempt's charge is not repeated");
    // A stale claim whose attempt charged nothing simply runs again.
    let v: Value = send("lost-2").await.unwrap().json().await.unwrap();
    assert_eq!(v["quota"]["credits_used"], 8);
    assert_eq!(s.stored_balance(&user).await, before - 8);
    s.assert_ledger_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_requests_with_one_idempotency_key_charge_once() {
    // SPEC §4 (7) under concurrency: twenty copies of one request race for one key; exactly one
    // runs and charges, the others are replayed or told it is in progress (409), never charged.
    let s = TestServer::start().await;
    let (user, _, key) = s.developer("test").await;
    let before = s.balance(&user).await;
    let racers: Vec<_> = (0..20)
        .map(|_| {
            let req = s
                .http
                .post(s.url("/v1/chat/completions"))
                .bearer_auth(&key)
                .header("Idempotency-Key", "race-1")
                .json(&simple_chat("hi", 10));
            tokio::spawn(async move { req.send().await.unwrap() })
        })
        .collect();
    let (mut ran, mut replayed, mut busy) = (0, 0, 0);
    for r in racers {
        let r = r.await.unwrap();
        match (r.status().as_u16(), r.headers().contains_key("idempotent-replayed")) {
            (200, false) => ran += 1,
            (200, true) => replayed += 1,
            (409, _) => busy += 1,
            (status, _) => panic!("unexpected {status}: {}", r.text().await.unwrap()),
        }
    }
    assert_eq!(ran, 1, "one request ran ({replayed} replayed, {busy} in progress)");
    assert_eq!(replayed + busy, 19);
    assert_eq!(s.stored_balance(&user).await, before - cost_gpt4o_mini(HI_PROMPT_TOKENS, 10));
    s.assert_ledger_ok().await;
}

#[tokio::test]
async fn sandbox_and_production_keys_do_not_share_idempotency_keys() {
    let up = common::fake_openai::FakeUpstream::start().await;
    let base = up.base_url.clone();
    let s = TestServer::start_with(move |c| {
        c.openai_base_url = base;
        c.openai_api_key = Some("sk-up".into());
    })
    .await;
    let (_, session, test_key) = s.developer("test").await;
    let (_, dev_key) = s.key(&session, "developer").await;
    let send = |k: &str| {
        s.http
            .post(s.url("/v1/chat/completions"))
            .bearer_auth(k)
            .header("Idempotency-Key", "same")
            .json(&simple_chat("hi", 5))
            .send()
    };
    let a: Value = send(&test_key).await.unwrap().json().await.unwrap();
    let b = send(&dev_key).await.unwrap();
    assert!(b.headers().get("idempotent-replayed").is_none());
    let b: Value = b.json().await.unwrap();
    assert_eq!(a["quota"]["sandbox"], true);
    assert_eq!(b["quota"]["billing_mode"], "developer");
    assert_eq!(up.calls(), 1);
}

#[tokio::test]
async fn metrics_count_requests_reservations_and_ledger_commits() {
    let s = TestServer::start().await;
    let (_, _, key) = s.developer("test").await;
    assert_eq!(s.chat(&key, simple_chat("hi", 3)).await.status(), 200);
    let text = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for name in [
        "quota_http_requests_total{route=\"/v1/chat/completions\",status=\"200\"}",
        "quota_http_request_duration_seconds_bucket",
        "quota_reservations_total{outcome=\"held\"}",
        "quota_ledger_commit_seconds_bucket",
        "quota_ledger_open_holds",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
}

//! Developer keys proxied to a fake OpenAI upstream: what is forwarded, what is charged, what
//! happens when the upstream over-reports, errors, or the client leaves mid-stream.

mod common;

use common::fake_openai::Script;
use common::{chat_hold, expect_error, proxied, simple_chat, TestServer};
use futures::StreamExt;
use quota_core::billing::Charge;
use quota_core::{Catalog, Margin, Usage};
use serde_json::{json, Value};

fn cost(model: &str, usage: Usage) -> i64 {
    Charge::for_usage(Catalog::builtin().get(model).unwrap(), &usage, Margin::ZERO).total().get()
}

#[tokio::test]
async fn a_proxied_completion_forwards_allowed_fields_and_charges_the_reported_usage() {
    let (s, up) = proxied().await;
    let (user, _, key) = s.developer("developer").await;
    let before = s.balance(&user).await;
    up.script(Script::Complete { prompt: 1000, cached: 400, completion: 50, text: "Hi!".into() });
    let mut body = simple_chat(&common::prompt_of(1000), 100);
    body["service_tier"] = json!("priority");
    body["temperature"] = json!(0.2);
    let v: Value = s.chat(&key, body).await.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "Hi!");
    let (headers, sent) = up.last_request();
    assert_eq!(headers["authorization"], "Bearer sk-upstream-secret-0123456789");
    assert_eq!(sent["model"], "gpt-4o-mini");
    assert_eq!(sent["temperature"], 0.2);
    assert!(sent.get("service_tier").is_none(), "fields Quota does not forward never reach the provider");
    // 600 × 0.15 + 400 × 0.075 + 50 × 0.6 = 90 + 30 + 30 = 150.
    let expected =
        cost("gpt-4o-mini", Usage { input_tokens: 600, cached_tokens: 400, output_tokens: 50, ..Default::default() });
    assert_eq!(expected, 150);
    assert_eq!(v["quota"]["credits_used"], expected);
    assert_eq!(v["quota"]["billing_mode"], "developer");
    assert!(v["quota"].get("sandbox").is_none());
    assert_eq!(s.stored_balance(&user).await, before - expected);
    let to: String = quota_store::on_pool!(s.state.store.pool(), |p| sqlx::query_scalar(
        "SELECT to_account FROM transfers WHERE cause = $1"
    )
    .bind(v["quota"]["request_id"].as_str().unwrap())
    .fetch_one(p)
    .await
    .unwrap());
    assert_eq!(to, "platform:revenue");
    s.assert_ledger_ok().await;
}

#[tokio::test]
async fn streams_always_ask_the_upstream_for_usage_and_end_with_quota() {
    let (s, up) = proxied().await;
    let (user, _, key) = s.developer("developer").await;
    let before = s.balance(&user).await;
    up.script(Script::Complete { prompt: 20, cached: 0, completion: 3, text: "Hey there".into() });
    let mut body = simple_chat("hello", 100);
    body["stream"] = json!(true);
    let text = s.chat(&key, body).await.text().await.unwrap();
    let (_, sent) = up.last_request();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    let events: Vec<&str> = text.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).collect();
    assert_eq!(events.len(), 3, "content chunk, final chunk, [DONE]: the upstream's usage chunk is replaced: {text}");
    let last: Value = serde_json::from_str(events[1]).unwrap();
    assert_eq!(last["usage"]["prompt_tokens"], 20);
    assert_eq!(last["id"], "chatcmpl-fake");
    let expected = cost("gpt-4o-mini", Usage { input_tokens: 20, output_tokens: 3, ..Default::default() });
    assert_eq!(last["quota"]["credits_used"], expected);
    assert_eq!(s.stored_balance(&user).await, before - expected);
}

#[tokio::test]
async fn upstream_errors_are_mapped_scrubbed_and_not_charged() {
    let (s, up) = proxied().await;
    let (user, _, key) = s.developer("developer").await;
    let before = s.balance(&user).await;
    up.script(Script::Error { status: 429, message: "Rate limit reached".into() });
    expect_error(s.chat(&key, simple_chat("x", 5)).await, 429, "rate_limit").await;
    up.script(Script::Error { status: 500, message: "boom for key sk-proj-ABCDEFGHIJKLMNOPQRSTUVWX".into() });
    let e = expect_error(s.chat(&key, simple_chat("x", 5)).await, 502, "upstream_error").await;
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(msg.contains("boom"));
    assert!(!msg.contains("ABCDEFGHIJKLMNOP"), "credentials are scrubbed: {msg}");
    up.script(Script::Error {
        status: 401,
        message: "Incorrect API key provided: sk-upstream-secret-0123456789".into(),
    });
    let e = expect_error(s.chat(&key, simple_chat("x", 5)).await, 502, "upstream_error").await;
    assert!(!e.to_string().contains("sk-upstream-secret"), "our own provider key never leaks");
    assert_eq!(s.stored_balance(&user).await, before);
    assert_eq!(s.state.ledger.open_holds(), 0);
}

#[tokio::test]
async fn an_unconfigured_provider_is_503() {
    let s = TestServer::start().await;
    let (user, _, key) = s.developer("developer").await;
    expect_error(s.chat(&key, simple_chat("x", 5)).await, 503, "provider_unavailable").await;
    assert_eq!(s.stored_balance(&user).await, 1_000_000);
}

#[tokio::test]
async fn an_unreachable_upstream_is_502_and_a_slow_one_504() {
    let s = TestServer::start_with(|c| {
        c.openai_base_url = "http://127.0.0.1:9/v1".into();
        c.openai_api_key = Some("sk-x".into());
    })
    .await;
    let (user, _, key) = s.developer("developer").await;
    expect_error(s.chat(&key, simple_chat("x", 5)).await, 502, "upstream_error").await;
    assert_eq!(s.stored_balance(&user).await, 1_000_000);
}

#[tokio::test]
async fn an_over_reporting_upstream_is_charged_the_hold_and_the_excess_is_the_platforms_loss() {
    let (s, up) = proxied().await;
    let (user, _, key) = s.developer("developer").await;
    // Leave just enough for the reservation of a 5-token answer.
    let held = chat_hold(&simple_chat("x", 5), Margin::ZERO);
    let drain = s.balance(&user).await - held;
    s.state
        .ledger
        .transfer(quota_core::transfers::restored(
            "drain".into(),
            quota_core::AccountId::wallet(&user),
            quota_core::AccountId::Platform(quota_core::PlatformAccount::Adjustments),
            quota_core::Credits::new(drain),
            quota_core::TransferKind::AdminCredit,
            "test".into(),
            0,
        ))
        .await
        .unwrap();
    assert_eq!(s.balance(&user).await, held);
    // The upstream claims far more output than max_tokens allowed.
    up.script(Script::Complete { prompt: 10, cached: 0, completion: 10_000, text: "x".into() });
    let v: Value = s.chat(&key, simple_chat("x", 5)).await.json().await.unwrap();
    let metered = cost("gpt-4o-mini", Usage { input_tokens: 10, output_tokens: 10_000, ..Default::default() });
    assert!(metered > held);
    // SPEC §4.3(3): the payer pays the hold, never more; the platform books the rest as a loss.
    assert_eq!(v["quota"]["credits_used"], held);
    assert_eq!(s.stored_balance(&user).await, 0);
    let losses =
        s.state.store.balance(&quota_core::AccountId::Platform(quota_core::PlatformAccount::Losses)).await.unwrap();
    assert_eq!(losses, -(metered - held));
    expect_error(s.chat(&key, simple_chat("x", 5)).await, 402, "insufficient_credits").await;
    s.assert_ledger_ok().await;
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_stream_pays_for_the_chunks_it_was_sent() {
    let (s, up) = proxied().await;
    let (user, _, key) = s.developer("developer").await;
    let before = s.balance(&user).await;
    up.script(Script::GatedStream { prompt: 12, completion: 99 });
    let gate = up.gate();
    let resp = s.chat(&key, body_for_estimate()).await;
    let mut stream = resp.bytes_stream();
    gate.send(()).unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("word"));
    drop(stream);
    // Keep the upstream talking until the gateway notices the client is gone, then wait (bounded)
    // for the settlement it spawned: the fake stops reading the gate as soon as its write fails,
    // which can be before that settlement commits.
    for _ in 0..2000 {
        if s.state.ledger.open_holds() == 0 {
            break;
        }
        let _ = gate.send(());
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(s.state.ledger.open_holds(), 0);
    let charged = before - s.stored_balance(&user).await;
    // The upstream never got to report usage: prompt estimate + the forwarded words.
    let (status, input, output): (String, i64, i64) = quota_store::on_pool!(s.state.store.pool(), |p| sqlx::query_as(
        "SELECT status, input_tokens, output_tokens FROM usage_records"
    )
    .fetch_one(p)
    .await
    .unwrap());
    assert_eq!(status, "client_disconnected");
    let sent = serde_json::to_vec(&body_for_estimate()).unwrap();
    assert_eq!(input as u64, quota_providers::openai::estimate_prompt_tokens(&sent));
    // "word " is one token per chunk; at least the chunk the client read was produced.
    assert!(output >= 1);
    assert_eq!(
        charged,
        cost("gpt-4o-mini", Usage { input_tokens: input as u64, output_tokens: output as u64, ..Default::default() })
    );
    s.assert_ledger_ok().await;
}

fn body_for_estimate() -> Value {
    let mut body = simple_chat("hello", 100);
    body["stream"] = json!(true);
    body
}

/// A GPT-5 reasoning request (SPEC §3.1b, §4.1): the client's `max_tokens` goes upstream as
/// `max_completion_tokens`, refused sampling parameters are dropped, and the reasoning tokens
/// inside `completion_tokens` are billed as output: 800 in ($1.25) + 200 cached ($0.125) + 600
/// out incl. 500 reasoning ($10) per 1M = 1,000 + 25 + 6,000 = 7,025 credits.
#[tokio::test]
async fn a_gpt_5_reasoning_request_is_translated_and_its_reasoning_tokens_billed_as_output() {
    let (s, up) = proxied().await;
    let (user, _, key) = s.developer("developer").await;
    let before = s.balance(&user).await;
    up.script(Script::Complete { prompt: 1000, cached: 200, completion: 600, text: "42".into() });
    let mut body = simple_chat(&common::prompt_of(1000), 700);
    body["model"] = json!("gpt-5");
    body["temperature"] = json!(0.2);
    body["top_p"] = json!(0.9);
    body["reasoning_effort"] = json!("high");
    let v: Value = s.chat(&key, body).await.json().await.unwrap();
    let (_, sent) = up.last_request();
    assert_eq!(sent["max_completion_tokens"], 700);
    assert!(sent.get("max_tokens").is_none() && sent.get("temperature").is_none() && sent.get("top_p").is_none());
    assert_eq!(sent["reasoning_effort"], "high");
    assert_eq!(v["quota"]["credits_used"], 7_025);
    assert_eq!(s.stored_balance(&user).await, before - 7_025);
}

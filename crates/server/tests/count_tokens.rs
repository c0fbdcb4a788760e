//! Token counting (SPEC §3.8): `POST /v1/messages/count_tokens` and Gemini's `:countTokens`,
//! forwarded to fakes speaking the providers' formats or counted by the sandbox; authenticated,
//! `credits.read` enough, and free: the ledger and the usage records stay untouched.

mod common;

use common::fake_anthropic::{AnthropicUsage, FakeAnthropic, Script as AnthropicScript};
use common::fake_gemini::{FakeGemini, GeminiUsage, Script as GeminiScript};
use common::TestServer;
use serde_json::{json, Value};

fn claude_body() -> Value {
    json!({"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "How many tokens is this?"}],
        "system": "Count me too."})
}

fn gemini_body() -> Value {
    json!({"contents": [{"role": "user", "parts": [{"text": "How many tokens is this?"}]}]})
}

async fn untouched(s: &TestServer, user: &str, before: i64) {
    assert_eq!(s.stored_balance(user).await, before);
    assert_eq!(s.count("SELECT COUNT(*) FROM usage_records", &[]).await, 0);
    assert_eq!(s.state.ledger.open_holds(), 0);
}

#[tokio::test]
async fn counts_are_forwarded_to_the_providers_and_cost_nothing() {
    let claude = FakeAnthropic::start().await;
    let gemini = FakeGemini::start().await;
    let s = TestServer::start_with(|c| {
        c.anthropic_base_url = claude.base_url.clone();
        c.anthropic_api_key = Some("sk-ant-upstream-0123456789".into());
        c.google_base_url = gemini.base_url.clone();
        c.gemini_api_key = Some("AIzaUpstream0123456789abcdef".into());
    })
    .await;
    let (user, _, key) = s.developer("developer").await;
    let before = s.stored_balance(&user).await;
    claude.script(AnthropicScript::Answer {
        content: vec![],
        stop_reason: "end_turn",
        usage: AnthropicUsage { input: 17, cache_read: 0, cache_write: 0, output: 0, cache_write_1h: 0 },
    });
    let r = s
        .http
        .post(s.url("/v1/messages/count_tokens"))
        .header("x-api-key", &key)
        .header("anthropic-version", "2023-06-01")
        .json(&claude_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-ratelimit-limit"), "count requests are rate limited");
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"input_tokens": 17}));
    let (headers, sent) = claude.last_request();
    assert_eq!(headers["x-api-key"], "sk-ant-upstream-0123456789");
    assert_eq!(sent["model"], "claude-haiku-4-5");
    assert!(sent.get("max_tokens").is_none(), "count_tokens takes no max_tokens");
    gemini.script(GeminiScript::Answer {
        parts: vec![],
        finish: "STOP",
        usage: GeminiUsage { prompt: 23, cached: 0, candidates: 0, thoughts: 0 },
    });
    let r = s
        .http
        .post(s.url("/v1beta/models/gemini-2.5-flash:countTokens"))
        .header("x-goog-api-key", &key)
        .json(&gemini_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"totalTokens": 23}));
    assert_eq!(gemini.last_request().path, "/v1beta/models/gemini-2.5-flash:countTokens");
    untouched(&s, &user, before).await;
    s.assert_ledger_ok().await;
}

#[tokio::test]
async fn the_sandbox_counts_with_the_tokenizer_it_bills_by() {
    let s = TestServer::start().await;
    let (user, _, key) = s.developer("test").await;
    let before = s.stored_balance(&user).await;
    let counted: Value = s
        .http
        .post(s.url("/v1/messages/count_tokens"))
        .header("x-api-key", &key)
        .json(&claude_body())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let n = counted["input_tokens"].as_u64().unwrap();
    assert!(n > 0);
    let gemini: Value = s
        .http
        .post(s.url("/v1beta/models/gemini-2.5-flash:countTokens"))
        .header("x-goog-api-key", &key)
        .json(&gemini_body())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(gemini["totalTokens"].as_u64().unwrap() > 0);
    untouched(&s, &user, before).await;
    // The same request run for real is billed that many input tokens.
    let mut body = claude_body();
    body["max_tokens"] = json!(5);
    let ran: Value = s
        .http
        .post(s.url("/v1/messages"))
        .header("x-api-key", &key)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ran["usage"]["input_tokens"].as_u64(), Some(n));
}

#[tokio::test]
async fn counting_needs_credentials_and_a_user_token_with_credits_read_is_enough() {
    let s = TestServer::start().await;
    let r = s.http.post(s.url("/v1/messages/count_tokens")).json(&claude_body()).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let app = s.app(json!({})).await;
    let (_, _, tokens) = s.connected_user(&app, "credits.read").await;
    let token = tokens["access_token"].as_str().unwrap();
    let (_, test_key) = s.key(&app.developer_session, "test").await;
    let r = s
        .http
        .post(s.url("/v1/messages/count_tokens"))
        .header("x-api-key", &test_key)
        .bearer_auth(token)
        .json(&claude_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "credits.read suffices to count");
    let mut run = claude_body();
    run["max_tokens"] = json!(5);
    let r = s
        .http
        .post(s.url("/v1/messages"))
        .header("x-api-key", &test_key)
        .bearer_auth(token)
        .json(&run)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "but running needs credits.spend");
    let r = s
        .http
        .post(s.url("/v1/messages/count_tokens"))
        .header("x-api-key", &test_key)
        .json(&json!({"model": "claude-haiku-4-5", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

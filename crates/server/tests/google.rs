//! Google Gemini through Quota: the native `generateContent` / `streamGenerateContent?alt=sse`
//! routes (forwarded unchanged, `quota` in the body or the last chunk), `google/…` models on
//! `/v1/chat/completions` (translated both ways), the sandbox in the Gemini shape, errors, and
//! exact ledger effects for cached and thinking tokens.

mod common;

use common::fake_gemini::{FakeGemini, GeminiUsage, Script};
use common::{cost, developer_behind, expect_error, weather_conversation, with, TestServer};
use futures::StreamExt;
use quota_core::Usage;
use serde_json::{json, Value};

const UPSTREAM_KEY: &str = "AIzaUpstreamSecret0123456789abcdef";

/// A gateway proxying to a fresh fake, a developer with a `developer` key, and its balance.
async fn proxied_developer() -> (TestServer, FakeGemini, String, String, i64) {
    let up = FakeGemini::start().await;
    let (s, user, key, before) = developer_behind(up.base_url.clone(), |c, url| {
        c.google_base_url = url;
        c.gemini_api_key = Some(UPSTREAM_KEY.into());
    })
    .await;
    (s, up, user, key, before)
}

async fn generate(s: &TestServer, key: &str, path: &str, body: &Value) -> reqwest::Response {
    s.http.post(s.url(path)).header("x-goog-api-key", key).json(body).send().await.unwrap()
}

fn hello() -> Value {
    json!({"contents": [{"role": "user", "parts": [{"text": "Hello"}]}]})
}

/// The JSON data of each SSE event.
fn chunks(text: &str) -> Vec<Value> {
    text.split("\r\n\r\n")
        .flat_map(|e| e.split("\n\n"))
        .filter_map(|e| e.trim().strip_prefix("data: ").map(|d| serde_json::from_str(d).unwrap()))
        .collect()
}

#[tokio::test]
async fn generate_content_is_forwarded_and_charged_with_cached_and_thinking_tokens() {
    let (s, up, user, key, before) = proxied_developer().await;
    let usage = GeminiUsage { prompt: 1000, cached: 600, candidates: 50, thoughts: 200 };
    up.script(Script::Answer { parts: vec![json!({"text": "Hi!"})], finish: "STOP", usage });
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "Hello"}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {"temperature": 0.1, "maxOutputTokens": 500, "thinkingConfig": {"thinkingBudget": 256}},
        "safetySettings": [], "labels": {"team": "x"}});
    let v: Value =
        generate(&s, &key, "/v1beta/models/gemini-2.5-flash:generateContent", &body).await.json().await.unwrap();
    let rec = up.last_request();
    assert_eq!(rec.path, "/v1beta/models/gemini-2.5-flash:generateContent");
    assert_eq!(rec.headers["x-goog-api-key"], UPSTREAM_KEY);
    let mut expected_body = body.clone();
    expected_body.as_object_mut().unwrap().remove("labels");
    assert_eq!(rec.body, expected_body);
    assert_eq!(v["candidates"][0]["content"]["parts"][0]["text"], "Hi!");
    assert_eq!(v["usageMetadata"]["thoughtsTokenCount"], 200);
    // (1000 − 600) × 0.30 + 600 × 0.075 + (50 + 200) × 2.50 = 120 + 45 + 625.
    let expected = cost(
        "google/gemini-2.5-flash",
        Usage { input_tokens: 400, cached_tokens: 600, output_tokens: 250, ..Default::default() },
    );
    assert_eq!(expected, 790);
    assert_eq!(v["quota"]["credits_used"], expected);
    assert_eq!(s.stored_balance(&user).await, before - expected);
    let (input, cached, output): (i64, i64, i64) = quota_store::on_pool!(s.state.store.pool(), |p| sqlx::query_as(
        "SELECT input_tokens, cached_tokens, output_tokens FROM usage_records WHERE id = $1"
    )
    .bind(v["quota"]["request_id"].as_str().unwrap())
    .fetch_one(p)
    .await
    .unwrap());
    assert_eq!((input, cached, output), (400, 600, 250));
    s.assert_ledger_ok().await;
}

#[tokio::test]
async fn the_key_may_come_as_a_query_parameter_and_ids_in_every_spelling() {
    let (s, up, _, key, _) = proxied_developer().await;
    for path in [
        format!("/v1beta/models/gemini-2.5-pro:generateContent?key={key}"),
        format!("/v1beta/models/google/gemini-2.5-pro:generateContent?key={key}"),
        format!("/v1/models/gemini-2.5-pro:generateContent?key={key}"),
    ] {
        let r = s.http.post(s.url(&path)).json(&hello()).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let rec = up.last_request();
        assert_eq!(rec.path, "/v1beta/models/gemini-2.5-pro:generateContent");
        assert_eq!(rec.query, None, "Quota's key never travels upstream");
    }
    let r = s
        .http
        .post(s.url("/v1beta/models/gemini-2.5-pro:generateContent?key=sk-quota-wrong"))
        .json(&hello())
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "invalid_api_key").await;
}

#[tokio::test]
async fn a_native_stream_is_forwarded_with_quota_in_the_last_chunk() {
    let (s, up, user, key, before) = proxied_developer().await;
    let usage = GeminiUsage { prompt: 40, cached: 0, candidates: 3, thoughts: 10 };
    up.script(Script::Answer {
        parts: vec![json!({"text": "One "}), json!({"text": "two "}), json!({"text": "three."})],
        finish: "STOP",
        usage,
    });
    let r = generate(&s, &key, "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", &hello()).await;
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let text = r.text().await.unwrap();
    let got = chunks(&text);
    assert_eq!(up.last_request().query.as_deref(), Some("alt=sse"));
    assert_eq!(got.len(), 3, "every chunk, none added: {text}");
    assert!(got[..2].iter().all(|c| c.get("quota").is_none()));
    let last = &got[2];
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    let expected = cost("google/gemini-2.5-flash", Usage { input_tokens: 40, output_tokens: 13, ..Default::default() });
    assert_eq!(last["quota"]["credits_used"], expected);
    assert_eq!(s.stored_balance(&user).await, before - expected);
}

#[tokio::test]
async fn a_native_stream_is_forwarded_chunk_by_chunk_not_buffered() {
    let (s, up, _, key, _) = proxied_developer().await;
    up.script(Script::GatedStream { usage: GeminiUsage { prompt: 5, cached: 0, candidates: 4, thoughts: 0 } });
    let gate = up.gate();
    let r = generate(&s, &key, "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", &hello()).await;
    let mut stream = r.bytes_stream();
    gate.send(()).unwrap();
    let mut seen = String::new();
    while !seen.contains("word") {
        seen.push_str(&String::from_utf8_lossy(&stream.next().await.unwrap().unwrap()));
    }
    assert!(!seen.contains("finishReason"), "the first chunk arrived while the upstream was still open");
    drop(gate);
    while let Some(c) = stream.next().await {
        seen.push_str(&String::from_utf8_lossy(&c.unwrap()));
    }
    assert!(chunks(&seen).last().unwrap().get("quota").is_some());
}

#[tokio::test]
async fn stream_generate_content_without_alt_sse_is_a_400() {
    let (s, up, _, key, _) = proxied_developer().await;
    let r = generate(&s, &key, "/v1beta/models/gemini-2.5-flash:streamGenerateContent", &hello()).await;
    expect_error(r, 400, "bad_request").await;
    let r = generate(&s, &key, "/v1beta/models/gemini-2.5-flash:predictLongRunning", &hello()).await;
    expect_error(r, 404, "not_found").await;
    assert_eq!(up.calls(), 0);
}

#[tokio::test]
async fn chat_completions_translate_a_tool_conversation_to_the_exact_gemini_body_and_back() {
    let (s, up, user, key, before) = proxied_developer().await;
    up.script(Script::Answer {
        parts: vec![
            json!({"text": "thinking", "thought": true}),
            json!({"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}}),
        ],
        finish: "STOP",
        usage: GeminiUsage { prompt: 80, cached: 20, candidates: 12, thoughts: 30 },
    });
    let body = with(
        weather_conversation("google/gemini-2.5-flash", "call_a"),
        json!({"tool_choice": "required", "temperature": 0.2, "stop": "STOP!", "max_completion_tokens": 300}),
    );
    let v: Value = s.chat(&key, body).await.json().await.unwrap();
    let rec = up.last_request();
    assert_eq!(rec.path, "/v1beta/models/gemini-2.5-flash:generateContent");
    assert_eq!(
        rec.body,
        json!({
            "systemInstruction": {"parts": [{"text": "You are terse."}]},
            "contents": [
                {"role": "user", "parts": [{"text": "Weather in Paris?"}]},
                {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
                {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"content": "18C"}}}]},
                {"role": "user", "parts": [{"text": "And Rome?"}]}
            ],
            "tools": [{"functionDeclarations": [{"name": "get_weather", "description": "Weather now",
                "parametersJsonSchema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]}],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY"}},
            "generationConfig": {"maxOutputTokens": 300, "temperature": 0.2, "stopSequences": ["STOP!"]}
        })
    );
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    assert_eq!(choice["message"]["tool_calls"][0]["function"]["name"], "get_weather");
    assert_eq!(choice["message"]["tool_calls"][0]["function"]["arguments"], "{\"city\":\"Rome\"}");
    assert_eq!(v["usage"]["completion_tokens"], 42);
    assert_eq!(v["usage"]["completion_tokens_details"]["reasoning_tokens"], 30);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 20);
    let expected = cost(
        "google/gemini-2.5-flash",
        Usage { input_tokens: 60, cached_tokens: 20, output_tokens: 42, ..Default::default() },
    );
    assert_eq!(v["quota"]["credits_used"], expected);
    assert_eq!(s.stored_balance(&user).await, before - expected);
}

#[tokio::test]
async fn a_translated_stream_is_openai_chunks_ending_with_usage_quota_and_done() {
    let (s, up, user, key, before) = proxied_developer().await;
    up.script(Script::Answer {
        parts: vec![json!({"text": "Hello "}), json!({"text": "world."})],
        finish: "STOP",
        usage: GeminiUsage { prompt: 9, cached: 0, candidates: 2, thoughts: 7 },
    });
    let body =
        json!({"model": "google/gemini-2.0-flash", "stream": true, "messages": [{"role": "user", "content": "Hi"}]});
    let text = s.chat(&key, body).await.text().await.unwrap();
    assert_eq!(up.last_request().path, "/v1beta/models/gemini-2.0-flash:streamGenerateContent");
    let data: Vec<&str> = text.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).collect();
    assert_eq!(data.last(), Some(&"[DONE]"));
    let parsed: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    let content: String =
        parsed.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect::<Vec<_>>().concat();
    assert_eq!(content, "Hello world.");
    assert_eq!(parsed[0]["choices"][0]["delta"]["role"], "assistant");
    let last = parsed.last().unwrap();
    assert_eq!(last["usage"]["completion_tokens"], 9);
    let expected = cost("google/gemini-2.0-flash", Usage { input_tokens: 9, output_tokens: 9, ..Default::default() });
    assert_eq!(last["quota"]["credits_used"], expected);
    assert_eq!(s.stored_balance(&user).await, before - expected);
}

#[tokio::test]
async fn google_errors_are_mapped_scrubbed_and_never_charged() {
    let (s, up, user, key, before) = proxied_developer().await;
    up.script(Script::Error {
        status: 429,
        status_text: "RESOURCE_EXHAUSTED",
        message: "Resource has been exhausted".into(),
    });
    expect_error(
        generate(&s, &key, "/v1beta/models/gemini-2.5-flash:generateContent", &hello()).await,
        429,
        "rate_limit",
    )
    .await;
    let chat = json!({"model": "google/gemini-2.5-flash", "messages": [{"role": "user", "content": "x"}]});
    expect_error(s.chat(&key, chat.clone()).await, 429, "rate_limit").await;
    up.script(Script::Error {
        status: 400,
        status_text: "INVALID_ARGUMENT",
        message: format!("API key not valid: {UPSTREAM_KEY}"),
    });
    let e = expect_error(s.chat(&key, chat).await, 502, "upstream_error").await;
    assert!(e["error"]["message"].as_str().unwrap().contains("API key not valid"));
    assert!(!e.to_string().contains(UPSTREAM_KEY));
    assert_eq!(s.stored_balance(&user).await, before);
    assert_eq!(s.state.ledger.open_holds(), 0);
}

#[tokio::test]
async fn bad_input_gets_the_section_13_error_and_never_reaches_google() {
    let (s, up, user, key, before) = proxied_developer().await;
    let path = "/v1beta/models/gemini-2.5-flash:generateContent";
    for (body, status, code) in [
        (json!({"contents": []}), 400, "bad_request"),
        (json!({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}), 400, "bad_request"),
        (json!({"contents": [{"parts": [{"text": "x"}]}], "tools": [{"googleSearch": {}}]}), 400, "bad_request"),
        (
            json!({"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"candidateCount": 9}}),
            400,
            "bad_request",
        ),
        (json!({"contents": "hello"}), 400, "bad_request"),
    ] {
        expect_error(generate(&s, &key, path, &body).await, status, code).await;
    }
    expect_error(
        generate(&s, &key, "/v1beta/models/gemini-9-ultra:generateContent", &hello()).await,
        404,
        "model_not_found",
    )
    .await;
    expect_error(
        generate(&s, &key, "/v1beta/models/claude-haiku-4-5:generateContent", &hello()).await,
        404,
        "model_not_found",
    )
    .await;
    let chat = json!({"model": "google/gemini-2.5-flash", "messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]});
    expect_error(s.chat(&key, chat).await, 400, "bad_request").await;
    assert_eq!(up.calls(), 0);
    assert_eq!(s.stored_balance(&user).await, before);
}

#[tokio::test]
async fn the_sandbox_answers_in_the_gemini_shape_with_quota_in_the_last_chunk() {
    let s = TestServer::start().await;
    let (user, _, key) = s.developer("test").await;
    let before = s.balance(&user).await;
    let mut body = hello();
    body["generationConfig"] = json!({"maxOutputTokens": 6});
    let v: Value =
        generate(&s, &key, "/v1beta/models/gemini-2.5-flash:generateContent", &body).await.json().await.unwrap();
    assert_eq!(v["candidates"][0]["finishReason"], "MAX_TOKENS");
    assert_eq!(v["usageMetadata"]["candidatesTokenCount"], 6);
    let prompt = v["usageMetadata"]["promptTokenCount"].as_u64().unwrap();
    let expected =
        cost("google/gemini-2.5-flash", Usage { input_tokens: prompt, output_tokens: 6, ..Default::default() });
    assert_eq!(v["quota"]["credits_used"], expected);
    let text = generate(&s, &key, "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", &body)
        .await
        .text()
        .await
        .unwrap();
    let got = chunks(&text);
    assert_eq!(got.len(), 6);
    assert!(got[..5].iter().all(|c| c.get("quota").is_none()));
    assert_eq!(got[5]["quota"]["credits_used"], expected);
    let streamed: String =
        got.iter().filter_map(|c| c["candidates"][0]["content"]["parts"][0]["text"].as_str()).collect();
    assert_eq!(streamed, v["candidates"][0]["content"]["parts"][0]["text"].as_str().unwrap());
    let r = s
        .http
        .post(s.url("/v1beta/models/gemini-2.5-flash:generateContent"))
        .header("x-goog-api-key", &key)
        .header("x-quota-sandbox-fault", "rate_limit")
        .json(&body)
        .send()
        .await
        .unwrap();
    expect_error(r, 429, "rate_limit").await;
    assert_eq!(s.stored_balance(&user).await, before - 2 * expected);
    s.assert_ledger_ok().await;
}

#[tokio::test]
async fn an_idempotency_key_names_the_model_in_the_path_too() {
    let (s, up, user, key, before) = proxied_developer().await;
    let send = |model: &str| {
        s.http
            .post(s.url(&format!("/v1beta/models/{model}:generateContent")))
            .header("x-goog-api-key", &key)
            .header("idempotency-key", "gen-1")
            .json(&hello())
            .send()
    };
    let first: Value = send("gemini-2.5-flash").await.unwrap().json().await.unwrap();
    let replay = send("gemini-2.5-flash").await.unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.json::<Value>().await.unwrap(), first);
    // Same key and body, another model: another request, not a replay of the first.
    expect_error(send("gemini-2.5-pro").await.unwrap(), 409, "idempotency_conflict").await;
    assert_eq!(up.calls(), 1);
    assert_eq!(s.stored_balance(&user).await, before - first["quota"]["credits_used"].as_i64().unwrap());
}

/// Golden cost of a Gemini 3 Pro request over the 200k long-context threshold (SPEC §4.1): the
/// tier's prices ($4 in, $0.40 cached, $18 out per 1M) apply to the whole request.
/// 210,000 in + 50,000 cached + 1,000 out (incl. 200 thinking) = 840,000 + 20,000 + 18,000.
#[tokio::test]
async fn a_gemini_3_pro_request_over_200k_is_charged_the_long_context_tier_on_everything() {
    let (s, up, user, key, before) = proxied_developer().await;
    s.credit(&user, 5_000_000).await;
    let before = before + 5_000_000;
    up.script(Script::Answer {
        parts: vec![json!({"text": "Summary."})],
        finish: "STOP",
        usage: GeminiUsage { prompt: 260_000, cached: 50_000, candidates: 800, thoughts: 200 },
    });
    // A prompt whose bound (a byte per token) covers the 260,000 tokens reported.
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "long ".repeat(53_000)}]}],
        "generationConfig": {"maxOutputTokens": 2000}});
    let r = generate(&s, &key, "/v1beta/models/gemini-3-pro-preview:generateContent", &body).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["quota"]["credits_used"], 878_000);
    assert_eq!(s.stored_balance(&user).await, before - 878_000);
}

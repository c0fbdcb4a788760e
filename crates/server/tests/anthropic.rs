//! Anthropic through Quota: the native `/v1/messages` route (forwarded unchanged, `quota` added,
//! streams ending with `quota_usage`), `anthropic/…` models on `/v1/chat/completions` (translated
//! both ways), the sandbox in the Messages shape, errors, and exact ledger effects.

mod common;

use common::fake_anthropic::{text, tool_use, AnthropicUsage, FakeAnthropic, Script};
use common::{cost, developer_behind, expect_error, weather_conversation, with, TestServer};
use futures::StreamExt;
use quota_core::Usage;
use serde_json::{json, Value};

const UPSTREAM_KEY: &str = "sk-ant-upstream-secret-0123456789";

/// A gateway proxying to a fresh fake, a developer with a `developer` key, and its balance.
async fn proxied_developer() -> (TestServer, FakeAnthropic, String, String, i64) {
    let up = FakeAnthropic::start().await;
    let (s, user, key, before) = developer_behind(up.base_url.clone(), |c, url| {
        c.anthropic_base_url = url;
        c.anthropic_api_key = Some(UPSTREAM_KEY.into());
    })
    .await;
    (s, up, user, key, before)
}

async fn messages(s: &TestServer, key: &str, body: &Value, version: Option<&str>) -> reqwest::Response {
    let mut req = s.http.post(s.url("/v1/messages")).header("x-api-key", key).json(body);
    if let Some(v) = version {
        req = req.header("anthropic-version", v);
    }
    req.send().await.unwrap()
}

/// (event name, data) of each SSE event of a body.
fn events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let name = e.lines().find_map(|l| l.strip_prefix("event: ")).unwrap_or("").to_string();
            let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap_or("null");
            (name, serde_json::from_str(data).unwrap_or(Value::Null))
        })
        .collect()
}

#[tokio::test]
async fn native_messages_are_forwarded_and_charged_by_anthropics_usage_classes() {
    let (s, up, user, key, before) = proxied_developer().await;
    let usage = AnthropicUsage { input: 100, cache_read: 2000, cache_write: 500, output: 40, cache_write_1h: 0 };
    up.script(Script::Answer { content: vec![text("Bonjour.")], stop_reason: "end_turn", usage });
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 300, "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "Hello"}], "temperature": 0.3, "top_k": 5, "stop_sequences": ["X"],
        "metadata": {"user_id": "u1"}, "service_tier": "auto", "container": "c1"});
    let r = messages(&s, &key, &body, Some("2023-06-01")).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let (headers, sent) = up.last_request();
    assert_eq!(headers["x-api-key"], UPSTREAM_KEY);
    assert_eq!(headers["anthropic-version"], "2023-06-01");
    assert!(headers.get("authorization").is_none());
    let mut expected_body = body.clone();
    expected_body["model"] = json!("claude-sonnet-4-5");
    expected_body.as_object_mut().unwrap().remove("service_tier");
    expected_body.as_object_mut().unwrap().remove("container");
    assert_eq!(sent, expected_body, "the allowed fields as written, nothing else");
    // Anthropic's answer unchanged, plus `quota`.
    assert_eq!(v["content"], json!([{"type": "text", "text": "Bonjour."}]));
    assert_eq!(v["usage"]["cache_read_input_tokens"], 2000);
    // 100 × 3 + 2000 × 0.3 + 500 × 3.75 + 40 × 15 = 300 + 600 + 1875 + 600.
    let expected = cost(
        "anthropic/claude-sonnet-4.5",
        Usage {
            input_tokens: 100,
            cached_tokens: 2000,
            cache_write_tokens: 500,
            output_tokens: 40,
            ..Default::default()
        },
    );
    assert_eq!(expected, 3375);
    assert_eq!(v["quota"]["credits_used"], expected);
    assert_eq!(v["quota"]["balance_after"], before - expected);
    assert_eq!(s.stored_balance(&user).await, before - expected);
    let (input, cached, written, output): (i64, i64, i64, i64) =
        quota_store::on_pool!(s.state.store.pool(), |p| sqlx::query_as(
            "SELECT input_tokens, cached_tokens, cache_write_tokens, output_tokens FROM usage_records WHERE id = $1",
        )
        .bind(v["quota"]["request_id"].as_str().unwrap())
        .fetch_one(p)
        .await
        .unwrap());
    assert_eq!((input, cached, written, output), (100, 2000, 500, 40));
    // Without a version header, Quota sends Anthropic's default one.
    let body = json!({"model": "anthropic/claude-sonnet-4.5", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]});
    assert_eq!(messages(&s, &key, &body, None).await.status(), 200);
    assert_eq!(up.last_request().0["anthropic-version"], "2023-06-01");
    assert_eq!(up.last_request().1["model"], "claude-sonnet-4-5");
    s.assert_ledger_ok().await;
}

#[tokio::test]
async fn a_native_stream_is_anthropics_events_then_quota_usage() {
    let (s, up, user, key, before) = proxied_developer().await;
    let usage = AnthropicUsage { input: 12, cache_read: 300, cache_write: 0, output: 25, cache_write_1h: 0 };
    up.script(Script::Answer {
        content: vec![text("Let me look."), tool_use("toolu_1", "get_weather", json!({"city": "Paris"}))],
        stop_reason: "tool_use",
        usage,
    });
    let body = json!({"model": "claude-haiku-4-5", "max_tokens": 100, "stream": true, "messages": [{"role": "user", "content": "Weather?"}]});
    let r = messages(&s, &key, &body, None).await;
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let evs = events(&r.text().await.unwrap());
    let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names[names.len() - 2..], ["message_stop", "quota_usage"]);
    assert_eq!(names.iter().filter(|n| **n == "content_block_delta").count(), 2, "every upstream event is forwarded");
    let quota = &evs.last().unwrap().1;
    let expected = cost(
        "anthropic/claude-haiku-4.5",
        Usage { input_tokens: 12, cached_tokens: 300, output_tokens: 25, ..Default::default() },
    );
    assert_eq!(quota["type"], "quota_usage");
    assert_eq!(quota["credits_used"], expected);
    assert_eq!(quota["balance_after"], before - expected);
    assert_eq!(s.stored_balance(&user).await, before - expected);
    assert_eq!(up.last_request().1["stream"], true);
}

#[tokio::test]
async fn a_native_stream_is_forwarded_event_by_event_not_buffered() {
    let (s, up, _, key, _) = proxied_developer().await;
    up.script(Script::GatedStream {
        usage: AnthropicUsage { input: 5, cache_read: 0, cache_write: 0, output: 3, cache_write_1h: 0 },
    });
    let gate = up.gate();
    let body = json!({"model": "claude-haiku-4-5", "max_tokens": 100, "stream": true, "messages": [{"role": "user", "content": "Hi"}]});
    let mut stream = messages(&s, &key, &body, None).await.bytes_stream();
    let mut seen = String::new();
    gate.send(()).unwrap();
    // The first delta arrives while the upstream is still open (the gate is held).
    while !seen.contains("text_delta") {
        seen.push_str(&String::from_utf8_lossy(&stream.next().await.unwrap().unwrap()));
    }
    assert!(!seen.contains("message_stop"));
    drop(gate);
    while let Some(chunk) = stream.next().await {
        seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert!(seen.trim_end().ends_with('}') && seen.contains("event: quota_usage"));
}

#[tokio::test]
async fn chat_completions_translate_a_tool_conversation_to_the_exact_messages_body_and_back() {
    let (s, up, user, key, before) = proxied_developer().await;
    up.script(Script::Answer {
        content: vec![text("Checking."), tool_use("toolu_9", "get_weather", json!({"city": "Rome"}))],
        stop_reason: "tool_use",
        usage: AnthropicUsage { input: 50, cache_read: 0, cache_write: 10, output: 20, cache_write_1h: 0 },
    });
    let body = with(
        weather_conversation("anthropic/claude-sonnet-4.5", "toolu_1"),
        json!({"tool_choice": "auto", "temperature": 0.2, "top_p": 0.9, "stop": ["\n\n"], "max_tokens": 200,
            "logit_bias": {"50256": -100}}),
    );
    let v: Value = s.chat(&key, body).await.json().await.unwrap();
    let (headers, sent) = up.last_request();
    assert_eq!(headers["x-api-key"], UPSTREAM_KEY);
    assert_eq!(headers["anthropic-version"], "2023-06-01");
    assert_eq!(
        sent,
        json!({
            "model": "claude-sonnet-4-5", "max_tokens": 200, "system": "You are terse.",
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"}]},
                {"role": "user", "content": "And Rome?"}
            ],
            "tools": [{"name": "get_weather", "description": "Weather now",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}],
            "tool_choice": {"type": "auto"}, "temperature": 0.2, "top_p": 0.9, "stop_sequences": ["\n\n"]
        })
    );
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "anthropic/claude-sonnet-4.5");
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], "Checking.");
    assert_eq!(choice["message"]["tool_calls"][0]["id"], "toolu_9");
    assert_eq!(choice["message"]["tool_calls"][0]["function"]["arguments"], "{\"city\":\"Rome\"}");
    assert_eq!(v["usage"]["prompt_tokens"], 60);
    assert_eq!(v["usage"]["completion_tokens"], 20);
    let expected = cost(
        "anthropic/claude-sonnet-4.5",
        Usage { input_tokens: 50, cache_write_tokens: 10, output_tokens: 20, ..Default::default() },
    );
    assert_eq!(v["quota"]["credits_used"], expected);
    assert_eq!(s.stored_balance(&user).await, before - expected);
}

#[tokio::test]
async fn a_translated_stream_is_openai_chunks_ending_with_usage_quota_and_done() {
    let (s, up, user, key, before) = proxied_developer().await;
    up.script(Script::Answer {
        content: vec![text("Hello there.")],
        stop_reason: "max_tokens",
        usage: AnthropicUsage { input: 30, cache_read: 70, cache_write: 0, output: 8, cache_write_1h: 0 },
    });
    let body = json!({"model": "anthropic/claude-haiku-4.5", "stream": true, "max_tokens": 8,
        "messages": [{"role": "user", "content": common::prompt_of(100)}]});
    let text = s.chat(&key, body).await.text().await.unwrap();
    let data: Vec<&str> = text.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).collect();
    assert_eq!(data.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["id"] == "msg_fake01"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect::<Vec<_>>().concat();
    assert_eq!(content, "Hello there.");
    assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "length"));
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["prompt_tokens"], 100);
    assert_eq!(last["usage"]["prompt_tokens_details"]["cached_tokens"], 70);
    let expected = cost(
        "anthropic/claude-haiku-4.5",
        Usage { input_tokens: 30, cached_tokens: 70, output_tokens: 8, ..Default::default() },
    );
    assert_eq!(last["quota"]["credits_used"], expected);
    assert_eq!(s.stored_balance(&user).await, before - expected);
    assert_eq!(up.last_request().1["max_tokens"], 8);
}

#[tokio::test]
async fn anthropic_errors_are_mapped_scrubbed_and_never_charged() {
    let (s, up, user, key, before) = proxied_developer().await;
    let native = json!({"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]});
    let chat = json!({"model": "anthropic/claude-haiku-4.5", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]});
    up.script(Script::Error {
        status: 429,
        kind: "rate_limit_error",
        message: "Number of request tokens has exceeded your per-minute rate limit".into(),
    });
    expect_error(messages(&s, &key, &native, None).await, 429, "rate_limit").await;
    expect_error(s.chat(&key, chat.clone()).await, 429, "rate_limit").await;
    up.script(Script::Error { status: 529, kind: "overloaded_error", message: "Overloaded".into() });
    let e = expect_error(messages(&s, &key, &native, None).await, 502, "upstream_error").await;
    assert!(e["error"]["message"].as_str().unwrap().contains("Overloaded"));
    up.script(Script::Error {
        status: 401,
        kind: "authentication_error",
        message: format!("invalid x-api-key {UPSTREAM_KEY}"),
    });
    let e = expect_error(s.chat(&key, chat).await, 502, "upstream_error").await;
    assert!(!e.to_string().contains(UPSTREAM_KEY), "our provider key never leaks: {e}");
    assert_eq!(up.calls(), 4);
    assert_eq!(s.stored_balance(&user).await, before);
    assert_eq!(s.state.ledger.open_holds(), 0);
}

#[tokio::test]
async fn an_error_event_mid_stream_charges_what_was_produced_and_ends_the_stream() {
    let (s, up, user, key, before) = proxied_developer().await;
    up.script(Script::StreamThenError { kind: "overloaded_error", message: "Overloaded".into() });
    let body = json!({"model": "claude-haiku-4-5", "max_tokens": 50, "stream": true, "messages": [{"role": "user", "content": "x"}]});
    let evs = events(&messages(&s, &key, &body, None).await.text().await.unwrap());
    let (name, data) = evs.last().unwrap();
    assert_eq!(name, "error");
    assert_eq!(data["type"], "error");
    assert_eq!(data["error"]["code"], "upstream_error");
    // message_start reported 10 input tokens; "Partial" was forwarded (2 sandbox-tokenizer tokens).
    let expected =
        cost("anthropic/claude-haiku-4.5", Usage { input_tokens: 10, output_tokens: 2, ..Default::default() });
    assert_eq!(s.stored_balance(&user).await, before - expected);
    s.assert_ledger_ok().await;
}

#[tokio::test]
async fn bad_input_gets_the_section_13_error_and_never_reaches_anthropic() {
    let (s, up, user, key, before) = proxied_developer().await;
    let msg = |extra: Value| {
        let mut b =
            json!({"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    for (body, status, code) in [
        (json!({"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "x"}]}), 400, "bad_request"),
        (msg(json!({"messages": [{"role": "system", "content": "x"}]})), 400, "bad_request"),
        (msg(json!({"messages": []})), 400, "bad_request"),
        (msg(json!({"max_tokens": "lots"})), 400, "bad_request"),
        (msg(json!({"tools": [{"type": "web_search_20250305", "name": "web_search"}]})), 400, "bad_request"),
        (msg(json!({"model": "claude-nonexistent-9"})), 404, "model_not_found"),
        (msg(json!({"model": "gpt-4o"})), 404, "model_not_found"),
    ] {
        expect_error(messages(&s, &key, &body, None).await, status, code).await;
    }
    let r = s.http.post(s.url("/v1/messages")).header("x-api-key", &key).body("{not json").send().await.unwrap();
    expect_error(r, 400, "bad_request").await;
    let chat = |extra: Value| {
        with(json!({"model": "anthropic/claude-haiku-4.5", "messages": [{"role": "user", "content": "x"}]}), extra)
    };
    expect_error(s.chat(&key, chat(json!({"n": 2}))).await, 400, "bad_request").await;
    let bad_args = json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]});
    expect_error(s.chat(&key, chat(bad_args)).await, 400, "bad_request").await;
    assert_eq!(up.calls(), 0);
    assert_eq!(s.stored_balance(&user).await, before);
    assert_eq!(s.transfer_count().await, 1, "only the welcome credit");
}

#[tokio::test]
async fn without_an_anthropic_key_both_routes_are_503() {
    let s = TestServer::start().await;
    let (user, _, key) = s.developer("developer").await;
    let body = json!({"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]});
    expect_error(messages(&s, &key, &body, None).await, 503, "provider_unavailable").await;
    let chat = json!({"model": "anthropic/claude-haiku-4.5", "messages": [{"role": "user", "content": "x"}]});
    expect_error(s.chat(&key, chat).await, 503, "provider_unavailable").await;
    assert_eq!(s.stored_balance(&user).await, 1_000_000);
}

#[tokio::test]
async fn the_sandbox_answers_in_the_messages_shape_and_charges_exactly_its_usage() {
    let s = TestServer::start().await;
    let (user, _, key) = s.developer("test").await;
    let before = s.balance(&user).await;
    let body = json!({"model": "anthropic/claude-haiku-4.5", "max_tokens": 7, "messages": [{"role": "user", "content": "Hello"}]});
    let v: Value = messages(&s, &key, &body, None).await.json().await.unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["stop_reason"], "max_tokens");
    assert_eq!(v["usage"]["output_tokens"], 7);
    let prompt = v["usage"]["input_tokens"].as_u64().unwrap();
    assert_eq!(prompt, 3 + 4 + 1, "conversation + message framing + `Hello`");
    let expected =
        cost("anthropic/claude-haiku-4.5", Usage { input_tokens: prompt, output_tokens: 7, ..Default::default() });
    assert_eq!(v["quota"]["credits_used"], expected);
    assert_eq!(v["quota"]["sandbox"], true);
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let evs = events(&messages(&s, &key, &streamed, None).await.text().await.unwrap());
    assert_eq!(evs.last().unwrap().0, "quota_usage");
    assert_eq!(evs.last().unwrap().1["credits_used"], expected);
    let text: String = evs.iter().filter_map(|(_, d)| d["delta"]["text"].as_str()).collect::<Vec<_>>().concat();
    assert_eq!(text, v["content"][0]["text"].as_str().unwrap(), "stream and body say the same");
    assert_eq!(s.stored_balance(&user).await, before - 2 * expected);
    s.assert_ledger_ok().await;
}

#[tokio::test]
async fn sandbox_faults_work_on_the_messages_route() {
    let s = TestServer::start().await;
    let (user, _, key) = s.developer("test").await;
    let before = s.balance(&user).await;
    let body =
        json!({"model": "claude-haiku-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": "Hello"}]});
    for (fault, status, code) in [
        ("rate_limit", 429, "rate_limit"),
        ("upstream_error", 502, "upstream_error"),
        ("timeout", 504, "gateway_timeout"),
    ] {
        let r = s
            .http
            .post(s.url("/v1/messages"))
            .header("x-api-key", &key)
            .header("x-quota-sandbox-fault", fault)
            .json(&body)
            .send()
            .await
            .unwrap();
        expect_error(r, status, code).await;
    }
    assert_eq!(s.stored_balance(&user).await, before);
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let r = s
        .http
        .post(s.url("/v1/messages"))
        .header("x-api-key", &key)
        .header("x-quota-sandbox-fault", "disconnect_mid_stream")
        .json(&streamed)
        .send()
        .await
        .unwrap();
    let evs = events(&r.text().await.unwrap());
    assert_eq!(evs.last().unwrap().0, "error");
    let charged = before - s.stored_balance(&user).await;
    assert!(charged > 0, "what was produced before the break is charged");
    s.assert_ledger_ok().await;
}

/// Golden cost of a Sonnet 4.5 request with 1-hour cache writes (SPEC §4.1): 20 input × $3 +
/// 1,000 5-minute writes × $3.75 + 4,000 1-hour writes × $6 + 30 output × $15 per 1M
/// = 60 + 3,750 + 24,000 + 450 = 28,260 credits, streamed or not.
#[tokio::test]
async fn one_hour_cache_writes_cost_twice_the_input_streamed_or_not() {
    let (s, up, user, key, before) = proxied_developer().await;
    let usage = AnthropicUsage { input: 20, cache_read: 0, cache_write: 1_000, output: 30, cache_write_1h: 4_000 };
    // A prompt whose bound (one token per byte) covers the 5,020 prompt tokens the fake reports.
    let prompt = "cached context ".repeat(400);
    let body =
        json!({"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": prompt}]});
    up.script(Script::Answer { content: vec![text("Hello.")], stop_reason: "end_turn", usage });
    let v: Value = messages(&s, &key, &body, None).await.json().await.unwrap();
    assert_eq!(v["quota"]["credits_used"], 28_260);
    assert_eq!(s.stored_balance(&user).await, before - 28_260);
    up.script(Script::Answer { content: vec![text("Hello.")], stop_reason: "end_turn", usage });
    let text = messages(&s, &key, &with(body, json!({"stream": true})), None).await.text().await.unwrap();
    let quota = events(&text).into_iter().find(|(name, _)| name == "quota_usage").expect("a quota_usage event").1;
    assert_eq!(quota["credits_used"], 28_260);
    assert_eq!(s.stored_balance(&user).await, before - 2 * 28_260);
    s.assert_ledger_ok().await;
}

#[tokio::test]
async fn anthropic_beta_is_passed_through_and_an_unpriced_beta_is_refused_before_anything_is_held() {
    let (s, up, user, key, before) = proxied_developer().await;
    up.script(Script::Answer {
        content: vec![text("ok")],
        stop_reason: "end_turn",
        usage: AnthropicUsage { input: 5, cache_read: 0, cache_write: 0, output: 1, cache_write_1h: 0 },
    });
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]});
    let send = |beta: &'static str| {
        s.http.post(s.url("/v1/messages")).header("x-api-key", &key).header("anthropic-beta", beta).json(&body).send()
    };
    assert_eq!(send("context-1m-2025-08-07, interleaved-thinking-2025-05-14").await.unwrap().status(), 200);
    assert_eq!(up.last_request().0["anthropic-beta"], "context-1m-2025-08-07, interleaved-thinking-2025-05-14");
    let spent = s.stored_balance(&user).await;
    assert!(spent < before);
    for refused in ["fast-mode-2025-11", "a b", "x;y"] {
        let r = send(refused).await.unwrap();
        assert_eq!(r.status(), 400, "{refused}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "bad_request");
    }
    assert_eq!(up.calls(), 1, "refused requests never reach the provider");
    assert_eq!(s.stored_balance(&user).await, spent);
}

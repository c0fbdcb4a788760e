//! `POST /v1/responses` (SPEC §3.7) against a fake OpenAI speaking the Responses wire format:
//! what is forwarded, how usage is billed, what is refused before anything is held. The
//! pipeline's shared behaviour (402s, hang-ups, idempotent replays, streamed = not streamed)
//! is proven for this route with the others in `money_safety.rs`.

mod common;

use common::fake_openai::{FakeUpstream, Script};
use common::{cost, developer_behind, TestServer};
use quota_core::Usage;
use serde_json::{json, Value};

async fn proxied() -> (TestServer, FakeUpstream, String, String, i64) {
    let up = FakeUpstream::start().await;
    let (s, user, key, before) = developer_behind(up.base_url.clone(), |c, url| {
        c.openai_base_url = url;
        c.openai_api_key = Some("sk-upstream-openai-0123456789".into());
    })
    .await;
    (s, up, user, key, before)
}

async fn responses(s: &TestServer, key: &str, body: &Value) -> reqwest::Response {
    s.http.post(s.url("/v1/responses")).bearer_auth(key).json(body).send().await.unwrap()
}

#[tokio::test]
async fn a_response_is_forwarded_as_written_and_billed_by_its_cached_and_output_tokens() {
    let (s, up, user, key, before) = proxied().await;
    up.script(Script::Complete { prompt: 120, cached: 100, completion: 30, text: "Hello.".into() });
    let body = json!({"model": "gpt-4o-mini", "input": [{"role": "user", "content": "x ".repeat(80)}],
        "instructions": "Be brief.", "max_output_tokens": 50, "metadata": {"trace": "t1"}, "store": false,
        "service_tier": "priority", "previous_response_id": null});
    let r = responses(&s, &key, &body).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let (headers, sent) = up.last_request();
    assert_eq!(headers["authorization"], "Bearer sk-upstream-openai-0123456789");
    assert_eq!(sent["model"], "gpt-4o-mini");
    assert_eq!((sent["instructions"].clone(), sent["max_output_tokens"].clone()), (json!("Be brief."), json!(50)));
    assert_eq!((sent["metadata"]["trace"].clone(), sent["store"].clone()), (json!("t1"), json!(false)));
    assert!(sent.get("service_tier").is_none(), "a dearer tier Quota does not price is not forwarded");
    assert!(sent.get("stream").is_none());
    assert_eq!(v["object"], "response");
    assert_eq!(v["output"][0]["content"][0]["text"], "Hello.");
    let expected =
        cost("gpt-4o-mini", Usage { input_tokens: 20, cached_tokens: 100, output_tokens: 30, ..Default::default() });
    assert_eq!(v["quota"]["credits_used"], expected);
    assert_eq!(s.stored_balance(&user).await, before - expected);
    s.assert_ledger_ok().await;
}

#[tokio::test]
async fn a_streamed_response_ends_with_quota_in_the_completed_events_response() {
    let (s, up, _, key, _) = proxied().await;
    up.script(Script::Complete { prompt: 10, cached: 0, completion: 3, text: "Hi there".into() });
    let r = responses(&s, &key, &json!({"model": "gpt-4o-mini", "input": "hi", "stream": true})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let text = r.text().await.unwrap();
    assert_eq!(up.last_request().1["stream"], true);
    let events: Vec<(String, Value)> = text
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let name = e.lines().find_map(|l| l.strip_prefix("event: ")).unwrap_or("").to_string();
            (name, serde_json::from_str(e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap()).unwrap())
        })
        .collect();
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["response.created", "response.output_text.delta", "response.completed"]);
    let completed = &events[2].1["response"];
    assert_eq!(completed["id"], "resp_fake");
    let expected = cost("gpt-4o-mini", Usage { input_tokens: 10, output_tokens: 3, ..Default::default() });
    assert_eq!(completed["quota"]["credits_used"], expected);
}

#[tokio::test]
async fn provider_side_tools_and_other_providers_models_are_refused_before_anything_is_held() {
    let (s, up, user, key, before) = proxied().await;
    for (body, needle) in [
        (json!({"model": "gpt-4o", "input": "x", "tools": [{"type": "web_search_preview"}]}), "web_search_preview"),
        (
            json!({"model": "gpt-4o", "input": "x", "tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}),
            "file_search",
        ),
        (json!({"model": "anthropic/claude-haiku-4.5", "input": "x"}), "OpenAI models"),
        (json!({"model": "text-embedding-3-small", "input": "x"}), "embedding model"),
        (json!({"model": "gpt-4o", "input": "x", "background": true}), "background"),
    ] {
        let r = responses(&s, &key, &body).await;
        assert_eq!(r.status(), 400, "{body}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "bad_request", "{body}");
        assert!(v["error"]["message"].as_str().unwrap().contains(needle), "{body}: {v}");
    }
    assert_eq!(up.calls(), 0);
    assert_eq!(s.stored_balance(&user).await, before);
}

#[tokio::test]
async fn a_previous_response_id_is_passed_through_and_held_at_the_whole_context_window() {
    let (s, up, user, key, _) = proxied().await;
    // gpt-4o: 128,000 tokens at $2.50/1M = 320,000 credits of prompt, plus 10 output tokens.
    let body =
        json!({"model": "gpt-4o", "input": "and then?", "previous_response_id": "resp_abc", "max_output_tokens": 10});
    s.drain(&user, 300_000).await;
    let r = responses(&s, &key, &body).await;
    assert_eq!(r.status(), 402, "the provider's stored conversation is unseen: the whole window is held");
    assert_eq!(up.calls(), 0);
    s.credit(&user, 100_000).await;
    assert_eq!(responses(&s, &key, &body).await.status(), 200);
    assert_eq!(up.last_request().1["previous_response_id"], "resp_abc");
    s.assert_ledger_ok().await;
}

//! Embeddings (SPEC §3.8) through the one pipeline: OpenAI's `POST /v1/embeddings` and Gemini's
//! `:embedContent` / `:batchEmbedContents`, in the sandbox (deterministic unit vectors of the
//! model's dimension) and proxied to fakes speaking the providers' formats; priced per input
//! token, held, settled and recorded like any inference; the wrong kind of model refused.

mod common;

use base64::Engine;
use common::fake_gemini::FakeGemini;
use common::fake_openai::{FakeUpstream, Script};
use common::{cost, developer_behind, TestServer};
use quota_core::Usage;
use serde_json::{json, Value};

async fn post(s: &TestServer, key: &str, path: &str, body: &Value) -> reqwest::Response {
    s.http.post(s.url(path)).bearer_auth(key).json(body).send().await.unwrap()
}

fn norm(v: &Value) -> f64 {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap().powi(2)).sum::<f64>().sqrt()
}

fn input_cost(model: &str, tokens: u64) -> i64 {
    cost(model, Usage { input_tokens: tokens, ..Default::default() })
}

#[tokio::test]
async fn sandbox_embeddings_are_deterministic_unit_vectors_of_the_models_dimension_and_charged_per_token() {
    let s = TestServer::start().await;
    let (user, _, key) = s.developer("test").await;
    let before = s.stored_balance(&user).await;
    let body = json!({"model": "text-embedding-3-small", "input": ["the ledger balances", "credits and debits"]});
    let r = post(&s, &key, "/v1/embeddings", &body).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "list");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[0]["embedding"].as_array().unwrap().len(), 1536);
    assert!((norm(&data[0]["embedding"]) - 1.0).abs() < 1e-3);
    assert_ne!(data[0]["embedding"], data[1]["embedding"]);
    let tokens = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(tokens > 0);
    assert_eq!(v["quota"]["credits_used"], input_cost("text-embedding-3-small", tokens));
    assert_eq!(s.stored_balance(&user).await, before - input_cost("text-embedding-3-small", tokens));
    let again: Value = post(&s, &key, "/v1/embeddings", &body).await.json().await.unwrap();
    assert_eq!(again["data"][0]["embedding"], data[0]["embedding"], "same input, same vector");

    // `dimensions` honoured; base64 is the same vector as little-endian float32s.
    let short = json!({"model": "text-embedding-3-large", "input": "hi", "dimensions": 64});
    let floats: Value = post(&s, &key, "/v1/embeddings", &short).await.json().await.unwrap();
    assert_eq!(floats["data"][0]["embedding"].as_array().unwrap().len(), 64);
    let mut b64 = short.clone();
    b64["encoding_format"] = json!("base64");
    let packed: Value = post(&s, &key, "/v1/embeddings", &b64).await.json().await.unwrap();
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(packed["data"][0]["embedding"].as_str().unwrap()).unwrap();
    let decoded: Vec<f32> = bytes.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    let expected: Vec<f32> =
        floats["data"][0]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    assert_eq!(decoded, expected);
    s.assert_ledger_ok().await;
}

#[tokio::test]
async fn the_wrong_kind_of_model_or_a_bad_input_is_refused_before_anything_is_held() {
    let s = TestServer::start().await;
    let (user, _, key) = s.developer("test").await;
    let before = s.stored_balance(&user).await;
    for (path, body) in [
        ("/v1/embeddings", json!({"model": "gpt-4o-mini", "input": "x"})),
        ("/v1/embeddings", json!({"model": "google/gemini-embedding-001", "input": "x"})),
        ("/v1/embeddings", json!({"model": "text-embedding-3-small", "input": "x", "dimensions": 5000})),
        ("/v1/embeddings", json!({"model": "text-embedding-3-small", "input": [], })),
        ("/v1/embeddings", json!({"model": "text-embedding-3-small", "input": "x", "encoding_format": "hex"})),
        (
            "/v1/chat/completions",
            json!({"model": "text-embedding-3-small", "messages": [{"role": "user", "content": "x"}]}),
        ),
    ] {
        let r = post(&s, &key, path, &body).await;
        assert_eq!(r.status(), 400, "{body}");
        assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "bad_request", "{body}");
    }
    assert_eq!(s.stored_balance(&user).await, before);
}

#[tokio::test]
async fn proxied_openai_embeddings_are_billed_by_the_providers_count() {
    let up = FakeUpstream::start().await;
    let (s, user, key, before) = developer_behind(up.base_url.clone(), |c, url| {
        c.openai_base_url = url;
        c.openai_api_key = Some("sk-upstream-openai-0123456789".into());
    })
    .await;
    up.script(Script::Complete { prompt: 7, cached: 0, completion: 0, text: String::new() });
    let body = json!({"model": "text-embedding-3-small", "input": ["some text here", "more"], "dimensions": 3,
        "encoding_format": "base64", "user": "u1", "unknown": true});
    let v: Value = post(&s, &key, "/v1/embeddings", &body).await.json().await.unwrap();
    let (_, sent) = up.last_request();
    assert_eq!(
        sent,
        json!({"model": "text-embedding-3-small", "input": ["some text here", "more"], "dimensions": 3,
        "encoding_format": "base64", "user": "u1"})
    );
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["quota"]["credits_used"], input_cost("text-embedding-3-small", 7));
    assert_eq!(s.stored_balance(&user).await, before - input_cost("text-embedding-3-small", 7));
    s.assert_ledger_ok().await;
}

#[tokio::test]
async fn gemini_embeddings_single_and_batched_are_forwarded_and_billed_by_the_gateways_count() {
    let up = FakeGemini::start().await;
    let (s, user, key, before) = developer_behind(up.base_url.clone(), |c, url| {
        c.google_base_url = url;
        c.gemini_api_key = Some("AIzaUpstreamSecret0123456789abcdef".into());
    })
    .await;
    let single = json!({"content": {"parts": [{"text": "hello world"}]}, "outputDimensionality": 3});
    let r = post(&s, &key, "/v1beta/models/gemini-embedding-001:embedContent", &single).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["embedding"]["values"].as_array().unwrap().len(), 3);
    assert_eq!(up.last_request().path, "/v1beta/models/gemini-embedding-001:embedContent");
    let counted = quota_core::tokens::count_tokens("hello world");
    assert_eq!(v["quota"]["credits_used"], input_cost("google/gemini-embedding-001", counted));

    let batch = json!({"requests": [
        {"model": "models/whatever", "content": {"parts": [{"text": "a b c"}]}},
        {"model": "models/whatever", "content": {"parts": [{"text": "d e"}]}}]});
    let v: Value =
        post(&s, &key, "/v1beta/models/gemini-embedding-001:batchEmbedContents", &batch).await.json().await.unwrap();
    assert_eq!(v["embeddings"].as_array().unwrap().len(), 2);
    let sent = up.last_request().body;
    assert_eq!(sent["requests"][0]["model"], "models/gemini-embedding-001", "each request names the upstream model");
    let counted_batch = quota_core::tokens::count_tokens("a b c") + quota_core::tokens::count_tokens("d e");
    let total =
        input_cost("google/gemini-embedding-001", counted) + input_cost("google/gemini-embedding-001", counted_batch);
    assert_eq!(s.stored_balance(&user).await, before - total);
    s.assert_ledger_ok().await;
}

//! Bad input (DESIGN §4): each kind gets its SPEC §13 error, nothing is charged, nothing panics.

mod common;

use common::{expect_error, TestServer};
use serde_json::json;

async fn post_raw(s: &TestServer, key: &str, body: Vec<u8>) -> reqwest::Response {
    s.http
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn malformed_chat_requests_are_400_and_free() {
    let s = TestServer::start().await;
    let (user, _, key) = s.developer("test").await;
    let before = s.balance(&user).await;
    let transfers_before = s.transfer_count().await;
    let cases: Vec<Vec<u8>> = vec![
        b"{".to_vec(),
        b"".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        vec![0xff, 0xfe, 0x7b, 0x7d],
        br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"\xff"}]}"#.to_vec(),
        json!({"messages": [{"role": "user", "content": "hi"}]}).to_string().into_bytes(),
        json!({"model": 42, "messages": [{"role": "user", "content": "hi"}]}).to_string().into_bytes(),
        json!({"model": "gpt-4o-mini"}).to_string().into_bytes(),
        json!({"model": "gpt-4o-mini", "messages": "hi"}).to_string().into_bytes(),
        json!({"model": "gpt-4o-mini", "messages": []}).to_string().into_bytes(),
        json!({"model": "gpt-4o-mini", "messages": [{"content": "no role"}]}).to_string().into_bytes(),
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}).to_string().into_bytes(),
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}).to_string().into_bytes(),
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1e300}).to_string().into_bytes(),
        br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":99999999999999999999}"#.to_vec(),
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}).to_string().into_bytes(),
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}).to_string().into_bytes(),
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "n": 1000}).to_string().into_bytes(),
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}).to_string().into_bytes(),
    ];
    for body in cases {
        let shown = String::from_utf8_lossy(&body).into_owned();
        let r = post_raw(&s, &key, body).await;
        assert_eq!(r.status(), 400, "{shown}");
        expect_error(r, 400, "bad_request").await;
    }
    assert_eq!(s.stored_balance(&user).await, before);
    assert_eq!(s.transfer_count().await, transfers_before);
}

#[tokio::test]
async fn unknown_models_are_404_model_not_found() {
    let s = TestServer::start().await;
    let (user, _, key) = s.developer("test").await;
    let r = s.chat(&key, json!({"model": "gpt-9000", "messages": [{"role": "user", "content": "hi"}]})).await;
    let e = expect_error(r, 404, "model_not_found").await;
    assert!(e["error"]["message"].as_str().unwrap().contains("gpt-9000"));
    assert_eq!(s.stored_balance(&user).await, 1_000_000);
}

#[tokio::test]
async fn unknown_fields_are_ignored() {
    let s = TestServer::start().await;
    let (_, _, key) = s.developer("test").await;
    let r = s.chat(&key, json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "frobnicate": {"x": [1]}})).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn oversize_bodies_are_413_payload_too_large() {
    let s = TestServer::start_with(|c| c.body_limit_bytes = 1024).await;
    let (user, _, key) = s.developer("test").await;
    let big = "a".repeat(2048);
    let r = s.chat(&key, json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": big}]})).await;
    expect_error(r, 413, "payload_too_large").await;
    assert_eq!(s.stored_balance(&user).await, 1_000_000);
    // Registration bodies are bounded too.
    let r = s
        .http
        .post(s.url("/auth/register"))
        .json(&json!({"email": "a@b.c", "password": "x".repeat(4096)}))
        .send()
        .await
        .unwrap();
    expect_error(r, 413, "payload_too_large").await;
}

#[tokio::test]
async fn bad_credentials_are_401_and_free() {
    let s = TestServer::start().await;
    let (user, session, key) = s.developer("test").await;
    let body = common::simple_chat("hi", 5);
    let send = |auth: Option<(&'static str, String)>| {
        let mut rb = s.http.post(s.url("/v1/chat/completions")).json(&body);
        if let Some((h, v)) = auth {
            rb = rb.header(h, v);
        }
        rb.send()
    };
    expect_error(send(None).await.unwrap(), 401, "invalid_api_key").await;
    expect_error(send(Some(("authorization", "Bearer".into()))).await.unwrap(), 401, "invalid_api_key").await;
    expect_error(send(Some(("authorization", "Basic abc".into()))).await.unwrap(), 401, "invalid_api_key").await;
    expect_error(
        send(Some(("authorization", "Bearer sk-quota-doesnotexist000000000000000000".into()))).await.unwrap(),
        401,
        "invalid_api_key",
    )
    .await;
    expect_error(
        send(Some(("authorization", "Bearer sk-live-somethingelse".into()))).await.unwrap(),
        401,
        "invalid_api_key",
    )
    .await;
    expect_error(send(Some(("x-api-key", format!("{key}x")))).await.unwrap(), 401, "invalid_api_key").await;
    expect_error(send(Some(("authorization", format!("Bearer {session}")))).await.unwrap(), 401, "invalid_api_key")
        .await;
    expect_error(
        send(Some(("authorization", "Bearer quota_token_notarealtoken".into()))).await.unwrap(),
        401,
        "invalid_token",
    )
    .await;
    expect_error(send(Some(("authorization", "Bearer whsec_notakey".into()))).await.unwrap(), 401, "invalid_api_key")
        .await;
    assert_eq!(s.stored_balance(&user).await, 1_000_000);
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let s = TestServer::start().await;
    expect_error(s.http.get(s.url("/v2/anything")).send().await.unwrap(), 404, "not_found").await;
    expect_error(s.http.get(s.url("/v1/chat/completions")).send().await.unwrap(), 405, "bad_request").await;
}

#[tokio::test]
async fn errors_never_leak_internals() {
    let s = TestServer::start().await;
    let (_, _, key) = s.developer("test").await;
    let r = post_raw(&s, &key, b"{\"model\": \"gpt-4o-mini\", \"messages\": [".to_vec()).await;
    let text = r.text().await.unwrap();
    for leak in ["sqlx", "SELECT", "panicked", "src/", "sk-quota-"] {
        assert!(!text.contains(leak), "{leak} in {text}");
    }
}

/// Found by the schemathesis run: axum's own rejection of a query string was plain text.
#[tokio::test]
async fn a_query_string_that_does_not_parse_is_a_json_400() {
    let s = TestServer::start().await;
    let (_, session) = s.register("query@example.com").await;
    let r = s.http.get(s.url("/v1/usage?limit=1&limit=2")).bearer_auth(&session).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "application/json");
    let v = expect_error(r, 400, "bad_request").await;
    assert!(v["error"]["message"].as_str().unwrap().contains("duplicate field"), "{v}");
    let r = s.http.get(s.url("/developers/keys?cursor=a&cursor=b")).bearer_auth(&session).send().await.unwrap();
    expect_error(r, 400, "bad_request").await;
}

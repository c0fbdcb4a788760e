//! SPEC §1 and §2 over HTTP: accounts, sessions, keys, and which credential opens which door.

mod common;

use common::{expect_error, skip_unless_postgres, within, TestServer};
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test]
async fn register_grants_welcome_credits_from_promotions() {
    let s = TestServer::start().await;
    let r = s
        .http
        .post(s.url("/auth/register"))
        .json(&json!({"email": " Ada@Example.com ", "password": "longenough"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert!(r.headers().get("set-cookie").unwrap().to_str().unwrap().contains("HttpOnly"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["user"]["email"], "ada@example.com");
    assert_eq!(v["user"]["balance"], 1_000_000);
    assert!(v["session_token"].as_str().unwrap().starts_with("sess_"));
    assert!(v["expires_at"].as_str().unwrap().ends_with('Z'));
    let user = v["user"]["id"].as_str().unwrap();
    assert_eq!(s.stored_balance(user).await, 1_000_000);
    assert_eq!(s.state.store.balance(&"platform:promotions".parse().unwrap()).await.unwrap(), -1_000_000);
    s.assert_ledger_ok().await;
}

#[tokio::test]
async fn register_rejects_bad_email_weak_password_and_duplicates() {
    let s = TestServer::start().await;
    let post = |body: Value| s.http.post(s.url("/auth/register")).json(&body).send();
    expect_error(post(json!({"email": "nope", "password": "longenough"})).await.unwrap(), 400, "invalid_email").await;
    expect_error(post(json!({"email": "a@b.c", "password": "short"})).await.unwrap(), 400, "weak_password").await;
    expect_error(post(json!({"email": "a@b.c"})).await.unwrap(), 400, "bad_request").await;
    expect_error(post(json!({"email": 5, "password": "longenough"})).await.unwrap(), 400, "bad_request").await;
    s.register("dup@example.com").await;
    expect_error(
        post(json!({"email": "DUP@example.com", "password": "longenough"})).await.unwrap(),
        409,
        "email_exists",
    )
    .await;
    assert_eq!(s.transfer_count().await, 1, "only the first account got welcome credits");
}

#[tokio::test]
async fn login_me_logout_with_bearer_and_cookie() {
    let s = TestServer::start().await;
    let (user, _) = s.register("me@example.com").await;
    let bad = s
        .http
        .post(s.url("/auth/login"))
        .json(&json!({"email": "me@example.com", "password": "wrong password"}))
        .send()
        .await
        .unwrap();
    let unknown = s
        .http
        .post(s.url("/auth/login"))
        .json(&json!({"email": "nobody@example.com", "password": "wrong password"}))
        .send()
        .await
        .unwrap();
    let a = expect_error(bad, 401, "invalid_credentials").await;
    let b = expect_error(unknown, 401, "invalid_credentials").await;
    assert_eq!(a, b, "same answer whether the email exists or not");
    let r = s
        .http
        .post(s.url("/auth/login"))
        .json(&json!({"email": "ME@example.com", "password": "correct horse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let token = v["session_token"].as_str().unwrap().to_string();
    let me: Value = s.http.get(s.url("/auth/me")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert_eq!(me, json!({"id": user, "email": "me@example.com", "balance": 1_000_000}));
    let by_cookie =
        s.http.get(s.url("/auth/me")).header("cookie", format!("other=1; quota_session={token}")).send().await.unwrap();
    assert_eq!(by_cookie.status(), 200);
    let out = s.http.post(s.url("/auth/logout")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(out.json::<Value>().await.unwrap(), json!({"success": true}));
    expect_error(s.http.get(s.url("/auth/me")).bearer_auth(&token).send().await.unwrap(), 401, "invalid_api_key").await;
}

#[tokio::test]
async fn expired_sessions_are_refused() {
    let s = TestServer::start().await;
    let (user, _) = s.register("old@example.com").await;
    let token = "sess_expiredexpiredexpiredexpired00";
    s.state
        .store
        .create_session(&quota_server::secrets::hash_token(token), &user, quota_store::now_ms() - 1)
        .await
        .unwrap();
    expect_error(s.http.get(s.url("/auth/me")).bearer_auth(token).send().await.unwrap(), 401, "invalid_api_key").await;
}

#[tokio::test]
async fn keys_default_to_developer_mode_and_list_without_secrets() {
    let s = TestServer::start().await;
    let (_, session) = s.register("k@example.com").await;
    let r = s
        .http
        .post(s.url("/developers/keys"))
        .bearer_auth(&session)
        .json(&json!({"name": "prod"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["billing_mode"], "developer");
    let secret = created["key"].as_str().unwrap();
    assert!(secret.starts_with("sk-quota-") && secret.len() >= 9 + 32);
    assert_eq!(created["prefix"].as_str().unwrap(), &secret[..12]);
    let listed: Value =
        s.http.get(s.url("/developers/keys")).bearer_auth(&session).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    assert!(listed["data"][0].get("key").is_none());
    assert!(!listed.to_string().contains(&secret[12..]), "the secret never appears in a listing");
    assert_eq!(listed["next_cursor"], Value::Null);
    let stored: Vec<String> =
        quota_store::on_pool!(s.state.store.pool(), |p| sqlx::query_scalar("SELECT key_hash FROM api_keys")
            .fetch_all(p)
            .await
            .unwrap());
    assert!(!stored[0].contains(&secret[9..]), "only the hash is stored");
}

#[tokio::test]
async fn key_creation_validates_input() {
    let s = TestServer::start().await;
    let (_, session) = s.register("v@example.com").await;
    let post = |body: Value| s.http.post(s.url("/developers/keys")).bearer_auth(&session).json(&body).send();
    expect_error(post(json!({"name": "x", "billing_mode": "sandbox"})).await.unwrap(), 400, "bad_request").await;
    expect_error(post(json!({"name": ""})).await.unwrap(), 400, "bad_request").await;
    expect_error(post(json!({"name": "x", "rate_limit_per_minute": 0})).await.unwrap(), 400, "bad_request").await;
    expect_error(post(json!({"name": "x", "rate_limit_per_minute": "fast"})).await.unwrap(), 400, "bad_request").await;
    expect_error(post(json!({"billing_mode": "test"})).await.unwrap(), 400, "bad_request").await;
}

#[tokio::test]
async fn keys_paginate_with_an_opaque_cursor() {
    let s = TestServer::start().await;
    let (_, session) = s.register("p@example.com").await;
    for _ in 0..5 {
        s.key(&session, "test").await;
    }
    let first: Value =
        s.http.get(s.url("/developers/keys?limit=2")).bearer_auth(&session).send().await.unwrap().json().await.unwrap();
    assert_eq!(first["data"].as_array().unwrap().len(), 2);
    let cursor = first["next_cursor"].as_str().unwrap();
    let mut seen: Vec<String> =
        first["data"].as_array().unwrap().iter().map(|k| k["id"].as_str().unwrap().to_string()).collect();
    let mut next = Some(cursor.to_string());
    while let Some(c) = next {
        let page = s.get_json(&format!("/developers/keys?limit=2&cursor={c}"), &session).await;
        seen.extend(page["data"].as_array().unwrap().iter().map(|k| k["id"].as_str().unwrap().to_string()));
        next = page["next_cursor"].as_str().map(str::to_string);
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 5);
    expect_error(
        s.http.get(s.url("/developers/keys?limit=501")).bearer_auth(&session).send().await.unwrap(),
        400,
        "bad_request",
    )
    .await;
    expect_error(
        s.http.get(s.url("/developers/keys?cursor=garbage")).bearer_auth(&session).send().await.unwrap(),
        400,
        "bad_request",
    )
    .await;
}

#[tokio::test]
async fn patch_changes_name_and_rate_limit_only() {
    let s = TestServer::start().await;
    let (_, session) = s.register("patch@example.com").await;
    let (id, _) = s.key(&session, "developer").await;
    let url = s.url(&format!("/developers/keys/{id}"));
    let v: Value = s
        .http
        .patch(&url)
        .bearer_auth(&session)
        .json(&json!({"name": "renamed", "rate_limit_per_minute": 10}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!((v["name"].as_str(), v["rate_limit_per_minute"].as_i64()), (Some("renamed"), Some(10)));
    let v: Value = s
        .http
        .patch(&url)
        .bearer_auth(&session)
        .json(&json!({"rate_limit_per_minute": null}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["rate_limit_per_minute"], Value::Null);
    assert_eq!(v["name"], "renamed");
    expect_error(
        s.http.patch(&url).bearer_auth(&session).json(&json!({"billing_mode": "test"})).send().await.unwrap(),
        400,
        "bad_request",
    )
    .await;
    // Another account cannot see or change it.
    let (_, other) = s.register("other@example.com").await;
    expect_error(
        s.http.patch(&url).bearer_auth(&other).json(&json!({"name": "x"})).send().await.unwrap(),
        404,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn revoked_keys_stop_working_at_once() {
    let s = TestServer::start().await;
    let (_, session, key) = s.developer("test").await;
    assert_eq!(s.http.get(s.url("/v1/balance")).bearer_auth(&key).send().await.unwrap().status(), 200);
    let listed = s.get_json("/developers/keys", &session).await;
    let id = listed["data"][0]["id"].as_str().unwrap();
    let r = s.call_json(reqwest::Method::DELETE, &format!("/developers/keys/{id}"), &session, None).await;
    assert!(r["revoked_at"].is_string());
    expect_error(s.http.get(s.url("/v1/balance")).bearer_auth(&key).send().await.unwrap(), 401, "invalid_api_key")
        .await;
}

#[tokio::test]
async fn rotation_replaces_the_secret_and_keeps_settings() {
    let s = TestServer::start().await;
    let (_, session) = s.register("rot@example.com").await;
    let r = s
        .http
        .post(s.url("/developers/keys"))
        .bearer_auth(&session)
        .json(&json!({"name": "rot", "billing_mode": "test", "rate_limit_per_minute": 7}))
        .send()
        .await
        .unwrap();
    let old: Value = r.json().await.unwrap();
    let old_secret = old["key"].as_str().unwrap();
    assert_eq!(s.http.get(s.url("/v1/balance")).bearer_auth(old_secret).send().await.unwrap().status(), 200);
    let r = s
        .http
        .post(s.url(&format!("/developers/keys/{}/rotate", old["id"].as_str().unwrap())))
        .bearer_auth(&session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let new: Value = r.json().await.unwrap();
    assert_ne!(new["key"], old["key"]);
    assert_eq!(
        (new["billing_mode"].as_str(), new["rate_limit_per_minute"].as_i64(), new["name"].as_str()),
        (Some("test"), Some(7), Some("rot"))
    );
    expect_error(
        s.http.get(s.url("/v1/balance")).bearer_auth(old_secret).send().await.unwrap(),
        401,
        "invalid_api_key",
    )
    .await;
    assert_eq!(
        s.http.get(s.url("/v1/balance")).bearer_auth(new["key"].as_str().unwrap()).send().await.unwrap().status(),
        200
    );
    // A revoked key cannot be rotated again.
    let again = s
        .http
        .post(s.url(&format!("/developers/keys/{}/rotate", old["id"].as_str().unwrap())))
        .bearer_auth(&session)
        .send()
        .await
        .unwrap();
    expect_error(again, 404, "not_found").await;
}

#[tokio::test]
async fn bearer_and_x_api_key_are_equivalent() {
    let s = TestServer::start().await;
    let (user, _, key) = s.developer("developer").await;
    let a: Value = s.http.get(s.url("/v1/balance")).bearer_auth(&key).send().await.unwrap().json().await.unwrap();
    let b: Value =
        s.http.get(s.url("/v1/balance")).header("X-API-Key", &key).send().await.unwrap().json().await.unwrap();
    assert_eq!(a, b);
    assert_eq!(
        a,
        json!({"wallet": "developer", "balance": 1_000_000, "developer_balance": 1_000_000, "plan": "free",
            "user_id": user, "billing_mode": "developer"})
    );
}

#[tokio::test]
async fn sessions_cannot_call_v1_and_keys_cannot_call_management() {
    let s = TestServer::start().await;
    let (_, session, key) = s.developer("test").await;
    expect_error(s.http.get(s.url("/v1/balance")).bearer_auth(&session).send().await.unwrap(), 401, "invalid_api_key")
        .await;
    expect_error(s.chat(&session, common::simple_chat("hi", 5)).await, 401, "invalid_api_key").await;
    expect_error(s.http.get(s.url("/developers/keys")).bearer_auth(&key).send().await.unwrap(), 401, "invalid_api_key")
        .await;
    expect_error(s.http.get(s.url("/auth/me")).header("X-API-Key", &key).send().await.unwrap(), 401, "invalid_api_key")
        .await;
    expect_error(s.http.get(s.url("/developers/keys")).send().await.unwrap(), 401, "invalid_api_key").await;
}

#[tokio::test]
async fn user_keys_need_a_user_token() {
    let s = TestServer::start().await;
    let (_, _, key) = s.developer("user").await;
    expect_error(s.chat(&key, common::simple_chat("hi", 5)).await, 401, "user_token_required").await;
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let s = TestServer::start().await;
    let r = s.http.get(s.url("/healthz")).send().await.unwrap();
    assert!(r.headers()["x-request-id"].to_str().unwrap().starts_with("req_"));
    let r = s.http.get(s.url("/nope")).header("x-request-id", "client-id-123").send().await.unwrap();
    assert_eq!(r.headers()["x-request-id"], "client-id-123");
    let r = s.http.get(s.url("/healthz")).header("x-request-id", "bad id with spaces").send().await.unwrap();
    assert!(r.headers()["x-request-id"].to_str().unwrap().starts_with("req_"));
}

#[tokio::test]
async fn models_list_prices_in_usd_per_1k() {
    let s = TestServer::start().await;
    let (_, _, key) = s.developer("test").await;
    let v: Value = s.http.get(s.url("/v1/models")).bearer_auth(&key).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["object"], "list");
    let mini = v["data"].as_array().unwrap().iter().find(|m| m["id"] == "gpt-4o-mini").unwrap();
    assert_eq!(mini["pricing"]["prompt_per_1k_tokens"], "0.00015");
    assert_eq!(mini["pricing"]["completion_per_1k_tokens"], "0.0006");
    assert_eq!(mini["owned_by"], "openai");
    assert!(mini["created"].as_i64().unwrap() > 1_700_000_000);
    expect_error(s.http.get(s.url("/v1/models")).send().await.unwrap(), 401, "invalid_api_key").await;
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let s = TestServer::start().await;
    let doc: Value = s.http.get(s.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    // Every path in the document answers something other than the 404 fallback.
    for (path, methods) in doc["paths"].as_object().unwrap() {
        let concrete = path.replace("{id}", "key_x");
        for method in methods.as_object().unwrap().keys().filter(|m| *m != "parameters") {
            let r = s.http.request(method.to_uppercase().parse().unwrap(), s.url(&concrete)).send().await.unwrap();
            let body = r.text().await.unwrap();
            assert!(!body.contains("route not found"), "{method} {path} is documented but not routed");
        }
    }
}

/// `GET /v1/balance` with `key` on `s`: the status.
async fn balance_status(s: &TestServer, key: &str) -> u16 {
    s.http.get(s.url("/v1/balance")).bearer_auth(key).send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_or_rotated_on_one_instance_is_refused_on_another_within_a_second() {
    if skip_unless_postgres("a_key_revoked_or_rotated_on_one_instance_is_refused_on_another_within_a_second") {
        return;
    }
    let a = TestServer::start().await;
    let b = TestServer::start_sharing(&a, |_| {}).await;
    let (_, session) = a.register("two-instances@example.com").await;
    // Revocation: B has the key cached (it served it) when A revokes it.
    let (id, key) = a.key(&session, "test").await;
    assert_eq!(balance_status(&b, &key).await, 200);
    let r = a.http.delete(a.url(&format!("/developers/keys/{id}"))).bearer_auth(&session).send().await.unwrap();
    assert_eq!(r.status(), 200);
    within(Duration::from_secs(1), "the revocation reaches instance B", || async {
        (balance_status(&b, &key).await == 401).then_some(())
    })
    .await;
    // Rotation: the old secret stops on B, the new one works there.
    let (id, old) = a.key(&session, "test").await;
    assert_eq!(balance_status(&b, &old).await, 200);
    let r = a.http.post(a.url(&format!("/developers/keys/{id}/rotate"))).bearer_auth(&session).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let new: Value = r.json().await.unwrap();
    within(Duration::from_secs(1), "the rotation reaches instance B", || async {
        (balance_status(&b, &old).await == 401).then_some(())
    })
    .await;
    assert_eq!(balance_status(&b, new["key"].as_str().unwrap()).await, 200);
}

#[tokio::test]
async fn a_cookie_alone_cannot_carry_a_cross_site_form_write() {
    // A page on another site can make the browser POST a form (with the cookie) but not JSON.
    let s = TestServer::start().await;
    let (_, session, _) = s.developer("test").await;
    let cookie = format!("quota_session={session}");
    let form = s
        .http
        .post(s.url("/developers/keys"))
        .header("cookie", &cookie)
        .header("content-type", "text/plain")
        .body(r#"{"name":"x","billing_mode":"test"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 403);
    let body: serde_json::Value = form.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden");
    let listed = s.http.get(s.url("/developers/keys")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(listed.status(), 200, "reads with the cookie still work");
    let keys: serde_json::Value = listed.json().await.unwrap();
    let json = s
        .http
        .post(s.url("/developers/keys"))
        .header("cookie", &cookie)
        .json(&serde_json::json!({"name": "y", "billing_mode": "test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(json.status(), 201, "a JSON write with the cookie is allowed");
    let after: serde_json::Value =
        s.http.get(s.url("/developers/keys")).header("cookie", &cookie).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        after["data"].as_array().unwrap().len(),
        keys["data"].as_array().unwrap().len() + 1,
        "only the JSON write made a key"
    );
}

#[tokio::test]
async fn a_used_key_shows_when_it_was_last_used() {
    // SPEC §2 key metadata: `last_used_at` is null until the key is used, then set (written at
    // most once a second per key by the ledger writer, in the charge's batch).
    let s = TestServer::start().await;
    let (_, session, key) = s.developer("test").await;
    let listed = s.get_json("/developers/keys", &session).await;
    assert!(listed["data"][0]["last_used_at"].is_null());
    for _ in 0..3 {
        assert_eq!(s.chat(&key, common::simple_chat("hi", 4)).await.status(), 200);
    }
    let listed = s.get_json("/developers/keys", &session).await;
    assert!(listed["data"][0]["last_used_at"].is_string(), "{listed}");
}

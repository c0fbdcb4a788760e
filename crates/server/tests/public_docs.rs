//! Clients written against Quota's public documentation (SPEC §14, issue 16), over real HTTP:
//! `docs_url` on every error and the page it names; `/v1/balance`'s documented fields;
//! `/v1/me` equal to the usage records of the last 30 days; `/account`; `/v1/funding/credit`
//! sharing `/v1/funding/oauth_user`'s idempotency space; a webhook receiver that checks each
//! documented payload's fields and types; the scope matrix; `/oauth/userinfo`.

mod common;

use common::{expect_error, simple_chat, TestServer};
use parking_lot::Mutex;
use quota_store::usage::UsageRecord;
use reqwest::Method;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const ALL_SCOPES: [&str; 9] = [
    "openid",
    "profile",
    "email",
    "credits.read",
    "credits.spend",
    "account.read",
    "account.write",
    "apps.read",
    "apps.write",
];

fn access(tokens: &Value) -> String {
    tokens["access_token"].as_str().unwrap().to_string()
}

/// The errors page, as a client following a `docs_url` gets it.
async fn errors_page(s: &TestServer) -> String {
    let r = s.http.get(s.url("/docs/errors")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    r.text().await.unwrap()
}

#[tokio::test]
async fn every_provokable_error_links_to_a_page_section_that_explains_it() {
    let s = TestServer::start_with(|c| c.body_limit_bytes = 64 * 1024).await;
    let (dev, _, key) = s.developer("developer").await;
    let (_, _, test_key) = s.developer("test").await;
    let (_, _, user_key) = s.developer("user").await;
    let mut provoked = Vec::new();
    let mut check = |code: &'static str, v: Value| {
        assert_eq!(v["error"]["docs_url"], format!("/docs/errors#{code}"));
        provoked.push(code);
    };
    let register = |email: &str, password: &str| {
        s.http.post(s.url("/auth/register")).json(&json!({"email": email, "password": password})).send()
    };
    check("invalid_email", expect_error(register("nope", "long enough").await.unwrap(), 400, "invalid_email").await);
    check("weak_password", expect_error(register("a@b.example", "short").await.unwrap(), 400, "weak_password").await);
    let taken = s.get_json("/auth/me", "sess_x").await; // any error body is JSON with docs_url
    assert!(taken["error"]["docs_url"].is_string());
    let (_, _) = s.register("taken@example.com").await;
    let again = register("taken@example.com", "long enough").await.unwrap();
    check("email_exists", expect_error(again, 409, "email_exists").await);
    let login = s.http.post(s.url("/auth/login")).json(&json!({"email": "taken@example.com", "password": "wrong one"}));
    check("invalid_credentials", expect_error(login.send().await.unwrap(), 401, "invalid_credentials").await);
    let r = s.http.get(s.url("/v1/balance")).send().await.unwrap();
    check("invalid_api_key", expect_error(r, 401, "invalid_api_key").await);
    let r = s.send(Method::GET, "/v1/balance", "quota_token_bogus", Value::Null).await;
    check("invalid_token", expect_error(r, 401, "invalid_token").await);
    let r = s.send(Method::POST, "/v1/chat/completions", &user_key, simple_chat("hi", 5)).await;
    check("user_token_required", expect_error(r, 401, "user_token_required").await);
    let r = s.http.post(s.url("/v1/chat/completions")).bearer_auth(&key).body("{not json").send().await.unwrap();
    check("bad_request", expect_error(r, 400, "bad_request").await);
    let r = s
        .send(
            Method::POST,
            "/v1/chat/completions",
            &test_key,
            json!({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    check("model_not_found", expect_error(r, 404, "model_not_found").await);
    let r = s.send(Method::POST, "/v1/chat/completions", &key, simple_chat("hi", 5)).await;
    check("provider_unavailable", expect_error(r, 503, "provider_unavailable").await);
    let r = s.send(Method::POST, "/v1/funding/credit", &test_key, json!({"user_id": dev, "amount": 1})).await;
    check("forbidden", expect_error(r, 403, "forbidden").await);
    let r = s.send(Method::POST, "/v1/funding/credit", &key, json!({"user_id": "usr_nobody", "amount": 1})).await;
    check("user_not_found", expect_error(r, 404, "user_not_found").await);
    let r = s.send(Method::GET, "/no/such/route", &key, Value::Null).await;
    check("not_found", expect_error(r, 404, "not_found").await);
    let big = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x".repeat(100_000)}]});
    check(
        "payload_too_large",
        expect_error(s.send(Method::POST, "/v1/chat/completions", &test_key, big).await, 413, "payload_too_large")
            .await,
    );
    let (sandbox_dev, _, sandbox_key) = s.developer("test").await;
    s.drain(&sandbox_dev, 0).await;
    let r = s.send(Method::POST, "/v1/chat/completions", &sandbox_key, simple_chat("hi", 50)).await;
    check("insufficient_credits", expect_error(r, 402, "insufficient_credits").await);
    let page = errors_page(&s).await;
    for code in provoked.iter().chain(quota_server::error_catalog::CODES.iter().map(|d| &d.code)) {
        assert!(page.contains(&format!("<section id=\"{code}\">")), "{code} has no section on /docs/errors");
    }
}

#[tokio::test]
async fn balance_has_both_documented_shapes_and_the_plan() {
    let s = TestServer::start().await;
    let (dev, _, key) = s.developer("developer").await;
    let v = s.get_json("/v1/balance", &key).await;
    assert_eq!(v["wallet"], "developer");
    assert_eq!(v["developer_balance"], v["balance"]);
    assert_eq!(v["plan"], "free");
    assert_eq!(v["user_id"], dev);
    let app = s.app(json!({})).await;
    let (user, _, tokens) = s.connected_user(&app, "credits.read").await;
    let v = s.get_json("/v1/balance", &access(&tokens)).await;
    assert_eq!(
        v,
        json!({"wallet": "oauth_user", "balance": 1_000_000, "plan": "free", "user_id": user, "billing_mode": "user"})
    );
}

/// A usage record of `payer`'s, `age_ms` old.
fn record(s: &TestServer, payer: &str, model: &str, age_ms: i64, tokens: (i64, i64), total: i64) -> UsageRecord {
    UsageRecord {
        id: quota_core::ids::new_id("req_"),
        client_request_id: None,
        created_at: s.state.clock.now_ms() - age_ms,
        developer_id: payer.into(),
        key_id: None,
        app_id: None,
        payer_account: format!("wallet:{payer}"),
        billing_mode: "developer".into(),
        model: model.into(),
        provider: "openai".into(),
        input_tokens: tokens.0,
        cached_tokens: 3,
        cache_write_tokens: 0,
        output_tokens: tokens.1,
        base_cost: total,
        markup: 0,
        total,
        status: "succeeded".into(),
        latency_ms: 1,
        sandbox: false,
        pending_event: None,
    }
}

#[tokio::test]
async fn me_sums_exactly_the_usage_records_of_the_last_30_days() {
    let s = TestServer::start().await;
    let (dev, _, key) = s.developer("test").await;
    for content in ["one", "two words", "three words here"] {
        assert_eq!(s.chat(&key, simple_chat(content, 20)).await.status(), 200);
    }
    let day = quota_store::usage::DAY_MS;
    for r in [
        record(&s, &dev, "gpt-4o", 29 * day, (100, 50), 7_000),
        record(&s, &dev, "gpt-4o", 31 * day, (1_000, 500), 90_000), // outside the window
    ] {
        s.state.ledger.record(r).await.unwrap();
    }
    s.state.ledger.flush().await.unwrap();
    let from = s.state.clock.now_ms() - 30 * day;
    let rows: Vec<(String, i64, i64, bool)> = quota_store::on_pool!(s.state.store.pool(), |p| sqlx::query_as(
        "SELECT model, input_tokens + cached_tokens + cache_write_tokens + output_tokens, \
         CASE WHEN sandbox THEN base_cost ELSE total END, sandbox FROM usage_records \
         WHERE payer_account = $1 AND created_at >= $2"
    )
    .bind(format!("wallet:{dev}"))
    .bind(from)
    .fetch_all(p)
    .await
    .unwrap());
    assert_eq!(rows.len(), 4);
    let me = s.get_json("/v1/me", &key).await;
    assert_eq!(me["id"], dev);
    let usage = &me["usage"];
    assert_eq!(usage["requests"], rows.len() as i64);
    assert_eq!(usage["tokens"], rows.iter().map(|r| r.1).sum::<i64>());
    assert_eq!(usage["credits_spent"], rows.iter().map(|r| r.2).sum::<i64>());
    let by_model = usage["by_model"].as_array().unwrap();
    assert_eq!(by_model.len(), 2);
    for m in by_model {
        let of = rows.iter().filter(|r| r.0 == m["model"].as_str().unwrap());
        assert_eq!(m["requests"], of.clone().count() as i64);
        assert_eq!(m["credits_spent"], of.map(|r| r.2).sum::<i64>());
    }
    assert!(usage["credits_spent"].as_i64().unwrap() > 7_000, "the sandbox chats cost their base");
}

#[tokio::test]
async fn account_shows_the_documented_fields_and_patch_sets_only_the_profile() {
    let s = TestServer::start().await;
    let (user, session) = s.register("ada@example.com").await;
    let v = s.get_json("/account", &session).await;
    assert_eq!(v["id"], user);
    assert_eq!(v["email"], "ada@example.com");
    assert_eq!(v["balance"], 1_000_000);
    assert_eq!(v["plan"], "free");
    assert!(v["created_at"].is_string() && v["name"].is_null() && v["avatar_url"].is_null());
    assert_eq!(v["user_metadata"], json!({}));
    assert_eq!(v["linked_providers"], json!([]));
    assert_eq!(
        v["billing"],
        json!({"has_payment_method": false, "auto_topoff_enabled": false, "auto_topoff_threshold": 0, "auto_topoff_amount": 0})
    );
    let change = json!({"name": "Ada", "avatar_url": "https://example.com/ada.png", "user_metadata": {"team": "core"}});
    let v = s.call_json(Method::PATCH, "/account", &session, Some(change)).await;
    assert_eq!(
        (&v["name"], &v["avatar_url"], &v["user_metadata"]),
        (&json!("Ada"), &json!("https://example.com/ada.png"), &json!({"team": "core"}))
    );
    let v = s.call_json(Method::PATCH, "/account", &session, Some(json!({"name": null}))).await;
    assert!(v["name"].is_null());
    assert_eq!(v["avatar_url"], "https://example.com/ada.png", "a field not named stays");
    for bad in [json!({"email": "x@y.z"}), json!({"avatar_url": "javascript:alert(1)"}), json!({"user_metadata": [1]})]
    {
        let r = s.send(Method::PATCH, "/account", &session, bad).await;
        expect_error(r, 400, "bad_request").await;
    }
}

#[tokio::test]
async fn funding_credit_and_oauth_user_share_one_idempotency_space() {
    let s = TestServer::start().await;
    let app = s.app(json!({})).await;
    let (_, _, key) = {
        let (k_id, key) = s.key(&app.developer_session, "developer").await;
        (k_id, (), key)
    };
    let (user, _, _) = s.connected_user(&app, "credits.read").await;
    let fund = |path: &'static str, idem: &'static str, body: Value| {
        s.http.post(s.url(path)).bearer_auth(&key).header("Idempotency-Key", idem).json(&body).send()
    };
    let credit = json!({"external_user_id": user, "amount": 500});
    let r = fund("/v1/funding/credit", "k-1", credit.clone()).await.unwrap();
    assert_eq!(r.status(), 200);
    let first: Value = r.json().await.unwrap();
    assert_eq!((first["success"].clone(), first["user_id"].clone()), (json!(true), json!(user)));
    assert_eq!((first["new_balance"].clone(), first["amount_added"].clone()), (json!(1_000_500), json!(500)));
    let r = fund("/v1/funding/credit", "k-1", credit.clone()).await.unwrap();
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    assert_eq!(r.json::<Value>().await.unwrap(), first);
    // The same key on the other route is another request under that key: a conflict, not a
    // second transfer.
    let r = fund("/v1/funding/oauth_user", "k-1", json!({"user_id": user, "amount": 500})).await.unwrap();
    expect_error(r, 409, "idempotency_conflict").await;
    let r = fund("/v1/funding/oauth_user", "k-2", json!({"user_id": user, "amount": 200})).await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["balance_after"], 1_000_700);
    let r = fund("/v1/funding/credit", "k-2", json!({"user_id": user, "amount": 200})).await.unwrap();
    expect_error(r, 409, "idempotency_conflict").await;
    // The older docs' body field is the same key.
    let body = json!({"user_id": user, "amount": 100, "idempotency_key": "k-3"});
    for _ in 0..2 {
        let r = s.send(Method::POST, "/v1/funding/credit", &key, body.clone()).await;
        assert_eq!(r.json::<Value>().await.unwrap()["new_balance"], 1_000_800);
    }
    assert_eq!(s.balance(&user).await, 1_000_800);
    let r = s.send(Method::POST, "/v1/funding/credit", &key, json!({"user_id": user, "amount": 10_000_000})).await;
    expect_error(r, 402, "insufficient_credits").await;
}

/// A loopback receiver that keeps every body it is sent.
async fn receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let g = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: bytes::Bytes| {
            let g = g.clone();
            async move {
                g.lock().push(serde_json::from_slice(&body).unwrap());
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), got)
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Str,
    Int,
}

/// The documented `data` fields of each event (the [N] webhooks page), with their types.
const DOCUMENTED: [(&str, &[(&str, Kind)]); 3] = [
    (
        "usage.completed",
        &[
            ("user_id", Kind::Str),
            ("model", Kind::Str),
            ("prompt_tokens", Kind::Int),
            ("completion_tokens", Kind::Int),
            ("total_tokens", Kind::Int),
            ("credits_used", Kind::Int),
        ],
    ),
    (
        "balance.updated",
        &[
            ("user_id", Kind::Str),
            ("new_balance", Kind::Int),
            ("amount_spent", Kind::Int),
            ("model", Kind::Str),
            ("endpoint", Kind::Str),
        ],
    ),
    ("balance.low", &[("user_id", Kind::Str), ("current_balance", Kind::Int), ("threshold", Kind::Int)]),
];

/// What a receiver written against the docs checks: the envelope, then each documented field
/// present with its type.
fn validate(event: &Value) {
    assert!(event["id"].as_str().is_some_and(|i| i.starts_with("evt_")), "{event}");
    assert!(event["created_at"].is_string(), "{event}");
    let kind = event["type"].as_str().unwrap();
    let (_, fields) = DOCUMENTED.iter().find(|(k, _)| *k == kind).unwrap_or_else(|| panic!("undocumented {kind}"));
    for (name, ty) in *fields {
        let v = &event["data"][name];
        let ok = match ty {
            Kind::Str => v.is_string(),
            Kind::Int => v.is_i64(),
        };
        assert!(ok, "{kind}.data.{name} should be {ty:?}: {event}");
    }
}

#[tokio::test]
async fn a_receiver_written_against_the_docs_accepts_every_documented_payload() {
    let s = TestServer::start_with(|c| c.webhook_poll_ms = 20).await;
    let (url, got) = receiver().await;
    let (dev, session, key) = s.developer("test").await;
    let r = s.send(Method::POST, "/v1/webhooks", &session, json!({"url": url, "low_balance_threshold": 999_999})).await;
    assert_eq!(r.status(), 201);
    let reply = s.chat(&key, simple_chat("hello there", 20)).await;
    assert_eq!(reply.status(), 200);
    let quota = reply.json::<Value>().await.unwrap()["quota"].clone();
    let mut events = Vec::new();
    for _ in 0..500 {
        events = got.lock().clone();
        if ["usage.completed", "balance.updated", "balance.low"].iter().all(|k| events.iter().any(|e| e["type"] == *k))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for e in &events {
        validate(e);
    }
    let of = |k: &str| events.iter().find(|e| e["type"] == k).unwrap_or_else(|| panic!("no {k} in {events:?}"));
    let updated = &of("balance.updated")["data"];
    assert_eq!(updated["user_id"], dev);
    assert_eq!(updated["endpoint"], "/v1/chat/completions");
    assert_eq!(updated["amount_spent"], quota["credits_used"]);
    assert_eq!(updated["new_balance"], quota["balance_after"]);
    assert_eq!(updated["new_balance"], s.balance(&dev).await);
    let usage = &of("usage.completed")["data"];
    assert_eq!(usage["credits_used"], quota["credits_used"]);
    assert_eq!(
        usage["total_tokens"],
        usage["prompt_tokens"].as_i64().unwrap() + usage["completion_tokens"].as_i64().unwrap()
    );
    assert!(usage["request_id"].is_string() && usage["input_tokens"].is_i64(), "ours stay beside theirs");
    let low = &of("balance.low")["data"];
    assert_eq!(
        (low["current_balance"].clone(), low["threshold"].clone()),
        (quota["balance_after"].clone(), json!(999_999))
    );
}

#[tokio::test]
async fn no_balance_updated_is_written_for_a_developer_whose_endpoints_do_not_want_it() {
    let s = TestServer::start().await;
    let (dev, session, key) = s.developer("test").await;
    let r = s
        .send(
            Method::POST,
            "/v1/webhooks",
            &session,
            json!({"url": "http://127.0.0.1:9/x", "events": ["user.connected"]}),
        )
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(s.chat(&key, simple_chat("hi", 5)).await.status(), 200);
    assert!(s.events(&dev, "balance.updated").await.is_empty());
}

/// Each route that takes a user token, with the scope it needs and a request to make.
fn scope_routes(app_id: &str) -> Vec<(&'static str, Method, String, Value)> {
    vec![
        ("credits.read", Method::GET, "/v1/balance".into(), Value::Null),
        ("credits.spend", Method::POST, "/v1/chat/completions".into(), simple_chat("hi", 5)),
        ("account.read", Method::GET, "/v1/me".into(), Value::Null),
        ("account.read", Method::GET, "/account".into(), Value::Null),
        ("account.write", Method::PATCH, "/account".into(), json!({"name": "Grace"})),
        (
            "account.write",
            Method::POST,
            "/api/payments/checkout".into(),
            json!({"package_id": "starter", "success_url": "http://localhost/ok", "cancel_url": "http://localhost/no"}),
        ),
        ("apps.read", Method::GET, "/account/connections".into(), Value::Null),
        ("apps.write", Method::DELETE, format!("/account/connections/{app_id}"), Value::Null),
    ]
}

#[tokio::test]
async fn every_scoped_route_takes_a_token_with_its_scope_and_refuses_one_without() {
    let s = TestServer::start_with(|c| c.payments_provider = Some("dev".into())).await;
    let app = s.app(json!({"allowed_scopes": ALL_SCOPES})).await;
    for (scope, method, path, body) in scope_routes(&app.id) {
        let others: Vec<&str> = ALL_SCOPES.iter().copied().filter(|s| *s != scope).collect();
        let (_, _, without) = s.connected_user(&app, &others.join(" ")).await;
        let r = s.send(method.clone(), &path, access(&without), body.clone()).await;
        let v = expect_error(r, 403, "insufficient_scope").await;
        assert!(v["error"]["message"].as_str().unwrap().contains(scope), "{method} {path}: {v}");
        let (_, _, with) = s.connected_user(&app, scope).await;
        // Past the scope check (inference then finds no OpenAI key in this gateway: 503).
        let r = s.send(method.clone(), &path, access(&with), body).await;
        let passed = r.status().is_success() || (path == "/v1/chat/completions" && r.status() == 503);
        assert!(passed, "{method} {path} with {scope}: {} {}", r.status(), r.text().await.unwrap());
    }
}

#[tokio::test]
async fn userinfo_names_the_profile_and_has_a_null_balance_without_a_wallet_link() {
    let s = TestServer::start().await;
    let app = s.app(json!({})).await;
    let (_, session, wallet) = s.connected_user(&app, "openid profile credits.read").await;
    let change = json!({"name": "Ada Lovelace", "avatar_url": "https://example.com/a.png"});
    assert_eq!(s.send(Method::PATCH, "/account", &session, change).await.status(), 200);
    let v = s.get_json("/oauth/userinfo", &access(&wallet)).await;
    assert_eq!(
        (&v["name"], &v["picture"], &v["balance"]),
        (&json!("Ada Lovelace"), &json!("https://example.com/a.png"), &json!(1_000_000))
    );
    let (_, _, sign_in_only) = s.connected_user(&app, "openid profile email").await;
    let v = s.get_json("/oauth/userinfo", &access(&sign_in_only)).await;
    assert!(v.as_object().unwrap().contains_key("balance") && v["balance"].is_null(), "{v}");
    assert!(v.get("picture").is_none(), "no avatar, no picture: {v}");
}

/// The event names and data of a `/v1/messages` stream.
async fn message_stream(s: &TestServer, key: &str, header: Option<&str>) -> Vec<(String, Value)> {
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 30, "stream": true,
        "messages": [{"role": "user", "content": "hello"}]});
    let mut req = s.http.post(s.url("/v1/messages")).header("x-api-key", key).json(&body);
    if let Some(h) = header {
        req = req.header("X-Quota-Usage-Event", h);
    }
    let text = req.send().await.unwrap().text().await.unwrap();
    text.split("\n\n")
        .filter(|f| !f.trim().is_empty())
        .map(|f| {
            let name = f.lines().find_map(|l| l.strip_prefix("event: ")).unwrap_or("").to_string();
            let data = f.lines().find_map(|l| l.strip_prefix("data: ")).unwrap_or("null");
            (name, serde_json::from_str(data).unwrap())
        })
        .collect()
}

#[tokio::test]
async fn messages_streams_carry_quota_on_the_final_message_delta_and_quota_usage_can_be_turned_off() {
    let s = TestServer::start().await;
    let (_, session, key) = s.developer("test").await;
    let events = message_stream(&s, &key, None).await;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[names.len() - 3..], ["message_delta", "message_stop", "quota_usage"]);
    assert_eq!(names.iter().filter(|n| **n == "message_delta").count(), 1);
    let delta = &events[names.len() - 3].1;
    assert!(delta["usage"]["output_tokens"].is_u64() && delta["delta"]["stop_reason"].is_string());
    let usage_event = &events[names.len() - 1].1;
    assert_eq!(delta["quota"]["credits_used"], usage_event["credits_used"]);
    assert!(delta["quota"]["credits_used"].as_i64().unwrap() > 0);
    let off = message_stream(&s, &key, Some("off")).await;
    assert_eq!(off.last().unwrap().0, "message_stop");
    assert!(off.iter().all(|(n, _)| n != "quota_usage"));
    assert!(off.iter().any(|(n, d)| n == "message_delta" && d["quota"]["credits_used"].is_i64()));
    // The key's setting does the same for every stream of that key.
    let key_id = s.get_json("/developers/keys", &session).await["data"][0]["id"].as_str().unwrap().to_string();
    let v = s
        .call_json(
            Method::PATCH,
            &format!("/developers/keys/{key_id}"),
            &session,
            Some(json!({"quota_usage_event": false})),
        )
        .await;
    assert_eq!(v["quota_usage_event"], false);
    let quiet = message_stream(&s, &key, None).await;
    assert!(quiet.iter().all(|(n, _)| n != "quota_usage"), "{quiet:?}");
}

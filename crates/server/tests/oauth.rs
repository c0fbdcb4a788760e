//! SPEC §5, §6 and the user rows of §2 over real HTTP: the authorization server (authorize,
//! consent, token, refresh, userinfo, revoke, JWKS), its negative space (redirect URIs, PKCE,
//! code and refresh-token reuse, expiry with a moved clock, scopes, CSRF, denied consent), and
//! user-mode billing with exact ledger effects, 402s and concurrency.

mod common;

use common::fake_openai::Script;
use common::oauth::HeldUpstream;
use common::oauth::{browser, hidden_inputs, location_params, param, pkce, TestApp, REDIRECT};
use common::{chat_hold, expect_error, proxied, simple_chat, skip_unless_postgres, within, TestServer};
use serde_json::{json, Value};
use std::time::Duration;

fn access(t: &Value) -> String {
    t["access_token"].as_str().unwrap().to_string()
}

async fn chat_as(s: &TestServer, token: &str, body: Value) -> reqwest::Response {
    s.chat(token, body).await
}

// ---- the flow ------------------------------------------------------------------------------

#[tokio::test]
async fn a_user_token_pays_base_plus_markup_in_one_settlement() {
    let (s, fake) = proxied().await;
    let app = s.app(json!({"profit_margin": 0.25})).await;
    let (user, _, tokens) = s.connected_user(&app, "openid credits.spend credits.read").await;
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 3600);
    assert!(access(&tokens).starts_with("quota_token_"));
    assert!(tokens["refresh_token"].as_str().unwrap().starts_with("quota_refresh_"));
    assert_eq!(tokens["scope"], "openid credits.read credits.spend");
    fake.script(Script::Complete { prompt: 1000, cached: 0, completion: 500, text: "hi".into() });
    let user_before = s.balance(&user).await;
    let dev_before = s.balance(&app.developer_id).await;
    let r = chat_as(&s, &access(&tokens), simple_chat(&common::prompt_of(1000), 600)).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    // base = 1000 × 0.15 + 500 × 0.6 = 450; markup = ceil(450 × 0.25) = ceil(112.5) = 113.
    let q = &v["quota"];
    assert_eq!(
        (q["base_cost"].as_i64(), q["markup"].as_i64(), q["credits_used"].as_i64()),
        (Some(450), Some(113), Some(563))
    );
    assert_eq!(q["billing_mode"], "user");
    assert_eq!(q["balance_before"], user_before);
    assert_eq!(q["balance_after"], user_before - 563);
    assert!(q.get("sandbox").is_none());
    assert_eq!(s.stored_balance(&user).await, user_before - 563);
    assert_eq!(s.stored_balance(&app.developer_id).await, dev_before, "the developer's wallet is not touched");
    assert_eq!(s.account_balance(&format!("earnings_pending:{}", app.developer_id)).await, 113);
    assert_eq!(s.account_balance("platform:revenue").await, 450);
    let rid = q["request_id"].as_str().unwrap();
    let rows: Vec<(String, String, i64, String)> = quota_store::on_pool!(s.state.store.pool(), |p| sqlx::query_as(
        "SELECT from_account, to_account, amount, kind FROM transfers WHERE cause = $1 ORDER BY seq"
    )
    .bind(rid)
    .fetch_all(p)
    .await
    .unwrap());
    let wallet = format!("wallet:{user}");
    assert_eq!(
        rows,
        vec![
            (wallet.clone(), "platform:revenue".into(), 450, "usage_charge".into()),
            (wallet.clone(), format!("earnings_pending:{}", app.developer_id), 113, "markup".into()),
        ]
    );
    let (dev, app_id, payer, base, markup, total): (String, String, String, i64, i64, i64) =
        quota_store::on_pool!(s.state.store.pool(), |p| sqlx::query_as(
            "SELECT developer_id, app_id, payer_account, base_cost, markup, total FROM usage_records WHERE id = $1",
        )
        .bind(rid)
        .fetch_one(p)
        .await
        .unwrap());
    assert_eq!(
        (dev, app_id, payer, base, markup, total),
        (app.developer_id.clone(), app.id.clone(), wallet, 450, 113, 563)
    );
    s.assert_ledger_ok().await;
}

#[tokio::test]
async fn balance_with_a_user_token_is_the_users_wallet() {
    let s = TestServer::start().await;
    let app = s.app(json!({})).await;
    let (user, _, tokens) = s.connected_user(&app, "credits.read").await;
    let r = s.send(reqwest::Method::GET, "/v1/balance", access(&tokens), Value::Null).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v,
        json!({"wallet": "oauth_user", "balance": 1_000_000, "plan": "free", "user_id": user, "billing_mode": "user"})
    );
    let r = s.send(reqwest::Method::GET, "/v1/models", access(&tokens), Value::Null).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_whole_grant() {
    let s = TestServer::start().await;
    let app = s.app(json!({})).await;
    let (_, _, t1) = s.connected_user(&app, "credits.read").await;
    let r1 = t1["refresh_token"].as_str().unwrap().to_string();
    let t2: Value = s.refresh(&app, &r1).await.json().await.unwrap();
    let r2 = t2["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(r1, r2);
    assert_ne!(t1["access_token"], t2["access_token"]);
    let balance = |t: String| {
        let s = &s;
        async move { s.send(reqwest::Method::GET, "/v1/balance", t, Value::Null).await.status().as_u16() }
    };
    assert_eq!(balance(access(&t2)).await, 200);
    // The rotated token again: refused, and everything of the grant stops working.
    let again = s.refresh(&app, &r1).await;
    assert_eq!(again.status(), 400);
    assert_eq!(again.json::<Value>().await.unwrap()["error"], "invalid_grant");
    assert_eq!(balance(access(&t2)).await, 401);
    assert_eq!(balance(access(&t1)).await, 401);
    let r = s.refresh(&app, &r2).await;
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_grant");
}

#[tokio::test]
async fn a_reused_code_is_refused_and_revokes_what_it_issued() {
    let s = TestServer::start().await;
    let app = s.app(json!({})).await;
    let (_, session) = s.register("reuse@example.com").await;
    let code = s.code_for(&session, &app, &[("scope", "credits.read")]).await;
    let exchange = [("grant_type", "authorization_code"), ("code", code.as_str()), ("redirect_uri", REDIRECT)];
    let first: Value = s.token_request(&app, &exchange).await.json().await.unwrap();
    let token = access(&first);
    assert_eq!(s.send(reqwest::Method::GET, "/v1/balance", &token, Value::Null).await.status(), 200);
    let second = s.token_request(&app, &exchange).await;
    assert_eq!(second.status(), 400);
    assert_eq!(second.json::<Value>().await.unwrap()["error"], "invalid_grant");
    expect_error(s.send(reqwest::Method::GET, "/v1/balance", &token, Value::Null).await, 401, "invalid_token").await;
    let r = s.refresh(&app, first["refresh_token"].as_str().unwrap()).await;
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_grant");
}

#[tokio::test]
async fn pkce_verifier_must_be_present_and_correct() {
    let s = TestServer::start().await;
    let app = s.app(json!({})).await;
    let (_, session) = s.register("pkce@example.com").await;
    let (verifier, challenge) = pkce();
    let code = s
        .code_for(
            &session,
            &app,
            &[("scope", "credits.read"), ("code_challenge", &challenge), ("code_challenge_method", "S256")],
        )
        .await;
    let base = [("grant_type", "authorization_code"), ("code", code.as_str()), ("redirect_uri", REDIRECT)];
    let missing = s.token_request(&app, &base).await;
    assert_eq!(missing.json::<Value>().await.unwrap()["error"], "invalid_grant");
    let (wrong, _) = pkce();
    let mut with_wrong = base.to_vec();
    with_wrong.push(("code_verifier", &wrong));
    assert_eq!(s.token_request(&app, &with_wrong).await.json::<Value>().await.unwrap()["error"], "invalid_grant");
    let mut with_right = base.to_vec();
    with_right.push(("code_verifier", &verifier));
    assert_eq!(s.token_request(&app, &with_right).await.status(), 200);
    // `plain` works too, for compatibility.
    let plain = "p".repeat(50);
    let code = s.code_for(&session, &app, &[("scope", "credits.read"), ("code_challenge", &plain)]).await;
    let r = s
        .token_request(
            &app,
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", &plain),
            ],
        )
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn public_clients_must_use_pkce_and_no_secret() {
    let s = TestServer::start().await;
    let app = s.app(json!({"token_endpoint_auth_method": "none"})).await;
    assert!(app.client_secret.is_none());
    let (_, session) = s.register("public@example.com").await;
    let r = s.authorize_page(&session, &app, &[]).await;
    assert_eq!(r.status(), 303);
    let p = location_params(r.headers()["location"].to_str().unwrap());
    assert_eq!(param(&p, "error").as_deref(), Some("invalid_request"));
    assert_eq!(param(&p, "state").as_deref(), Some("st-123"));
    let (_, _, tokens) = s.connected_user(&app, "credits.read").await;
    assert!(tokens["access_token"].is_string());
    let r = s
        .http
        .post(s.url("/oauth/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", &app.client_id),
            ("client_secret", "quota_secret_x"),
            ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_client");
}

#[tokio::test]
async fn a_wrong_client_secret_is_invalid_client() {
    let s = TestServer::start().await;
    let app = s.app(json!({})).await;
    let wrong = TestApp { client_secret: Some("quota_secret_wrong".into()), ..app };
    let r = s
        .token_request(&wrong, &[("grant_type", "authorization_code"), ("code", "x"), ("redirect_uri", REDIRECT)])
        .await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_client");
}

// ---- redirect URIs, state, consent, CSRF ---------------------------------------------------

#[tokio::test]
async fn unregistered_redirect_uris_get_an_error_page_never_a_redirect() {
    let s = TestServer::start().await;
    let app = s.app(json!({})).await;
    let (_, session) = s.register("redir@example.com").await;
    for evil in [
        "https://evil.example.com/callback",
        "http://127.0.0.1:9999/callback/../evil",
        "http://127.0.0.1:9999/callbackx",
        "http://127.0.0.1:9999/callback?next=https://evil.example.com",
        "//evil.example.com",
    ] {
        let r = s.authorize_page(&session, &app, &[("redirect_uri", evil)]).await;
        assert_eq!(r.status(), 400, "{evil}");
        assert!(r.headers().get("location").is_none(), "{evil}");
        assert!(r.text().await.unwrap().contains("not one this app registered"));
    }
    let r = s.authorize_page(&session, &app, &[("client_id", "quota_client_nope")]).await;
    assert_eq!(r.status(), 400);
    assert!(r.headers().get("location").is_none());
    // Registering plain http off localhost is refused.
    let r = s
        .send(
            reqwest::Method::POST,
            "/developers/apps",
            &app.developer_session,
            json!({"name": "x", "redirect_uris": ["http://app.example.com/cb"]}),
        )
        .await;
    expect_error(r, 400, "bad_request").await;
}

#[tokio::test]
async fn bad_requests_go_back_to_the_app_with_error_and_state() {
    let s = TestServer::start().await;
    let app = s.app(json!({"allowed_scopes": ["credits.read"]})).await;
    let (_, session) = s.register("badreq@example.com").await;
    for (params, error) in [
        (vec![("scope", "credits.spend")], "invalid_scope"),
        (vec![("scope", "admin")], "invalid_scope"),
        (vec![("scope", "credits.read"), ("response_type", "token")], "unsupported_response_type"),
        (vec![("scope", "credits.read"), ("code_challenge", "short")], "invalid_request"),
    ] {
        let r = s.authorize_page(&session, &app, &params).await;
        assert_eq!(r.status(), 303, "{params:?}");
        let p = location_params(r.headers()["location"].to_str().unwrap());
        assert_eq!(param(&p, "error").as_deref(), Some(error), "{params:?}");
        assert_eq!(param(&p, "state").as_deref(), Some("st-123"));
        assert!(param(&p, "code").is_none());
    }
}

#[tokio::test]
async fn the_consent_page_shows_app_scopes_markup_and_balance_escaped() {
    let s = TestServer::start().await;
    let app = s.app(json!({"name": "<script>Acme</script>", "profit_margin": 0.25})).await;
    let (_, session) = s.register("page@example.com").await;
    let r = s.authorize_page(&session, &app, &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    let html = r.text().await.unwrap();
    assert!(html.contains("&lt;script&gt;Acme&lt;/script&gt;") && !html.contains("<script>"));
    assert!(html.contains("Spend credits from your wallet"));
    assert!(html.contains("See your email address"));
    assert!(html.contains("25%"));
    // gpt-4o-mini input: $0.15 base per 1M tokens, $0.1875 with a 25% markup.
    assert!(html.contains("<td>$0.15</td><td>$0.1875</td>"), "{html}");
    assert!(html.contains("$1.00"), "the user's balance");
}

#[tokio::test]
async fn denying_consent_redirects_access_denied_and_connects_nothing() {
    let s = TestServer::start().await;
    let app = s.app(json!({})).await;
    let (user, session) = s.register("deny@example.com").await;
    let html = s.authorize_page(&session, &app, &[("state", "xyz")]).await.text().await.unwrap();
    let r = s.submit_consent(&session, &html, "deny").await;
    assert_eq!(r.status(), 303);
    let p = location_params(r.headers()["location"].to_str().unwrap());
    assert_eq!(param(&p, "error").as_deref(), Some("access_denied"));
    assert_eq!(param(&p, "state").as_deref(), Some("xyz"));
    assert!(param(&p, "code").is_none());
    assert!(s.events(&app.developer_id, "user.connected").await.is_empty());
    let _ = user;
}

#[tokio::test]
async fn a_consent_post_without_the_sessions_csrf_token_is_refused() {
    let s = TestServer::start().await;
    let app = s.app(json!({})).await;
    let (_, victim) = s.register("victim@example.com").await;
    let (_, attacker) = s.register("attacker@example.com").await;
    // The attacker's own page has a valid token for the attacker's session, not the victim's.
    let html = s.authorize_page(&attacker, &app, &[]).await.text().await.unwrap();
    for form in
        [hidden_inputs(&html), hidden_inputs(&html).into_iter().filter(|(k, _)| k != "csrf_token").collect::<Vec<_>>()]
    {
        let mut form = form;
        form.push(("action".into(), "approve".into()));
        let r = browser()
            .post(s.url("/oauth/authorize"))
            .header("cookie", format!("quota_session={victim}"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        assert!(r.headers().get("location").is_none());
    }
    assert!(s.events(&app.developer_id, "user.connected").await.is_empty());
}

#[tokio::test]
async fn signing_in_and_signing_up_on_the_authorize_page() {
    let s = TestServer::start().await;
    let app = s.app(json!({})).await;
    s.register("existing@example.com").await;
    let page = browser()
        .get(s.url("/oauth/authorize"))
        .query(&[
            ("response_type", "code"),
            ("client_id", &app.client_id),
            ("redirect_uri", REDIRECT),
            ("scope", "credits.read"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csrf_cookie = page.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let html = page.text().await.unwrap();
    assert!(html.contains("Sign in to Quota"));
    let login_form = &html[..html.find("I am new to Quota").unwrap()];
    let submit = |fields: Vec<(String, String)>, cookie: Option<String>| {
        let s = &s;
        async move {
            let mut req = browser().post(s.url("/oauth/authorize")).form(&fields);
            if let Some(c) = cookie {
                req = req.header("cookie", c);
            }
            req.send().await.unwrap()
        }
    };
    let mut fields = hidden_inputs(login_form);
    fields.push(("email".into(), "existing@example.com".into()));
    // Without the CSRF cookie (a cross-site post): refused.
    let mut wrong = fields.clone();
    wrong.push(("password".into(), "correct horse".into()));
    assert_eq!(submit(wrong, None).await.status(), 403);
    let mut bad = fields.clone();
    bad.push(("password".into(), "wrong password".into()));
    let r = submit(bad, Some(csrf_cookie.clone())).await;
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("email or password is incorrect"));
    let mut good = fields.clone();
    good.push(("password".into(), "correct horse".into()));
    let r = submit(good, Some(csrf_cookie.clone())).await;
    assert_eq!(r.status(), 303);
    assert!(r.headers()["location"].to_str().unwrap().starts_with("/oauth/authorize?"));
    let session_cookie = r.headers()["set-cookie"].to_str().unwrap();
    assert!(session_cookie.starts_with("quota_session=sess_") && session_cookie.contains("HttpOnly"));
    // Sign-up makes an account with welcome credits and signs it in.
    let signup_form = &html[html.find("I am new to Quota").unwrap()..];
    let mut fields = hidden_inputs(signup_form);
    fields.push(("email".into(), "Newbie@Example.com".into()));
    fields.push(("password".into(), "long enough pw".into()));
    let r = submit(fields, Some(csrf_cookie)).await;
    assert_eq!(r.status(), 303);
    let user = s.state.store.user_by_email("newbie@example.com").await.unwrap().unwrap();
    assert_eq!(s.balance(&user.id).await, 1_000_000);
}

// ---- expiry (a moved clock, no sleeping) ---------------------------------------------------

#[tokio::test]
async fn codes_expire_after_ten_minutes() {
    let s = TestServer::start().await;
    let app = s.app(json!({})).await;
    let (_, session) = s.register("slow@example.com").await;
    let code = s.code_for(&session, &app, &[("scope", "credits.read")]).await;
    s.state.clock.advance(Duration::from_secs(10 * 60 + 1));
    let r = s
        .token_request(&app, &[("grant_type", "authorization_code"), ("code", &code), ("redirect_uri", REDIRECT)])
        .await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "invalid_grant");
    assert!(v["error_description"].as_str().unwrap().contains("expired"));
}

#[tokio::test]
async fn access_tokens_expire_after_an_hour_and_refresh_still_works() {
    let s = TestServer::start().await;
    let app = s.app(json!({})).await;
    let (_, _, t) = s.connected_user(&app, "credits.read").await;
    let get = |token: String| {
        let s = &s;
        async move { s.send(reqwest::Method::GET, "/v1/balance", token, Value::Null).await }
    };
    assert_eq!(get(access(&t)).await.status(), 200, "cached now");
    s.state.clock.advance(Duration::from_secs(3600));
    expect_error(get(access(&t)).await, 401, "invalid_token").await;
    let r = s.refresh(&app, t["refresh_token"].as_str().unwrap()).await;
    let t2: Value = r.json().await.unwrap();
    assert_eq!(get(access(&t2)).await.status(), 200);
    s.state.clock.advance(Duration::from_secs(30 * 24 * 3600));
    let r = s.refresh(&app, t2["refresh_token"].as_str().unwrap()).await;
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_grant");
}

// ---- who pays: keys with tokens, scopes, connections ---------------------------------------

#[tokio::test]
async fn a_token_of_app_x_with_a_key_of_developer_y_is_403_app_mismatch() {
    let (s, _fake) = proxied().await;
    let app_x = s.app(json!({})).await;
    let (_, _, t) = s.connected_user(&app_x, "credits.spend").await;
    let (_, _, y_user_key) = s.developer("user").await;
    let (_, _, y_test_key) = s.developer("test").await;
    for key in [&y_user_key, &y_test_key] {
        let r = s
            .http
            .post(s.url("/v1/chat/completions"))
            .header("x-api-key", key)
            .bearer_auth(access(&t))
            .json(&simple_chat("hi", 5))
            .send()
            .await
            .unwrap();
        expect_error(r, 403, "app_mismatch").await;
    }
    // With a user key of X's developer it is billed to the user, at X's markup.
    let (_, x_key) = s.key(&app_x.developer_session, "user").await;
    let r = s
        .http
        .post(s.url("/v1/chat/completions"))
        .header("x-api-key", &x_key)
        .bearer_auth(access(&t))
        .json(&simple_chat("hi", 5))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["quota"]["billing_mode"], "user");
}

#[tokio::test]
async fn a_user_key_bound_to_another_app_is_403_app_mismatch() {
    let s = TestServer::start().await;
    let app = s.app(json!({})).await;
    let other = s.app_of(&app.developer_id, &app.developer_session, json!({"name": "Other"})).await;
    let (_, _, t) = s.connected_user(&app, "credits.spend").await;
    let r = s
        .send(
            reqwest::Method::POST,
            "/developers/keys",
            &app.developer_session,
            json!({"name": "bound", "billing_mode": "user", "app_id": other.id}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["app_id"], other.id);
    let r = s
        .http
        .post(s.url("/v1/chat/completions"))
        .header("x-api-key", v["key"].as_str().unwrap())
        .bearer_auth(access(&t))
        .json(&simple_chat("hi", 5))
        .send()
        .await
        .unwrap();
    expect_error(r, 403, "app_mismatch").await;
    // An app id the developer does not own: 404.
    let (_, stranger) = s.register("stranger@example.com").await;
    let r = s
        .send(
            reqwest::Method::POST,
            "/developers/keys",
            &stranger,
            json!({"name": "x", "billing_mode": "user", "app_id": app.id}),
        )
        .await;
    expect_error(r, 404, "not_found").await;
}

#[tokio::test]
async fn user_token_without_credits_spend_scope_is_403() {
    let s = TestServer::start().await;
    let app = s.app(json!({})).await;
    let (_, _, t) = s.connected_user(&app, "openid credits.read").await;
    expect_error(s.chat(&access(&t), simple_chat("hi", 5)).await, 403, "insufficient_scope").await;
    let (_, _, t) = s.connected_user(&app, "credits.spend").await;
    expect_error(s.send(reqwest::Method::GET, "/v1/balance", access(&t), Value::Null).await, 403, "insufficient_scope")
        .await;
    let r = s.send(reqwest::Method::GET, "/oauth/userinfo", access(&t), Value::Null).await;
    assert_eq!(r.status(), 403, "userinfo needs openid");
}

#[tokio::test]
async fn disconnecting_stops_the_apps_tokens_at_once_and_records_the_event() {
    let s = TestServer::start().await;
    let app = s.app(json!({})).await;
    let (user, session, t) = s.connected_user(&app, "credits.read").await;
    let get = || s.http.get(s.url("/v1/balance")).bearer_auth(access(&t)).send();
    assert_eq!(get().await.unwrap().status(), 200, "cached now");
    let list: Value =
        s.send(reqwest::Method::GET, "/account/connections", &session, Value::Null).await.json().await.unwrap();
    assert_eq!(list["data"][0]["app_id"], app.id);
    assert_eq!(list["data"][0]["app_name"], "Test App");
    assert_eq!(list["data"][0]["spend"], 0);
    let r = s.send(reqwest::Method::DELETE, &format!("/account/connections/{}", app.id), &session, Value::Null).await;
    assert_eq!(r.status(), 200);
    expect_error(get().await.unwrap(), 401, "invalid_token").await;
    let r = s.refresh(&app, t["refresh_token"].as_str().unwrap()).await;
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_grant");
    assert_eq!(s.events(&app.developer_id, "user.connected").await, vec![json!({"app_id": app.id, "user_id": user})]);
    assert_eq!(
        s.events(&app.developer_id, "user.disconnected").await,
        vec![json!({"app_id": app.id, "user_id": user})]
    );
    let r = s.send(reqwest::Method::DELETE, &format!("/account/connections/{}", app.id), &session, Value::Null).await;
    expect_error(r, 404, "not_found").await;
    let list: Value =
        s.send(reqwest::Method::GET, "/account/connections", &session, Value::Null).await.json().await.unwrap();
    assert_eq!(list["data"], json!([]));
}

#[tokio::test]
async fn revoking_a_token_at_the_revocation_endpoint_disconnects_the_user() {
    let s = TestServer::start().await;
    let app = s.app(json!({})).await;
    let (user, _, t) = s.connected_user(&app, "credits.read").await;
    // Unknown tokens: 200 all the same (RFC 7009).
    let form = |token: &str| {
        vec![
            ("client_id".to_string(), app.client_id.clone()),
            ("client_secret".to_string(), app.client_secret.clone().unwrap()),
            ("token".to_string(), token.to_string()),
        ]
    };
    let r = s.http.post(s.url("/oauth/revoke")).form(&form("quota_token_unknown")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.send(reqwest::Method::GET, "/v1/balance", access(&t), Value::Null).await.status(), 200);
    let r = s.http.post(s.url("/oauth/revoke")).form(&form(t["refresh_token"].as_str().unwrap())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    expect_error(s.send(reqwest::Method::GET, "/v1/balance", access(&t), Value::Null).await, 401, "invalid_token")
        .await;
    assert_eq!(
        s.events(&app.developer_id, "user.disconnected").await,
        vec![json!({"app_id": app.id, "user_id": user})]
    );
}

#[tokio::test]
async fn a_user_who_cannot_cover_the_reservation_gets_402_and_nothing_moves() {
    let (s, fake) = proxied().await;
    let app = s.app(json!({"profit_margin": 1})).await;
    let (user, _, t) = s.connected_user(&app, "credits.spend").await;
    s.drain(&user, 1_000).await;
    // max_tokens 10,000 of gpt-4o-mini: 6,000 base for the output alone, 12,000 with a 100%
    // markup: more than the 1,000 left.
    let calls = fake.calls();
    expect_error(s.chat(&access(&t), simple_chat("hi", 10_000)).await, 402, "insufficient_credits").await;
    assert_eq!(fake.calls(), calls, "the upstream was not called");
    assert_eq!(s.stored_balance(&user).await, 1_000);
    assert_eq!(s.state.ledger.open_holds(), 0);
    // A request the user can cover still runs: 10 prompt + 5 output tokens, base 5, markup 5.
    let r = s.chat(&access(&t), simple_chat("hi", 5)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(s.stored_balance(&user).await, 990);
    s.assert_ledger_ok().await;
}

#[tokio::test]
async fn parallel_user_billed_requests_never_overspend_the_users_wallet() {
    // An upstream that holds every request, so all admitted ones are in flight at once.
    let fake = HeldUpstream::start(10, 10).await;
    let base = fake.base_url.clone();
    let s = TestServer::start_with(move |c| {
        c.openai_base_url = base;
        c.openai_api_key = Some("sk-upstream-test".into());
    })
    .await;
    let app = s.app(json!({"profit_margin": 0.5})).await;
    let (user, _, t) = s.connected_user(&app, "credits.spend").await;
    let token = access(&t);
    // Each request reserves for max_tokens = 10,000 output tokens: 10,000 × 0.6 = 6,000 base plus
    // the prompt, × 1.5 for the markup; with 1,000,000 credits only a handful fit at once.
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10_000});
    let reserve = chat_hold(&body, quota_core::Margin::from_bps(5000).unwrap());
    // Leave the user able to afford exactly M = 5 reservations at once.
    let m = 5;
    s.drain(&user, m * reserve).await;
    let n = 20usize;
    let mut tasks = Vec::new();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..n {
        let (http, url, token, body, done) =
            (s.http.clone(), s.url("/v1/chat/completions"), token.clone(), body.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let r = http.post(url).bearer_auth(token).json(&body).send().await.unwrap();
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap();
            done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            (status, v)
        }));
    }
    // Bounded wait for the state the test needs: M calls upstream, the other N − M answered.
    for _ in 0..1000 {
        if fake.calls() == m as usize && done.load(std::sync::atomic::Ordering::SeqCst) == n - m as usize {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fake.calls(), m as usize, "exactly M requests reached the upstream");
    fake.release();
    let mut statuses = Vec::new();
    for t in tasks {
        let (status, v) = t.await.unwrap();
        if status == 402 {
            assert_eq!(v["error"]["code"], "insufficient_credits");
        }
        statuses.push(status);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), m as usize);
    assert_eq!(statuses.iter().filter(|s| **s == 402).count(), n - m as usize);
    // base = ceil(10 × 0.15 + 10 × 0.6) = ceil(7.5) = 8; markup = ceil(8 × 0.5) = 4.
    let per_request = 12;
    assert_eq!(s.stored_balance(&user).await, m * reserve - m * per_request);
    assert_eq!(s.account_balance(&format!("earnings_pending:{}", app.developer_id)).await, m * 4);
    assert_eq!(s.state.ledger.open_holds(), 0);
    s.assert_ledger_ok().await;
}

#[tokio::test]
async fn a_sandbox_key_with_a_user_token_checks_the_user_but_charges_the_developer() {
    let s = TestServer::start().await;
    let app = s.app(json!({"profit_margin": 0.5})).await;
    let (_, test_key) = s.key(&app.developer_session, "test").await;
    let (user, _, t) = s.connected_user(&app, "credits.spend").await;
    let (user_before, dev_before) = (s.balance(&user).await, s.balance(&app.developer_id).await);
    let send = |body: Value| {
        s.http
            .post(s.url("/v1/chat/completions"))
            .header("x-api-key", &test_key)
            .bearer_auth(access(&t))
            .json(&body)
            .send()
    };
    let r = send(simple_chat("hi", 10)).await.unwrap();
    assert_eq!(r.status(), 200);
    let q = r.json::<Value>().await.unwrap()["quota"].clone();
    // Sandbox prompt "hi" = 8 tokens, 10 output: base ceil(1.2 + 6) = 8; markup ceil(4) = 4.
    assert_eq!(
        (q["base_cost"].as_i64(), q["markup"].as_i64(), q["credits_used"].as_i64()),
        (Some(8), Some(4), Some(8))
    );
    assert_eq!((q["billing_mode"].as_str(), q["sandbox"].as_bool()), (Some("test"), Some(true)));
    assert_eq!(s.stored_balance(&user).await, user_before, "the user's money is never spent in the sandbox");
    assert_eq!(s.stored_balance(&app.developer_id).await, dev_before - 8);
    // The user's balance check still runs: a user who could not pay gets 402.
    s.drain(&user, 5).await;
    expect_error(send(simple_chat("hi", 10)).await.unwrap(), 402, "insufficient_credits").await;
    s.assert_ledger_ok().await;
}

// ---- funding and welcome credits -----------------------------------------------------------

#[tokio::test]
async fn funding_a_connected_user_is_idempotent_and_recorded() {
    let s = TestServer::start().await;
    let app = s.app(json!({})).await;
    let (_, dev_key) = s.key(&app.developer_session, "developer").await;
    let (user, _, _) = s.connected_user(&app, "credits.read").await;
    let fund = |body: Value, key: &str| {
        s.http
            .post(s.url("/v1/funding/oauth_user"))
            .bearer_auth(key)
            .header("idempotency-key", "fund-1")
            .json(&body)
            .send()
    };
    let body = json!({"user_id": user, "amount": 250_000, "description": "promo"});
    let r = fund(body.clone(), &dev_key).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["success"].as_bool(), v["amount"].as_i64(), v["balance_after"].as_i64()),
        (Some(true), Some(250_000), Some(1_250_000))
    );
    let r = fund(body.clone(), &dev_key).await.unwrap();
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    assert_eq!(r.json::<Value>().await.unwrap(), v);
    assert_eq!(s.stored_balance(&user).await, 1_250_000);
    assert_eq!(s.stored_balance(&app.developer_id).await, 750_000);
    expect_error(fund(json!({"user_id": user, "amount": 1}), &dev_key).await.unwrap(), 409, "idempotency_conflict")
        .await;
    let events = s.events(&app.developer_id, "balance.updated").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["ledger_id"], v["ledger_id"]);
    // Not connected: 404; too much: 402; a sandbox key: 403.
    let (stranger, _) = s.register("nobody@example.com").await;
    let post =
        |body: Value, key: &str| s.http.post(s.url("/v1/funding/oauth_user")).bearer_auth(key).json(&body).send();
    expect_error(post(json!({"user_id": stranger, "amount": 5}), &dev_key).await.unwrap(), 404, "user_not_found").await;
    expect_error(
        post(json!({"user_id": user, "amount": 750_001}), &dev_key).await.unwrap(),
        402,
        "insufficient_credits",
    )
    .await;
    let (_, test_key) = s.key(&app.developer_session, "test").await;
    expect_error(post(json!({"user_id": user, "amount": 5}), &test_key).await.unwrap(), 403, "forbidden").await;
    expect_error(post(json!({"user_id": user, "amount": 0}), &dev_key).await.unwrap(), 400, "bad_request").await;
    s.assert_ledger_ok().await;
}

#[tokio::test]
async fn welcome_credits_are_granted_once_per_user_from_the_developer() {
    let s = TestServer::start().await;
    let app = s.app(json!({})).await;
    let r = s.app_settings(&app, json!({"welcome_credits": 100_000, "profit_margin": "0.1234"})).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!((v["profit_margin_bps"].as_u64(), v["welcome_credits"].as_i64()), (Some(1234), Some(100_000)));
    let (user, session, _) = s.connected_user(&app, "credits.read").await;
    assert_eq!(s.stored_balance(&user).await, 1_100_000);
    assert_eq!(s.stored_balance(&app.developer_id).await, 900_000);
    // Disconnect and connect again: no second grant.
    s.send(reqwest::Method::DELETE, &format!("/account/connections/{}", app.id), &session, Value::Null).await;
    s.code_for(&session, &app, &[("scope", "credits.read")]).await;
    assert_eq!(s.stored_balance(&user).await, 1_100_000);
    assert_eq!(s.events(&app.developer_id, "user.connected").await.len(), 2);
    let users: Value = s
        .send(reqwest::Method::GET, &format!("/developers/apps/{}/users", app.id), &app.developer_session, Value::Null)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(users["data"][0]["user_id"], user);
    assert_eq!(users["data"][0]["balance"], 1_100_000);
    s.assert_ledger_ok().await;
}

// ---- apps ----------------------------------------------------------------------------------

#[tokio::test]
async fn apps_crud_shows_the_secret_once_and_settings_exactly() {
    let s = TestServer::start().await;
    let app = s.app(json!({})).await;
    let secret = app.client_secret.clone().unwrap();
    assert!(secret.starts_with("quota_secret_") && app.client_id.starts_with("quota_client_"));
    let list = s.send(reqwest::Method::GET, "/developers/apps", &app.developer_session, Value::Null).await;
    let text = list.text().await.unwrap();
    assert!(!text.contains(&secret) && !text.contains("\"client_secret\""));
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["data"][0]["id"], app.id);
    assert_eq!(v["data"][0]["profit_margin"], 0);
    for bad in [
        json!({"profit_margin": 10.0001}),
        json!({"profit_margin": -0.1}),
        json!({"profit_margin": 0.00001}),
        json!({"welcome_credits": -1}),
        json!({"nope": 1}),
    ] {
        expect_error(s.app_settings(&app, bad.clone()).await, 400, "bad_request").await;
    }
    let v: Value = s.app_settings(&app, json!({"profit_margin": 0.3})).await.json().await.unwrap();
    assert_eq!((v["profit_margin"].as_f64(), v["profit_margin_bps"].as_u64()), (Some(0.3), Some(3000)));
    let r = s
        .send(
            reqwest::Method::PATCH,
            &format!("/developers/apps/{}", app.id),
            &app.developer_session,
            json!({"name": "Renamed", "redirect_uris": ["https://app.example.com/cb"]}),
        )
        .await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["name"].as_str(), v["redirect_uris"][0].as_str()),
        (Some("Renamed"), Some("https://app.example.com/cb"))
    );
    // Another developer sees none of it.
    let (_, other) = s.register("other-dev@example.com").await;
    let r = s.send(reqwest::Method::GET, &format!("/developers/apps/{}", app.id), &other, Value::Null).await;
    expect_error(r, 404, "not_found").await;
    let r = s.send(reqwest::Method::DELETE, &format!("/developers/apps/{}", app.id), &other, Value::Null).await;
    expect_error(r, 404, "not_found").await;
}

#[tokio::test]
async fn deleting_an_app_ends_its_tokens_and_a_raised_margin_waits_for_consent() {
    let (s, fake) = proxied().await;
    fake.script(Script::Complete { prompt: 1000, cached: 0, completion: 500, text: "hi".into() });
    let app = s.app(json!({})).await;
    let (user, _, t) = s.connected_user(&app, "credits.spend").await;
    let v: Value = s.chat(&access(&t), simple_chat(&common::prompt_of(1000), 600)).await.json().await.unwrap();
    assert_eq!(v["quota"]["markup"], 0);
    s.app_settings(&app, json!({"profit_margin": 2})).await;
    let v: Value = s.chat(&access(&t), simple_chat(&common::prompt_of(1000), 600)).await.json().await.unwrap();
    // SPEC §5: the user consented to 0%; the raise waits for their approval (tests/oauth_consent.rs).
    assert_eq!((v["quota"]["base_cost"].as_i64(), v["quota"]["markup"].as_i64()), (Some(450), Some(0)));
    let r = s
        .send(reqwest::Method::DELETE, &format!("/developers/apps/{}", app.id), &app.developer_session, Value::Null)
        .await;
    assert_eq!(r.status(), 200);
    expect_error(s.chat(&access(&t), simple_chat("hi", 5)).await, 401, "invalid_token").await;
    assert_eq!(
        s.events(&app.developer_id, "user.disconnected").await,
        vec![json!({"app_id": app.id, "user_id": user})]
    );
}

// ---- OpenID Connect ------------------------------------------------------------------------

#[tokio::test]
async fn the_id_token_verifies_against_the_jwks_and_userinfo_has_the_balance() {
    let s = TestServer::start().await;
    let app = s.app(json!({})).await;
    let (user, session) = s.register("oidc@example.com").await;
    let code = s.code_for(&session, &app, &[("scope", "openid email"), ("nonce", "n-0S6_WzA2Mj")]).await;
    let t: Value = s
        .token_request(&app, &[("grant_type", "authorization_code"), ("code", &code), ("redirect_uri", REDIRECT)])
        .await
        .json()
        .await
        .unwrap();
    let disco = s.http.get(s.url("/.well-known/openid-configuration")).send().await.unwrap();
    // No public_url: the issuer comes from Host, so no shared cache may keep it (SPEC §5).
    assert_eq!(disco.headers()["cache-control"], "no-store");
    let disco: Value = disco.json().await.unwrap();
    assert_eq!(disco["issuer"], s.base);
    assert_eq!(disco["code_challenge_methods_supported"], json!(["S256", "plain"]));
    let jwks: Value = s.http.get(s.url("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    let jwk = &jwks["keys"][0];
    assert_eq!((jwk["kty"].as_str(), jwk["alg"].as_str()), (Some("RSA"), Some("RS256")));
    let id_token = t["id_token"].as_str().unwrap();
    let header = jsonwebtoken::decode_header(id_token).unwrap();
    assert_eq!(header.kid.as_deref(), jwk["kid"].as_str());
    let key =
        jsonwebtoken::DecodingKey::from_rsa_components(jwk["n"].as_str().unwrap(), jwk["e"].as_str().unwrap()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[&app.client_id]);
    validation.set_issuer(&[&s.base]);
    let claims = jsonwebtoken::decode::<Value>(id_token, &key, &validation).unwrap().claims;
    assert_eq!(claims["sub"], user);
    assert_eq!(claims["nonce"], "n-0S6_WzA2Mj");
    assert_eq!(claims["email"], "oidc@example.com");
    assert!(claims.get("name").is_none(), "no profile scope");
    // A tampered signature fails.
    let mut bad = id_token.to_string();
    bad.pop();
    bad.push(if id_token.ends_with('A') { 'B' } else { 'A' });
    assert!(jsonwebtoken::decode::<Value>(&bad, &key, &validation).is_err());
    let info: Value =
        s.send(reqwest::Method::GET, "/oauth/userinfo", access(&t), Value::Null).await.json().await.unwrap();
    // Signed in without a credits scope: no wallet linked to this app, so `balance` is null
    // (SPEC §14), not the number.
    assert_eq!(info, json!({"sub": user, "email": "oidc@example.com", "email_verified": false, "balance": null}));
    // The key is generated once and kept: a fresh process on the same database loads it.
    let reloaded =
        quota_server::oauth::jwt::SigningKeys::default().get(&s.state.store, &s.state.master_key, 0).await.unwrap();
    assert_eq!(Some(reloaded.kid.as_str()), jwk["kid"].as_str());
    assert_eq!(reloaded.jwk, *jwk);
    let stored: i64 =
        quota_store::on_pool!(s.state.store.pool(), |p| sqlx::query_scalar("SELECT COUNT(*) FROM oauth_signing_keys")
            .fetch_one(p)
            .await
            .unwrap());
    assert_eq!(stored, 1);
}

#[tokio::test]
async fn no_secret_reaches_the_database_in_clear() {
    let s = TestServer::start().await;
    let app = s.app(json!({})).await;
    let (_, session) = s.register("hashes@example.com").await;
    let code = s.code_for(&session, &app, &[("scope", "credits.read")]).await;
    let t: Value = s
        .token_request(&app, &[("grant_type", "authorization_code"), ("code", &code), ("redirect_uri", REDIRECT)])
        .await
        .json()
        .await
        .unwrap();
    s.state.ledger.flush().await.unwrap();
    let bytes = s.database_contents().await;
    let hay = String::from_utf8_lossy(&bytes);
    for secret in [app.client_secret.as_deref().unwrap(), &code, &access(&t), t["refresh_token"].as_str().unwrap()] {
        assert!(!hay.contains(secret), "a secret is stored in clear");
    }
}

#[tokio::test]
async fn welcome_credits_the_developer_cannot_pay_are_skipped_then_granted_at_the_next_approval() {
    let s = TestServer::start().await;
    let app = s.app(json!({"welcome_credits": 1_500_000})).await;
    let (user, session, _) = s.connected_user(&app, "credits.read").await;
    assert_eq!(s.stored_balance(&user).await, 1_000_000, "the developer has only 1,000,000");
    assert_eq!(s.stored_balance(&app.developer_id).await, 1_000_000);
    s.credit(&app.developer_id, 1_000_000).await;
    s.code_for(&session, &app, &[("scope", "credits.read")]).await;
    assert_eq!(s.stored_balance(&user).await, 2_500_000);
    assert_eq!(s.stored_balance(&app.developer_id).await, 500_000);
    s.code_for(&session, &app, &[("scope", "credits.read")]).await;
    assert_eq!(s.stored_balance(&user).await, 2_500_000, "once per user");
    s.assert_ledger_ok().await;
}

#[tokio::test]
async fn a_code_not_yet_exchanged_dies_with_the_connection() {
    let s = TestServer::start().await;
    let app = s.app(json!({})).await;
    let (_, session, _) = s.connected_user(&app, "credits.read").await;
    let pending = s.code_for(&session, &app, &[("scope", "credits.read")]).await;
    let r = s.send(reqwest::Method::DELETE, &format!("/account/connections/{}", app.id), &session, Value::Null).await;
    assert_eq!(r.status(), 200);
    // Even after the user connects again, the old code stays dead.
    s.code_for(&session, &app, &[("scope", "credits.read")]).await;
    let r = s
        .token_request(&app, &[("grant_type", "authorization_code"), ("code", &pending), ("redirect_uri", REDIRECT)])
        .await;
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_grant");
}

#[tokio::test]
async fn a_cached_token_needs_no_database_read_and_an_api_revocation_evicts_it() {
    let s = TestServer::start().await;
    let app = s.app(json!({})).await;
    let (_, session, t) = s.connected_user(&app, "credits.read").await;
    let get = || s.http.get(s.url("/v1/balance")).bearer_auth(access(&t)).send();
    assert_eq!(get().await.unwrap().status(), 200);
    // Behind the cache's back: the row is gone, the cached token still answers (no read).
    quota_store::on_pool!(s.state.store.pool(), |p| sqlx::query("DELETE FROM oauth_tokens WHERE kind = 'access'")
        .execute(p)
        .await
        .unwrap()
        .rows_affected());
    assert_eq!(get().await.unwrap().status(), 200);
    // Through the API: evicted at once.
    s.send(reqwest::Method::DELETE, &format!("/account/connections/{}", app.id), &session, Value::Null).await;
    expect_error(get().await.unwrap(), 401, "invalid_token").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_token_revoked_on_one_instance_is_refused_on_another_within_a_second() {
    if skip_unless_postgres("a_user_token_revoked_on_one_instance_is_refused_on_another_within_a_second") {
        return;
    }
    let a = TestServer::start().await;
    let b = TestServer::start_sharing(&a, |_| {}).await;
    let app = a.app(json!({})).await;
    let (_, session, t) = a.connected_user(&app, "credits.read credits.spend").await;
    let token = t["access_token"].as_str().unwrap().to_string();
    let status_on_b =
        || async { b.http.get(b.url("/v1/balance")).bearer_auth(&token).send().await.unwrap().status().as_u16() };
    assert_eq!(status_on_b().await, 200, "B has the token cached");
    let r = a.send(reqwest::Method::DELETE, &format!("/account/connections/{}", app.id), &session, Value::Null).await;
    assert!(r.status().is_success(), "disconnect on A: {}", r.status());
    within(Duration::from_secs(1), "the disconnection reaches instance B", || async {
        (status_on_b().await == 401).then_some(())
    })
    .await;
}

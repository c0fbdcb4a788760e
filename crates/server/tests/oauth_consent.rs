//! What a user granted binds what the app gets (SPEC §5; issue 14): a refresh with a narrower
//! scope gets tokens with just that scope, the markup a user pays is the one they consented to
//! (a raise waits for their approval, a lowering applies at once), the app owner sees a user's
//! email and balance only with the `email` and `credits.read` grants, and discovery is never
//! cached when its URLs come from the request.

mod common;

use common::fake_openai::Script;
use common::{expect_error, proxied, simple_chat, TestServer};
use serde_json::{json, Value};

fn access(t: &Value) -> String {
    t["access_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_refresh_with_a_narrower_scope_gets_tokens_with_just_that_scope() {
    let s = TestServer::start().await;
    let app = s.app(json!({})).await;
    let (_, _, t) = s.connected_user(&app, "openid email credits.read credits.spend").await;
    let r = s
        .token_request(
            &app,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", t["refresh_token"].as_str().unwrap()),
                ("scope", "credits.read"),
            ],
        )
        .await;
    assert_eq!(r.status(), 200);
    let narrow: Value = r.json().await.unwrap();
    assert_eq!(narrow["scope"], "credits.read");
    assert!(narrow.get("id_token").is_none(), "no openid, no id_token");
    let token = access(&narrow);
    let r = s.http.get(s.url("/v1/balance")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200, "credits.read works");
    expect_error(s.chat(&token, simple_chat("hi", 5)).await, 403, "insufficient_scope").await;
    let r = s.http.get(s.url("/oauth/userinfo")).bearer_auth(&token).send().await.unwrap();
    expect_error(r, 403, "insufficient_scope").await;
    // The refresh token keeps the grant's scopes (RFC 6749 §6): a later refresh gets them all.
    let again: Value = s.refresh(&app, narrow["refresh_token"].as_str().unwrap()).await.json().await.unwrap();
    assert_eq!(again["scope"], "openid email credits.read credits.spend");
    // A wider one is refused.
    let r = s
        .token_request(
            &app,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", again["refresh_token"].as_str().unwrap()),
                ("scope", "credits.read profile"),
            ],
        )
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_scope");
}

/// (base, markup) of one request made with `token`.
async fn charged(s: &TestServer, token: &str) -> (i64, i64) {
    let r = s.chat(token, simple_chat(&common::prompt_of(1000), 600)).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    (v["quota"]["base_cost"].as_i64().unwrap(), v["quota"]["markup"].as_i64().unwrap())
}

#[tokio::test]
async fn a_raised_margin_is_paid_only_after_the_user_approves_it_and_a_lowered_one_at_once() {
    let (s, fake) = proxied().await;
    // base = 1000 × 0.15 + 500 × 0.6 = 450 credits per request.
    fake.script(Script::Complete { prompt: 1000, cached: 0, completion: 500, text: "hi".into() });
    let app = s.app(json!({"profit_margin": 0.1})).await;
    let (_, session, t) = s.connected_user(&app, "credits.spend").await;
    let token = access(&t);
    assert_eq!(charged(&s, &token).await, (450, 45), "10% as consented");

    // 10% → 1000%: the user keeps paying 10% until they approve the new consent page.
    assert_eq!(s.app_settings(&app, json!({"profit_margin": 10})).await.status(), 200);
    assert_eq!(charged(&s, &token).await, (450, 45), "a raise is not paid before consent");
    let page = s.authorize_page(&session, &app, &[("scope", "credits.spend")]).await.text().await.unwrap();
    assert!(page.contains("10% → 1000%"), "the consent page shows old → new");
    let _ = s.code_for(&session, &app, &[("scope", "credits.spend")]).await;
    assert_eq!(charged(&s, &token).await, (450, 4500), "approved: the new margin applies");

    // 1000% → 5%: at once, no consent needed; raising back to 10% waits again.
    assert_eq!(s.app_settings(&app, json!({"profit_margin": 0.05})).await.status(), 200);
    assert_eq!(charged(&s, &token).await, (450, 23), "a lowering applies at once (ceil 22.5)");
    assert_eq!(s.app_settings(&app, json!({"profit_margin": 0.1})).await.status(), 200);
    assert_eq!(charged(&s, &token).await, (450, 23), "the lowered margin became the consented one");
    s.assert_ledger_ok().await;
}

#[tokio::test]
async fn an_approval_consents_to_the_margin_its_page_showed() {
    let s = TestServer::start().await;
    let app = s.app(json!({"profit_margin": 0.1})).await;
    let (_, session) = s.register("racer@example.com").await;
    let page = s.authorize_page(&session, &app, &[("scope", "credits.spend")]).await.text().await.unwrap();
    // The developer raises the margin while the page is open: approving it does not consent
    // to the new margin; the page is shown again with it.
    s.app_settings(&app, json!({"profit_margin": 5})).await;
    let r = s.submit_consent(&session, &page, "approve").await;
    assert_eq!(r.status(), 200, "no redirect with a code");
    assert!(r.text().await.unwrap().contains("500%"));
    // A tampered margin field does not pass the form's check.
    let tampered = page.replace("name=\"shown_margin_bps\" value=\"1000\"", "name=\"shown_margin_bps\" value=\"0\"");
    assert_ne!(tampered, page);
    assert_eq!(s.submit_consent(&session, &tampered, "approve").await.status(), 403);
}

#[tokio::test]
async fn app_owners_see_email_and_balance_only_with_their_grants_and_spend_always() {
    let s = TestServer::start().await;
    let app = s.app(json!({})).await;
    let (plain, _, _) = s.connected_user(&app, "credits.spend").await;
    let (open, _, _) = s.connected_user(&app, "email credits.read credits.spend").await;
    let list = s.get_json(&format!("/developers/apps/{}/users", app.id), &app.developer_session).await;
    let row = |id: &str| list["data"].as_array().unwrap().iter().find(|u| u["user_id"] == id).cloned().unwrap();
    let p = row(&plain);
    assert!(p["email"].is_null() && p["balance"].is_null(), "{p}");
    assert_eq!(p["spend"], 0);
    let o = row(&open);
    assert!(o["email"].as_str().unwrap().ends_with("@example.com"));
    assert_eq!(o["balance"], 1_000_000);
    assert_eq!(o["spend"], 0);
    // The dashboard shows the same.
    let plain_email = s.state.store.user_by_id(&plain).await.unwrap().unwrap().email;
    let html = s
        .http
        .get(s.url(&format!("/dashboard/apps/{}", app.id)))
        .header("cookie", format!("quota_session={}", app.developer_session))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains(&plain) && !html.contains(&plain_email), "the dashboard hides the email without the grant");
}

#[tokio::test]
async fn discovery_is_not_cached_without_public_url_and_names_public_url_as_issuer() {
    let s = TestServer::start().await;
    let r = s.http.get(s.url("/.well-known/openid-configuration")).header("host", "evil.example").send().await.unwrap();
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.json::<Value>().await.unwrap()["issuer"], "http://evil.example");
    let s = TestServer::start_with(|c| c.public_url = Some("https://quota.example.com/".into())).await;
    let r = s.http.get(s.url("/.well-known/openid-configuration")).header("host", "evil.example").send().await.unwrap();
    assert_eq!(r.headers()["cache-control"], "public, max-age=3600");
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["issuer"], "https://quota.example.com");
    assert_eq!(doc["token_endpoint"], "https://quota.example.com/oauth/token");
}

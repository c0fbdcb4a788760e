//! The dashboard (SPEC §11) over real HTTP: sessions and sign-in, CSRF enforcement, bad input
//! shown on the page with nothing changed, secrets revealed once, security headers, page weight.

mod common;

use common::TestServer;
use quota_core::AccountId;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::StatusCode;

/// Every page, with its stylesheet and script, stays under this many bytes (SPEC §11 issue).
const PAGE_BUDGET_BYTES: usize = 100 * 1024;

fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// The value of the first `name="csrf_token"` field on a page.
fn csrf_of(html: &str) -> String {
    let marker = "name=\"csrf_token\" value=\"";
    let start = html.find(marker).expect("a CSRF field on the page") + marker.len();
    html[start..].split('"').next().unwrap().to_string()
}

struct Browser {
    http: reqwest::Client,
    base: String,
    session: String,
}

impl Browser {
    async fn signed_in(s: &TestServer, email: &str) -> (Browser, String) {
        let (user_id, session) = s.register(email).await;
        (Browser { http: client(), base: s.base.clone(), session }, user_id)
    }

    fn cookie(&self) -> String {
        format!("quota_session={}", self.session)
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(format!("{}{path}", self.base)).header(COOKIE, self.cookie()).send().await.unwrap()
    }

    async fn page(&self, path: &str) -> String {
        let r = self.get(path).await;
        assert_eq!(r.status(), 200, "GET {path}");
        r.text().await.unwrap()
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.http.post(format!("{}{path}", self.base)).header(COOKIE, self.cookie()).form(form).send().await.unwrap()
    }

    /// POST a form with the CSRF token of the page at `from`.
    async fn submit(&self, from: &str, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
        let token = csrf_of(&self.page(from).await);
        let mut form: Vec<(&str, &str)> = vec![("csrf_token", &token)];
        form.extend_from_slice(fields);
        self.post(path, &form).await
    }
}

#[tokio::test]
async fn pages_without_a_session_redirect_to_sign_in_and_back() {
    let s = TestServer::start().await;
    let r = client().get(s.url("/dashboard/keys")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[LOCATION], "/dashboard/signin?next=%2Fdashboard%2Fkeys");
}

#[tokio::test]
async fn an_expired_session_redirects_to_sign_in_with_a_message() {
    let s = TestServer::start().await;
    let (user_id, _) = s.register("expired@example.com").await;
    let token = quota_core::ids::new_secret("sess_");
    let hash = quota_server::secrets::hash_token(&token);
    s.state.store.create_session(&hash, &user_id, quota_store::now_ms() - 1_000).await.unwrap();
    let r =
        client().get(s.url("/dashboard/usage")).header(COOKIE, format!("quota_session={token}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let location = r.headers()[LOCATION].to_str().unwrap().to_string();
    assert!(location.starts_with("/dashboard/signin?") && location.contains("expired=1"), "{location}");
    let page = client().get(s.url(&location)).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("Your session has expired"), "{page}");
    // A POST with the expired session changes nothing and goes to sign-in too.
    let r = client()
        .post(s.url("/dashboard/keys"))
        .header(COOKIE, format!("quota_session={token}"))
        .form(&[("name", "k"), ("billing_mode", "test")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(s.state.store.list_keys(&user_id).await.unwrap().is_empty());
}

#[tokio::test]
async fn sign_up_and_sign_in_forms_set_the_session_cookie() {
    let s = TestServer::start().await;
    let http = client();
    let r = http.get(s.url("/dashboard/signup")).send().await.unwrap();
    let pre = r.headers()[SET_COOKIE].to_str().unwrap().split(';').next().unwrap().to_string();
    assert!(pre.starts_with("quota_dash_csrf="));
    let token = csrf_of(&r.text().await.unwrap());
    let r = http
        .post(s.url("/dashboard/signup"))
        .header(COOKIE, &pre)
        .form(&[("csrf_token", token.as_str()), ("email", "New@Example.com"), ("password", "correct horse")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[LOCATION], "/dashboard");
    let session = r.headers()[SET_COOKIE].to_str().unwrap().split(';').next().unwrap().to_string();
    assert!(session.starts_with("quota_session=sess_"), "{session}");
    let home = http.get(s.url("/dashboard")).header(COOKIE, &session).send().await.unwrap().text().await.unwrap();
    assert!(home.contains("new@example.com") && home.contains("$1.00"), "welcome credits shown in dollars");

    // Sign in with the same account: a wrong password is refused on the page.
    let r = http
        .post(s.url("/dashboard/signin"))
        .header(COOKIE, &pre)
        .form(&[("csrf_token", token.as_str()), ("email", "new@example.com"), ("password", "wrong password")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.text().await.unwrap().contains("email or password is incorrect"));
    let r = http
        .post(s.url("/dashboard/signin"))
        .header(COOKIE, &pre)
        .form(&[
            ("csrf_token", token.as_str()),
            ("email", "new@example.com"),
            ("password", "correct horse"),
            ("next", "/dashboard/keys"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[LOCATION], "/dashboard/keys");
}

#[tokio::test]
async fn sign_up_without_the_pre_session_cookie_is_refused() {
    let s = TestServer::start().await;
    let http = client();
    let token = csrf_of(&http.get(s.url("/dashboard/signup")).send().await.unwrap().text().await.unwrap());
    let r = http
        .post(s.url("/dashboard/signup"))
        .form(&[("csrf_token", token.as_str()), ("email", "forged@example.com"), ("password", "correct horse")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(s.state.store.user_by_email("forged@example.com").await.unwrap().is_none());
}

#[tokio::test]
async fn weak_password_on_sign_up_is_shown_and_creates_nothing() {
    let s = TestServer::start().await;
    let http = client();
    let r = http.get(s.url("/dashboard/signup")).send().await.unwrap();
    let pre = r.headers()[SET_COOKIE].to_str().unwrap().split(';').next().unwrap().to_string();
    let token = csrf_of(&r.text().await.unwrap());
    let r = http
        .post(s.url("/dashboard/signup"))
        .header(COOKIE, &pre)
        .form(&[("csrf_token", token.as_str()), ("email", "weak@example.com"), ("password", "short")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let page = r.text().await.unwrap();
    assert!(page.contains("role=\"alert\"") && page.contains("weak_password"), "{page}");
    assert!(page.contains("value=\"weak@example.com\""), "the email is kept in the form");
    assert!(s.state.store.user_by_email("weak@example.com").await.unwrap().is_none());
}

#[tokio::test]
async fn forms_without_a_valid_csrf_token_are_refused_and_change_nothing() {
    let s = TestServer::start().await;
    let (b, user_id) = Browser::signed_in(&s, "csrf@example.com").await;
    let no_token = b.post("/dashboard/keys", &[("name", "k"), ("billing_mode", "test")]).await;
    assert_eq!(no_token.status(), StatusCode::FORBIDDEN);
    assert!(no_token.text().await.unwrap().contains("nothing was changed"));
    let wrong = b.post("/dashboard/keys", &[("csrf_token", "00ff"), ("name", "k"), ("billing_mode", "test")]).await;
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    // Another session's token does not work either.
    let (other, _) = Browser::signed_in(&s, "csrf2@example.com").await;
    let theirs = csrf_of(&other.page("/dashboard/keys").await);
    let r = b.post("/dashboard/keys", &[("csrf_token", &theirs), ("name", "k"), ("billing_mode", "test")]).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = b.post("/dashboard/signout", &[]).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "sign-out needs the token too");
    assert!(s.state.store.list_keys(&user_id).await.unwrap().is_empty());
    assert_eq!(b.get("/dashboard").await.status(), 200, "still signed in");
}

#[tokio::test]
async fn a_sandbox_key_is_created_and_its_secret_shown_once() {
    let s = TestServer::start().await;
    let (b, user_id) = Browser::signed_in(&s, "keys@example.com").await;
    let r = b.submit("/dashboard/keys", "/dashboard/keys", &[("name", "ci"), ("billing_mode", "test")]).await;
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    let start = page.find("sk-quota-").expect("the secret is shown");
    let secret: String = page[start..].chars().take_while(|c| *c != '<').collect();
    assert!(page.contains("data-copy=\"new-secret\""), "a copy button");
    let keys = s.state.store.list_keys(&user_id).await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].billing_mode.to_string(), "test");
    let listing = b.page("/dashboard/keys").await;
    assert!(!listing.contains(&secret), "shown once only");
    assert!(listing.contains("Sandbox"));
    // The key works: a sandbox request is charged to the wallet.
    let r = s
        .http
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(&secret)
        .json(&serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn bad_key_input_is_shown_on_the_page_and_creates_nothing() {
    let s = TestServer::start().await;
    let (b, user_id) = Browser::signed_in(&s, "badkey@example.com").await;
    for (fields, message) in [
        (vec![("name", ""), ("billing_mode", "test")], "name must be 1 to 100 characters"),
        (vec![("name", "x"), ("billing_mode", "free")], "billing"),
        (vec![("name", "x"), ("billing_mode", "test"), ("rate_limit_per_minute", "lots")], "whole number"),
        (vec![("name", "x"), ("billing_mode", "test"), ("rate_limit_per_minute", "0")], "between 1 and"),
    ] {
        let r = b.submit("/dashboard/keys", "/dashboard/keys", &fields).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{fields:?}");
        let page = r.text().await.unwrap();
        assert!(page.contains("role=\"alert\"") && page.contains(message), "{fields:?}: {page}");
    }
    assert!(s.state.store.list_keys(&user_id).await.unwrap().is_empty());
}

#[tokio::test]
async fn keys_are_limited_rotated_and_revoked_from_the_page() {
    let s = TestServer::start().await;
    let (b, user_id) = Browser::signed_in(&s, "rotate@example.com").await;
    b.submit("/dashboard/keys", "/dashboard/keys", &[("name", "k"), ("billing_mode", "developer")]).await;
    let id = s.state.store.list_keys(&user_id).await.unwrap()[0].id.clone();
    let r =
        b.submit("/dashboard/keys", &format!("/dashboard/keys/{id}/limit"), &[("rate_limit_per_minute", "42")]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(s.state.store.key(&user_id, &id).await.unwrap().unwrap().rate_limit_per_minute, Some(42));
    let r = b.submit("/dashboard/keys", &format!("/dashboard/keys/{id}/rotate"), &[]).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("sk-quota-"));
    let keys = s.state.store.list_keys(&user_id).await.unwrap();
    let live: Vec<_> = keys.iter().filter(|k| k.revoked_at.is_none()).collect();
    assert_eq!((keys.len(), live.len()), (2, 1));
    assert_eq!(live[0].rate_limit_per_minute, Some(42), "rotation keeps the settings");
    let r = b.submit("/dashboard/keys", &format!("/dashboard/keys/{}/revoke", live[0].id), &[]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(s.state.store.list_keys(&user_id).await.unwrap().iter().all(|k| k.revoked_at.is_some()));
}

#[tokio::test]
async fn a_bad_markup_is_shown_and_the_app_keeps_its_margin() {
    let s = TestServer::start().await;
    let (b, user_id) = Browser::signed_in(&s, "apps@example.com").await;
    let r = b
        .submit(
            "/dashboard/apps",
            "/dashboard/apps",
            &[
                ("name", "Acme"),
                ("redirect_uris", "http://localhost:3000/callback"),
                ("scopes", "openid"),
                ("scopes", "credits.spend"),
                ("markup_percent", "25"),
            ],
        )
        .await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("quota_secret_"), "client secret shown once");
    let app = s.state.store.apps_of(&user_id).await.unwrap().remove(0);
    assert_eq!(app.profit_margin_bps, 2500);
    let detail = b.page(&format!("/dashboard/apps/{}", app.id)).await;
    // gpt-4o-mini, 1,000 in + 500 out: 450 credits base, +25% = 563 credits.
    assert!(detail.contains("$0.00045") && detail.contains("$0.000563"), "{detail}");
    for bad in ["abc", "-5", "1001", "2.345"] {
        let r = b
            .submit(
                &format!("/dashboard/apps/{}", app.id),
                &format!("/dashboard/apps/{}/settings", app.id),
                &[("markup_percent", bad)],
            )
            .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert!(r.text().await.unwrap().contains("markup must be a percentage"));
    }
    let r = b
        .submit(
            &format!("/dashboard/apps/{}", app.id),
            &format!("/dashboard/apps/{}", app.id),
            &[("name", "Acme"), ("redirect_uris", "ftp://nope"), ("scopes", "openid")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let after = s.state.store.app_of(&user_id, &app.id).await.unwrap().unwrap();
    assert_eq!((after.profit_margin_bps, after.redirect_uris.clone()), (2500, app.redirect_uris.clone()));
    let r = b
        .submit(
            &format!("/dashboard/apps/{}", app.id),
            &format!("/dashboard/apps/{}/settings", app.id),
            &[("markup_percent", "12.5"), ("welcome_credits", "0.10")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let after = s.state.store.app_of(&user_id, &app.id).await.unwrap().unwrap();
    assert_eq!((after.profit_margin_bps, after.welcome_credits), (1250, 100_000));
}

#[tokio::test]
async fn a_bad_webhook_url_is_shown_and_creates_nothing() {
    let s = TestServer::start().await;
    let (b, user_id) = Browser::signed_in(&s, "hooks@example.com").await;
    let r = b.submit("/dashboard/webhooks", "/dashboard/webhooks", &[("url", "ftp://example.com/x")]).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("role=\"alert\""));
    let r = b
        .submit(
            "/dashboard/webhooks",
            "/dashboard/webhooks",
            &[("url", "http://127.0.0.1:9/hook"), ("low_balance_threshold", "five")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(s.state.store.webhook_endpoints(&user_id).await.unwrap().is_empty());
    let r = b
        .submit(
            "/dashboard/webhooks",
            "/dashboard/webhooks",
            &[("url", "http://127.0.0.1:9/hook"), ("events", "usage.completed"), ("low_balance_threshold", "0.50")],
        )
        .await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("whsec_"));
    let hooks = s.state.store.webhook_endpoints(&user_id).await.unwrap();
    assert_eq!((hooks.len(), hooks[0].low_balance_threshold), (1, Some(500_000)));
}

#[tokio::test]
async fn another_accounts_objects_are_not_found() {
    let s = TestServer::start().await;
    let (a, a_id) = Browser::signed_in(&s, "owner@example.com").await;
    a.submit("/dashboard/keys", "/dashboard/keys", &[("name", "mine"), ("billing_mode", "test")]).await;
    let key = s.state.store.list_keys(&a_id).await.unwrap().remove(0);
    let (b, _) = Browser::signed_in(&s, "intruder@example.com").await;
    let r = b.submit("/dashboard/keys", &format!("/dashboard/keys/{}/revoke", key.id), &[]).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(s.state.store.key(&a_id, &key.id).await.unwrap().unwrap().revoked_at.is_none());
    assert_eq!(b.get("/dashboard/apps/app_nope").await.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn sign_out_ends_the_session() {
    let s = TestServer::start().await;
    let (b, _) = Browser::signed_in(&s, "bye@example.com").await;
    let r = b.submit("/dashboard", "/dashboard/signout", &[]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(r.headers()[SET_COOKIE].to_str().unwrap().contains("Max-Age=0"));
    assert_eq!(b.get("/dashboard").await.status(), StatusCode::SEE_OTHER);
    let r = s.http.get(s.url("/auth/me")).bearer_auth(&b.session).send().await.unwrap();
    assert_eq!(r.status(), 401, "the API session ends too");
}

#[tokio::test]
async fn pages_carry_security_headers() {
    let s = TestServer::start().await;
    let (b, _) = Browser::signed_in(&s, "headers@example.com").await;
    for path in ["/dashboard", "/dashboard/signin"] {
        let r = b.get(path).await;
        let h = r.headers();
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("frame-ancestors 'none'")
                && csp.contains("script-src 'self'")
                && !csp.contains("unsafe-inline")
        );
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["cache-control"], "no-store");
    }
}

#[tokio::test]
async fn every_page_with_its_assets_is_under_100_kb() {
    let s = TestServer::start().await;
    let (b, user_id) = Browser::signed_in(&s, "weight@example.com").await;
    b.submit("/dashboard/keys", "/dashboard/keys", &[("name", "k"), ("billing_mode", "test")]).await;
    b.submit(
        "/dashboard/apps",
        "/dashboard/apps",
        &[("name", "A"), ("redirect_uris", "http://localhost/cb"), ("scopes", "openid")],
    )
    .await;
    b.submit("/dashboard/webhooks", "/dashboard/webhooks", &[("url", "http://127.0.0.1:9/h")]).await;
    let app_id = s.state.store.apps_of(&user_id).await.unwrap()[0].id.clone();
    let hook_id = s.state.store.webhook_endpoints(&user_id).await.unwrap()[0].id.clone();
    // A full page of usage rows.
    let (_, secret) = s.key(&b.session, "test").await;
    for _ in 0..60 {
        let r = s
            .http
            .post(s.url("/v1/chat/completions"))
            .bearer_auth(&secret)
            .json(&serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let assets = b.page("/dashboard/static/app.css").await.len()
        + b.page("/dashboard/static/app.js").await.len()
        + b.page("/dashboard/static/favicon.svg").await.len();
    for path in [
        "/dashboard".to_string(),
        "/dashboard/keys".into(),
        "/dashboard/usage".into(),
        "/dashboard/ledger".into(),
        "/dashboard/webhooks".into(),
        format!("/dashboard/webhooks/{hook_id}"),
        "/dashboard/apps".into(),
        format!("/dashboard/apps/{app_id}"),
        "/dashboard/payouts".into(),
        "/dashboard/wallet".into(),
    ] {
        let html = b.page(&path).await;
        let total = html.len() + assets;
        println!("{path}: {} bytes of HTML + {assets} of CSS/JS/icon = {total}", html.len());
        assert!(total < PAGE_BUDGET_BYTES, "{path} weighs {total} bytes");
        assert!(!html.contains("<script>"), "no inline script on {path}");
    }
    let usage = b.page("/dashboard/usage").await;
    assert!(usage.contains("rel=\"next\""), "60 requests make two pages of 50");
    let balance = s.state.ledger.balance(&AccountId::wallet(&user_id)).await.unwrap();
    assert!(b.page("/dashboard").await.contains(&format!("id=\"balance\">{}", usd_text(balance.get()))));
}

/// Dollars as the dashboard writes them.
fn usd_text(credits: i64) -> String {
    let s = quota_core::Credits::new(credits).to_usd_string();
    let (int, frac) = s.split_once('.').unwrap();
    format!("{int}.{:0<2}", frac.trim_end_matches('0'))
}

#[tokio::test]
async fn bad_usage_filters_are_shown_not_failed() {
    let s = TestServer::start().await;
    let (b, _) = Browser::signed_in(&s, "filters@example.com").await;
    let r = b.get("/dashboard/usage?from=2025-02-30").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("from must be a date"));
    let r = b.get("/dashboard/usage?from=2025-03-02&to=2025-03-01").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = b.get("/dashboard/usage?mode=free").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = b.get("/dashboard/usage?from=2025-03-01&to=2025-03-31&mode=test").await;
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    assert!(
        page.contains(
            "/v1/usage?format=csv&amp;from=2025-03-01&amp;to=2025-04-01T00%3A00%3A00.000Z&amp;billing_mode=test"
        ),
        "{page}"
    );
}

#[tokio::test]
async fn the_wallet_lists_connected_apps_with_their_spend_and_disconnects_them() {
    let (s, _upstream) = common::proxied().await;
    let app = s.app(serde_json::json!({"name": "Acme Chat", "profit_margin": 0.25})).await;
    let (user_id, session, token) = s.connected_user(&app, "openid credits.spend").await;
    let access = token["access_token"].as_str().unwrap().to_string();
    let r = s
        .http
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(&access)
        .json(&serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let paid = s.state.store.connections_of(&user_id).await.unwrap()[0].spend;
    assert!(paid > 0);

    let user = Browser { http: client(), base: s.base.clone(), session };
    let wallet = user.page("/dashboard/wallet").await;
    assert!(wallet.contains("Acme Chat") && wallet.contains(&usd_text(paid)), "{wallet}");
    let developer = Browser { http: client(), base: s.base.clone(), session: app.developer_session.clone() };
    let detail = developer.page(&format!("/dashboard/apps/{}", app.id)).await;
    assert!(detail.contains(&usd_text(paid)) && detail.contains("@example.com"), "connected user and spend");

    let r =
        user.submit("/dashboard/wallet", &format!("/dashboard/wallet/connections/{}/disconnect", app.id), &[]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(s.state.store.connections_of(&user_id).await.unwrap().is_empty());
    let r = s.http.get(s.url("/v1/balance")).bearer_auth(&access).send().await.unwrap();
    assert_eq!(r.status(), 401, "the app's token stops working");
    let r =
        user.submit("/dashboard/wallet", &format!("/dashboard/wallet/connections/{}/disconnect", app.id), &[]).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "nothing left to disconnect");
    assert!(r.text().await.unwrap().contains("role=\"alert\""));
}

#[tokio::test]
async fn top_up_and_payout_onboarding_go_to_the_payment_provider() {
    let s = TestServer::start_with(|c| c.payments_provider = Some("dev".into())).await;
    let (b, user_id) = Browser::signed_in(&s, "pay@example.com").await;
    let wallet = b.page("/dashboard/wallet").await;
    assert!(wallet.contains("Starter") && wallet.contains("$4.05 of credit"));
    let r = b.submit("/dashboard/wallet", "/dashboard/wallet/checkout", &[("package_id", "starter")]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(r.headers()[LOCATION].to_str().unwrap().contains("/payments/dev/checkout/cs_dev_"));
    let r = b.submit("/dashboard/wallet", "/dashboard/wallet/checkout", &[("package_id", "mega")]).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(r.text().await.unwrap().contains("no package"));

    assert!(b.page("/dashboard/payouts").await.contains("Set up payouts with Stripe"));
    let r = b.submit("/dashboard/payouts", "/dashboard/payouts/onboard", &[]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(r.headers()[LOCATION].to_str().unwrap().ends_with("/dashboard/payouts?connect=return"));
    assert!(s.state.store.connect_account(&user_id).await.unwrap().is_some());
    let page = b.page("/dashboard/payouts?connect=return").await;
    assert!(page.contains("is connected") && page.contains("Back from Stripe"));
}

#[tokio::test]
async fn without_a_payment_provider_the_pages_say_so() {
    let s = TestServer::start().await;
    let (b, _) = Browser::signed_in(&s, "nopay@example.com").await;
    assert!(b.page("/dashboard/wallet").await.contains("Top-ups are not configured"));
    assert!(b.page("/dashboard/payouts").await.contains("Payouts are not configured"));
}

#[tokio::test]
async fn webhook_secrets_rotate_and_endpoints_disable_from_the_page() {
    let s = TestServer::start().await;
    let (b, user_id) = Browser::signed_in(&s, "rotatehook@example.com").await;
    b.submit("/dashboard/webhooks", "/dashboard/webhooks", &[("url", "http://127.0.0.1:9/h")]).await;
    let hook = s.state.store.webhook_endpoints(&user_id).await.unwrap().remove(0);
    let page = format!("/dashboard/webhooks/{}", hook.id);
    let r = b.submit(&page, &format!("{page}/rotate-secret"), &[]).await;
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    let rotated = s.state.store.webhook_endpoint(&user_id, &hook.id).await.unwrap().unwrap();
    assert_ne!(rotated.secret, hook.secret);
    // Stored sealed (SPEC §12): the page shows the secret the sealed value opens to.
    let secret =
        s.state.master_key.open_text(quota_server::secrets::at_rest::Purpose::WebhookSecret, &rotated.secret).unwrap();
    assert!(html.contains(&secret), "the new secret is shown once");
    assert!(!b.page(&page).await.contains(&secret));
    let r = b.submit(&page, &format!("{page}/disable"), &[]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(s.state.store.webhook_endpoint(&user_id, &hook.id).await.unwrap().unwrap().disabled_at.is_some());
    let r = b.submit(&page, &format!("{page}/enable"), &[]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(s.state.store.webhook_endpoint(&user_id, &hook.id).await.unwrap().unwrap().disabled_at.is_none());
    let r = b.submit(&page, &format!("{page}/delete"), &[]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(s.state.store.webhook_endpoints(&user_id).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_key_can_be_bound_to_an_app_and_an_app_deleted() {
    let s = TestServer::start().await;
    let (b, user_id) = Browser::signed_in(&s, "bind@example.com").await;
    b.submit(
        "/dashboard/apps",
        "/dashboard/apps",
        &[("name", "Bound"), ("redirect_uris", "http://localhost/cb"), ("scopes", "openid")],
    )
    .await;
    let app = s.state.store.apps_of(&user_id).await.unwrap().remove(0);
    let r = b
        .submit("/dashboard/keys", "/dashboard/keys", &[("name", "u"), ("billing_mode", "user"), ("app_id", &app.id)])
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(s.state.store.list_keys(&user_id).await.unwrap()[0].app_id.as_deref(), Some(app.id.as_str()));
    let r = b
        .submit(
            "/dashboard/keys",
            "/dashboard/keys",
            &[("name", "u"), ("billing_mode", "user"), ("app_id", "app_other")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "only one's own apps");
    let page = format!("/dashboard/apps/{}", app.id);
    let r = b.submit(&page, &format!("{page}/delete"), &[]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(s.state.store.apps_of(&user_id).await.unwrap().is_empty());
}

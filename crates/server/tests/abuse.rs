//! Abuse resistance (SPEC §1, §5, §7; issue 14): every way in shares the per-IP sign-in and
//! sign-up budgets, the per-account lockout, the token endpoint that nobody can lock or farm,
//! bounded limiter state, trusted proxies, and the per-account caps.

mod common;

use common::oauth::{browser, hidden_inputs, pkce, TestApp, REDIRECT};
use common::{expect_error, TestServer};
use serde_json::{json, Value};

/// The ways a password reaches Quota (SPEC §1: "these limits cover every way in").
#[derive(Debug, Clone, Copy)]
enum WayIn {
    Api,
    OAuthForm,
    Dashboard,
}

const WAYS: [WayIn; 3] = [WayIn::Api, WayIn::OAuthForm, WayIn::Dashboard];

/// A server with the real sign-in limits (3 registers, 5 logins a minute per IP) that trusts
/// X-Forwarded-For from 127.0.0.1, so each test client can speak for its own address.
async fn limited_server() -> TestServer {
    TestServer::start_with(|c| {
        c.register_rate_limit_per_minute = 3;
        c.login_rate_limit_per_minute = 5;
        c.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await
}

/// The `Set-Cookie` name=value pair of a response, if it set `name`.
fn set_cookie(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").to_string())
        .find(|c| c.starts_with(&format!("{name}=")))
}

/// One sign-in (`signup = false`) or sign-up through `way`, as a client at `ip`.
async fn attempt(
    s: &TestServer,
    app: &TestApp,
    way: WayIn,
    signup: bool,
    ip: &str,
    email: &str,
    password: &str,
) -> reqwest::Response {
    let http = browser();
    match way {
        WayIn::Api => {
            let path = if signup { "/auth/register" } else { "/auth/login" };
            http.post(s.url(path))
                .header("x-forwarded-for", ip)
                .json(&json!({"email": email, "password": password}))
                .send()
                .await
                .unwrap()
        }
        WayIn::OAuthForm => {
            let (_, challenge) = pkce();
            let page = http
                .get(s.url("/oauth/authorize"))
                .query(&[
                    ("response_type", "code"),
                    ("client_id", app.client_id.as_str()),
                    ("redirect_uri", REDIRECT),
                    ("scope", "openid email"),
                    ("state", "st"),
                    ("code_challenge", challenge.as_str()),
                    ("code_challenge_method", "S256"),
                ])
                .send()
                .await
                .unwrap();
            assert_eq!(page.status(), 200);
            let cookie = set_cookie(&page, "quota_csrf").expect("the sign-in page sets its CSRF cookie");
            let html = page.text().await.unwrap();
            // The page has a sign-in and a sign-up form with the same hidden fields.
            let mut form: Vec<(String, String)> = Vec::new();
            for (k, v) in hidden_inputs(&html) {
                if k != "action" && !form.iter().any(|(f, _)| *f == k) {
                    form.push((k, v));
                }
            }
            form.push(("action".into(), if signup { "signup" } else { "login" }.into()));
            form.push(("email".into(), email.into()));
            form.push(("password".into(), password.into()));
            http.post(s.url("/oauth/authorize"))
                .header("cookie", cookie)
                .header("x-forwarded-for", ip)
                .form(&form)
                .send()
                .await
                .unwrap()
        }
        WayIn::Dashboard => {
            let path = if signup { "/dashboard/signup" } else { "/dashboard/signin" };
            let page = http.get(s.url(path)).send().await.unwrap();
            let cookie = set_cookie(&page, "quota_dash_csrf").expect("the sign-in page sets its CSRF cookie");
            let html = page.text().await.unwrap();
            let csrf = hidden_inputs(&html).into_iter().find(|(k, _)| k == "csrf_token").unwrap().1;
            http.post(s.url(path))
                .header("cookie", cookie)
                .header("x-forwarded-for", ip)
                .form(&[("csrf_token", csrf.as_str()), ("email", email), ("password", password)])
                .send()
                .await
                .unwrap()
        }
    }
}

/// Whether an attempt through `way` succeeded (201/200 for the API, a 303 with a session for
/// the forms).
fn succeeded(way: WayIn, r: &reqwest::Response) -> bool {
    match way {
        WayIn::Api => r.status().is_success(),
        _ => r.status() == 303 && set_cookie(r, "quota_session").is_some(),
    }
}

fn retry_after(r: &reqwest::Response) -> u64 {
    r.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn the_4th_sign_up_from_one_ip_is_429_by_every_way_in_and_creates_nothing() {
    let s = limited_server().await;
    let app = s.app(json!({})).await;
    for (n, way) in WAYS.into_iter().enumerate() {
        let ip = format!("198.51.100.{}", 10 + n);
        for i in 0..3 {
            let email = format!("new{i}-{way:?}@example.com").to_lowercase();
            let r = attempt(&s, &app, way, true, &ip, &email, "correct horse").await;
            assert!(succeeded(way, &r), "{way:?} sign-up {i}: {}", r.status());
        }
        let email = format!("fourth-{way:?}@example.com").to_lowercase();
        let r = attempt(&s, &app, way, true, &ip, &email, "correct horse").await;
        assert_eq!(r.status(), 429, "{way:?}: the 4th sign-up within a minute");
        assert!(retry_after(&r) >= 1, "{way:?}: Retry-After");
        assert!(s.state.store.user_by_email(&email).await.unwrap().is_none(), "{way:?}: nothing was created");
    }
}

#[tokio::test]
async fn the_ways_in_share_one_budget_per_ip() {
    let s = limited_server().await;
    let app = s.app(json!({})).await;
    let ip = "198.51.100.40";
    for (i, way) in WAYS.into_iter().enumerate() {
        let r = attempt(&s, &app, way, true, ip, &format!("shared{i}@example.com"), "correct horse").await;
        assert!(succeeded(way, &r), "{way:?}");
    }
    for way in WAYS {
        let r = attempt(&s, &app, way, true, ip, "shared-more@example.com", "correct horse").await;
        assert_eq!(r.status(), 429, "{way:?}: the budget is spent, whichever way in spent it");
    }
    for (i, way) in WAYS.into_iter().enumerate() {
        for _ in 0..if i == 0 { 3 } else { 1 } {
            let r = attempt(&s, &app, way, false, ip, "shared0@example.com", "wrong password").await;
            assert!(r.status() == 401, "{way:?}: {}", r.status());
        }
    }
    let r = attempt(&s, &app, WayIn::Api, false, ip, "shared0@example.com", "correct horse").await;
    assert_eq!(r.status(), 429, "the 6th sign-in from the address, however the first five came");
}

#[tokio::test]
async fn the_6th_sign_in_from_one_ip_is_429_by_every_way_in() {
    let s = limited_server().await;
    let app = s.app(json!({})).await;
    let (_, _) = s.register("known@example.com").await;
    for (n, way) in WAYS.into_iter().enumerate() {
        let ip = format!("198.51.100.{}", 20 + n);
        for i in 0..5 {
            let password = if i == 4 { "correct horse" } else { "wrong password" };
            let r = attempt(&s, &app, way, false, &ip, "known@example.com", password).await;
            assert_ne!(r.status(), 429, "{way:?} sign-in {i}");
        }
        let r = attempt(&s, &app, way, false, &ip, "known@example.com", "correct horse").await;
        assert_eq!(r.status(), 429, "{way:?}: the 6th sign-in within a minute");
        assert!(retry_after(&r) >= 1);
        assert!(!succeeded(way, &r), "{way:?}: no session");
    }
}

#[tokio::test]
async fn ten_failed_sign_ins_lock_the_email_and_the_answer_is_the_same_for_a_missing_one() {
    // Each attempt from another address: the per-IP limit is not what stops them.
    let s = TestServer::start_with(|c| c.trusted_proxies = vec!["127.0.0.1".into()]).await;
    let app = s.app(json!({})).await;
    let (user, _) = s.register("victim@example.com").await;
    let mut n = 0;
    let mut next_ip = || {
        n += 1;
        format!("203.0.113.{n}")
    };
    for i in 0..10 {
        let way = WAYS[i % 3];
        for email in ["victim@example.com", "nobody@example.com"] {
            let r = attempt(&s, &app, way, false, &next_ip(), email, "wrong password").await;
            assert_eq!(r.status(), 401, "{way:?} failure {i} for {email}");
        }
    }
    let mut answers = Vec::new();
    for email in ["victim@example.com", "nobody@example.com"] {
        for way in WAYS {
            let r = attempt(&s, &app, way, false, &next_ip(), email, "correct horse").await;
            assert_eq!(r.status(), 429, "{way:?} {email}: locked, even with the right password");
            let wait = retry_after(&r);
            assert!((890..=900).contains(&wait), "{way:?}: Retry-After {wait} ≈ 15 minutes");
            if let WayIn::Api = way {
                answers.push(r.json::<Value>().await.unwrap());
            }
        }
    }
    assert_eq!(answers[0], answers[1], "the same answer whether the email exists or not");
    assert!(s.state.store.user_by_id(&user).await.unwrap().is_some());
    s.state.clock.advance(std::time::Duration::from_secs(15 * 60));
    let r = attempt(&s, &app, WayIn::Api, false, &next_ip(), "victim@example.com", "correct horse").await;
    assert_eq!(r.status(), 200, "the lock ends after 15 minutes");
}

#[tokio::test]
async fn a_successful_sign_in_clears_the_failure_count() {
    let s = TestServer::start().await;
    let app = s.app(json!({})).await;
    s.register("careless@example.com").await;
    for round in 0..2 {
        for _ in 0..9 {
            let r = attempt(&s, &app, WayIn::Api, false, "", "careless@example.com", "wrong password").await;
            assert_eq!(r.status(), 401, "round {round}");
        }
        let r = attempt(&s, &app, WayIn::Api, false, "", "careless@example.com", "correct horse").await;
        assert_eq!(r.status(), 200, "round {round}: nine failures and a success never lock");
    }
}

#[tokio::test]
async fn forwarded_for_behind_a_trusted_proxy_limits_the_real_client_not_the_leftmost_entry() {
    let s = limited_server().await;
    let app = s.app(json!({})).await;
    for i in 0..3 {
        // A client writing a different fake leftmost address each time.
        let xff = format!("1.2.3.{i}, 198.51.100.77");
        let r = attempt(&s, &app, WayIn::Api, true, &xff, &format!("xff{i}@example.com"), "correct horse").await;
        assert_eq!(r.status(), 201);
    }
    let r = attempt(&s, &app, WayIn::Api, true, "9.9.9.9, 198.51.100.77", "xff3@example.com", "correct horse").await;
    assert_eq!(r.status(), 429, "the real client (the rightmost untrusted) is limited");
    let r = attempt(&s, &app, WayIn::Api, true, "1.2.3.0, 198.51.100.78", "xff4@example.com", "correct horse").await;
    assert_eq!(r.status(), 201, "another real client is not, whatever the leftmost entry says");
}

#[tokio::test]
async fn without_trusted_proxies_forwarded_for_is_ignored() {
    let s = TestServer::start_with(|c| c.register_rate_limit_per_minute = 1).await;
    let app = s.app(json!({})).await;
    // `app` registered the developer from 127.0.0.1: that address's one sign-up is spent.
    let r = attempt(&s, &app, WayIn::Api, true, "198.51.100.1", "nf@example.com", "correct horse").await;
    assert_eq!(r.status(), 429, "the peer address is the client; the header changes nothing");
}

// ---- the token endpoint (SPEC §5, §7) ---------------------------------------------------

/// `POST /oauth/token` from `ip` with `form`, optionally with HTTP Basic credentials.
async fn token_from(s: &TestServer, ip: &str, form: &[(&str, &str)], basic: Option<(&str, &str)>) -> reqwest::Response {
    let mut req = s.http.post(s.url("/oauth/token")).header("x-forwarded-for", ip).form(form);
    if let Some((id, secret)) = basic {
        req = req.basic_auth(id, Some(secret));
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn ten_thousand_random_long_client_ids_are_refused_without_limiter_state() {
    use futures::StreamExt;
    let s = TestServer::start_with(|c| c.trusted_proxies = vec!["127.0.0.1".into()]).await;
    let before = s.state.limiter.local_entries();
    let statuses: Vec<(u16, String)> = futures::stream::iter(0..10_000)
        .map(|i| {
            let s = &s;
            async move {
                let id = quota_core::ids::new_secret("x").repeat(64)[..2048].to_string();
                let ip = format!("10.{}.{}.{}", i / 65536 % 256, i / 256 % 256, i % 256);
                let form = [("grant_type", "refresh_token"), ("refresh_token", "quota_refresh_x")];
                let r = if i % 2 == 0 {
                    let mut f = form.to_vec();
                    f.push(("client_id", &id));
                    token_from(s, &ip, &f, None).await
                } else {
                    token_from(s, &ip, &form, Some((&id, "guess"))).await
                };
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap();
                (status, body["error"].as_str().unwrap_or("").to_string())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(statuses.iter().all(|(st, e)| *st == 401 && e == "invalid_client"), "every one refused: invalid_client");
    assert_eq!(s.state.limiter.local_entries(), before, "no limiter entry was created for any of them");
    // Short unknown ids from as many addresses: refused the same, still no state.
    for i in 0..200 {
        let r = token_from(&s, &format!("10.9.0.{i}"), &[("client_id", "quota_client_nope")], None).await;
        assert_eq!(r.status(), 401);
    }
    assert_eq!(s.state.limiter.local_entries(), before);
}

#[tokio::test]
async fn an_attacker_on_another_ip_cannot_make_a_clients_code_exchange_fail() {
    let s = TestServer::start_with(|c| {
        c.trusted_proxies = vec!["127.0.0.1".into()];
        c.token_rate_limit_per_minute = 5;
    })
    .await;
    let app = s.app(json!({"token_endpoint_auth_method": "none"})).await;
    // The attacker spends the public client's budget from its own address.
    let mut refused = 0;
    for _ in 0..20 {
        let r = token_from(
            &s,
            "198.51.100.66",
            &[("client_id", &app.client_id), ("grant_type", "authorization_code"), ("code", "quota_code_guess")],
            None,
        )
        .await;
        if r.status() == 429 {
            refused += 1;
        }
    }
    assert_eq!(refused, 15, "the attacker's own address is limited");
    // The real client, elsewhere, exchanges its code.
    let (_, session) = s.register("real-user@example.com").await;
    let (verifier, challenge) = pkce();
    let code = s
        .code_for(
            &session,
            &app,
            &[("scope", "openid credits.spend"), ("code_challenge", &challenge), ("code_challenge_method", "S256")],
        )
        .await;
    let r = token_from(
        &s,
        "203.0.113.9",
        &[
            ("client_id", &app.client_id),
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &verifier),
        ],
        None,
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

#[tokio::test]
async fn client_secret_guesses_are_counted_for_basic_and_post_alike() {
    let s = TestServer::start_with(|c| c.trusted_proxies = vec!["127.0.0.1".into()]).await;
    let app = s.app(json!({})).await;
    let secret = app.client_secret.clone().unwrap();
    let bogus = [("grant_type", "refresh_token"), ("refresh_token", "quota_refresh_nope")];
    for i in 0..10 {
        let r = if i % 2 == 0 {
            token_from(&s, "198.51.100.5", &bogus, Some((&app.client_id, "quota_secret_guess"))).await
        } else {
            let mut f = bogus.to_vec();
            f.extend([("client_id", app.client_id.as_str()), ("client_secret", "quota_secret_guess")]);
            token_from(&s, "198.51.100.5", &f, None).await
        };
        assert_eq!(r.status(), 401, "guess {i}");
    }
    let r = token_from(&s, "198.51.100.5", &bogus, Some((&app.client_id, "quota_secret_guess"))).await;
    assert_eq!(r.status(), 429, "the 11th Basic guess is refused before it is checked");
    assert!(retry_after(&r) >= 1);
    let r = token_from(&s, "198.51.100.5", &bogus, Some((&app.client_id, &secret))).await;
    assert_eq!(r.status(), 429, "even the right secret, from the guessing address");
    let r = token_from(&s, "203.0.113.50", &bogus, Some((&app.client_id, &secret))).await;
    assert_eq!(r.status(), 400, "the app itself, elsewhere, authenticates (and gets invalid_grant)");
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_grant");
}

// ---- per-account caps (SPEC §1) -----------------------------------------------------------

#[tokio::test]
async fn the_101st_key_21st_app_and_21st_webhook_are_403_limit_reached() {
    let s = TestServer::start().await;
    let (_, session, _) = s.developer("test").await; // key 1
    for i in 1..100 {
        let r = s.send(reqwest::Method::POST, "/developers/keys", &session, json!({"name": format!("k{i}")})).await;
        assert_eq!(r.status(), 201, "key {}", i + 1);
    }
    let r = s.send(reqwest::Method::POST, "/developers/keys", &session, json!({"name": "one too many"})).await;
    expect_error(r, 403, "limit_reached").await;
    // A revoked key frees its place.
    let keys = s.get_json("/developers/keys?limit=1", &session).await;
    let id = keys["data"][0]["id"].as_str().unwrap().to_string();
    let r = s.send(reqwest::Method::DELETE, &format!("/developers/keys/{id}"), &session, Value::Null).await;
    assert!(r.status().is_success());
    let r = s.send(reqwest::Method::POST, "/developers/keys", &session, json!({"name": "in its place"})).await;
    assert_eq!(r.status(), 201);

    let app = json!({"name": "App", "redirect_uris": [REDIRECT]});
    for i in 0..20 {
        let r = s.send(reqwest::Method::POST, "/developers/apps", &session, app.clone()).await;
        assert_eq!(r.status(), 201, "app {}", i + 1);
    }
    expect_error(s.send(reqwest::Method::POST, "/developers/apps", &session, app).await, 403, "limit_reached").await;

    let hook = json!({"url": "https://hooks.example.com/quota"});
    for i in 0..20 {
        let r = s.send(reqwest::Method::POST, "/v1/webhooks", &session, hook.clone()).await;
        assert_eq!(r.status(), 201, "webhook {}", i + 1);
    }
    expect_error(s.send(reqwest::Method::POST, "/v1/webhooks", &session, hook).await, 403, "limit_reached").await;
}

#[tokio::test]
async fn the_caps_are_configurable() {
    let s = TestServer::start_with(|c| c.max_apps_per_account = 1).await;
    let (_, session) = s.register("capped@example.com").await;
    let app = json!({"name": "App", "redirect_uris": [REDIRECT]});
    assert_eq!(s.send(reqwest::Method::POST, "/developers/apps", &session, app.clone()).await.status(), 201);
    expect_error(s.send(reqwest::Method::POST, "/developers/apps", &session, app).await, 403, "limit_reached").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lockout_is_shared_by_instances_through_redis() {
    let url = match std::env::var("QUOTA_TEST_REDIS_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => {
            eprintln!("skipped the_lockout_is_shared_by_instances_through_redis: QUOTA_TEST_REDIS_URL is not set");
            return;
        }
    };
    let a = TestServer::start_with({
        let url = url.clone();
        move |c| c.redis_url = Some(url)
    })
    .await;
    let b = TestServer::start_sharing(&a, move |c| c.redis_url = Some(url)).await;
    let app = a.app(json!({})).await;
    // A fresh email per run: Redis outlives test runs.
    let email = format!("{}@example.com", quota_core::ids::new_id("shared_").to_lowercase());
    a.register(&email).await;
    for i in 0..10 {
        let s = if i % 2 == 0 { &a } else { &b };
        let r = attempt(s, &app, WayIn::Api, false, "", &email, "wrong password").await;
        assert_eq!(r.status(), 401, "failure {i}");
    }
    for s in [&a, &b] {
        let r = attempt(s, &app, WayIn::Api, false, "", &email, "correct horse").await;
        assert_eq!(r.status(), 429, "five failures on each instance lock the email on both");
    }
}

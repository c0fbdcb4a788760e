//! OAuth helpers for tests: create an app, walk `/oauth/authorize` as a browser would (cookie,
//! the consent form's hidden fields and CSRF token), exchange codes, and PKCE pairs.
#![allow(dead_code)]

use super::TestServer;
use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const REDIRECT: &str = "http://127.0.0.1:9999/callback";

pub struct TestApp {
    pub id: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub developer_id: String,
    pub developer_session: String,
}

/// A client that never follows redirects (the test reads each `Location`).
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// A PKCE pair (verifier, S256 challenge).
pub fn pkce() -> (String, String) {
    let verifier = quota_core::ids::new_secret("v-").repeat(2);
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// Unescape the entities `pages::escape` writes.
pub fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"").replace("&#39;", "'").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

/// The hidden inputs of an HTML page, in order (as `pages::hidden_fields` writes them).
pub fn hidden_inputs(html: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find("<input type=\"hidden\" name=\"") {
        rest = &rest[i + 27..];
        let name_end = rest.find('"').unwrap();
        let name = unescape(&rest[..name_end]);
        let v = rest.find("value=\"").unwrap() + 7;
        let value_end = rest[v..].find('"').unwrap() + v;
        out.push((name, unescape(&rest[v..value_end])));
        rest = &rest[value_end..];
    }
    out
}

/// The query parameters of a `Location` URL.
pub fn location_params(location: &str) -> Vec<(String, String)> {
    let url = url::Url::parse(location).unwrap();
    url.query_pairs().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

pub fn param(params: &[(String, String)], name: &str) -> Option<String> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

impl TestServer {
    /// A developer account with an app; `extra` is merged into the create body.
    pub async fn app(&self, extra: Value) -> TestApp {
        let email = format!("{}@example.com", quota_core::ids::new_id("dev_").to_lowercase());
        let (developer_id, session) = self.register(&email).await;
        self.app_of(&developer_id, &session, extra).await
    }

    pub async fn app_of(&self, developer_id: &str, session: &str, extra: Value) -> TestApp {
        let mut body = json!({"name": "Test App", "redirect_uris": [REDIRECT],
            "allowed_scopes": ["openid", "profile", "email", "credits.read", "credits.spend"]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = self.http.post(self.url("/developers/apps")).bearer_auth(session).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        let v: Value = r.json().await.unwrap();
        TestApp {
            id: v["id"].as_str().unwrap().into(),
            client_id: v["client_id"].as_str().unwrap().into(),
            client_secret: v["client_secret"].as_str().map(str::to_string),
            developer_id: developer_id.into(),
            developer_session: session.into(),
        }
    }

    /// `GET /oauth/authorize` as the signed-in browser of `session`, with `params` on top of
    /// the app's defaults (set a value to "" to leave it out).
    pub async fn authorize_page(&self, session: &str, app: &TestApp, params: &[(&str, &str)]) -> reqwest::Response {
        let mut q: Vec<(&str, &str)> = vec![
            ("response_type", "code"),
            ("client_id", &app.client_id),
            ("redirect_uri", REDIRECT),
            ("scope", "openid email credits.read credits.spend"),
            ("state", "st-123"),
        ];
        for (k, v) in params {
            q.retain(|(qk, _)| qk != k);
            if !v.is_empty() {
                q.push((k, v));
            }
        }
        browser()
            .get(self.url("/oauth/authorize"))
            .query(&q)
            .header("cookie", format!("quota_session={session}"))
            .send()
            .await
            .unwrap()
    }

    /// Submit the consent page's form with `action` (approve/deny); returns the response.
    pub async fn submit_consent(&self, session: &str, page_html: &str, action: &str) -> reqwest::Response {
        let mut form = hidden_inputs(page_html);
        form.push(("action".into(), action.into()));
        browser()
            .post(self.url("/oauth/authorize"))
            .header("cookie", format!("quota_session={session}"))
            .form(&form)
            .send()
            .await
            .unwrap()
    }

    /// Authorize `app` for the user of `session` and return the code (asserting `state`).
    pub async fn code_for(&self, session: &str, app: &TestApp, params: &[(&str, &str)]) -> String {
        let page = self.authorize_page(session, app, params).await;
        assert_eq!(page.status(), 200);
        let html = page.text().await.unwrap();
        let r = self.submit_consent(session, &html, "approve").await;
        assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
        let loc = r.headers()["location"].to_str().unwrap().to_string();
        assert!(loc.starts_with(REDIRECT), "{loc}");
        let p = location_params(&loc);
        let want_state = params.iter().find(|(k, _)| *k == "state").map(|(_, v)| v.to_string());
        assert_eq!(param(&p, "state"), Some(want_state.unwrap_or_else(|| "st-123".into())));
        param(&p, "code").expect("a code")
    }

    /// `POST /oauth/token` with `client_secret_post` (when the app has a secret).
    pub async fn token_request(&self, app: &TestApp, fields: &[(&str, &str)]) -> reqwest::Response {
        let mut form: Vec<(&str, &str)> = vec![("client_id", &app.client_id)];
        if let Some(s) = &app.client_secret {
            form.push(("client_secret", s));
        }
        form.extend_from_slice(fields);
        self.http.post(self.url("/oauth/token")).form(&form).send().await.unwrap()
    }

    /// A request with a bearer credential and, unless `body` is null, a JSON body.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: impl std::fmt::Display,
        body: Value,
    ) -> reqwest::Response {
        let mut req = self.http.request(method, self.url(path)).bearer_auth(bearer);
        if !body.is_null() {
            req = req.json(&body);
        }
        req.send().await.unwrap()
    }

    /// `grant_type=refresh_token`.
    pub async fn refresh(&self, app: &TestApp, refresh_token: &str) -> reqwest::Response {
        self.token_request(app, &[("grant_type", "refresh_token"), ("refresh_token", refresh_token)]).await
    }

    /// A user (new account) who connected `app` with `scope`; returns (user id, session, token
    /// response).
    pub async fn connected_user(&self, app: &TestApp, scope: &str) -> (String, String, Value) {
        let email = format!("{}@example.com", quota_core::ids::new_id("user_").to_lowercase());
        let (user, session) = self.register(&email).await;
        let (verifier, challenge) = pkce();
        let code = self
            .code_for(
                &session,
                app,
                &[("scope", scope), ("code_challenge", &challenge), ("code_challenge_method", "S256")],
            )
            .await;
        let r = self
            .token_request(
                app,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", REDIRECT),
                    ("code_verifier", &verifier),
                ],
            )
            .await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        (user, session, r.json().await.unwrap())
    }

    /// Set an app's settings as its developer.
    pub async fn app_settings(&self, app: &TestApp, body: Value) -> reqwest::Response {
        self.http
            .patch(self.url(&format!("/developers/apps/{}/settings", app.id)))
            .bearer_auth(&app.developer_session)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// A stored account balance by its text id (`earnings_pending:usr_…`).
    pub async fn account_balance(&self, account: &str) -> i64 {
        self.state.ledger.flush().await.unwrap();
        let a: quota_core::AccountId = account.parse().unwrap();
        self.state.store.balance(&a).await.unwrap()
    }

    /// Move a user's wallet down to `leave` credits (to the adjustments account).
    pub async fn drain(&self, user_id: &str, leave: i64) {
        let amount = self.balance(user_id).await - leave;
        self.state
            .ledger
            .transfer(quota_core::transfers::restored(
                quota_core::ids::new_id("ledg_test_drain_"),
                quota_core::AccountId::wallet(user_id),
                quota_core::AccountId::Platform(quota_core::PlatformAccount::Adjustments),
                quota_core::Credits::new(amount),
                quota_core::TransferKind::AdminCredit,
                "test".into(),
                0,
            ))
            .await
            .unwrap();
    }

    /// Outbox events of a type for a developer.
    pub async fn events(&self, developer_id: &str, kind: &str) -> Vec<Value> {
        self.state.ledger.flush().await.unwrap();
        let rows: Vec<(String,)> = quota_store::on_pool!(self.state.store.pool(), |p| sqlx::query_as(
            "SELECT data FROM events WHERE developer_id = $1 AND type = $2 ORDER BY seq"
        )
        .bind(developer_id)
        .bind(kind)
        .fetch_all(p)
        .await
        .unwrap());
        rows.into_iter().map(|(d,)| serde_json::from_str(&d).unwrap()).collect()
    }
}

/// An OpenAI-shaped upstream that holds every request until `release` (so a test can have many
/// requests in flight at once), then answers each with the same usage.
pub struct HeldUpstream {
    pub base_url: String,
    state: std::sync::Arc<Held>,
    task: tokio::task::JoinHandle<()>,
}

struct Held {
    calls: std::sync::atomic::AtomicUsize,
    released: std::sync::atomic::AtomicBool,
    release: tokio::sync::Notify,
    usage: (u64, u64),
}

impl Drop for HeldUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HeldUpstream {
    pub async fn start(prompt: u64, completion: u64) -> HeldUpstream {
        use std::sync::atomic::Ordering;
        let state = std::sync::Arc::new(Held {
            calls: Default::default(),
            released: Default::default(),
            release: Default::default(),
            usage: (prompt, completion),
        });
        let handler_state = state.clone();
        let app = axum::Router::new().route(
            "/v1/chat/completions",
            axum::routing::post(move || {
                let h = handler_state.clone();
                async move {
                    h.calls.fetch_add(1, Ordering::SeqCst);
                    loop {
                        let notified = h.release.notified();
                        if h.released.load(Ordering::SeqCst) {
                            break;
                        }
                        notified.await;
                    }
                    let (p, c) = h.usage;
                    axum::Json(json!({
                        "id": "chatcmpl-held", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c},
                    }))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        HeldUpstream { base_url: format!("http://{addr}/v1"), state, task }
    }

    /// Requests received so far (each is waiting until `release`).
    pub fn calls(&self) -> usize {
        self.state.calls.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Let every held request (waiting or future) answer.
    pub fn release(&self) {
        self.state.released.store(true, std::sync::atomic::Ordering::SeqCst);
        self.state.release.notify_waiters();
    }
}

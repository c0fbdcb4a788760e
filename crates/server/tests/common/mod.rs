//! Test harness: a real `quota` server on a real port (in-process, or the binary as a child
//! process for crash tests), a fresh database per server, and small HTTP helpers.
//!
//! The backend: SQLite (a fresh file per server) unless `QUOTA_TEST_BACKEND=postgres`, then
//! PostgreSQL at `QUOTA_TEST_POSTGRES_URL`, each server in a schema of its own, so tests stay
//! parallel and independent (`scripts/test` runs the suite once per backend).
#![allow(dead_code)]

pub mod fake;
pub mod fake_anthropic;
pub mod fake_gemini;
pub mod fake_openai;
pub mod fake_stripe;
pub mod oauth;
pub mod process;

use quota_core::{AccountId, Credits};
use quota_server::{build_router, AppState, Config, SharedState};
use serde_json::{json, Value};
use std::net::SocketAddr;

/// The tests' DNS for webhook hosts: never the network. `localhost` is 127.0.0.1; a name
/// given a script answers its next scripted answer (the last one again once the script runs
/// out); anything else does not resolve. Counts lookups per name.
#[derive(Default)]
pub struct TestResolver {
    scripts: parking_lot::Mutex<std::collections::HashMap<String, Script>>,
}

/// A name's scripted answers and how many lookups it had.
type Script = (Vec<Vec<std::net::IpAddr>>, usize);

impl TestResolver {
    /// `host` answers `answers[0]`, then `answers[1]`, … (the last one for ever after).
    pub fn script(&self, host: &str, answers: &[&[&str]]) {
        let answers = answers.iter().map(|a| a.iter().map(|ip| ip.parse().unwrap()).collect()).collect();
        self.scripts.lock().insert(host.to_string(), (answers, 0));
    }

    /// How many times `host` was looked up.
    pub fn lookups(&self, host: &str) -> usize {
        self.scripts.lock().get(host).map_or(0, |(_, n)| *n)
    }
}

impl quota_server::webhooks::ssrf::Resolve for TestResolver {
    fn lookup(&self, host: String) -> futures::future::BoxFuture<'static, std::io::Result<Vec<std::net::IpAddr>>> {
        let answer = match self.scripts.lock().get_mut(&host) {
            Some((answers, n)) => {
                let a = answers.get(*n).or(answers.last()).cloned().unwrap_or_default();
                *n += 1;
                Ok(a)
            }
            None if host == "localhost" => Ok(vec![std::net::IpAddr::from([127, 0, 0, 1])]),
            None => Err(std::io::Error::new(std::io::ErrorKind::NotFound, format!("{host}: no such host (test DNS)"))),
        };
        Box::pin(async move { answer })
    }
}

pub struct TestServer {
    pub base: String,
    pub state: SharedState,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub use quota_store::testing::on_postgres;

/// A fresh database for one server: a SQLite file in `dir`, or a new PostgreSQL schema.
pub async fn fresh_database_url(dir: &tempfile::TempDir) -> String {
    quota_store::testing::fresh_database_url(dir.path()).await
}

/// Say why a test that needs PostgreSQL did nothing in this run; true if it must stop.
pub fn skip_unless_postgres(test: &str) -> bool {
    if on_postgres() {
        return false;
    }
    eprintln!("skipped {test}: it needs several instances on PostgreSQL (QUOTA_TEST_BACKEND=postgres)");
    true
}

/// Say why a SQLite-only test did nothing in this run; true if it must stop.
pub fn skip_on_postgres(test: &str, why: &str) -> bool {
    if !on_postgres() {
        return false;
    }
    eprintln!("skipped {test} on PostgreSQL: {why}");
    true
}

pub fn test_config(database_url: String) -> Config {
    Config {
        bind: "127.0.0.1".into(),
        port: 0,
        // Tests register many accounts from one address; the auth limits have their own tests.
        register_rate_limit_per_minute: 10_000,
        login_rate_limit_per_minute: 10_000,
        rate_limit_per_minute: 100_000,
        // Tests deliver webhooks to listeners on 127.0.0.1; the SSRF tests turn this off.
        webhook_allow_private_urls: true,
        // On SQLite the master key file beside each test database is used (and tested); on
        // PostgreSQL every instance needs it in the configuration.
        secret_key: on_postgres().then(|| "7e".repeat(32)),
        database_url,
        ..Default::default()
    }
}

/// A gateway whose OpenAI upstream is a new fake (with a fake upstream key).
pub async fn proxied() -> (TestServer, fake_openai::FakeUpstream) {
    let up = fake_openai::FakeUpstream::start().await;
    let base = up.base_url.clone();
    let s = TestServer::start_with(move |c| {
        c.openai_base_url = base;
        c.openai_api_key = Some("sk-upstream-secret-0123456789".into());
    })
    .await;
    (s, up)
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> TestServer {
        TestServer::start_with_clock(configure, std::sync::Arc::new(quota_server::clock::Clock::system())).await
    }

    pub async fn start_with_clock(
        configure: impl FnOnce(&mut Config),
        clock: std::sync::Arc<quota_server::clock::Clock>,
    ) -> TestServer {
        TestServer::start_with_parts(configure, clock, std::sync::Arc::new(TestResolver::default())).await
    }

    /// A server whose webhook deliveries look hosts up with `resolver`.
    pub async fn start_with_resolver(
        configure: impl FnOnce(&mut Config),
        resolver: std::sync::Arc<TestResolver>,
    ) -> TestServer {
        let clock = std::sync::Arc::new(quota_server::clock::Clock::system());
        TestServer::start_with_parts(configure, clock, resolver).await
    }

    pub async fn start_with_parts(
        configure: impl FnOnce(&mut Config),
        clock: std::sync::Arc<quota_server::clock::Clock>,
        resolver: std::sync::Arc<TestResolver>,
    ) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(fresh_database_url(&dir).await);
        configure(&mut config);
        let state = AppState::start_with_parts(config, clock, resolver).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let app = build_router(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap();
        });
        TestServer { base: format!("http://{addr}"), state, dir, http: reqwest::Client::new(), task }
    }

    /// A second instance on the same database (as several `quota serve` processes would be).
    pub async fn start_sharing(first: &TestServer, configure: impl FnOnce(&mut Config)) -> TestServer {
        let db = first.state.config.database_url.clone();
        TestServer::start_with(move |c| {
            c.database_url = db;
            configure(c);
        })
        .await
    }

    /// Everything the database stores, as bytes: the SQLite file (with its WAL), or every
    /// row of every table of this server's PostgreSQL schema as text.
    pub async fn database_contents(&self) -> Vec<u8> {
        self.state.ledger.flush().await.unwrap();
        if !on_postgres() {
            let path = self.dir.path().join("quota.db");
            let mut bytes = std::fs::read(&path).unwrap();
            for suffix in ["-wal", "-shm"] {
                if let Ok(more) = std::fs::read(format!("{}{suffix}", path.display())) {
                    bytes.extend(more);
                }
            }
            return bytes;
        }
        quota_store::on_pool!(self.state.store.pool(), |p| {
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema()",
            )
            .fetch_all(p)
            .await
            .unwrap();
            let mut bytes = Vec::new();
            for t in tables {
                let rows: Option<String> =
                    sqlx::query_scalar(&format!("SELECT string_agg(r::text, chr(10)) FROM \"{t}\" r"))
                        .fetch_one(p)
                        .await
                        .unwrap();
                bytes.extend(rows.unwrap_or_default().into_bytes());
            }
            bytes
        })
    }

    /// An integer query (text arguments `$1`…) on this server's database, after a flush.
    pub async fn count(&self, sql: &str, args: &[&str]) -> i64 {
        self.state.ledger.flush().await.unwrap();
        quota_store::on_pool!(self.state.store.pool(), |p| {
            let mut q = sqlx::query_scalar(sql);
            for a in args {
                q = q.bind(*a);
            }
            q.fetch_one(p).await.unwrap()
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Register an account; returns (user id, session token).
    pub async fn register(&self, email: &str) -> (String, String) {
        let r = self
            .http
            .post(self.url("/auth/register"))
            .json(&json!({"email": email, "password": "correct horse"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "register {email}");
        let v: Value = r.json().await.unwrap();
        (v["user"]["id"].as_str().unwrap().to_string(), v["session_token"].as_str().unwrap().to_string())
    }

    /// Create a key of `mode` with a session; returns (key id, secret).
    pub async fn key(&self, session: &str, mode: &str) -> (String, String) {
        let r = self
            .http
            .post(self.url("/developers/keys"))
            .bearer_auth(session)
            .json(&json!({"name": format!("{mode} key"), "billing_mode": mode}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let v: Value = r.json().await.unwrap();
        (v["id"].as_str().unwrap().to_string(), v["key"].as_str().unwrap().to_string())
    }

    /// A new account with a key of `mode`; returns (user id, session, key secret).
    pub async fn developer(&self, mode: &str) -> (String, String, String) {
        let email = format!("{}@example.com", quota_core::ids::new_id("dev_").to_lowercase());
        let (user, session) = self.register(&email).await;
        let (_, key) = self.key(&session, mode).await;
        (user, session, key)
    }

    /// Credit a wallet through the ledger (as the admin CLI would).
    pub async fn credit(&self, user_id: &str, amount: i64) {
        self.state
            .ledger
            .transfer(quota_core::transfers::admin_credit(user_id, Credits::new(amount), 0))
            .await
            .unwrap();
    }

    pub async fn balance(&self, user_id: &str) -> i64 {
        self.state.ledger.balance(&AccountId::wallet(user_id)).await.unwrap().get()
    }

    /// The wallet's balance as stored (what survives a restart).
    pub async fn stored_balance(&self, user_id: &str) -> i64 {
        self.state.ledger.flush().await.unwrap();
        self.state.store.balance(&AccountId::wallet(user_id)).await.unwrap()
    }

    /// `GET path` with a bearer token, as JSON.
    pub async fn get_json(&self, path: &str, bearer: &str) -> Value {
        self.http.get(self.url(path)).bearer_auth(bearer).send().await.unwrap().json().await.unwrap()
    }

    /// `method path` with a bearer token (and a JSON body), as JSON.
    pub async fn call_json(&self, method: reqwest::Method, path: &str, bearer: &str, body: Option<Value>) -> Value {
        let mut rb = self.http.request(method, self.url(path)).bearer_auth(bearer);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        rb.send().await.unwrap().json().await.unwrap()
    }

    pub async fn chat(&self, key: &str, body: Value) -> reqwest::Response {
        self.http.post(self.url("/v1/chat/completions")).bearer_auth(key).json(&body).send().await.unwrap()
    }

    pub async fn assert_ledger_ok(&self) {
        self.state.ledger.flush().await.unwrap();
        let report = self.state.store.verify_ledger().await.unwrap();
        assert!(report.ok(), "ledger verify failed: {report:?}");
    }

    /// Count transfers whose cause is `cause`.
    pub async fn transfers_caused_by(&self, cause: &str) -> i64 {
        self.state.ledger.flush().await.unwrap();
        quota_store::on_pool!(self.state.store.pool(), |p| sqlx::query_scalar(
            "SELECT COUNT(*) FROM transfers WHERE cause = $1"
        )
        .bind(cause)
        .fetch_one(p)
        .await
        .unwrap())
    }

    pub async fn transfer_count(&self) -> i64 {
        self.state.ledger.flush().await.unwrap();
        quota_store::on_pool!(self.state.store.pool(), |p| sqlx::query_scalar("SELECT COUNT(*) FROM transfers")
            .fetch_one(p)
            .await
            .unwrap())
    }
}

/// A gateway whose provider `configure` points at `upstream_base_url`, with a developer account
/// holding a `developer` key: (server, user id, key, balance).
pub async fn developer_behind(
    upstream_base_url: String,
    configure: impl FnOnce(&mut Config, String),
) -> (TestServer, String, String, i64) {
    let s = TestServer::start_with(move |c| configure(c, upstream_base_url)).await;
    let (user, _, key) = s.developer("developer").await;
    let before = s.balance(&user).await;
    (s, user, key, before)
}

/// `{"error": {...}}` of a response, asserting its status.
pub async fn expect_error(resp: reqwest::Response, status: u16, code: &str) -> Value {
    let got = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    assert_eq!(got, status, "body: {text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("error body is not JSON: {text}"));
    assert_eq!(v["error"]["code"], code, "body: {text}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(v["error"]["type"].is_string());
    // SPEC §14: every error links to its section of the errors page.
    assert_eq!(v["error"]["docs_url"], format!("/docs/errors#{code}"), "body: {text}");
    v
}

/// The base cost of `usage` on `model` at its catalog price (SPEC §4.1).
pub fn cost(model: &str, usage: quota_core::Usage) -> i64 {
    let catalog = quota_core::Catalog::builtin();
    quota_core::billing::Charge::for_usage(catalog.get(model).unwrap(), &usage, quota_core::Margin::ZERO).total().get()
}

/// The hold the gateway takes for a chat completions `body` on a provider's route (SPEC §4.3(1)):
/// computed by the same code, from the parsed request.
pub fn chat_hold(body: &Value, margin: quota_core::Margin) -> i64 {
    let request = quota_providers::openai::ChatRequest::parse(body.to_string().as_bytes()).unwrap();
    let catalog = quota_core::Catalog::builtin();
    let model = catalog.get(&request.model).unwrap();
    let bound =
        quota_core::hold::HoldBound::new(model, &request.prompt_bound(), request.max_output(), request.choices());
    quota_core::hold::hold_amount(model, &bound, margin).total().get()
}

/// A prompt of at least `bytes` bytes: its hold bound covers a fake upstream reporting up to
/// `bytes` prompt tokens (SPEC §4.3(1): the hold is an upper bound, and settlement is capped
/// at it, so a fake must not report more than the request could really cost).
pub fn prompt_of(bytes: usize) -> String {
    "word ".repeat(bytes.div_ceil(5))
}

pub fn simple_chat(content: &str, max_tokens: u64) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens})
}

/// An OpenAI-shaped tool conversation for `model`: a system prompt, a question, the assistant's
/// call `call_id` of `get_weather` for Paris, its result, and a follow-up; with the tool offered.
pub fn weather_conversation(model: &str, call_id: &str) -> Value {
    json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": call_id, "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": call_id, "content": "18C"},
            {"role": "user", "content": "And Rome?"}
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather now",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
    })
}

/// `body` with the fields of `extra` set.
pub fn with(mut body: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().expect("an object of fields") {
        body[k] = v.clone();
    }
    body
}

/// Poll `check` until it yields a value, for at most `bound`; panics past it. For effects that
/// travel (another instance's cache, an expiry): the test waits exactly as long as they take.
pub async fn within<T, F, Fut>(bound: std::time::Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + bound;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "not within {bound:?}: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

//! The real `quota` binary as child processes on one database: start (waiting for its
//! "listening" line, never sleeping), the CLI, and checks on what they committed.

use quota_store::{on_pool, Store, StoreConfig};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub const QUOTA: &str = env!("CARGO_BIN_EXE_quota");

pub struct Proc {
    pub child: Child,
    pub base: String,
    /// Its stderr (the log), when started with [`spawn_logged`].
    pub log: Option<std::process::ChildStderr>,
}

impl Proc {
    /// Stop it as an operator would (SIGTERM: finish requests, flush) and return its log.
    #[cfg(unix)]
    pub fn stop(mut self) -> String {
        use std::io::Read;
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "quota serve exited {status} on SIGTERM");
        let mut log = String::new();
        if let Some(mut stderr) = self.log.take() {
            stderr.read_to_string(&mut log).unwrap();
        }
        log
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A working directory and a fresh database for `quota` processes.
pub struct Db {
    pub dir: tempfile::TempDir,
    pub url: String,
}

impl Db {
    pub async fn fresh() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let url = super::fresh_database_url(&dir).await;
        Db { dir, url }
    }

    /// The same database, opened from the test (for checks).
    pub async fn store(&self) -> Store {
        Store::open(&StoreConfig { database_url: self.url.clone(), max_connections: 2, ..Default::default() })
            .await
            .unwrap()
    }
}

/// Start `quota serve` and wait for its "listening" line (no sleeping).
pub fn spawn(db: &Db, extra_env: &[(&str, &str)]) -> Proc {
    start(db, extra_env, false)
}

/// As [`spawn`], with its log (stderr) kept for [`Proc::stop`].
pub fn spawn_logged(db: &Db, extra_env: &[(&str, &str)]) -> Proc {
    start(db, extra_env, true)
}

fn start(db: &Db, extra_env: &[(&str, &str)], logged: bool) -> Proc {
    let mut cmd = Command::new(QUOTA);
    cmd.args(["serve", "--port", "0", "--bind", "127.0.0.1"])
        .current_dir(db.dir.path())
        .env("QUOTA_DATABASE_URL", &db.url)
        .env("QUOTA_LOG", "warn")
        // Load from one key far beyond the default 100/min; limits have their own tests.
        .env("QUOTA_RATE_LIMIT_PER_MINUTE", "10000000")
        .env_remove("OPENAI_API_KEY")
        .envs(postgres_secret_key())
        .stdout(Stdio::piped())
        .stderr(if logged { Stdio::piped() } else { Stdio::null() });
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no listening line: {line}"));
    let log = child.stderr.take();
    Proc { child, base: format!("http://{addr}"), log }
}

pub fn cli(db: &Db, args: &[&str]) -> std::process::Output {
    Command::new(QUOTA)
        .args(args)
        .current_dir(db.dir.path())
        .env("QUOTA_DATABASE_URL", &db.url)
        .envs(postgres_secret_key())
        .output()
        .unwrap()
}

/// On PostgreSQL every instance needs the master key in its configuration (SPEC §12); on
/// SQLite the key file beside the database is used.
fn postgres_secret_key() -> Vec<(&'static str, String)> {
    if super::on_postgres() {
        vec![("QUOTA_SECRET_KEY", "7e".repeat(32))]
    } else {
        Vec::new()
    }
}

/// Register `crash@example.com` with a `test` key; returns (user id, session, key).
pub async fn setup_developer(http: &reqwest::Client, base: &str) -> (String, String, String) {
    let body = json!({"email": "crash@example.com", "password": "correct horse"});
    let r = send_json(http.post(format!("{base}/auth/register")).json(&body)).await;
    let session = r["session_token"].as_str().unwrap().to_string();
    let key = new_key(http, base, &session, "test").await;
    (r["user"]["id"].as_str().unwrap().to_string(), session, key)
}

/// A new key of `mode`; returns its secret.
pub async fn new_key(http: &reqwest::Client, base: &str, session: &str, mode: &str) -> String {
    let body = json!({"name": "load", "billing_mode": mode});
    let k = send_json(http.post(format!("{base}/developers/keys")).bearer_auth(session).json(&body)).await;
    k["key"].as_str().unwrap().to_string()
}

/// Send a request; its answer as JSON.
pub async fn send_json(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

/// Load `bases` with `clients` clients (see [`drive`]) and `kill -9` `victim` once `after`
/// requests were acknowledged: mid-load by construction, not by a timer. Returns every request
/// a client saw succeed, once all clients stopped.
pub async fn kill_mid_load(
    http: &reqwest::Client,
    bases: &[String],
    key: &str,
    (clients, per_client): (usize, usize),
    victim: &mut Proc,
    after: usize,
) -> Vec<(String, i64)> {
    let (clients, mut seen_rx) = drive(http, bases, key, clients, per_client);
    let mut seen = Vec::new();
    while seen.len() < after {
        seen.push(seen_rx.recv().await.expect("clients keep succeeding until the kill"));
    }
    victim.child.kill().unwrap(); // SIGKILL
    victim.child.wait().unwrap();
    for c in clients {
        c.await.unwrap();
    }
    while let Ok(s) = seen_rx.try_recv() {
        seen.push(s);
    }
    seen
}

/// Every request in `seen` (request id, credits it reported) is charged by exactly one
/// transfer, of what it reported.
pub async fn assert_charged_once(store: &Store, seen: &[(String, i64)]) {
    for (rid, credits) in seen {
        let rows: Vec<i64> =
            on_pool!(store.pool(), |p| sqlx::query_scalar("SELECT amount FROM transfers WHERE cause = $1")
                .bind(rid)
                .fetch_all(p)
                .await
                .unwrap());
        assert_eq!(rows, vec![*credits], "request {rid} must be charged once, {credits} credits");
    }
}

/// Everything ever debited from `user`'s wallet.
pub async fn charged_from(store: &Store, user: &str) -> i64 {
    on_pool!(store.pool(), |p| sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM transfers WHERE from_account = $1"
    )
    .bind(format!("wallet:{user}"))
    .fetch_one(p)
    .await
    .unwrap())
}

/// `clients` closed-loop clients, client `c` on `bases[c % bases.len()]`, each sending up to
/// `per_client` sandbox requests (every third one streamed) until one fails. Each request a
/// client saw succeed completely is sent on the channel as (request id, credits used).
fn drive(
    http: &reqwest::Client,
    bases: &[String],
    key: &str,
    clients: usize,
    per_client: usize,
) -> (Vec<tokio::task::JoinHandle<()>>, tokio::sync::mpsc::UnboundedReceiver<(String, i64)>) {
    let (seen_tx, seen_rx) = tokio::sync::mpsc::unbounded_channel::<(String, i64)>();
    let mut handles = Vec::new();
    for c in 0..clients {
        let (http, base, key, seen_tx) =
            (http.clone(), bases[c % bases.len()].clone(), key.to_string(), seen_tx.clone());
        handles.push(tokio::spawn(async move {
            for i in 0..per_client {
                let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": format!("client {c} request {i}")}], "max_tokens": 8, "stream": i % 3 == 0});
                let Ok(r) = http.post(format!("{base}/v1/chat/completions")).bearer_auth(&key).json(&body).send().await else { return };
                if r.status() != 200 {
                    return;
                }
                let Ok(text) = r.text().await else { return };
                // Only a complete answer counts as "seen to succeed".
                let quota = if text.starts_with('{') {
                    serde_json::from_str::<Value>(&text).ok().map(|v| v["quota"].clone())
                } else if text.ends_with("data: [DONE]\n\n") {
                    let events: Vec<&str> = text.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).collect();
                    serde_json::from_str::<Value>(events[events.len() - 2]).ok().map(|v| v["quota"].clone())
                } else {
                    None
                };
                let Some(q) = quota else { return };
                let _ = seen_tx.send((q["request_id"].as_str().unwrap().to_string(), q["credits_used"].as_i64().unwrap()));
            }
        }));
    }
    (handles, seen_rx)
}

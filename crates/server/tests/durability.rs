//! Crash safety (SPEC §4.3.6, DESIGN §4): `kill -9` the real `quota` binary mid-load, restart
//! it, and check that the ledger verifies and that every request the client saw succeed is
//! charged exactly once. Also the admin CLI against a running server.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const QUOTA: &str = env!("CARGO_BIN_EXE_quota");

struct Proc {
    child: Child,
    base: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn db_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("quota.db").display())
}

/// Start `quota serve` and wait for its "listening" line (no sleeping).
fn spawn(dir: &tempfile::TempDir, extra_env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(QUOTA);
    cmd.args(["serve", "--port", "0", "--bind", "127.0.0.1"])
        .current_dir(dir.path())
        .env("QUOTA_DATABASE_URL", db_url(dir))
        .env("QUOTA_LOG", "warn")
        // Load from one key far beyond the default 100/min; limits have their own tests.
        .env("QUOTA_RATE_LIMIT_PER_MINUTE", "10000000")
        .env_remove("OPENAI_API_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
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
    Proc { child, base: format!("http://{addr}") }
}

fn cli(dir: &tempfile::TempDir, args: &[&str]) -> std::process::Output {
    Command::new(QUOTA).args(args).current_dir(dir.path()).env("QUOTA_DATABASE_URL", db_url(dir)).output().unwrap()
}

async fn setup_developer(http: &reqwest::Client, base: &str) -> (String, String) {
    let post = |path: &str, bearer: Option<&str>, body: Value| {
        let mut rb = http.post(format!("{base}{path}")).json(&body);
        if let Some(b) = bearer {
            rb = rb.bearer_auth(b);
        }
        async move { rb.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let r = post("/auth/register", None, json!({"email": "crash@example.com", "password": "correct horse"})).await;
    let session = r["session_token"].as_str().unwrap().to_string();
    let k = post("/developers/keys", Some(&session), json!({"name": "load", "billing_mode": "test"})).await;
    (r["user"]["id"].as_str().unwrap().to_string(), k["key"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_load_loses_no_acknowledged_charge_and_charges_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = spawn(&dir, &[("QUOTA_SQLITE_SYNCHRONOUS", "normal")]);
    let http = reqwest::Client::new();
    let (user, key) = setup_developer(&http, &server.base).await;
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<(String, i64)>();
    // Eight clients hammer the server until it dies.
    let mut clients = Vec::new();
    for c in 0..8 {
        let (http, base, key, seen_tx) = (http.clone(), server.base.clone(), key.clone(), seen_tx.clone());
        clients.push(tokio::spawn(async move {
            for i in 0..10_000 {
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
    drop(seen_tx);
    // Kill after 300 acknowledged requests: mid-load by construction, not by a timer.
    let mut seen = Vec::new();
    while seen.len() < 300 {
        seen.push(seen_rx.recv().await.expect("clients keep succeeding until the kill"));
    }
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    for c in clients {
        c.await.unwrap();
    }
    while let Ok(s) = seen_rx.try_recv() {
        seen.push(s);
    }
    // Restart on the same file: the ledger must verify.
    let server = spawn(&dir, &[]);
    let out = cli(&dir, &["ledger", "verify"]);
    assert!(out.status.success(), "ledger verify failed: {}", String::from_utf8_lossy(&out.stdout));
    // Every acknowledged request is charged exactly once, for what it reported.
    let pool = sqlx::SqlitePool::connect(&db_url(&dir)).await.unwrap();
    for (rid, credits) in &seen {
        let rows: Vec<(i64,)> =
            sqlx::query_as("SELECT amount FROM transfers WHERE cause = $1").bind(rid).fetch_all(&pool).await.unwrap();
        assert_eq!(rows.len(), 1, "request {rid} charged {} times", rows.len());
        assert_eq!(rows[0].0, *credits);
    }
    // And the restarted server reads the same balance the ledger holds.
    let bal: Value =
        http.get(format!("{}/v1/balance", server.base)).bearer_auth(&key).send().await.unwrap().json().await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT balance FROM accounts WHERE id = $1")
        .bind(format!("wallet:{user}"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(bal["balance"].as_i64().unwrap(), stored);
    let charged: i64 = sqlx::query_scalar("SELECT COALESCE(SUM(amount), 0) FROM transfers WHERE from_account = $1")
        .bind(format!("wallet:{user}"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 1_000_000 - charged);
    assert!(seen.len() >= 300);
}

#[tokio::test]
async fn admin_credit_reaches_a_running_server_and_rejects_bad_amounts() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(&dir, &[]);
    let http = reqwest::Client::new();
    let (_, key) = setup_developer(&http, &server.base).await;
    for bad in ["-5", "0", "1.5", "abc", "1000000000000000001", "99999999999999999999999"] {
        let out = cli(&dir, &["admin", "credit", "crash@example.com", "--", bad]);
        assert!(!out.status.success(), "{bad} was accepted");
    }
    let out = cli(&dir, &["admin", "credit", "nobody@example.com", "5"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no account"));
    let out = cli(&dir, &["admin", "credit", "CRASH@example.com", "2500000"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The server's ledger tick picks up the other process's transfer; poll the API for it.
    let mut balance = 0;
    for _ in 0..200 {
        let v: Value = http
            .get(format!("{}/v1/balance", server.base))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        balance = v["balance"].as_i64().unwrap();
        if balance == 3_500_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(balance, 3_500_000);
    let list = cli(&dir, &["admin", "list-accounts"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains("crash@example.com") && text.contains("3500000"), "{text}");
    let created = cli(&dir, &["admin", "create-account", "ops@example.com", "--password", "long enough"]);
    assert!(created.status.success());
    let dup = cli(&dir, &["admin", "create-account", "ops@example.com", "--password", "long enough"]);
    assert!(!dup.status.success());
    let login = http
        .post(format!("{}/auth/login", server.base))
        .json(&json!({"email": "ops@example.com", "password": "long enough"}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    assert!(cli(&dir, &["ledger", "verify"]).status.success());
}

#[test]
fn migrate_and_verify_work_on_a_fresh_database() {
    let dir = tempfile::tempdir().unwrap();
    let out = cli(&dir, &["migrate"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cli(&dir, &["ledger", "verify"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("ledger OK: 0 transfers"));
}

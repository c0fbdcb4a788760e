//! Crash safety (SPEC §4.3.6, DESIGN §4): `kill -9` the real `quota` binary mid-load, restart
//! it, and check that the ledger verifies and that every request the client saw succeed is
//! charged exactly once. Also the admin CLI against a running server. On the backend the run
//! selects (`common::fresh_database_url`).

mod common;

use common::fake_openai::{FakeUpstream, Script};
use common::process::{
    assert_charged_once, charged_from, cli, kill_mid_load, new_key, send_json, setup_developer, spawn, Db,
};
use common::{skip_unless_postgres, within};
use quota_core::Usage;
use quota_store::{on_pool, Pool, Store};
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_load_loses_no_acknowledged_charge_and_charges_nothing_twice() {
    let db = Db::fresh().await;
    let mut server = spawn(&db, &[("QUOTA_SQLITE_SYNCHRONOUS", "normal")]);
    let http = reqwest::Client::new();
    let (user, _, key) = setup_developer(&http, &server.base).await;
    // Eight clients hammer the server; it dies after 300 acknowledged requests.
    let seen = kill_mid_load(&http, &[server.base.clone()], &key, (8, 10_000), &mut server, 300).await;
    // Restart on the same file: the ledger must verify.
    let server = spawn(&db, &[]);
    let out = cli(&db, &["ledger", "verify"]);
    assert!(out.status.success(), "ledger verify failed: {}", String::from_utf8_lossy(&out.stdout));
    // Every acknowledged request is charged exactly once, for what it reported.
    let store = db.store().await;
    assert_charged_once(&store, &seen).await;
    // And the restarted server reads the same balance the ledger holds.
    let bal: Value =
        http.get(format!("{}/v1/balance", server.base)).bearer_auth(&key).send().await.unwrap().json().await.unwrap();
    let stored = store.balance(&quota_core::AccountId::wallet(&user)).await.unwrap();
    assert_eq!(bal["balance"].as_i64().unwrap(), stored);
    assert_eq!(stored, 1_000_000 - charged_from(&store, &user).await);
    assert!(seen.len() >= 300);
}

/// Open holds, and what is held on `user`'s wallet (PostgreSQL: the holds are rows).
async fn holds_and_held(store: &Store, user: &str) -> (i64, i64) {
    let Pool::Postgres(p) = store.pool() else { panic!("holds live in the database on PostgreSQL only") };
    let holds: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM holds").fetch_one(p).await.unwrap();
    let held: Option<i64> = sqlx::query_scalar("SELECT held FROM accounts WHERE id = $1")
        .bind(format!("wallet:{user}"))
        .fetch_optional(p)
        .await
        .unwrap();
    (holds, held.unwrap_or(0))
}

/// Seconds a hold lives in the crash test: longer than setup and load before the kill, so the
/// dead instance's holds are still there when it dies and only the survivor can free them.
const CRASH_HOLD_TTL_SECS: u64 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_instance_on_postgres_frees_its_holds_and_charges_nothing_twice() {
    if skip_unless_postgres("kill_9_of_one_instance_on_postgres_frees_its_holds_and_charges_nothing_twice") {
        return;
    }
    // An upstream whose stream never finishes: a request on A sits with its hold open.
    let upstream = FakeUpstream::start().await;
    upstream.script(Script::GatedStream { prompt: 5, completion: 3 });
    let _gate = upstream.gate();
    let db = Db::fresh().await;
    let ttl = CRASH_HOLD_TTL_SECS.to_string();
    let env = [
        ("QUOTA_HOLD_TTL_SECS", ttl.as_str()),
        ("QUOTA_OPENAI_BASE_URL", upstream.base_url.as_str()),
        ("QUOTA_OPENAI_API_KEY", "sk-fake"),
    ];
    let mut a = spawn(&db, &env);
    let b = spawn(&db, &env);
    let http = reqwest::Client::new();
    let (user, session, key) = setup_developer(&http, &a.base).await;
    let production = new_key(&http, &a.base, &session, "developer").await;
    let stuck = {
        let (http, url) = (http.clone(), format!("{}/v1/chat/completions", a.base));
        let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hang"}], "max_tokens": 50, "stream": true});
        tokio::spawn(async move {
            // Only A's death ends it; anything else is reported by the check below.
            match http.post(url).bearer_auth(production).json(&body).send().await {
                Ok(r) => match r.text().await {
                    Ok(text) => format!("complete: {text}"),
                    Err(e) => format!("cut off: {e}"),
                },
                Err(e) => format!("{e}"),
            }
        })
    };
    let store = db.store().await;
    within(Duration::from_secs(5), "the stuck request's hold is in the database", || async {
        assert!(!stuck.is_finished(), "the stuck request ended early");
        (holds_and_held(&store, &user).await.0 >= 1).then_some(())
    })
    .await;
    // Load on both instances; A dies after 100 acknowledged requests.
    let seen = kill_mid_load(&http, &[a.base.clone(), b.base.clone()], &key, (8, 100), &mut a, 100).await;
    let ended = stuck.await.unwrap();
    assert!(!ended.starts_with("complete"), "the stuck request cannot have completed: {ended}");
    // B frees every hold A left once it expires: nothing stays reserved for a dead instance.
    within(Duration::from_secs(CRASH_HOLD_TTL_SECS + 10), "the survivor frees the dead instance's holds", || async {
        (holds_and_held(&store, &user).await == (0, 0)).then_some(())
    })
    .await;
    let metrics = http.get(format!("{}/metrics", b.base)).send().await.unwrap().text().await.unwrap();
    let expired: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("quota_ledger_holds_expired_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(expired >= 1.0, "instance B expired the dead instance's holds:\n{metrics}");
    // Nothing charged twice, nothing lost, the ledger verifies.
    let out = cli(&db, &["ledger", "verify"]);
    assert!(out.status.success(), "ledger verify failed: {}", String::from_utf8_lossy(&out.stdout));
    assert_charged_once(&store, &seen).await;
    let stored = store.balance(&quota_core::AccountId::wallet(&user)).await.unwrap();
    assert_eq!(stored, 1_000_000 - charged_from(&store, &user).await);
    assert!(seen.len() >= 100);
}

/// Two `quota serve` processes on one PostgreSQL, 200 parallel requests spread over both,
/// against a wallet that affords exactly 50: every hold is committed in the database before the
/// upstream runs, so exactly 50 succeed across both, the wallet ends at 0 with no hold left, and
/// the ledger verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_postgres_let_exactly_the_affordable_fifty_of_two_hundred_through() {
    if skip_unless_postgres("two_processes_on_one_postgres_let_exactly_the_affordable_fifty_of_two_hundred_through") {
        return;
    }
    let db = Db::fresh().await;
    let env = [("QUOTA_WELCOME_CREDITS", "0")];
    let (a, b) = (spawn(&db, &env), spawn(&db, &env));
    let http = reqwest::Client::new();
    let (user, _, key) = setup_developer(&http, &a.base).await;
    let per_request = common::cost("gpt-4o-mini", Usage { input_tokens: 8, output_tokens: 10, ..Default::default() });
    let out = cli(&db, &["admin", "credit", "crash@example.com", &(50 * per_request).to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut tasks = Vec::new();
    for i in 0..200 {
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        let (http, url, key) = (http.clone(), format!("{base}/v1/chat/completions"), key.clone());
        tasks.push(tokio::spawn(async move {
            let mut body = common::simple_chat("hi", 10);
            body["stream"] = json!(i % 4 < 2);
            let r = http.post(url).bearer_auth(key).json(&body).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            (200, _) => ok += 1,
            (402, text) if text.contains("insufficient_credits") => refused += 1,
            (status, text) => panic!("unexpected {status}: {text}"),
        }
    }
    assert_eq!((ok, refused), (50, 150));
    let store = db.store().await;
    assert_eq!(store.balance(&quota_core::AccountId::wallet(&user)).await.unwrap(), 0);
    assert_eq!(holds_and_held(&store, &user).await, (0, 0), "no hold outlives its request");
    let out = cli(&db, &["ledger", "verify"]);
    assert!(out.status.success(), "ledger verify failed: {}", String::from_utf8_lossy(&out.stdout));
}

#[tokio::test]
async fn admin_credit_reaches_a_running_server_and_rejects_bad_amounts() {
    let db = Db::fresh().await;
    let server = spawn(&db, &[]);
    let http = reqwest::Client::new();
    let (_, _, key) = setup_developer(&http, &server.base).await;
    for bad in ["-5", "0", "1.5", "abc", "1000000000000000001", "99999999999999999999999"] {
        let out = cli(&db, &["admin", "credit", "crash@example.com", "--", bad]);
        assert!(!out.status.success(), "{bad} was accepted");
    }
    let out = cli(&db, &["admin", "credit", "nobody@example.com", "5"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no account"));
    let out = cli(&db, &["admin", "credit", "CRASH@example.com", "2500000"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The server sees the other process's transfer (SQLite: at its next ledger tick).
    within(Duration::from_secs(5), "the admin credit reaches the running server", || async {
        let v = send_json(http.get(format!("{}/v1/balance", server.base)).bearer_auth(&key)).await;
        (v["balance"].as_i64() == Some(3_500_000)).then_some(())
    })
    .await;
    let list = cli(&db, &["admin", "list-accounts"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains("crash@example.com") && text.contains("3500000"), "{text}");
    let created = cli(&db, &["admin", "create-account", "ops@example.com", "--password", "long enough"]);
    assert!(created.status.success());
    let dup = cli(&db, &["admin", "create-account", "ops@example.com", "--password", "long enough"]);
    assert!(!dup.status.success());
    let login = http
        .post(format!("{}/auth/login", server.base))
        .json(&json!({"email": "ops@example.com", "password": "long enough"}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    assert!(cli(&db, &["ledger", "verify"]).status.success());
}

#[tokio::test]
async fn migrate_and_verify_work_on_a_fresh_database() {
    let db = Db::fresh().await;
    let out = cli(&db, &["migrate"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cli(&db, &["ledger", "verify"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("ledger OK: 0 transfers"));
}

/// A loopback webhook receiver: answers 200 and keeps every body.
async fn receiver() -> (String, std::sync::Arc<parking_lot::Mutex<Vec<Value>>>) {
    let got: std::sync::Arc<parking_lot::Mutex<Vec<Value>>> = Default::default();
    let g = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: bytes::Bytes| {
            let g = g.clone();
            async move {
                g.lock().push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_charges_and_their_delivery_loses_no_event() {
    // The first process charges but never delivers (its worker's next tick is an hour away) and
    // dies mid-load; the restarted process delivers every event of a committed charge, once,
    // and none for a request that was not charged.
    let db = Db::fresh().await;
    let (hook, got) = receiver().await;
    // The receiver is on 127.0.0.1: private webhook targets allowed explicitly (SPEC §8).
    let mut first = spawn(&db, &[("QUOTA_WEBHOOK_POLL_MS", "3600000"), ("QUOTA_WEBHOOK_ALLOW_PRIVATE_URLS", "true")]);
    let http = reqwest::Client::new();
    let (_, session, key) = setup_developer(&http, &first.base).await;
    let body = json!({"url": hook, "events": ["usage.completed"]});
    let ep = http.post(format!("{}/v1/webhooks", first.base)).bearer_auth(&session).json(&body).send().await.unwrap();
    assert_eq!(ep.status(), 201);
    let seen = kill_mid_load(&http, &[first.base.clone()], &key, (4, 10_000), &mut first, 100).await;
    assert!(got.lock().is_empty(), "the first process delivered nothing");

    let _second = spawn(&db, &[("QUOTA_WEBHOOK_POLL_MS", "20"), ("QUOTA_WEBHOOK_ALLOW_PRIVATE_URLS", "true")]);
    let store = db.store().await;
    let charged: Vec<String> = on_pool!(store.pool(), |p| sqlx::query_scalar(
        "SELECT DISTINCT cause FROM transfers WHERE kind IN ('usage_charge', 'sandbox_charge')"
    )
    .fetch_all(p)
    .await
    .unwrap());
    // Bounded wait for the second process to deliver one event per committed charge.
    let wanted = charged.len();
    within(Duration::from_secs(30), "every committed charge's event delivered", || {
        let n = got.lock().len();
        async move { (n >= wanted).then_some(()) }
    })
    .await;
    let delivered: Vec<Value> = got.lock().clone();
    let mut request_ids: Vec<String> =
        delivered.iter().map(|b| b["data"]["request_id"].as_str().unwrap().to_string()).collect();
    request_ids.sort();
    assert!(charged.len() >= seen.len() && seen.len() >= 100);
    let mut expected = charged;
    expected.sort();
    assert_eq!(request_ids, expected, "one delivery per committed charge, none for anything else");
    for (rid, _) in &seen {
        assert!(request_ids.contains(rid), "acknowledged request {rid} has its usage.completed");
    }
    let mut event_ids: Vec<&str> = delivered.iter().map(|b| b["id"].as_str().unwrap()).collect();
    event_ids.sort();
    event_ids.dedup();
    assert_eq!(event_ids.len(), delivered.len(), "each event delivered once");
}

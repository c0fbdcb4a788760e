//! SPEC §7: GCRA limits per key (default and override), per IP on register and login, the
//! headers, 429s that are neither forwarded nor charged, limits shared through Redis, and what
//! happens when Redis goes away. Time is an injected clock: no test sleeps through a refill.

mod common;

use common::{expect_error, simple_chat, skip_unless_postgres, within, TestServer};
use quota_server::clock::Clock;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const START_US: i64 = 1_800_000_000_000_000;

async fn with_clock(configure: impl FnOnce(&mut quota_server::Config)) -> (TestServer, Arc<Clock>) {
    let clock = Arc::new(Clock::manual(START_US));
    let s = TestServer::start_with_clock(configure, clock.clone()).await;
    (s, clock)
}

async fn limited_key(s: &TestServer, per_minute: i64) -> (String, String, String, String) {
    let (user, session) = s.register(&format!("{}@example.com", quota_core::ids::new_id("rl").to_lowercase())).await;
    let r: Value = s
        .http
        .post(s.url("/developers/keys"))
        .bearer_auth(&session)
        .json(&json!({"name": "limited", "billing_mode": "test", "rate_limit_per_minute": per_minute}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (user, session, r["id"].as_str().unwrap().into(), r["key"].as_str().unwrap().into())
}

#[tokio::test]
async fn a_burst_at_the_limit_passes_and_the_next_is_429_uncharged() {
    let (s, _clock) = with_clock(|_| {}).await;
    let (user, _, _, key) = limited_key(&s, 5).await;
    for i in 0..5 {
        let r = s.chat(&key, simple_chat("hi", 3)).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-ratelimit-limit"], "5");
        assert_eq!(r.headers()["x-ratelimit-remaining"], (4 - i).to_string().as_str());
        assert_eq!(r.headers()["ratelimit-policy"], "5;w=60");
    }
    let before = s.stored_balance(&user).await;
    let usage_before: i64 =
        quota_store::on_pool!(s.state.store.pool(), |p| sqlx::query_scalar("SELECT COUNT(*) FROM usage_records")
            .fetch_one(p)
            .await
            .unwrap());
    let r = s.chat(&key, simple_chat("hi", 3)).await;
    assert_eq!(r.headers()["retry-after"], "12", "one request per 12 s at 5/min");
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
    assert!(r.headers()["ratelimit"].to_str().unwrap().starts_with("limit=5, remaining=0"));
    expect_error(r, 429, "rate_limit_exceeded").await;
    assert_eq!(s.stored_balance(&user).await, before, "a refused request is not charged");
    let usage_after: i64 =
        quota_store::on_pool!(s.state.store.pool(), |p| sqlx::query_scalar("SELECT COUNT(*) FROM usage_records")
            .fetch_one(p)
            .await
            .unwrap());
    assert_eq!(usage_after, usage_before, "nor recorded as a request");
}

#[tokio::test]
async fn the_allowance_refills_on_the_clock() {
    let (s, clock) = with_clock(|_| {}).await;
    let (_, _, _, key) = limited_key(&s, 6).await;
    for _ in 0..6 {
        assert_eq!(s.chat(&key, simple_chat("hi", 3)).await.status(), 200);
    }
    assert_eq!(s.chat(&key, simple_chat("hi", 3)).await.status(), 429);
    clock.advance(Duration::from_micros(9_999_999));
    assert_eq!(s.chat(&key, simple_chat("hi", 3)).await.status(), 429, "not yet: one per 10 s");
    clock.advance(Duration::from_micros(1));
    assert_eq!(s.chat(&key, simple_chat("hi", 3)).await.status(), 200);
    clock.advance(Duration::from_micros(60_000_000));
    let r = s.chat(&key, simple_chat("hi", 3)).await;
    assert_eq!(r.headers()["x-ratelimit-remaining"], "5", "a quiet minute restores the whole burst");
}

#[tokio::test]
async fn the_default_is_100_per_minute_and_every_v1_response_says_so() {
    let (s, _) = with_clock(|c| {
        c.rate_limit_per_minute = 100;
        c.welcome_credits = 0;
    })
    .await;
    let (_, _, key) = s.developer("test").await;
    let r = s.http.get(s.url("/v1/balance")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(r.headers()["x-ratelimit-limit"], "100");
    assert_eq!(r.headers()["x-ratelimit-remaining"], "99");
    let reset: i64 = r.headers()["x-ratelimit-reset"].to_str().unwrap().parse().unwrap();
    let now = quota_store::now_ms() / 1000;
    assert!((now..=now + 61).contains(&reset), "reset is a Unix time within the window");
    let r = s.http.get(s.url("/v1/models")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(r.headers()["x-ratelimit-remaining"], "98");
    // Error answers carry them too.
    let r = s.chat(&key, simple_chat("hi", 3)).await;
    assert_eq!(r.headers()["x-ratelimit-remaining"], "97");
    expect_error(r, 402, "insufficient_credits").await;
    for _ in 0..97 {
        s.http.get(s.url("/v1/balance")).bearer_auth(&key).send().await.unwrap();
    }
    expect_error(s.http.get(s.url("/v1/balance")).bearer_auth(&key).send().await.unwrap(), 429, "rate_limit_exceeded")
        .await;
}

#[tokio::test]
async fn a_key_override_can_be_raised_and_lowered_live() {
    override_changes_apply_at_once(None).await;
}

#[tokio::test]
async fn a_key_override_changes_at_once_with_shared_limits_too() {
    let Some(url) = redis_url() else { return };
    override_changes_apply_at_once(Some(url)).await;
}

async fn override_changes_apply_at_once(redis: Option<String>) {
    let (s, _) = with_clock(move |c| c.redis_url = redis).await;
    let (_, session, id, key) = limited_key(&s, 2).await;
    for _ in 0..2 {
        assert_eq!(s.chat(&key, simple_chat("hi", 3)).await.status(), 200);
    }
    assert_eq!(s.chat(&key, simple_chat("hi", 3)).await.status(), 429);
    let patch = |limit: Value| {
        s.http
            .patch(s.url(&format!("/developers/keys/{id}")))
            .bearer_auth(&session)
            .json(&json!({"rate_limit_per_minute": limit}))
            .send()
    };
    assert_eq!(patch(json!(60)).await.unwrap().status(), 200);
    let r = s.chat(&key, simple_chat("hi", 3)).await;
    assert_eq!(r.status(), 200, "raised at once");
    assert_eq!(r.headers()["x-ratelimit-limit"], "60");
    assert_eq!(patch(json!(1)).await.unwrap().status(), 200);
    let r = s.chat(&key, simple_chat("hi", 3)).await;
    assert_eq!(r.status(), 429, "lowered at once");
    assert_eq!(r.headers()["x-ratelimit-limit"], "1");
    // Clearing the override falls back to the server default.
    assert_eq!(patch(Value::Null).await.unwrap().status(), 200);
    let r = s.chat(&key, simple_chat("hi", 3)).await;
    assert_eq!(r.headers()["x-ratelimit-limit"], s.state.config.rate_limit_per_minute.to_string().as_str());
}

#[tokio::test]
async fn register_is_limited_to_3_and_login_to_5_per_minute_per_ip() {
    let (s, clock) = with_clock(|c| {
        c.register_rate_limit_per_minute = 3;
        c.login_rate_limit_per_minute = 5;
    })
    .await;
    let register = |i: usize| {
        s.http
            .post(s.url("/auth/register"))
            .json(&json!({"email": format!("ip{i}@example.com"), "password": "correct horse"}))
            .send()
    };
    for i in 0..3 {
        assert_eq!(register(i).await.unwrap().status(), 201);
    }
    let r = register(3).await.unwrap();
    assert_eq!(r.headers()["retry-after"], "20");
    expect_error(r, 429, "rate_limit_exceeded").await;
    assert!(s.state.store.user_by_email("ip3@example.com").await.unwrap().is_none(), "nothing was created");
    let login = || {
        s.http
            .post(s.url("/auth/login"))
            .json(&json!({"email": "ip0@example.com", "password": "wrong password"}))
            .send()
    };
    for _ in 0..5 {
        assert_eq!(login().await.unwrap().status(), 401);
    }
    expect_error(login().await.unwrap(), 429, "rate_limit_exceeded").await;
    clock.advance(Duration::from_micros(20_000_000));
    assert_eq!(register(4).await.unwrap().status(), 201);
}

#[tokio::test]
async fn forwarded_for_is_used_only_when_trusted() {
    let (s, _) = with_clock(|c| {
        c.register_rate_limit_per_minute = 1;
        c.trusted_proxies = vec!["127.0.0.1".into(), "10.0.0.0/8".into()];
    })
    .await;
    let register = |i: usize, ip: &str| {
        s.http
            .post(s.url("/auth/register"))
            .header("x-forwarded-for", format!("{ip}, 10.0.0.1"))
            .json(&json!({"email": format!("fw{i}@example.com"), "password": "correct horse"}))
            .send()
    };
    assert_eq!(register(0, "203.0.113.1").await.unwrap().status(), 201);
    assert_eq!(register(1, "203.0.113.2").await.unwrap().status(), 201, "another client");
    assert_eq!(register(2, "203.0.113.1").await.unwrap().status(), 429);
    let (s, _) = with_clock(|c| c.register_rate_limit_per_minute = 1).await;
    let register = |i: usize, ip: &str| {
        s.http
            .post(s.url("/auth/register"))
            .header("x-forwarded-for", ip.to_string())
            .json(&json!({"email": format!("nf{i}@example.com"), "password": "correct horse"}))
            .send()
    };
    assert_eq!(register(0, "203.0.113.1").await.unwrap().status(), 201);
    assert_eq!(register(1, "203.0.113.2").await.unwrap().status(), 429, "an untrusted header changes nothing");
}

fn redis_url() -> Option<String> {
    match std::env::var("QUOTA_TEST_REDIS_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            eprintln!("skipped: QUOTA_TEST_REDIS_URL is not set");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_redis_let_100_through_not_200() {
    let Some(url) = redis_url() else { return };
    let a = TestServer::start_with({
        let url = url.clone();
        move |c| {
            c.redis_url = Some(url);
            c.rate_limit_per_minute = 100;
        }
    })
    .await;
    let b = TestServer::start_sharing(&a, move |c| {
        c.redis_url = Some(url);
        c.rate_limit_per_minute = 100;
    })
    .await;
    let (_, _, key) = a.developer("test").await;
    let mut ok = 0;
    let mut refused = 0;
    let mut remaining_seen = Vec::new();
    for i in 0..200 {
        let s = if i % 2 == 0 { &a } else { &b };
        let r = s.http.get(s.url("/v1/balance")).bearer_auth(&key).send().await.unwrap();
        match r.status().as_u16() {
            200 => {
                ok += 1;
                remaining_seen.push(r.headers()["x-ratelimit-remaining"].to_str().unwrap().parse::<i64>().unwrap());
            }
            429 => refused += 1,
            other => panic!("unexpected {other}"),
        }
    }
    // Requests made within the same second may refill one slot (100/min = one per 0.6 s).
    assert!((100..=102).contains(&ok), "{ok} passed across two instances");
    assert_eq!(ok + refused, 200);
    // The headers count down across both instances as one sequence.
    assert_eq!(remaining_seen[..10].to_vec(), (90..100).rev().collect::<Vec<i64>>());
}

#[tokio::test]
async fn an_unreachable_redis_falls_back_to_per_instance_limits() {
    let s = TestServer::start_with(|c| {
        c.redis_url = Some("redis://127.0.0.1:1".into());
        c.rate_limit_per_minute = 3;
    })
    .await;
    let (_, _, key) = s.developer("test").await;
    for _ in 0..3 {
        let r = s.chat(&key, simple_chat("hi", 3)).await;
        assert_eq!(r.status(), 200, "requests keep working without Redis");
        assert!(r.headers().contains_key("x-ratelimit-remaining"));
    }
    assert_eq!(s.chat(&key, simple_chat("hi", 3)).await.status(), 429, "and are still limited, per instance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_mid_run_does_not_fail_requests() {
    if redis_url().is_none() {
        return;
    }
    // A Redis of this test's own, so stopping it touches nothing else.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut redis = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server is installed where QUOTA_TEST_REDIS_URL is set");
    let url = format!("redis://127.0.0.1:{port}");
    // Wait until it accepts connections (bounded).
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut up = false;
    for _ in 0..200 {
        if let Ok(mut c) = client.get_multiplexed_async_connection().await {
            if redis::cmd("PING").query_async::<String>(&mut c).await.is_ok() {
                up = true;
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(up, "test redis did not start");
    let s = TestServer::start_with(move |c| c.redis_url = Some(url)).await;
    let (_, _, key) = s.developer("test").await;
    assert_eq!(s.chat(&key, simple_chat("hi", 3)).await.status(), 200);
    redis.kill().unwrap();
    redis.wait().unwrap();
    for _ in 0..5 {
        assert_eq!(s.chat(&key, simple_chat("hi", 3)).await.status(), 200);
    }
    let rendered = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(rendered.contains("quota_ratelimit_redis_fallback_total"), "the fallback is visible in metrics");
}

#[tokio::test]
async fn the_token_endpoint_is_limited_per_client() {
    let (s, _) = with_clock(|c| c.token_rate_limit_per_minute = 2).await;
    let app = s.app(json!({})).await;
    for _ in 0..2 {
        let r =
            s.token_request(&app, &[("grant_type", "refresh_token"), ("refresh_token", "quota_refresh_nope")]).await;
        assert_eq!(r.status(), 400, "a bad grant is still an answer, not a refusal");
    }
    let r = s.token_request(&app, &[("grant_type", "refresh_token"), ("refresh_token", "quota_refresh_nope")]).await;
    assert!(r.headers().contains_key("retry-after"));
    expect_error(r, 429, "rate_limit_exceeded").await;
    // Another client is not affected.
    let other = s.app(json!({})).await;
    let r = s.token_request(&other, &[("grant_type", "refresh_token"), ("refresh_token", "quota_refresh_nope")]).await;
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn the_native_routes_carry_the_headers_and_share_the_keys_limit() {
    let (s, _) = with_clock(|_| {}).await;
    let (_, _, _, key) = limited_key(&s, 2).await;
    let r = s
        .http
        .post(s.url("/v1/messages"))
        .header("x-api-key", &key)
        .json(&json!({"model": "claude-haiku-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ratelimit-remaining"], "1");
    let r = s
        .http
        .post(s.url("/v1beta/models/gemini-2.5-flash:generateContent"))
        .header("x-goog-api-key", &key)
        .json(&json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
    let r = s.chat(&key, simple_chat("hi", 3)).await;
    expect_error(r, 429, "rate_limit_exceeded").await;
}

#[tokio::test]
async fn user_tokens_are_limited_per_app_and_user() {
    let (s, _) = with_clock(|c| c.rate_limit_per_minute = 2).await;
    let app = s.app(json!({})).await;
    let (_, _, alice) = s.connected_user(&app, "openid credits.spend credits.read").await;
    let (_, _, bob) = s.connected_user(&app, "openid credits.spend credits.read").await;
    let alice = alice["access_token"].as_str().unwrap().to_string();
    let bob = bob["access_token"].as_str().unwrap().to_string();
    for _ in 0..2 {
        assert_eq!(s.http.get(s.url("/v1/balance")).bearer_auth(&alice).send().await.unwrap().status(), 200);
    }
    expect_error(
        s.http.get(s.url("/v1/balance")).bearer_auth(&alice).send().await.unwrap(),
        429,
        "rate_limit_exceeded",
    )
    .await;
    assert_eq!(
        s.http.get(s.url("/v1/balance")).bearer_auth(&bob).send().await.unwrap().status(),
        200,
        "Bob has his own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_override_changed_on_one_instance_applies_on_another_within_a_second() {
    if skip_unless_postgres("a_key_override_changed_on_one_instance_applies_on_another_within_a_second") {
        return;
    }
    let (a, _) = with_clock(|_| {}).await;
    let b = TestServer::start_sharing(&a, |_| {}).await;
    let (_, session, id, key) = limited_key(&a, 2).await;
    let limit_on_b = || async {
        let r = b.http.get(b.url("/v1/balance")).bearer_auth(&key).send().await.unwrap();
        r.headers()["x-ratelimit-limit"].to_str().unwrap().to_string()
    };
    assert_eq!(limit_on_b().await, "2", "B has the key cached with its override");
    for (limit, shown) in [(json!(60), "60"), (json!(1), "1")] {
        let r = a
            .http
            .patch(a.url(&format!("/developers/keys/{id}")))
            .bearer_auth(&session)
            .json(&json!({ "rate_limit_per_minute": limit }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        within(Duration::from_secs(1), "the override reaches instance B", || async {
            (limit_on_b().await == shown).then_some(())
        })
        .await;
    }
}

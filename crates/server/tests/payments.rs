//! SPEC §10 over real HTTP: packages, checkout through a fake Stripe, signed webhooks crediting
//! exactly once, the dev provider, Connect onboarding, and the payout batch with an injected
//! clock — each asserting the exact ledger effect.

mod common;

use common::fake_stripe::{self, session_event, signature, FakeStripe, ObjectsHandle, Script, WEBHOOK_SECRET};
use common::{expect_error, TestServer};
use quota_core::{AccountId, Credits, PlatformAccount, TransferKind};
use quota_server::clock::Clock;
use quota_server::payments::payouts;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const DAY: Duration = Duration::from_secs(86_400);
const MS: Duration = Duration::from_millis(1);

async fn stripe_server(clock: Arc<Clock>) -> (TestServer, FakeStripe, Arc<ObjectsHandle>) {
    let (fake, objects) = fake_stripe::start().await;
    let base = fake.base_url.clone();
    let s = TestServer::start_with_clock(
        move |c| {
            c.payments_provider = Some("stripe".into());
            c.stripe_api_base = base;
            c.stripe_secret_key = Some(fake_stripe::SECRET_KEY.into());
            c.stripe_webhook_secret = Some(WEBHOOK_SECRET.into());
            c.payouts_schedule = false;
        },
        clock,
    )
    .await;
    (s, fake, objects)
}

async fn checkout(s: &TestServer, bearer: &str, package: &str) -> reqwest::Response {
    s.http
        .post(s.url("/api/payments/checkout"))
        .bearer_auth(bearer)
        .json(
            &json!({"package_id": package, "success_url": "https://app.test/ok", "cancel_url": "https://app.test/no"}),
        )
        .send()
        .await
        .unwrap()
}

async fn webhook(s: &TestServer, body: &str, sig: &str) -> reqwest::Response {
    s.http
        .post(s.url("/webhooks/stripe"))
        .header("stripe-signature", sig)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

fn now_secs(s: &TestServer) -> i64 {
    s.state.clock.now_ms() / 1000
}

async fn clearing(s: &TestServer) -> i64 {
    s.state.ledger.balance(&AccountId::Platform(PlatformAccount::PaymentsClearing)).await.unwrap().get()
}

#[tokio::test]
async fn packages_are_listed_without_auth() {
    let s = TestServer::start().await;
    let v: Value = s.http.get(s.url("/v1/packages")).send().await.unwrap().json().await.unwrap();
    let got: Vec<(String, i64, i64)> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (p["id"].as_str().unwrap().to_string(), p["price_cents"].as_i64().unwrap(), p["credits"].as_i64().unwrap())
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("starter".into(), 500, 4_050_000),
            ("basic".into(), 1_000, 8_500_000),
            ("plus".into(), 2_500, 22_500_000),
            ("pro".into(), 5_000, 46_500_000)
        ]
    );
}

#[tokio::test]
async fn checkout_without_a_configured_provider_is_503() {
    let s = TestServer::start().await;
    let (_, session) = s.register("nopay@example.com").await;
    expect_error(checkout(&s, &session, "starter").await, 503, "provider_unavailable").await;
}

#[tokio::test]
async fn checkout_creates_a_stripe_session_form_encoded_with_an_idempotency_key() {
    let (s, fake, _) = stripe_server(Arc::new(Clock::system())).await;
    let (user, session) = s.register("buyer@example.com").await;
    let r = checkout(&s, &session, "basic").await;
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    let sid = v["session_id"].as_str().unwrap();
    assert!(sid.starts_with("cs_test_"));
    assert_eq!(v["checkout_url"], format!("https://checkout.stripe.test/c/pay/{sid}"));
    let req = fake.last_request();
    assert_eq!(req.path, "/v1/checkout/sessions");
    assert_eq!(req.authorization.as_deref(), Some(format!("Bearer {}", fake_stripe::SECRET_KEY).as_str()));
    assert_eq!(req.content_type.as_deref(), Some("application/x-www-form-urlencoded"));
    assert!(req.idempotency_key.as_deref().is_some_and(|k| !k.is_empty()));
    assert_eq!(req.field("mode"), Some("payment"));
    assert_eq!(req.field("line_items[0][price_data][unit_amount]"), Some("1000"));
    assert_eq!(req.field("line_items[0][price_data][currency]"), Some("usd"));
    assert_eq!(req.field("line_items[0][quantity]"), Some("1"));
    assert_eq!(req.field("success_url"), Some("https://app.test/ok"));
    assert_eq!(req.field("client_reference_id"), Some(user.as_str()));
    assert_eq!(req.field("metadata[quota_credits]"), Some("8500000"));
    // Nothing is credited before Stripe confirms.
    assert_eq!(s.balance(&user).await, 1_000_000);
    // A key tops up its owner's wallet.
    let (dev, _, key) = s.developer("developer").await;
    assert_eq!(checkout(&s, &key, "starter").await.status(), 201);
    assert_eq!(fake.last_request().field("client_reference_id"), Some(dev.as_str()));
}

#[tokio::test]
async fn checkout_for_an_unknown_package_is_404_and_calls_no_stripe() {
    let (s, fake, _) = stripe_server(Arc::new(Clock::system())).await;
    let (_, session) = s.register("lost@example.com").await;
    expect_error(checkout(&s, &session, "platinum").await, 404, "not_found").await;
    expect_error(checkout(&s, "sess_bogus", "starter").await, 401, "invalid_api_key").await;
    assert_eq!(fake.calls(), 0);
}

#[tokio::test]
async fn a_signed_completed_session_credits_once_however_often_it_is_replayed() {
    let (s, _fake, _) = stripe_server(Arc::new(Clock::system())).await;
    let (user, session) = s.register("topup@example.com").await;
    let v: Value = checkout(&s, &session, "starter").await.json().await.unwrap();
    let sid = v["session_id"].as_str().unwrap();
    let before = clearing(&s).await;
    let body = session_event("evt_1", "checkout.session.completed", sid, "paid");
    let sig = signature(WEBHOOK_SECRET, now_secs(&s), &body);
    for _ in 0..3 {
        let r = webhook(&s, &body, &sig).await;
        assert_eq!(r.status(), 200);
    }
    // A different event for the same session (Stripe can send both) credits nothing more.
    let again = session_event("evt_2", "checkout.session.async_payment_succeeded", sid, "paid");
    assert_eq!(webhook(&s, &again, &signature(WEBHOOK_SECRET, now_secs(&s), &again)).await.status(), 200);
    assert_eq!(s.balance(&user).await, 1_000_000 + 4_050_000);
    assert_eq!(clearing(&s).await, before - 4_050_000);
    assert_eq!(s.transfers_caused_by("evt_1").await, 1);
    let events = s.events(&user, "topup.succeeded").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["amount"], 4_050_000);
    assert_eq!(events[0]["session_id"], sid);
    s.assert_ledger_ok().await;
}

#[tokio::test]
async fn forged_stale_and_unsigned_webhooks_are_400_and_change_nothing() {
    let (s, _fake, _) = stripe_server(Arc::new(Clock::system())).await;
    let (user, session) = s.register("forge@example.com").await;
    let v: Value = checkout(&s, &session, "pro").await.json().await.unwrap();
    let sid = v["session_id"].as_str().unwrap();
    let body = session_event("evt_forged", "checkout.session.completed", sid, "paid");
    let now = now_secs(&s);
    for sig in [
        signature("whsec_not_the_secret", now, &body),
        signature(WEBHOOK_SECRET, now - 301, &body),
        signature(WEBHOOK_SECRET, now, &body.replace("paid", "PAID")),
        format!("t={now},v1=zz"),
        String::new(),
    ] {
        expect_error(webhook(&s, &body, &sig).await, 400, "bad_request").await;
    }
    assert_eq!(s.balance(&user).await, 1_000_000);
    // The real one, just inside the tolerance, with a second (stale-key) v1 beside it, still works.
    let good = signature(WEBHOOK_SECRET, now - 299, &body);
    let both = format!("{},v1={}", good, "ab".repeat(32));
    assert_eq!(webhook(&s, &body, &both).await.status(), 200);
    assert_eq!(s.balance(&user).await, 1_000_000 + 46_500_000);
    s.assert_ledger_ok().await;
}

#[tokio::test]
async fn out_of_order_and_unknown_events_are_acknowledged_and_only_paid_sessions_credit() {
    let (s, _fake, _) = stripe_server(Arc::new(Clock::system())).await;
    let (user, session) = s.register("order@example.com").await;
    let v: Value = checkout(&s, &session, "plus").await.json().await.unwrap();
    let sid = v["session_id"].as_str().unwrap();
    let send = |id: &str, kind: &str, status: &str| {
        let body = session_event(id, kind, sid, status);
        let sig = signature(WEBHOOK_SECRET, now_secs(&s), &body);
        (body, sig)
    };
    // The async success arrives before the (unpaid) completion; an unknown type in between.
    let (b1, s1) = send("evt_a", "checkout.session.async_payment_succeeded", "paid");
    let (b2, s2) = send("evt_b", "customer.created", "paid");
    let (b3, s3) = send("evt_c", "checkout.session.completed", "unpaid");
    for (b, sig) in [(&b2, &s2), (&b3, &s3)] {
        assert_eq!(webhook(&s, b, sig).await.status(), 200);
    }
    assert_eq!(s.balance(&user).await, 1_000_000, "nothing paid yet");
    assert_eq!(webhook(&s, &b1, &s1).await.status(), 200);
    assert_eq!(webhook(&s, &b3, &s3).await.status(), 200);
    assert_eq!(s.balance(&user).await, 1_000_000 + 22_500_000);
    s.assert_ledger_ok().await;
}

#[tokio::test]
async fn the_dev_provider_checkout_page_pays_at_once() {
    let s = TestServer::start_with(|c| c.payments_provider = Some("dev".into())).await;
    let (user, session) = s.register("dev@example.com").await;
    let v: Value = checkout(&s, &session, "starter").await.json().await.unwrap();
    let url = v["checkout_url"].as_str().unwrap();
    assert!(url.starts_with(&s.base) && url.contains("/payments/dev/checkout/"));
    let page = s.http.get(url).send().await.unwrap();
    assert_eq!(page.headers()["x-frame-options"], "DENY", "a form that moves credits is not frameable");
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("frame-ancestors 'none'"));
    assert!(page.text().await.unwrap().contains("Pay now"));
    let browser = common::oauth::browser();
    for _ in 0..2 {
        let r = browser.post(url).send().await.unwrap();
        assert_eq!(r.status(), 303);
        assert_eq!(r.headers()["location"], "https://app.test/ok");
    }
    assert_eq!(s.balance(&user).await, 1_000_000 + 4_050_000);
    // Stripe webhooks are not accepted with the dev provider.
    expect_error(webhook(&s, "{}", "t=1,v1=00").await, 404, "not_found").await;
    s.assert_ledger_ok().await;
}

// ---- payouts ---------------------------------------------------------------------------------

/// A developer with a Connect account, and a payer wallet to charge markup from.
async fn onboarded(s: &TestServer, fake: &FakeStripe) -> (String, String, String) {
    let (dev, session, _) = s.developer("developer").await;
    let v = s.call_json(reqwest::Method::POST, "/developers/connect/onboard", &session, None).await;
    let acct = v["stripe_account_id"].as_str().unwrap().to_string();
    assert!(acct.starts_with("acct_"));
    assert!(v["onboarding_url"].as_str().unwrap().contains(&acct));
    assert_eq!(fake.last_request().path, "/v1/account_links");
    let (payer, _) = s.register(&format!("{}@payer.test", quota_core::ids::new_id("p").to_lowercase())).await;
    s.credit(&payer, 1_000_000_000).await;
    (dev, session, payer)
}

/// A user-mode charge's markup, as the gateway commits it, at the server clock's now.
async fn markup(s: &TestServer, payer: &str, dev: &str, amount: i64) {
    s.state
        .ledger
        .transfer(quota_core::transfers::restored(
            quota_core::ids::new_id("ledg_test_markup_"),
            AccountId::wallet(payer),
            AccountId::EarningsPending(dev.into()),
            Credits::new(amount),
            TransferKind::Markup,
            "req_test".into(),
            s.state.clock.now_ms(),
        ))
        .await
        .unwrap();
}

async fn run(s: &TestServer) -> payouts::BatchReport {
    let r = payouts::run(&s.state, s.state.clock.now_ms()).await.unwrap();
    assert_eq!(r.errors, 0);
    r
}

async fn earnings(s: &TestServer, session: &str) -> Value {
    s.get_json("/developers/earnings", session).await
}

fn accounts(e: &Value) -> [i64; 5] {
    ["pending", "available", "reserve", "in_transit", "paid"].map(|k| e[k].as_i64().unwrap())
}

#[tokio::test]
async fn connect_refresh_gives_a_new_link_for_the_same_account() {
    let (s, fake, objects) = stripe_server(Arc::new(Clock::system())).await;
    let (_, session) = s.register("norefresh@example.com").await;
    expect_error(
        s.http.post(s.url("/developers/connect/refresh")).bearer_auth(&session).send().await.unwrap(),
        404,
        "not_found",
    )
    .await;
    let (_, session, _) = onboarded(&s, &fake).await;
    let a = s.call_json(reqwest::Method::POST, "/developers/connect/onboard", &session, None).await;
    let b = s.call_json(reqwest::Method::POST, "/developers/connect/refresh", &session, None).await;
    assert_eq!(a["stripe_account_id"], b["stripe_account_id"]);
    assert_ne!(a["onboarding_url"], b["onboarding_url"]);
    assert_eq!(objects.created("account").len(), 1);
    let acct = fake.fake.requests.lock().iter().find(|r| r.path == "/v1/accounts").cloned().unwrap();
    assert_eq!(acct.field("type"), Some("express"));
    assert_eq!(acct.field("capabilities[transfers][requested]"), Some("true"));
}

#[tokio::test]
async fn payout_arithmetic_across_the_7_day_and_90_day_boundaries() {
    let clock = Arc::new(Clock::manual(1_767_225_600_000_000)); // 2026-01-01T00:00:00Z
    let (s, fake, objects) = stripe_server(clock.clone()).await;
    let (dev, session, payer) = onboarded(&s, &fake).await;
    markup(&s, &payer, &dev, 20_005_555).await;

    // One millisecond before 7 days: nothing is eligible.
    clock.advance(7 * DAY - MS);
    let r = run(&s).await;
    assert_eq!((r.released, r.paid.len()), (0, 0));
    assert_eq!(accounts(&earnings(&s, &session).await), [20_005_555, 0, 0, 0, 0]);

    // At 7 days: released; 10% reserved (floor); $18.00 paid; the sub-cent 5,000 credits carried.
    clock.advance(MS);
    let r = run(&s).await;
    assert_eq!((r.released, r.reserved, r.paid.len()), (20_005_555, 2_000_555, 1));
    assert_eq!(accounts(&earnings(&s, &session).await), [0, 5_000, 2_000_555, 0, 18_000_000]);
    let t = fake.last_request();
    assert_eq!(t.path, "/v1/transfers");
    assert_eq!(t.field("amount"), Some("1800"));
    assert_eq!(t.field("currency"), Some("usd"));
    assert!(t.field("destination").unwrap().starts_with("acct_"));
    assert_eq!(t.idempotency_key.as_deref(), Some(format!("quota-payout-{dev}-0-18000000").as_str()));
    assert_eq!(objects.created("transfer").len(), 1);
    let paid = s.events(&dev, "payout.paid").await;
    assert_eq!(paid.len(), 1);
    assert_eq!((paid[0]["amount"].as_i64(), paid[0]["amount_cents"].as_i64()), (Some(18_000_000), Some(1_800)));
    let list = s.get_json("/developers/payouts", &session).await;
    assert_eq!(list["data"][0]["status"], "paid");
    assert_eq!(list["data"][0]["amount"], 18_000_000);
    // A re-run the same day pays nothing more.
    let r = run(&s).await;
    assert_eq!((r.released, r.paid.len(), r.below_minimum), (0, 0, 1));

    // The reserve returns 90 days after it was held, not a millisecond before; $2.005555 is
    // below the $10 minimum, so it is carried over.
    clock.advance(90 * DAY - MS);
    let r = run(&s).await;
    assert_eq!(r.reserve_released, 0);
    clock.advance(MS);
    let r = run(&s).await;
    assert_eq!((r.reserve_released, r.paid.len(), r.below_minimum), (2_000_555, 0, 1));
    assert_eq!(accounts(&earnings(&s, &session).await), [0, 2_005_555, 0, 0, 18_000_000]);

    // New earnings lift the carried balance over the minimum: 2,005,555 + 9,000,000 × 0.9.
    markup(&s, &payer, &dev, 9_000_000).await;
    clock.advance(7 * DAY);
    let r = run(&s).await;
    assert_eq!((r.released, r.reserved, r.paid.len()), (9_000_000, 900_000, 1));
    assert_eq!(fake.last_request().field("amount"), Some("1010"));
    assert_eq!(accounts(&earnings(&s, &session).await), [0, 5_555, 900_000, 0, 28_100_000]);
    // The platform's payouts clearing account holds exactly what was paid out.
    let cleared = s.state.ledger.balance(&AccountId::Platform(PlatformAccount::PayoutsClearing)).await.unwrap();
    assert_eq!(cleared.get(), 28_100_000);
    s.assert_ledger_ok().await;
}

#[tokio::test]
async fn nothing_below_ten_dollars_is_paid() {
    let clock = Arc::new(Clock::manual(1_767_225_600_000_000));
    let (s, fake, _) = stripe_server(clock.clone()).await;
    let (dev, session, payer) = onboarded(&s, &fake).await;
    // 11,111,110 × 0.9 = 9,999,999 available: one credit short.
    markup(&s, &payer, &dev, 11_111_110).await;
    clock.advance(7 * DAY);
    let r = run(&s).await;
    assert_eq!((r.paid.len(), r.below_minimum), (0, 1));
    assert_eq!(accounts(&earnings(&s, &session).await), [0, 9_999_999, 1_111_111, 0, 0]);
    assert!(fake.fake.requests.lock().iter().all(|r| r.path != "/v1/transfers"));
    s.assert_ledger_ok().await;
}

#[tokio::test]
async fn a_developer_not_onboarded_is_not_paid_but_earnings_are_released() {
    let clock = Arc::new(Clock::manual(1_767_225_600_000_000));
    let (s, fake, _) = stripe_server(clock.clone()).await;
    let (dev, session, _) = s.developer("developer").await;
    let (payer, _) = s.register("payer-x@example.com").await;
    s.credit(&payer, 100_000_000).await;
    markup(&s, &payer, &dev, 50_000_000).await;
    clock.advance(8 * DAY);
    run(&s).await;
    assert_eq!(accounts(&earnings(&s, &session).await), [0, 45_000_000, 5_000_000, 0, 0]);
    assert_eq!(fake.calls(), 0);
}

#[tokio::test]
async fn a_failed_transfer_is_recorded_then_retried_with_the_same_key() {
    let clock = Arc::new(Clock::manual(1_767_225_600_000_000));
    let (s, fake, objects) = stripe_server(clock.clone()).await;
    let (dev, session, payer) = onboarded(&s, &fake).await;
    markup(&s, &payer, &dev, 30_000_000).await;
    clock.advance(7 * DAY);
    fake.script(Script::FailTransfers { status: 400, code: "balance_insufficient".into() });
    let r = run(&s).await;
    assert_eq!((r.paid.len(), r.failed.len()), (0, 1));
    // The money waits in transit; the payout shows the failure; `payout.failed` is recorded.
    assert_eq!(accounts(&earnings(&s, &session).await), [0, 0, 3_000_000, 27_000_000, 0]);
    let list = s.get_json("/developers/payouts", &session).await;
    assert_eq!(list["data"][0]["status"], "failed");
    assert_eq!(list["data"][0]["attempts"], 1);
    assert!(list["data"][0]["failure_message"].as_str().unwrap().contains("Insufficient funds"));
    let failed = s.events(&dev, "payout.failed").await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["amount"], 27_000_000);
    let first_key = fake.last_request().idempotency_key;

    fake.script(Script::Succeed);
    clock.advance(DAY);
    let r = run(&s).await;
    assert_eq!((r.paid.len(), r.failed.len()), (1, 0));
    assert_eq!(fake.last_request().idempotency_key, first_key);
    assert_eq!(objects.created("transfer").len(), 1);
    assert_eq!(accounts(&earnings(&s, &session).await), [0, 0, 3_000_000, 0, 27_000_000]);
    let list = s.get_json("/developers/payouts", &session).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!((list["data"][0]["status"].as_str(), list["data"][0]["attempts"].as_i64()), (Some("paid"), Some(2)));
    assert_eq!(s.events(&dev, "payout.paid").await.len(), 1);
    s.assert_ledger_ok().await;
}

#[tokio::test]
async fn two_concurrent_batch_runs_on_two_instances_pay_once() {
    let (a, fake, objects) = stripe_server(Arc::new(Clock::system())).await;
    let base = fake.base_url.clone();
    let b = TestServer::start_sharing(&a, move |c| {
        c.payments_provider = Some("stripe".into());
        c.stripe_api_base = base;
        c.stripe_secret_key = Some(fake_stripe::SECRET_KEY.into());
        c.stripe_webhook_secret = Some(WEBHOOK_SECRET.into());
        c.payouts_schedule = false;
    })
    .await;
    let (dev, session, payer) = onboarded(&a, &fake).await;
    markup(&a, &payer, &dev, 40_000_000).await;
    let later = a.state.clock.now_ms() + 8 * 86_400_000;
    let (ra, rb, rc) =
        tokio::join!(payouts::run(&a.state, later), payouts::run(&b.state, later), payouts::run(&a.state, later));
    let reports = [ra.unwrap(), rb.unwrap(), rc.unwrap()];
    let paid: usize = reports.iter().map(|r| r.paid.len()).sum();
    assert_eq!(paid, 1, "{reports:?}");
    assert!(reports.iter().all(|r| r.errors == 0));
    // A re-run afterwards finds nothing to do.
    let again = payouts::run(&b.state, later).await.unwrap();
    assert_eq!((again.paid.len(), again.released), (0, 0));
    let keys: std::collections::HashSet<_> = fake
        .fake
        .requests
        .lock()
        .iter()
        .filter(|r| r.path == "/v1/transfers")
        .map(|r| r.idempotency_key.clone().unwrap())
        .collect();
    assert_eq!(keys.len(), 1);
    assert_eq!(objects.created("transfer").len(), 1);
    a.state.ledger.flush().await.unwrap();
    b.state.ledger.flush().await.unwrap();
    assert_eq!(accounts(&earnings(&a, &session).await), [0, 0, 4_000_000, 0, 36_000_000]);
    assert_eq!(a.events(&dev, "payout.paid").await.len(), 1);
    assert_eq!(a.get_json("/developers/payouts", &session).await["data"].as_array().unwrap().len(), 1);
    a.assert_ledger_ok().await;
}

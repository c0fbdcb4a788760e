//! A fake Stripe speaking Stripe's REST shapes: form-encoded `POST`s with a bearer secret key,
//! `Idempotency-Key` honoured (the same key answers the same object again, as Stripe does for
//! 24 h), and Stripe's error objects. It records every request Quota sent. It also signs
//! webhook events the way Stripe does (`Stripe-Signature: t=…,v1=hex HMAC-SHA256("t.body")`).
#![allow(dead_code)]

use super::fake::{FakeServer, Scripted};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::Arc;

pub const SECRET_KEY: &str = "sk_test_fakeStripeSecret0123456789";
pub const WEBHOOK_SECRET: &str = "whsec_fakeWebhookSecret0123456789";

/// What the next `POST /v1/transfers` answers.
#[derive(Clone)]
pub enum Script {
    Succeed,
    /// A Stripe error object with this status and code.
    FailTransfers {
        status: u16,
        code: String,
    },
}

/// One request as Stripe received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub path: String,
    pub authorization: Option<String>,
    pub idempotency_key: Option<String>,
    pub content_type: Option<String>,
    pub form: Vec<(String, String)>,
}

impl Recorded {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

pub type FakeStripe = FakeServer<Script, Recorded>;

/// Idempotent answers and the objects Stripe created, shared by the handlers.
#[derive(Default)]
struct Objects {
    by_key: Mutex<HashMap<String, (u16, Value)>>,
    created: Mutex<Vec<Value>>,
}

pub async fn start() -> (FakeStripe, Arc<ObjectsHandle>) {
    let objects = Arc::new(Objects::default());
    let o = objects.clone();
    let server = FakeServer::serve(
        move |fake| Router::new().route("/v1/{*path}", post(handle)).layer(axum::Extension(o)).with_state(fake),
        "",
    )
    .await;
    (server, Arc::new(ObjectsHandle(objects)))
}

/// The test's view of what the fake Stripe created.
pub struct ObjectsHandle(Arc<Objects>);

impl ObjectsHandle {
    /// Objects created (idempotent replays not counted), of an `object` type.
    pub fn created(&self, object: &str) -> Vec<Value> {
        self.0.created.lock().iter().filter(|v| v["object"] == object).cloned().collect()
    }
}

fn error(status: u16, kind: &str, code: &str, message: &str) -> (u16, Value) {
    (status, json!({"error": {"type": kind, "code": code, "message": message}}))
}

async fn handle(
    State(fake): State<Arc<Scripted<Script, Recorded>>>,
    Path(path): Path<String>,
    axum::Extension(objects): axum::Extension<Arc<Objects>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let rec = Recorded {
        path: format!("/v1/{path}"),
        authorization: h("authorization"),
        idempotency_key: h("idempotency-key"),
        content_type: h("content-type"),
        form: form.clone(),
    };
    fake.record(rec.clone());
    let (status, body) = answer(&fake, &rec, &objects);
    (StatusCode::from_u16(status).unwrap(), [("content-type", "application/json")], body.to_string()).into_response()
}

fn answer(fake: &Scripted<Script, Recorded>, rec: &Recorded, objects: &Objects) -> (u16, Value) {
    if rec.authorization.as_deref() != Some(&format!("Bearer {SECRET_KEY}")) {
        return error(401, "invalid_request_error", "api_key_invalid", "Invalid API Key provided");
    }
    if rec.content_type.as_deref() != Some("application/x-www-form-urlencoded") {
        return error(400, "invalid_request_error", "parameter_invalid", "Stripe takes form-encoded bodies");
    }
    let scope_key = rec.idempotency_key.as_ref().map(|k| format!("{}:{k}", rec.path));
    if let Some(k) = &scope_key {
        if let Some(prev) = objects.by_key.lock().get(k) {
            return prev.clone();
        }
    }
    let f = |name: &str| rec.field(name).unwrap_or_default().to_string();
    let id = |prefix: &str| format!("{prefix}{}", quota_core::ids::new_id("").replace(['-', '_'], ""));
    let result = match rec.path.as_str() {
        "/v1/checkout/sessions" => {
            let sid = id("cs_test_");
            (
                200,
                json!({"id": sid, "object": "checkout.session", "url": format!("https://checkout.stripe.test/c/pay/{sid}"),
                "mode": f("mode"), "payment_status": "unpaid", "status": "open", "client_reference_id": f("client_reference_id"),
                "amount_total": f("line_items[0][price_data][unit_amount]").parse::<i64>().unwrap_or(0)}),
            )
        }
        "/v1/accounts" => {
            (200, json!({"id": id("acct_"), "object": "account", "type": f("type"), "email": f("email")}))
        }
        "/v1/account_links" => (
            200,
            json!({"object": "account_link", "url": format!("https://connect.stripe.test/setup/e/{}/{}", f("account"), id("")),
                "expires_at": 1}),
        ),
        "/v1/transfers" => match fake.script_or(Script::Succeed) {
            Script::FailTransfers { status, code } => {
                // Stripe does not store the result of a request that failed validation; a
                // retry with the same key is tried afresh.
                return error(status, "invalid_request_error", &code, "Insufficient funds in Stripe account.");
            }
            Script::Succeed => (
                200,
                json!({"id": id("tr_"), "object": "transfer", "amount": f("amount").parse::<i64>().unwrap_or(0),
                    "currency": f("currency"), "destination": f("destination"), "transfer_group": f("transfer_group")}),
            ),
        },
        other => error(
            404,
            "invalid_request_error",
            "resource_missing",
            &format!("Unrecognized request URL (POST: {other})"),
        ),
    };
    if result.0 == 200 {
        objects.created.lock().push(result.1.clone());
    }
    if let Some(k) = scope_key {
        objects.by_key.lock().insert(k, result.clone());
    }
    result
}

/// `Stripe-Signature` for `body` at Unix time `t`, signed with `secret`.
pub fn signature(secret: &str, t: i64, body: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// A `checkout.session.completed` (or other `kind`) event for a session.
pub fn session_event(event_id: &str, kind: &str, session_id: &str, payment_status: &str) -> String {
    json!({"id": event_id, "object": "event", "type": kind, "api_version": "2024-06-20", "livemode": false,
        "data": {"object": {"id": session_id, "object": "checkout.session", "payment_status": payment_status,
            "status": "complete"}}})
    .to_string()
}

//! Webhooks (SPEC §8): event names, URL checks (SSRF), signing, the in-memory directory of
//! endpoints the request path consults, and the delivery worker.
//!
//! The request path only *adds events to a settlement* (see [`Directory::settlement_events`]):
//! a hash-map read and an id, no I/O. Everything else happens in [`spawn_worker`]'s loop, on a
//! thread below the request path's CPU priority ([`sender`]): writing the `usage.completed`
//! events usage records owe, fan-out of outbox rows into deliveries, leased claims (safe with
//! several instances), signed sends with a 15 s timeout, the retry schedule on the injectable
//! server clock, the 5-day auto-disable, and the usage retention job. Not here: the rows
//! (`quota_store::webhooks`).

use crate::app::SharedState;
use crate::auth::Principal;
use crate::error::ApiError;
use base64::Engine;
use hmac::{Hmac, Mac};
use parking_lot::RwLock;
use quota_store::usage::{UsageRecord, DAY_MS};
use quota_store::webhooks::{AttemptLog, DueDelivery, FinishedAttempt, WebhookEndpoint};
use quota_store::{LowBalanceWatch, OutboxEvent};
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod sender;
pub mod ssrf;
pub use sender::{Priority, Sender};
pub use ssrf::is_private;

/// Every event type an endpoint may subscribe to.
pub const EVENT_TYPES: &[&str] = &[
    "usage.completed",
    "balance.updated",
    "balance.low",
    "user.connected",
    "user.disconnected",
    "topup.succeeded",
    "payout.paid",
    "payout.failed",
];

/// Longest endpoint description, in characters.
pub const DESCRIPTION_MAX_CHARS: usize = 500;
/// Longest endpoint URL, in bytes.
pub const URL_MAX_BYTES: usize = 2048;
/// Delays before the 2nd…8th attempts (SPEC §8): 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
pub const RETRY_SCHEDULE_SECS: [i64; 7] = [5, 300, 1800, 7200, 18_000, 36_000, 36_000];
/// An endpoint whose failures have run this long is disabled.
pub const DISABLE_AFTER_MS: i64 = 5 * DAY_MS;
/// A success is a 2xx within this time.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// A claimed delivery is not due for another worker until this lease ends (> the timeout).
pub const LEASE_MS: i64 = 60_000;
/// Most bytes of an endpoint's response read (SPEC §8): reading stops there.
pub const RESPONSE_READ_MAX_BYTES: usize = 64 * 1024;
/// Most response bytes kept in the delivery log (SPEC §8).
pub const SNIPPET_MAX_BYTES: usize = 1024;
/// Least time between two of the worker's write turns: finished sends are recorded (and their
/// slots refilled) in batches, a few hundred transactions a second at most, whatever the
/// delivery rate — the worker shares SQLite's one write lock with the ledger writer.
const TURN_MIN: Duration = Duration::from_millis(10);
/// Outbox rows fanned out per worker pass.
const DISPATCH_BATCH_MAX: i64 = 500;
/// How often the worker re-reads the endpoint directory (other instances' changes).
const DIRECTORY_REFRESH_MS: i64 = 5_000;
/// Longest the server's start waits for the worker's first turn.
const FIRST_TURN_WAIT: Duration = Duration::from_secs(5);
/// How often the worker counts its backlog (`quota_webhook_backlog`), in real time.
const BACKLOG_EVERY: Duration = Duration::from_secs(1);
/// How often the retention job runs.
const RETENTION_EVERY_MS: i64 = 3_600_000;

/// A new `whsec_…` secret: 32 random bytes, base64 (the Standard Webhooks format).
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// The two signatures of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signatures {
    /// `X-Quota-Signature`: hex HMAC-SHA256 of the raw body, keyed with the whole secret string.
    pub quota: String,
    /// `webhook-signature`: `v1,` + base64 HMAC-SHA256 of `id.timestamp.body`, keyed with the
    /// base64-decoded part of the secret after `whsec_` (Standard Webhooks).
    pub standard: String,
}

/// Sign `body` for delivery `msg_id` at Unix second `timestamp`.
pub fn sign(secret: &str, msg_id: &str, timestamp: i64, body: &[u8]) -> Signatures {
    let mut mac = <Hmac<Sha256>>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    let quota = hex::encode(mac.finalize().into_bytes());
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .unwrap_or_else(|_| secret.as_bytes().to_vec());
    let mut mac = <Hmac<Sha256>>::new_from_slice(&key).expect("HMAC takes keys of any length");
    mac.update(format!("{msg_id}.{timestamp}.").as_bytes());
    mac.update(body);
    let standard = format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()));
    Signatures { quota, standard }
}

/// Parse and check an endpoint URL: http(s), a host, at most [`URL_MAX_BYTES`]; private and
/// loopback hosts (literal addresses and `localhost`) only when `allow_private`. Hostnames are
/// checked again, resolved, at every delivery.
pub fn validate_url(raw: &str, allow_private: bool) -> Result<String, ApiError> {
    let bad = |m: String| ApiError::bad_request(m).with_hint("use an https:// URL on a public host");
    if raw.len() > URL_MAX_BYTES {
        return Err(bad(format!("url is longer than {URL_MAX_BYTES} bytes")));
    }
    let url = url::Url::parse(raw).map_err(|e| bad(format!("url is not a valid URL: {e}")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(bad(format!("url scheme `{}` is not allowed: only http and https", url.scheme())));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("url must not carry credentials".into()));
    }
    let private = match url.host() {
        None => return Err(bad("url has no host".into())),
        Some(url::Host::Ipv4(a)) => is_private(IpAddr::V4(a)),
        Some(url::Host::Ipv6(a)) => is_private(IpAddr::V6(a)),
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost") || d.ends_with(".internal") || d.ends_with(".local")
        }
    };
    if private && !allow_private {
        return Err(bad(format!("url `{raw}` points to a private or loopback address, which is refused (SSRF)")));
    }
    Ok(url.to_string())
}

/// Parse a list of event names; unknown ones are refused. Empty: every event.
pub fn parse_events(events: &[String]) -> Result<Vec<String>, ApiError> {
    let mut out: Vec<String> = Vec::with_capacity(events.len());
    for e in events {
        if e == "*" {
            return Ok(Vec::new());
        }
        if !EVENT_TYPES.contains(&e.as_str()) {
            return Err(ApiError::bad_request(format!("unknown event type `{e}`"))
                .with_hint(format!("event types: {}", EVENT_TYPES.join(", "))));
        }
        if !out.contains(e) {
            out.push(e.clone());
        }
    }
    Ok(out)
}

/// What the request path needs to know about one endpoint.
#[derive(Debug, Clone)]
struct Subscription {
    id: String,
    events: Vec<String>,
    low_balance_threshold: Option<i64>,
}

impl Subscription {
    fn wants(&self, kind: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == kind)
    }
}

/// Live endpoints by developer, in memory: the request path decides which events to write
/// without a database read. Reloaded on every change made here and every few seconds by the
/// worker (changes made by other instances).
#[derive(Default)]
pub struct Directory {
    by_developer: RwLock<HashMap<String, Vec<Subscription>>>,
}

impl Directory {
    pub async fn reload(&self, store: &quota_store::Store) -> Result<(), quota_store::StoreError> {
        let live = store.live_webhook_endpoints().await?;
        let mut map: HashMap<String, Vec<Subscription>> = HashMap::new();
        for e in live {
            map.entry(e.developer_id.clone()).or_default().push(Subscription {
                id: e.id,
                events: e.events,
                low_balance_threshold: e.low_balance_threshold,
            });
        }
        *self.by_developer.write() = map;
        Ok(())
    }

    /// What a charge adds to its settlement for the outbox (DESIGN §1 *record*): if any
    /// endpoint wants `usage.completed`, the usage record is marked as owing that event (an id
    /// in [`UsageRecord::pending_event`]: the worker writes the event, the record as its data,
    /// off the request path); and a `balance.low` watch per endpoint with a threshold, on the
    /// payer's wallet. Nothing when the developer has no endpoint.
    pub fn settlement_events(&self, principal: &Principal, record: &mut UsageRecord) -> Vec<LowBalanceWatch> {
        let dir = self.by_developer.read();
        let Some(subs) = dir.get(&principal.developer_id) else {
            return Vec::new();
        };
        let sandbox = principal.sandbox();
        if subs.iter().any(|s| s.wants("usage.completed")) {
            record.pending_event = Some(OutboxEvent::new_id());
        }
        let mut watches = Vec::new();
        for s in subs.iter().filter(|s| s.wants("balance.low")) {
            let Some(threshold) = s.low_balance_threshold else { continue };
            let mut e = OutboxEvent::new(
                "balance.low",
                &principal.developer_id,
                json!({
                    "account": principal.payer.to_string(),
                    "user_id": principal.user_id.clone().unwrap_or_else(|| principal.developer_id.clone()),
                    "app_id": principal.app_id,
                    "request_id": record.id,
                }),
                record.created_at,
            );
            e.sandbox = sandbox;
            e.endpoint_id = Some(s.id.clone());
            watches.push(LowBalanceWatch { account: principal.payer.clone(), threshold, event: e });
        }
        watches
    }
}

/// The JSON body of a delivery: `{id, type, created_at, data}` (+ `sandbox: true`). Built from
/// the stored event, so every attempt of an event sends the same bytes.
pub fn envelope(d: &DueDelivery) -> Vec<u8> {
    let data: Value = serde_json::from_str(&d.event_data).unwrap_or(Value::Null);
    let mut body = json!({
        "id": d.event_id,
        "type": d.event_type,
        "created_at": quota_store::clock::rfc3339(d.event_created_at),
        "data": data,
    });
    if d.sandbox {
        body["sandbox"] = Value::Bool(true);
    }
    serde_json::to_vec(&body).unwrap_or_default()
}

/// When to try again after `attempts` failed attempts (`None`: give up).
pub fn next_attempt_at(attempts: i64, now_ms: i64) -> Option<i64> {
    let i = usize::try_from(attempts - 1).ok()?;
    RETRY_SCHEDULE_SECS.get(i).map(|s| now_ms + s * 1000)
}

/// Start the worker (one per process; any number of processes may share a database).
///
/// One task owns the bookkeeping; sends run as separate tasks, at most `webhook_concurrency` at
/// once, and report back over a channel. Each turn of the loop writes in batches — every
/// attempt that finished since the last turn in one transaction, then one claim for as many
/// due deliveries as there are free slots — so the worker takes SQLite's write lock a few times
/// per turn (turns at least [`TURN_MIN`] apart), not per delivery, and freed slots are refilled
/// at the next turn rather than the next tick. New events are fanned out at each tick
/// (`webhook_poll_ms`) unless due deliveries are already waiting for slots. The loop and the
/// sends run on their own thread at a lower CPU priority ([`Sender`], `webhook_priority`);
/// its database calls run on the server's runtime ([`Worker::on_server`]).
///
/// Returns once the worker's first turn is done (bounded by [`FIRST_TURN_WAIT`]): whatever the
/// outbox held at start-up has been fanned out and claimed by then, and nothing the server
/// does after it starts serving is picked up before the next tick. (The worker's thread runs
/// below request priority and may start late on a busy machine.)
pub async fn spawn_worker(state: &SharedState) {
    // Validated with the configuration.
    let priority = state.config.webhook_priority.parse().unwrap_or(Priority::Idle);
    let sender = match Sender::start(priority) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::error!(error = %e, "webhook worker could not start its sending thread");
            return;
        }
    };
    let weak = Arc::downgrade(state);
    let server = tokio::runtime::Handle::current();
    let (first_turn, done) = tokio::sync::oneshot::channel();
    let on = sender.clone();
    on.spawn(run_worker(weak, state.store.clone(), server, sender, first_turn));
    if tokio::time::timeout(FIRST_TURN_WAIT, done).await.is_err() {
        tracing::warn!("the webhook worker's first turn took longer than {FIRST_TURN_WAIT:?}; serving meanwhile");
    }
}

/// The worker's loop until the server is gone; `store` is where its reads and writes go.
async fn run_worker(
    weak: std::sync::Weak<crate::app::AppState>,
    store: quota_store::Store,
    server: tokio::runtime::Handle,
    sender: Arc<Sender>,
    first_turn: tokio::sync::oneshot::Sender<()>,
) {
    let mut first_turn = Some(first_turn);
    let Some((poll, concurrency, resolver)) = weak.upgrade().map(|s| {
        let resolver = ssrf::CheckedResolver {
            inner: s.webhook_resolver.clone(),
            allow_private: s.config.webhook_allow_private_urls,
        };
        (Duration::from_millis(s.config.webhook_poll_ms.max(10)), s.config.webhook_concurrency.max(1), resolver)
    }) else {
        return;
    };
    // The checked resolver is the client's only resolver: a connection goes to an address that
    // passed the SSRF check, looked up once (SPEC §8). Redirects are not followed.
    let client = match reqwest::Client::builder()
        .timeout(ATTEMPT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(resolver))
        .no_proxy()
        .tcp_nodelay(true)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhook worker could not build its HTTP client");
            return;
        }
    };
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<FinishedAttempt>();
    let mut worker = Worker { store, server, sender, client, done_tx, concurrency, in_flight: 0, more_due: false };
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut directory_at = i64::MIN;
    let mut retention_at = i64::MIN;
    let mut finished = Vec::new();
    let mut last_turn = tokio::time::Instant::now();
    let mut backlog_at = last_turn.checked_sub(BACKLOG_EVERY).unwrap_or(last_turn);
    loop {
        let ticked = tokio::select! {
            _ = ticker.tick() => true,
            Some(f) = done_rx.recv() => {
                finished.push(f);
                // Let more sends finish, so that one transaction records them all.
                tokio::time::sleep_until(last_turn + TURN_MIN).await;
                while let Ok(f) = done_rx.try_recv() {
                    finished.push(f);
                }
                false
            }
        };
        let Some(state) = weak.upgrade() else { break };
        if ticked && backlog_at.elapsed() >= BACKLOG_EVERY {
            backlog_at = tokio::time::Instant::now();
            let store = worker.store.clone();
            match worker.on_server(async move { store.webhook_backlog().await }).await {
                Ok((owed, outbox, pending)) => {
                    for (stage, n) in [("owed", owed), ("outbox", outbox), ("deliveries", pending)] {
                        metrics::gauge!("quota_webhook_backlog", "stage" => stage).set(n as f64);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "webhook backlog count failed"),
            }
        }
        let now = state.clock.now_ms();
        if ticked && (now.saturating_sub(directory_at) >= DIRECTORY_REFRESH_MS || now < directory_at) {
            directory_at = now;
            if let Err(e) = worker.reload_directory(&state).await {
                tracing::warn!(error = %e, "webhook directory reload failed");
            }
        }
        if ticked && now.saturating_sub(retention_at) >= RETENTION_EVERY_MS {
            retention_at = now;
            let cutoff = now - i64::from(state.config.usage_retention_days) * DAY_MS;
            let store = worker.store.clone();
            match worker.on_server(async move { store.expire_usage(cutoff).await }).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(records = n, "usage retention: raw records folded into daily aggregates"),
                Err(e) => tracing::warn!(error = %e, "usage retention failed"),
            }
        }
        if let Err(e) = worker.turn(&state, ticked, &mut finished).await {
            tracing::warn!(error = %e, "webhook worker turn failed");
        }
        if let Some(started) = first_turn.take() {
            let _ = started.send(());
        }
        last_turn = tokio::time::Instant::now();
    }
}

/// The delivery worker's state between turns.
struct Worker {
    store: quota_store::Store,
    /// The server's runtime, where the worker's database calls run (see [`Worker::on_server`]).
    server: tokio::runtime::Handle,
    /// Where sends run: their own thread, below the request path's priority.
    sender: Arc<Sender>,
    client: reqwest::Client,
    done_tx: tokio::sync::mpsc::UnboundedSender<FinishedAttempt>,
    concurrency: usize,
    in_flight: usize,
    /// The last claim filled every free slot: more may be due before the next tick.
    more_due: bool,
}

impl Worker {
    /// Run a database call on the server's runtime and wait for it. The worker's own thread
    /// yields the CPU to requests: a transaction driven from it could sit between two
    /// statements, holding SQLite's write lock (or a PostgreSQL row lock), for as long as
    /// requests keep the CPU busy — and requests wait for that lock. Driven from the server's
    /// runtime, a transaction runs from BEGIN to COMMIT at the request path's priority, and
    /// connections are only ever opened and polled there.
    async fn on_server<T: Send + 'static>(
        &self,
        call: impl std::future::Future<Output = Result<T, quota_store::StoreError>> + Send + 'static,
    ) -> Result<T, quota_store::StoreError> {
        self.server
            .spawn(call)
            .await
            .map_err(|e| quota_store::StoreError::Corrupt(format!("webhook database call did not finish: {e}")))?
    }

    async fn reload_directory(&self, state: &SharedState) -> Result<(), quota_store::StoreError> {
        let (state, store) = (state.clone(), self.store.clone());
        self.on_server(async move { state.webhooks.reload(&store).await }).await
    }

    /// Record what finished, fan out new events (on a tick), and refill the free slots.
    async fn turn(
        &mut self,
        state: &SharedState,
        ticked: bool,
        finished: &mut Vec<FinishedAttempt>,
    ) -> Result<(), quota_store::StoreError> {
        if !finished.is_empty() {
            let now = state.clock.now_ms();
            // On error the batch is kept and written again next turn (the rows' leases keep
            // other workers off them meanwhile).
            let (store, batch) = (self.store.clone(), std::mem::take(finished));
            let (batch, recorded) = self
                .on_server(async move {
                    let recorded = store.finish_attempts(&batch, now - DISABLE_AFTER_MS).await;
                    Ok((batch, recorded))
                })
                .await?;
            let disabled = match recorded {
                Ok(disabled) => disabled,
                Err(e) => {
                    *finished = batch;
                    return Err(e);
                }
            };
            self.in_flight -= batch.len();
            if !disabled.is_empty() {
                tracing::warn!(endpoints = ?disabled, "webhook endpoints disabled after 5 days of failures");
                if let Err(e) = self.reload_directory(state).await {
                    tracing::warn!(error = %e, "webhook directory reload failed");
                }
                let state = state.clone();
                self.on_server(async move {
                    crate::changes::announce(&state, crate::changes::WEBHOOKS).await;
                    Ok(())
                })
                .await?;
            }
        }
        // Fan-out keeps pace with sending: while due deliveries are waiting for slots, new
        // events stay in the outbox (durable, and no work) instead of becoming delivery rows
        // the sends cannot reach yet — database writes at the request path's priority.
        let backlogged = self.more_due || self.in_flight >= self.concurrency;
        if ticked && !backlogged {
            let now = state.clock.now_ms();
            let store = self.store.clone();
            self.on_server(async move {
                while store.dispatch_events(now, DISPATCH_BATCH_MAX).await? as i64 == DISPATCH_BATCH_MAX {}
                Ok(())
            })
            .await?;
        }
        let free = self.concurrency - self.in_flight;
        if free == 0 || !(ticked || self.more_due) {
            return Ok(());
        }
        let now = state.clock.now_ms();
        let store = self.store.clone();
        let due = self.on_server(async move { store.claim_deliveries(now, now + LEASE_MS, free as i64).await }).await?;
        self.more_due = due.len() == free;
        self.in_flight += due.len();
        for d in due {
            let state = state.clone();
            let client = self.client.clone();
            let done = self.done_tx.clone();
            self.sender.spawn(async move {
                let _ = done.send(attempt(&state, &client, d).await);
            });
        }
        Ok(())
    }
}

/// Send one delivery; what to log about it.
async fn attempt(state: &SharedState, client: &reqwest::Client, d: DueDelivery) -> FinishedAttempt {
    let body = envelope(&d);
    let started_ms = state.clock.now_ms();
    let timestamp = started_ms.div_euclid(1000);
    let started = Instant::now();
    let outcome = match open_secret(state, &d.endpoint.secret) {
        Ok(secret) => {
            let sig = sign(&secret, &d.event_id, timestamp, &body);
            send(state, client, &d.endpoint, &d.event_id, timestamp, &sig, body).await
        }
        Err(e) => Err(e),
    };
    let latency_ms = started.elapsed().as_millis() as i64;
    let (status_code, snippet, error) = match &outcome {
        Ok((status, text)) => (Some(i64::from(*status)), Some(text.clone()), None),
        Err(e) => (None, None, Some(e.clone())),
    };
    let succeeded = matches!(outcome, Ok((s, _)) if (200..300).contains(&s));
    metrics::counter!("quota_webhook_attempts_total", "outcome" => if succeeded { "success" } else { "failure" })
        .increment(1);
    let now = state.clock.now_ms();
    FinishedAttempt {
        log: AttemptLog {
            id: quota_core::ids::new_ordered_id("wha_", quota_store::clock::now_us()),
            delivery_id: d.id.clone(),
            attempted_at: now,
            status_code,
            latency_ms,
            response_snippet: snippet,
            error,
            succeeded,
        },
        endpoint_id: d.endpoint.id.clone(),
        next_attempt_at: if succeeded { None } else { next_attempt_at(d.attempts + 1, now) },
    }
}

/// An endpoint's signing secret, opened with the master key (SPEC §12). A clear one (written
/// by an older instance during a rolling upgrade) is used as it is; the next start seals it.
fn open_secret(state: &SharedState, stored: &str) -> Result<String, String> {
    if !stored.starts_with(crate::secrets::at_rest::SEALED_TEXT_PREFIX) {
        return Ok(stored.to_string());
    }
    state.master_key.open_text(crate::secrets::at_rest::Purpose::WebhookSecret, stored).map_err(|e| {
        tracing::error!(error = %e, "a webhook secret cannot be opened with the master key");
        "the endpoint's secret cannot be read (master key)".to_string()
    })
}

/// POST the body; `Ok((status, response snippet))` or a transport error's text.
async fn send(
    state: &SharedState,
    client: &reqwest::Client,
    endpoint: &WebhookEndpoint,
    msg_id: &str,
    timestamp: i64,
    sig: &Signatures,
    body: Vec<u8>,
) -> Result<(u16, String), String> {
    let url = url::Url::parse(&endpoint.url).map_err(|e| e.to_string())?;
    ssrf::check_literal(&url, state.config.webhook_allow_private_urls)?;
    let mut resp = client
        .post(url)
        .header("content-type", "application/json")
        .header("user-agent", "Quota-Webhooks/1")
        .header("x-quota-signature", &sig.quota)
        .header("webhook-id", msg_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", &sig.standard)
        .body(body)
        .send()
        .await
        .map_err(|e| if e.is_timeout() { "timeout after 15 s".to_string() } else { error_chain(&e) })?;
    let status = resp.status().as_u16();
    let (head, _read) = read_capped(&mut resp, RESPONSE_READ_MAX_BYTES).await;
    Ok((status, snippet(&head)))
}

/// A transport error with its causes (the SSRF refusal is a cause of reqwest's error).
fn error_chain(e: &reqwest::Error) -> String {
    let mut text = format!("request failed: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Read at most `max` bytes of a response body, then stop (the rest is never read: dropping
/// the response closes the connection). Returns the first [`SNIPPET_MAX_BYTES`] and how many
/// bytes were read in all. A body that fails midway keeps what arrived.
pub async fn read_capped(resp: &mut reqwest::Response, max: usize) -> (Vec<u8>, usize) {
    let mut head = Vec::new();
    let mut read = 0usize;
    while read < max {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let take = chunk.len().min(max - read);
                read += take;
                let room = SNIPPET_MAX_BYTES.saturating_sub(head.len());
                head.extend_from_slice(&chunk[..take.min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    (head, read)
}

/// The text kept in the delivery log: at most [`SNIPPET_MAX_BYTES`] bytes of UTF-8.
fn snippet(head: &[u8]) -> String {
    let mut text = String::from_utf8_lossy(&head[..head.len().min(SNIPPET_MAX_BYTES)]).into_owned();
    let mut end = text.len().min(SNIPPET_MAX_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_response_is_read_up_to_64_kib_and_1_kib_is_kept() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        // An endless body; count what the reader pulls from it.
        let pulled = Arc::new(AtomicUsize::new(0));
        let p = pulled.clone();
        let chunks = futures::stream::repeat_with(move || {
            p.fetch_add(4096, Ordering::SeqCst);
            Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 4096]))
        });
        let http = axum::http::Response::new(reqwest::Body::wrap_stream(chunks));
        let mut resp = reqwest::Response::from(http);
        let (head, read) = read_capped(&mut resp, RESPONSE_READ_MAX_BYTES).await;
        assert_eq!(read, RESPONSE_READ_MAX_BYTES);
        assert_eq!(head.len(), SNIPPET_MAX_BYTES);
        assert_eq!(pulled.load(Ordering::SeqCst), RESPONSE_READ_MAX_BYTES, "reading stopped at 64 KiB");
        assert!(snippet(&"é".repeat(1000).into_bytes()).len() <= SNIPPET_MAX_BYTES);
    }

    #[test]
    fn retries_follow_the_schedule_then_stop() {
        assert_eq!(next_attempt_at(1, 0), Some(5_000));
        assert_eq!(next_attempt_at(2, 0), Some(300_000));
        assert_eq!(next_attempt_at(7, 0), Some(36_000_000));
        assert_eq!(next_attempt_at(8, 0), None);
    }

    #[test]
    fn urls_are_checked() {
        assert!(validate_url("ftp://example.com/x", true).is_err());
        assert!(validate_url("http://127.0.0.1:9/x", false).is_err());
        assert!(validate_url("http://10.1.2.3/x", false).is_err());
        assert!(validate_url("http://[::1]/x", false).is_err());
        assert!(validate_url("http://localhost/x", false).is_err());
        assert!(validate_url("http://127.0.0.1:9/x", true).is_ok());
        assert!(validate_url("https://hooks.example.com/x", false).is_ok());
    }

    #[test]
    fn standard_webhooks_signature_matches_the_spec_example() {
        // From the Standard Webhooks specification's test vectors.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let sig = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(sig.standard, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}

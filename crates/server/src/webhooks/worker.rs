//! The webhook delivery worker (SPEC §8): one loop per process, on its own low-priority thread
//! ([`super::Sender`]), that writes the `usage.completed` events usage records owe, fans outbox
//! rows out into deliveries, claims due deliveries under a lease (safe with several
//! instances), hands them to [`super::attempt`], records finished attempts in batches, disables
//! endpoints after 5 days of failures, refreshes the [`super::Directory`], and runs the usage
//! retention job. Not here: the send itself (`attempt`), the rows (`quota_store::webhooks`).

use super::attempt::{attempt, ATTEMPT_TIMEOUT};
use super::{ssrf, Priority, Sender};
use crate::app::SharedState;
use quota_store::usage::DAY_MS;
use quota_store::webhooks::FinishedAttempt;
use std::sync::Arc;
use std::time::Duration;

/// An endpoint whose failures have run this long is disabled.
pub const DISABLE_AFTER_MS: i64 = 5 * DAY_MS;
/// A claimed delivery is not due for another worker until this lease ends (> the timeout).
pub const LEASE_MS: i64 = 60_000;
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
    let client = match delivery_client(resolver) {
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
            worker.count_backlog().await;
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
            worker.expire_usage(&state, now).await;
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

/// The client deliveries are sent with. The checked resolver is its only resolver: a
/// connection goes to an address that passed the SSRF check, looked up once (SPEC §8).
/// Redirects are not followed.
fn delivery_client(resolver: ssrf::CheckedResolver) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(ATTEMPT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(resolver))
        .no_proxy()
        .tcp_nodelay(true)
        .build()
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

    /// Publish the backlog at each stage (`quota_webhook_backlog`).
    async fn count_backlog(&self) {
        let store = self.store.clone();
        match self.on_server(async move { store.webhook_backlog().await }).await {
            Ok((owed, outbox, pending)) => {
                for (stage, n) in [("owed", owed), ("outbox", outbox), ("deliveries", pending)] {
                    metrics::gauge!("quota_webhook_backlog", "stage" => stage).set(n as f64);
                }
            }
            Err(e) => tracing::warn!(error = %e, "webhook backlog count failed"),
        }
    }

    /// The usage retention job: raw records older than `usage_retention_days` folded into
    /// daily aggregates.
    async fn expire_usage(&self, state: &SharedState, now: i64) {
        let cutoff = now - i64::from(state.config.usage_retention_days) * DAY_MS;
        let store = self.store.clone();
        match self.on_server(async move { store.expire_usage(cutoff).await }).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(records = n, "usage retention: raw records folded into daily aggregates"),
            Err(e) => tracing::warn!(error = %e, "usage retention failed"),
        }
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

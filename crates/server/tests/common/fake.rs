//! What every fake upstream shares: a real HTTP server on a free loopback port, the requests it
//! received, the test's script for the next answer, and a gate the test uses to release a
//! stream's chunks one at a time. Each provider's fake brings its routes and wire format.
#![allow(dead_code)]

use axum::Router;
use bytes::Bytes;
use parking_lot::Mutex;
use std::sync::Arc;
use tokio::sync::mpsc;

/// The state a fake's handlers share with the test.
pub struct Scripted<S, R> {
    pub requests: Mutex<Vec<R>>,
    pub script: Mutex<Option<S>>,
    gate: Mutex<Option<mpsc::UnboundedReceiver<()>>>,
    /// While set, every request is recorded and then waits before it is answered.
    paused: std::sync::atomic::AtomicBool,
    resumed: tokio::sync::Notify,
}

impl<S: Clone, R> Scripted<S, R> {
    pub fn record(&self, request: R) {
        self.requests.lock().push(request);
    }

    /// The scripted answer, or `default`.
    pub fn script_or(&self, default: S) -> S {
        self.script.lock().clone().unwrap_or(default)
    }

    /// Wait here (after recording the request) while the test holds answers back.
    pub async fn wait_while_paused(&self) {
        use std::sync::atomic::Ordering;
        loop {
            let resumed = self.resumed.notified();
            if !self.paused.load(Ordering::SeqCst) {
                return;
            }
            resumed.await;
        }
    }

    /// The gate of a gated stream (set by [`FakeServer::gate`]).
    pub fn take_gate(&self) -> mpsc::UnboundedReceiver<()> {
        self.gate.lock().take().expect("a gate was set")
    }
}

/// A running fake upstream.
pub struct FakeServer<S, R> {
    pub base_url: String,
    pub fake: Arc<Scripted<S, R>>,
    task: tokio::task::JoinHandle<()>,
}

impl<S, R> Drop for FakeServer<S, R> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<S: Clone + Send + 'static, R: Clone + Send + 'static> FakeServer<S, R> {
    /// Serve the router `app` builds around the shared state; `base_url` is the root plus
    /// `base_path` (what the gateway's configuration takes).
    pub async fn serve(app: impl FnOnce(Arc<Scripted<S, R>>) -> Router, base_path: &str) -> FakeServer<S, R> {
        let fake = Arc::new(Scripted {
            requests: Mutex::new(Vec::new()),
            script: Mutex::new(None),
            gate: Mutex::new(None),
            paused: Default::default(),
            resumed: Default::default(),
        });
        let app = app(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeServer { base_url: format!("http://{addr}{base_path}"), fake, task }
    }

    /// Hold every answer back (requests are still recorded) until [`FakeServer::resume`].
    pub fn pause(&self) {
        self.fake.paused.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.fake.paused.store(false, std::sync::atomic::Ordering::SeqCst);
        self.fake.resumed.notify_waiters();
    }

    pub fn script(&self, s: S) {
        *self.fake.script.lock() = Some(s);
    }

    /// A gate for the next gated stream: send `()` to release one chunk, drop to finish.
    pub fn gate(&self) -> mpsc::UnboundedSender<()> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.fake.gate.lock() = Some(rx);
        tx
    }

    pub fn last_request(&self) -> R {
        self.fake.requests.lock().last().cloned().expect("the upstream was called")
    }

    pub fn calls(&self) -> usize {
        self.fake.requests.lock().len()
    }
}

/// A body stream fed by a task.
pub fn async_stream<F, Fut>(f: F) -> impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>>
where
    F: FnOnce(mpsc::UnboundedSender<Bytes>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(f(tx));
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok(b), rx)) })
}

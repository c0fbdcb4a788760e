//! Seams for tests that must observe a moment of a request's life instead of racing it (the
//! settlement a client hangs up during). Off unless a test turns them on: the request path pays
//! one relaxed atomic load.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Semaphore;

#[derive(Default)]
pub struct TestHooks {
    enabled: AtomicBool,
    settle_gate: Mutex<Option<Arc<Semaphore>>>,
    settling: AtomicUsize,
    client_hangups: AtomicUsize,
}

impl TestHooks {
    /// Called by every settlement just before it goes to the ledger: waits for a permit of the
    /// gate when a test set one.
    pub async fn before_settle(&self) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        let gate = self.settle_gate.lock().clone();
        if let Some(gate) = gate {
            self.settling.fetch_add(1, Ordering::SeqCst);
            if let Ok(permit) = gate.acquire().await {
                permit.forget();
            }
            self.settling.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// From now on every settlement waits for a permit of the returned gate (`add_permits`).
    pub fn gate_settlements(&self) -> Arc<Semaphore> {
        let gate = Arc::new(Semaphore::new(0));
        *self.settle_gate.lock() = Some(gate.clone());
        self.enabled.store(true, Ordering::SeqCst);
        gate
    }

    /// A client went away while its request was in flight (counted always: it is rare, and a
    /// test waits for it rather than guessing when the gateway noticed).
    pub fn client_hung_up(&self) {
        self.client_hangups.fetch_add(1, Ordering::SeqCst);
    }

    /// Clients that went away while their request was in flight.
    pub fn client_hangups(&self) -> usize {
        self.client_hangups.load(Ordering::SeqCst)
    }

    /// Settlements waiting at the gate right now.
    pub fn settlements_waiting(&self) -> usize {
        self.settling.load(Ordering::SeqCst)
    }
}

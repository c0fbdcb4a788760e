//! The thread that sends webhook deliveries: its own single-threaded runtime, at a lower CPU
//! priority (`webhook_nice`) than the threads that serve requests.
//!
//! A delivery costs about as much CPU as a request (a signed HTTP POST and its response). Run
//! beside the request path at the same priority, deliveries took a third to a half of a
//! saturated core away from requests. On this thread the kernel's scheduler gives requests the
//! CPU first; deliveries use what is left, and a backlog built under saturation (durable in
//! the outbox and the delivery rows) drains when load drops. Only the HTTP work runs here: the
//! worker's database writes stay on the main runtime, so no pooled database connection (nor
//! its I/O driver) is ever created on, or driven by, a low-priority thread.

use std::future::Future;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// Name of the sending thread (its tasks' blocking DNS lookups run on `quota-webhooks-dns`).
pub const THREAD_NAME: &str = "quota-webhooks";

/// A running sending thread; dropping it stops the thread (sends in flight are abandoned:
/// their deliveries are leased and sent again when the lease ends).
pub struct Sender {
    handle: Handle,
    _stop: oneshot::Sender<()>,
}

impl Sender {
    /// Start the thread at `nice` (0: the priority of the thread that calls this). A
    /// priority that cannot be set is logged, not fatal.
    pub fn start(nice: i32) -> std::io::Result<Sender> {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new().name(THREAD_NAME.into()).spawn(move || {
            // Set before the runtime exists: threads started from here (the blocking pool)
            // inherit the priority.
            if nice > 0 {
                if let Err(e) = lower_priority(nice) {
                    tracing::warn!(error = %e, nice, "webhook sender runs at normal priority");
                }
            }
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().thread_name("quota-webhooks-dns").build();
            match runtime {
                Ok(rt) => {
                    let _ = ready_tx.send(Ok(rt.handle().clone()));
                    // Until the sender is dropped; then the runtime and its tasks go.
                    rt.block_on(async move {
                        let _ = stop_rx.await;
                    });
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })?;
        let handle =
            ready_rx.recv().map_err(|_| std::io::Error::other("webhook sender thread exited before starting"))??;
        Ok(Sender { handle, _stop: stop_tx })
    }

    /// Run `send` on the sending thread.
    pub fn spawn(&self, send: impl Future<Output = ()> + Send + 'static) {
        self.handle.spawn(send);
    }
}

/// Give the calling thread (only it: Linux priorities are per thread) the `nice` value.
#[cfg(target_os = "linux")]
fn lower_priority(nice: i32) -> std::io::Result<()> {
    // SAFETY: gettid and setpriority take and return plain integers; no memory is shared.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if rc == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(_nice: i32) -> std::io::Result<()> {
    Err(std::io::Error::other("per-thread priorities are only set on Linux"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's id.
    #[cfg(target_os = "linux")]
    fn tid() -> i64 {
        // SAFETY: gettid takes no argument and touches no memory.
        unsafe { libc::syscall(libc::SYS_gettid) }
    }

    /// The `nice` field of one of this process's threads, from `/proc`.
    #[cfg(target_os = "linux")]
    fn nice_of(tid: i64) -> i32 {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).expect("the thread's stat");
        // The fields after the parenthesised name start at field 3; `nice` is field 19.
        let rest = &stat[stat.rfind(')').expect("a name") + 2..];
        rest.split(' ').nth(16).expect("a nice field").parse().expect("a number")
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sends_run_on_their_own_thread_at_the_configured_priority() {
        let before = nice_of(tid());
        let sender = Sender::start(13).expect("sender starts");
        let (tx, rx) = std::sync::mpsc::channel();
        sender.spawn(async move {
            let _ = tx.send((std::thread::current().name().map(str::to_string), tid(), nice_of(tid())));
        });
        let (name, sender_tid, nice) = rx.recv_timeout(std::time::Duration::from_secs(10)).expect("the task ran");
        assert_eq!(name.as_deref(), Some(THREAD_NAME));
        assert_ne!(sender_tid, tid());
        assert_eq!(nice, 13);
        // The thread that started it keeps its own priority.
        assert_eq!(nice_of(tid()), before);
    }
}

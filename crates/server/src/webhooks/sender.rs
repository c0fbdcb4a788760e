//! The webhook worker's thread: its own single-threaded runtime, at a lower CPU priority
//! (`webhook_priority`) than the threads that serve requests.
//!
//! A delivery costs about as much CPU as a request (a signed HTTP POST and its response, plus
//! the worker's bookkeeping). Run beside the request path at the same priority, deliveries took
//! a third to a half of a saturated core away from requests. On this thread the kernel gives
//! requests the CPU first; deliveries use what is left, and a backlog built under saturation
//! (durable in the outbox and the delivery rows) drains when load drops. `idle`
//! (`SCHED_IDLE`) is the default: a request waking up preempts it at once, where a nice-19
//! thread may keep the CPU for the rest of its time slice. The worker's database calls do not
//! run here (see `Worker::on_server`): the thread driving a transaction holds SQLite's write
//! lock until it commits, and must not be one that requests can starve.

use std::future::Future;
use std::str::FromStr;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// Name of the sending thread (its tasks' blocking DNS lookups run on `quota-webhooks-dns`).
pub const THREAD_NAME: &str = "quota-webhooks";

/// How the worker's thread competes with requests for the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// `SCHED_IDLE`: only when nothing else wants the CPU.
    Idle,
    /// nice 19.
    Low,
    /// As requests.
    Normal,
}

impl FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Priority, String> {
        match s {
            "idle" => Ok(Priority::Idle),
            "low" => Ok(Priority::Low),
            "normal" => Ok(Priority::Normal),
            other => Err(format!("webhook_priority must be `idle`, `low` or `normal`, got `{other}`")),
        }
    }
}

/// A running sending thread; dropping it stops the thread (sends in flight are abandoned:
/// their deliveries are leased and sent again when the lease ends).
pub struct Sender {
    handle: Handle,
    _stop: oneshot::Sender<()>,
}

impl Sender {
    /// Start the thread at `priority`. A priority that cannot be set is logged, not fatal.
    pub fn start(priority: Priority) -> std::io::Result<Sender> {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new().name(THREAD_NAME.into()).spawn(move || {
            // Set before the runtime exists: threads started from here (the blocking pool)
            // inherit the priority.
            if priority != Priority::Normal {
                if let Err(e) = lower_priority(priority) {
                    tracing::warn!(error = %e, ?priority, "the webhook worker runs at normal priority");
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

/// Give the calling thread (only it: Linux priorities are per thread) `priority`.
#[cfg(target_os = "linux")]
fn lower_priority(priority: Priority) -> std::io::Result<()> {
    // SAFETY: gettid, sched_setscheduler and setpriority take plain integers and a pointer to
    // a local struct that outlives the call.
    let rc = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::pid_t;
        match priority {
            Priority::Idle => {
                let param = libc::sched_param { sched_priority: 0 };
                libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param)
            }
            Priority::Low => libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19),
            Priority::Normal => 0,
        }
    };
    if rc == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(_priority: Priority) -> std::io::Result<()> {
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

    /// Fields of one of this process's threads' `stat`, 1-based as in proc(5).
    #[cfg(target_os = "linux")]
    fn stat_field(tid: i64, field: usize) -> i64 {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).expect("the thread's stat");
        // The fields after the parenthesised name start at field 3.
        let rest = &stat[stat.rfind(')').expect("a name") + 2..];
        rest.split(' ').nth(field - 3).expect("the field").parse().expect("a number")
    }
    #[cfg(target_os = "linux")]
    const NICE: usize = 19;
    #[cfg(target_os = "linux")]
    const POLICY: usize = 41;

    /// Where a task spawned on a sender at `priority` ran: (thread name, tid, nice, policy).
    #[cfg(target_os = "linux")]
    fn run_on(priority: Priority) -> (Option<String>, i64, i64, i64) {
        let sender = Sender::start(priority).expect("sender starts");
        let (tx, rx) = std::sync::mpsc::channel();
        sender.spawn(async move {
            let t = tid();
            let _ = tx.send((
                std::thread::current().name().map(str::to_string),
                t,
                stat_field(t, NICE),
                stat_field(t, POLICY),
            ));
        });
        rx.recv_timeout(std::time::Duration::from_secs(10)).expect("the task ran")
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_worker_runs_on_its_own_thread_at_the_configured_priority() {
        let (nice_here, policy_here) = (stat_field(tid(), NICE), stat_field(tid(), POLICY));
        let (name, idle_tid, _, policy) = run_on(Priority::Idle);
        assert_eq!(name.as_deref(), Some(THREAD_NAME));
        assert_ne!(idle_tid, tid());
        assert_eq!(policy, i64::from(libc::SCHED_IDLE));
        let (_, _, nice, policy) = run_on(Priority::Low);
        assert_eq!((nice, policy), (19, i64::from(libc::SCHED_OTHER)));
        let (_, _, nice, policy) = run_on(Priority::Normal);
        assert_eq!((nice, policy), (nice_here, policy_here));
        // The thread that started them keeps its own priority.
        assert_eq!((stat_field(tid(), NICE), stat_field(tid(), POLICY)), (nice_here, policy_here));
        assert!("busy".parse::<Priority>().is_err());
    }
}

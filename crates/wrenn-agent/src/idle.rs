//! Work done ahead of time (spare disks, networks and init programs): paced so that
//! it waits for a pause between creates ([`Pacer`]), and run at idle priority
//! (`SCHED_IDLE`: CPU time nothing else wants), so it never slows down a create or an
//! exec that is waited for. Measured here: refills running during a create made it
//! 40–60 % slower (the kernel work of a mount, a namespace or an `exec` competes
//! whatever the priority).

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::Notify;

/// How long takes must have paused before a refill goes on.
pub(crate) const QUIET: Duration = Duration::from_millis(50);

/// Paces the refill of a stock of things made ahead of time: one more is made once
/// takes have paused for [`QUIET`], or at once while fewer than half of the stock are
/// left (a long burst of creates must not drain it).
#[derive(Debug, Default)]
pub(crate) struct Pacer {
    last_take: Mutex<Option<Instant>>,
    wake: Notify,
}

impl Pacer {
    /// Records a take; wakes the refill.
    pub fn taken(&self) {
        *self.last_take.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.wake.notify_one();
    }

    /// Waits for the next take (a full stock has nothing to do until then).
    pub async fn next_take(&self) {
        self.wake.notified().await;
    }

    /// Waits until one more may be made, `ready()` of `depth` being ready now.
    pub async fn turn(&self, ready: impl Fn() -> usize, depth: usize) {
        loop {
            if ready() < depth.div_ceil(2) {
                return;
            }
            let since = self
                .last_take
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .map_or(QUIET, |t| t.elapsed());
            if since >= QUIET {
                return;
            }
            tokio::time::sleep(QUIET - since).await;
        }
    }
}

/// How urgently some work is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Priority {
    /// Someone waits for it.
    Normal,
    /// Done ahead of time: only with CPU time nothing else wants.
    Idle,
}

/// Runs `f` on a blocking thread at `priority`.
pub(crate) async fn blocking<T: Send + 'static>(
    priority: Priority,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    match priority {
        Priority::Normal => tokio::task::spawn_blocking(f).await,
        Priority::Idle => run(f).await,
    }
}

/// Runs `f` on a blocking thread at idle priority; the thread is back to normal
/// priority afterwards (it serves other blocking work next).
pub(crate) async fn run<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    tokio::task::spawn_blocking(move || {
        let _lowered = Lowered::this_thread();
        f()
    })
    .await
}

/// Moves the calling thread to `SCHED_IDLE` for good (a thread that ends after its
/// idle work, or whose children should inherit the policy).
pub(crate) fn lower_this_thread() {
    set_this_thread(libc::SCHED_IDLE);
}

/// Moves the calling thread back to normal priority (`SCHED_OTHER`).
pub(crate) fn restore_this_thread() {
    set_this_thread(libc::SCHED_OTHER);
}

/// Moves thread `tid` (of any process) back to normal priority; `false` if that
/// failed (e.g. it has exited).
#[allow(unsafe_code)]
pub(crate) fn restore_thread(tid: i32) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `sched_setscheduler` only reads `param`, which outlives the call.
    unsafe { libc::sched_setscheduler(tid, libc::SCHED_OTHER, &param) == 0 }
}

/// The calling thread at idle priority until dropped.
struct Lowered;

impl Lowered {
    fn this_thread() -> Self {
        lower_this_thread();
        Self
    }
}

impl Drop for Lowered {
    fn drop(&mut self) {
        restore_this_thread();
    }
}

#[allow(unsafe_code)]
fn set_this_thread(policy: libc::c_int) {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `sched_setscheduler` only reads `param`, which outlives the call; pid 0
    // is the calling thread (Linux schedules threads, not processes).
    let rc = unsafe { libc::sched_setscheduler(0, policy, &param) };
    if rc != 0 {
        tracing::debug!(
            policy,
            "changing a thread's scheduling policy: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(unsafe_code)]
    fn policy() -> libc::c_int {
        // SAFETY: no pointers; pid 0 is the calling thread.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[test]
    fn a_lowered_thread_is_idle_until_dropped() {
        std::thread::spawn(|| {
            assert_eq!(policy(), libc::SCHED_OTHER);
            let lowered = Lowered::this_thread();
            assert_eq!(policy(), libc::SCHED_IDLE);
            drop(lowered);
            assert_eq!(policy(), libc::SCHED_OTHER);
        })
        .join()
        .unwrap();
    }

    #[tokio::test]
    async fn a_refill_waits_for_a_pause_in_takes_unless_the_stock_runs_low() {
        let pacer = Pacer::default();
        // Nothing taken yet: go on at once.
        tokio::time::timeout(QUIET / 5, pacer.turn(|| 4, 4))
            .await
            .expect("no wait before the first take");
        pacer.taken();
        // Three of four left: wait for the pause.
        let waited = Instant::now();
        pacer.turn(|| 3, 4).await;
        assert!(waited.elapsed() >= QUIET);
        // One of four left: no waiting.
        pacer.taken();
        tokio::time::timeout(QUIET / 5, pacer.turn(|| 1, 4))
            .await
            .expect("a low stock is refilled at once");
    }

    #[tokio::test]
    async fn idle_work_runs_at_idle_priority() {
        assert_eq!(run(policy).await.unwrap(), libc::SCHED_IDLE);
    }
}

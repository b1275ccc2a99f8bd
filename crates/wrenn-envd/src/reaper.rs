//! Waiting for children, and reaping orphans when envd is PID 1.
//!
//! # Design
//!
//! One process-wide reaper owns **every** `waitpid` call envd makes; nothing else in
//! envd waits for a child (envd starts children itself, see `process::spawn`, and does
//! not use `tokio::process`). That single owner is what makes
//! it impossible for the reaper to "steal" an exit status envd itself needs:
//!
//! - `spawn` starts a child and registers its pid together with a oneshot sender
//!   while holding the *spawn gate* (a read lock). A reaping pass holds the gate's write
//!   lock, so it never runs between the clone and the registration: when it sees a pid, the
//!   pid is either registered or truly not ours. (The gate also keeps the reaper away
//!   from a child that failed to `exec`, which the spawner reaps itself.)
//! - A dedicated thread runs the passes: on every `SIGCHLD` and, as a safety net,
//!   once a second.
//! - In **orphan mode** (automatically when envd is PID 1, for example of a sandbox's
//!   pid namespace, where every orphan is re-parented to it) a pass calls
//!   `waitpid(-1, WNOHANG)` until nothing is left: registered pids get their status
//!   delivered, anything else is an orphan whose status is discarded.
//! - Otherwise (envd embedded in a bigger process, or in tests) a pass only calls
//!   `waitpid(pid, WNOHANG)` for the registered pids, so children of the rest of the
//!   process (for example `tokio::process` children of a host agent) are left alone.
//!
//! A pidfd per child would also avoid stealing, but a PID 1 reaper still needs
//! `waitpid(-1)` for orphans, which would then race the pidfd waiters; one owner for
//! all waits is simpler to reason about.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use rustix::process::{Pid, WaitOptions, WaitStatus, wait, waitpid};
use tokio::sync::oneshot;

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitInfo {
    /// It exited with this status.
    Exited(i32),
    /// This signal killed it.
    Signaled(i32),
}

impl ExitInfo {
    fn from_status(status: WaitStatus) -> Self {
        match (status.exit_status(), status.terminating_signal()) {
            (Some(code), _) => Self::Exited(code),
            (None, Some(signal)) => Self::Signaled(signal),
            // Neither: not a terminal status (we never ask for stopped children).
            (None, None) => Self::Exited(-1),
        }
    }
}

struct Reaper {
    gate: RwLock<()>,
    waiters: Mutex<HashMap<i32, oneshot::Sender<ExitInfo>>>,
    reap_orphans: AtomicBool,
}

static REAPER: OnceLock<Reaper> = OnceLock::new();

fn reaper() -> &'static Reaper {
    REAPER.get_or_init(|| {
        let started = std::thread::Builder::new()
            .name("wrenn-envd-reaper".into())
            .spawn(run);
        if let Err(err) = started {
            tracing::error!(%err, "cannot start the reaper thread; children will not be reaped");
        }
        Reaper {
            gate: RwLock::new(()),
            waiters: Mutex::new(HashMap::new()),
            reap_orphans: AtomicBool::new(rustix::process::getpid().is_init()),
        }
    })
}

/// Makes the reaper also reap children that are not envd's (orphans re-parented to
/// envd). On automatically when envd runs as PID 1; it cannot be turned off again.
pub fn enable_orphan_reaping() {
    reaper().reap_orphans.store(true, Ordering::SeqCst);
}

/// Whether orphans are being reaped.
pub fn reaps_orphans() -> bool {
    reaper().reap_orphans.load(Ordering::SeqCst)
}

/// Starts a child with `start` (which returns its pid) and registers it with the
/// reaper. The receiver yields the child's exit once it has been reaped. Blocking:
/// call it from a blocking context. `start` runs under the spawn gate, so it may also
/// reap a child that failed to start itself.
pub(crate) fn spawn(
    start: impl FnOnce() -> io::Result<Pid>,
) -> io::Result<(Pid, oneshot::Receiver<ExitInfo>)> {
    let reaper = reaper();
    let _gate = reaper.gate.read().unwrap_or_else(PoisonError::into_inner);
    let pid = start()?;
    let (tx, rx) = oneshot::channel();
    reaper
        .waiters
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(pid.as_raw_nonzero().get(), tx);
    Ok((pid, rx))
}

fn run() {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!(%err, "reaper runtime failed; falling back to polling");
            loop {
                reap_pass(reaper());
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    runtime.block_on(async {
        let mut sigchld =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).ok();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            match sigchld.as_mut() {
                Some(signal) => {
                    tokio::select! {
                        _ = signal.recv() => {}
                        _ = tick.tick() => {}
                    }
                }
                None => {
                    tick.tick().await;
                }
            }
            reap_pass(reaper());
        }
    });
}

fn reap_pass(reaper: &Reaper) {
    let _gate = reaper.gate.write().unwrap_or_else(PoisonError::into_inner);
    let mut reaped = Vec::new();
    if reaper.reap_orphans.load(Ordering::SeqCst) {
        loop {
            // `wait` is waitpid(-1): any child. (rustix's `waitpid(None)` would be
            // waitpid(0), only the caller's process group, which envd's children leave.)
            match wait(WaitOptions::NOHANG) {
                Ok(Some((pid, status))) => reaped.push((pid.as_raw_nonzero().get(), status)),
                Ok(None) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => break, // ECHILD: no children at all.
            }
        }
    } else {
        let pids: Vec<i32> = reaper
            .waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .copied()
            .collect();
        for raw in pids {
            let Some(pid) = Pid::from_raw(raw) else {
                continue;
            };
            if let Ok(Some((_, status))) = waitpid(Some(pid), WaitOptions::NOHANG) {
                reaped.push((raw, status));
            }
        }
    }
    if reaped.is_empty() {
        return;
    }
    let mut waiters = reaper
        .waiters
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    for (pid, status) in reaped {
        match waiters.remove(&pid) {
            Some(tx) => {
                let _ = tx.send(ExitInfo::from_status(status));
            }
            None => tracing::debug!(pid, "reaped an orphan"),
        }
    }
}

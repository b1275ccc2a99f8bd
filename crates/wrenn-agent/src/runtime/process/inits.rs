//! Init programs started ahead of time ([`ProcessRuntimeOptions::spare_inits`]): each
//! has `exec`ed, loaded itself and compiled its seccomp filter, and waits on its stdin
//! for a capsule ([`init::go`]). A create takes one instead of paying for a process
//! start. They are spawned paced and at idle priority ([`crate::idle`]; they return to
//! normal priority when told to go), so preparing them never slows a capsule that is
//! being created.
//!
//! A spare belongs to no capsule and holds nothing: when the agent stops, its stdin
//! closes and it exits.
//!
//! [`ProcessRuntimeOptions::spare_inits`]: super::ProcessRuntimeOptions::spare_inits
//! [`init::go`]: crate::init::go

use crate::runtime::error_chain;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::idle::Pacer;
use tokio::process::Child;

use crate::init::spawn::init_command;

/// An init program waiting for its capsule.
#[derive(Debug)]
pub(super) struct Waiting {
    /// The init program's process.
    pub child: Child,
    /// The write end of its stdin: where the go-ahead goes.
    pub go: std::fs::File,
    /// For a spare: the read end of the pipe its output goes to until the go-ahead
    /// names the capsule's log (what a program that failed before then said; see
    /// [`save_early_output`]).
    pub early_output: Option<std::fs::File>,
}

/// Appends what an init program said before it had the capsule's log (`early`, the
/// read end of [`Waiting::early_output`]) to `log`; call it once the program has
/// exited (the pipe is then at its end).
pub(super) fn save_early_output(early: Option<std::fs::File>, log: &Path) {
    use std::io::Read;
    let Some(mut pipe) = early else {
        return;
    };
    let mut said = Vec::new();
    // Non-blocking: a descendant still holding the pipe must not hang us.
    let _ = rustix::io::ioctl_fionbio(&pipe, true);
    let _ = pipe.read_to_end(&mut said);
    if said.is_empty() {
        return;
    }
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &said));
    if let Err(e) = appended {
        tracing::warn!(
            "saving an init program's output to {}: {}",
            log.display(),
            error_chain(&e)
        );
    }
}

/// Spare init programs, refilled in the background. See the [module docs](self).
#[derive(Debug)]
pub(super) struct SpareInits {
    program: PathBuf,
    ready: Mutex<VecDeque<Waiting>>,
    pacer: Pacer,
}

impl SpareInits {
    /// Keeps `depth` init programs of `program` waiting (none when 0); the returned
    /// task refills them until aborted.
    pub fn start(program: &Path, depth: usize) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let spares = Arc::new(Self {
            program: program.to_owned(),
            ready: Mutex::new(VecDeque::new()),
            pacer: Pacer::default(),
        });
        let refill = tokio::spawn(spares.clone().refill(depth));
        (spares, refill)
    }

    fn ready(&self) -> std::sync::MutexGuard<'_, VecDeque<Waiting>> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many are waiting now.
    pub fn waiting(&self) -> usize {
        self.ready().len()
    }

    /// A waiting init program: a spare if a live one is ready (waking the refill),
    /// else one started now, whose output goes to `log` from the start (so that a
    /// program that cannot even read its go-ahead says why there).
    pub async fn take(&self, log: &Path) -> std::io::Result<Waiting> {
        let spare = loop {
            let Some(mut spare) = self.ready().pop_front() else {
                break None;
            };
            // One that died meanwhile (killed by someone) is of no use.
            if matches!(spare.child.try_wait(), Ok(None)) {
                break Some(spare);
            }
        };
        self.pacer.taken();
        match spare {
            Some(spare) => Ok(spare),
            None => {
                let program = self.program.clone();
                let log = log.to_owned();
                tokio::task::spawn_blocking(move || spawn(&program, Some(&log)))
                    .await
                    .map_err(std::io::Error::other)?
            }
        }
    }

    async fn refill(self: Arc<Self>, depth: usize) {
        loop {
            while self.ready().len() < depth {
                self.pacer.turn(|| self.ready().len(), depth).await;
                let program = self.program.clone();
                // The child inherits the idle priority of the thread that spawns it.
                match crate::idle::run(move || spawn(&program, None)).await {
                    Ok(Ok(waiting)) => self.ready().push_back(waiting),
                    Ok(Err(e)) => {
                        tracing::warn!("starting a spare init program: {}", error_chain(&e));
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                    Err(e) => tracing::warn!("starting a spare init program: {}", error_chain(&e)),
                }
            }
            self.pacer.next_take().await;
        }
    }
}

/// Starts an init program of `program` whose stdin is a pipe (blocking until it has
/// `exec`ed). Its output goes to `log`, or else to a pipe ([`save_early_output`])
/// until the go-ahead names the capsule's log.
fn spawn(program: &Path, log: Option<&Path>) -> std::io::Result<Waiting> {
    let (go_read, go_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let (stdout, stderr, early_output) = match log {
        Some(log) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)?;
            (Stdio::from(file.try_clone()?), Stdio::from(file), None)
        }
        None => {
            let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
            let write = std::fs::File::from(write);
            (
                Stdio::from(write.try_clone()?),
                Stdio::from(write),
                Some(std::fs::File::from(read)),
            )
        }
    };
    let mut command = init_command(program);
    command
        .stdin(Stdio::from(go_read))
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(false);
    let child = command.spawn()?;
    Ok(Waiting {
        child,
        go: std::fs::File::from(go_write),
        early_output,
    })
}

//! The table of processes envd started: lookup by pid or tag, tag uniqueness among live
//! processes, and retention of exited processes for late Connects.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use wrenn_proto::envd::v1::{ProcessConfig, ProcessInfo, ProcessSelector, process_selector};

use super::fdio::Writer;
use super::output::Output;
use crate::error::{EnvdError, Result};

/// Longest accepted tag, in bytes.
const MAX_TAG_LEN: usize = 256;

/// How a process takes input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InputKind {
    /// stdin is `/dev/null`.
    None,
    /// stdin is a pipe.
    Pipe,
    /// The process runs on a PTY; input goes to the master.
    Pty,
}

/// One process envd started.
#[derive(Debug)]
pub(crate) struct ProcessEntry {
    /// Its pid (and process group id).
    pub pid: u32,
    /// Its unique tag.
    pub tag: String,
    /// What it was started with (cwd and user resolved).
    pub config: ProcessConfig,
    /// How it takes input.
    pub input_kind: InputKind,
    /// The stdin pipe or the PTY master; `None` once closed or after exit.
    pub input: Mutex<Option<Arc<Writer>>>,
    /// The PTY master, for resizing (PTY processes only); `None` after exit.
    pub pty: Mutex<Option<Arc<Writer>>>,
    /// Its output.
    pub output: Arc<Output>,
    started_at: Instant,
    exited_at: Mutex<Option<Instant>>,
    stdin_closed: AtomicBool,
}

impl ProcessEntry {
    /// A live process.
    pub fn new(
        pid: u32,
        tag: String,
        config: ProcessConfig,
        input_kind: InputKind,
        input: Option<Arc<Writer>>,
        output: Arc<Output>,
    ) -> Self {
        let pty = (input_kind == InputKind::Pty)
            .then(|| input.clone())
            .flatten();
        Self {
            pid,
            tag,
            config,
            input_kind,
            input: Mutex::new(input),
            pty: Mutex::new(pty),
            output,
            started_at: Instant::now(),
            exited_at: Mutex::new(None),
            stdin_closed: AtomicBool::new(false),
        }
    }

    /// Whether it has exited.
    pub fn has_exited(&self) -> bool {
        self.exited_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Records the exit and closes the input and the PTY master.
    pub fn mark_exited(&self) {
        *self
            .exited_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        self.input
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.pty
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    fn exited_before(&self, deadline: Instant) -> bool {
        self.exited_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|at| at < deadline)
    }

    /// The input descriptor for a write, or why there is none.
    pub fn input_fd(&self) -> Result<Arc<Writer>> {
        if let Some(fd) = self
            .input
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            return Ok(fd);
        }
        if self.has_exited() {
            Err(EnvdError::precondition(format!(
                "process {} has exited",
                self.pid
            )))
        } else if self.stdin_closed.load(Ordering::SeqCst) {
            Err(EnvdError::precondition(format!(
                "stdin of process {} is closed",
                self.pid
            )))
        } else {
            Err(EnvdError::precondition(format!(
                "process {} takes no input",
                self.pid
            )))
        }
    }

    /// Closes stdin (idempotent). The descriptor closes once in-flight writes finish.
    pub fn close_stdin(&self) {
        self.stdin_closed.store(true, Ordering::SeqCst);
        self.input
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// The PTY master, or why there is none.
    pub fn pty_fd(&self) -> Result<Arc<Writer>> {
        if self.input_kind != InputKind::Pty {
            return Err(EnvdError::precondition(format!(
                "process {} does not run on a PTY",
                self.pid
            )));
        }
        self.pty
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| EnvdError::precondition(format!("process {} has exited", self.pid)))
    }

    /// Its List entry.
    pub fn info(&self) -> ProcessInfo {
        ProcessInfo {
            config: Some(self.config.clone()),
            pid: self.pid,
            tag: Some(self.tag.clone()),
            pty: self.input_kind == InputKind::Pty,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    by_pid: HashMap<u32, Arc<ProcessEntry>>,
    reserved_tags: HashSet<String>,
}

/// All processes of one server.
#[derive(Debug)]
pub(crate) struct Registry {
    inner: Mutex<Inner>,
    retention: Duration,
}

/// A tag held for a process being started; released on drop unless the process was
/// inserted.
#[derive(Debug)]
pub(crate) struct TagReservation<'a> {
    registry: &'a Registry,
    tag: String,
}

impl TagReservation<'_> {
    /// The reserved tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }
}

impl Drop for TagReservation<'_> {
    fn drop(&mut self) {
        self.registry.lock().reserved_tags.remove(&self.tag);
    }
}

impl Registry {
    /// An empty registry keeping exited processes for `retention`.
    pub fn new(retention: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            retention,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let deadline = Instant::now().checked_sub(self.retention);
        if let Some(deadline) = deadline {
            inner
                .by_pid
                .retain(|_, entry| !entry.exited_before(deadline));
        }
        inner
    }

    /// Reserves `tag` (or a generated `proc-`/`pty-` tag if unset or empty).
    /// A tag used by a live or starting process is `ALREADY_EXISTS`.
    pub fn reserve_tag(&self, tag: Option<String>, pty: bool) -> Result<TagReservation<'_>> {
        let mut inner = self.lock();
        let in_use = |inner: &Inner, tag: &str| {
            inner.reserved_tags.contains(tag)
                || inner
                    .by_pid
                    .values()
                    .any(|e| e.tag == tag && !e.has_exited())
        };
        let tag = match tag.filter(|t| !t.is_empty()) {
            Some(tag) => {
                if tag.len() > MAX_TAG_LEN || tag.chars().any(char::is_control) {
                    return Err(EnvdError::invalid(format!(
                        "tag must be at most {MAX_TAG_LEN} bytes without control characters"
                    )));
                }
                if in_use(&inner, &tag) {
                    return Err(EnvdError::AlreadyExists(format!(
                        "tag {tag:?} is used by a live process"
                    )));
                }
                tag
            }
            None => loop {
                let random = RandomState::new().hash_one(Instant::now()) as u32;
                let tag = format!("{}-{random:08x}", if pty { "pty" } else { "proc" });
                if !in_use(&inner, &tag) {
                    break tag;
                }
            },
        };
        inner.reserved_tags.insert(tag.clone());
        Ok(TagReservation {
            registry: self,
            tag,
        })
    }

    /// Adds a started process (its tag reservation is released by the caller's drop).
    pub fn insert(&self, entry: Arc<ProcessEntry>) {
        self.lock().by_pid.insert(entry.pid, entry);
    }

    /// The process `selector` names: by pid, or by tag (a live process first, else the
    /// most recently started exited one).
    pub fn find(&self, selector: Option<&ProcessSelector>) -> Result<Arc<ProcessEntry>> {
        let selector = selector
            .and_then(|s| s.selector.as_ref())
            .ok_or_else(|| EnvdError::invalid("a process selector (pid or tag) is required"))?;
        let inner = self.lock();
        match selector {
            process_selector::Selector::Pid(pid) => inner
                .by_pid
                .get(pid)
                .cloned()
                .ok_or_else(|| EnvdError::not_found(format!("no process with pid {pid}"))),
            process_selector::Selector::Tag(tag) => {
                if tag.is_empty() {
                    return Err(EnvdError::invalid("tag is empty"));
                }
                let mut matches: Vec<&Arc<ProcessEntry>> =
                    inner.by_pid.values().filter(|e| &e.tag == tag).collect();
                matches.sort_by_key(|e| (!e.has_exited(), e.started_at));
                matches
                    .last()
                    .map(|e| Arc::clone(e))
                    .ok_or_else(|| EnvdError::not_found(format!("no process with tag {tag:?}")))
            }
        }
    }

    /// Every known process, live or recently exited.
    pub fn all(&self) -> Vec<Arc<ProcessEntry>> {
        self.lock().by_pid.values().cloned().collect()
    }

    /// The live processes.
    pub fn live(&self) -> Vec<Arc<ProcessEntry>> {
        self.lock()
            .by_pid
            .values()
            .filter(|e| !e.has_exited())
            .cloned()
            .collect()
    }
}

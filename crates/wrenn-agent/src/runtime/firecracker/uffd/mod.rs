//! The userfaultfd page-fault handler that serves a restoring VM's guest memory from a
//! snapshot's memory file, page by page as the guest touches it (the fast path of
//! Resume).
//!
//! For `PUT /snapshot/load` with `backend_type: Uffd`, Firecracker maps the guest
//! memory anonymously, registers it with a userfaultfd (missing mode), connects to the
//! unix socket named by `backend_path` and sends one message: the JSON list of its
//! memory regions (v1.12: `[{"base_host_virt_addr", "size", "offset", "page_size",
//! "page_size_kib"}]`, the last one a deprecated alias of `page_size`, ignored here)
//! with the userfaultfd attached (`SCM_RIGHTS`). Nothing else goes over that connection
//! (v1.12.1 leaves its end open, unused, until it exits; the handler closes its own end
//! after the handshake). Each first access to a guest page then blocks until the
//! handler fills the page:
//!
//! - with `UFFDIO_COPY` from the memory file, mapped read-only and private;
//! - with `UFFDIO_ZEROPAGE` where the file has a hole. Holes are found once, with
//!   `SEEK_DATA`/`SEEK_HOLE`, never by reading contents: a page the guest zeroed is
//!   data in the file and is copied;
//! - with zeros where the guest gave the page back (a balloon's `UFFD_EVENT_REMOVE`).
//!
//! Nothing is prefetched: a restored VM's memory grows with what it touches.
//!
//! The handler ends when it is stopped ([`UffdHandle::stop`], or dropping the handle),
//! when no VMM connects in time, on an invalid handshake or a failed fill, and by itself
//! when the VMM exits. A userfaultfd never reports that the other side went away (the
//! VMM keeps its own copy until it exits, and `poll` on it never signals a hang-up), so
//! the handler watches the VMM's process through a pidfd, its pid taken from the
//! connection (`SO_PEERCRED`). Whatever the reason, the descriptors are closed, the file
//! unmapped and the socket removed before the handle reports the end.
//!
//! A handler that ended with an error leaves the guest to fault on unserved pages, which
//! the kernel then fills with zeros: the caller must stop the VMM.
//!
//! The handler runs on a thread of its own, blocked in `poll` on the userfaultfd, the
//! VMM's pidfd and a stop pipe, rather than on the tokio runtime through `AsyncFd`: a
//! vCPU waits on every fault, and a fill is a synchronous ioctl that may read the memory
//! file from disk. On its own thread, a busy runtime does not delay faults and a slow
//! disk does not block a runtime worker. One thread per restoring VM is little next to
//! the VMM's own threads, and stopping it is closing the pipe's write end.

mod handshake;
mod holes;
mod serve;
mod sys;

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use tokio::sync::watch;

use crate::runtime::{RuntimeError, error_chain};

pub use handshake::GuestRegion;
use handshake::{SocketFile, Worker, listen};
use holes::Memory;

/// How long the handler waits, by default, for the VMM's connection and handshake.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest handshake accepted (a region takes about 120 bytes).
const MAX_HANDSHAKE: usize = 1 << 20;

/// Why a page-fault handler could not start, or why it ended.
#[derive(Debug, thiserror::Error)]
pub enum UffdError {
    /// The memory file cannot be opened, sized, mapped or scanned for holes.
    #[error("{what} the memory file {}", path.display())]
    MemoryFile {
        /// The operation.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The socket cannot be created.
    #[error("listen on {}", path.display())]
    Listen {
        /// The socket.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The handler's thread or its stop pipe cannot be created.
    #[error("start the page-fault handler")]
    Start(#[source] io::Error),
    /// No VMM connected and completed the handshake in time.
    #[error("no VMM handed over its memory on {} within {timeout:?}", path.display())]
    Timeout {
        /// The socket.
        path: PathBuf,
        /// The timeout.
        timeout: Duration,
    },
    /// Accepting the connection or receiving the handshake failed.
    #[error("receive the handshake")]
    Receive(#[source] io::Error),
    /// The connection closed before any region description.
    #[error("the VMM closed the connection without a handshake")]
    NoHandshake,
    /// The handshake is larger than any region list.
    #[error("the handshake exceeds {MAX_HANDSHAKE} bytes")]
    HandshakeTooLarge,
    /// The region description is not a JSON list of regions.
    #[error("the handshake is not a list of memory regions")]
    Malformed(#[source] serde_json::Error),
    /// The region list is empty.
    #[error("the handshake lists no memory region")]
    NoRegions,
    /// The handshake carried no file descriptor.
    #[error("the handshake carries no userfaultfd")]
    MissingUffd,
    /// The handshake carried more than one file descriptor.
    #[error("the handshake carries more than one file descriptor")]
    TooManyFds,
    /// The descriptor received is not a userfaultfd.
    #[error("the descriptor received is not a userfaultfd but {0:?}")]
    NotAUserfaultfd(String),
    /// A region is not usable (empty, misaligned, overlapping, bad page size).
    #[error("memory region {index} ({region:?}): {reason}")]
    InvalidRegion {
        /// Its index in the handshake.
        index: usize,
        /// The region.
        region: GuestRegion,
        /// What is wrong.
        reason: &'static str,
    },
    /// A region's contents would lie beyond the end of the memory file.
    #[error("memory region {index} ({region:?}) lies beyond the memory file ({file_len} bytes)")]
    RegionOutsideFile {
        /// Its index in the handshake.
        index: usize,
        /// The region.
        region: GuestRegion,
        /// The memory file's size.
        file_len: u64,
    },
    /// The VMM's process cannot be watched.
    #[error("watch the VMM's process")]
    Peer(#[source] io::Error),
    /// A page fault lies in no region of the handshake.
    #[error("a page fault at {addr:#x} lies in no memory region")]
    FaultOutsideRegions {
        /// The faulting address.
        addr: u64,
    },
    /// Waiting on or reading the userfaultfd failed.
    #[error("read the userfaultfd")]
    Read(#[source] io::Error),
    /// A userfaultfd operation failed.
    #[error("{op} at {addr:#x}")]
    Fill {
        /// The ioctl.
        op: &'static str,
        /// The page.
        addr: u64,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The handler's thread panicked.
    #[error("the page-fault handler panicked")]
    Panicked,
}

impl From<UffdError> for RuntimeError {
    fn from(e: UffdError) -> Self {
        RuntimeError::Other(error_chain(&e))
    }
}

/// How a handler that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UffdEnd {
    /// It was stopped (or its handle dropped).
    Stopped,
    /// The VMM exited.
    VmExited,
}

/// What a handler has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UffdStats {
    /// Page faults received.
    pub faults: u64,
    /// Pages filled from the memory file (`UFFDIO_COPY`).
    pub pages_copied: u64,
    /// Pages filled with zeros: holes of the file and pages the guest gave back.
    pub zero_pages: u64,
    /// Faults on pages already filled by the time they were served (woken only).
    pub already_present: u64,
    /// Ranges the guest gave back (`UFFD_EVENT_REMOVE`).
    pub removed_ranges: u64,
}

#[derive(Debug, Default)]
struct Counters {
    faults: AtomicU64,
    pages_copied: AtomicU64,
    zero_pages: AtomicU64,
    already_present: AtomicU64,
    removed_ranges: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> UffdStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        UffdStats {
            faults: get(&self.faults),
            pages_copied: get(&self.pages_copied),
            zero_pages: get(&self.zero_pages),
            already_present: get(&self.already_present),
            removed_ranges: get(&self.removed_ranges),
        }
    }

    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A page-fault handler to start for one restoring VM.
#[derive(Debug, Clone)]
pub struct UffdHandler {
    capsule_id: String,
    socket_path: PathBuf,
    memory_file: PathBuf,
    connect_timeout: Duration,
}

impl UffdHandler {
    /// A handler for `capsule_id` that will listen on `socket_path` (the `backend_path`
    /// of the snapshot load) and serve pages from `memory_file`.
    pub fn new(
        capsule_id: impl Into<String>,
        socket_path: impl Into<PathBuf>,
        memory_file: impl Into<PathBuf>,
    ) -> Self {
        Self {
            capsule_id: capsule_id.into(),
            socket_path: socket_path.into(),
            memory_file: memory_file.into(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// How long the VMM may take to connect and send its handshake (else the handler
    /// ends with [`UffdError::Timeout`]).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Opens and maps the memory file, listens on the socket (replacing a stale socket
    /// there) and starts serving on a thread of its own. The socket exists when this
    /// returns, so the snapshot load can follow at once.
    ///
    /// The socket gets the process's default permissions: a VMM running as another
    /// user needs the caller to grant it access.
    pub fn start(self) -> Result<UffdHandle, UffdError> {
        let span = tracing::info_span!("uffd", capsule_id = %self.capsule_id);
        let memory = Memory::open(&self.memory_file)?;
        let listener = listen(&self.socket_path)?;
        let socket = SocketFile(Some(self.socket_path.clone()));
        let (stop_rx, stop_tx) =
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(start_error)?;
        let counters = Arc::new(Counters::default());
        let (finished_tx, finished) = watch::channel(false);
        let worker = Worker {
            listener: Some(listener),
            path: self.socket_path.clone(),
            socket,
            memory,
            stop: stop_rx,
            deadline: Instant::now() + self.connect_timeout,
            timeout: self.connect_timeout,
            counters: counters.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("wrenn-uffd".into())
            .spawn(move || {
                let result = span.in_scope(|| worker.run());
                let _ = finished_tx.send(true);
                result
            })
            .map_err(UffdError::Start)?;
        Ok(UffdHandle {
            socket_path: self.socket_path,
            counters,
            stop: Some(stop_tx),
            thread: Some(thread),
            finished,
        })
    }
}

fn start_error(e: Errno) -> UffdError {
    UffdError::Start(e.into())
}

/// A running page-fault handler: keep it as long as the VM runs. Dropping it stops the
/// handler (as [`stop`](Self::stop) does).
#[derive(Debug)]
pub struct UffdHandle {
    socket_path: PathBuf,
    counters: Arc<Counters>,
    /// The write end of the stop pipe: closing it stops the handler.
    stop: Option<OwnedFd>,
    thread: Option<JoinHandle<Result<UffdEnd, UffdError>>>,
    finished: watch::Receiver<bool>,
}

impl UffdHandle {
    /// The socket the handler listens on (removed once the VMM connected).
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// What the handler has done so far.
    pub fn stats(&self) -> UffdStats {
        self.counters.snapshot()
    }

    /// Whether the handler has ended (and cleaned up).
    pub fn is_finished(&self) -> bool {
        *self.finished.borrow()
    }

    /// Waits until the handler has ended by itself (the VMM exited, or an error) and
    /// cleaned up. Cancel-safe.
    pub async fn finished(&mut self) {
        let _ = self.finished.wait_for(|done| *done).await;
    }

    /// Stops the handler (at once, also while it waits for the VMM's connection) and
    /// reports how it ended. Returns once its descriptors are closed and its socket is
    /// removed; that takes at most one page fill.
    pub fn stop(mut self) -> Result<UffdEnd, UffdError> {
        self.stop.take();
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(UffdError::Panicked),
            None => Ok(UffdEnd::Stopped),
        }
    }
}

impl Drop for UffdHandle {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

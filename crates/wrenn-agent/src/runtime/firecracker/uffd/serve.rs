//! The fault loop: reading the userfaultfd's events and filling each faulting page,
//! from the memory file or with zeros.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use rustix::io::Errno;

use super::holes::{Memory, Removed};
use super::sys::{self, Mapping, poll, pollfd, ready};
use super::{Counters, GuestRegion, UffdEnd, UffdError};

/// `uffd_msg` is 32 bytes; a read takes up to this many.
const EVENTS_PER_READ: usize = 64;
const UFFD_MSG_SIZE: usize = 32;
/// How soon a fill the kernel refused with `EAGAIN` (the memory layout was changing) is
/// tried again.
const RETRY_INTERVAL: Duration = Duration::from_millis(1);

/// How serving one fault went.
enum Served {
    Done,
    /// The kernel asked to try again (`EAGAIN`: a memory layout change is pending).
    Retry,
    /// The VMM's memory is gone (`ESRCH`): it exited.
    Gone,
}

/// The fault loop's state.
pub(super) struct Faults<'a> {
    pub(super) uffd: OwnedFd,
    /// Sorted by address, disjoint.
    pub(super) regions: Vec<GuestRegion>,
    pub(super) memory: &'a Memory,
    pub(super) host_page: u64,
    /// Ranges the guest gave back: zero-filled when faulted.
    pub(super) removed: Removed,
    /// Faulting addresses not served yet (in order).
    pub(super) pending: VecDeque<u64>,
    /// Zeros to copy from, for pages larger than a host page (`UFFDIO_ZEROPAGE` does
    /// not serve huge pages).
    pub(super) zeros: Option<Mapping>,
    pub(super) counters: &'a Counters,
}

impl Faults<'_> {
    pub(super) fn run(
        &mut self,
        stop: BorrowedFd<'_>,
        peer: Option<BorrowedFd<'_>>,
    ) -> Result<UffdEnd, UffdError> {
        loop {
            let mut fds = [pollfd(stop), pollfd(self.uffd.as_fd()), pollfd(stop)];
            if let Some(peer) = peer {
                fds[2] = pollfd(peer);
            }
            let count = if peer.is_some() { 3 } else { 2 };
            let timeout = (!self.pending.is_empty()).then_some(RETRY_INTERVAL);
            poll(&mut fds[..count], timeout).map_err(UffdError::Read)?;
            if ready(&fds[0]) {
                return Ok(UffdEnd::Stopped);
            }
            if fds[1].revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
                return Err(UffdError::Read(io::Error::other(
                    "poll reports an error on the userfaultfd",
                )));
            }
            if fds[1].revents & libc::POLLHUP != 0 {
                return Ok(UffdEnd::VmExited);
            }
            if ready(&fds[1]) && self.read_events()? {
                return Ok(UffdEnd::VmExited);
            }
            while let Some(&addr) = self.pending.front() {
                match self.serve(addr)? {
                    Served::Done => {
                        self.pending.pop_front();
                    }
                    Served::Retry => break,
                    Served::Gone => return Ok(UffdEnd::VmExited),
                }
            }
            if count == 3 && ready(&fds[2]) {
                return Ok(UffdEnd::VmExited);
            }
        }
    }

    /// Reads every queued event; `true` when the userfaultfd reports its end.
    fn read_events(&mut self) -> Result<bool, UffdError> {
        let mut buf = [0u8; UFFD_MSG_SIZE * EVENTS_PER_READ];
        loop {
            let n = match rustix::io::read(&self.uffd, &mut buf) {
                Ok(0) => return Ok(true),
                Ok(n) => n,
                Err(Errno::AGAIN) => return Ok(false),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(UffdError::Read(e.into())),
            };
            for msg in buf[..n].chunks_exact(UFFD_MSG_SIZE) {
                self.event(msg);
            }
            if n < buf.len() {
                return Ok(false);
            }
        }
    }

    /// One `struct uffd_msg`: `event` at byte 0, its arguments from byte 8.
    fn event(&mut self, msg: &[u8]) {
        let word = |at: usize| {
            msg.get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_ne_bytes)
        };
        match msg[0] {
            sys::EVENT_PAGEFAULT => {
                Counters::add(&self.counters.faults);
                let addr = word(16);
                tracing::trace!(addr = format_args!("{addr:#x}"), flags = word(8), "fault");
                self.pending.push_back(addr);
            }
            sys::EVENT_REMOVE => {
                Counters::add(&self.counters.removed_ranges);
                let (start, end) = (word(8), word(16));
                tracing::debug!(
                    start = format_args!("{start:#x}"),
                    end = format_args!("{end:#x}"),
                    "removed"
                );
                self.removed.add(start, end);
            }
            other => tracing::debug!(event = other, "ignored a userfaultfd event"),
        }
    }

    fn serve(&mut self, addr: u64) -> Result<Served, UffdError> {
        let after = self
            .regions
            .partition_point(|r| r.base_host_virt_addr <= addr);
        let region = after
            .checked_sub(1)
            .map(|i| self.regions[i])
            .filter(|r| addr - r.base_host_virt_addr < r.size)
            .ok_or(UffdError::FaultOutsideRegions { addr })?;
        let len = region.page_size;
        let page = addr & !(len - 1);
        // In the file: checked against its size at the handshake.
        let offset = region.offset + (page - region.base_host_virt_addr);
        if self.removed.contains(page) || self.memory.is_hole(offset, len) {
            self.zero(page, len)
        } else {
            let src = self.memory.addr() + offset;
            self.copy(page, src, len, &self.counters.pages_copied)
        }
    }

    fn zero(&mut self, page: u64, len: u64) -> Result<Served, UffdError> {
        if len == self.host_page {
            let mut arg = sys::ZeroPage {
                range: sys::Range { start: page, len },
                mode: 0,
                zeropage: 0,
            };
            return match sys::ioctl(self.uffd.as_fd(), sys::UFFDIO_ZEROPAGE, &mut arg) {
                Ok(()) => {
                    Counters::add(&self.counters.zero_pages);
                    Ok(Served::Done)
                }
                Err(e) => self.refused("UFFDIO_ZEROPAGE", page, len, e),
            };
        }
        if self.zeros.as_ref().is_none_or(|z| (z.len as u64) < len) {
            let size = usize::try_from(len).unwrap_or(usize::MAX);
            self.zeros = Some(Mapping::new(None, size).map_err(|source| UffdError::Fill {
                op: "mmap",
                addr: page,
                source,
            })?);
        }
        let src = self.zeros.as_ref().map_or(0, |z| z.addr as u64);
        self.copy(page, src, len, &self.counters.zero_pages)
    }

    /// `UFFDIO_COPY` of `len` bytes at `src` (inside one of our mappings) to `page`.
    fn copy(
        &self,
        page: u64,
        src: u64,
        len: u64,
        counter: &AtomicU64,
    ) -> Result<Served, UffdError> {
        let mut arg = sys::Copy {
            dst: page,
            src,
            len,
            mode: 0,
            copy: 0,
        };
        match sys::ioctl(self.uffd.as_fd(), sys::UFFDIO_COPY, &mut arg) {
            Ok(()) => {
                Counters::add(counter);
                Ok(Served::Done)
            }
            Err(e) => self.refused("UFFDIO_COPY", page, len, e),
        }
    }

    /// A fill the kernel refused: a page already there is woken, the rest decides.
    fn refused(
        &self,
        op: &'static str,
        page: u64,
        len: u64,
        e: io::Error,
    ) -> Result<Served, UffdError> {
        match e.raw_os_error() {
            Some(libc::EEXIST) => {
                Counters::add(&self.counters.already_present);
                let mut range = sys::Range { start: page, len };
                match sys::ioctl(self.uffd.as_fd(), sys::UFFDIO_WAKE, &mut range) {
                    Ok(()) => Ok(Served::Done),
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(Served::Gone),
                    Err(source) => Err(UffdError::Fill {
                        op: "UFFDIO_WAKE",
                        addr: page,
                        source,
                    }),
                }
            }
            Some(libc::EAGAIN) => Ok(Served::Retry),
            Some(libc::ESRCH) => Ok(Served::Gone),
            // The page's mapping went away (the VMM unmaps its memory as it exits).
            Some(libc::ENOENT) => Ok(Served::Done),
            _ => Err(UffdError::Fill {
                op,
                addr: page,
                source: e,
            }),
        }
    }
}

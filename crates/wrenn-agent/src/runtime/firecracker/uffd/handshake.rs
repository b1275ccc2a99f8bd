//! The VMM's side of the start: the socket it connects to, the handshake it sends (the
//! userfaultfd over `SCM_RIGHTS` and the JSON region list, parsed and checked), the
//! watch on its process, and the handler's thread from listening until it serves.

use std::collections::VecDeque;
use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};
use serde::{Deserialize, Serialize};

use super::holes::{Memory, Removed};
use super::serve::Faults;
use super::sys::{host_page_size, peer_pid, poll, pollfd, ready};
use super::{Counters, MAX_HANDSHAKE, UffdEnd, UffdError};
use crate::runtime::error_chain;

/// File descriptors a handshake may carry: one (room for more to detect a bad peer).
const MAX_FDS: usize = 4;

/// One guest memory region as Firecracker describes it in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestRegion {
    /// Where the region starts in the VMM's address space.
    pub base_host_virt_addr: u64,
    /// Its size in bytes.
    pub size: u64,
    /// Where its contents start in the memory file.
    pub offset: u64,
    /// Its page size in bytes (4 KiB, or 2 MiB with huge pages).
    pub page_size: u64,
}

/// The socket file, removed on drop.
pub(super) struct SocketFile(pub(super) Option<PathBuf>);

impl SocketFile {
    fn remove(&mut self) {
        if let Some(path) = self.0.take()
            && let Err(e) = std::fs::remove_file(&path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %error_chain(&e), "cannot remove the uffd socket");
        }
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Binds `path`, replacing a socket left there (never another kind of file).
pub(super) fn listen(path: &Path) -> Result<UnixListener, UffdError> {
    let error = |source| UffdError::Listen {
        path: path.to_owned(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && meta.file_type().is_socket()
    {
        std::fs::remove_file(path).map_err(error)?;
    }
    let listener = UnixListener::bind(path).map_err(error)?;
    listener.set_nonblocking(true).map_err(error)?;
    Ok(listener)
}

/// Parses and checks the handshake's region list against the memory file.
fn parse_regions(
    json: &[u8],
    file_len: u64,
    host_page: u64,
) -> Result<Vec<GuestRegion>, UffdError> {
    let mut regions: Vec<GuestRegion> =
        serde_json::from_slice(json).map_err(UffdError::Malformed)?;
    if regions.is_empty() {
        return Err(UffdError::NoRegions);
    }
    for (index, region) in regions.iter().enumerate() {
        let invalid = |reason| UffdError::InvalidRegion {
            index,
            region: *region,
            reason,
        };
        let page = region.page_size;
        if !page.is_power_of_two() || page < host_page {
            return Err(invalid(
                "the page size is not a power of two of at least a page",
            ));
        }
        if region.size == 0 || region.size % page != 0 {
            return Err(invalid(
                "the size is not a positive multiple of the page size",
            ));
        }
        if region.base_host_virt_addr % page != 0 || region.offset % page != 0 {
            return Err(invalid("the address or offset is not page-aligned"));
        }
        if region
            .base_host_virt_addr
            .checked_add(region.size)
            .is_none()
        {
            return Err(invalid("the region wraps around the address space"));
        }
        if region
            .offset
            .checked_add(region.size)
            .is_none_or(|end| end > file_len)
        {
            return Err(UffdError::RegionOutsideFile {
                index,
                region: *region,
                file_len,
            });
        }
    }
    regions.sort_by_key(|r| r.base_host_virt_addr);
    for (index, pair) in regions.windows(2).enumerate() {
        if pair[0].base_host_virt_addr + pair[0].size > pair[1].base_host_virt_addr {
            return Err(UffdError::InvalidRegion {
                index: index + 1,
                region: pair[1],
                reason: "the region overlaps another",
            });
        }
    }
    Ok(regions)
}

/// The handler's state before the VMM connected.
pub(super) struct Worker {
    pub(super) listener: Option<UnixListener>,
    pub(super) path: PathBuf,
    pub(super) socket: SocketFile,
    pub(super) memory: Memory,
    /// The read end of the stop pipe: readable (hung up) once the handle stops.
    pub(super) stop: OwnedFd,
    pub(super) deadline: Instant,
    pub(super) timeout: Duration,
    pub(super) counters: Arc<Counters>,
}

impl Worker {
    /// Runs the handler to its end; everything it holds is released on return.
    pub(super) fn run(mut self) -> Result<UffdEnd, UffdError> {
        let result = self.serve();
        match &result {
            Ok(end) => {
                tracing::info!(?end, stats = ?self.counters.snapshot(), "uffd handler ended")
            }
            Err(e) => tracing::warn!(
                error = %error_chain(e),
                stats = ?self.counters.snapshot(),
                "uffd handler failed"
            ),
        }
        result
    }

    fn serve(&mut self) -> Result<UffdEnd, UffdError> {
        let Some(stream) = self.accept()? else {
            return Ok(UffdEnd::Stopped);
        };
        // One VMM per socket: nobody else may connect.
        self.listener.take();
        self.socket.remove();
        let Some((uffd, json)) = self.receive(&stream)? else {
            return Ok(UffdEnd::Stopped);
        };
        let regions = parse_regions(&json, self.memory.len, host_page_size())?;
        let uffd = check_uffd(uffd)?;
        let peer = match watch_peer(&stream)? {
            Peer::Watched(pidfd) => Some(pidfd),
            Peer::Unknown => None,
            Peer::Gone => return Ok(UffdEnd::VmExited),
        };
        drop(stream);
        tracing::info!(
            regions = regions.len(),
            bytes = regions.iter().map(|r| r.size).sum::<u64>(),
            data_extents = self.memory.data.len(),
            "uffd handler serving"
        );
        let mut faults = Faults {
            uffd,
            regions,
            memory: &self.memory,
            host_page: host_page_size(),
            removed: Removed::default(),
            pending: VecDeque::new(),
            zeros: None,
            counters: &self.counters,
        };
        faults.run(self.stop.as_fd(), peer.as_ref().map(AsFd::as_fd))
    }

    /// Waits for the VMM's connection: `None` when stopped first.
    fn accept(&mut self) -> Result<Option<OwnedFd>, UffdError> {
        let Some(listener) = &self.listener else {
            return Ok(None);
        };
        loop {
            let mut fds = [pollfd(self.stop.as_fd()), pollfd(listener.as_fd())];
            poll(&mut fds, Some(self.remaining()?)).map_err(UffdError::Receive)?;
            if ready(&fds[0]) {
                return Ok(None);
            }
            if ready(&fds[1]) {
                let flags = rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK;
                match rustix::net::accept_with(listener, flags) {
                    Ok(stream) => return Ok(Some(stream)),
                    Err(Errno::AGAIN | Errno::INTR | Errno::CONNABORTED) => {}
                    Err(e) => return Err(UffdError::Receive(e.into())),
                }
            }
        }
    }

    fn remaining(&self) -> Result<Duration, UffdError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(UffdError::Timeout {
                path: self.path.clone(),
                timeout: self.timeout,
            });
        }
        Ok(left)
    }

    /// Receives the handshake: the userfaultfd and the region list (read until it
    /// parses, the VMM closes the connection, or it is too large). `None` when stopped.
    fn receive(&mut self, stream: &OwnedFd) -> Result<Option<(OwnedFd, Vec<u8>)>, UffdError> {
        let mut json = Vec::new();
        let mut uffd = None;
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            let mut fds = [pollfd(self.stop.as_fd()), pollfd(stream.as_fd())];
            poll(&mut fds, Some(self.remaining()?)).map_err(UffdError::Receive)?;
            if ready(&fds[0]) {
                return Ok(None);
            }
            if !ready(&fds[1]) {
                continue;
            }
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let received = match rustix::net::recvmsg(
                stream,
                &mut [IoSliceMut::new(&mut chunk)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            ) {
                Ok(received) => received,
                Err(Errno::AGAIN | Errno::INTR) => continue,
                Err(e) => return Err(UffdError::Receive(e.into())),
            };
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(fds) = message {
                    for fd in fds {
                        if uffd.replace(fd).is_some() {
                            return Err(UffdError::TooManyFds);
                        }
                    }
                }
            }
            if received.flags.contains(ReturnFlags::CTRUNC) {
                return Err(UffdError::TooManyFds);
            }
            if received.bytes == 0 {
                if json.is_empty() {
                    return Err(UffdError::NoHandshake);
                }
                // Incomplete: report the parse error.
                break;
            }
            json.extend_from_slice(&chunk[..received.bytes.min(chunk.len())]);
            if json.len() > MAX_HANDSHAKE {
                return Err(UffdError::HandshakeTooLarge);
            }
            match serde_json::from_slice::<serde::de::IgnoredAny>(&json) {
                Ok(_) => break,
                Err(e) if e.is_eof() => {}
                Err(e) => return Err(UffdError::Malformed(e)),
            }
        }
        let uffd = uffd.ok_or(UffdError::MissingUffd)?;
        Ok(Some((uffd, json)))
    }
}

/// Checks that `fd` is a userfaultfd and makes it non-blocking (`poll` on a blocking
/// one always reports an error).
fn check_uffd(fd: OwnedFd) -> Result<OwnedFd, UffdError> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(UffdError::Receive)?;
    if link.as_os_str() != "anon_inode:[userfaultfd]" {
        return Err(UffdError::NotAUserfaultfd(
            link.to_string_lossy().into_owned(),
        ));
    }
    let flags = rustix::fs::fcntl_getfl(&fd).map_err(|e| UffdError::Receive(e.into()))?;
    if !flags.contains(rustix::fs::OFlags::NONBLOCK) {
        rustix::fs::fcntl_setfl(&fd, flags | rustix::fs::OFlags::NONBLOCK)
            .map_err(|e| UffdError::Receive(e.into()))?;
    }
    Ok(fd)
}

enum Peer {
    Watched(OwnedFd),
    /// The pid is not visible from here (another pid namespace): the handler then
    /// ends only when stopped.
    Unknown,
    Gone,
}

/// A pidfd of the process that connected (`SO_PEERCRED`), readable once it exits.
fn watch_peer(stream: &OwnedFd) -> Result<Peer, UffdError> {
    let pid = peer_pid(stream.as_fd()).map_err(UffdError::Peer)?;
    let Some(pid) = rustix::process::Pid::from_raw(pid) else {
        tracing::warn!("the VMM's pid is not visible: the uffd handler ends only when stopped");
        return Ok(Peer::Unknown);
    };
    match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
        Ok(pidfd) => Ok(Peer::Watched(pidfd)),
        Err(Errno::SRCH) => Ok(Peer::Gone),
        Err(e) => Err(UffdError::Peer(e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 4096;

    fn region(base: u64, size: u64, offset: u64, page_size: u64) -> GuestRegion {
        GuestRegion {
            base_host_virt_addr: base,
            size,
            offset,
            page_size,
        }
    }

    #[test]
    fn uffd_regions_parse_firecracker_v1_12_handshakes() {
        let json = br#"[{"base_host_virt_addr":140000000000000,"size":8192,"offset":4096,"page_size":4096,"page_size_kib":4096}]"#;
        let regions = parse_regions(json, 3 * PAGE, PAGE).unwrap();
        assert_eq!(regions, [region(140_000_000_000_000, 8192, 4096, 4096)]);
    }

    #[test]
    fn uffd_regions_reject_bad_input() {
        let check = |regions: &[GuestRegion], file_len| {
            parse_regions(&serde_json::to_vec(regions).unwrap(), file_len, PAGE)
        };
        let base = 1 << 30;
        assert!(matches!(
            parse_regions(b"{\"a\":1}", PAGE, PAGE),
            Err(UffdError::Malformed(_))
        ));
        assert!(matches!(check(&[], PAGE), Err(UffdError::NoRegions)));
        for (bad, reason) in [
            (region(base, PAGE, 0, 3000), "page size"),
            (region(base, PAGE, 0, 2048), "page size"),
            (region(base, 0, 0, PAGE), "size"),
            (region(base, PAGE + 1, 0, PAGE), "size"),
            (region(base + 1, PAGE, 0, PAGE), "aligned"),
            (region(base, PAGE, 1, PAGE), "aligned"),
            (region(u64::MAX - PAGE + 1, 2 * PAGE, 0, PAGE), "wraps"),
        ] {
            match check(&[bad], 4 * PAGE) {
                Err(UffdError::InvalidRegion { reason: r, .. }) => {
                    assert!(r.contains(reason), "{r}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        assert!(matches!(
            check(&[region(base, 2 * PAGE, 3 * PAGE, PAGE)], 4 * PAGE),
            Err(UffdError::RegionOutsideFile { index: 0, file_len, .. }) if file_len == 4 * PAGE
        ));
        assert!(matches!(
            check(&[region(base, PAGE, u64::MAX - PAGE + 1, PAGE)], 4 * PAGE),
            Err(UffdError::RegionOutsideFile { .. })
        ));
        assert!(matches!(
            check(
                &[region(base + PAGE, PAGE, 0, PAGE), region(base, 2 * PAGE, 0, PAGE)],
                4 * PAGE
            ),
            Err(UffdError::InvalidRegion { index: 1, reason, .. }) if reason.contains("overlaps")
        ));
    }
}

//! The raw system interfaces, each unsafe block with its SAFETY argument: the
//! userfaultfd ABI (`linux/userfaultfd.h`), which `libc` does not carry, and the `mmap`,
//! `sysconf`, `poll` and `SO_PEERCRED` wrappers.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
)))]
compile_error!("the userfaultfd ioctl numbers below use the generic _IOC encoding");

pub(super) const EVENT_PAGEFAULT: u8 = 0x12;
pub(super) const EVENT_REMOVE: u8 = 0x15;

/// `struct uffdio_range`.
#[repr(C)]
pub(super) struct Range {
    pub(super) start: u64,
    pub(super) len: u64,
}

/// `struct uffdio_copy`.
#[repr(C)]
pub(super) struct Copy {
    pub(super) dst: u64,
    pub(super) src: u64,
    pub(super) len: u64,
    pub(super) mode: u64,
    pub(super) copy: i64,
}

/// `struct uffdio_zeropage`.
#[repr(C)]
pub(super) struct ZeroPage {
    pub(super) range: Range,
    pub(super) mode: u64,
    pub(super) zeropage: i64,
}

/// `_IOC(dir, 0xAA, nr, size)`.
const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (0xAA << 8) | nr
}
const READ: u64 = 2;
const READ_WRITE: u64 = 3;

pub(super) const UFFDIO_WAKE: u64 = ioc(READ, 0x02, size_of::<Range>());
pub(super) const UFFDIO_COPY: u64 = ioc(READ_WRITE, 0x03, size_of::<Copy>());
pub(super) const UFFDIO_ZEROPAGE: u64 = ioc(READ_WRITE, 0x04, size_of::<ZeroPage>());

/// One userfaultfd ioctl with its argument structure.
#[allow(unsafe_code)]
pub(super) fn ioctl<T>(uffd: BorrowedFd<'_>, request: u64, arg: &mut T) -> io::Result<()> {
    debug_assert_eq!((request >> 16) & 0x3fff, size_of::<T>() as u64);
    // SAFETY: `request` encodes the size of `T`, the structure the kernel reads and
    // writes (checked above); `arg` is valid and exclusively borrowed. The only other
    // memory the kernel touches in this process is UFFDIO_COPY's source: `len` bytes
    // inside one of our read-only mappings, which the callers guarantee (regions are
    // checked against the file's size). Destinations are in the VMM's address space,
    // validated by the kernel.
    let r = unsafe { libc::ioctl(uffd.as_raw_fd(), request as _, arg as *mut T) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A read-only private mapping, unmapped on drop (of a file, or anonymous: zeros).
#[derive(Debug)]
pub(super) struct Mapping {
    pub(super) addr: usize,
    pub(super) len: usize,
}

impl Mapping {
    #[allow(unsafe_code)]
    pub(super) fn new(file: Option<BorrowedFd<'_>>, len: usize) -> io::Result<Self> {
        let (flags, fd) = match file {
            Some(fd) => (libc::MAP_PRIVATE, fd.as_raw_fd()),
            None => (
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
            ),
        };
        // SAFETY: a new mapping at an address the kernel chooses (no MAP_FIXED), so no
        // existing memory is affected; it is only read (PROT_READ), through the kernel.
        let addr = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, flags, fd, 0) };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            addr: addr as usize,
            len,
        })
    }
}

impl Drop for Mapping {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: `addr`/`len` is the mapping this value created and owns; no reference
        // into it outlives the value (the kernel reads it only during our ioctls).
        unsafe {
            libc::munmap(self.addr as *mut libc::c_void, self.len);
        }
    }
}

/// The system page size.
#[allow(unsafe_code)]
pub(super) fn host_page_size() -> u64 {
    // SAFETY: `sysconf` only reads a system parameter.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

/// Waits until one of `fds` is ready (or `timeout` passes); retries on `EINTR`.
#[allow(unsafe_code)]
pub(super) fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<()> {
    let timeout = timeout.map_or(-1, |t| {
        i32::try_from(t.as_millis().max(u128::from(!t.is_zero()))).unwrap_or(i32::MAX)
    });
    loop {
        // SAFETY: `fds` is a valid, exclusively borrowed array of `pollfd` of the given
        // length; `poll` writes only their `revents`.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

pub(super) fn pollfd(fd: BorrowedFd<'_>) -> libc::pollfd {
    libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }
}

pub(super) fn ready(p: &libc::pollfd) -> bool {
    p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
}

/// The pid of the process that connected `stream` (0 when not visible from here).
#[allow(unsafe_code)]
pub(super) fn peer_pid(stream: BorrowedFd<'_>) -> io::Result<i32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes and `len` is `cred`'s size; the
    // kernel writes at most `len` bytes. (`rustix`'s version reads the pid into a
    // non-zero type, which a pid 0 would make invalid.)
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.pid)
}

#[cfg(test)]
mod tests {
    use crate::runtime::firecracker::uffd::sys;

    #[test]
    fn uffd_ioctl_numbers_match_the_kernel_headers() {
        assert_eq!(sys::UFFDIO_WAKE, 0x8010_AA02);
        assert_eq!(sys::UFFDIO_COPY, 0xC028_AA03);
        assert_eq!(sys::UFFDIO_ZEROPAGE, 0xC020_AA04);
    }
}

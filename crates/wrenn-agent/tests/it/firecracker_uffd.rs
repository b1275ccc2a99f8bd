//! The userfaultfd page-fault handler (`runtime::firecracker::uffd`): against real
//! userfaultfds of a process that hands its memory over exactly as Firecracker does,
//! and with the real Firecracker v1.12.1 restoring a guest from it (needs root).
//!
//! The tests that count this process's descriptors run alone, in a fresh process of
//! this test binary ([`isolated`]): other tests open and close descriptors all the time.

use std::collections::BTreeMap;
use std::io::{IoSlice, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use wrenn_agent::runtime::firecracker::api::{
    MemoryBackend, MemoryBackendType, SnapshotCreateParams, SnapshotLoadParams, SnapshotType,
};
use wrenn_agent::runtime::firecracker::uffd::{
    GuestRegion, UffdEnd, UffdError, UffdHandle, UffdHandler, UffdStats,
};

use crate::firecracker::{
    GUEST_FLAG, boot, chain, guest_kernel, machine, quiet, start_direct, stop_and_check, unique,
    wait_for_line,
};

const PAGE: u64 = 4096;
const PAGES: u64 = 16;
/// Set in the process that runs an [`isolated`] test's body.
const ISOLATED_ENV: &str = "WRENN_TEST_UFFD_ISOLATED";
const QUICK: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

/// Whether to run the body of test `name` here: in the process started for it. Else it
/// runs the test alone in a new process of this binary, asserts that it passed and
/// returns `false`.
fn isolated(name: &str) -> bool {
    let full = format!("firecracker_uffd::{name}");
    if std::env::var(ISOLATED_ENV).is_ok_and(|v| v == full) {
        return true;
    }
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args([full.as_str(), "--exact", "--test-threads=1", "--nocapture"])
        .env(ISOLATED_ENV, &full)
        .output()
        .expect("run the test binary");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{full} in its own process: {}\n{stdout}\n{stderr}",
        out.status
    );
    false
}

/// This process's descriptors and what they refer to.
fn open_fds() -> BTreeMap<i32, String> {
    let mut fds = BTreeMap::new();
    for entry in std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .flatten()
    {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(target) = std::fs::read_link(entry.path()) {
            fds.insert(fd, target.to_string_lossy().into_owned());
        }
    }
    fds
}

/// How many descriptors of this process refer to `target` (exactly).
fn fds_to(target: &str) -> usize {
    open_fds().values().filter(|t| *t == target).count()
}

/// Whether this process maps `path`.
fn mapped(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/maps")
        .expect("/proc/self/maps")
        .lines()
        .any(|l| l.ends_with(path))
}

/// Page `i` of the memory file: data, zeros written (still data), or a hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Page {
    Data,
    WrittenZeros,
    Hole,
}

const LAYOUT: [Page; PAGES as usize] = {
    use Page::*;
    [
        Data,
        Data,
        WrittenZeros,
        Hole,
        Data,
        Hole,
        Hole,
        Data,
        Data,
        Hole,
        Data,
        WrittenZeros,
        Data,
        Data,
        Hole,
        Hole,
    ]
};

/// A page's contents in the memory file.
fn page_bytes(i: u64) -> Vec<u8> {
    match LAYOUT[i as usize] {
        Page::Data => (0..PAGE)
            .map(|b| (b as u8).wrapping_mul(7) ^ (i as u8 + 1))
            .collect(),
        Page::WrittenZeros | Page::Hole => vec![0; PAGE as usize],
    }
}

/// The memory file of [`LAYOUT`]: holes are never written.
fn memory_file(path: &Path) {
    let file = std::fs::File::create(path).unwrap();
    file.set_len(PAGES * PAGE).unwrap();
    for i in 0..PAGES {
        if LAYOUT[i as usize] != Page::Hole {
            file.write_all_at(&page_bytes(i), i * PAGE).unwrap();
        }
    }
    file.sync_all().unwrap();
    // The file system keeps the holes (else the test would prove nothing).
    let allocated = file.metadata().unwrap().blocks() * 512;
    let holes = LAYOUT.iter().filter(|p| **p == Page::Hole).count() as u64;
    assert_eq!(allocated, (PAGES - holes) * PAGE, "the holes are not kept");
}

/// Firecracker's handshake: its JSON (v1.12, with the deprecated `page_size_kib`).
fn handshake(regions: &[GuestRegion]) -> Vec<u8> {
    let list: Vec<serde_json::Value> = regions
        .iter()
        .map(|r| {
            serde_json::json!({
                "base_host_virt_addr": r.base_host_virt_addr,
                "size": r.size,
                "offset": r.offset,
                "page_size": r.page_size,
                "page_size_kib": r.page_size,
            })
        })
        .collect();
    serde_json::to_vec(&list).unwrap()
}

/// Connects to `socket` and sends `bytes` with `fds` attached, as Firecracker does.
fn send(socket: &Path, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> UnixStream {
    let stream = UnixStream::connect(socket).expect("connect to the handler");
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
    }
    let sent = rustix::net::sendmsg(
        &stream,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::empty(),
    )
    .expect("sendmsg");
    assert_eq!(sent, bytes.len());
    stream
}

/// The userfaultfd ABI the handler does not need (Firecracker does this side).
mod uffd_sys {
    pub const UFFD_API: u64 = 0xAA;
    pub const UFFDIO_API: u64 = 0xC018_AA3F;
    pub const UFFDIO_REGISTER: u64 = 0xC020_AA00;
    pub const REGISTER_MODE_MISSING: u64 = 1;
    pub const FEATURE_EVENT_REMOVE: u64 = 1 << 3;

    #[repr(C)]
    pub struct Api {
        pub api: u64,
        pub features: u64,
        pub ioctls: u64,
    }

    #[repr(C)]
    pub struct Register {
        pub start: u64,
        pub len: u64,
        pub mode: u64,
        pub ioctls: u64,
    }
}

/// A new userfaultfd (`UFFDIO_API` done, with `features`), as Firecracker creates it:
/// non-blocking, close-on-exec. Returns `-1` on failure; only raw system calls (usable
/// after `fork`).
#[allow(unsafe_code)]
fn raw_userfaultfd(features: u64) -> i32 {
    // SAFETY: plain system calls on values owned here; `api` is valid for the ioctl.
    unsafe {
        let fd = libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) as i32;
        if fd < 0 {
            return -1;
        }
        let mut api = uffd_sys::Api {
            api: uffd_sys::UFFD_API,
            features,
            ioctls: 0,
        };
        if libc::ioctl(fd, uffd_sys::UFFDIO_API as _, &mut api) != 0 {
            libc::close(fd);
            return -1;
        }
        fd
    }
}

fn userfaultfd() -> OwnedFd {
    let fd = raw_userfaultfd(0);
    assert!(fd >= 0, "userfaultfd: {}", std::io::Error::last_os_error());
    #[allow(unsafe_code)]
    // SAFETY: `fd` was just created and is owned by nobody else.
    unsafe {
        OwnedFd::from_raw_fd(fd)
    }
}

/// An anonymous private mapping of `len` bytes (`shared`: shared with children).
#[allow(unsafe_code)]
fn map_anonymous(len: u64, shared: bool) -> u64 {
    let share = if shared {
        libc::MAP_SHARED
    } else {
        libc::MAP_PRIVATE
    };
    // SAFETY: a new mapping where the kernel chooses; nothing else refers to it.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            share | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(
        addr,
        libc::MAP_FAILED,
        "{}",
        std::io::Error::last_os_error()
    );
    addr as u64
}

#[allow(unsafe_code)]
fn unmap(addr: u64, len: u64) {
    // SAFETY: a mapping made by `map_anonymous`, no longer referred to.
    unsafe {
        libc::munmap(addr as *mut libc::c_void, len as usize);
    }
}

/// What the forked "VMM" works with: everything prepared before `fork`, so that the
/// child makes no allocation.
struct Vmm {
    /// Its guest memory: `PAGES + 1` pages; the page in between the regions is in none.
    memory: u64,
    /// Where it copies what it reads: `PAGES + 1` pages, shared with the parent.
    results: u64,
    socket: libc::sockaddr_un,
    handshake: Vec<u8>,
}

/// The guest pages in the order of the results: region A (file pages 8..16), then B
/// (file pages 0..8); `(address, file page)`.
fn touched(memory: u64) -> impl Iterator<Item = (u64, u64)> {
    (0..PAGES).map(move |r| {
        if r < PAGES / 2 {
            (memory + r * PAGE, PAGES / 2 + r)
        } else {
            (memory + (r + 1) * PAGE, r - PAGES / 2)
        }
    })
}

/// The child: registers its memory with a new userfaultfd, hands both over as
/// Firecracker does, then reads every page (each fault served by the handler in the
/// parent), writes to a hole page, gives a page back (`MADV_DONTNEED`) and reads it,
/// and reads everything again. Returns its exit status.
/// Only raw system calls and copies: it runs after `fork` in a threaded process.
#[allow(unsafe_code)]
fn vmm_child(vmm: &Vmm) -> i32 {
    // With a balloon, Firecracker asks for `UFFD_EVENT_REMOVE` too.
    let uffd = raw_userfaultfd(uffd_sys::FEATURE_EVENT_REMOVE);
    if uffd < 0 {
        return 10;
    }
    // SAFETY: system calls on descriptors and memory this child owns; the register and
    // message structures are valid for the calls; the copies stay inside the mappings
    // (`PAGES + 1` pages each).
    unsafe {
        let mut register = uffd_sys::Register {
            start: vmm.memory,
            len: (PAGES + 1) * PAGE,
            mode: uffd_sys::REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        if libc::ioctl(uffd, uffd_sys::UFFDIO_REGISTER as _, &mut register) != 0 {
            return 11;
        }
        let sock = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return 12;
        }
        if libc::connect(
            sock,
            (&raw const vmm.socket).cast(),
            size_of::<libc::sockaddr_un>() as libc::socklen_t,
        ) != 0
        {
            return 13;
        }
        let mut iov = libc::iovec {
            iov_base: vmm.handshake.as_ptr() as *mut libc::c_void,
            iov_len: vmm.handshake.len(),
        };
        let mut control = [0u64; 4];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(size_of::<i32>() as u32) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<i32>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>(), uffd);
        if libc::sendmsg(sock, &msg, 0) != vmm.handshake.len() as isize {
            return 14;
        }
        // Like Firecracker, it keeps the connection and its userfaultfd until it exits.
        for (r, (addr, _)) in touched(vmm.memory).enumerate() {
            std::ptr::copy_nonoverlapping(
                addr as *const u8,
                (vmm.results + r as u64 * PAGE) as *mut u8,
                PAGE as usize,
            );
        }
        // File page 5 (a hole, served as the zero page) is written, then read back.
        let (hole, _) = touched(vmm.memory)
            .nth(PAGES as usize / 2 + 5)
            .unwrap_or_default();
        std::ptr::write_volatile((hole + 100) as *mut u8, 0x5A);
        let back = std::ptr::read_volatile((hole + 100) as *const u8);
        std::ptr::write_volatile((vmm.results + PAGES * PAGE) as *mut u8, back);
        // File page 0 (data, already served) is given back, as a balloon does: read
        // again, it is zeros.
        let (given, _) = touched(vmm.memory)
            .nth(PAGES as usize / 2)
            .unwrap_or_default();
        if libc::madvise(
            given as *mut libc::c_void,
            PAGE as usize,
            libc::MADV_DONTNEED,
        ) != 0
        {
            return 15;
        }
        let mut zeros = 1u8;
        for b in 0..PAGE {
            if std::ptr::read_volatile((given + b) as *const u8) != 0 {
                zeros = 0;
            }
        }
        std::ptr::write_volatile((vmm.results + PAGES * PAGE + 1) as *mut u8, zeros);
        // A second pass faults nothing.
        for (addr, _) in touched(vmm.memory) {
            std::ptr::read_volatile(addr as *const u8);
        }
        0
    }
}

/// Forks a child that runs [`vmm_child`] and exits.
#[allow(unsafe_code)]
fn fork_vmm(vmm: &Vmm) -> libc::pid_t {
    // SAFETY: the child runs only `vmm_child` (system calls and copies on memory
    // prepared before the fork, no allocation, no lock) and `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let status = vmm_child(vmm);
        // SAFETY: ends the child without running anything of the parent's.
        unsafe { libc::_exit(status) };
    }
    pid
}

/// Waits (without blocking the runtime for long) for child `pid`: its exit status.
#[allow(unsafe_code)]
async fn reap(pid: libc::pid_t) -> i32 {
    let deadline = Instant::now() + QUICK;
    loop {
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is valid for writes.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            assert!(libc::WIFEXITED(status), "child status {status:#x}");
            return libc::WEXITSTATUS(status);
        }
        if Instant::now() > deadline {
            // SAFETY: kills and reaps our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            panic!("the child did not finish: its faults were not served");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn sockaddr(path: &Path) -> libc::sockaddr_un {
    let mut addr = libc::sockaddr_un {
        sun_family: libc::AF_UNIX as libc::sa_family_t,
        sun_path: [0; 108],
    };
    let bytes = path.as_os_str().as_encoded_bytes();
    assert!(bytes.len() < addr.sun_path.len());
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    addr
}

/// Waits until `handle` ended by itself.
async fn ended(handle: &mut UffdHandle) {
    tokio::time::timeout(QUICK, handle.finished())
        .await
        .expect("the handler did not end by itself");
    assert!(handle.is_finished());
}

/// Starts a handler on a fresh socket in `dir`, lets `peer` talk to it, and returns
/// how the handler ended by itself (it must, at once), once cleaned up.
async fn handshake_error(dir: &Path, memory: &Path, peer: impl FnOnce(&Path)) -> UffdError {
    let socket = dir.join(format!("{}.sock", unique("bad")));
    let mut handle = UffdHandler::new("cap-bad", &socket, memory)
        .start()
        .expect("start");
    peer(&socket);
    ended(&mut handle).await;
    assert!(!socket.exists(), "{} left behind", socket.display());
    match handle.stop() {
        Err(e) => e,
        Ok(end) => panic!("expected an error, the handler ended with {end:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn firecracker_uffd_serves_file_pages_and_zero_pages_to_a_faulting_process() {
    if !isolated("firecracker_uffd_serves_file_pages_and_zero_pages_to_a_faulting_process") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let memfile = dir.path().join("memfile");
    memory_file(&memfile);
    let socket = dir.path().join("uffd.sock");
    let before = open_fds();

    let mut handle = UffdHandler::new("cap-uffd", &socket, &memfile)
        .start()
        .expect("start the handler");
    assert!(socket.exists(), "no socket to connect to");
    let memory = map_anonymous((PAGES + 1) * PAGE, false);
    let results = map_anonymous((PAGES + 1) * PAGE, true);
    // Two regions, in the other order than in the file, one page apart.
    let regions = [
        GuestRegion {
            base_host_virt_addr: memory,
            size: PAGES / 2 * PAGE,
            offset: PAGES / 2 * PAGE,
            page_size: PAGE,
        },
        GuestRegion {
            base_host_virt_addr: memory + (PAGES / 2 + 1) * PAGE,
            size: PAGES / 2 * PAGE,
            offset: 0,
            page_size: PAGE,
        },
    ];
    let vmm = Vmm {
        memory,
        results,
        socket: sockaddr(&socket),
        handshake: handshake(&regions),
    };
    let child = fork_vmm(&vmm);
    assert_eq!(reap(child).await, 0, "the child failed (see vmm_child)");
    // The child exited: the handler ends by itself, and cleaned up.
    ended(&mut handle).await;
    let stats = handle.stats();
    assert_eq!(handle.stop().expect("a clean end"), UffdEnd::VmExited);

    #[allow(unsafe_code)]
    // SAFETY: the shared mapping holds `PAGES + 1` pages the child wrote; it is alive.
    let read =
        unsafe { std::slice::from_raw_parts(results as *const u8, ((PAGES + 1) * PAGE) as usize) };
    for (r, (_, file_page)) in touched(memory).enumerate() {
        let got = &read[r * PAGE as usize..(r + 1) * PAGE as usize];
        assert!(
            got == page_bytes(file_page).as_slice(),
            "guest page {r} (file page {file_page}, {:?}) differs from the file",
            LAYOUT[file_page as usize]
        );
    }
    assert_eq!(
        read[(PAGES * PAGE) as usize],
        0x5A,
        "a zero page is writable"
    );
    assert_eq!(
        read[(PAGES * PAGE) as usize + 1],
        1,
        "a page given back reads zeros"
    );
    unmap(memory, (PAGES + 1) * PAGE);
    unmap(results, (PAGES + 1) * PAGE);

    let holes = LAYOUT.iter().filter(|p| **p == Page::Hole).count() as u64;
    assert_eq!(
        stats,
        UffdStats {
            faults: PAGES + 1,
            pages_copied: PAGES - holes,
            zero_pages: holes + 1,
            already_present: 0,
            removed_ranges: 1,
        },
        "each page faulted once (the one given back twice): data (and written zeros) \
         copied, holes and the page given back zero pages"
    );
    assert!(!socket.exists(), "the socket is left");
    assert!(
        !mapped(&memfile.to_string_lossy()),
        "the memory file is still mapped"
    );
    assert_eq!(open_fds(), before, "descriptors leaked");
}

#[tokio::test]
async fn firecracker_uffd_handshake_errors_end_the_handler_cleanly() {
    if !isolated("firecracker_uffd_handshake_errors_end_the_handler_cleanly") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let memfile = dir.path().join("memfile");
    memory_file(&memfile);
    let uffd = userfaultfd();
    let other = std::fs::File::open(&memfile).unwrap();
    let region = |offset, size| GuestRegion {
        base_host_virt_addr: 1 << 30,
        size,
        offset,
        page_size: PAGE,
    };
    let good = handshake(&[region(0, PAGES * PAGE)]);
    let before = open_fds();

    let error = handshake_error(dir.path(), &memfile, |s| {
        send(s, b"not json", &[uffd.as_fd()]);
    })
    .await;
    assert!(
        matches!(error, UffdError::Malformed(_)),
        "{}",
        chain(&error)
    );

    let error = handshake_error(dir.path(), &memfile, |s| {
        send(s, &good, &[]);
    })
    .await;
    assert!(matches!(error, UffdError::MissingUffd), "{}", chain(&error));

    let error = handshake_error(dir.path(), &memfile, |s| {
        send(s, &good, &[uffd.as_fd(), uffd.as_fd()]);
    })
    .await;
    assert!(matches!(error, UffdError::TooManyFds), "{}", chain(&error));

    let error = handshake_error(dir.path(), &memfile, |s| {
        send(s, &good, &[other.as_fd()]);
    })
    .await;
    match &error {
        UffdError::NotAUserfaultfd(target) => assert_eq!(Path::new(target), memfile),
        _ => panic!("{}", chain(&error)),
    }

    let beyond = handshake(&[region(PAGE, PAGES * PAGE)]);
    let error = handshake_error(dir.path(), &memfile, |s| {
        send(s, &beyond, &[uffd.as_fd()]);
    })
    .await;
    assert!(
        matches!(error, UffdError::RegionOutsideFile { index: 0, file_len, .. } if file_len == PAGES * PAGE),
        "{}",
        chain(&error)
    );

    let error = handshake_error(dir.path(), &memfile, |s| {
        send(s, b"[]", &[uffd.as_fd()]);
    })
    .await;
    assert!(matches!(error, UffdError::NoRegions), "{}", chain(&error));

    let error = handshake_error(dir.path(), &memfile, |s| {
        drop(UnixStream::connect(s).unwrap());
    })
    .await;
    assert!(matches!(error, UffdError::NoHandshake), "{}", chain(&error));

    // A handshake cut short: an error once the connection closes.
    let error = handshake_error(dir.path(), &memfile, |s| {
        send(s, &good[..good.len() - 1], &[uffd.as_fd()]);
    })
    .await;
    assert!(
        matches!(error, UffdError::Malformed(ref e) if e.is_eof()),
        "{}",
        chain(&error)
    );

    // An endless one: an error past 1 MiB.
    let error = handshake_error(dir.path(), &memfile, |s| {
        let mut stream = send(s, b"[\"", &[uffd.as_fd()]);
        let chunk = vec![b'a'; 64 << 10];
        for _ in 0..32 {
            if stream.write_all(&chunk).is_err() {
                break;
            }
        }
    })
    .await;
    assert!(
        matches!(error, UffdError::HandshakeTooLarge),
        "{}",
        chain(&error)
    );

    assert_eq!(open_fds(), before, "descriptors leaked");
}

#[tokio::test]
async fn firecracker_uffd_stop_is_prompt_and_cleans_up() {
    if !isolated("firecracker_uffd_stop_is_prompt_and_cleans_up") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let memfile = dir.path().join("memfile");
    memory_file(&memfile);
    let socket = dir.path().join("uffd.sock");
    let before = open_fds();

    // Stopped while it waits for a VMM that never comes.
    let handle = UffdHandler::new("cap-stop", &socket, &memfile)
        .start()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(socket.exists() && !handle.is_finished());
    let started = Instant::now();
    assert_eq!(handle.stop().expect("stopped"), UffdEnd::Stopped);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(!socket.exists(), "the socket is left");

    // Dropped while waiting: the same.
    let handle = UffdHandler::new("cap-stop", &socket, &memfile)
        .start()
        .unwrap();
    drop(handle);
    assert!(!socket.exists(), "the socket is left");

    // Nobody connects in time.
    let mut handle = UffdHandler::new("cap-stop", &socket, &memfile)
        .connect_timeout(Duration::from_millis(200))
        .start()
        .unwrap();
    ended(&mut handle).await;
    assert!(!socket.exists(), "the socket is left");
    let error = handle.stop().expect_err("timeout");
    assert!(
        matches!(error, UffdError::Timeout { ref path, timeout } if *path == socket && timeout == Duration::from_millis(200)),
        "{}",
        chain(&error)
    );

    // Stopped while serving: the handshake arrives in pieces, the peer (this process)
    // lives on.
    let uffd = userfaultfd();
    let good = handshake(&[GuestRegion {
        base_host_virt_addr: 1 << 30,
        size: PAGES * PAGE,
        offset: 0,
        page_size: PAGE,
    }]);
    let handle = UffdHandler::new("cap-stop", &socket, &memfile)
        .start()
        .unwrap();
    let mut stream = send(&socket, &good[..10], &[uffd.as_fd()]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream.write_all(&good[10..]).unwrap();
    drop(stream);
    let deadline = Instant::now() + QUICK;
    while socket.exists() || fds_to("anon_inode:[userfaultfd]") < 2 {
        assert!(Instant::now() < deadline, "the handshake was not taken");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!handle.is_finished(), "the handler ended while serving");
    let started = Instant::now();
    assert_eq!(handle.stop().expect("stopped"), UffdEnd::Stopped);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        fds_to("anon_inode:[userfaultfd]"),
        1,
        "the handler's copy is open"
    );
    drop(uffd);

    // A stale socket is replaced; anything else at the path is an error, and kept.
    drop(UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    UffdHandler::new("cap-stop", &socket, &memfile)
        .start()
        .expect("a stale socket is replaced")
        .stop()
        .unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"keep").unwrap();
    let error = UffdHandler::new("cap-stop", &file, &memfile)
        .start()
        .expect_err("not a socket");
    assert!(
        matches!(error, UffdError::Listen { .. }),
        "{}",
        chain(&error)
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"keep");

    // A missing memory file fails before any socket exists.
    let error = UffdHandler::new("cap-stop", &socket, dir.path().join("missing"))
        .start()
        .expect_err("no memory file");
    assert!(
        matches!(error, UffdError::MemoryFile { what: "open", ref source, .. } if source.kind() == std::io::ErrorKind::NotFound),
        "{}",
        chain(&error)
    );
    assert!(!socket.exists());

    assert_eq!(open_fds(), before, "descriptors leaked");
}

#[tokio::test]
async fn firecracker_uffd_serves_a_guest_restored_by_the_real_binary() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinux");
    guest_kernel(&kernel);
    let first = dir.path().join("first");
    std::fs::create_dir(&first).unwrap();
    let vmm = start_direct(&first, None).await;
    let api = vmm.client();
    quiet(api).await;
    api.put_machine_config(&machine(false)).await.unwrap();
    api.put_boot_source(&boot(&kernel)).await.unwrap();
    api.start_instance().await.expect("InstanceStart");
    wait_for_line(&vmm, "A").await;
    api.pause().await.expect("pause");
    let (snapfile, memfile) = (dir.path().join("snapfile"), dir.path().join("memfile"));
    api.create_snapshot(&SnapshotCreateParams {
        snapshot_type: SnapshotType::Full,
        snapshot_path: snapfile.clone(),
        mem_file_path: memfile.clone(),
    })
    .await
    .expect("full snapshot");
    stop_and_check(vmm).await;
    let memory = std::fs::OpenOptions::new()
        .write(true)
        .open(&memfile)
        .unwrap();
    memory.write_all_at(&[1], GUEST_FLAG).unwrap();
    drop(memory);
    // Firecracker writes every page: keep only the non-zero ones (holes elsewhere).
    let sparse = dir.path().join("memfile.sparse");
    let status = Command::new("cp")
        .arg("--sparse=always")
        .args([&memfile, &sparse])
        .status()
        .unwrap();
    assert!(status.success());
    let meta = std::fs::metadata(&sparse).unwrap();
    assert_eq!(meta.len(), 128 << 20);
    assert!(
        meta.blocks() * 512 < 16 << 20,
        "{} bytes allocated",
        meta.blocks() * 512
    );
    let sparse_path = sparse.to_string_lossy().into_owned();
    let uffds = fds_to("anon_inode:[userfaultfd]");

    let second = dir.path().join("second");
    std::fs::create_dir(&second).unwrap();
    let socket = second.join("uffd.sock");
    let mut handle = UffdHandler::new(unique("cap"), &socket, &sparse)
        .start()
        .expect("start the handler");
    let vmm = start_direct(&second, None).await;
    let api = vmm.client();
    quiet(api).await;
    api.load_snapshot(&SnapshotLoadParams {
        snapshot_path: snapfile.clone(),
        mem_backend: MemoryBackend {
            backend_type: MemoryBackendType::Uffd,
            backend_path: socket.clone(),
        },
        enable_diff_snapshots: false,
        resume_vm: true,
        network_overrides: Vec::new(),
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "load with the Uffd backend: {}; handler: {:?}",
            chain(&e),
            handle.stats()
        )
    });
    wait_for_line(&vmm, "B").await;
    assert!(
        !vmm.output_tail().iter().any(|l| l == "A"),
        "the guest booted again"
    );
    assert!(!socket.exists(), "the socket outlived the connection");
    assert!(!handle.is_finished());
    assert_eq!(fds_to("anon_inode:[userfaultfd]"), uffds + 1);
    let served = handle.stats();
    eprintln!("pages served to the restored guest: {served:?}");
    assert!(served.pages_copied >= 1, "{served:?}");
    assert_eq!(
        served.faults,
        served.pages_copied + served.zero_pages + served.already_present,
        "{served:?}"
    );
    // Lazily: a handful of 32768 pages.
    assert!(served.pages_copied + served.zero_pages < 64, "{served:?}");

    stop_and_check(vmm).await;
    ended(&mut handle).await;
    assert_eq!(handle.stop().expect("a clean end"), UffdEnd::VmExited);
    assert_eq!(
        fds_to("anon_inode:[userfaultfd]"),
        uffds,
        "the userfaultfd is open"
    );
    assert_eq!(fds_to(&sparse_path), 0);
    assert!(!socket.exists());
    assert!(!mapped(&sparse_path), "the memory file is still mapped");
}

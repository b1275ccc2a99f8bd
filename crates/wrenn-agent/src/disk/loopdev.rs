//! Loop devices, attached and detached in-process: `LOOP_CTL_GET_FREE` on
//! `/dev/loop-control`, then `LOOP_CONFIGURE` (file, block size and flags in one call,
//! Linux ≥ 5.8). The ioctls have no safe wrapper in rustix, so the few calls below are
//! the only `unsafe` of this module.

use crate::runtime::error_chain;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::ioctl::{IoctlOutput, Opcode};

/// `LOOP_CTL_GET_FREE`: the number of a free loop device (created if needed).
const LOOP_CTL_GET_FREE: Opcode = 0x4C82;
/// `LOOP_CONFIGURE`: binds a file with a [`LoopConfig`].
const LOOP_CONFIGURE: Opcode = 0x4C0A;
/// `LOOP_CLR_FD`: unbinds (deferred to the last close when the device is open).
const LOOP_CLR_FD: Opcode = 0x4C01;

/// `LO_FLAGS_READ_ONLY`.
const LO_FLAGS_READ_ONLY: u32 = 1;
/// `LO_FLAGS_AUTOCLEAR`: unbind when the last opener (our fd, a mount) goes away.
const LO_FLAGS_AUTOCLEAR: u32 = 4;
/// `LO_FLAGS_DIRECT_IO`: the device reads and writes its file with `O_DIRECT`.
const LO_FLAGS_DIRECT_IO: u32 = 16;

/// How often `LOOP_CONFIGURE` is retried when another process grabs the free device
/// between `LOOP_CTL_GET_FREE` and the bind. The kernel keeps offering a device that
/// another bind is still configuring (it is unbound until that bind ends), so the
/// retries back off: 100 µs more each time, about 0.2 s over all of them.
const ATTACH_ATTEMPTS: u32 = 64;

/// `struct loop_info64` (`<linux/loop.h>`).
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` (`<linux/loop.h>`).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);
const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);

/// `ioctl(fd, LOOP_CTL_GET_FREE)`, whose result is the return value.
struct GetFree;

// SAFETY: LOOP_CTL_GET_FREE takes no argument and returns the device number as the
// ioctl's return value; no user memory is read or written.
#[allow(unsafe_code)]
unsafe impl rustix::ioctl::Ioctl for GetFree {
    type Output = IoctlOutput;
    const IS_MUTATING: bool = false;
    fn opcode(&self) -> Opcode {
        LOOP_CTL_GET_FREE
    }
    fn as_ptr(&mut self) -> *mut std::ffi::c_void {
        std::ptr::null_mut()
    }
    unsafe fn output_from_ptr(
        out: IoctlOutput,
        _: *mut std::ffi::c_void,
    ) -> rustix::io::Result<IoctlOutput> {
        Ok(out)
    }
}

#[allow(unsafe_code)]
fn get_free(control: impl AsFd) -> io::Result<u32> {
    // SAFETY: `GetFree` describes LOOP_CTL_GET_FREE exactly (no argument).
    let n = unsafe { rustix::ioctl::ioctl(control, GetFree) }?;
    u32::try_from(n).map_err(|_| io::Error::other(format!("LOOP_CTL_GET_FREE returned {n}")))
}

#[allow(unsafe_code)]
fn configure(device: impl AsFd, config: LoopConfig) -> io::Result<()> {
    // SAFETY: LOOP_CONFIGURE reads a `struct loop_config`, which `LoopConfig` mirrors
    // (size checked at compile time); the kernel only reads it.
    let setter = unsafe { rustix::ioctl::Setter::<LOOP_CONFIGURE, LoopConfig>::new(config) };
    // SAFETY: the setter holds the argument for the duration of the call.
    unsafe { rustix::ioctl::ioctl(device, setter) }?;
    Ok(())
}

#[allow(unsafe_code)]
fn clear_fd(device: impl AsFd) -> io::Result<()> {
    // SAFETY: LOOP_CLR_FD takes no argument.
    let clear = unsafe { rustix::ioctl::NoArg::<LOOP_CLR_FD>::new() };
    // SAFETY: no user memory is involved.
    unsafe { rustix::ioctl::ioctl(device, clear) }?;
    Ok(())
}

/// How to attach a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttachOptions {
    /// Logical block size of the device (512, 1024, 2048 or 4096); match the
    /// filesystem's block size so direct I/O never needs read-modify-write.
    pub block_size: u32,
    /// Ask for direct I/O on the backing file (no second copy in the host's page
    /// cache). Falls back to buffered I/O where the backing filesystem refuses it.
    pub direct_io: bool,
    /// Read-only device.
    pub read_only: bool,
}

impl Default for AttachOptions {
    fn default() -> Self {
        Self {
            block_size: 4096,
            direct_io: true,
            read_only: false,
        }
    }
}

/// A bound loop device (always autoclear: it unbinds itself when the last opener —
/// [`fd`](Self::fd) or a mount — is gone).
#[derive(Debug)]
pub struct LoopDevice {
    /// `N` of `/dev/loopN`.
    pub number: u32,
    /// Device major number.
    pub major: u32,
    /// Device minor number.
    pub minor: u32,
    /// The open device; dropping it unbinds the device unless something else (a
    /// mount) holds it.
    pub fd: OwnedFd,
}

impl LoopDevice {
    /// `/dev/loopN`.
    pub fn path(&self) -> PathBuf {
        device_path(self.number)
    }

    /// Whether the kernel runs this device with direct I/O.
    pub fn direct_io(&self) -> bool {
        std::fs::read_to_string(sysfs_dir(self.number).join("loop/dio"))
            .is_ok_and(|v| v.trim() == "1")
    }
}

/// `/dev/loopN`.
pub fn device_path(number: u32) -> PathBuf {
    PathBuf::from(format!("/dev/loop{number}"))
}

fn sysfs_dir(number: u32) -> PathBuf {
    PathBuf::from(format!("/sys/block/loop{number}"))
}

/// Binds `file` to a free loop device.
pub fn attach(file: &File, options: AttachOptions) -> io::Result<LoopDevice> {
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")?;
    let fd = u32::try_from(std::os::fd::AsRawFd::as_raw_fd(file))
        .map_err(|_| io::Error::other("invalid file descriptor"))?;
    let mut flags = LO_FLAGS_AUTOCLEAR;
    if options.read_only {
        flags |= LO_FLAGS_READ_ONLY;
    }
    if options.direct_io {
        flags |= LO_FLAGS_DIRECT_IO;
    }
    let mut last = io::Error::other("no loop device could be bound");
    for attempt in 0..ATTACH_ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_micros(100 * u64::from(attempt)));
        }
        let number = get_free(&control)?;
        let device = match OpenOptions::new()
            .read(true)
            .write(!options.read_only)
            .open(device_path(number))
        {
            Ok(d) => OwnedFd::from(d),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "open {}: {}",
                        device_path(number).display(),
                        error_chain(&e)
                    ),
                ));
            }
        };
        let config = |flags| LoopConfig {
            fd,
            block_size: options.block_size,
            info: LoopInfo64 {
                lo_device: 0,
                lo_inode: 0,
                lo_rdevice: 0,
                lo_offset: 0,
                lo_sizelimit: 0,
                lo_number: 0,
                lo_encrypt_type: 0,
                lo_encrypt_key_size: 0,
                lo_flags: flags,
                lo_file_name: [0; 64],
                lo_crypt_name: [0; 64],
                lo_encrypt_key: [0; 32],
                lo_init: [0; 2],
            },
            reserved: [0; 8],
        };
        let mut result = configure(&device, config(flags));
        if options.direct_io
            && matches!(&result, Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()))
        {
            // Older kernels refuse LO_FLAGS_DIRECT_IO when the backing file cannot do
            // it; buffered I/O still works.
            result = configure(&device, config(flags & !LO_FLAGS_DIRECT_IO));
        }
        match result {
            Ok(()) => {
                let stat = rustix::fs::fstat(&device)?;
                return Ok(LoopDevice {
                    number,
                    major: rustix::fs::major(stat.st_rdev),
                    minor: rustix::fs::minor(stat.st_rdev),
                    fd: device,
                });
            }
            // Another process bound it first: ask for the next free one.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) => {
                last = e;
            }
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Unbinds `/dev/loopN` (deferred by the kernel until its last opener is gone).
/// A device that is not bound is fine.
pub fn detach(number: u32) -> io::Result<()> {
    let device = match OpenOptions::new().read(true).open(device_path(number)) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    match clear_fd(&device) {
        Ok(()) => Ok(()),
        // ENXIO: not bound.
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NXIO.raw_os_error()) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The file `/dev/loopN` is bound to (`None` when unbound; a deleted file keeps
/// its last path with a ` (deleted)` suffix).
pub fn backing_file(number: u32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(sysfs_dir(number).join("loop/backing_file")).ok()?;
    Some(PathBuf::from(text.strip_suffix('\n').unwrap_or(&text)))
}

/// The backing file of a bound loop device, as the kernel names it now (renames
/// are followed; a deleted file has no path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    /// `N` of `/dev/loopN`.
    pub number: u32,
    /// The backing file.
    pub backing_file: PathBuf,
    /// Whether the backing file was deleted.
    pub deleted: bool,
}

/// Every bound loop device of the host (from `/sys/block/loop*/loop/backing_file`).
pub fn list_bound() -> io::Result<Vec<Bound>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/sys/block")?.flatten() {
        let name = entry.file_name();
        let Some(number) = name
            .to_str()
            .and_then(|n| n.strip_prefix("loop"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(entry.path().join("loop/backing_file")) else {
            continue;
        };
        let text = text.strip_suffix('\n').unwrap_or(&text);
        let (path, deleted) = match text.strip_suffix(" (deleted)") {
            Some(p) => (p, true),
            None => (text, false),
        };
        out.push(Bound {
            number,
            backing_file: PathBuf::from(path),
            deleted,
        });
    }
    Ok(out)
}

/// Bound loop devices whose backing file lies under `dir`.
pub fn bound_under(dir: &Path) -> io::Result<Vec<Bound>> {
    Ok(list_bound()?
        .into_iter()
        .filter(|b| b.backing_file.starts_with(dir))
        .collect())
}

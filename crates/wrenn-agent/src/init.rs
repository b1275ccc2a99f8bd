//! The sandbox init step of the process runtime.
//!
//! [`ProcessRuntime`](crate::runtime::process::ProcessRuntime) starts every sandbox as
//!
//! ```text
//! nsenter --net=/run/netns/wrenn-<id> -- \
//!   unshare --mount --uts --ipc --pid --fork --kill-child --propagation private -- \
//!     <agent binary> __wrenn-sandbox-init '<InitSpec as JSON>'
//! ```
//!
//! so the agent binary runs again as PID 1 of the sandbox's new namespaces. There,
//! [`main_if_init`] (which every binary that embeds the agent calls first thing in
//! `main`) recognises the hidden first argument and, instead of returning:
//!
//! 1. joins the sandbox's cgroups (writes `0` to each `cgroup.procs`), so everything
//!    the sandbox ever starts is limited and can be frozen;
//! 2. makes every mount private and mounts the root filesystem: an overlay whose lower
//!    layers are the template (the host's `/` for the built-in template) and whose upper
//!    and work directories live in `sandboxes/{id}/` on the host;
//! 3. mounts a private `/proc` (read-only `/proc/sys`, `/proc/sysrq-trigger`, … and
//!    masked `/proc/kcore`, … as container runtimes do), a read-only `/sys`, a `/dev`
//!    tmpfs with `null zero full random urandom tty` bound from the host, a new
//!    `devpts` instance with `ptmx` and a `/dev/shm` tmpfs, tmpfs `/tmp` and `/run`,
//!    the host socket directory at `/run/wrenn` and the envd binary (read-only) at
//!    `/run/wrenn-envd`; hides configured host paths (the agent's `$WRENN_DIR`) under
//!    empty read-only tmpfs mounts;
//! 4. sets the hostname to the sandbox id and `pivot_root`s into the new root, detaching
//!    the host's mounts;
//! 5. drops the capabilities a sandbox must not have (`CAP_SYS_ADMIN`, `CAP_MKNOD`,
//!    `CAP_NET_ADMIN`, `CAP_SYS_MODULE`, `CAP_DAC_READ_SEARCH`, … — see
//!    [`KEPT_CAPABILITIES`]) from the bounding and inheritable sets;
//! 6. `exec`s envd with a clean environment, so envd keeps PID 1.
//!
//! Any failure is printed to stderr (which the runtime keeps in `sandboxes/{id}/envd.log`
//! and reports) and the process exits with status 1.

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt, symlink};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use rustix::thread::{CapabilitySet, CapabilitySets};
use serde::{Deserialize, Serialize};

/// The hidden first argument that turns a binary embedding the agent into the sandbox
/// init step.
pub const INIT_ARG: &str = "__wrenn-sandbox-init";

/// Where envd's listening socket lives inside a sandbox (the host directory
/// `sandboxes/{id}/run/` is bind-mounted at [`SANDBOX_SOCKET_DIR`]).
pub const SANDBOX_SOCKET_DIR: &str = "/run/wrenn";

/// The file name of envd's socket in [`SANDBOX_SOCKET_DIR`] (and in the host directory).
pub const ENVD_SOCKET_NAME: &str = "envd.sock";

/// Where the envd binary is bind-mounted (read-only) inside a sandbox.
pub const SANDBOX_ENVD_PATH: &str = "/run/wrenn-envd";

/// Capabilities a sandbox keeps: Docker's default set minus `CAP_MKNOD` (this runtime
/// has no device cgroup to make device nodes harmless). Everything else, notably
/// `CAP_SYS_ADMIN` (mount), `CAP_NET_ADMIN` (re-addressing the sandbox's interface),
/// `CAP_DAC_READ_SEARCH` (`open_by_handle_at`), `CAP_SYS_MODULE`, `CAP_SYS_RAWIO`,
/// `CAP_SYS_PTRACE`, `CAP_SYS_TIME` and `CAP_SYS_BOOT`, is dropped.
pub const KEPT_CAPABILITIES: CapabilitySet = CapabilitySet::CHOWN
    .union(CapabilitySet::DAC_OVERRIDE)
    .union(CapabilitySet::FSETID)
    .union(CapabilitySet::FOWNER)
    .union(CapabilitySet::NET_RAW)
    .union(CapabilitySet::SETGID)
    .union(CapabilitySet::SETUID)
    .union(CapabilitySet::SETFCAP)
    .union(CapabilitySet::SETPCAP)
    .union(CapabilitySet::NET_BIND_SERVICE)
    .union(CapabilitySet::SYS_CHROOT)
    .union(CapabilitySet::KILL)
    .union(CapabilitySet::AUDIT_WRITE);

/// Everything the init step needs, passed as JSON in the argument after [`INIT_ARG`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct InitSpec {
    /// The hostname (the sandbox id).
    pub hostname: String,
    /// `cgroup.procs` files to join before anything else.
    pub cgroup_procs: Vec<PathBuf>,
    /// Directory the overlay's `lowerdir` entries are relative to (keeps the mount
    /// options short for many layers); `None` when they are absolute.
    pub lower_base: Option<PathBuf>,
    /// Overlay lower layers, topmost first.
    pub lowers: Vec<String>,
    /// Overlay upper directory (host path).
    pub upper: PathBuf,
    /// Overlay work directory (host path, same filesystem as `upper`).
    pub work: PathBuf,
    /// Mount point of the new root (host path, an empty directory).
    pub root: PathBuf,
    /// Host directory bind-mounted at [`SANDBOX_SOCKET_DIR`].
    pub socket_dir: PathBuf,
    /// Host file bound read-only at `/etc/resolv.conf` (the capsule's DNS forwarder).
    #[serde(default)]
    pub resolv_conf: Option<PathBuf>,
    /// The envd binary on the host.
    pub envd: PathBuf,
    /// Arguments for envd.
    pub envd_args: Vec<String>,
    /// Envd's whole environment.
    pub env: Vec<(String, String)>,
    /// Absolute paths (as seen inside the sandbox) hidden under empty read-only tmpfs
    /// mounts when they exist.
    pub mask: Vec<PathBuf>,
}

/// Call this first thing in `main` of every binary that embeds the agent.
///
/// It returns at once unless the first argument is [`INIT_ARG`]; then the process is the
/// init step of a process-runtime sandbox: it sets the sandbox up and `exec`s envd, and
/// never returns (on failure it prints the reason to stderr and exits with status 1).
pub fn main_if_init() {
    let args = process_args();
    if args.get(1).map(|a| a.as_slice()) != Some(INIT_ARG.as_bytes()) {
        return;
    }
    let result = args
        .get(2)
        .ok_or_else(|| "missing the init specification argument".to_owned())
        .and_then(|raw| {
            serde_json::from_slice::<InitSpec>(raw)
                .map_err(|e| format!("invalid init specification: {e}"))
        })
        .and_then(|spec| run(&spec));
    match result {
        Ok(never) => match never {},
        Err(message) => {
            eprintln!("wrenn-sandbox-init: {message}");
            std::process::exit(1);
        }
    }
}

/// The process arguments, read from `/proc/self/cmdline` so that this also works
/// before the Rust runtime has recorded them (a binary may call [`main_if_init`] from a
/// constructor, as the integration tests do).
fn process_args() -> Vec<Vec<u8>> {
    match fs::read("/proc/self/cmdline") {
        Ok(raw) => {
            let raw = raw.strip_suffix(&[0]).unwrap_or(&raw);
            raw.split(|b| *b == 0).map(<[u8]>::to_vec).collect()
        }
        Err(_) => std::env::args_os().map(OsString::into_vec).collect(),
    }
}

/// What [`run`] returns on success: nothing, because it `exec`s.
enum Never {}

/// Turns an error into `"<what>: <error>"`.
fn ctx<T>(what: impl FnOnce() -> String) -> impl FnOnce(T) -> String
where
    T: std::fmt::Display,
{
    move |e| format!("{}: {e}", what())
}

/// Performs the setup and execs envd. Only returns on failure.
fn run(spec: &InitSpec) -> Result<Never, String> {
    for procs in &spec.cgroup_procs {
        fs::write(procs, b"0").map_err(ctx(|| format!("join cgroup {}", procs.display())))?;
    }
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )
    .map_err(ctx(|| "make mounts private".to_owned()))?;

    mount_rootfs(spec)?;
    let root = spec.root.as_path();
    mount_proc(root)?;
    mount_sys(root)?;
    mount_dev(root)?;
    mount_tmpfs(
        &root.join("tmp"),
        "mode=1777",
        MountFlags::NOSUID | MountFlags::NODEV,
    )?;
    mount_run(root, spec)?;
    if let Some(resolv_conf) = &spec.resolv_conf {
        bind_resolv_conf(root, resolv_conf)?;
    }
    for path in &spec.mask {
        let inside = root.join(path.strip_prefix("/").unwrap_or(path));
        if inside.is_dir() {
            mount_tmpfs(
                &inside,
                "mode=0755,size=4k",
                MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            )?;
        }
    }

    rustix::system::sethostname(spec.hostname.as_bytes())
        .map_err(ctx(|| "set the hostname".to_owned()))?;
    pivot_into(root)?;
    drop_capabilities()?;

    let mut envd = std::process::Command::new(SANDBOX_ENVD_PATH);
    envd.arg0("wrenn-envd")
        .args(&spec.envd_args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir("/");
    let err = envd.exec();
    Err(format!("exec envd ({}): {err}", spec.envd.display()))
}

/// Mounts the overlay root filesystem at `spec.root`.
fn mount_rootfs(spec: &InitSpec) -> Result<(), String> {
    if let Some(base) = &spec.lower_base {
        std::env::set_current_dir(base).map_err(ctx(|| {
            format!("enter template directory {}", base.display())
        }))?;
    }
    let mut lowers = spec.lowers.clone();
    if lowers.len() > 1 && lowers.last().is_some_and(|l| l == "/") {
        // Overlayfs refuses lower layers nested in one another ("overlapping lowerdir
        // path"), and every template layer under $WRENN_DIR lies inside the host's `/`.
        // Present `/` through its own read-only overlay (another superblock) instead.
        let host = spec.root.with_file_name("lower-host");
        let empty = spec.root.with_file_name("lower-empty");
        mount_tmpfs(&empty, "mode=0755,size=4k", MountFlags::RDONLY)?;
        mount_fs(
            "overlay",
            &host,
            "overlay",
            MountFlags::RDONLY,
            &format!("lowerdir=/:{}", empty.display()),
        )?;
        if let Some(last) = lowers.last_mut() {
            *last = host.display().to_string();
        }
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        spec.upper.display(),
        spec.work.display()
    );
    let data = std::ffi::CString::new(options.clone())
        .map_err(|_| format!("overlay options contain a NUL byte: {options}"))?;
    rustix::mount::mount(
        "overlay",
        &spec.root,
        "overlay",
        MountFlags::empty(),
        data.as_c_str(),
    )
    .map_err(ctx(|| {
        format!("mount overlay ({options}) on {}", spec.root.display())
    }))?;
    std::env::set_current_dir("/").map_err(ctx(|| "chdir /".to_owned()))
}

fn mkdir_p(path: &Path, mode: u32) -> Result<(), String> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(ctx(|| format!("create directory {}", path.display())))
}

fn mount_fs(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: MountFlags,
    data: &str,
) -> Result<(), String> {
    mkdir_p(target, 0o755)?;
    let c = std::ffi::CString::new(data).map_err(|_| "mount data contains NUL".to_owned())?;
    rustix::mount::mount(source, target, fstype, flags, c.as_c_str())
        .map_err(ctx(|| format!("mount {fstype} on {}", target.display())))
}

fn mount_tmpfs(target: &Path, data: &str, flags: MountFlags) -> Result<(), String> {
    mount_fs("tmpfs", target, "tmpfs", flags, data)
}

/// Bind-mounts `source` on `target` (creating `target` as an empty file or directory
/// to match), optionally read-only.
fn bind(source: &Path, target: &Path, read_only: bool) -> Result<(), String> {
    let meta = fs::metadata(source).map_err(ctx(|| format!("stat {}", source.display())))?;
    if meta.is_dir() {
        mkdir_p(target, 0o755)?;
    } else if fs::symlink_metadata(target).is_err() {
        if let Some(parent) = target.parent() {
            mkdir_p(parent, 0o755)?;
        }
        fs::File::create(target).map_err(ctx(|| format!("create {}", target.display())))?;
    }
    rustix::mount::mount_bind(source, target).map_err(ctx(|| {
        format!("bind {} on {}", source.display(), target.display())
    }))?;
    if read_only {
        remount_read_only(target)?;
    }
    Ok(())
}

fn remount_read_only(target: &Path) -> Result<(), String> {
    rustix::mount::mount_remount(
        target,
        MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV,
        "",
    )
    .map_err(ctx(|| format!("remount {} read-only", target.display())))
}

/// A private `/proc` for the new pid namespace, hardened like container runtimes do.
fn mount_proc(root: &Path) -> Result<(), String> {
    let proc_dir = root.join("proc");
    mount_fs(
        "proc",
        &proc_dir,
        "proc",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        "",
    )?;
    for ro in ["sys", "sysrq-trigger", "irq", "bus", "fs"] {
        let path = proc_dir.join(ro);
        if path.exists() {
            rustix::mount::mount_bind(&path, &path)
                .map_err(ctx(|| format!("bind {}", path.display())))?;
            remount_read_only(&path)?;
        }
    }
    for masked in [
        "kcore",
        "keys",
        "latency_stats",
        "timer_list",
        "timer_stats",
        "sched_debug",
    ] {
        let path = proc_dir.join(masked);
        if path.exists() {
            rustix::mount::mount_bind("/dev/null", &path)
                .map_err(ctx(|| format!("mask {}", path.display())))?;
        }
    }
    for masked in ["acpi", "scsi", "asound"] {
        let path = proc_dir.join(masked);
        if path.is_dir() {
            mount_tmpfs(&path, "size=0", MountFlags::RDONLY)?;
        }
    }
    Ok(())
}

fn mount_sys(root: &Path) -> Result<(), String> {
    let sys = root.join("sys");
    mount_fs(
        "sysfs",
        &sys,
        "sysfs",
        MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        "",
    )?;
    let firmware = sys.join("firmware");
    if firmware.is_dir() {
        mount_tmpfs(&firmware, "size=0", MountFlags::RDONLY)?;
    }
    Ok(())
}

fn mount_dev(root: &Path) -> Result<(), String> {
    let dev = root.join("dev");
    mount_tmpfs(
        &dev,
        "mode=0755,size=65536k",
        MountFlags::NOSUID | MountFlags::NOEXEC,
    )?;
    for node in ["null", "zero", "full", "random", "urandom", "tty"] {
        bind(&Path::new("/dev").join(node), &dev.join(node), false)?;
    }
    mount_fs(
        "devpts",
        &dev.join("pts"),
        "devpts",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620",
    )?;
    mount_tmpfs(
        &dev.join("shm"),
        "mode=1777",
        MountFlags::NOSUID | MountFlags::NODEV,
    )?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let path = dev.join(link);
        symlink(target, &path).map_err(ctx(|| format!("symlink {}", path.display())))?;
    }
    Ok(())
}

fn mount_run(root: &Path, spec: &InitSpec) -> Result<(), String> {
    let run = root.join("run");
    mount_tmpfs(&run, "mode=0755", MountFlags::NOSUID | MountFlags::NODEV)?;
    let lock = run.join("lock");
    mkdir_p(&lock, 0o755)?;
    fs::set_permissions(&lock, fs::Permissions::from_mode(0o1777))
        .map_err(ctx(|| format!("chmod {}", lock.display())))?;
    let inside = |p: &str| root.join(p.trim_start_matches('/'));
    bind(&spec.socket_dir, &inside(SANDBOX_SOCKET_DIR), false)?;
    bind(&spec.envd, &inside(SANDBOX_ENVD_PATH), true)
}

/// Binds `source` read-only at `/etc/resolv.conf` of the new root. A symlink there (the
/// template's own, e.g. to a systemd-resolved stub) is replaced by an empty file in the
/// writable layer first, so the bind never follows a link out of the root; a root
/// without a real `/etc` directory is left alone.
fn bind_resolv_conf(root: &Path, source: &Path) -> Result<(), String> {
    let etc = root.join("etc");
    if !fs::symlink_metadata(&etc).is_ok_and(|m| m.is_dir()) {
        return Ok(());
    }
    let target = etc.join("resolv.conf");
    match fs::symlink_metadata(&target) {
        Ok(m) if m.is_file() => {}
        Ok(m) if m.file_type().is_symlink() => {
            fs::remove_file(&target).map_err(ctx(|| format!("remove {}", target.display())))?;
            fs::File::create(&target).map_err(ctx(|| format!("create {}", target.display())))?;
        }
        Ok(_) => return Ok(()),
        Err(_) => {
            fs::File::create(&target).map_err(ctx(|| format!("create {}", target.display())))?;
        }
    }
    bind(source, &target, true)
}

/// `pivot_root` into `root` and detach the old root (runc's `pivot_root(".", ".")`).
fn pivot_into(root: &Path) -> Result<(), String> {
    std::env::set_current_dir(root).map_err(ctx(|| format!("chdir {}", root.display())))?;
    rustix::process::pivot_root(".", ".").map_err(ctx(|| "pivot_root".to_owned()))?;
    rustix::mount::mount_change(
        ".",
        MountPropagationFlags::REC | MountPropagationFlags::DOWNSTREAM,
    )
    .map_err(ctx(|| "make the old root a slave".to_owned()))?;
    rustix::mount::unmount(".", UnmountFlags::DETACH)
        .map_err(ctx(|| "detach the old root".to_owned()))?;
    std::env::set_current_dir("/").map_err(ctx(|| "chdir /".to_owned()))
}

/// Drops every capability not in [`KEPT_CAPABILITIES`] from the bounding set (which
/// bounds what root gets at `exec`) and clears the inheritable and ambient sets.
fn drop_capabilities() -> Result<(), String> {
    for bit in 0..64u32 {
        let cap = CapabilitySet::from_bits_retain(1u64 << bit);
        if KEPT_CAPABILITIES.contains(cap) {
            continue;
        }
        match rustix::thread::capability_is_in_bounding_set(cap) {
            Ok(true) => rustix::thread::remove_capability_from_bounding_set(cap)
                .map_err(ctx(|| format!("drop capability {bit}")))?,
            Ok(false) => {}
            // Past the kernel's last capability.
            Err(_) => break,
        }
    }
    let current =
        rustix::thread::capabilities(None).map_err(ctx(|| "read capabilities".to_owned()))?;
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: current.effective,
            permitted: current.permitted,
            inheritable: CapabilitySet::empty(),
        },
    )
    .map_err(ctx(|| "clear inheritable capabilities".to_owned()))?;
    rustix::thread::clear_ambient_capability_set()
        .map_err(ctx(|| "clear ambient capabilities".to_owned()))
}

//! The process runtime: sandboxes as Linux namespaces + overlayfs + cgroups, with
//! envd as PID 1. The embedded default (`wrenn dev`, tests); needs root.
//!
//! # A sandbox
//!
//! ```text
//! agent ─ posix_spawn <agent binary> __wrenn-sandbox-init   (ahead of time, at idle)
//!   outer: reads its go-ahead ({spec}) on stdin
//!          setns(net = /run/netns/wrenn-{id}), unshare(mount, uts, ipc, pid); waits, mirrors
//!        └─ fork → PID 1: cgroups, user namespace, idmapped overlay, /proc…, pivot_root,
//!                  setns(user), caps, seccomp
//!             └─ execveat wrenn-envd --listen-fd N                  (PID 1)
//! ```
//!
//! - **Namespaces**: mount, pid, uts, ipc and the named network namespace `wrenn-{id}`,
//!   all owned by the host's user namespace, plus the capsule's own user namespace
//!   (capsule ids `0..65536` = a host range of its own, [`idrange`]), joined last. The
//!   init step ([`crate::init`]) joins the cgroups, builds the root filesystem, sets the
//!   hostname to the sandbox id, `pivot_root`s, becomes root of the user namespace,
//!   drops capabilities, installs the seccomp filter and `exec`s envd, which therefore
//!   is PID 1.
//! - **Root filesystem**: overlayfs, lower = the template's layers over an image
//!   build's `rootfs/` ([`template`]; the built-in template is the image alone —
//!   [`ProcessRuntimeOptions::base_image`], built by [`crate::image`]), upper + work =
//!   `disk/upper` and `disk/work` of the sandbox's **disk**, mounted at
//!   `sandboxes/{id}/rootfs` inside the sandbox's mount namespace only (the host never
//!   sees it, and it vanishes with the sandbox's last process). Every layer is
//!   idmapped, so files on disk are owned by capsule ids and any layer works in any
//!   later capsule. Nothing a sandbox writes reaches the host. Private `/proc`, `/sys`
//!   (read-only), `/dev`, `/dev/pts`, `/dev/shm` (sized), `/run`; `/tmp` is the root
//!   filesystem's, on the capsule's disk.
//! - **Disk** ([`crate::disk`]): a sparse ext4 file of `disk_size_mb`
//!   (`sandboxes/{id}/disk.ext4`) on a loop device (direct I/O, autoclear), mounted
//!   `nodev` at `sandboxes/{id}/disk`. `df /` inside shows its size; writes past it fail
//!   with `ENOSPC`. Disks of [`ProcessRuntimeOptions::disk_pool_size_mb`] come ready
//!   from a pool (a rename and a `move_mount`); other sizes are formatted on demand.
//! - **envd**: serves on a socket the init step binds, as host root, at the host's
//!   `sandboxes/{id}/run/envd.sock` ([`EnvdEndpoint::Unix`](crate::runtime::EnvdEndpoint::Unix)) and passes to envd as a
//!   descriptor: the directory is never visible in the capsule, so the agent never
//!   follows a path the capsule controls.
//! - **Limits**: cgroups ([`cgroup`]): CPU quota = vcpus × period, memory limit, pids
//!   limit, I/O limits on the disk's device ([`ProcessRuntimeOptions::io`]); pause =
//!   freezer.
//! - **Network**: [`crate::network`] — a /30 per sandbox from `10.200.0.0/16` by
//!   default, veth + default route + NAT, the capsule firewall, and a DNS forwarder on
//!   the gateway that the capsule's `/etc/resolv.conf` names (written by the init step
//!   at each start); `host_ip` is the sandbox's `eth0` address.
//!
//! # On disk
//!
//! ```text
//! sandboxes/{id}/disk.ext4  disk/{upper,work}/  rootfs/  run/envd.sock  envd.log
//! snapshots/{id}/disk.ext4  sandbox.json                      (hibernated)
//! images/teams/{team}/{template}/template.json  layers/N/     (snapshots → templates)
//! disks/pool/{random}.ext4                                    (ready disks)
//! disks/blank/{size_mb}.ext4                 (formatted once, copied into new disks)
//! removing/{id}.{random}/               (destroyed, being deleted in the background)
//! ```
//!
//! Hibernate kills the processes (memory is freed), removes network and cgroups,
//! unmounts the disk, waits until its loop device is unbound and *renames*
//! `disk.ext4` into `snapshots/{id}/` (no copy); restore renames it back, mounts it and
//! starts a fresh sandbox on it: files survive, processes do not. A sandbox
//! hibernated before disks existed (a plain `snapshots/{id}/upper/`) is restored by
//! copying that directory into a new disk of the requested size. Snapshot copies
//! `disk/upper` into a new layered template (see [`template`]). Destroy answers once
//! the processes, network and cgroups are gone and the directory is renamed into
//! `removing/` ([`removal`]); in the background the disk's filesystem is shut down
//! (dirty data is dropped, not written), unmounted and its file deleted; the loop
//! device unbinds itself. Sweep also unmounts
//! and unbinds disks under `$WRENN_DIR` of sandboxes it does not keep — never other
//! mounts or loop devices.
//!
//! Create costs a network namespace and a few netlink messages, cgroup writes, one
//! `fork`+`exec` of the init program and envd's start, plus a pooled disk (rename +
//! `move_mount`), or one copied from a blank ([`disk::blank`]). Most creates cost
//! less: a capsule of the built-in template with the pooled disk size is usually
//! *warm* — booted ahead of time under a provisional id at idle priority
//! ([`ProcessRuntimeOptions::warm_capsules`]) — and a create renames its namespace,
//! directory and cgroups to the new id, sets its limits and hostname and serves its
//! DNS (about 1 ms here, against 6–7 ms for a boot).
//!
//! Destroy sends `SIGKILL` to every process of the capsule and moves its directory
//! aside before answering; waiting for the processes, removing the network, cgroups
//! and directory follow in the background ([`removal`]).

mod boot;
pub mod cgroup;
mod disks;
pub mod dynmods;
pub mod idrange;
mod inits;
mod options;
pub mod removal;
pub mod state;
mod teardown;
pub mod template;
mod warm;

use self::boot::{health, tail};
pub use self::options::ProcessRuntimeOptions;
use self::teardown::kill_netns_processes;

use std::collections::HashMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::process::Child;
use wrenn_core::id::SandboxId;
use wrenn_core::layout::Layout;

use self::cgroup::{CgroupDriver, SandboxCgroup};
use self::idrange::IdRanges;
use self::inits::SpareInits;
use self::removal::Removals;
use self::template::{HibernationRecord, Lowers};
use self::warm::WarmCapsules;
use super::{
    Adoption, Capabilities, Instance, Runtime, RuntimeError, SandboxConfig, Stats, blocking,
    error_chain, io_err,
};
use crate::disk::blank::Blanks;
use crate::disk::pool::DiskPool;
use crate::disk::{self, DeviceId, DiskError};
use crate::image::ImageRef;
use crate::init::ENVD_SOCKET_NAME;
use crate::network::{self, ClaimedNet, Network, SandboxNet};
use wrenn_core::id::{TeamId, TemplateId};

/// The value of [`Runtime::name`] and of the `runtime` metadata key.
pub const RUNTIME_NAME: &str = "process";

/// Longest unix socket path the kernel accepts (`sun_path` minus the NUL).
const MAX_SOCKET_PATH: usize = 107;
/// Bytes of envd's log reported when a sandbox fails to start.
const LOG_TAIL_BYTES: usize = 2048;
/// How long teardown waits for processes to die and cgroups to go.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a freeze or thaw may take.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long hibernation waits for a disk's filesystem to be shut down everywhere.
const DISK_RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// A running sandbox.
#[derive(Debug)]
struct Live {
    config: SandboxConfig,
    lowers: Lowers,
    cgroup: SandboxCgroup,
    net: SandboxNet,
    /// The loop device of the sandbox's disk.
    disk: DeviceId,
    /// The init program's outer process (parent of the sandbox's PID 1); `None` for a
    /// sandbox adopted after an agent restart (it is not this agent's child).
    child: Option<tokio::sync::Mutex<Child>>,
    /// Host pid of the sandbox's PID 1 and its start time ([`state`]).
    pid1: (i32, u64),
    /// Last CPU sample: (usage ns, when).
    cpu: Mutex<(u64, Instant)>,
}

/// A sandbox whose envd answers, not yet tracked, recorded or serving DNS
/// ([`ProcessRuntime::register`]).
#[derive(Debug)]
struct Booted {
    /// The init program's outer process.
    child: tokio::sync::Mutex<Child>,
    /// Its network (DNS not served yet).
    claimed: ClaimedNet,
    /// envd's version.
    version: String,
    /// Host pid and start time of its PID 1.
    pid1: (i32, u64),
    /// A capsule booted ahead of time: the pipe whose closing kills it until it is
    /// claimed ([`init::claim`]).
    lease: Option<std::fs::File>,
}

/// The process runtime. See the [module docs](self).
#[derive(Debug)]
pub struct ProcessRuntime {
    layout: Layout,
    envd: PathBuf,
    options: ProcessRuntimeOptions,
    cgroups: CgroupDriver,
    network: Arc<Network>,
    image: ImageRef,
    ids: Arc<IdRanges>,
    blanks: Arc<Blanks>,
    pool: DiskPool,
    removals: Removals,
    inits: Arc<SpareInits>,
    inits_refill: tokio::task::JoinHandle<()>,
    warm: Arc<WarmCapsules>,
    live: Mutex<HashMap<SandboxId, Arc<Live>>>,
}

impl Drop for ProcessRuntime {
    fn drop(&mut self) {
        // The spares' stdin closes with them: they exit.
        self.inits_refill.abort();
        for warm in self.warm.drain() {
            self.discard(warm);
        }
    }
}

impl From<DiskError> for RuntimeError {
    fn from(e: DiskError) -> Self {
        match e {
            DiskError::TooSmall { .. } | DiskError::NoSpace { .. } | DiskError::TooLarge { .. } => {
                Self::FailedPrecondition(error_chain(&e))
            }
            DiskError::Io { context, source } => Self::Io { context, source },
            DiskError::Mkfs { .. } => Self::Other(error_chain(&e)),
        }
    }
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

impl ProcessRuntime {
    /// Checks the host and prepares it (IPv4 forwarding, the capsule firewall of
    /// [`crate::network`], the layout's directories).
    ///
    /// Fails with [`RuntimeError::Unsupported`] naming what is missing: root, the envd
    /// binary, overlayfs, usable cgroups (v2 with cpu/memory/pids, or the v1 cpu,
    /// cpuacct, memory, pids and freezer hierarchies), nf_tables, the `cp` or
    /// `mkfs.ext4` tools, loop devices, ext4 and the new mount API (Linux ≥ 5.8), a
    /// `$WRENN_DIR` short and plain enough for socket paths, valid id ranges, or the base
    /// image ([`ProcessRuntimeOptions::base_image`]: none given, or its `rootfs/`
    /// missing). Starts filling the disk pool in the background.
    pub async fn new(
        layout: Layout,
        envd: impl Into<PathBuf>,
        options: ProcessRuntimeOptions,
    ) -> Result<Self, RuntimeError> {
        let envd = envd.into();
        let unsupported_err =
            |m: String| RuntimeError::Unsupported(format!("process runtime: {m}"));
        let unsupported = |m: String| Err(unsupported_err(m));
        if !rustix::process::geteuid().is_root() {
            return unsupported(format!(
                "needs root to create namespaces, mounts, cgroups and network interfaces \
                 (running as uid {}); run the agent as root",
                rustix::process::geteuid().as_raw()
            ));
        }
        if !envd.is_file() {
            return unsupported(format!("the envd binary {} does not exist", envd.display()));
        }
        let Some(image) = options.base_image.clone() else {
            return unsupported(
                "no base image: sandboxes run on the default image, never the host's root; \
                 build it with `wrenn image build`"
                    .into(),
            );
        };
        template::check_image(&image)
            .map_err(|e| unsupported_err(format!("{e}; rebuild it with `wrenn image build`")))?;
        let missing: Vec<&str> = ["cp"]
            .into_iter()
            .filter(|p| find_in_path(p).is_none())
            .collect();
        if !missing.is_empty() {
            return unsupported(format!(
                "missing tools: {} (package coreutils)",
                missing.join(", ")
            ));
        }
        let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
        if !filesystems
            .lines()
            .any(|l| l.trim_end().ends_with("\toverlay"))
        {
            return unsupported("the kernel has no overlay filesystem (modprobe overlay)".into());
        }
        let Some(mkfs) = disk::ext4::find_mkfs() else {
            return unsupported("missing tool: mkfs.ext4 (package e2fsprogs)".into());
        };
        if !Path::new("/dev/loop-control").exists() {
            return unsupported(
                "no /dev/loop-control: the kernel has no loop devices (modprobe loop)".into(),
            );
        }
        if let Err(e) = rustix::mount::fsopen("ext4", rustix::mount::FsOpenFlags::FSOPEN_CLOEXEC) {
            return unsupported(format!(
                "cannot open an ext4 filesystem context ({}): the kernel needs ext4 and \
                 the new mount API (Linux 5.8 or later)",
                error_chain(&e)
            ));
        }
        let cgroups = CgroupDriver::detect().map_err(unsupported_err)?;
        let ids = IdRanges::new(options.id_base, options.id_ranges)
            .map_err(|e| unsupported_err(error_chain(&e)))?;
        if options.favor_dynamic_cgroups {
            match dynmods::enable(&layout.root().join(".cgroup2")) {
                Ok(true) => {}
                Ok(false) => tracing::info!("turned on cgroup2 favordynmods (fast cgroup moves)"),
                Err(e) => {
                    tracing::warn!("cannot turn on cgroup2 favordynmods: {}", error_chain(&e))
                }
            }
        }
        if options.cgroup_parent.is_empty()
            || options.cgroup_parent.contains("..")
            || options.cgroup_parent.starts_with('/')
        {
            return unsupported(format!("invalid cgroup parent {:?}", options.cgroup_parent));
        }
        state::limit_parent_cgroup(&cgroups, &options);
        let root_text = layout.root().to_string_lossy();
        if !layout.root().is_absolute() || root_text.contains([':', ',', '\\']) {
            return unsupported(format!(
                "$WRENN_DIR {root_text:?} must be an absolute path without ':', ',' or '\\' \
                 (it ends up in overlay mount options)"
            ));
        }
        let socket = layout
            .sandbox_dir(SandboxId::new())
            .join("run")
            .join(ENVD_SOCKET_NAME);
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return unsupported(format!(
                "$WRENN_DIR {root_text:?} is too long: envd socket paths like {} exceed {MAX_SOCKET_PATH} bytes",
                socket.display()
            ));
        }
        for dir in [
            layout.sandboxes_dir(),
            layout.snapshots_dir(),
            layout.team_images_dir(),
        ] {
            std::fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        }
        let network = Network::new(options.network.clone())
            .await
            .map_err(|e| unsupported_err(error_chain(&e)))?;
        let init_program = options
            .init_program
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/proc/{}/exe", std::process::id())));
        // Capsules of an earlier agent on this `$WRENN_DIR` may still run.
        for entry in std::fs::read_dir(layout.sandboxes_dir())
            .map_err(io_err("list sandboxes"))?
            .flatten()
        {
            let id = entry.file_name().to_str().and_then(|n| n.parse().ok());
            if let (Some(id), Some(map)) = (id, idrange::read_record(&entry.path())) {
                if !ids.reserve(id, map) {
                    tracing::warn!(sandbox_id = %id, "recorded id range {map:?} is not usable");
                }
            }
        }
        // Pooled disks that sandboxes could not get (the size is refused on this host)
        // would only hold loop devices.
        let pool_fits = disk::check_size(
            options.disk_pool_size_mb,
            &layout.sandboxes_dir(),
            options.disk_space_check,
        )
        .inspect_err(|e| tracing::warn!("no disk pool: {}", error_chain(&e)))
        .is_ok();
        let removals = Removals::new(&layout.root().join("removing"))?;
        let blanks = Arc::new(Blanks::new(
            &layout.root().join("disks").join("blank"),
            &mkfs,
        )?);
        // Always started: it also removes the pooled disks a previous agent left.
        let pool = DiskPool::start(
            &disk_pool_dir(&layout),
            blanks.clone(),
            options.disk_pool_size_mb,
            if pool_fits {
                options.disk_pool_depth
            } else {
                0
            },
        )?;
        let (inits, inits_refill) = SpareInits::start(&init_program, options.spare_inits);
        Ok(Self {
            inits,
            inits_refill,
            layout,
            envd,
            options,
            cgroups,
            network: Arc::new(network),
            image,
            ids: Arc::new(ids),
            blanks,
            pool,
            removals,
            warm: Arc::default(),
            live: Mutex::new(HashMap::new()),
        })
    }

    /// The image build of the built-in template.
    pub fn base_image(&self) -> &ImageRef {
        &self.image
    }

    /// The layout the runtime works in.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The cgroup setup in use.
    pub fn cgroup_driver(&self) -> &CgroupDriver {
        &self.cgroups
    }

    /// The cgroup of a sandbox (whether or not it exists).
    pub fn sandbox_cgroup(&self, id: SandboxId) -> SandboxCgroup {
        self.cgroups
            .sandbox(&self.options.cgroup_parent, &id.to_string())
    }

    /// The network namespace name of a sandbox (`wrenn-{id}`).
    pub fn netns_name(id: SandboxId) -> String {
        network::netns_name(&id.to_string())
    }

    /// The capsule networking of this runtime (firewall, DNS forwarder).
    pub fn networking(&self) -> &Network {
        &self.network
    }

    /// How many spare init programs wait for a capsule now.
    pub fn spare_inits(&self) -> usize {
        self.inits.waiting()
    }

    /// The pool of ready disks (of depth 0 when disabled, or when its size does not
    /// fit the host's free space).
    pub fn disk_pool(&self) -> &DiskPool {
        &self.pool
    }

    /// The loop device of a running sandbox's disk.
    pub fn disk_device(&self, id: SandboxId) -> Option<DeviceId> {
        self.lock_live().get(&id).map(|l| l.disk)
    }

    /// Where a sandbox's disk is mounted on the host (`sandboxes/{id}/disk`).
    pub fn disk_mount_point(&self, id: SandboxId) -> PathBuf {
        self.layout.sandbox_dir(id).join(disk::MOUNT_DIR)
    }

    /// The network of a running sandbox (namespace, veth, slot, addresses).
    pub fn network(&self, id: SandboxId) -> Option<SandboxNet> {
        self.lock_live().get(&id).map(|l| l.net.clone())
    }

    /// The host id range of a running sandbox (capsule ids `0..size` are host ids
    /// `host_base..`).
    pub fn id_map(&self, id: SandboxId) -> Option<crate::init::IdMap> {
        self.ids.get(id)
    }

    /// The host path of a sandbox's envd socket.
    pub fn envd_socket(&self, id: SandboxId) -> PathBuf {
        self.layout
            .sandbox_dir(id)
            .join("run")
            .join(ENVD_SOCKET_NAME)
    }

    fn get(&self, id: SandboxId) -> Result<Arc<Live>, RuntimeError> {
        self.lock_live()
            .get(&id)
            .cloned()
            .ok_or(RuntimeError::NotFound(id))
    }

    fn lock_live(&self) -> std::sync::MutexGuard<'_, HashMap<SandboxId, Arc<Live>>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks the limits and the disk size (before anything is created).
    fn validate(&self, config: &SandboxConfig) -> Result<(), RuntimeError> {
        Self::validate_limits(config)?;
        disk::check_size(
            config.disk_size_mb,
            &self.layout.sandboxes_dir(),
            self.options.disk_space_check,
        )?;
        Ok(())
    }

    fn validate_limits(config: &SandboxConfig) -> Result<(), RuntimeError> {
        if config.vcpus == 0 {
            return Err(RuntimeError::FailedPrecondition(
                "vcpus must be at least 1".into(),
            ));
        }
        if config.memory_mb < 16 {
            return Err(RuntimeError::FailedPrecondition(format!(
                "memory_mb must be at least 16 (got {})",
                config.memory_mb
            )));
        }
        Ok(())
    }

    /// Refuses an id that is running, hibernated or has leftovers.
    fn ensure_free(&self, id: SandboxId, allow_hibernated: bool) -> Result<(), RuntimeError> {
        let running = self.lock_live().contains_key(&id);
        super::ensure_free(&self.layout, id, running, allow_hibernated)
    }

    /// Creates `sandboxes/{id}/` with `rootfs`, `run` and the disk's mount point.
    fn make_dirs(&self, id: SandboxId) -> Result<PathBuf, RuntimeError> {
        let dir = self.layout.sandbox_dir(id);
        let mut builder = std::fs::DirBuilder::new();
        builder.mode(0o700);
        builder
            .create(&dir)
            .map_err(io_err(format!("create {}", dir.display())))?;
        if let Err(e) = Self::make_subdirs(&dir) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        Ok(dir)
    }

    fn make_subdirs(dir: &Path) -> Result<(), RuntimeError> {
        for sub in ["rootfs", "run", disk::MOUNT_DIR] {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir.join(sub))
                .map_err(io_err(format!("create {}", dir.join(sub).display())))?;
        }
        Ok(())
    }
}

/// `$WRENN_DIR/disks/pool/`: the disk pool's files (on the filesystem of
/// `sandboxes/`, so a pooled disk moves into a sandbox with a rename).
pub fn disk_pool_dir(layout: &Layout) -> PathBuf {
    layout.root().join("disks").join("pool")
}

/// A network error of sandbox `id` as a runtime error.
pub(super) fn network_err(id: SandboxId) -> impl FnOnce(network::NetworkError) -> RuntimeError {
    move |e| RuntimeError::Other(format!("network of {id}: {}", error_chain(&e)))
}

async fn remove_dir(dir: &Path) -> Result<(), RuntimeError> {
    let d = dir.to_path_buf();
    blocking(move || match std::fs::remove_dir_all(&d) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    })
    .await?
    .map_err(io_err(format!("remove {}", dir.display())))
}

/// Unmounts every mount at or under `dir` (deepest first). Blocking.
pub(super) fn unmount_all_under(dir: &Path) -> Result<(), DiskError> {
    // Mountinfo names mount points by their canonical path.
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mounts =
        disk::mount::mounts_under(&dir).map_err(DiskError::io("read /proc/self/mountinfo"))?;
    for m in mounts {
        disk::unmount(&m.mount_point)?;
    }
    Ok(())
}

/// The sandbox a path under `sandboxes/` or `snapshots/` belongs to.
fn sandbox_of(path: &Path, parents: &[PathBuf]) -> Option<SandboxId> {
    parents.iter().find_map(|parent| {
        path.strip_prefix(parent)
            .ok()?
            .components()
            .next()?
            .as_os_str()
            .to_str()?
            .parse()
            .ok()
    })
}

#[async_trait::async_trait]
impl Runtime for ProcessRuntime {
    fn name(&self) -> &'static str {
        RUNTIME_NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            memory_snapshots: true,
            hibernate: true,
            templates_keep_processes: false,
        }
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %config.id))]
    async fn create(&self, config: &SandboxConfig) -> Result<Instance, RuntimeError> {
        let started = Instant::now();
        self.validate(config)?;
        self.ensure_free(config.id, false)?;
        if let Some(instance) = self.claim_warm(config).await {
            return Ok(instance);
        }
        let lowers = template::resolve(
            &self.layout,
            &self.image,
            config.template_team_id,
            config.template_id,
        )?;
        self.make_dirs(config.id)?;
        let started_sandbox = match self.new_disk(config.id, config.disk_size_mb).await {
            Ok(disk) => {
                tracing::debug!(
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "disk ready"
                );
                self.start(config, lowers, disk).await
            }
            Err(e) => Err(e),
        };
        match started_sandbox {
            Ok(instance) => {
                tracing::debug!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "sandbox created"
                );
                Ok(instance)
            }
            Err(e) => {
                if let Err(cleanup) = self.remove_sandbox_dir(config.id).await {
                    tracing::warn!(sandbox_id = %config.id, "cleaning up after a failed create: {cleanup}");
                }
                Err(e)
            }
        }
    }

    fn start_background(self: Arc<Self>) {
        self.start_warm_refill();
    }

    async fn stop_background(&self) {
        self.stop_warm_refill().await;
    }

    async fn settle(&self) {
        self.removals_settled().await;
    }

    async fn pause(&self, instance: &Instance) -> Result<(), RuntimeError> {
        let live = self.get(instance.id)?;
        let cg = live.cgroup.clone();
        blocking(move || cg.freeze(FREEZE_TIMEOUT))
            .await?
            .map_err(io_err(format!("freeze {}", instance.id)))
    }

    async fn resume(&self, instance: &Instance) -> Result<(), RuntimeError> {
        let live = self.get(instance.id)?;
        let cg = live.cgroup.clone();
        blocking(move || cg.thaw(FREEZE_TIMEOUT))
            .await?
            .map_err(io_err(format!("thaw {}", instance.id)))
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %instance.id))]
    async fn hibernate(&self, instance: &Instance) -> Result<(), RuntimeError> {
        let id = instance.id;
        let live = self
            .lock_live()
            .remove(&id)
            .ok_or(RuntimeError::NotFound(id))?;
        self.teardown(id, live.child.as_ref()).await;
        let snapshot = self.layout.snapshot_dir(id);
        let file = self.layout.sandbox_dir(id).join(disk::DISK_FILE);
        let mount_point = self.disk_mount_point(id);
        let device = live.disk.number;
        let record = HibernationRecord {
            config: (&live.config).into(),
            hibernated_at: chrono::Utc::now().to_rfc3339(),
            image: live.lowers.image().cloned(),
        };
        let snap = snapshot.clone();
        blocking(move || {
            // The filesystem must be shut down everywhere before the file moves and
            // can be mounted again (the sandbox's mount namespace dies with it).
            disk::unmount(&mount_point)?;
            disk::wait_released(device, &file, DISK_RELEASE_TIMEOUT)?;
            let persist = || {
                // A sandbox hibernated before disks existed left an `upper/` here.
                if snap.join(template::UPPER_DIR).exists() {
                    std::fs::remove_dir_all(snap.join(template::UPPER_DIR))?;
                }
                std::fs::create_dir_all(&snap)?;
                std::fs::rename(&file, snap.join(disk::DISK_FILE))?;
                template::write_record(&snap, &record)
            };
            persist().map_err(DiskError::io(format!("persist {id} to {}", snap.display())))
        })
        .await??;
        remove_dir(&self.layout.sandbox_dir(id)).await
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %config.id))]
    async fn restore(&self, config: &SandboxConfig) -> Result<Instance, RuntimeError> {
        let id = config.id;
        let snapshot = self.layout.snapshot_dir(id);
        let record = template::read_record(&snapshot)?.ok_or(RuntimeError::NotFound(id))?;
        Self::validate_limits(config)?;
        self.ensure_free(id, true)?;
        // The upper layer only makes sense on the layers it was written over: the
        // built-in template is the image build it was hibernated on while that exists.
        let image = record
            .image
            .as_ref()
            .filter(|i| template::check_image(i).is_ok())
            .unwrap_or(&self.image);
        let lowers = template::resolve(
            &self.layout,
            image,
            record.config.template_team_id,
            record.config.template_id,
        )?;
        let saved_disk = snapshot.join(disk::DISK_FILE);
        let legacy_upper = snapshot.join(template::UPPER_DIR);
        let legacy = !saved_disk.is_file();
        if legacy && !legacy_upper.is_dir() {
            return Err(RuntimeError::Other(format!(
                "hibernated sandbox {id} has neither {} nor {}",
                saved_disk.display(),
                legacy_upper.display()
            )));
        }
        if legacy {
            // Hibernated before sandboxes had disks: its upper directory is copied into
            // a new disk of the requested size (once; the copy is what is kept).
            self.validate(config)?;
        }
        let dir = self.make_dirs(id)?;
        let file = dir.join(disk::DISK_FILE);
        let prepared = if legacy {
            self.convert_legacy_upper(id, config.disk_size_mb, &legacy_upper)
                .await
        } else {
            match std::fs::rename(&saved_disk, &file) {
                Ok(()) => self.open_disk(id).await,
                Err(e) => Err(io_err(format!("move {} back", saved_disk.display()))(e)),
            }
        };
        let mut config = config.clone();
        config.template_team_id = record.config.template_team_id;
        config.template_id = record.config.template_id;
        let started = match prepared {
            Ok(disk) => self.start(&config, lowers, disk).await,
            Err(e) => Err(e),
        };
        match started {
            Ok(instance) => {
                remove_dir(&snapshot).await?;
                Ok(instance)
            }
            Err(e) => {
                let d = dir.clone();
                if let Err(u) = blocking(move || unmount_all_under(&d)).await {
                    tracing::error!(sandbox_id = %id, "cannot unmount the disk: {u}");
                }
                if !legacy && file.exists() {
                    if let Err(back) = std::fs::rename(&file, &saved_disk) {
                        tracing::error!(sandbox_id = %id, "cannot move the disk back: {back}");
                    }
                }
                let _ = remove_dir(&dir).await;
                Err(e)
            }
        }
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %id))]
    async fn destroy(&self, id: SandboxId) -> Result<(), RuntimeError> {
        self.remove_sandbox(id).await?;
        self.removals.remove(&self.layout.snapshot_dir(id))
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %instance.id))]
    async fn snapshot(
        &self,
        instance: &Instance,
        team: TeamId,
        template: TemplateId,
    ) -> Result<u64, RuntimeError> {
        let live = self.get(instance.id)?;
        if template == wrenn_core::id::BUILTIN_TEMPLATE_ID {
            return Err(RuntimeError::FailedPrecondition(
                "the built-in template cannot be overwritten".into(),
            ));
        }
        let dest = self.layout.template_dir(team, template);
        let cg = live.cgroup.clone();
        let was_frozen = blocking(move || cg.is_frozen()).await?.unwrap_or(false);
        if !was_frozen {
            let cg = live.cgroup.clone();
            blocking(move || cg.freeze(FREEZE_TIMEOUT))
                .await?
                .map_err(io_err(format!("freeze {} for the snapshot", instance.id)))?;
        }
        let upper = self.disk_mount_point(instance.id).join(disk::UPPER_DIR);
        let result = template::write_template(&upper, &live.lowers, &dest, instance.id).await;
        if !was_frozen {
            let cg = live.cgroup.clone();
            blocking(move || cg.thaw(FREEZE_TIMEOUT))
                .await?
                .map_err(io_err(format!("thaw {} after the snapshot", instance.id)))?;
        }
        result
    }

    async fn stats(&self, instance: &Instance) -> Result<Stats, RuntimeError> {
        let live = self.get(instance.id)?;
        let mount_point = self.disk_mount_point(instance.id);
        let l = live.clone();
        blocking(move || {
            let usage = l.cgroup.cpu_usage_ns()?;
            let now = Instant::now();
            let cpu_pct = {
                let mut last = l.cpu.lock().unwrap_or_else(|p| p.into_inner());
                let elapsed = now.duration_since(last.1).as_nanos() as f64;
                let used = usage.saturating_sub(last.0) as f64;
                *last = (usage, now);
                if elapsed > 0.0 {
                    used / elapsed * 100.0
                } else {
                    0.0
                }
            };
            Ok::<_, std::io::Error>(Stats {
                cpu_pct,
                mem_bytes: l.cgroup.memory_usage()?,
                disk_bytes: disk::ext4::usage(&mount_point)?.used_bytes,
            })
        })
        .await?
        .map_err(io_err(format!("read the usage of {}", instance.id)))
    }

    async fn wait_exit(&self, instance: &Instance) -> Result<String, RuntimeError> {
        self.watch_pid1(instance.id).await
    }

    async fn adopt(&self) -> Result<Adoption, RuntimeError> {
        self.adopt_recorded().await
    }

    async fn hibernated(&self) -> Result<Vec<SandboxConfig>, RuntimeError> {
        super::hibernated_configs(&self.layout)
    }

    async fn sweep(&self, keep: &[SandboxId]) -> Result<Vec<SandboxId>, RuntimeError> {
        let ids = super::sandboxes_on_disk(&self.layout, keep)?;
        let mut cleaned = Vec::new();
        for id in ids {
            self.remove_sandbox(id).await?;
            cleaned.push(id);
        }
        // Disks whose directory is gone but whose mount or loop device is left (a
        // crash halfway through a removal): only ours, only of sandboxes not kept.
        // The kernel names backing files by their canonical path.
        let parents = [self.layout.sandboxes_dir(), self.layout.snapshots_dir()]
            .map(|p| p.canonicalize().unwrap_or(p));
        let keep = keep.to_vec();
        let swept = blocking(move || {
            let mut swept = Vec::new();
            let mounts = disk::mount::mounts_under(&parents[0])
                .map_err(DiskError::io("read /proc/self/mountinfo"))?;
            for m in mounts {
                if let Some(id) = sandbox_of(&m.mount_point, &parents[..1]) {
                    if !keep.contains(&id) {
                        disk::unmount(&m.mount_point)?;
                        swept.push(id);
                    }
                }
            }
            let bound = disk::loopdev::list_bound().map_err(DiskError::io("list loop devices"))?;
            for b in bound {
                if let Some(id) = sandbox_of(&b.backing_file, &parents) {
                    if !keep.contains(&id) {
                        disk::loopdev::detach(b.number).map_err(DiskError::io(format!(
                            "detach {}",
                            disk::loopdev::device_path(b.number).display()
                        )))?;
                        swept.push(id);
                    }
                }
            }
            Ok::<_, DiskError>(swept)
        })
        .await??;
        for id in swept {
            if !cleaned.contains(&id) {
                cleaned.push(id);
            }
        }
        Ok(cleaned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_under_sandboxes_or_snapshots_name_their_sandbox() {
        let id = SandboxId::new();
        let parents = [PathBuf::from("/w/sandboxes"), PathBuf::from("/w/snapshots")];
        let disk = PathBuf::from(format!("/w/sandboxes/{id}/disk.ext4"));
        assert_eq!(sandbox_of(&disk, &parents), Some(id));
        let saved = PathBuf::from(format!("/w/snapshots/{id}/disk.ext4"));
        assert_eq!(sandbox_of(&saved, &parents), Some(id));
        assert_eq!(
            sandbox_of(Path::new("/w/disks/pool/a.ext4"), &parents),
            None
        );
        assert_eq!(
            sandbox_of(Path::new("/w/sandboxes/not-an-id/x"), &parents),
            None
        );
        assert_eq!(sandbox_of(Path::new("/other/sandboxes/x"), &parents), None);
    }
}

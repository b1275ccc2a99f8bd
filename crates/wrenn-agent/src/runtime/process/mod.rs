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
//!   `sandboxes/{id}/run/envd.sock` ([`EnvdEndpoint::Unix`]) and passes to envd as a
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

pub mod cgroup;
pub mod dynmods;
pub mod idrange;
mod inits;
pub mod removal;
pub mod state;
pub mod template;
mod warm;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::process::{Child, Command};
use tonic::transport::{Endpoint, Uri};
use wrenn_core::id::SandboxId;
use wrenn_core::layout::Layout;
use wrenn_proto::envd::v1::HealthRequest;
use wrenn_proto::envd::v1::system_client::SystemClient;

use self::cgroup::{CgroupDriver, IoLimits, Limits, SandboxCgroup};
use self::idrange::IdRanges;
use self::inits::{SpareInits, Waiting};
use self::removal::Removals;
use self::template::{HibernationRecord, Lowers};
use self::warm::WarmCapsules;
use super::{
    Adoption, Capabilities, EnvdEndpoint, Instance, Runtime, RuntimeError, SandboxConfig, Stats,
    blocking, error_chain, io_err,
};
use crate::disk::blank::Blanks;
use crate::disk::pool::DiskPool;
use crate::disk::{self, DeviceId, DiskError, MountedDisk, SpaceCheck};
use crate::image::ImageRef;
use crate::init::{self, ENVD_SOCKET_NAME, InitSpec};
use crate::network::{self, ClaimedNet, Network, NetworkOptions, SandboxNet};
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

/// Options of the process runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessRuntimeOptions {
    /// Capsule networking: address range (default `10.200.0.0/16`), firewall table,
    /// egress policy, DNS forwarder.
    pub network: NetworkOptions,
    /// Cgroup directory (under each hierarchy's root) holding the sandboxes' cgroups
    /// (default `wrenn-sandboxes`).
    pub cgroup_parent: String,
    /// Task limit per sandbox (`pids.max`, default 4096).
    pub pids_max: u32,
    /// How long `create`/`restore` wait for envd to answer (default 10 s).
    pub envd_timeout: Duration,
    /// The program run as the sandbox init step with
    /// [`INIT_ARG`](crate::init::INIT_ARG): a binary that calls
    /// [`crate::init::main_if_init`] first thing in `main`. `None` (default) = the
    /// running binary (`/proc/{agent pid}/exe`, which stays valid even if the file is
    /// replaced on disk).
    pub init_program: Option<PathBuf>,
    /// The image build the built-in template is (and new templates sit on):
    /// [`BuiltImage::reference`](crate::image::BuiltImage::reference) of
    /// [`crate::image::ensure_default`]. Required: [`ProcessRuntime::new`] refuses to
    /// start without one.
    pub base_image: Option<ImageRef>,
    /// First host uid/gid of the capsules' id ranges (default 2³¹: far above host users
    /// and the 100000+ ranges of `/etc/subuid`). Capsule `k` gets
    /// `id_base + k·65536 ..+65536`.
    pub id_base: u32,
    /// How many id ranges (live capsules) there are (default 16384, up to 2³¹+2³⁰).
    pub id_ranges: u32,
    /// Size of `/dev/shm` in MiB; `None` (default) = half the capsule's memory, at most
    /// 1 GiB (tmpfs pages are charged to the capsule's memory limit anyway).
    pub shm_size_mb: Option<u32>,
    /// Turn on the cgroup2 `favordynmods` flag host-wide ([`dynmods`]; default `true`):
    /// moving a capsule's init into its cgroups then takes ~0.1 ms instead of an RCU
    /// grace period (~10 ms) on the create path.
    pub favor_dynamic_cgroups: bool,
    /// Size of the disks kept formatted and mounted ahead of time (MiB; default
    /// [`DEFAULT_DISK_SIZE_MB`](wrenn_core::lifecycle::DEFAULT_DISK_SIZE_MB), the
    /// control plane's default). Sandboxes asking for another size get a disk
    /// copied on demand from a blank of that size ([`disk::blank`]; the first disk
    /// of a size costs a `mkfs.ext4`).
    pub disk_pool_size_mb: u32,
    /// How many pooled disks are kept ready (default 8; 0 = no pool). The pool is off
    /// when [`disk_space_check`](Self::disk_space_check) refuses its size.
    pub disk_pool_depth: usize,
    /// How many init programs are kept started and waiting for a capsule (default 4;
    /// 0 = each create starts its own). They are spawned at idle priority.
    pub spare_inits: usize,
    /// How many capsules of the built-in template with the pooled disk size are kept
    /// booted and waiting for a create (warm capsules; default 4, `WRENN_WARM_CAPSULES`;
    /// 0 = none). Kept only once [`Runtime::start_background`] was called.
    pub warm_capsules: usize,
    /// I/O limits of each sandbox on its disk (see [`IoLimits`] for the defaults).
    pub io: IoLimits,
    /// `pids.max` of the parent cgroup: tasks all sandboxes may run together
    /// (`WRENN_SANDBOXES_PIDS_MAX`, default 32768).
    pub sandboxes_pids_max: u64,
    /// Memory kept for the host outside every sandbox: the parent cgroup's memory
    /// limit is the host's memory minus this (`WRENN_MEMORY_RESERVE_MB`, default
    /// 1024 MiB).
    pub sandboxes_memory_reserve_mb: u64,
    /// Which disk sizes are refused besides those below
    /// [`MIN_SIZE_MB`](disk::MIN_SIZE_MB) (default [`SpaceCheck::Capacity`]).
    pub disk_space_check: SpaceCheck,
}

impl Default for ProcessRuntimeOptions {
    fn default() -> Self {
        Self {
            network: NetworkOptions::default(),
            cgroup_parent: "wrenn-sandboxes".to_owned(),
            pids_max: 4096,
            envd_timeout: Duration::from_secs(10),
            init_program: None,
            base_image: None,
            id_base: 1 << 31,
            id_ranges: 16384,
            shm_size_mb: None,
            favor_dynamic_cgroups: true,
            disk_pool_size_mb: crate::service::DEFAULT_DISK_MB,
            disk_pool_depth: 8,
            spare_inits: 4,
            warm_capsules: wrenn_core::config::DEFAULT_WARM_CAPSULES,
            io: IoLimits::default(),
            sandboxes_pids_max: wrenn_core::config::DEFAULT_SANDBOXES_PIDS_MAX,
            sandboxes_memory_reserve_mb: wrenn_core::config::DEFAULT_MEMORY_RESERVE_MB,
            disk_space_check: SpaceCheck::default(),
        }
    }
}

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

/// What tears a sandbox down, owning what it needs so that it can run after a destroy
/// has answered ([`ProcessRuntime::remove_sandbox`]).
#[derive(Debug)]
struct Teardown {
    id: SandboxId,
    cgroup: SandboxCgroup,
    netns: String,
    network: Arc<Network>,
    ids: Arc<IdRanges>,
}

impl Teardown {
    /// Kills every process of the sandbox (reaping `child`, the init program's outer
    /// process) and removes its network namespace and cgroups (not its directories).
    /// Best effort; problems are logged.
    async fn run(self, child: Option<&tokio::sync::Mutex<Child>>) {
        let Self {
            id,
            cgroup,
            netns,
            network,
            ids,
        } = self;
        // Killing the sandbox's processes (PID 1 included) ends its pid namespace; the
        // `unshare` parent then reaps PID 1 and exits by itself, and we reap it.
        let cg = cgroup.clone();
        let killed = blocking(move || cg.kill_all(TEARDOWN_TIMEOUT)).await;
        if let Err(e) = killed.and_then(|r| r.map_err(io_err("kill"))) {
            tracing::warn!(sandbox_id = %id, "killing the sandbox's processes: {e}");
        }
        if let Some(child) = child {
            let mut child = child.lock().await;
            if tokio::time::timeout(Duration::from_secs(2), child.wait())
                .await
                .is_err()
            {
                let _ = child.start_kill();
                if tokio::time::timeout(TEARDOWN_TIMEOUT, child.wait())
                    .await
                    .is_err()
                {
                    tracing::warn!(sandbox_id = %id, "sandbox process did not exit");
                }
            }
        }
        // Anything still in the namespace but outside the cgroups (the `unshare` parent
        // after an agent crash, an init step that never joined).
        let ns = netns.clone();
        let killed = blocking(move || kill_netns_processes(&ns, TEARDOWN_TIMEOUT)).await;
        if let Err(e) = killed.and_then(|r| r.map_err(io_err("kill"))) {
            tracing::warn!(sandbox_id = %id, "killing processes in {netns}: {e}");
        }
        if let Err(e) = network.remove(&netns).await {
            tracing::warn!(sandbox_id = %id, "removing the network: {}", error_chain(&e));
        }
        let removed = blocking(move || cgroup.remove(TEARDOWN_TIMEOUT)).await;
        if let Err(e) = removed.and_then(|r| r.map_err(io_err("remove cgroups"))) {
            tracing::warn!(sandbox_id = %id, "{e}");
        }
        // Its processes are gone: the id range can go to another capsule.
        ids.release(id);
    }
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
                Self::FailedPrecondition(e.to_string())
            }
            DiskError::Io { context, source } => Self::Io { context, source },
            DiskError::Mkfs { .. } => Self::Other(e.to_string()),
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
                "cannot open an ext4 filesystem context ({e}): the kernel needs ext4 and \
                 the new mount API (Linux 5.8 or later)"
            ));
        }
        let cgroups = CgroupDriver::detect().map_err(unsupported_err)?;
        let ids = IdRanges::new(options.id_base, options.id_ranges)
            .map_err(|e| unsupported_err(e.to_string()))?;
        if options.favor_dynamic_cgroups {
            match dynmods::enable(&layout.root().join(".cgroup2")) {
                Ok(true) => {}
                Ok(false) => tracing::info!("turned on cgroup2 favordynmods (fast cgroup moves)"),
                Err(e) => tracing::warn!("cannot turn on cgroup2 favordynmods: {e}"),
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
        .inspect_err(|e| tracing::warn!("no disk pool: {e}"))
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

    /// Gives sandbox `id` (whose directory exists) a fresh, empty disk of `size_mb`
    /// mounted at `sandboxes/{id}/disk`: a pooled one when the size matches the pool's,
    /// else one formatted now. On failure nothing of the disk is left.
    async fn new_disk(&self, id: SandboxId, size_mb: u32) -> Result<DeviceId, RuntimeError> {
        let file = self.layout.sandbox_dir(id).join(disk::DISK_FILE);
        let target = self.disk_mount_point(id);
        let pool = Some(&self.pool).filter(|p| p.size_mb() == size_mb && p.depth() > 0);
        let mut pooled = None;
        while let Some(candidate) = pool.and_then(DiskPool::take) {
            match std::fs::rename(&candidate.file, &file) {
                Ok(()) => {
                    pooled = Some(candidate.disk);
                    break;
                }
                // Dropped (unmounted); its file was removed under us, e.g. by another
                // agent starting on the same directory.
                Err(e) => tracing::warn!(
                    sandbox_id = %id,
                    "skipping pooled disk {}: {e}",
                    candidate.file.display()
                ),
            }
        }
        let mounted = match pooled {
            Some(disk) => disk,
            None => {
                tracing::debug!(sandbox_id = %id, size_mb, "making a disk on demand");
                self.blanks.make(&file, size_mb).await?;
                let f = file.clone();
                match blocking(move || MountedDisk::open(&f)).await? {
                    Ok(m) => m,
                    Err(e) => {
                        let _ = std::fs::remove_file(&file);
                        return Err(e.into());
                    }
                }
            }
        };
        // Dropping `mounted` on failure unmounts it; the device unbinds itself.
        mounted.place(&target).map_err(|e| {
            let _ = std::fs::remove_file(&file);
            e.into()
        })
    }

    /// Gives sandbox `id` a new disk holding a copy of `upper` (the upper directory of
    /// a sandbox hibernated before sandboxes had disks).
    async fn convert_legacy_upper(
        &self,
        id: SandboxId,
        size_mb: u32,
        upper: &Path,
    ) -> Result<DeviceId, RuntimeError> {
        tracing::info!(sandbox_id = %id, "copying a pre-disk hibernated upper layer into a disk");
        let disk = self.new_disk(id, size_mb).await?;
        let dest = self.disk_mount_point(id).join(disk::UPPER_DIR);
        let out = Command::new("cp")
            .arg("-a")
            .arg(upper.join("."))
            .arg(&dest)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(io_err("run cp"))?;
        if !out.status.success() {
            return Err(RuntimeError::Other(format!(
                "copying the hibernated upper layer of {id} into its {size_mb} MiB disk failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(disk)
    }

    /// Mounts the existing disk file of sandbox `id` at `sandboxes/{id}/disk`.
    async fn open_disk(&self, id: SandboxId) -> Result<DeviceId, RuntimeError> {
        let file = self.layout.sandbox_dir(id).join(disk::DISK_FILE);
        let target = self.disk_mount_point(id);
        Ok(blocking(move || MountedDisk::open(&file).and_then(|m| m.place(&target))).await??)
    }

    /// Throws the disk away (shut down, so dirty data is never written out), unmounts
    /// everything under `sandboxes/{id}/` and removes the directory (with the disk
    /// file).
    async fn remove_sandbox_dir(&self, id: SandboxId) -> Result<(), RuntimeError> {
        let dir = self.layout.sandbox_dir(id);
        let d = dir.clone();
        let mount_point = self.disk_mount_point(id);
        blocking(move || {
            disk::discard(&mount_point)?;
            unmount_all_under(&d)
        })
        .await??;
        remove_dir(&dir).await
    }

    /// Starts a sandbox whose directory and disk are ready ([`boot`](Self::boot), then
    /// [`register`](Self::register)); on failure everything but the directory and disk
    /// is torn down.
    async fn start(
        &self,
        config: &SandboxConfig,
        lowers: Lowers,
        disk: DeviceId,
    ) -> Result<Instance, RuntimeError> {
        let booted = self.boot(config, &lowers, disk, false).await?;
        self.register(config, lowers, disk, booted).await
    }

    /// Boots sandbox `config.id`, whose directory and disk are ready, until its envd
    /// answers; on failure everything but the directory and disk is torn down.
    ///
    /// A waiting init program (a spare, [`inits`]) and a ready network (a spare,
    /// named) are taken and the cgroups made; then the init program gets its go-ahead
    /// ([`crate::init`]: the spec and the capsule's `resolv.conf`). The network's DNS
    /// is not served yet ([`register`](Self::register) does it). A capsule booted
    /// `ahead_of_time` ([`warm`]) stays at idle priority.
    async fn boot(
        &self,
        config: &SandboxConfig,
        lowers: &Lowers,
        disk: DeviceId,
        ahead_of_time: bool,
    ) -> Result<Booted, RuntimeError> {
        let id = config.id;
        let dir = self.layout.sandbox_dir(id);
        let cgroup = self.sandbox_cgroup(id);
        let limits = self.limits(config);
        let netns = Self::netns_name(id);
        let spec = match self.init_spec(config, lowers, &cgroup, &netns, &dir) {
            Ok(spec) => InitSpec {
                ahead_of_time,
                ..spec
            },
            Err(e) => {
                self.teardown(id, None).await;
                return Err(e);
            }
        };
        let cg = cgroup.clone();
        let io = self.options.io;
        let t0 = Instant::now();
        let us = move || t0.elapsed().as_micros() as u64;
        let (waiting, cgroups, claimed) = tokio::join!(
            async {
                let waiting = self.inits.take(&spec.log).await;
                tracing::debug!(elapsed_us = us(), "init program ready");
                waiting
            },
            blocking(move || {
                cg.create(limits)?;
                cg.set_io_limits(disk.major, disk.minor, &io)
            }),
            async {
                let prepared = self.network.prepare(&netns).await;
                tracing::debug!(elapsed_us = us(), "network prepared");
                prepared
            }
        );
        let waiting = waiting.map_err(io_err("start the sandbox's init program"));
        let (child, mut go, early_output) = match waiting {
            Ok(Waiting {
                child,
                go,
                early_output,
            }) => (tokio::sync::Mutex::new(child), go, early_output),
            Err(e) => {
                drop(claimed);
                self.teardown(id, None).await;
                return Err(e);
            }
        };
        let prepared = cgroups
            .and_then(|r| r.map_err(io_err(format!("set up the cgroups of {id}"))))
            .and_then(|()| claimed.map_err(network_err(id)))
            .and_then(|claimed| {
                // Closing the pipe without a go-ahead (dropping it on failure) is the
                // signal to give up; a warm capsule keeps it as its lease.
                match init::go(&mut go, &spec, &claimed.net().resolv_conf()) {
                    // The init step is gone: waiting for envd reports its exit and log.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(claimed),
                    Err(e) => Err(io_err(format!("start the init step of {id}"))(e)),
                    Ok(()) => Ok(claimed),
                }
            });
        let lease = ahead_of_time.then_some(go);
        tracing::debug!(elapsed_us = us(), "init program told to go on");
        let booted = match prepared {
            Ok(claimed) => self
                .wait_for_envd(id, &child, &dir, early_output)
                .await
                .and_then(|version| Ok((claimed, version, self.find_pid1(&cgroup)?))),
            Err(e) => Err(e),
        };
        tracing::debug!(elapsed_us = us(), "envd answered");
        match booted {
            Ok((claimed, version, pid1)) => Ok(Booted {
                child,
                claimed,
                version,
                pid1,
                lease,
            }),
            Err(e) => {
                self.teardown(id, Some(&child)).await;
                Err(e)
            }
        }
    }

    /// The cgroup limits of a sandbox.
    fn limits(&self, config: &SandboxConfig) -> Limits {
        Limits {
            vcpus: config.vcpus,
            memory_bytes: u64::from(config.memory_mb) * 1024 * 1024,
            pids_max: self.options.pids_max,
        }
    }

    /// Makes a booted sandbox live: serves its DNS, tracks it and records it
    /// ([`state`]) for an agent that restarts. On failure it is torn down (not its
    /// directory and disk).
    async fn register(
        &self,
        config: &SandboxConfig,
        lowers: Lowers,
        disk: DeviceId,
        booted: Booted,
    ) -> Result<Instance, RuntimeError> {
        let id = config.id;
        let Booted {
            child,
            claimed,
            version,
            pid1,
            lease,
        } = booted;
        if let Some(lease) = lease
            && let Err(e) = init::claim(lease)
        {
            self.teardown(id, Some(&child)).await;
            return Err(io_err(format!("claim the warm capsule {id}"))(e));
        }
        let net = match self.network.serve(claimed, &id.to_string()).await {
            Ok(net) => net,
            Err(e) => {
                self.teardown(id, Some(&child)).await;
                return Err(network_err(id)(e));
            }
        };
        let cgroup = self.sandbox_cgroup(id);
        let usage = cgroup.cpu_usage_ns().unwrap_or(0);
        let live = Arc::new(Live {
            config: config.clone(),
            lowers,
            cgroup,
            net: net.clone(),
            disk,
            child: Some(child),
            pid1,
            cpu: Mutex::new((usage, Instant::now())),
        });
        self.record_live(&live, &version);
        self.lock_live().insert(id, live);
        let mut metadata = BTreeMap::new();
        metadata.insert("runtime".to_owned(), RUNTIME_NAME.to_owned());
        metadata.insert("envd_version".to_owned(), version);
        metadata.insert("cgroup".to_owned(), self.cgroups.version().to_owned());
        metadata.insert("netns".to_owned(), net.netns.clone());
        metadata.insert("veth".to_owned(), net.veth.clone());
        metadata.insert(
            "disk_device".to_owned(),
            format!("{}:{}", disk.major, disk.minor),
        );
        Ok(Instance {
            id,
            envd: EnvdEndpoint::Unix(self.envd_socket(id)),
            host_ip: net.sandbox_addr.to_string(),
            metadata,
        })
    }

    /// What the init program of sandbox `config.id` sets up ([`init::go`]).
    fn init_spec(
        &self,
        config: &SandboxConfig,
        lowers: &Lowers,
        cgroup: &SandboxCgroup,
        netns: &str,
        dir: &Path,
    ) -> Result<InitSpec, RuntimeError> {
        let id = config.id;
        let id_map = self
            .ids
            .allocate(id)
            .map_err(|e| RuntimeError::Other(format!("sandbox {id}: {e}")))?;
        idrange::write_record(dir, id_map)
            .map_err(io_err(format!("record the id range of {id}")))?;
        let (lower_base, lower_list) = lowers.overlay();
        let mut envd_args = Vec::new();
        if !config.default_user.is_empty() {
            envd_args.push("--default-user".to_owned());
            envd_args.push(config.default_user.clone());
        }
        let memory_bytes = u64::from(config.memory_mb) * 1024 * 1024;
        let shm_size = match self.options.shm_size_mb {
            Some(mb) => u64::from(mb) * 1024 * 1024,
            None => (memory_bytes / 2).min(1 << 30),
        };
        let spec = InitSpec {
            hostname: id.to_string(),
            netns: network::netns_path(netns),
            cgroup_procs: cgroup.procs_files(),
            id_map,
            lower_base,
            lowers: lower_list,
            upper: dir.join(disk::MOUNT_DIR).join(disk::UPPER_DIR),
            work: dir.join(disk::MOUNT_DIR).join(disk::WORK_DIR),
            root: dir.join("rootfs"),
            socket: self.envd_socket(id),
            envd: self.envd.clone(),
            envd_args,
            env: vec![
                (
                    "PATH".to_owned(),
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
                ),
                ("HOME".to_owned(), "/root".to_owned()),
                ("LANG".to_owned(), "C.UTF-8".to_owned()),
            ],
            shm_size,
            log: dir.join("envd.log"),
            ahead_of_time: false,
        };
        Ok(spec)
    }

    /// Waits until envd of sandbox `id` answers; returns its version.
    async fn wait_for_envd(
        &self,
        id: SandboxId,
        child: &tokio::sync::Mutex<Child>,
        dir: &Path,
        early_output: Option<std::fs::File>,
    ) -> Result<String, RuntimeError> {
        let log_path = dir.join("envd.log");
        let socket = self.envd_socket(id);
        let deadline = Instant::now() + self.options.envd_timeout;
        let mut last = String::from("its socket never appeared");
        let mut pause = Duration::from_millis(1);
        loop {
            match child.lock().await.try_wait() {
                Ok(Some(status)) => {
                    inits::save_early_output(early_output, &log_path);
                    let tail = tail(&log_path, LOG_TAIL_BYTES);
                    return Err(RuntimeError::Other(format!(
                        "sandbox {id} exited during start ({status}); envd log: {tail}"
                    )));
                }
                Ok(None) => {}
                Err(e) => return Err(io_err("wait for the sandbox process")(e)),
            }
            if socket.exists() {
                match health(&socket).await {
                    Ok(version) => return Ok(version),
                    Err(e) => last = e,
                }
            }
            if Instant::now() >= deadline {
                let tail = tail(&log_path, LOG_TAIL_BYTES);
                return Err(RuntimeError::Other(format!(
                    "envd of {id} did not answer within {:?} ({last}); envd log: {tail}",
                    self.options.envd_timeout
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(2));
        }
    }

    /// Kills every process of sandbox `id` and removes its network namespace and
    /// cgroups (not its directories). Best effort; problems are logged.
    async fn teardown(&self, id: SandboxId, child: Option<&tokio::sync::Mutex<Child>>) {
        self.teardown_of(id).run(child).await;
    }

    /// What tears sandbox `id` down ([`Teardown`]).
    fn teardown_of(&self, id: SandboxId) -> Teardown {
        Teardown {
            id,
            cgroup: self.sandbox_cgroup(id),
            netns: Self::netns_name(id),
            network: Arc::clone(&self.network),
            ids: Arc::clone(&self.ids),
        }
    }

    /// Stops sandbox `id` and removes it with `sandboxes/{id}/` (disk included).
    ///
    /// Every process of the sandbox gets `SIGKILL` before this returns (a process
    /// cannot run again once it is sent, and PID 1 dying ends the pid namespace), so
    /// nothing of the sandbox runs afterwards; the directory is moved out of the way
    /// at once ([`Removals`]). Waiting for the processes to be gone, removing the
    /// network, the cgroups and the directory happen after answering (measured here:
    /// 4.5–7.5 ms that a delete no longer waits for); [`removals_settled`] waits for
    /// them.
    ///
    /// [`removals_settled`]: Self::removals_settled
    async fn remove_sandbox(&self, id: SandboxId) -> Result<(), RuntimeError> {
        let live = self.lock_live().remove(&id);
        let cgroup = self.sandbox_cgroup(id);
        if let Err(e) = blocking(move || cgroup.kill_now()).await {
            tracing::warn!(sandbox_id = %id, "killing the sandbox's processes: {e}");
        }
        let teardown = self.teardown_of(id);
        self.removals
            .remove_after(&self.layout.sandbox_dir(id), async move {
                teardown
                    .run(live.as_ref().and_then(|l| l.child.as_ref()))
                    .await;
            })
    }

    /// Waits until the directories of destroyed sandboxes are gone (they are removed
    /// in the background after [`destroy`](Runtime::destroy) answers).
    pub async fn removals_settled(&self) {
        self.removals.settled().await;
    }
}

/// `$WRENN_DIR/disks/pool/`: the disk pool's files (on the filesystem of
/// `sandboxes/`, so a pooled disk moves into a sandbox with a rename).
pub fn disk_pool_dir(layout: &Layout) -> PathBuf {
    layout.root().join("disks").join("pool")
}

/// A network error of sandbox `id` as a runtime error.
fn network_err(id: SandboxId) -> impl FnOnce(network::NetworkError) -> RuntimeError {
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
fn unmount_all_under(dir: &Path) -> Result<(), DiskError> {
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

/// The last `max` bytes of a log file.
fn tail(path: &Path, max: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(max);
            String::from_utf8_lossy(&bytes[start..]).trim().to_owned()
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Asks envd for its health over the unix socket; returns its version.
async fn health(socket: &Path) -> Result<String, String> {
    let path = socket.to_path_buf();
    let channel = Endpoint::from_static("http://envd.local")
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    SystemClient::new(channel)
        .health(HealthRequest {})
        .await
        .map(|r| r.into_inner().version)
        .map_err(|e| format!("health: {e}"))
}

/// SIGKILLs every process whose network namespace is `/run/netns/{netns}` until none
/// is left (catches processes outside the cgroups, such as the `unshare` parent).
fn kill_netns_processes(netns: &str, timeout: Duration) -> std::io::Result<()> {
    let Ok(target) = std::fs::metadata(network::netns_path(netns)) else {
        return Ok(());
    };
    let deadline = Instant::now() + timeout;
    loop {
        let mut found = false;
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(ns) = std::fs::metadata(entry.path().join("ns/net")) else {
                continue;
            };
            if ns.dev() == target.dev() && ns.ino() == target.ino() {
                // Zombies keep their entry until reaped but no namespace link.
                found = true;
                cgroup::kill_pid(pid);
            }
        }
        if !found {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("processes in network namespace {netns} did not exit within {timeout:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
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

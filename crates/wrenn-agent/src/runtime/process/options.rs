//! [`ProcessRuntimeOptions`]: what a host operator tunes in the process runtime.

use std::path::PathBuf;
use std::time::Duration;

use super::cgroup::IoLimits;
use crate::disk::SpaceCheck;
use crate::image::{BuiltImage, ImageRef};
use crate::network::NetworkOptions;

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
    /// [`crate::image::ensure_default`]. Required: [`ProcessRuntime::new`](super::ProcessRuntime::new) refuses to
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
    /// Turn on the cgroup2 `favordynmods` flag host-wide ([`dynmods`](super::dynmods); default `true`):
    /// moving a capsule's init into its cgroups then takes ~0.1 ms instead of an RCU
    /// grace period (~10 ms) on the create path.
    pub favor_dynamic_cgroups: bool,
    /// Size of the disks kept formatted and mounted ahead of time (MiB; default
    /// [`DEFAULT_DISK_SIZE_MB`](wrenn_core::lifecycle::DEFAULT_DISK_SIZE_MB), the
    /// control plane's default). Sandboxes asking for another size get a disk
    /// copied on demand from a blank of that size ([`disk::blank`](crate::disk::blank); the first disk
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
    /// 0 = none). Kept only once [`Runtime::start_background`](crate::runtime::Runtime::start_background) was called.
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
    /// [`MIN_SIZE_MB`](crate::disk::MIN_SIZE_MB) (default [`SpaceCheck::Capacity`]).
    pub disk_space_check: SpaceCheck,
}

impl Default for ProcessRuntimeOptions {
    fn default() -> Self {
        Self {
            network: NetworkOptions::default(),
            cgroup_parent: wrenn_core::config::DEFAULT_CGROUP_PARENT.to_owned(),
            pids_max: 4096,
            envd_timeout: Duration::from_secs(10),
            init_program: None,
            base_image: None,
            id_base: wrenn_core::config::DEFAULT_CAPSULE_ID_BASE,
            id_ranges: wrenn_core::config::DEFAULT_CAPSULE_ID_RANGES,
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

impl ProcessRuntimeOptions {
    /// The options an agent configured by `config` runs with on `image`: its share of
    /// the host (cgroup parent, uid ranges, network), limits and warm capsules.
    pub fn from_config(config: &wrenn_core::config::AgentConfig, image: &BuiltImage) -> Self {
        let share = &config.host_share;
        Self {
            network: NetworkOptions::from_config(config),
            cgroup_parent: share.cgroup_parent.clone(),
            id_base: share.id_base,
            id_ranges: share.id_ranges,
            base_image: Some(image.reference()),
            sandboxes_pids_max: config.sandboxes_pids_max,
            sandboxes_memory_reserve_mb: config.overcommit.memory_reserve_mb,
            warm_capsules: config.warm_capsules,
            ..Self::default()
        }
    }
}

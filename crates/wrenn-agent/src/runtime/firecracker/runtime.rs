//! The Firecracker runtime: every capsule is a Firecracker microVM on the shared
//! [VM layer](crate::runtime::vm) — the image's ELF `vmlinux`, the initramfs and
//! envd's read-only disk of [`guest`], the capsule network with its TAP device and
//! NAT ([`crate::network::tap`]), envd as the guest's PID 1 reached over TCP.
//!
//! - **Root disk**: `sandboxes/{id}/disk.ext4`, a sparse (or reflinked) copy of the
//!   image's `rootfs.ext4` as large as `disk_size_mb`, grown by the guest at boot.
//! - **Metadata** (MMDS v2): the capsule's and team's ids. envd's token is not there
//!   (any guest process may read MMDS): it travels in envd's `Init`, as with QEMU.
//! - **pause** writes a memory snapshot (`vm.state`, `memory`) into the capsule's
//!   directory and the VMM exits — full the first time, then only the pages the
//!   guest wrote since its resume, merged onto `memory` ([`super::diff`]);
//!   **resume** starts a VMM that loads it, the agent
//!   serving its memory page by page ([`super::uffd`]) unless configured to let
//!   Firecracker map the file. The drives are
//!   named relatively ([`super::machine`]), so the same snapshot restores in another
//!   directory: **hibernate** moves the files to `snapshots/{id}/` (the network goes),
//!   **restore** loads them in a new network namespace; a **template** keeps a paused
//!   capsule's memory, state and disk, and capsules created from it resume its
//!   processes.
//!
//! Firecracker needs KVM. At start the runtime boots the image's kernel once under
//! Firecracker and waits for its banner ([`PROBE_TIMEOUT`]); where it does not appear
//! (a host without KVM, or a VM without nested virtualisation, where guests crawl) the
//! runtime says so and every create fails with that reason. The answer is kept in
//! `vm/firecracker-kvm-{image}`.
//!
//! VMMs run as the agent's children inside the capsule's network namespace and die
//! with it (parent-death signal): after a crash, the start-up sweep finds only
//! directories and networks to remove. With a [jail](JailOptions)
//! (`WRENN_FIRECRACKER_JAIL=on`) each VMM runs under Firecracker's jailer instead:
//! as an unprivileged user, chrooted into `jail/firecracker/{id}/root/` (the capsule's
//! disk and snapshot hard-linked in, snapshots moved out), in the capsule's network
//! namespace (whose TAP device that user owns) and in a cgroup of its own under
//! [`JAIL_CGROUP`] that caps its CPU at its vCPUs plus one. A jailed VMM survives
//! the agent (the jailer's privilege drop clears the parent-death signal): the
//! sweep kills those of capsules it does not run, by the jail's pid file, and
//! removes their jails and cgroups.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wrenn_core::id::{BUILTIN_TEMPLATE_ID, SandboxId, TeamId, TemplateId};
use wrenn_core::layout::Layout;

use super::api::{BootSource, MachineConfiguration};
use super::jailer::{CgroupSetting, CgroupVersion, JailerConfig};
use super::machine::{self, DISK_FILE, LoadBackend, Machine, MachineError, MachineSpec, Snapshot};
use super::vmm::{Binary, Launcher, Vmm, VmmOptions};
use crate::image::BuiltImage;
use crate::network::{self, Network, NetworkOptions, SandboxNet, tap};
use crate::runtime::process::template::{ConfigRecord, HibernationRecord, read_record};
use crate::runtime::vm::capsule::{
    TemplateManifest, hibernated_guest, persist_hibernated, read_template, usage, write_template,
};
use crate::runtime::vm::guest::{self, GuestFiles, health, name_guest, remove_tree, vm_dir};
use crate::runtime::vm::{accel, disk as vmdisk};
use crate::runtime::{
    Capabilities, EnvdEndpoint, Instance, Runtime, RuntimeError, SandboxConfig, Stats, blocking,
    error_chain, io_err,
};

/// The value of [`Runtime::name`] and of the `runtime` metadata key.
pub const RUNTIME_NAME: &str = "firecracker";
/// `format` of a template's manifest ([`TEMPLATE_FILE`](crate::runtime::vm::capsule::TEMPLATE_FILE)).
pub const TEMPLATE_FORMAT: &str = "wrenn-firecracker-template/1";
/// How long the KVM probe waits for the kernel's banner.
pub const PROBE_TIMEOUT: Duration = accel::PROBE_TIMEOUT;
/// Most vCPUs Firecracker gives a VM.
const MAX_VCPUS: u32 = 32;
/// Lines of the console reported when a guest fails.
const CONSOLE_TAIL_LINES: usize = 15;
/// The parent cgroup of jailed VMMs' cgroups.
pub const JAIL_CGROUP: &str = "wrenn-firecracker";
/// The directory under `$WRENN_DIR` where jails are made (on the same file system as
/// the capsules' files, which are hard-linked into them).
pub const JAIL_DIR: &str = "jail";
/// The CPU accounting period of a jailed VMM's cgroup (µs).
const CPU_PERIOD_US: u32 = 100_000;

/// How VMMs are jailed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailOptions {
    /// The jailer (default: `WRENN_JAILER_BIN`, else `PATH`).
    pub jailer: Option<PathBuf>,
    /// The user VMMs run as (not root).
    pub uid: u32,
    /// Their group.
    pub gid: u32,
}

/// Whether KVM boots guests, as far as the runtime knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmCheck {
    /// Boot the image's kernel once to find out (default).
    Probe,
    /// Take it as given (`WRENN_VM_ACCEL=kvm`).
    Assume,
}

/// Options of the Firecracker runtime.
#[derive(Debug, Clone)]
pub struct FirecrackerRuntimeOptions {
    /// Capsule networking (as the other runtimes').
    pub network: NetworkOptions,
    /// The default image build: `vmlinux`, modules, busybox and root file system.
    /// Required.
    pub image: Option<BuiltImage>,
    /// The Firecracker binary (default: `WRENN_FIRECRACKER_BIN`, else `PATH`).
    pub firecracker: Option<PathBuf>,
    /// Whether to probe KVM.
    pub kvm: KvmCheck,
    /// How long a booting guest's envd may take to answer (default 30 s).
    pub boot_timeout: Duration,
    /// How long a restored guest's envd may take to answer (default 10 s).
    pub resume_timeout: Duration,
    /// How restored guests get their memory (default: served page by page by the
    /// agent's userfaultfd handler).
    pub load_backend: LoadBackend,
    /// Runs each VMM under the jailer (default: as the agent's child).
    pub jail: Option<JailOptions>,
}

impl Default for FirecrackerRuntimeOptions {
    fn default() -> Self {
        Self {
            network: NetworkOptions::default(),
            image: None,
            firecracker: None,
            kvm: KvmCheck::Probe,
            boot_timeout: Duration::from_secs(30),
            resume_timeout: Duration::from_secs(10),
            load_backend: LoadBackend::Uffd,
            jail: None,
        }
    }
}

impl FirecrackerRuntimeOptions {
    /// The options an agent configured by `config` runs with on `image`; fails when
    /// the configuration asks for what Firecracker cannot do (TCG).
    pub fn from_config(
        config: &wrenn_core::config::AgentConfig,
        image: BuiltImage,
    ) -> Result<Self, RuntimeError> {
        use wrenn_core::config::VmAccel;
        let kvm = match config.vm_accel {
            VmAccel::Auto => KvmCheck::Probe,
            VmAccel::Kvm => KvmCheck::Assume,
            VmAccel::Tcg => {
                return Err(RuntimeError::Unsupported(
                    "Firecracker runs guests under KVM only; WRENN_VM_ACCEL=tcg is for \
                     WRENN_RUNTIME=qemu"
                        .into(),
                ));
            }
        };
        let options = Self {
            image: Some(image),
            // The configured default path counts only where something is installed;
            // else the binary is looked up as the VMM layer does.
            firecracker: Some(config.firecracker_bin.clone()).filter(|p| p.is_file()),
            kvm,
            jail: config.firecracker_jail.as_ref().map(|jail| JailOptions {
                jailer: jail.jailer_bin.clone(),
                uid: jail.uid,
                gid: jail.gid,
            }),
            network: NetworkOptions::from_config(config),
            ..Self::default()
        };
        Ok(options)
    }
}

/// A capsule's VM as the runtime tracks it.
#[derive(Debug)]
struct Vm {
    config: SandboxConfig,
    guest: GuestFiles,
    net: SandboxNet,
    /// `None` while paused (its memory is in the capsule's directory).
    machine: tokio::sync::Mutex<Option<Machine>>,
    /// CPU time and when it was read, for [`Stats::cpu_pct`].
    cpu: Mutex<(u64, Instant)>,
}

/// The Firecracker runtime. See the [module docs](self).
#[derive(Debug)]
pub struct FirecrackerRuntime {
    layout: Layout,
    options: FirecrackerRuntimeOptions,
    network: Arc<Network>,
    image: BuiltImage,
    kernel: PathBuf,
    guest: GuestFiles,
    firecracker: PathBuf,
    /// The jail of every VMM (its per-capsule parts unset), when jailed.
    jail: Option<JailerConfig>,
    /// `Err(why)` when KVM does not boot guests here: creates fail with it.
    kvm: Result<(), String>,
    live: Mutex<HashMap<SandboxId, Arc<Vm>>>,
}

impl FirecrackerRuntime {
    /// Prepares the runtime: finds Firecracker and the image's `vmlinux`, makes the
    /// guest files in `vm/`, probes KVM and sets up the host's capsule network. Fails
    /// with [`RuntimeError::Unsupported`] when something is missing.
    pub async fn new(
        layout: Layout,
        envd: PathBuf,
        options: FirecrackerRuntimeOptions,
    ) -> Result<Self, RuntimeError> {
        let image = options.image.clone().ok_or_else(|| {
            RuntimeError::Unsupported("the Firecracker runtime needs the default image".into())
        })?;
        let kernel = image.vmlinux().ok_or_else(|| {
            RuntimeError::Unsupported("the image build has no ELF kernel (vmlinux)".into())
        })?;
        let firecracker = match options.firecracker.clone() {
            Some(path) => Binary::Firecracker
                .find_in(Some(path.as_os_str()), None)
                .map_err(|e| RuntimeError::Unsupported(error_chain(&e)))?,
            None => Binary::Firecracker
                .find()
                .map_err(|e| RuntimeError::Unsupported(error_chain(&e)))?,
        };
        for dir in [
            layout.sandboxes_dir(),
            layout.snapshots_dir(),
            vm_dir(&layout),
        ] {
            std::fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        }
        let jail = match &options.jail {
            None => None,
            Some(jail) => Some(Self::jail_config(&layout, &firecracker, jail)?),
        };
        let (vm, built, envd_bin) = (vm_dir(&layout), image.clone(), envd.clone());
        let (guest, _key) = blocking(move || guest::prepare(&vm, &envd_bin, &built)).await??;
        let kvm = match options.kvm {
            KvmCheck::Assume => Ok(()),
            KvmCheck::Probe => probed_kvm(&firecracker, &kernel, &image, &vm_dir(&layout)).await,
        };
        if let Err(why) = &kvm {
            tracing::warn!(
                "KVM cannot boot guests on this host ({why}): Firecracker capsules cannot \
                 start here; use WRENN_RUNTIME=qemu (TCG) or process"
            );
        }
        let network = Network::new(options.network.clone())
            .await
            .map_err(|e| RuntimeError::Unsupported(error_chain(&e)))?;
        tracing::info!(firecracker = %firecracker.display(), kvm = kvm.is_ok(), "Firecracker runtime ready");
        Ok(Self {
            layout,
            options,
            network: Arc::new(network),
            image,
            kernel,
            guest,
            firecracker,
            jail,
            kvm,
            live: Mutex::new(HashMap::new()),
        })
    }

    /// The jail every VMM gets (its network namespace and cgroup values are the
    /// capsule's): the jailer found, the chroot base made.
    fn jail_config(
        layout: &Layout,
        firecracker: &Path,
        options: &JailOptions,
    ) -> Result<JailerConfig, RuntimeError> {
        if options.uid == 0 || options.gid == 0 {
            return Err(RuntimeError::Unsupported(
                "jailed Firecracker VMMs must not run as root (uid or gid 0)".into(),
            ));
        }
        let jailer = match &options.jailer {
            Some(path) => Binary::Jailer.find_in(Some(path.as_os_str()), None),
            None => Binary::Jailer.find(),
        }
        .map_err(|e| RuntimeError::Unsupported(error_chain(&e)))?;
        let base = layout.root().join(JAIL_DIR);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&base)
            .map_err(io_err(format!("create {}", base.display())))?;
        let mut config = JailerConfig::new(jailer, firecracker, options.uid, options.gid, base);
        config.cgroup_version = CgroupVersion::of_host();
        config.parent_cgroup = Some(JAIL_CGROUP.to_owned());
        Ok(config)
    }

    /// The jailer configuration of capsule `config`'s VMM, when jailed.
    fn jail_of(&self, config: &SandboxConfig) -> Option<JailerConfig> {
        let mut jail = self.jail.clone()?;
        jail.netns = Some(network::netns_path(&Self::netns_name(config.id)));
        let quota = (u64::from(config.vcpus) + 1) * u64::from(CPU_PERIOD_US);
        jail.cgroups = vec![match jail.cgroup_version {
            CgroupVersion::V1 => CgroupSetting::new("cpu.cfs_quota_us", quota.to_string()),
            CgroupVersion::V2 => CgroupSetting::new("cpu.max", format!("{quota} {CPU_PERIOD_US}")),
        }];
        Some(jail)
    }

    /// Whether KVM boots guests here (`Err` says why not).
    pub fn kvm(&self) -> Result<(), &str> {
        self.kvm.as_ref().map(|_| ()).map_err(String::as_str)
    }

    /// The capsule networking of this runtime.
    pub fn networking(&self) -> &Network {
        &self.network
    }

    /// The network namespace name of a capsule.
    pub fn netns_name(id: SandboxId) -> String {
        network::netns_name(&id.to_string())
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<SandboxId, Arc<Vm>>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, id: SandboxId) -> Result<Arc<Vm>, RuntimeError> {
        self.live()
            .get(&id)
            .cloned()
            .ok_or(RuntimeError::NotFound(id))
    }

    /// The kernel command line of every guest.
    fn cmdline() -> String {
        format!(
            "console=ttyS0 reboot=k panic=-1 pci=off quiet loglevel=4 wrenn.root=/dev/vda \
             wrenn.envd=/dev/vdb wrenn.grow=1 wrenn.net={guest}/{prefix},{gateway} \
             wrenn.init=/run/wrenn/wrenn-envd,--listen,0.0.0.0:{port},--set-clock",
            guest = tap::GUEST_ADDR,
            prefix = tap::TAP_PREFIX,
            gateway = tap::TAP_ADDR,
            port = wrenn_proto::ENVD_PORT,
        )
    }

    fn machine_spec(&self, config: &SandboxConfig, guest: &GuestFiles) -> MachineSpec {
        let id = config.id;
        let launcher = match self.jail_of(config) {
            Some(jail) => Launcher::Jailed(jail),
            None => Launcher::Direct {
                firecracker: self.firecracker.clone(),
                netns: Some(network::netns_path(&Self::netns_name(id))),
            },
        };
        MachineSpec {
            id: id.to_string(),
            launcher,
            dir: self.layout.sandbox_dir(id),
            kernel: self.kernel.clone(),
            initrd: guest.initrd.clone(),
            cmdline: Self::cmdline(),
            envd_disk: guest.envd_disk.clone(),
            vcpus: config.vcpus,
            memory_mb: config.memory_mb,
            network: true,
            metadata: Some(serde_json::json!({
                "wrenn": {
                    "capsule_id": id.to_string(),
                    "team_id": config.team_id.to_string(),
                }
            })),
        }
    }

    fn validate(&self, config: &SandboxConfig) -> Result<(), RuntimeError> {
        if config.vcpus == 0 || config.vcpus > MAX_VCPUS {
            return Err(RuntimeError::FailedPrecondition(format!(
                "vcpus must be 1 to {MAX_VCPUS} (got {})",
                config.vcpus
            )));
        }
        if config.memory_mb < 128 {
            return Err(RuntimeError::FailedPrecondition(format!(
                "a VM needs at least 128 MiB of memory (got {})",
                config.memory_mb
            )));
        }
        if let Err(why) = &self.kvm {
            return Err(RuntimeError::Unsupported(self.redact(format!(
                "Firecracker cannot run capsules on this host: KVM does not boot guests \
                 here ({why})"
            ))));
        }
        Ok(())
    }

    fn make_dir(&self, id: SandboxId) -> Result<PathBuf, RuntimeError> {
        let dir = self.layout.sandbox_dir(id);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(io_err(format!("create {}", dir.display())))?;
        Ok(dir)
    }

    /// Starts capsule `config.id`'s VM in a new network (its directory holds its
    /// disk): a boot, or a restore of `snapshot`. Waits for envd and tracks the VM. On
    /// failure nothing of it runs and its network is gone (the directory stays).
    async fn start_vm(
        &self,
        config: &SandboxConfig,
        guest: GuestFiles,
        snapshot: Option<Snapshot>,
    ) -> Result<(Arc<Vm>, String), RuntimeError> {
        let id = config.id;
        let netns = Self::netns_name(id);
        let tap_owner = self.jail.as_ref().map(|jail| (jail.uid, jail.gid));
        let net = guest::add_network(&self.network, id, &netns, tap_owner).await?;
        let spec = self.machine_spec(config, &guest);
        let envd_addr = SocketAddr::from((net.sandbox_addr, wrenn_proto::ENVD_PORT));
        let started = Instant::now();
        let running = async {
            let (machine, timeout) = match &snapshot {
                Some(snapshot) => (
                    Machine::load(&spec, snapshot, self.options.load_backend).await,
                    self.options.resume_timeout,
                ),
                None => (Machine::boot(&spec).await, self.options.boot_timeout),
            };
            let mut machine = machine.map_err(|e| self.machine_err(id, &e, &[]))?;
            match wait_for_envd(&mut machine, envd_addr, timeout).await {
                Ok(version) => Ok((machine, version)),
                Err(why) => {
                    let console = machine.console_tail();
                    let _ = machine.stop().await;
                    Err(RuntimeError::Other(self.redact(format!(
                        "the VM of {id} did not start: {why}; console: {}",
                        tail(&console)
                    ))))
                }
            }
        }
        .await;
        let (machine, version) = match running {
            Ok(running) => running,
            Err(e) => {
                guest::remove_network(&self.network, &netns).await;
                return Err(e);
            }
        };
        tracing::debug!(
            sandbox_id = %id,
            restored = snapshot.is_some(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "VM started"
        );
        let vm = Arc::new(Vm {
            config: config.clone(),
            guest,
            net,
            machine: tokio::sync::Mutex::new(Some(machine)),
            cpu: Mutex::new((0, Instant::now())),
        });
        self.live().insert(id, vm.clone());
        Ok((vm, version))
    }

    fn instance(&self, vm: &Vm, version: Option<String>) -> Instance {
        let mut metadata = BTreeMap::new();
        metadata.insert("runtime".to_owned(), RUNTIME_NAME.to_owned());
        metadata.insert("accel".to_owned(), "kvm".to_owned());
        metadata.insert("netns".to_owned(), vm.net.netns.clone());
        if let Some(version) = version {
            metadata.insert("envd_version".to_owned(), version);
        }
        Instance {
            id: vm.config.id,
            envd: EnvdEndpoint::Tcp(SocketAddr::from((
                vm.net.sandbox_addr,
                wrenn_proto::ENVD_PORT,
            ))),
            host_ip: vm.net.sandbox_addr.to_string(),
            metadata,
        }
    }

    /// Saves a running VM into `dir`'s snapshot files and stops its VMM; a VM already
    /// paused is left as it is. On failure the VM runs on.
    async fn save(&self, vm: &Vm, dir: &Path) -> Result<(), RuntimeError> {
        let mut slot = vm.machine.lock().await;
        let Some(machine) = slot.take() else {
            return Ok(());
        };
        let id = vm.config.id;
        let started = Instant::now();
        match machine.save(&Snapshot::in_dir(dir)).await {
            Ok(saved) => {
                tracing::debug!(
                    sandbox_id = %id,
                    ?saved,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "memory saved"
                );
                Ok(())
            }
            Err((machine, e)) => {
                let err = self.machine_err(id, &e, &machine.console_tail());
                *slot = Some(machine);
                Err(err)
            }
        }
    }

    /// `text` with the host's paths (the data directory, the image store) replaced:
    /// it becomes a tenant-visible reason.
    fn redact(&self, text: String) -> String {
        let mut text = text;
        for (path, name) in [
            (self.layout.root(), "$WRENN_DIR"),
            (self.image.dir.as_path(), "$WRENN_IMAGES"),
        ] {
            let path = path.to_string_lossy();
            if !path.is_empty() && path != "/" {
                text = text.replace(path.as_ref(), name);
            }
        }
        text
    }

    /// Runtime error of a machine operation on `id`, with the console's last lines.
    fn machine_err(&self, id: SandboxId, e: &MachineError, console: &[String]) -> RuntimeError {
        RuntimeError::Other(self.redact(format!(
            "the VM of {id}: {}; console: {}",
            error_chain(e),
            tail(console)
        )))
    }

    /// Stops everything of `id` that runs: its VMM and its network.
    async fn stop_everything(&self, id: SandboxId) {
        let vm = self.live().remove(&id);
        if let Some(vm) = vm
            && let Some(machine) = vm.machine.lock().await.take()
            && let Err(e) = machine.stop().await
        {
            tracing::warn!(sandbox_id = %id, "stopping a VMM: {}", error_chain(&e));
        }
        let netns = Self::netns_name(id);
        if network::netns_path(&netns).exists() || self.network.serves_dns(&netns) {
            guest::remove_network(&self.network, &netns).await;
        }
    }
}

/// The last non-empty console lines, `|`-separated.
fn tail(lines: &[String]) -> String {
    let lines: Vec<&str> = lines
        .iter()
        .map(|l| l.trim_end())
        .filter(|l| !l.is_empty())
        .collect();
    let tail = &lines[lines.len().saturating_sub(CONSOLE_TAIL_LINES)..];
    if tail.is_empty() {
        "(empty)".to_owned()
    } else {
        tail.join(" | ")
    }
}

/// Waits until envd at `addr` answers `Health`, or the VMM exits, or `timeout`.
async fn wait_for_envd(
    machine: &mut Machine,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(exit) = machine.exited() {
            return Err(format!("Firecracker exited ({exit})"));
        }
        let last = match health(addr).await {
            Ok(version) => return Ok(version),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(format!("envd did not answer within {timeout:?} ({last})"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether KVM boots the image's kernel under Firecracker here: the answer kept in
/// `vm/firecracker-kvm-{image}`, else [`kvm_boots`]'s (then kept).
async fn probed_kvm(
    firecracker: &Path,
    kernel: &Path,
    image: &BuiltImage,
    vm: &Path,
) -> Result<(), String> {
    let cache = vm.join(format!(
        "firecracker-kvm-{}",
        guest::short(&image.manifest.hash)
    ));
    if let Ok(known) = std::fs::read_to_string(&cache) {
        return match known.trim() {
            "ok" => Ok(()),
            why => Err(why.to_owned()),
        };
    }
    let answer = kvm_boots(firecracker, kernel, vm).await;
    let _ = std::fs::write(&cache, answer.as_ref().err().map_or("ok", String::as_str));
    answer
}

/// Boots `kernel` alone (no disk, no network) under Firecracker and waits up to
/// [`PROBE_TIMEOUT`] for its banner on the console. `Err` says what happened instead.
pub async fn kvm_boots(firecracker: &Path, kernel: &Path, scratch: &Path) -> Result<(), String> {
    let id = format!("kvm-probe-{}", std::process::id());
    let socket = scratch.join(format!("{id}.sock"));
    let launcher = Launcher::Direct {
        firecracker: firecracker.to_owned(),
        netns: None,
    };
    let vmm = Vmm::start(&launcher, &VmmOptions::new(id, socket))
        .await
        .map_err(|e| error_chain(&e))?;
    let configured = async {
        let client = vmm.client();
        client
            .put_machine_config(&MachineConfiguration {
                vcpu_count: 1,
                mem_size_mib: 128,
                smt: false,
                track_dirty_pages: false,
                huge_pages: None,
            })
            .await?;
        client
            .put_boot_source(&BootSource {
                kernel_image_path: kernel.to_owned(),
                boot_args: Some("console=ttyS0 reboot=k panic=-1 pci=off".into()),
                initrd_path: None,
            })
            .await?;
        client.start_instance().await
    }
    .await;
    let answer = match configured {
        Err(e) => Err(format!("starting a guest: {}", error_chain(&e))),
        Ok(()) => {
            let deadline = Instant::now() + PROBE_TIMEOUT;
            loop {
                if vmm
                    .output_tail()
                    .iter()
                    .any(|l| l.contains("Linux version"))
                {
                    break Ok(());
                }
                if Instant::now() >= deadline {
                    break Err(format!(
                        "a guest kernel printed nothing within {PROBE_TIMEOUT:?}"
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let _ = vmm.stop().await;
    answer
}

/// A saved capsule's files: its disk and snapshot.
const SAVED_FILES: &[&str] = &[DISK_FILE, machine::STATE_FILE, machine::MEMORY_FILE];

#[async_trait::async_trait]
impl Runtime for FirecrackerRuntime {
    fn name(&self) -> &'static str {
        RUNTIME_NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            memory_snapshots: true,
            hibernate: true,
            templates_keep_processes: true,
        }
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %config.id))]
    async fn create(&self, config: &SandboxConfig) -> Result<Instance, RuntimeError> {
        self.validate(config)?;
        super::super::ensure_free(
            &self.layout,
            config.id,
            self.live().contains_key(&config.id),
            false,
        )?;
        let mut config = config.clone();
        // A template's memory fixes the machine; its files are the disk's source.
        let (base, template) = if config.template_id == BUILTIN_TEMPLATE_ID {
            (self.image.ext4(), None)
        } else {
            let dir = self
                .layout
                .template_dir(config.template_team_id, config.template_id);
            let manifest = read_template(&dir, TEMPLATE_FORMAT)?
                .ok_or(RuntimeError::TemplateNotFound(config.template_id))?;
            if !manifest.guest.present() {
                return Err(RuntimeError::FailedPrecondition(format!(
                    "template {} was made with guest files this host no longer has",
                    config.template_id
                )));
            }
            config.vcpus = manifest.vcpus;
            config.memory_mb = manifest.memory_mb;
            config.disk_size_mb = manifest.disk_size_mb;
            (dir.join(DISK_FILE), Some((dir, manifest.guest)))
        };
        let dir = self.make_dir(config.id)?;
        let (from, to, size) = (base, dir.join(DISK_FILE), u64::from(config.disk_size_mb));
        let copied = blocking(move || vmdisk::create_raw_copy(&from, &to, size))
            .await
            .and_then(|r| {
                r.map_err(|e| match e {
                    vmdisk::DiskError::TooSmall { .. } => {
                        RuntimeError::FailedPrecondition(error_chain(&e))
                    }
                    e => RuntimeError::Other(format!(
                        "the disk of {}: {}",
                        config.id,
                        error_chain(&e)
                    )),
                })
            });
        let started = match copied {
            Err(e) => Err(e),
            Ok(()) => {
                let (guest, snapshot) = match template {
                    Some((dir, guest)) => (guest, Some(Snapshot::in_dir(&dir))),
                    None => (self.guest.clone(), None),
                };
                match self.start_vm(&config, guest, snapshot).await {
                    Ok((vm, version)) => {
                        let instance = self.instance(&vm, Some(version));
                        // A new capsule's envd holds no token yet: name the guest.
                        match name_guest(&instance).await {
                            Ok(()) => Ok(instance),
                            Err(e) => {
                                self.stop_everything(config.id).await;
                                Err(e)
                            }
                        }
                    }
                    Err(e) => Err(e),
                }
            }
        };
        if started.is_err() {
            let _ = remove_tree(&dir).await;
        }
        started
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %instance.id))]
    async fn pause(&self, instance: &Instance) -> Result<(), RuntimeError> {
        let vm = self.get(instance.id)?;
        self.save(&vm, &self.layout.sandbox_dir(instance.id)).await
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %instance.id))]
    async fn resume(&self, instance: &Instance) -> Result<(), RuntimeError> {
        let id = instance.id;
        let vm = self.get(id)?;
        let mut slot = vm.machine.lock().await;
        if slot.is_some() {
            return Ok(());
        }
        let dir = self.layout.sandbox_dir(id);
        let spec = self.machine_spec(&vm.config, &vm.guest);
        let machine = Machine::load(&spec, &Snapshot::in_dir(&dir), self.options.load_backend)
            .await
            .map_err(|e| self.machine_err(id, &e, &[]))?;
        *slot = Some(machine);
        // The memory file stays: the next pause merges what the guest wrote onto it.
        let _ = std::fs::remove_file(dir.join(machine::STATE_FILE));
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %instance.id))]
    async fn hibernate(&self, instance: &Instance) -> Result<(), RuntimeError> {
        let id = instance.id;
        let vm = self.get(id)?;
        let dir = self.layout.sandbox_dir(id);
        self.save(&vm, &dir).await?;
        self.live().remove(&id);
        guest::remove_network(&self.network, &vm.net.netns).await;
        let snapshot = self.layout.snapshot_dir(id);
        let record = HibernationRecord {
            config: ConfigRecord::from(&vm.config),
            hibernated_at: chrono::Utc::now().to_rfc3339(),
            image: Some(self.image.reference()),
        };
        persist_hibernated(
            id,
            (dir.clone(), snapshot),
            (SAVED_FILES, SAVED_FILES),
            &vm.guest,
            record,
        )
        .await?;
        remove_tree(&dir).await
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %config.id))]
    async fn restore(&self, config: &SandboxConfig) -> Result<Instance, RuntimeError> {
        let id = config.id;
        let snapshot = self.layout.snapshot_dir(id);
        let record = read_record(&snapshot)?.ok_or(RuntimeError::NotFound(id))?;
        self.validate(config)?;
        super::super::ensure_free(&self.layout, id, self.live().contains_key(&id), true)?;
        let saved: SandboxConfig = record.config.into();
        let guest = hibernated_guest(id, &snapshot)?;
        let mut config = config.clone();
        // The machine is the one whose memory was saved.
        config.vcpus = saved.vcpus;
        config.memory_mb = saved.memory_mb;
        config.disk_size_mb = saved.disk_size_mb;
        config.template_team_id = saved.template_team_id;
        config.template_id = saved.template_id;
        let dir = self.make_dir(id)?;
        let moved: Vec<&str> = SAVED_FILES
            .iter()
            .copied()
            .filter(|f| std::fs::rename(snapshot.join(f), dir.join(f)).is_ok())
            .collect();
        match self
            .start_vm(&config, guest, Some(Snapshot::in_dir(&dir)))
            .await
        {
            Ok((vm, version)) => {
                let _ = std::fs::remove_file(dir.join(machine::STATE_FILE));
                remove_tree(&snapshot).await?;
                Ok(self.instance(&vm, Some(version)))
            }
            Err(e) => {
                // The files go back for inspection (and another try).
                for file in moved {
                    if let Err(back) = std::fs::rename(dir.join(file), snapshot.join(file)) {
                        tracing::error!(sandbox_id = %id, "cannot move {file} back: {}", error_chain(&back));
                    }
                }
                let _ = remove_tree(&dir).await;
                Err(e)
            }
        }
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %id))]
    async fn destroy(&self, id: SandboxId) -> Result<(), RuntimeError> {
        self.stop_everything(id).await;
        remove_tree(&self.layout.sandbox_dir(id)).await?;
        remove_tree(&self.layout.snapshot_dir(id)).await
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %instance.id))]
    async fn snapshot(
        &self,
        instance: &Instance,
        team: TeamId,
        template: TemplateId,
    ) -> Result<u64, RuntimeError> {
        let id = instance.id;
        if template == BUILTIN_TEMPLATE_ID {
            return Err(RuntimeError::FailedPrecondition(
                "the built-in template cannot be overwritten".into(),
            ));
        }
        let vm = self.get(id)?;
        if vm.machine.lock().await.is_some() {
            return Err(RuntimeError::FailedPrecondition(format!(
                "sandbox {id} must be paused for a snapshot"
            )));
        }
        let manifest = TemplateManifest::of(TEMPLATE_FORMAT, &vm.config, &vm.guest);
        write_template(
            self.layout.sandbox_dir(id),
            SAVED_FILES,
            manifest,
            self.layout.template_dir(team, template),
            template,
        )
        .await
    }

    async fn stats(&self, instance: &Instance) -> Result<Stats, RuntimeError> {
        let vm = self.get(instance.id)?;
        let pid = vm.machine.lock().await.as_ref().map(Machine::pid);
        let disk = self.layout.sandbox_dir(instance.id).join(DISK_FILE);
        usage(instance.id, pid, &disk, &vm.cpu)
    }

    async fn wait_exit(&self, instance: &Instance) -> Result<String, RuntimeError> {
        let id = instance.id;
        loop {
            let vm = self.get(id)?;
            {
                let mut slot = vm.machine.lock().await;
                if let Some(machine) = slot.as_mut()
                    && let Some(exit) = machine.exited()
                {
                    let console = machine.console_tail();
                    slot.take();
                    return Ok(self.redact(format!(
                        "Firecracker exited ({exit}); console: {}",
                        tail(&console)
                    )));
                }
            }
            drop(vm);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn hibernated(&self) -> Result<Vec<SandboxConfig>, RuntimeError> {
        super::super::hibernated_configs(&self.layout)
    }

    async fn sweep(&self, keep: &[SandboxId]) -> Result<Vec<SandboxId>, RuntimeError> {
        let ids = super::super::sandboxes_on_disk(&self.layout, keep)?;
        for id in &ids {
            self.stop_everything(*id).await;
            remove_tree(&self.layout.sandbox_dir(*id)).await?;
        }
        if let Some(jail) = &self.jail {
            // Jailed VMMs outlive an agent: those of capsules this one does not run go.
            for name in jail.jails() {
                let running = name
                    .parse::<SandboxId>()
                    .is_ok_and(|id| self.live().contains_key(&id));
                if !running {
                    tracing::info!(jail = %name, "removing an orphaned Firecracker jail");
                    jail.kill_and_cleanup(&name)
                        .await
                        .map_err(|e| RuntimeError::Other(error_chain(&e)))?;
                }
            }
        }
        Ok(ids)
    }
}

impl Drop for FirecrackerRuntime {
    fn drop(&mut self) {
        // VMMs are children with `kill_on_drop`; dropping the machines kills them.
        // Networks stay for the next start's sweep.
        self.live().clear();
    }
}

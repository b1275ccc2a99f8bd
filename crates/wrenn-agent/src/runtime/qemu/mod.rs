//! The QEMU runtime: every capsule is a virtual machine (`microvm`, KVM where it
//! boots guests, else TCG), built on the shared [VM layer](super::vm).
//!
//! # A capsule
//!
//! - **Kernel and initramfs**: the default image build's `vmlinuz` and modules; the
//!   initramfs ([`super::vm::guest`]) carries busybox and the virtio modules, envd
//!   its own read-only disk; both are made once per content in `vm/`.
//! - **Root disk**: `sandboxes/{id}/disk.qcow2`, a qcow2 overlay as large as
//!   `disk_size_mb` over the image's `rootfs.ext4` (or over a template's disk); the
//!   guest grows its file system to it at boot.
//! - **Network**: the same capsule network as the process runtime (namespace
//!   `wrenn-{id}`, veth, firewall, DNS forwarder) plus the TAP device and NAT of
//!   [`crate::network::tap`]: every guest is `169.254.0.21` behind its capsule's
//!   address, so a memory snapshot restores into any capsule. QEMU runs inside the
//!   namespace.
//! - **envd** is the guest's PID 1 (`--listen 0.0.0.0:49983 --set-clock`), reached at
//!   `{capsule address}:49983` ([`EnvdEndpoint::Tcp`]) with the capsule's token.
//! - **Console**: `sandboxes/{id}/serial.log`; its tail is the reason given when a
//!   guest fails to start.
//!
//! # Memory snapshots
//!
//! - **pause** writes memory and device state to `sandboxes/{id}/memory`
//!   ([`Machine::save`]) and QEMU exits: a paused capsule holds no memory. **resume**
//!   starts a new QEMU that loads it: processes, tmpfs and open sockets inside go on.
//!   A save that fails leaves the capsule running.
//! - **hibernate** is a pause whose files move to `snapshots/{id}/` with a record; the
//!   network goes. Hibernated capsules survive agent restarts; **restore** brings them
//!   back in a new network namespace (the guest's address does not change).
//! - **snapshot** (templates) copies the paused capsule's memory and disk into the
//!   template's directory: a capsule created from it *resumes* the template's
//!   processes (a server started before the snapshot answers at once).
//! - **create** of the built-in template restores a *warm* snapshot — a guest booted
//!   once per image, envd, accelerator and shape (vCPUs, memory, disk), kept in
//!   `vm/warm/` — instead of booting; the first create of a shape makes it.
//!
//! Running VMs do not outlive the agent (QEMU gets `SIGKILL` when it exits); the
//! start-up [`sweep`](Runtime::sweep) removes what a crash left.
//!
//! # Toward KVM hosts: create ≤ 150 ms, resume ≤ 50 ms
//!
//! Under TCG on the machines this is developed on, a resume takes about 0.4 s and a
//! create from the warm snapshot about 0.9 s. The time goes to starting QEMU, reading
//! the whole migration stream into fresh guest memory, and the guest's first
//! instructions. On a KVM host the last is fast; the first two have known cuts:
//!
//! - **Map the memory instead of copying it.** Keep the guest's RAM in a
//!   `memory-backend-file` over the snapshot's memory file, mapped copy-on-write
//!   (`share=off`), or save with QEMU's `mapped-ram` migration capability (QEMU 9.0
//!   and later). Pages then come in as the guest touches them, so a restore no longer
//!   grows with the memory size. The Firecracker runtime in this crate already does
//!   this with its UFFD page-fault handler.
//! - **Start QEMU ahead of time.** Keep a few QEMU processes per shape waiting with
//!   `-incoming defer`, as the process runtime keeps warm capsules. That takes QEMU's
//!   own start off the create and resume paths.
//!
//! What is left on KVM is loading the device state and the first page faults: tens of
//! milliseconds.

pub mod machine;
mod source;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wrenn_core::id::{BUILTIN_TEMPLATE_ID, SandboxId, TeamId, TemplateId};
use wrenn_core::layout::Layout;

use self::machine::{Machine, MachineError, MachineSpec};
use self::source::{Shape, Source};
use super::process::template::{ConfigRecord, HibernationRecord, read_record};
use super::vm::accel::{self, Accel};
use super::vm::capsule::{
    TemplateManifest, hibernated_guest, persist_hibernated, usage, write_template,
};
pub use super::vm::guest::GuestFiles;
use super::vm::guest::{health, name_guest, remove_tree, vm_dir};
use super::vm::{disk as vmdisk, guest};
use super::{
    Capabilities, EnvdEndpoint, Instance, Runtime, RuntimeError, SandboxConfig, Stats, blocking,
    error_chain, io_err,
};
use crate::image::BuiltImage;
use crate::network::{self, Network, NetworkOptions, SandboxNet, tap};

/// The value of [`Runtime::name`] and of the `runtime` metadata key.
pub const RUNTIME_NAME: &str = "qemu";
/// The root disk in a capsule's, snapshot's or template's directory.
pub const DISK_FILE: &str = "disk.qcow2";
/// The memory snapshot next to it.
pub const MEMORY_FILE: &str = "memory";
/// The serial console log.
pub const SERIAL_LOG: &str = "serial.log";
/// `format` of a template's manifest
/// ([`TEMPLATE_FILE`](super::vm::capsule::TEMPLATE_FILE)).
pub const TEMPLATE_FORMAT: &str = "wrenn-qemu-template/1";
/// What a hibernated capsule keeps besides its guest files and record.
const SAVED_FILES: &[&str] = &[DISK_FILE, MEMORY_FILE, SERIAL_LOG];
/// What a template keeps besides its manifest.
const TEMPLATE_FILES: &[&str] = &[DISK_FILE, MEMORY_FILE];
const QMP_SOCKET: &str = "qmp.sock";
const PID_FILE: &str = "qemu.pid";
/// Lines of the console reported when a guest fails.
const CONSOLE_TAIL_LINES: usize = 15;

/// Options of the QEMU runtime.
#[derive(Debug, Clone)]
pub struct QemuRuntimeOptions {
    /// Capsule networking (as the process runtime's).
    pub network: NetworkOptions,
    /// The default image build: kernel, modules, busybox and root file system.
    /// Required.
    pub image: Option<BuiltImage>,
    /// `qemu-system-x86_64` (default: found on `PATH`).
    pub qemu: Option<PathBuf>,
    /// `qemu-img` (default: found on `PATH`).
    pub qemu_img: Option<PathBuf>,
    /// The accelerator; `None` (default) probes once whether KVM boots a guest
    /// ([`accel::kvm_boots`]) and falls back to TCG, saying so.
    pub accel: Option<Accel>,
    /// Address-space randomisation in the guests; `None` (default): on under KVM,
    /// off under TCG (see [`VmGuestAslr`](wrenn_core::config::VmGuestAslr)).
    pub guest_aslr: Option<bool>,
    /// How long a booting guest's envd may take to answer (default 120 s: TCG on a
    /// busy host).
    pub boot_timeout: Duration,
    /// How long a restored guest's envd may take to answer (default 30 s).
    pub resume_timeout: Duration,
    /// Keep warm snapshots for creates of the built-in template (default true).
    pub warm_snapshots: bool,
    /// The shape whose warm snapshot [`Runtime::start_background`] makes ahead of the
    /// first create: `(vcpus, memory_mb, disk_size_mb)`, default the control plane's
    /// defaults (1, 512, 20480).
    pub warm_shape: (u32, u32, u32),
}

impl Default for QemuRuntimeOptions {
    fn default() -> Self {
        use crate::service::{DEFAULT_DISK_MB, DEFAULT_MEMORY_MB, DEFAULT_VCPUS};
        Self {
            network: NetworkOptions::default(),
            image: None,
            qemu: None,
            qemu_img: None,
            accel: None,
            guest_aslr: None,
            boot_timeout: Duration::from_secs(120),
            resume_timeout: Duration::from_secs(30),
            warm_snapshots: true,
            warm_shape: (DEFAULT_VCPUS, DEFAULT_MEMORY_MB, DEFAULT_DISK_MB),
        }
    }
}

impl QemuRuntimeOptions {
    /// The options an agent configured by `config` runs with on `image`.
    pub fn from_config(config: &wrenn_core::config::AgentConfig, image: BuiltImage) -> Self {
        use wrenn_core::config::{VmAccel, VmGuestAslr};
        Self {
            image: Some(image),
            qemu: config.qemu_bin.clone(),
            accel: match config.vm_accel {
                VmAccel::Auto => None,
                VmAccel::Kvm => Some(Accel::Kvm),
                VmAccel::Tcg => Some(Accel::Tcg),
            },
            guest_aslr: match config.vm_guest_aslr {
                VmGuestAslr::Auto => None,
                VmGuestAslr::On => Some(true),
                VmGuestAslr::Off => Some(false),
            },
            network: NetworkOptions::from_config(config),
            ..Self::default()
        }
    }
}

/// A capsule's VM as the runtime tracks it.
#[derive(Debug)]
struct Vm {
    config: SandboxConfig,
    guest: GuestFiles,
    net: SandboxNet,
    /// `None` while paused (its memory is in `sandboxes/{id}/memory`).
    machine: tokio::sync::Mutex<Option<Machine>>,
    /// CPU time and when it was read, for [`Stats::cpu_pct`].
    cpu: Mutex<(u64, Instant)>,
}

/// The QEMU runtime. See the [module docs](self).
#[derive(Debug)]
pub struct QemuRuntime {
    layout: Layout,
    options: QemuRuntimeOptions,
    network: Arc<Network>,
    image: BuiltImage,
    kernel: PathBuf,
    /// The initramfs and envd disk new guests boot with.
    guest: GuestFiles,
    /// Identifies the guest (image, initramfs with envd, accelerator, CPU model,
    /// address-space randomisation) in warm
    /// snapshot keys.
    guest_key: String,
    qemu: PathBuf,
    qemu_img: PathBuf,
    accel: Accel,
    /// Kernel arguments this host decides: the guest clock's under TCG, and
    /// `norandmaps` when guests run without address-space randomisation.
    host_args: String,
    live: Mutex<HashMap<SandboxId, Arc<Vm>>>,
    /// Serialises making warm snapshots.
    warming: tokio::sync::Mutex<()>,
}

impl QemuRuntime {
    /// Prepares the runtime: finds QEMU, builds the initramfs with `envd` (the guest
    /// agent binary) in `vm/`, decides the accelerator and sets up the host's capsule
    /// network. Fails with [`RuntimeError::Unsupported`] when something is missing.
    pub async fn new(
        layout: Layout,
        envd: PathBuf,
        options: QemuRuntimeOptions,
    ) -> Result<Self, RuntimeError> {
        let image = options.image.clone().ok_or_else(|| {
            RuntimeError::Unsupported("the QEMU runtime needs the default image".into())
        })?;
        let kernel = image.vmlinuz().ok_or_else(|| {
            RuntimeError::Unsupported("the image build has no kernel (vmlinuz)".into())
        })?;
        let qemu = find_tool(
            options.qemu.clone(),
            "qemu-system-x86_64",
            "qemu-system-x86",
        )?;
        let qemu_img = find_tool(options.qemu_img.clone(), "qemu-img", "qemu-utils")?;
        for dir in [
            layout.sandboxes_dir(),
            layout.snapshots_dir(),
            vm_dir(&layout),
        ] {
            std::fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        }
        let vm = vm_dir(&layout);
        let (kernel_probe, qemu_probe, chosen) = (kernel.clone(), qemu.clone(), options.accel);
        let (envd_bin, built) = (envd.clone(), image.clone());
        let (guest, guest_key, accel) = blocking(move || {
            let (guest, key) = guest::prepare(&vm, &envd_bin, &built)?;
            let accel = match chosen {
                Some(accel) => accel,
                None => probed_accel(&qemu_probe, &kernel_probe, &built.manifest.hash, &vm),
            };
            let guest = GuestFiles {
                cpu: Some(accel.cpu().to_owned()),
                ..guest
            };
            Ok::<_, RuntimeError>((guest, format!("{key}-{accel}-{}", accel.cpu_name()), accel))
        })
        .await??;
        let aslr = options.guest_aslr.unwrap_or(accel == Accel::Kvm);
        if !aslr {
            tracing::info!(
                %accel,
                "guests run without address-space randomisation (WRENN_VM_GUEST_ASLR=on turns it \
                 on; under TCG each exec then translates its libraries again, about 5x slower)"
            );
        }
        let guest_key = if aslr {
            guest_key
        } else {
            format!("{guest_key}-norandmaps")
        };
        let mut host_args = accel::guest_clock_args(accel);
        if !aslr {
            host_args.push_str(" norandmaps");
        }
        let network = Network::new(options.network.clone())
            .await
            .map_err(|e| RuntimeError::Unsupported(error_chain(&e)))?;
        tracing::info!(%accel, qemu = %qemu.display(), "QEMU runtime ready");
        Ok(Self {
            layout,
            options,
            network: Arc::new(network),
            image,
            kernel,
            guest,
            guest_key,
            qemu,
            qemu_img,
            accel,
            host_args,
            live: Mutex::new(HashMap::new()),
            warming: tokio::sync::Mutex::new(()),
        })
    }

    /// The accelerator guests run under.
    pub fn accel(&self) -> Accel {
        self.accel
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
    fn cmdline(&self) -> String {
        format!(
            "console=ttyS0 panic=-1 pci=off quiet loglevel=4 {host} wrenn.root=/dev/vda wrenn.grow=1 \
             wrenn.net={guest}/{prefix},{gateway} \
             wrenn.init=/run/wrenn/wrenn-envd,--listen,0.0.0.0:{port},--set-clock",
            host = self.host_args,
            guest = tap::GUEST_ADDR,
            prefix = tap::TAP_PREFIX,
            gateway = tap::TAP_ADDR,
            port = wrenn_proto::ENVD_PORT,
        )
    }

    /// The machine of a VM whose files are in `dir`, running `guest`.
    fn machine_spec(
        &self,
        dir: &Path,
        guest: &GuestFiles,
        shape: Shape,
        netns: Option<&str>,
    ) -> MachineSpec {
        MachineSpec {
            qemu: self.qemu.clone(),
            accel: self.accel,
            cpu: guest
                .cpu
                .clone()
                .unwrap_or_else(|| self.accel.former_cpu().to_owned()),
            kernel: self.kernel.clone(),
            initrd: guest.initrd.clone(),
            cmdline: self.cmdline(),
            disk: dir.join(DISK_FILE),
            envd_disk: Some(guest.envd_disk.clone()),
            vcpus: shape.vcpus,
            memory_mb: shape.memory_mb,
            netns: netns.map(network::netns_path),
            serial_log: dir.join(SERIAL_LOG),
            qmp_socket: dir.join(QMP_SOCKET),
            pid_file: dir.join(PID_FILE),
        }
    }

    fn validate(config: &SandboxConfig) -> Result<(), RuntimeError> {
        if config.vcpus == 0 || config.vcpus > 64 {
            return Err(RuntimeError::FailedPrecondition(format!(
                "vcpus must be 1 to 64 (got {})",
                config.vcpus
            )));
        }
        if config.memory_mb < 128 {
            return Err(RuntimeError::FailedPrecondition(format!(
                "a VM needs at least 128 MiB of memory (got {})",
                config.memory_mb
            )));
        }
        Ok(())
    }

    fn ensure_free(&self, id: SandboxId, allow_hibernated: bool) -> Result<(), RuntimeError> {
        let running = self.live().contains_key(&id);
        super::ensure_free(&self.layout, id, running, allow_hibernated)
    }

    fn make_dir(&self, id: SandboxId) -> Result<PathBuf, RuntimeError> {
        let dir = self.layout.sandbox_dir(id);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(io_err(format!("create {}", dir.display())))?;
        Ok(dir)
    }

    /// Starts capsule `config.id`'s VM from `source` in a new network (its directory
    /// exists) and waits for envd; tracks it. On failure nothing of it runs and its
    /// network is gone (the directory stays for the caller).
    async fn start_vm(
        &self,
        config: &SandboxConfig,
        source: Source,
        shape: Shape,
    ) -> Result<(Arc<Vm>, String), RuntimeError> {
        let id = config.id;
        let dir = self.layout.sandbox_dir(id);
        let disk = dir.join(DISK_FILE);
        let qemu_img = self.qemu_img.clone();
        let (memory, overlay, guest) = match source {
            Source::Boot {
                backing,
                backing_format,
            } => (None, Some((backing, backing_format)), self.guest.clone()),
            Source::Restore {
                disk,
                memory,
                guest,
            } => (Some(memory), disk.map(|d| (d, "qcow2")), guest),
        };
        if let Some((backing, format)) = overlay {
            let size = shape.disk_size_mb;
            let d = disk.clone();
            blocking(move || {
                vmdisk::create_overlay(&qemu_img, &backing, format, &d, u64::from(size))
            })
            .await?
            .map_err(|e| match e {
                vmdisk::DiskError::TooSmall { .. } => {
                    RuntimeError::FailedPrecondition(error_chain(&e))
                }
                e => RuntimeError::Other(format!("the disk of {id}: {}", error_chain(&e))),
            })?;
        }
        let netns = Self::netns_name(id);
        let net = self.add_network(id, &netns).await?;
        let spec = self.machine_spec(&dir, &guest, shape, Some(&netns));
        let envd_addr = SocketAddr::from((net.sandbox_addr, wrenn_proto::ENVD_PORT));
        let started = Instant::now();
        let running = async {
            let mut machine = Machine::start(&spec, memory.is_some())
                .await
                .map_err(|e| self.machine_err(id, &dir, e))?;
            let timeout = match &memory {
                Some(memory) => {
                    let loaded = async {
                        machine.load(memory).await?;
                        machine.cont().await
                    }
                    .await;
                    if let Err(e) = loaded {
                        machine.kill().await;
                        return Err(self.machine_err(id, &dir, e));
                    }
                    self.options.resume_timeout
                }
                None => self.options.boot_timeout,
            };
            match wait_for_envd(&mut machine, envd_addr, timeout).await {
                Ok(version) => Ok((machine, version)),
                Err(why) => {
                    machine.kill().await;
                    Err(RuntimeError::Other(format!(
                        "the VM of {id} did not start: {why}; console: {}",
                        console_tail(&dir)
                    )))
                }
            }
        }
        .await;
        let (machine, version) = match running {
            Ok(running) => running,
            Err(e) => {
                self.remove_network(&netns).await;
                return Err(e);
            }
        };
        tracing::debug!(
            sandbox_id = %id,
            restored = memory.is_some(),
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

    async fn add_network(&self, id: SandboxId, netns: &str) -> Result<SandboxNet, RuntimeError> {
        guest::add_network(&self.network, id, netns, None).await
    }

    async fn remove_network(&self, netns: &str) {
        guest::remove_network(&self.network, netns).await;
    }

    fn machine_err(&self, id: SandboxId, dir: &Path, e: MachineError) -> RuntimeError {
        RuntimeError::Other(format!(
            "the VM of {id}: {}; console: {}",
            error_chain(&e),
            console_tail(dir)
        ))
    }

    fn instance(&self, vm: &Vm, version: Option<String>) -> Instance {
        let mut metadata = BTreeMap::new();
        metadata.insert("runtime".to_owned(), RUNTIME_NAME.to_owned());
        metadata.insert("accel".to_owned(), self.accel.to_string());
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

    /// Saves a running VM's memory into `dir` and stops its QEMU; a VM already paused
    /// is left as it is. On failure the VM runs on.
    async fn save_and_quit(&self, vm: &Vm, dir: &Path) -> Result<(), RuntimeError> {
        let mut slot = vm.machine.lock().await;
        let Some(mut machine) = slot.take() else {
            return Ok(());
        };
        let id = vm.config.id;
        let started = Instant::now();
        match machine.save(&dir.join(MEMORY_FILE)).await {
            Ok(()) => {
                machine.quit().await;
                tracing::debug!(
                    sandbox_id = %id,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "memory saved"
                );
                Ok(())
            }
            Err(e) => {
                let err = self.machine_err(id, dir, e);
                if machine.exited().is_none() {
                    if let Err(ce) = machine.cont().await {
                        tracing::warn!(sandbox_id = %id, "continuing after a failed save: {}", error_chain(&ce));
                    }
                    *slot = Some(machine);
                }
                Err(err)
            }
        }
    }

    /// Stops everything of `id` that runs or is mounted: its QEMU (also one found only
    /// by its pid file) and its network.
    async fn stop_everything(&self, id: SandboxId) {
        let vm = self.live().remove(&id);
        if let Some(vm) = vm
            && let Some(machine) = vm.machine.lock().await.take()
        {
            machine.kill().await;
        }
        let pid_file = self.layout.sandbox_dir(id).join(PID_FILE);
        let dir = self.layout.sandbox_dir(id);
        let _ = blocking(move || kill_recorded_qemu(&pid_file, &dir)).await;
        let netns = Self::netns_name(id);
        if network::netns_path(&netns).exists() || self.network.serves_dns(&netns) {
            self.remove_network(&netns).await;
        }
    }
}

/// `explicit`, else `name` on `PATH`; `package` names the Debian package in the error.
fn find_tool(
    explicit: Option<PathBuf>,
    name: &str,
    package: &str,
) -> Result<PathBuf, RuntimeError> {
    if let Some(path) = explicit {
        return Ok(path);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            RuntimeError::Unsupported(format!(
                "{name} is not installed (Debian: apt-get install {package})"
            ))
        })
}

/// The last lines of a VM's console, for error messages.
fn console_tail(dir: &Path) -> String {
    let raw = std::fs::read(dir.join(SERIAL_LOG)).unwrap_or_default();
    let text = String::from_utf8_lossy(&raw);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    let tail = &lines[lines.len().saturating_sub(CONSOLE_TAIL_LINES)..];
    if tail.is_empty() {
        "(empty)".to_owned()
    } else {
        tail.join(" | ")
    }
}

/// Waits until envd at `addr` answers `Health`, or the machine exits, or `timeout`.
async fn wait_for_envd(
    machine: &mut Machine,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(exit) = machine.exited() {
            return Err(format!("QEMU exited ({exit})"));
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

/// Kills the QEMU whose pid `pid_file` records if it still runs with a command line
/// naming `dir` (a pid reused by another process is left alone).
fn kill_recorded_qemu(pid_file: &Path, dir: &Path) {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return;
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let needle = dir.display().to_string();
    if !String::from_utf8_lossy(&cmdline).contains(&needle) {
        return;
    }
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Path::new(&format!("/proc/{}", pid.as_raw_nonzero())).exists()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// KVM if it boots the image's kernel on this host, else TCG (saying so). The answer
/// is kept in `vm/accel-{image}` so that the probe runs once per host and image.
fn probed_accel(qemu: &Path, kernel: &Path, image_hash: &str, vm: &Path) -> Accel {
    let short: String = image_hash.chars().take(16).collect();
    let cache = vm.join(format!("accel-{short}"));
    let known = std::fs::read_to_string(&cache)
        .ok()
        .and_then(|s| serde_json::from_str::<Accel>(s.trim()).ok());
    let accel = match known {
        Some(accel) => accel,
        None => {
            let accel = if accel::kvm_boots(qemu, kernel, vm) {
                Accel::Kvm
            } else {
                Accel::Tcg
            };
            if let Ok(json) = serde_json::to_string(&accel) {
                let _ = std::fs::write(&cache, json);
            }
            accel
        }
    };
    if accel == Accel::Tcg {
        tracing::warn!(
            "KVM cannot boot guests on this host: capsules run under TCG (emulated, much slower)"
        );
    }
    accel
}

#[async_trait::async_trait]
impl Runtime for QemuRuntime {
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
        Self::validate(config)?;
        self.ensure_free(config.id, false)?;
        let (source, shape) = self.source_for(config).await?;
        let dir = self.make_dir(config.id)?;
        let started = match self.start_vm(config, source, shape).await {
            Ok((vm, version)) => {
                let instance = self.instance(&vm, Some(version));
                // A new capsule's envd holds no token yet: name the guest after it.
                match name_guest(&instance).await {
                    Ok(()) => Ok(instance),
                    Err(e) => {
                        self.stop_everything(config.id).await;
                        Err(e)
                    }
                }
            }
            Err(e) => Err(e),
        };
        if started.is_err() {
            let _ = remove_tree(&dir).await;
        }
        started
    }

    fn start_background(self: Arc<Self>) {
        if !self.options.warm_snapshots {
            return;
        }
        let (vcpus, memory_mb, disk_size_mb) = self.options.warm_shape;
        let runtime = Arc::downgrade(&self);
        tokio::spawn(async move {
            let Some(rt) = runtime.upgrade() else {
                return;
            };
            let shape = Shape {
                vcpus,
                memory_mb,
                disk_size_mb,
            };
            if let Err(e) = rt.warm_snapshot(shape).await {
                tracing::warn!("making the warm snapshot: {}", error_chain(&e));
            }
        });
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %instance.id))]
    async fn pause(&self, instance: &Instance) -> Result<(), RuntimeError> {
        let vm = self.get(instance.id)?;
        self.save_and_quit(&vm, &self.layout.sandbox_dir(instance.id))
            .await
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
        let memory = dir.join(MEMORY_FILE);
        let spec = self.machine_spec(&dir, &vm.guest, Shape::of(&vm.config), Some(&vm.net.netns));
        let mut machine = Machine::start(&spec, true)
            .await
            .map_err(|e| self.machine_err(id, &dir, e))?;
        let loaded = async {
            machine.load(&memory).await?;
            machine.cont().await
        }
        .await;
        if let Err(e) = loaded {
            machine.kill().await;
            return Err(self.machine_err(id, &dir, e));
        }
        *slot = Some(machine);
        let _ = std::fs::remove_file(&memory);
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %instance.id))]
    async fn hibernate(&self, instance: &Instance) -> Result<(), RuntimeError> {
        let id = instance.id;
        let vm = self.get(id)?;
        let dir = self.layout.sandbox_dir(id);
        self.save_and_quit(&vm, &dir).await?;
        self.live().remove(&id);
        self.remove_network(&vm.net.netns).await;
        let snapshot = self.layout.snapshot_dir(id);
        let record = HibernationRecord {
            config: ConfigRecord::from(&vm.config),
            hibernated_at: chrono::Utc::now().to_rfc3339(),
            image: Some(self.image.reference()),
        };
        persist_hibernated(
            id,
            (dir.clone(), snapshot),
            (SAVED_FILES, &[]),
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
        self.ensure_free(id, true)?;
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
        let source = Source::Restore {
            disk: None,
            memory: dir.join(MEMORY_FILE),
            guest,
        };
        match self.start_vm(&config, source, Shape::of(&config)).await {
            Ok((vm, version)) => {
                let _ = std::fs::remove_file(dir.join(MEMORY_FILE));
                remove_tree(&snapshot).await?;
                Ok(self.instance(&vm, Some(version)))
            }
            Err(e) => {
                // The files go back for inspection (and another try).
                for file in moved {
                    if let Err(back) = std::fs::rename(dir.join(file), snapshot.join(file)) {
                        tracing::error!(sandbox_id = %id, "cannot move {file} back: {back}");
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
            TEMPLATE_FILES,
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
                    slot.take();
                    return Ok(format!(
                        "QEMU exited ({exit}); console: {}",
                        console_tail(&self.layout.sandbox_dir(id))
                    ));
                }
            }
            drop(vm);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn hibernated(&self) -> Result<Vec<SandboxConfig>, RuntimeError> {
        super::hibernated_configs(&self.layout)
    }

    async fn sweep(&self, keep: &[SandboxId]) -> Result<Vec<SandboxId>, RuntimeError> {
        let ids = super::sandboxes_on_disk(&self.layout, keep)?;
        for id in &ids {
            self.stop_everything(*id).await;
            remove_tree(&self.layout.sandbox_dir(*id)).await?;
        }
        // Half-written warm snapshots of a crash.
        let warm = vm_dir(&self.layout).join("warm");
        if let Ok(entries) = std::fs::read_dir(&warm) {
            for entry in entries.flatten() {
                if entry.path().extension().is_some_and(|e| e == "partial") {
                    let _ = remove_tree(&entry.path()).await;
                }
            }
        }
        Ok(ids)
    }
}

impl Drop for QemuRuntime {
    fn drop(&mut self) {
        // QEMU processes are children with `kill_on_drop`; dropping the machines
        // kills them. Networks stay for the next start's sweep.
        self.live().clear();
    }
}

//! One capsule's Firecracker VM: booted from the image's kernel with the capsule's
//! files, or restored from a memory snapshot; saved (paused, snapshotted, the VMM
//! gone); stopped.
//!
//! The VMM runs in the VM's directory and is given its drives by relative path
//! (`disk.ext4`, `envd.ext4`), and its network by the capsule namespace's `tap0`: the
//! snapshot state names only those, so a snapshot taken in one directory restores in
//! any other that holds the same files — a template's memory into a new capsule, a
//! hibernated capsule into a new namespace.
//!
//! A restore maps the memory file ([`LoadBackend::File`]) or has the agent serve the
//! guest's pages from it as the guest touches them ([`LoadBackend::Uffd`], the
//! [`uffd`](super::uffd) handler): nothing is read up front, and many capsules
//! restored from one template share its file's pages in the host's cache.
//!
//! A restored VM tracks dirty pages. Saved again into the snapshot it was loaded
//! from, it writes a [`Diff`](SnapshotType::Diff) — only the pages written since the
//! load — [merged](super::diff) onto that memory file while the VM is paused; any
//! other save (the first after a boot, a capsule made from a template's memory) is
//! [`Full`](SnapshotType::Full), written beside the memory file and renamed over it
//! when complete. A failed save resumes the VM, whose memory is intact (a merge only
//! writes pages the VM already holds its own copies of, never one it may still read
//! from the file), and leaves the snapshot before it in place unless a merge had
//! begun. The VM's next save is then Full (the failed diff cleared its dirty pages).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::api::{
    BootSource, Drive, IoEngine, LogLevel, MachineConfiguration, MemoryBackend, MemoryBackendType,
    MmdsConfig, MmdsVersion, NetworkInterface, SnapshotCreateParams, SnapshotLoadParams,
    SnapshotType,
};
use super::client::{Client, ClientError};
use super::diff;
use super::jailer::JailerConfig;
use super::uffd::{UffdError, UffdHandle, UffdHandler, UffdStats};
use super::vmm::{Launcher, Vmm, VmmError, VmmOptions};
use crate::network::tap::{GUEST_MAC, TAP_NAME};

/// The root disk in a VM's directory.
pub const DISK_FILE: &str = "disk.ext4";
/// envd's read-only disk in a VM's directory (a link to the shared one).
pub const ENVD_DISK_FILE: &str = "envd.ext4";
/// The VMM's API socket in a VM's directory.
pub const API_SOCKET: &str = "firecracker.sock";
/// A snapshot's device and vCPU state.
pub const STATE_FILE: &str = "vm.state";
/// A snapshot's guest memory.
pub const MEMORY_FILE: &str = "memory";
/// Guest memory of a snapshot being written (a full one, or a diff to merge).
pub const NEW_MEMORY_FILE: &str = "memory.new";
/// Device and vCPU state of a snapshot being written.
pub const NEW_STATE_FILE: &str = "vm.state.new";
/// The guest's network interface.
const IFACE: &str = "eth0";
/// The page-fault handler's socket in a VM's directory (while it restores).
pub const UFFD_SOCKET: &str = "uffd.sock";
/// The named pipe a VMM writes its metrics to (read by the agent).
pub const METRICS_PIPE: &str = "metrics.fifo";
/// The kernel's name in a jail.
pub const KERNEL_FILE: &str = "vmlinux";
/// The initramfs's name in a jail.
pub const INITRD_FILE: &str = "initrd";
/// How long a snapshot may take to write or load.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a machine operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// The VMM could not be started or stopped.
    #[error("Firecracker")]
    Vmm(#[from] VmmError),
    /// The VMM refused a request or did not answer.
    #[error("Firecracker API")]
    Api(#[from] ClientError),
    /// The page-fault handler of a restore failed.
    #[error("serving the restored memory")]
    Uffd(#[from] UffdError),
    /// A file of the VM could not be prepared.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Everything that describes one capsule's machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineSpec {
    /// The capsule's id (the VMM's id).
    pub id: String,
    /// How the VMM is started (directly inside the capsule's network namespace).
    pub launcher: Launcher,
    /// The VM's directory: its disks, API socket and snapshots.
    pub dir: PathBuf,
    /// The kernel (an ELF `vmlinux`).
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
    /// The kernel command line.
    pub cmdline: String,
    /// envd's read-only disk (linked into the directory as [`ENVD_DISK_FILE`]).
    pub envd_disk: PathBuf,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory (MiB).
    pub memory_mb: u32,
    /// Whether the guest has a network interface (the namespace's `tap0`).
    pub network: bool,
    /// What the guest reads from the metadata service (MMDS v2), if anything.
    pub metadata: Option<serde_json::Value>,
}

impl MachineSpec {
    /// The jail the VMM runs in, if any.
    fn jail(&self) -> Option<&JailerConfig> {
        match &self.launcher {
            Launcher::Jailed(jail) => Some(jail),
            Launcher::Direct { .. } => None,
        }
    }

    fn vmm_options(&self) -> VmmOptions {
        let mut options = match self.jail() {
            // Jailed, the VMM's working directory is its chroot's root.
            Some(_) => VmmOptions::jailed(self.id.clone()),
            None => {
                let mut options = VmmOptions::new(self.id.clone(), self.dir.join(API_SOCKET));
                options.cwd = Some(self.dir.clone());
                options
            }
        };
        // Warnings and errors only: at `Info` Firecracker echoes every API request, host
        // paths included, into the output that becomes a failed capsule's reason.
        options.log_level = Some(LogLevel::Warning);
        options.metrics_path = Some(self.made(METRICS_PIPE).0);
        options.forward_metrics = true;
        options
    }

    /// Puts the drives where the VMM finds them under the names a snapshot records:
    /// envd's disk linked into the directory, or both disks hard-linked into the jail
    /// (the root disk given to the jail's user).
    fn stage_drives(&self) -> Result<(), MachineError> {
        let Some(jail) = self.jail() else {
            return self.link_envd_disk();
        };
        jail.stage(&self.id, &self.dir.join(DISK_FILE), DISK_FILE, true)?;
        jail.stage(&self.id, &self.envd_disk, ENVD_DISK_FILE, false)?;
        Ok(())
    }

    /// The host file `path` as the VMM sees it: itself, or staged into the jail as
    /// `name` (read-only).
    fn visible(&self, path: &Path, name: &str) -> Result<PathBuf, MachineError> {
        match self.jail() {
            None => Ok(path.to_owned()),
            Some(jail) => Ok(jail.stage(&self.id, path, name, false)?),
        }
    }

    /// A file `name` the VMM makes (a snapshot, the page-fault handler's socket): its
    /// path as the VMM sees it, and on the host.
    fn made(&self, name: &str) -> (PathBuf, PathBuf) {
        match self.jail() {
            None => (self.dir.join(name), self.dir.join(name)),
            Some(jail) => (
                Path::new("/").join(name),
                jail.root_dir(&self.id).join(name),
            ),
        }
    }

    /// Removes what staging put into a jail, after a failure before the VMM started.
    async fn discard_jail(&self) {
        if let Some(jail) = self.jail()
            && let Err(e) = jail.cleanup(&self.id).await
        {
            tracing::warn!(
                capsule_id = %self.id,
                "removing a jail: {}",
                crate::runtime::error_chain(&e)
            );
        }
    }

    /// Links envd's disk into the directory (the snapshot names it relatively).
    fn link_envd_disk(&self) -> Result<(), MachineError> {
        let link = self.dir.join(ENVD_DISK_FILE);
        match std::fs::remove_file(&link) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(MachineError::Io {
                    context: format!("replace {}", link.display()),
                    source,
                });
            }
        }
        std::os::unix::fs::symlink(&self.envd_disk, &link).map_err(|source| MachineError::Io {
            context: format!("link envd's disk into {}", self.dir.display()),
            source,
        })
    }
}

/// A snapshot's two files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Device and vCPU state.
    pub state: PathBuf,
    /// Guest memory.
    pub memory: PathBuf,
}

impl Snapshot {
    /// The snapshot files in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            state: dir.join(STATE_FILE),
            memory: dir.join(MEMORY_FILE),
        }
    }

    /// Whether both files exist.
    pub fn exists(&self) -> bool {
        self.state.is_file() && self.memory.is_file()
    }

    /// Where a save writes memory before it replaces (or is merged onto) `memory`.
    fn new_memory(&self) -> PathBuf {
        self.memory.with_file_name(NEW_MEMORY_FILE)
    }

    /// Where a save writes the state before it replaces `state`.
    fn new_state(&self) -> PathBuf {
        self.state.with_file_name(NEW_STATE_FILE)
    }
}

/// How a save wrote the VM's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saved {
    /// All of it.
    Full,
    /// The pages written since the load, merged onto the memory file it was loaded
    /// from.
    Diff {
        /// Bytes merged.
        bytes: u64,
    },
}

/// How a restored VM gets its memory from the snapshot's memory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadBackend {
    /// Firecracker maps the file.
    File,
    /// The agent serves each page on the guest's first touch (userfaultfd).
    Uffd,
}

/// A running VM.
#[derive(Debug)]
pub struct Machine {
    vmm: Vmm,
    /// The page-fault handler of a VM restored with [`LoadBackend::Uffd`].
    uffd: Option<UffdHandle>,
    /// The memory file a restored VM was loaded from, while the pages it wrote since
    /// are tracked: a save into the same snapshot writes only those.
    diff_base: Option<PathBuf>,
}

impl Machine {
    /// Starts a VMM, configures the machine (vCPUs and memory, kernel, drives,
    /// network, metadata) and boots it. On failure nothing runs.
    pub async fn boot(spec: &MachineSpec) -> Result<Self, MachineError> {
        let staged = spec.stage_drives().and_then(|()| {
            Ok((
                spec.visible(&spec.kernel, KERNEL_FILE)?,
                spec.visible(&spec.initrd, INITRD_FILE)?,
            ))
        });
        let (kernel, initrd) = match staged {
            Ok(paths) => paths,
            Err(e) => {
                spec.discard_jail().await;
                return Err(e);
            }
        };
        let vmm = Vmm::start(&spec.launcher, &spec.vmm_options()).await?;
        match configure_and_start(&vmm, spec, kernel, initrd).await {
            Ok(()) => Ok(Self {
                vmm,
                uffd: None,
                diff_base: None,
            }),
            Err(e) => {
                let _ = vmm.stop().await;
                Err(e)
            }
        }
    }

    /// Starts a VMM that restores `snapshot` (whose disks must be in `spec.dir` under
    /// the names the snapshot was taken with) with its memory from `backend`, and
    /// resumes it. On failure nothing runs (Firecracker exits when a load fails).
    pub async fn load(
        spec: &MachineSpec,
        snapshot: &Snapshot,
        backend: LoadBackend,
    ) -> Result<Self, MachineError> {
        let staged = async {
            spec.stage_drives()?;
            let state = spec.visible(&snapshot.state, STATE_FILE)?;
            let memory = match backend {
                LoadBackend::File => Loaded::File(spec.visible(&snapshot.memory, MEMORY_FILE)?),
                LoadBackend::Uffd => {
                    let (seen, socket) = spec.made(UFFD_SOCKET);
                    if let Some(parent) = socket.parent() {
                        std::fs::create_dir_all(parent).map_err(|source| MachineError::Io {
                            context: "make the page-fault handler's directory".into(),
                            source,
                        })?;
                    }
                    let handler = UffdHandler::new(spec.id.clone(), &socket, &snapshot.memory)
                        .connect_timeout(SNAPSHOT_TIMEOUT);
                    let handle = tokio::task::spawn_blocking(move || handler.start())
                        .await
                        .map_err(|e| MachineError::Io {
                            context: "start the page-fault handler".into(),
                            source: std::io::Error::other(e),
                        })??;
                    if let Some(jail) = spec.jail() {
                        // The jailed VMM connects as the jail's user.
                        let owned =
                            std::os::unix::fs::chown(&socket, Some(jail.uid), Some(jail.gid));
                        if let Err(source) = owned {
                            let _ = handle.stop();
                            return Err(MachineError::Io {
                                context: "give the page-fault handler's socket to the jail".into(),
                                source,
                            });
                        }
                    }
                    Loaded::Uffd(seen, handle)
                }
            };
            Ok::<_, MachineError>((state, memory))
        }
        .await;
        let (state, memory) = match staged {
            Ok(staged) => staged,
            Err(e) => {
                spec.discard_jail().await;
                return Err(e);
            }
        };
        let (uffd, mem_backend) = match memory {
            Loaded::File(path) => (
                None,
                MemoryBackend {
                    backend_type: MemoryBackendType::File,
                    backend_path: path,
                },
            ),
            Loaded::Uffd(socket, handle) => (
                Some(handle),
                MemoryBackend {
                    backend_type: MemoryBackendType::Uffd,
                    backend_path: socket,
                },
            ),
        };
        let vmm = match Vmm::start(&spec.launcher, &spec.vmm_options()).await {
            Ok(vmm) => vmm,
            Err(e) => {
                if let Some(handle) = uffd {
                    let _ = tokio::task::spawn_blocking(move || handle.stop()).await;
                }
                return Err(e.into());
            }
        };
        let client = vmm.client().clone().with_snapshot_timeout(SNAPSHOT_TIMEOUT);
        let loaded = client
            .load_snapshot(&SnapshotLoadParams {
                snapshot_path: state,
                mem_backend,
                // Dirty pages are tracked for the next save's diff.
                enable_diff_snapshots: true,
                resume_vm: true,
                network_overrides: Vec::new(),
            })
            .await;
        match loaded {
            Ok(()) => {
                if let Some(root) = vmm.jail_root() {
                    // Read: a later save writes its own (a link would change the
                    // snapshot's file too).
                    let _ = std::fs::remove_file(root.join(STATE_FILE));
                }
                Ok(Self {
                    vmm,
                    uffd,
                    diff_base: Some(snapshot.memory.clone()),
                })
            }
            Err(e) => {
                let _ = vmm.stop().await;
                if let Some(handle) = uffd {
                    let _ = handle.stop();
                }
                Err(e.into())
            }
        }
    }

    /// Pauses the VM, writes a snapshot of it to `to` (a diff merged onto `to.memory`
    /// when the VM was loaded from it, else full) and stops the VMM: the VM then holds
    /// no memory. On failure the VM is resumed and given back.
    pub async fn save(mut self, to: &Snapshot) -> Result<Saved, (Self, MachineError)> {
        let client = self
            .client()
            .clone()
            .with_snapshot_timeout(SNAPSHOT_TIMEOUT);
        if let Err(e) = client.pause().await {
            return Err((self, e.into()));
        }
        let diff = self.diff_base.as_deref() == Some(to.memory.as_path()) && to.memory.is_file();
        // Written beside the snapshot and put in place once complete: a save that
        // fails leaves the one before it as it was.
        let (new_state, new_memory) = (to.new_state(), to.new_memory());
        // A jailed VMM writes into its root; the files then move to `to`.
        let jail_root = self.vmm.jail_root();
        let made = |name: &str, host: &Path| match &jail_root {
            Some(root) => (
                Path::new("/").join(name),
                Some((root.join(name), host.to_owned())),
            ),
            None => (host.to_owned(), None),
        };
        let (state_seen, state_moved) = made(NEW_STATE_FILE, &new_state);
        let (memory_seen, memory_moved) = made(NEW_MEMORY_FILE, &new_memory);
        let written = async {
            client
                .create_snapshot(&SnapshotCreateParams {
                    snapshot_type: if diff {
                        SnapshotType::Diff
                    } else {
                        SnapshotType::Full
                    },
                    snapshot_path: state_seen,
                    mem_file_path: memory_seen,
                })
                .await?;
            for (from, to) in [state_moved, memory_moved].into_iter().flatten() {
                move_file(&from, &to).map_err(|source| MachineError::Io {
                    context: "move the snapshot out of the jail".into(),
                    source,
                })?;
            }
            // The VM is paused: no page it wrote can change or fault in meanwhile.
            let (from, onto) = (new_memory.clone(), to.memory.clone());
            let (state_from, state_onto) = (new_state.clone(), to.state.clone());
            let settled = tokio::task::spawn_blocking(move || {
                let saved = if diff {
                    // From here the memory file is no longer the old snapshot's.
                    let _ = std::fs::remove_file(&state_onto);
                    let merged = diff::merge(&from, &onto)?;
                    std::fs::remove_file(&from)?;
                    Saved::Diff {
                        bytes: merged.bytes,
                    }
                } else {
                    std::fs::rename(&from, &onto)?;
                    Saved::Full
                };
                std::fs::rename(&state_from, &state_onto)?;
                Ok(saved)
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            settled.map_err(|source| MachineError::Io {
                context: if diff {
                    "merge the diff snapshot onto its memory file".into()
                } else {
                    "move the snapshot's memory into place".into()
                },
                source,
            })
        }
        .await;
        match written {
            Ok(saved) => {
                if let Err(e) = self.stop().await {
                    // The snapshot is complete; a socket left behind is removed with
                    // the VM.
                    tracing::warn!("stopping a saved VM: {}", crate::runtime::error_chain(&e));
                }
                Ok(saved)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&new_state);
                let _ = std::fs::remove_file(&new_memory);
                if let Some(root) = &jail_root {
                    let _ = std::fs::remove_file(root.join(NEW_STATE_FILE));
                    let _ = std::fs::remove_file(root.join(NEW_MEMORY_FILE));
                }
                // A diff, even a failed one, cleared the dirty pages: the next save
                // must be full.
                self.diff_base = None;
                let _ = client.resume().await;
                Err((self, e))
            }
        }
    }

    /// A client of the VMM's API.
    pub fn client(&self) -> &Client {
        self.vmm.client()
    }

    /// The last metrics the VMM reported (Firecracker writes them every minute
    /// once the guest runs; `FlushMetrics` asks for them at once).
    pub fn metrics(&self) -> Option<serde_json::Value> {
        self.vmm.metrics()
    }

    /// The VMM's pid.
    pub fn pid(&self) -> u32 {
        self.vmm.pid()
    }

    /// The last lines of the VMM's output: the guest's console and Firecracker's log.
    pub fn console_tail(&self) -> Vec<String> {
        self.vmm.output_tail()
    }

    /// What the page-fault handler of a restored VM has served so far.
    pub fn uffd_stats(&self) -> Option<UffdStats> {
        self.uffd.as_ref().map(UffdHandle::stats)
    }

    /// `None` while the VM runs, else how it ended. A VM whose page-fault handler
    /// ended is over too: its guest would read zeros where its memory should be.
    pub fn exited(&mut self) -> Option<String> {
        if let Some(exit) = self.vmm.exited() {
            return Some(exit);
        }
        if self.uffd.as_ref().is_some_and(UffdHandle::is_finished) {
            let why = match self.uffd.take().map(UffdHandle::stop) {
                Some(Err(e)) => crate::runtime::error_chain(&e),
                _ => "it stopped".to_owned(),
            };
            return Some(format!("its memory is no longer served ({why})"));
        }
        None
    }

    /// Resolves when the VMM has exited, with how it ended.
    pub async fn wait(&mut self) -> String {
        self.vmm.wait().await
    }

    /// Kills the VMM and removes its socket; a page-fault handler ends with it.
    pub async fn stop(self) -> Result<(), MachineError> {
        let stopped = self.vmm.stop().await;
        if let Some(handle) = self.uffd {
            // Its VMM is gone: it ends on its own; `stop` joins it either way.
            if let Err(e) = tokio::task::spawn_blocking(move || handle.stop())
                .await
                .map_err(std::io::Error::other)
                .map_err(|source| MachineError::Io {
                    context: "stop the page-fault handler".into(),
                    source,
                })?
            {
                tracing::warn!(
                    "the page-fault handler ended with: {}",
                    crate::runtime::error_chain(&e)
                );
            }
        }
        Ok(stopped?)
    }
}

/// The configuration sequence of a booting VM, then `InstanceStart`.
async fn configure_and_start(
    vmm: &Vmm,
    spec: &MachineSpec,
    kernel: PathBuf,
    initrd: PathBuf,
) -> Result<(), MachineError> {
    let client = vmm.client();
    let vcpus = u8::try_from(spec.vcpus).unwrap_or(u8::MAX);
    client
        .put_machine_config(&MachineConfiguration {
            vcpu_count: vcpus,
            mem_size_mib: spec.memory_mb,
            smt: false,
            track_dirty_pages: false,
            huge_pages: None,
        })
        .await?;
    client
        .put_boot_source(&BootSource {
            kernel_image_path: kernel,
            boot_args: Some(spec.cmdline.clone()),
            initrd_path: Some(initrd),
        })
        .await?;
    for (drive_id, file, root, read_only) in [
        ("rootfs", DISK_FILE, true, false),
        ("envd", ENVD_DISK_FILE, false, true),
    ] {
        client
            .put_drive(&Drive {
                drive_id: drive_id.to_owned(),
                path_on_host: PathBuf::from(file),
                is_root_device: root,
                is_read_only: read_only,
                cache_type: None,
                io_engine: Some(IoEngine::Sync),
                partuuid: None,
                rate_limiter: None,
            })
            .await?;
    }
    if spec.network {
        client
            .put_network_interface(&NetworkInterface {
                iface_id: IFACE.to_owned(),
                host_dev_name: TAP_NAME.to_owned(),
                guest_mac: Some(GUEST_MAC.to_owned()),
                rx_rate_limiter: None,
                tx_rate_limiter: None,
            })
            .await?;
        if let Some(metadata) = &spec.metadata {
            client
                .put_mmds_config(&MmdsConfig {
                    version: MmdsVersion::V2,
                    network_interfaces: vec![IFACE.to_owned()],
                    ipv4_address: None,
                })
                .await?;
            client.put_mmds(metadata).await?;
        }
    }
    client.start_instance().await?;
    Ok(())
}

/// Where a loading VM's memory comes from, as its VMM sees it.
enum Loaded {
    /// The memory file.
    File(PathBuf),
    /// The page-fault handler's socket, and the handler.
    Uffd(PathBuf, UffdHandle),
}

/// Renames `from` to `to`, copying across file systems.
fn move_file(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            std::fs::copy(from, to)?;
            std::fs::remove_file(from)
        }
        moved => moved,
    }
}

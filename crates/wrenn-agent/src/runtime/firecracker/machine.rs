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

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::api::{
    BootSource, Drive, IoEngine, LogLevel, MachineConfiguration, MemoryBackend, MemoryBackendType,
    MmdsConfig, MmdsVersion, NetworkInterface, SnapshotCreateParams, SnapshotLoadParams,
    SnapshotType,
};
use super::client::ClientError;
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
/// The guest's network interface.
const IFACE: &str = "eth0";
/// The page-fault handler's socket in a VM's directory (while it restores).
pub const UFFD_SOCKET: &str = "uffd.sock";
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
    fn vmm_options(&self) -> VmmOptions {
        let mut options = VmmOptions::new(self.id.clone(), self.dir.join(API_SOCKET));
        options.cwd = Some(self.dir.clone());
        // Warnings and errors only: at `Info` Firecracker echoes every API request, host
        // paths included, into the output that becomes a failed capsule's reason.
        options.log_level = Some(LogLevel::Warning);
        options
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
}

impl Machine {
    /// Starts a VMM, configures the machine (vCPUs and memory, kernel, drives,
    /// network, metadata) and boots it. On failure nothing runs.
    pub async fn boot(spec: &MachineSpec) -> Result<Self, MachineError> {
        spec.link_envd_disk()?;
        let vmm = Vmm::start(&spec.launcher, &spec.vmm_options()).await?;
        match configure_and_start(&vmm, spec).await {
            Ok(()) => Ok(Self { vmm, uffd: None }),
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
        spec.link_envd_disk()?;
        let (uffd, mem_backend) = match backend {
            LoadBackend::File => (
                None,
                MemoryBackend {
                    backend_type: MemoryBackendType::File,
                    backend_path: snapshot.memory.clone(),
                },
            ),
            LoadBackend::Uffd => {
                let socket = spec.dir.join(UFFD_SOCKET);
                let handler = UffdHandler::new(spec.id.clone(), &socket, &snapshot.memory)
                    .connect_timeout(SNAPSHOT_TIMEOUT);
                let handle = tokio::task::spawn_blocking(move || handler.start())
                    .await
                    .map_err(|e| MachineError::Io {
                        context: "start the page-fault handler".into(),
                        source: std::io::Error::other(e),
                    })??;
                (
                    Some(handle),
                    MemoryBackend {
                        backend_type: MemoryBackendType::Uffd,
                        backend_path: socket,
                    },
                )
            }
        };
        let vmm = Vmm::start(&spec.launcher, &spec.vmm_options()).await?;
        let client = vmm.client().clone().with_snapshot_timeout(SNAPSHOT_TIMEOUT);
        let loaded = client
            .load_snapshot(&SnapshotLoadParams {
                snapshot_path: snapshot.state.clone(),
                mem_backend,
                enable_diff_snapshots: false,
                resume_vm: true,
                network_overrides: Vec::new(),
            })
            .await;
        match loaded {
            Ok(()) => Ok(Self { vmm, uffd }),
            Err(e) => {
                let _ = vmm.stop().await;
                if let Some(handle) = uffd {
                    let _ = handle.stop();
                }
                Err(e.into())
            }
        }
    }

    /// Pauses the VM, writes a full snapshot of it to `to` and stops the VMM: the VM
    /// then holds no memory. On failure the VM is resumed and given back.
    pub async fn save(self, to: &Snapshot) -> Result<(), (Self, MachineError)> {
        let client = self
            .vmm
            .client()
            .clone()
            .with_snapshot_timeout(SNAPSHOT_TIMEOUT);
        if let Err(e) = client.pause().await {
            return Err((self, e.into()));
        }
        let created = client
            .create_snapshot(&SnapshotCreateParams {
                snapshot_type: SnapshotType::Full,
                snapshot_path: to.state.clone(),
                mem_file_path: to.memory.clone(),
            })
            .await;
        if let Err(e) = created {
            let _ = std::fs::remove_file(&to.state);
            let _ = std::fs::remove_file(&to.memory);
            let _ = client.resume().await;
            return Err((self, e.into()));
        }
        if let Err(e) = self.stop().await {
            // The snapshot is complete; a socket left behind is removed with the VM.
            tracing::warn!("stopping a saved VM: {}", crate::runtime::error_chain(&e));
        }
        Ok(())
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
async fn configure_and_start(vmm: &Vmm, spec: &MachineSpec) -> Result<(), MachineError> {
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
            kernel_image_path: spec.kernel.clone(),
            boot_args: Some(spec.cmdline.clone()),
            initrd_path: Some(spec.initrd.clone()),
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

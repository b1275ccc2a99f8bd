//! The bodies of Firecracker's API requests and responses that Wrenn uses, as serde
//! types (Firecracker's swagger, `firecracker.yaml`, names them; these follow
//! v1.16 while staying accepted by v1.12, which refuses unknown fields).
//!
//! Optional fields are left out of a request when `None`, so Firecracker applies its
//! own defaults.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `PUT /machine-config`, `GET /machine-config`: vCPUs and memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfiguration {
    /// vCPUs (1, or an even number up to 32 with SMT).
    pub vcpu_count: u8,
    /// Guest memory (MiB).
    pub mem_size_mib: u32,
    /// Simultaneous multithreading (x86 only).
    #[serde(default)]
    pub smt: bool,
    /// Tracks dirty pages: required for [`SnapshotType::Diff`] snapshots.
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Huge pages backing guest memory (Firecracker's default: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePages>,
}

/// Huge pages backing guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    /// Ordinary 4 KiB pages.
    None,
    /// 2 MiB huge pages (hugetlbfs).
    #[serde(rename = "2M")]
    TwoMiB,
}

/// `PUT /boot-source`: the guest kernel (an uncompressed ELF `vmlinux` on x86_64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootSource {
    /// The kernel, as the VMM sees it (inside the chroot when jailed).
    pub kernel_image_path: PathBuf,
    /// The kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// An initrd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
}

/// `PUT /drives/{drive_id}`: a virtio block device backed by a host file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drive {
    /// The drive's id (alphanumeric and `_`), also the last segment of the URL.
    pub drive_id: String,
    /// The backing file, as the VMM sees it.
    pub path_on_host: PathBuf,
    /// Whether this is the root device (`root=/dev/vda` is added to the command line).
    pub is_root_device: bool,
    /// Whether the guest may only read it.
    pub is_read_only: bool,
    /// Caching strategy (Firecracker's default: `Unsafe`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<CacheType>,
    /// I/O engine (Firecracker's default: `Sync`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<IoEngine>,
    /// The root partition's UUID, when the root device is partitioned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// Bandwidth and operation limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

/// A drive's caching strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    /// Flushes requested by the guest are ignored.
    Unsafe,
    /// Guest flushes reach the host file (`fsync`).
    Writeback,
}

/// A drive's I/O engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoEngine {
    /// Blocking I/O on the VMM thread.
    Sync,
    /// `io_uring` (host kernels from 5.10.51).
    Async,
}

/// Independent bandwidth (bytes) and operation limits of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RateLimiter {
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucket>,
    /// Operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucket>,
}

/// A token bucket: `size` tokens refilled every `refill_time` ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBucket {
    /// Capacity.
    pub size: u64,
    /// Milliseconds to refill a whole bucket.
    pub refill_time: u64,
    /// An initial burst on top of the capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
}

/// `PUT /network-interfaces/{iface_id}`: a virtio-net device over a host TAP device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInterface {
    /// The interface's id, also the last segment of the URL.
    pub iface_id: String,
    /// The TAP device in the VMM's network namespace. Firecracker opens it with
    /// `TUNSETIFF`, which *creates* a missing one when the VMM may (`CAP_NET_ADMIN`).
    pub host_dev_name: String,
    /// The guest's MAC address (`02:FC:00:00:00:05`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// Receive limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// Transmit limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}

/// `PUT /mmds/config`: which interfaces reach the metadata service, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmdsConfig {
    /// The protocol version (Wrenn uses [`MmdsVersion::V2`]: session tokens).
    pub version: MmdsVersion,
    /// Interface ids (already configured) whose traffic to
    /// [`ipv4_address`](Self::ipv4_address) goes to the MMDS instead of the TAP.
    pub network_interfaces: Vec<String>,
    /// The MMDS address (Firecracker's default: `169.254.169.254`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<Ipv4Addr>,
}

/// The MMDS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MmdsVersion {
    /// Plain `GET`s.
    V1,
    /// A session token from `PUT /latest/api/token` is required (IMDSv2-like).
    V2,
}

/// `PUT /actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceActionInfo {
    /// The action.
    pub action_type: ActionType,
}

/// An action of `PUT /actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Writes the metrics now.
    FlushMetrics,
    /// Boots the configured machine.
    InstanceStart,
    /// Presses Ctrl+Alt+Del (the guest's orderly reboot, which Firecracker ends).
    SendCtrlAltDel,
}

/// `PATCH /vm`: pauses or resumes the vCPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    /// The wanted state.
    pub state: VmState,
}

/// The wanted state of [`Vm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// vCPUs stopped.
    Paused,
    /// vCPUs running.
    Resumed,
}

/// `PUT /snapshot/create` (the VM must be paused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotCreateParams {
    /// Full or diff.
    pub snapshot_type: SnapshotType,
    /// Where the device and vCPU state goes.
    pub snapshot_path: PathBuf,
    /// Where guest memory goes.
    pub mem_file_path: PathBuf,
}

/// What a memory snapshot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    /// All of guest memory.
    Full,
    /// Only pages dirtied since the last snapshot, written at their offsets into a
    /// sparse file (the rest are holes). Needs dirty page tracking
    /// ([`MachineConfiguration::track_dirty_pages`] or
    /// [`SnapshotLoadParams::enable_diff_snapshots`]).
    Diff,
}

/// `PUT /snapshot/load` (only into a VMM with nothing configured).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotLoadParams {
    /// The device and vCPU state.
    pub snapshot_path: PathBuf,
    /// Where guest memory comes from.
    pub mem_backend: MemoryBackend,
    /// Tracks dirty pages after the load (for the next diff snapshot). Deprecated in
    /// favour of `track_dirty_pages` from v1.13, but v1.12 knows only this name.
    #[serde(default)]
    pub enable_diff_snapshots: bool,
    /// Resumes the vCPUs once loaded.
    #[serde(default)]
    pub resume_vm: bool,
    /// TAP devices that replace the ones recorded in the snapshot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_overrides: Vec<NetworkOverride>,
}

/// The backend of a loaded snapshot's memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryBackend {
    /// File or userfaultfd handler.
    pub backend_type: MemoryBackendType,
    /// The memory file, or the unix socket of the userfaultfd handler.
    pub backend_path: PathBuf,
}

/// How a loaded snapshot's memory is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemoryBackendType {
    /// Mapped privately from the memory file.
    File,
    /// Page faults are served by a handler listening on a unix socket.
    Uffd,
}

/// A TAP device replacing the one a snapshot recorded for an interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkOverride {
    /// The interface.
    pub iface_id: String,
    /// Its new TAP device.
    pub host_dev_name: String,
}

/// `PUT /logger`: where the VMM's log goes (by default its standard output).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Logger {
    /// A file or named pipe, as the VMM sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<PathBuf>,
    /// The level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    /// Prefix lines with their level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Prefix lines with their source location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// Only messages of this module path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// A log level of [`Logger`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogLevel {
    /// Errors.
    Error,
    /// Warnings and up.
    Warning,
    /// Information and up (Firecracker's default).
    Info,
    /// Debugging and up.
    Debug,
    /// Everything.
    Trace,
    /// Nothing.
    Off,
}

impl LogLevel {
    /// The value of Firecracker's `--level` option.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "Error",
            LogLevel::Warning => "Warning",
            LogLevel::Info => "Info",
            LogLevel::Debug => "Debug",
            LogLevel::Trace => "Trace",
            LogLevel::Off => "Off",
        }
    }
}

/// `PUT /metrics`: where the VMM flushes its JSON metrics (once a minute and on
/// [`ActionType::FlushMetrics`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    /// A file or named pipe, as the VMM sees it.
    pub metrics_path: PathBuf,
}

/// `GET /`: the instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// The VMM's `--id`.
    pub id: String,
    /// Its state.
    pub state: InstanceState,
    /// Firecracker's version (`1.12.1`).
    pub vmm_version: String,
    /// `Firecracker`.
    pub app_name: String,
}

/// The state reported by [`InstanceInfo`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceState {
    /// Being configured (no `InstanceStart` or snapshot load yet).
    #[serde(rename = "Not started")]
    NotStarted,
    /// vCPUs running.
    Running,
    /// vCPUs paused.
    Paused,
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// Firecracker's explanation.
    pub fault_message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn optional_fields_are_left_out_and_enums_use_firecrackers_names() {
        let drive = Drive {
            drive_id: "rootfs".into(),
            path_on_host: "/rootfs.ext4".into(),
            is_root_device: true,
            is_read_only: false,
            cache_type: None,
            io_engine: None,
            partuuid: None,
            rate_limiter: None,
        };
        assert_eq!(
            serde_json::to_value(&drive).unwrap(),
            json!({"drive_id": "rootfs", "path_on_host": "/rootfs.ext4",
                   "is_root_device": true, "is_read_only": false})
        );
        let load = SnapshotLoadParams {
            snapshot_path: "/s/snapfile".into(),
            mem_backend: MemoryBackend {
                backend_type: MemoryBackendType::Uffd,
                backend_path: "/s/uffd.sock".into(),
            },
            enable_diff_snapshots: true,
            resume_vm: false,
            network_overrides: Vec::new(),
        };
        assert_eq!(
            serde_json::to_value(&load).unwrap(),
            json!({"snapshot_path": "/s/snapfile",
                   "mem_backend": {"backend_type": "Uffd", "backend_path": "/s/uffd.sock"},
                   "enable_diff_snapshots": true, "resume_vm": false})
        );
        let mmds = MmdsConfig {
            version: MmdsVersion::V2,
            network_interfaces: vec!["eth0".into()],
            ipv4_address: Some(Ipv4Addr::new(169, 254, 169, 254)),
        };
        assert_eq!(
            serde_json::to_value(&mmds).unwrap(),
            json!({"version": "V2", "network_interfaces": ["eth0"],
                   "ipv4_address": "169.254.169.254"})
        );
    }

    #[test]
    fn responses_decode() {
        let info: InstanceInfo = serde_json::from_value(json!({
            "id": "c1", "state": "Not started", "vmm_version": "1.12.1",
            "app_name": "Firecracker"
        }))
        .unwrap();
        assert_eq!(info.state, InstanceState::NotStarted);
        let machine: MachineConfiguration = serde_json::from_value(json!({
            "vcpu_count": 2, "mem_size_mib": 512, "smt": false,
            "track_dirty_pages": true, "huge_pages": "None"
        }))
        .unwrap();
        assert_eq!(machine.huge_pages, Some(HugePages::None));
        assert!(machine.track_dirty_pages);
    }
}

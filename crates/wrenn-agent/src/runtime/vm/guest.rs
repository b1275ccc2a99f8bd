//! What every capsule VM runs besides the image's kernel — the initramfs and envd's
//! read-only disk, made once per agent in `vm/` — and the guest chores the VM
//! runtimes share: envd's health and identity, disk and process accounting.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tonic::transport::Endpoint;
use wrenn_core::id::SandboxId;
use wrenn_core::layout::Layout;
use wrenn_proto::envd::v1::system_client::SystemClient;
use wrenn_proto::envd::v1::{HealthRequest, InitRequest};

use super::initramfs;
use crate::image::BuiltImage;
use crate::network::{self, Network, SandboxNet, tap};
use crate::runtime::{EnvdEndpoint, Instance, RuntimeError, blocking, error_chain, io_err};

/// `$WRENN_DIR/vm/`: the files VMs share (initramfs, envd's disk, probes, warm
/// snapshots).
pub fn vm_dir(layout: &Layout) -> PathBuf {
    layout.root().join("vm")
}

/// The first `n` characters of a hash, for file names.
pub(crate) fn short(hash: &str) -> String {
    hash.chars().take(16).collect()
}

/// Makes (once per content) the initramfs for `image` and envd's disk holding `envd`,
/// in `vm`. Returns them and a key naming this guest software (image, busybox,
/// initramfs contents, envd) for names of what depends on it, such as memory
/// snapshots. Blocking.
pub fn prepare(
    vm: &Path,
    envd: &Path,
    image: &BuiltImage,
) -> Result<(GuestFiles, String), RuntimeError> {
    let modules = image
        .modules()
        .ok_or_else(|| RuntimeError::Unsupported("the image build has no modules".into()))?;
    let busybox = image
        .busybox()
        .ok_or_else(|| RuntimeError::Unsupported("the image build has no static busybox".into()))?;
    std::fs::create_dir_all(vm).map_err(io_err(format!("create {}", vm.display())))?;
    let envd_sha = crate::image::manifest::sha256_file(envd)
        .map_err(io_err(format!("read envd ({})", envd.display())))?;
    let busybox_sha =
        crate::image::manifest::sha256_file(&busybox).map_err(io_err("read busybox"))?;
    let image_hash = &image.manifest.hash;
    let initramfs_key = initramfs::fingerprint();
    let initrd = vm.join(format!(
        "initramfs-{}-{}-{}.cpio",
        short(image_hash),
        short(&busybox_sha),
        short(&initramfs_key),
    ));
    if !initrd.is_file() {
        initramfs::build(&modules, &busybox, &initrd).map_err(io_err("build the initramfs"))?;
    }
    let envd_disk = vm.join(format!("envd-{}.ext4", short(&envd_sha)));
    if !envd_disk.is_file() {
        make_envd_disk(envd, &envd_disk)?;
    }
    let key = format!(
        "{}-{}-{}-{}",
        short(image_hash),
        short(&busybox_sha),
        short(&initramfs_key),
        short(&envd_sha)
    );
    Ok((
        GuestFiles {
            initrd,
            envd_disk,
            cpu: None,
        },
        key,
    ))
}

/// The guest software files a VM runs with besides the image's kernel: what its
/// memory snapshots depend on, so templates and hibernated capsules record them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestFiles {
    /// The initramfs.
    pub initrd: PathBuf,
    /// envd's read-only disk.
    pub envd_disk: PathBuf,
    /// The virtual CPU model (QEMU's `-cpu`) the memory runs on: a snapshot restores
    /// only onto the same. `None`: recorded before Wrenn kept it (the accelerator's
    /// former model, [`Accel::former_cpu`](super::accel::Accel::former_cpu)), or a
    /// runtime whose CPU model is not chosen (Firecracker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
}

impl GuestFiles {
    /// Whether both files are (still) on this host.
    pub fn present(&self) -> bool {
        self.initrd.is_file() && self.envd_disk.is_file()
    }
}

/// Makes envd's read-only disk: an ext4 image holding `envd` as `wrenn-envd`.
pub(crate) fn make_envd_disk(envd: &Path, disk: &Path) -> Result<(), RuntimeError> {
    let staging = disk.with_extension("d");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io_err("stage envd's disk"))?;
    std::fs::copy(envd, staging.join("wrenn-envd")).map_err(io_err("stage envd"))?;
    let partial = disk.with_extension("partial");
    let _ = std::fs::remove_file(&partial);
    let made = crate::image::ext4::make(&staging, &partial)
        .map_err(|e| RuntimeError::Unsupported(format!("envd's disk: {}", error_chain(&e))));
    let _ = std::fs::remove_dir_all(&staging);
    made?;
    std::fs::rename(&partial, disk).map_err(io_err("keep envd's disk"))
}

/// Bytes a file takes on disk.
pub(crate) fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

/// CPU time (ns) and resident memory (bytes) of process `pid`.
pub(crate) fn process_usage(pid: u32) -> std::io::Result<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| std::io::Error::other("unreadable stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the state (index 0): utime and stime are fields 14 and 15 of stat.
    let ticks: u64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    // SAFETY: `sysconf` has no preconditions.
    #[allow(unsafe_code)]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let cpu_ns = ticks * 1_000_000_000 / hz;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    Ok((cpu_ns, rss_kib * 1024))
}

/// Removes a directory tree; a missing one is fine.
pub(crate) async fn remove_tree(dir: &Path) -> Result<(), RuntimeError> {
    let d = dir.to_owned();
    blocking(move || match std::fs::remove_dir_all(&d) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    })
    .await?
    .map_err(io_err(format!("remove {}", dir.display())))
}

/// Sets the guest's hostname to the capsule's id through envd's Init.
pub(crate) async fn name_guest(instance: &Instance) -> Result<(), RuntimeError> {
    let EnvdEndpoint::Tcp(addr) = &instance.envd else {
        return Err(RuntimeError::Other("a VM's envd answers over TCP".into()));
    };
    let failed =
        |e: String| RuntimeError::Other(format!("naming the guest of {}: {e}", instance.id));
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| failed(error_chain(&e)))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| failed(error_chain(&e)))?;
    SystemClient::new(channel)
        .init(InitRequest {
            hostname: Some(instance.id.to_string()),
            ..InitRequest::default()
        })
        .await
        .map(drop)
        .map_err(|e| failed(e.message().to_owned()))
}

/// envd's version if it answers `Health` at `addr`, else why not.
pub(crate) async fn health(addr: SocketAddr) -> Result<String, String> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| error_chain(&e))?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| format!("connect: {}", error_chain(&e)))?;
    SystemClient::new(channel)
        .health(HealthRequest {})
        .await
        .map(|r| r.into_inner().version)
        .map_err(|e| format!("health: {}", error_chain(&e)))
}

/// Capsule `id`'s network in namespace `netns` with the guest's TAP device (owned by
/// `tap_owner`, if given) and NAT ([`tap`]), its DNS served. On failure nothing of it
/// is left.
pub(crate) async fn add_network(
    network: &Network,
    id: SandboxId,
    netns: &str,
    tap_owner: Option<(u32, u32)>,
) -> Result<SandboxNet, RuntimeError> {
    let network_err = |e: network::NetworkError| {
        RuntimeError::Other(format!("network of {id}: {}", error_chain(&e)))
    };
    let claimed = network.prepare(netns).await.map_err(network_err)?;
    let (name, addr, gateway) = (
        netns.to_owned(),
        claimed.net().sandbox_addr,
        claimed.net().host_addr,
    );
    let tapped = blocking(move || tap::add(&name, addr, gateway, tap_owner))
        .await
        .and_then(|r| r.map_err(io_err(format!("the TAP device of {id}"))));
    if let Err(e) = tapped {
        drop(claimed);
        remove_network(network, netns).await;
        return Err(e);
    }
    match network.serve(claimed, &id.to_string()).await {
        Ok(net) => Ok(net),
        Err(e) => {
            remove_network(network, netns).await;
            Err(network_err(e))
        }
    }
}

/// Removes a capsule network (logging a failure: the next sweep retries).
pub(crate) async fn remove_network(network: &Network, netns: &str) {
    if let Err(e) = network.remove(netns).await {
        tracing::warn!(netns, "removing a capsule network: {}", error_chain(&e));
    }
}

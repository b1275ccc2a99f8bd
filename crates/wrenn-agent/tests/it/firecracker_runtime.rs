//! The Firecracker runtime and its machines against the real Firecracker v1.12.1 and
//! the default image's kernel.
//!
//! This host is itself a VM without usable nested virtualisation: KVM runs guest code
//! about a thousand times slower than native, so a Linux guest never gets through its
//! boot here. What runs here: the KVM probe (which must say so), a create failing with
//! that reason and leaving nothing, a boot timeout's cleanup, bad input, and a real
//! Linux guest snapshotted mid-boot and restored in another directory (the relative
//! drive paths that make snapshots relocatable). The full lifecycle test runs only
//! where the probe finds that KVM boots guests; here it says why it stops.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use wrenn_agent::runtime::firecracker::api::{ActionType, SnapshotCreateParams, SnapshotType};
use wrenn_agent::runtime::firecracker::diff;
use wrenn_agent::runtime::firecracker::jailer::{CgroupSetting, CgroupVersion, JailerConfig};
use wrenn_agent::runtime::firecracker::machine::{
    self, LoadBackend, Machine, MachineSpec, Saved, Snapshot,
};
use wrenn_agent::runtime::firecracker::runtime::{JAIL_CGROUP, JAIL_DIR, JailOptions, kvm_boots};
use wrenn_agent::runtime::firecracker::vmm::{Launcher, VmmOptions};
use wrenn_agent::runtime::firecracker::{FirecrackerRuntime, FirecrackerRuntimeOptions, KvmCheck};
use wrenn_agent::runtime::vm::guest;
use wrenn_agent::runtime::{Runtime, RuntimeError, SandboxConfig};
use wrenn_core::id::{BUILTIN_TEMPLATE_ID, PLATFORM_TEAM_ID, SandboxId};
use wrenn_core::layout::Layout;

use crate::common::{envd_binary, test_image};
use crate::firecracker::{chain, firecracker_bin, jailer_bin};

/// A Firecracker runtime over a fresh `$WRENN_DIR`.
struct Host {
    runtime: Arc<FirecrackerRuntime>,
    layout: Layout,
    _dir: tempfile::TempDir,
}

impl Host {
    async fn with(options: FirecrackerRuntimeOptions) -> Self {
        let (envd, image) = tokio::task::spawn_blocking(|| (envd_binary(), test_image()))
            .await
            .unwrap();
        let dir = tempfile::Builder::new().prefix("wr").tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let runtime = FirecrackerRuntime::new(
            layout.clone(),
            envd,
            FirecrackerRuntimeOptions {
                image: Some(image),
                firecracker: Some(firecracker_bin()),
                ..options
            },
        )
        .await
        .expect("the Firecracker runtime starts (it needs root and the capsule network)");
        Self {
            runtime: Arc::new(runtime),
            layout,
            _dir: dir,
        }
    }

    /// Nothing of capsule `id` is left: no VMM, no network namespace, no directory.
    fn assert_nothing_left_of(&self, id: SandboxId) {
        assert!(
            vmms_of(&id.to_string()).is_empty(),
            "a Firecracker of {id} still runs"
        );
        assert!(
            !Path::new("/run/netns")
                .join(FirecrackerRuntime::netns_name(id))
                .exists(),
            "the network namespace of {id} is left"
        );
        assert!(
            !self.layout.sandbox_dir(id).exists(),
            "the directory of {id} is left"
        );
    }
}

fn config(vcpus: u32, memory_mb: u32) -> SandboxConfig {
    SandboxConfig {
        id: SandboxId::new(),
        team_id: PLATFORM_TEAM_ID,
        template_team_id: PLATFORM_TEAM_ID,
        template_id: BUILTIN_TEMPLATE_ID,
        vcpus,
        memory_mb,
        disk_size_mb: 2048,
        default_user: String::new(),
        default_env: Default::default(),
    }
}

/// Pids of Firecracker processes started with `--id {id}`.
fn vmms_of(id: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let named = args
            .windows(2)
            .any(|w| w[0] == b"--id" && w[1] == id.as_bytes());
        if named && args.first().is_some_and(|a| a.ends_with(b"firecracker")) {
            found.push(pid);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firecracker_runtime_probes_kvm_and_a_create_it_cannot_serve_fails_with_the_reason() {
    let host = Host::with(FirecrackerRuntimeOptions::default()).await;
    let sandbox = config(1, 256);
    match host.runtime.kvm() {
        Err(why) => {
            eprintln!("KVM does not boot guests on this host: {why}");
            assert!(why.contains("printed nothing"), "{why}");
            let err = host.runtime.create(&sandbox).await.unwrap_err();
            assert!(matches!(err, RuntimeError::Unsupported(_)), "{err:?}");
            let message = err.to_string();
            assert!(
                message.contains("KVM does not boot guests here") && message.contains(why),
                "{message}"
            );
            host.assert_nothing_left_of(sandbox.id);
            // The answer is kept: a second runtime on this directory does not probe.
            let cached = std::fs::read_dir(guest::vm_dir(&host.layout))
                .unwrap()
                .flatten()
                .any(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("firecracker-kvm-")
                });
            assert!(cached, "the probe's answer is not kept");
        }
        Ok(()) => full_lifecycle(&host, sandbox).await,
    }
}

/// Where KVM boots guests: create, pause, resume, hibernate, restore, destroy.
async fn full_lifecycle(host: &Host, sandbox: SandboxConfig) {
    let runtime = &host.runtime;
    let instance = runtime.create(&sandbox).await.expect("create");
    assert_eq!(instance.metadata["runtime"], "firecracker");
    runtime.pause(&instance).await.expect("pause");
    runtime.resume(&instance).await.expect("resume");
    runtime.hibernate(&instance).await.expect("hibernate");
    let restored = runtime.restore(&sandbox).await.expect("restore");
    runtime.destroy(restored.id).await.expect("destroy");
    host.assert_nothing_left_of(sandbox.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firecracker_runtime_boot_timeout_ends_in_an_error_with_the_console_and_no_leftovers() {
    // Taken as booting (`WRENN_VM_ACCEL=kvm`), with no time to boot: the guest is
    // started for real and given up on.
    let host = Host::with(FirecrackerRuntimeOptions {
        kvm: KvmCheck::Assume,
        boot_timeout: Duration::from_millis(300),
        ..FirecrackerRuntimeOptions::default()
    })
    .await;
    let sandbox = config(1, 256);
    let err = host.runtime.create(&sandbox).await.unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("did not start") && message.contains("envd did not answer"),
        "{message}"
    );
    assert!(message.contains("console:"), "{message}");
    let image_dir = test_image().dir.display().to_string();
    for host_path in [host.layout.root().display().to_string(), image_dir] {
        assert!(!message.contains(&host_path), "host paths in {message}");
    }
    host.assert_nothing_left_of(sandbox.id);
    // The id is free again.
    let again = host.runtime.create(&sandbox).await.unwrap_err();
    assert!(chain(&again).contains("did not start"), "{again}");
    host.assert_nothing_left_of(sandbox.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firecracker_runtime_refuses_bad_input_and_a_missing_binary() {
    let host = Host::with(FirecrackerRuntimeOptions {
        kvm: KvmCheck::Assume,
        ..FirecrackerRuntimeOptions::default()
    })
    .await;
    for (vcpus, memory_mb, says) in [
        (0, 256, "vcpus must be 1 to 32"),
        (33, 256, "vcpus must be 1 to 32"),
        (1, 64, "at least 128 MiB"),
    ] {
        let sandbox = config(vcpus, memory_mb);
        let err = host.runtime.create(&sandbox).await.unwrap_err();
        assert!(
            matches!(&err, RuntimeError::FailedPrecondition(m) if m.contains(says)),
            "{err:?}"
        );
        host.assert_nothing_left_of(sandbox.id);
    }
    let mut unknown_template = config(1, 256);
    unknown_template.template_id = wrenn_core::id::TemplateId::new();
    let err = host.runtime.create(&unknown_template).await.unwrap_err();
    assert!(matches!(err, RuntimeError::TemplateNotFound(_)), "{err:?}");
    host.assert_nothing_left_of(unknown_template.id);

    let dir = tempfile::tempdir().unwrap();
    let missing = FirecrackerRuntime::new(
        Layout::new(dir.path()),
        envd_binary(),
        FirecrackerRuntimeOptions {
            image: Some(test_image()),
            firecracker: Some(PathBuf::from("/nonexistent/firecracker")),
            ..FirecrackerRuntimeOptions::default()
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&missing, RuntimeError::Unsupported(m) if m.contains("/nonexistent/firecracker")),
        "{missing:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firecracker_machine_snapshot_of_a_booting_linux_guest_restores_in_another_directory() {
    let (envd, image) = tokio::task::spawn_blocking(|| (envd_binary(), test_image()))
        .await
        .unwrap();
    let scratch = tempfile::Builder::new().prefix("wr").tempdir().unwrap();
    let vm = scratch.path().join("vm");
    let (files, _) = guest::prepare(&vm, &envd, &image).unwrap();
    let spec_in = |dir: &Path, id: &str| MachineSpec {
        id: id.to_owned(),
        launcher: Launcher::Direct {
            firecracker: firecracker_bin(),
            netns: None,
        },
        dir: dir.to_owned(),
        kernel: image.vmlinux().expect("the image's vmlinux"),
        initrd: files.initrd.clone(),
        cmdline: "console=ttyS0 reboot=k panic=-1 pci=off".into(),
        envd_disk: files.envd_disk.clone(),
        vcpus: 1,
        memory_mb: 128,
        network: false,
        metadata: None,
    };
    let first = scratch.path().join("first");
    std::fs::create_dir(&first).unwrap();
    wrenn_agent::runtime::vm::disk::create_raw_copy(
        &image.ext4(),
        &first.join(machine::DISK_FILE),
        2048,
    )
    .unwrap();
    let id = crate::firecracker::unique("fc-machine");
    let booted = Machine::boot(&spec_in(&first, &id)).await.expect("boot");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let saved_to = Snapshot::in_dir(&first);
    let saved = booted
        .save(&saved_to)
        .await
        .map_err(|(_, e)| e)
        .expect("save");
    assert_eq!(saved, Saved::Full);
    assert!(saved_to.exists(), "the snapshot files are written");
    assert!(vmms_of(&id).is_empty(), "the saved VM's VMM is gone");

    // Another directory holding the same file names: the snapshot names its drives
    // relatively, so it restores there (the first directory is gone) — with the
    // memory file mapped by Firecracker, then served page by page by the agent.
    let mut previous = first;
    for (step, backend) in [("second", LoadBackend::File), ("third", LoadBackend::Uffd)] {
        let dir = scratch.path().join(step);
        std::fs::rename(&previous, &dir).unwrap();
        let mut restored = Machine::load(&spec_in(&dir, &id), &Snapshot::in_dir(&dir), backend)
            .await
            .unwrap_or_else(|e| panic!("load in {step} with {backend:?}: {}", chain(&e)));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            restored.exited(),
            None,
            "the VM restored with {backend:?} runs"
        );
        assert_eq!(vmms_of(&id), vec![restored.pid()]);
        match backend {
            LoadBackend::File => assert!(restored.uffd_stats().is_none()),
            LoadBackend::Uffd => {
                let served = restored.uffd_stats().expect("a page-fault handler");
                assert!(
                    served.faults > 0,
                    "the guest's pages are served: {served:?}"
                );
                assert!(
                    !dir.join(machine::UFFD_SOCKET).exists(),
                    "the handler's socket goes once Firecracker is connected"
                );
            }
        }
        restored.stop().await.expect("stop");
        assert!(vmms_of(&id).is_empty());
        assert!(
            !dir.join(machine::API_SOCKET).exists(),
            "the API socket is removed"
        );
        previous = dir;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firecracker_machine_diff_snapshots_merged_onto_their_base_equal_a_full_snapshot() {
    let (scratch, spec) = capsule_machine("fc-diff", |_| Launcher::Direct {
        firecracker: firecracker_bin(),
        netns: None,
    })
    .await;
    let (id, dir) = (spec.id.clone(), spec.dir.clone());
    let snapshot = Snapshot::in_dir(&dir);
    let booted = Machine::boot(&spec).await.expect("boot");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let saved = booted
        .save(&snapshot)
        .await
        .map_err(|(_, e)| e)
        .expect("save");
    assert_eq!(saved, Saved::Full, "a booted VM's first save is full");

    for backend in [LoadBackend::Uffd, LoadBackend::File] {
        let restored = Machine::load(&spec, &snapshot, backend)
            .await
            .unwrap_or_else(|e| panic!("load with {backend:?}: {}", chain(&e)));
        tokio::time::sleep(Duration::from_millis(400)).await;
        // Paused: a diff, then Firecracker's own full snapshot of the same memory.
        let client = restored.client().clone();
        client.pause().await.expect("pause");
        let (diff, full) = (scratch.path().join("t.diff"), scratch.path().join("t.full"));
        for (kind, memory) in [(SnapshotType::Diff, &diff), (SnapshotType::Full, &full)] {
            client
                .create_snapshot(&SnapshotCreateParams {
                    snapshot_type: kind,
                    snapshot_path: scratch.path().join("t.state"),
                    mem_file_path: memory.clone(),
                })
                .await
                .unwrap_or_else(|e| panic!("{kind:?} snapshot with {backend:?}: {}", chain(&e)));
        }
        let allocated = |p: &Path| std::os::unix::fs::MetadataExt::blocks(&p.metadata().unwrap());
        assert!(
            allocated(&diff) < allocated(&full) / 4,
            "a diff holds only written pages ({} of {} blocks)",
            allocated(&diff),
            allocated(&full)
        );
        let merged = diff::merge(&diff, &snapshot.memory).expect("merge");
        assert!(merged.bytes > 0, "the guest wrote pages: {merged:?}");
        assert!(
            std::fs::read(&snapshot.memory).unwrap() == std::fs::read(&full).unwrap(),
            "base + diff is the VM's memory ({backend:?})"
        );
        for file in [&diff, &full] {
            std::fs::remove_file(file).unwrap();
        }
        client.resume().await.expect("resume");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let restored = if backend == LoadBackend::Uffd {
            a_failed_save_keeps_the_vm_and_the_snapshot(restored, &spec, &snapshot).await
        } else {
            restored
        };

        // The runtime's path: a save into the snapshot it was loaded from is a diff.
        let saved = restored
            .save(&snapshot)
            .await
            .map_err(|(_, e)| e)
            .expect("save");
        assert!(
            matches!(saved, Saved::Diff { bytes } if bytes > 0),
            "{saved:?} ({backend:?})"
        );
        assert!(!dir.join(machine::NEW_MEMORY_FILE).exists());
        assert!(vmms_of(&id).is_empty(), "the saved VM's VMM is gone");
    }
    // The merged memory restores.
    let mut again = Machine::load(&spec, &snapshot, LoadBackend::File)
        .await
        .unwrap_or_else(|e| panic!("load the merged memory: {}", chain(&e)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(again.exited(), None, "the merged snapshot runs");
    again.stop().await.expect("stop");
}

/// A scratch directory with the guest files and a capsule directory (`capsule/`, with a
/// copy of the image's disk), and the spec of a 1-vCPU, 128 MiB machine there that
/// `launcher` (given the scratch directory) starts.
async fn capsule_machine(
    prefix: &str,
    launcher: impl FnOnce(&Path) -> Launcher,
) -> (tempfile::TempDir, MachineSpec) {
    let (envd, image) = tokio::task::spawn_blocking(|| (envd_binary(), test_image()))
        .await
        .unwrap();
    let scratch = tempfile::Builder::new().prefix("wr").tempdir().unwrap();
    let (files, _) = guest::prepare(&scratch.path().join("vm"), &envd, &image).unwrap();
    let dir = scratch.path().join("capsule");
    std::fs::create_dir(&dir).unwrap();
    wrenn_agent::runtime::vm::disk::create_raw_copy(
        &image.ext4(),
        &dir.join(machine::DISK_FILE),
        2048,
    )
    .unwrap();
    let spec = MachineSpec {
        id: crate::firecracker::unique(prefix),
        launcher: launcher(scratch.path()),
        dir,
        kernel: image.vmlinux().expect("the image's vmlinux"),
        initrd: files.initrd.clone(),
        cmdline: "console=ttyS0 reboot=k panic=-1 pci=off".into(),
        envd_disk: files.envd_disk.clone(),
        vcpus: 1,
        memory_mb: 128,
        network: false,
        metadata: None,
    };
    (scratch, spec)
}

/// A save Firecracker cannot write (its memory file's name is taken by a directory)
/// leaves the VM running and the snapshot on disk as it was; the failed diff cleared
/// the dirty pages, so the next save is full. Gives back the VM loaded again from it.
async fn a_failed_save_keeps_the_vm_and_the_snapshot(
    restored: Machine,
    spec: &MachineSpec,
    snapshot: &Snapshot,
) -> Machine {
    let blocker = spec.dir.join(machine::NEW_MEMORY_FILE);
    std::fs::create_dir(&blocker).unwrap();
    let (memory_before, state_before) = (
        std::fs::read(&snapshot.memory).unwrap(),
        std::fs::read(&snapshot.state).unwrap(),
    );
    let (mut restored, e) = restored.save(snapshot).await.expect_err("a failed save");
    assert!(chain(&e).contains("Firecracker API"), "{}", chain(&e));
    assert_eq!(
        restored.exited(),
        None,
        "the VM runs on after a failed save"
    );
    assert!(std::fs::read(&snapshot.memory).unwrap() == memory_before);
    assert!(std::fs::read(&snapshot.state).unwrap() == state_before);
    std::fs::remove_dir(&blocker).unwrap();
    let saved = restored
        .save(snapshot)
        .await
        .map_err(|(_, e)| e)
        .expect("save");
    assert_eq!(saved, Saved::Full, "the save after a failed diff");
    let again = Machine::load(spec, snapshot, LoadBackend::Uffd)
        .await
        .unwrap_or_else(|e| panic!("load after a full save: {}", chain(&e)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    again
}

/// Uid and gid of process `pid`, and what its `/` holds.
fn confinement(pid: u32) -> (String, Vec<String>) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let ids = status
        .lines()
        .filter(|l| l.starts_with("Uid:") || l.starts_with("Gid:"))
        .collect::<Vec<_>>()
        .join(" ");
    (ids, names_in(Path::new(&format!("/proc/{pid}/root"))))
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firecracker_machine_in_a_jail_boots_saves_a_full_then_a_diff_snapshot_and_restores() {
    let parent_cgroup = crate::firecracker::unique("fct-test");
    let (_scratch, spec) = capsule_machine("fc-jailed", |scratch| {
        let mut jail = JailerConfig::new(
            jailer_bin(),
            firecracker_bin(),
            65534,
            65534,
            scratch.join("jail"),
        );
        jail.cgroup_version = CgroupVersion::of_host();
        jail.parent_cgroup = Some(parent_cgroup.clone());
        jail.cgroups = vec![match jail.cgroup_version {
            CgroupVersion::V1 => CgroupSetting::new("cpu.cfs_quota_us", "200000"),
            CgroupVersion::V2 => CgroupSetting::new("cpu.max", "200000 100000"),
        }];
        Launcher::Jailed(jail)
    })
    .await;
    let Launcher::Jailed(jail) = spec.launcher.clone() else {
        unreachable!("a jailed launcher")
    };
    let (id, dir) = (spec.id.clone(), spec.dir.clone());
    let root = jail.root_dir(&id);
    let assert_jailed = |pid: u32, what: &str| {
        let (ids, proc_root) = confinement(pid);
        assert_eq!(
            ids, "Uid:\t65534\t65534\t65534\t65534 Gid:\t65534\t65534\t65534\t65534",
            "{what}"
        );
        // Pivoted into its jail (in a mount namespace of its own): its `/` is the
        // jail's root, where nothing of the host is.
        assert_eq!(proc_root, names_in(&root), "{what} runs in its jail");
        assert!(
            !proc_root.iter().any(|n| n == "etc" || n == "usr"),
            "{proc_root:?}"
        );
        let mnt = |p: String| std::fs::read_link(p).unwrap();
        assert_ne!(
            mnt(format!("/proc/{pid}/ns/mnt")),
            mnt("/proc/self/ns/mnt".into()),
            "{what} has a mount namespace of its own"
        );
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(
            cgroups.contains(&format!("/{parent_cgroup}/{id}")),
            "{what}: {cgroups}"
        );
    };
    let assert_no_jail = |what: &str| {
        assert!(
            !jail.chroot_dir(&id).exists(),
            "the jail is left after {what}"
        );
        for cgroup in jail.cgroup_dirs(&id) {
            assert!(
                !cgroup.exists(),
                "{} is left after {what}",
                cgroup.display()
            );
        }
        assert!(vmms_of(&id).is_empty(), "a VMM runs after {what}");
    };
    let snapshot = Snapshot::in_dir(&dir);

    let booted = Machine::boot(&spec)
        .await
        .unwrap_or_else(|e| panic!("boot in the jail: {}", chain(&e)));
    assert_jailed(booted.pid(), "the booted VMM");
    // The capsule's disk is the same file, given to the jail's user; the kernel is
    // staged read-only.
    let disk = std::fs::metadata(dir.join(machine::DISK_FILE)).unwrap();
    assert_eq!(
        std::fs::metadata(root.join(machine::DISK_FILE))
            .unwrap()
            .ino(),
        disk.ino()
    );
    assert_eq!((disk.uid(), disk.gid()), (65534, 65534));
    assert!(root.join(machine::KERNEL_FILE).is_file());
    // Metrics come through the pipe in the jail.
    booted
        .client()
        .action(ActionType::FlushMetrics)
        .await
        .unwrap_or_else(|e| panic!("FlushMetrics: {}", chain(&e)));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while booted.metrics().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "no metrics from the jail"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let saved = booted
        .save(&snapshot)
        .await
        .map_err(|(_, e)| e)
        .expect("save");
    assert_eq!(saved, Saved::Full);
    assert!(snapshot.exists(), "the snapshot moved out of the jail");
    assert_no_jail("a save");

    let restored = Machine::load(&spec, &snapshot, LoadBackend::Uffd)
        .await
        .unwrap_or_else(|e| panic!("load in a jail with Uffd: {}", chain(&e)));
    assert_jailed(restored.pid(), "the restored VMM");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(restored.uffd_stats().expect("a handler").faults > 0);
    let saved = restored
        .save(&snapshot)
        .await
        .map_err(|(_, e)| e)
        .expect("save");
    assert!(
        matches!(saved, Saved::Diff { bytes } if bytes > 0),
        "{saved:?}"
    );
    assert_no_jail("a diff save");

    let mut again = Machine::load(&spec, &snapshot, LoadBackend::File)
        .await
        .unwrap_or_else(|e| panic!("load in a jail with File: {}", chain(&e)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(again.exited(), None, "the merged snapshot runs in a jail");
    again.stop().await.expect("stop");
    assert_no_jail("a stop");
    for cgroup in jail.cgroup_dirs(&id) {
        std::fs::remove_dir(cgroup.parent().unwrap()).expect("remove the test's parent cgroup");
    }
}

fn jailed_options() -> FirecrackerRuntimeOptions {
    FirecrackerRuntimeOptions {
        kvm: KvmCheck::Assume,
        boot_timeout: Duration::from_millis(300),
        jail: Some(JailOptions {
            jailer: Some(jailer_bin()),
            uid: 65534,
            gid: 65534,
        }),
        ..FirecrackerRuntimeOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firecracker_runtime_jailed_boot_timeout_leaves_no_jail_cgroup_or_process() {
    let host = Host::with(jailed_options()).await;
    let sandbox = config(1, 256);
    let err = host.runtime.create(&sandbox).await.unwrap_err();
    let message = err.to_string();
    assert!(message.contains("did not start"), "{message}");
    assert!(
        !message.contains(&host.layout.root().display().to_string()),
        "host paths in {message}"
    );
    host.assert_nothing_left_of(sandbox.id);
    let id = sandbox.id.to_string();
    assert!(
        !host
            .layout
            .root()
            .join(JAIL_DIR)
            .join("firecracker")
            .join(&id)
            .exists(),
        "the jail of {id} is left"
    );
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    for line in mounts.lines().filter(|l| l.contains(" cgroup")) {
        let mount = line.split_whitespace().nth(1).unwrap();
        let cgroup = Path::new(mount).join(JAIL_CGROUP).join(&id);
        assert!(!cgroup.exists(), "{} is left", cgroup.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firecracker_runtime_sweep_kills_a_jailed_vmm_that_outlived_its_agent() {
    let host = Host::with(jailed_options()).await;
    // A VMM an earlier agent jailed: not this runtime's child, still running.
    let orphan = SandboxId::new().to_string();
    let base = host.layout.root().join(JAIL_DIR);
    let jail = JailerConfig::new(jailer_bin(), firecracker_bin(), 65534, 65534, &base);
    let mut jailer = std::process::Command::new(jailer_bin())
        .args(jail.args(
            &orphan,
            &VmmOptions::jailed(&orphan).firecracker_args(false),
        ))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the jailer");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let pid = loop {
        if let Some(pid) = jail.running_pid(&orphan) {
            break pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the jailed VMM did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(pid, jailer.id() as i32, "the jailer became Firecracker");

    host.runtime.sweep(&[]).await.expect("sweep");
    let status = jailer.wait().expect("reap");
    assert!(!status.success(), "the orphan was killed: {status}");
    assert!(
        !jail.chroot_dir(&orphan).exists(),
        "the orphan's jail is left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firecracker_kvm_probe_reports_what_a_guest_did() {
    let image = tokio::task::spawn_blocking(test_image).await.unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let kernel = image.vmlinux().expect("the image's vmlinux");
    // A file that is no kernel: Firecracker refuses to start it, and the probe says so.
    let bogus = scratch.path().join("not-a-kernel");
    std::fs::write(&bogus, b"not an ELF file").unwrap();
    let why = kvm_boots(&firecracker_bin(), &bogus, scratch.path())
        .await
        .unwrap_err();
    assert!(
        why.contains("starting a guest") && why.contains("elf"),
        "{why}"
    );
    // The real kernel: here it prints nothing in time; where KVM works, its banner.
    match kvm_boots(&firecracker_bin(), &kernel, scratch.path()).await {
        Ok(()) => eprintln!("KVM boots guests on this host"),
        Err(why) => assert!(why.contains("printed nothing"), "{why}"),
    }
    assert!(
        std::fs::read_dir(scratch.path())
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().ends_with(".sock")),
        "the probe's API socket is left"
    );
}

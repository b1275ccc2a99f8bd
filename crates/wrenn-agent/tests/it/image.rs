//! The image pipeline, for real: debootstrap, chroot, mkfs.ext4, the kernel package.
//! Needs root and network access to a Debian mirror.
//!
//! `image_default_*` use the machine-wide test image (`$WRENN_IMAGE_CACHE`, default
//! `/var/cache/wrenn/test-images`, built on first use); `image_store_*` build a small
//! recipe in a fresh store.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use sha2::Digest;

use wrenn_agent::image::manifest::sha256_file;
use wrenn_agent::image::store::{BUILDS_DIR, STAGING_PREFIX};
use wrenn_agent::image::{self, BuildOptions, LogProgress, Recipe, Store};
use wrenn_agent::runtime::vm::{self, initramfs};

/// The test VMs' disk size: larger than the image, so the guest grows its file system.
const GUEST_DISK_MB: u64 = 2048;

fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_test_writer()
        .try_init();
}

fn output(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn image_default_manifest_matches_the_build() {
    init_logging();
    let image = image::ensure_shared_for_tests().expect("default image");
    let m = &image.manifest;
    assert_eq!(m.hash, Recipe::default_for_host().hash());
    assert_eq!(m.recipe, Recipe::default_for_host());
    let rootfs = image.rootfs();
    for wanted in ["sudo", "git", "python3", "python3-pip", "curl", "bash"] {
        let listed = m
            .packages
            .iter()
            .find(|p| p.name == wanted)
            .unwrap_or_else(|| panic!("{wanted} not in the manifest"));
        let installed = output(Command::new("chroot").arg(&rootfs).args([
            "dpkg-query",
            "-W",
            "-f",
            "${Version}",
            wanted,
        ]));
        assert_eq!(listed.version, installed, "{wanted}");
    }
    assert!(!m.packages.iter().any(|p| p.name.starts_with("linux-image")));
    assert_eq!(sha256_file(&image.ext4()).unwrap(), m.ext4.sha256);
    assert_eq!(std::fs::metadata(image.ext4()).unwrap().len(), m.ext4.bytes);
    assert!(m.rootfs_bytes > 100 << 20, "{}", m.rootfs_bytes);
    // Nothing half-built is left next to it.
    let staging = std::fs::read_dir(image.dir.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(STAGING_PREFIX))
        .count();
    assert_eq!(staging, 0);
}

#[test]
fn image_default_tree_is_the_sdk_environment() {
    init_logging();
    let image = image::ensure_shared_for_tests().expect("default image");
    let root = image.rootfs();
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(
        passwd
            .lines()
            .any(|l| l == "wrenn-user:x:1000:1000:Wrenn:/home/wrenn-user:/bin/bash"),
        "{passwd}"
    );
    let sudoers = std::fs::read_to_string(root.join("etc/sudoers.d/wrenn-user")).unwrap();
    assert_eq!(sudoers.trim(), "wrenn-user ALL=(ALL:ALL) NOPASSWD:ALL");
    let home = std::fs::metadata(root.join("home/wrenn-user")).unwrap();
    assert!(home.is_dir());
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&home), 1000);
    let sources = std::fs::read_to_string(root.join("etc/apt/sources.list")).unwrap();
    assert!(sources.contains("bookworm-security"), "{sources}");
    // `apt-get install` works without an update first: the lists are there.
    let lists = std::fs::read_dir(root.join("var/lib/apt/lists"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with("_Packages"))
        .count();
    assert!(lists >= 2, "apt lists missing");
    let policy = std::fs::read_to_string(root.join("usr/sbin/policy-rc.d")).unwrap();
    assert!(policy.contains("exit 101"));
    let os = std::fs::read_to_string(root.join("etc/os-release")).unwrap();
    assert!(os.contains("bookworm"), "{os}");
    for tool in [
        "usr/bin/git",
        "usr/bin/python3",
        "usr/bin/sudo",
        "usr/bin/curl",
    ] {
        assert!(root.join(tool).exists(), "{tool}");
    }
    // No leftover of the kernel download or the build's package cache.
    assert!(!root.join("var/tmp/wrenn-kernel").exists());
    let debs = std::fs::read_dir(root.join("var/cache/apt/archives"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".deb"))
        .count();
    assert_eq!(debs, 0);
}

#[test]
fn image_default_ext4_is_clean_and_holds_the_home() {
    init_logging();
    let image = image::ensure_shared_for_tests().expect("default image");
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(image.ext4())
        .output()
        .unwrap();
    assert!(fsck.status.success(), "e2fsck: {fsck:?}");
    let ls = output(
        Command::new("debugfs")
            .args(["-R", "ls -l /home"])
            .arg(image.ext4()),
    );
    assert!(ls.contains("wrenn-user"), "{ls}");
    assert!(ls.contains(" 1000 "), "owned by 1000: {ls}");
    // Sparse: far fewer blocks allocated than its length would take.
    let meta = std::fs::metadata(image.ext4()).unwrap();
    let allocated = std::os::unix::fs::MetadataExt::blocks(&meta) * 512;
    assert!(allocated < meta.len(), "{allocated} of {}", meta.len());
}

#[test]
fn image_default_kernel_is_an_elf_vmlinux_with_modules() {
    init_logging();
    let image = image::ensure_shared_for_tests().expect("default image");
    let kernel = image.manifest.kernel.as_ref().expect("kernel artefacts");
    assert!(
        kernel.package.starts_with("linux-image-"),
        "{}",
        kernel.package
    );
    let vmlinux = image.vmlinux().unwrap();
    let head = std::fs::read(&vmlinux).unwrap();
    assert_eq!(&head[..4], b"\x7fELF");
    assert_eq!(head[4], 2, "64-bit ELF");
    assert_eq!(sha256_file(&vmlinux).unwrap(), kernel.vmlinux.sha256);
    assert_eq!(
        sha256_file(&image.vmlinuz().unwrap()).unwrap(),
        kernel.vmlinuz.sha256
    );
    let modules = image.dir.join(&kernel.modules);
    assert!(modules.join("modules.order").is_file());
    assert!(modules.join("kernel").is_dir());
    assert!(modules.ends_with(&kernel.release));
    // The kernel release is in the uncompressed image.
    let needle = format!("Linux version {}", kernel.release);
    assert!(
        head.windows(needle.len()).any(|w| w == needle.as_bytes()),
        "no {needle:?} in vmlinux"
    );
}

/// A program on `PATH`.
fn on_path(program: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// A VM of the default image under QEMU (TCG: this host cannot run guests under KVM):
/// the image's kernel, the initramfs made from the build's modules and busybox, a
/// qcow2 overlay of `rootfs.ext4` as the root disk, the serial console in a file and
/// QMP on a socket. `None` when QEMU is not installed (a failure where the tests must
/// not skip: `WRENN_TEST_REQUIRE_SERVICES`).
struct TestVm {
    qemu: std::path::PathBuf,
    image: image::BuiltImage,
    dir: tempfile::TempDir,
    initrd: std::path::PathBuf,
    disk: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl TestVm {
    fn new() -> Option<Self> {
        let Some(qemu) = on_path("qemu-system-x86_64") else {
            assert!(
                std::env::var_os("WRENN_TEST_REQUIRE_SERVICES").is_none(),
                "qemu-system-x86_64 is missing (Debian: apt-get install qemu-system-x86)"
            );
            eprintln!("SKIPPED: qemu-system-x86_64 is not installed");
            return None;
        };
        let image = image::ensure_shared_for_tests().expect("default image");
        let busybox = image.busybox().expect("the build has a static busybox");
        assert_eq!(
            sha256_file(&busybox).unwrap(),
            image
                .manifest
                .kernel
                .as_ref()
                .unwrap()
                .busybox
                .as_ref()
                .unwrap()
                .sha256
        );
        let dir = tempfile::tempdir().unwrap();
        let initrd = dir.path().join("initramfs.cpio");
        initramfs::build(&image.modules().unwrap(), &busybox, &initrd).unwrap();
        let disk = dir.path().join("root.qcow2");
        let qemu_img = on_path("qemu-img").expect("qemu-img (Debian: qemu-utils)");
        vm::disk::create_overlay(&qemu_img, &image.ext4(), "raw", &disk, GUEST_DISK_MB).unwrap();
        let made = vm::disk::info(&qemu_img, &disk).unwrap();
        assert_eq!(
            (made.format.as_str(), made.virtual_size),
            ("qcow2", GUEST_DISK_MB << 20)
        );
        assert!(matches!(
            vm::disk::create_overlay(
                &qemu_img,
                &image.ext4(),
                "raw",
                &dir.path().join("small"),
                16
            ),
            Err(vm::disk::DiskError::TooSmall { .. })
        ));
        Some(Self {
            qemu,
            image,
            dir,
            initrd,
            disk,
            child: None,
        })
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// Starts QEMU with `wrenn.init=init`, the console in `serial`; `incoming` starts
    /// it waiting for its state (`-incoming defer`).
    fn start(&mut self, init: &str, serial: &str, incoming: bool) {
        let mut cmd = Command::new(&self.qemu);
        cmd.args([
            "-M", "microvm", "-accel", "tcg", "-cpu", "max", "-m", "256", "-smp", "1",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(self.image.vmlinuz().unwrap())
        .arg("-initrd")
        .arg(&self.initrd)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 {} wrenn.root=/dev/vda wrenn.grow=1 wrenn.init={init}",
            vm::accel::guest_clock_args(vm::accel::Accel::Tcg)
        ))
        .arg("-drive")
        .arg(format!(
            "id=root,file={},format=qcow2,if=none",
            self.disk.display()
        ))
        .args(["-device", "virtio-blk-device,drive=root"])
        .arg("-serial")
        .arg(format!("file:{}", self.path(serial).display()))
        .arg("-qmp")
        .arg(format!(
            "unix:{},server=on,wait=off",
            self.path("qmp.sock").display()
        ))
        .stdin(std::process::Stdio::null());
        if incoming {
            cmd.args(["-incoming", "defer"]);
        }
        let _ = std::fs::remove_file(self.path("qmp.sock"));
        self.child = Some(cmd.spawn().expect("start qemu"));
        assert!(
            wait_for(|| self.path("qmp.sock").exists(), 30),
            "no QMP socket"
        );
    }

    /// Starts QEMU like [`start`](Self::start) and waits until the guest has mounted
    /// its root disk or QEMU has exited. (Under TCG on a busy host the kernel used to
    /// hang calibrating its TSC against the emulated PIT; the clock arguments of
    /// [`vm::accel::guest_clock_args`] tell it the rate instead.)
    fn boot(&mut self, init: &str, serial: &str) {
        self.start(init, serial, false);
        let deadline = Instant::now() + std::time::Duration::from_secs(120);
        loop {
            if self.serial(serial).contains("wrenn-init: root mounted") {
                return;
            }
            let exited = self
                .child
                .as_mut()
                .is_some_and(|c| c.try_wait().ok().flatten().is_some());
            assert!(
                !exited && Instant::now() < deadline,
                "the guest did not mount its root: {}",
                self.tail(serial)
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    fn serial(&self, name: &str) -> String {
        String::from_utf8_lossy(&std::fs::read(self.path(name)).unwrap_or_default()).into_owned()
    }

    /// The last 40 lines of a serial log.
    fn tail(&self, name: &str) -> String {
        let log = self.serial(name);
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Waits up to `secs` for QEMU to exit.
    fn wait_exit(&mut self, secs: u64) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for TestVm {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One TCG guest at a time: two emulated guests booting together on two cores make
/// each slower than the deadlines expect.
static ONE_VM: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn wait_for(check: impl Fn() -> bool, secs: u64) -> bool {
    let deadline = Instant::now() + std::time::Duration::from_secs(secs);
    while !check() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    true
}

/// The image's kernel boots with the initramfs: the virtio modules load, the root disk
/// (a 2 GiB qcow2 overlay of `rootfs.ext4`) mounts, its file system grows to the disk
/// and `switch_root` runs the program named by `wrenn.init=`.
#[test]
fn image_default_kernel_boots_its_initramfs_under_qemu_and_mounts_the_root_disk() {
    init_logging();
    let _one = ONE_VM.blocking_lock();
    let Some(mut vm) = TestVm::new() else {
        return;
    };
    let started = Instant::now();
    // `stat -f /` as PID 1 shows the root file system's size, grown to the disk, and
    // exits: the kernel panics and QEMU (`-no-reboot`) quits.
    vm.boot("/usr/bin/stat,-f,-c,blocks=%b*%S,/", "serial.log");
    let status = vm.wait_exit(180);
    eprintln!("booted in {:?} ({status:?})", started.elapsed());
    let (log, tail) = (vm.serial("serial.log"), vm.tail("serial.log"));
    assert!(log.contains("wrenn-init: modules loaded"), "{tail}");
    assert!(log.contains("wrenn-init: root mounted"), "{tail}");
    assert!(log.contains("wrenn-init: root grown"), "{tail}");
    let size_mb: u64 = log
        .lines()
        .find_map(|l| {
            let (blocks, size) = l.trim().strip_prefix("blocks=")?.split_once('*')?;
            Some((blocks.parse::<u64>().ok()? * size.parse::<u64>().ok()?) >> 20)
        })
        .unwrap_or_else(|| panic!("no size of the root file system: {tail}"));
    assert!(
        size_mb > GUEST_DISK_MB * 9 / 10,
        "the root file system is {size_mb} MiB on a {GUEST_DISK_MB} MiB disk"
    );
    assert!(
        log.contains("Attempted to kill init"),
        "switch_root did not run wrenn.init: {tail}"
    );
    assert!(status.is_some(), "QEMU did not stop: {tail}");
}

/// The numbers `seq` printed on a serial log.
fn numbers(log: &str) -> Vec<u64> {
    log.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// QMP pauses the VM and writes its memory and devices to a file; a new QEMU loads
/// that file and continues: the guest's program (`seq`, counting on the console)
/// carries on from where it was instead of starting again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_vm_memory_snapshot_over_qmp_restores_into_a_new_qemu_that_continues() {
    use wrenn_agent::runtime::vm::qmp::{
        Cont, Migrate, MigrateIncoming, Qmp, QmpError, QueryMigrate, QueryStatus, Quit, Stop,
    };
    init_logging();
    let _one = ONE_VM.lock().await;
    let Some(mut vm) = tokio::task::spawn_blocking(TestVm::new).await.unwrap() else {
        return;
    };
    vm.boot("/usr/bin/seq,1000000000", "before.log");
    let counting = wait_for(|| numbers(&vm.serial("before.log")).len() > 50, 180);
    assert!(
        counting,
        "the guest does not count: {}",
        vm.tail("before.log")
    );
    let mut qmp = Qmp::connect(&vm.path("qmp.sock")).await.unwrap();
    assert_eq!(qmp.execute(&QueryStatus).await.unwrap().status, "running");
    qmp.execute(&Stop).await.unwrap();
    assert_eq!(qmp.execute(&QueryStatus).await.unwrap().status, "paused");
    // The last line may be cut (the rest still in the UART): the largest is whole.
    let last_before = numbers(&vm.serial("before.log")).into_iter().max().unwrap();
    let memory = vm.path("memory");
    let started = Instant::now();
    qmp.execute(&Migrate {
        uri: format!("exec:cat > {}", memory.display()),
    })
    .await
    .unwrap();
    loop {
        let info = qmp.execute(&QueryMigrate).await.unwrap();
        match info.status.as_deref() {
            Some("completed") => break,
            Some("failed" | "cancelled") => panic!("snapshot failed: {info:?}"),
            _ => {
                assert!(started.elapsed().as_secs() < 120, "snapshot never finished");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    let size = std::fs::metadata(&memory).unwrap().len();
    eprintln!(
        "memory snapshot: {} MiB in {:?}",
        size >> 20,
        started.elapsed()
    );
    assert!(size > 1 << 20, "a {size}-byte snapshot");
    // A command that does not fit the VM's state is refused with QEMU's reason.
    let refused = qmp
        .execute(&MigrateIncoming {
            uri: "exec:true".into(),
        })
        .await
        .unwrap_err();
    assert!(matches!(refused, QmpError::Refused { .. }), "{refused:?}");
    let _ = qmp.execute(&Quit).await;
    assert!(vm.wait_exit(30).is_some(), "QEMU did not quit");

    // A new QEMU with the same devices loads the state and goes on.
    let started = Instant::now();
    vm.start("/usr/bin/seq,1000000000", "after.log", true);
    let mut qmp = Qmp::connect(&vm.path("qmp.sock")).await.unwrap();
    qmp.execute(&MigrateIncoming {
        uri: format!("exec:cat {}", memory.display()),
    })
    .await
    .unwrap();
    loop {
        let status = qmp.execute(&QueryStatus).await.unwrap().status;
        if status != "inmigrate" {
            assert_eq!(status, "paused", "after loading the snapshot");
            break;
        }
        assert!(started.elapsed().as_secs() < 120, "restore never finished");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    qmp.execute(&Cont).await.unwrap();
    eprintln!("restored and running in {:?}", started.elapsed());
    let continued = wait_for(|| numbers(&vm.serial("after.log")).len() > 10, 60);
    assert!(
        continued,
        "the restored guest is silent: {}",
        vm.tail("after.log")
    );
    // The first line may be the rest of the one cut before the snapshot.
    let first_after = numbers(&vm.serial("after.log"))[1];
    assert!(
        first_after > last_before && first_after < last_before + 100_000,
        "counting went on from {last_before}? it printed {first_after} first"
    );
    assert!(
        !vm.serial("after.log").contains("wrenn-init"),
        "it booted again"
    );
}

/// A small recipe (no extra packages, no kernel) to exercise the store.
fn small_recipe() -> Recipe {
    let mut r = Recipe::default_for_host();
    r.name = "test-small".into();
    r.packages = vec!["sudo".into()];
    r.kernel_package = None;
    r
}

fn builds_in(store: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(store.join(BUILDS_DIR))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn image_store_builds_once_for_concurrent_callers_ignores_interrupted_builds_and_force_keeps_the_old()
 {
    init_logging();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let store = Store::new(dir.path());
    let recipe = small_recipe();
    // An interrupted build: a staging directory with a tree and even a manifest.
    let stale = dir.path().join(BUILDS_DIR).join(format!(
        "{STAGING_PREFIX}{}-interrupted",
        recipe.short_hash()
    ));
    std::fs::create_dir_all(stale.join("rootfs/etc")).unwrap();
    std::fs::write(stale.join("rootfs/etc/marker"), "half").unwrap();
    std::fs::write(stale.join("manifest.json"), "{}").unwrap();
    assert!(store.current(&recipe).unwrap().is_none());

    let started = Instant::now();
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| s.spawn(|| store.ensure(&recipe, &BuildOptions::default(), &LogProgress)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    eprintln!("3 concurrent ensures: {:?}", started.elapsed());
    let images: Vec<_> = results.into_iter().map(|r| r.expect("build")).collect();
    assert!(images.iter().all(|i| i.dir == images[0].dir));
    let builds = builds_in(dir.path());
    assert_eq!(builds.len(), 1, "one build, no staging left: {builds:?}");
    assert!(!stale.exists());
    assert!(!images[0].rootfs().join("etc/marker").exists());
    assert!(images[0].rootfs().join("usr/bin/sudo").exists());
    assert!(images[0].manifest.kernel.is_none());

    // Later calls reuse it at once.
    let started = Instant::now();
    let again = store
        .ensure(&recipe, &BuildOptions::default(), &LogProgress)
        .unwrap();
    assert_eq!(again.dir, images[0].dir);
    assert!(
        started.elapsed().as_millis() < 500,
        "{:?}",
        started.elapsed()
    );

    // --force builds anew: the link moves to the new build, and the older one stays
    // (templates made on it keep working).
    let forced = store
        .ensure(
            &recipe,
            &BuildOptions {
                force: true,
                ..BuildOptions::default()
            },
            &LogProgress,
        )
        .unwrap();
    assert_ne!(forced.dir, images[0].dir);
    assert_eq!(store.current(&recipe).unwrap().unwrap().dir, forced.dir);
    assert!(images[0].rootfs().join("usr/bin/sudo").exists());
    assert_eq!(builds_in(dir.path()).len(), 2);

    // A changed recipe is another key: not found, so it would be built.
    let mut changed = recipe.clone();
    changed.packages.push("less".into());
    assert!(store.current(&changed).unwrap().is_none());

    // A link to a build whose manifest is broken is not used.
    std::fs::write(forced.dir.join("manifest.json"), "{").unwrap();
    assert!(store.current(&recipe).unwrap().is_none());
}

#[test]
fn image_default_kernel_payload_decompresses_to_the_recorded_vmlinux() {
    init_logging();
    let image = image::ensure_shared_for_tests().expect("default image");
    let kernel = image.manifest.kernel.as_ref().expect("kernel artefacts");
    let bzimage = std::fs::read(image.vmlinuz().unwrap()).unwrap();
    let (payload, method) = wrenn_agent::image::kernel::payload(&bzimage).unwrap();
    assert_eq!(method, kernel.compression);
    if method == "lz4" {
        let vmlinux = wrenn_agent::image::lz4::decompress_legacy(payload).unwrap();
        let digest = hex::encode(sha2::Sha256::digest(&vmlinux));
        assert_eq!(digest, kernel.vmlinux.sha256);
        // The same bytes as the reference tool, when the host has it.
        if let Ok(out) = Command::new("lz4")
            .args(["-dc"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                let mut stdin = child.stdin.take().unwrap();
                let data = payload.to_vec();
                let writer = std::thread::spawn(move || stdin.write_all(&data));
                let out = child.wait_with_output();
                let _ = writer.join();
                out
            })
        {
            assert_eq!(out.stdout.len(), vmlinux.len());
            assert_eq!(out.stdout, vmlinux);
        }
    }
}

//! A disk through its capsule's life: hibernate and restore, snapshots into templates,
//! destroy, and the sweep after a crash.

use std::process::Command;
use std::time::Instant;

use super::df_root;
use crate::process_runtime::{
    Host, MIB, Sandbox, assert_nothing_left_in_removing, config, loops_under, mounts_under, run,
    sized, wait_until,
};
use wrenn_agent::disk;
use wrenn_agent::runtime::Runtime;
use wrenn_agent::runtime::process::template;
use wrenn_core::id::{BUILTIN_TEMPLATE_ID, PLATFORM_TEAM_ID, SandboxId, TeamId, TemplateId};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_files_survive_hibernate_and_restore_on_the_same_disk() {
    let host_env = Host::new().await;
    let sb = host_env.sandbox().await;
    let id = sb.id();
    sb.ok("echo kept > /root/on-disk && chmod 4755 /root/on-disk")
        .await;
    let (size_before, _) = df_root(&sb).await;
    let sandbox_dir = host_env.layout().sandbox_dir(id);

    host_env.runtime.hibernate(&sb.instance).await.unwrap();
    assert!(mounts_under(&sandbox_dir).is_empty());
    assert!(
        loops_under(&sandbox_dir).is_empty(),
        "the device is unbound"
    );
    let saved = host_env.layout().snapshot_dir(id).join(disk::DISK_FILE);
    assert!(saved.is_file());
    assert!(loops_under(&host_env.layout().snapshot_dir(id)).is_empty());

    let instance = host_env.runtime.restore(&sb.config).await.unwrap();
    assert_eq!(
        run(&instance, "cat /root/on-disk").await,
        ("kept\n".into(), 0)
    );
    assert_eq!(
        run(&instance, "stat -c %a /root/on-disk").await,
        ("4755\n".into(), 0),
        "set-uid bits survive (the disk is not nosuid)"
    );
    let (out, _) = run(&instance, "df -B1 / | tail -n 1").await;
    let size_after: u64 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(size_after, size_before);
    assert!(!saved.exists());
    assert_eq!(
        mounts_under(&sandbox_dir).len(),
        1,
        "the disk is mounted again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_snapshot_copies_the_disk_upper_into_a_template_new_capsules_see() {
    let host_env = Host::new().await;
    let team = TeamId::new();
    let template = TemplateId::new();
    let original = host_env.sandbox().await;
    original.ok("echo layered > /root/from-disk").await;
    host_env
        .runtime
        .snapshot(&original.instance, team, template)
        .await
        .unwrap();
    let child = host_env.sandbox_from(team, template).await;
    assert_eq!(child.ok("cat /root/from-disk").await, "layered\n");
    child.ok("echo child > /root/from-disk").await;
    assert_eq!(original.ok("cat /root/from-disk").await, "layered\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_destroy_leaves_no_loop_device_mount_or_file() {
    let host_env = Host::new().await;
    // Larger than the free space, smaller than the disk: accepted by default (sparse).
    let st = rustix::fs::statvfs(host_env.layout().sandboxes_dir().as_path()).unwrap();
    let (free_mb, capacity_mb) = (
        st.f_bavail * st.f_frsize / MIB,
        st.f_blocks * st.f_frsize / MIB,
    );
    let size = u32::try_from((free_mb + 1024).min(capacity_mb)).unwrap();
    let config = sized(config(PLATFORM_TEAM_ID, BUILTIN_TEMPLATE_ID), size);
    let instance = host_env.runtime.create(&config).await.unwrap();
    let id = instance.id;
    let dir = host_env.layout().sandbox_dir(id);
    let device = host_env.runtime.disk_device(id).unwrap();
    assert_eq!(
        disk::loopdev::backing_file(device.number),
        Some(dir.canonicalize().unwrap().join(disk::DISK_FILE))
    );
    let mount_point = dir.canonicalize().unwrap().join(disk::MOUNT_DIR);
    assert_eq!(mounts_under(&dir), vec![mount_point.clone()]);
    // `nodev`, but not `nosuid`: set-uid programs copied up (sudo after an upgrade)
    // keep working.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == mount_point.to_str())
        .unwrap();
    let options: Vec<&str> = line.split(' ').nth(5).unwrap().split(',').collect();
    assert!(options.contains(&"nodev"), "{line}");
    assert!(!options.contains(&"nosuid"), "{line}");
    assert!(line.contains(" - ext4 /dev/loop"), "{line}");

    // Dirty data in the page cache is dropped, not written out by the unmount.
    run(
        &instance,
        "dd if=/dev/urandom of=/root/dirty bs=1M count=200 2>/dev/null",
    )
    .await;
    let file = dir.join(disk::DISK_FILE);
    let allocated_before =
        std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&file).unwrap()) * 512;
    let started = Instant::now();
    host_env.runtime.destroy(id).await.unwrap();
    eprintln!(
        "destroy after writing 200 MiB ({} MiB on the host file) took {:?}",
        allocated_before / MIB,
        started.elapsed()
    );
    assert!(
        !dir.exists(),
        "destroy answers once the directory is out of the way"
    );
    host_env.runtime.removals_settled().await;
    assert_nothing_left_in_removing(host_env.layout());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_sweep_after_a_crash_cleans_our_leftover_mounts_and_loop_devices_only() {
    let host_env = Host::new().await;
    let running = host_env.sandbox().await;
    let kept = host_env.sandbox().await;

    // A crash halfway through a removal: a disk bound (without autoclear) and mounted
    // in a sandbox directory that is no longer listed as a sandbox.
    let half = SandboxId::new();
    let half_dir = host_env.layout().sandbox_dir(half);
    let stray = half_dir.join(disk::DISK_FILE);
    std::fs::create_dir_all(half_dir.join(disk::MOUNT_DIR)).unwrap();
    std::fs::copy(
        host_env
            .layout()
            .sandbox_dir(running.id())
            .join(disk::DISK_FILE),
        &stray,
    )
    .unwrap_or_default();
    // Someone else's loop device and mount, outside `$WRENN_DIR`.
    let foreign = tempfile::Builder::new()
        .prefix("disk-helper-foreign")
        .tempdir()
        .unwrap();
    let foreign_file = foreign.path().join("other.img");
    let foreign_mount = foreign.path().join("mnt");
    std::fs::create_dir(&foreign_mount).unwrap();
    for (file, mount) in [
        (&stray, half_dir.join(disk::MOUNT_DIR)),
        (&foreign_file, foreign_mount.clone()),
    ] {
        let _ = std::fs::remove_file(file);
        let ok = Command::new("truncate")
            .arg("-s64M")
            .arg(file)
            .status()
            .unwrap()
            .success()
            && Command::new("mkfs.ext4")
                .args(["-q", "-F"])
                .arg(file)
                .status()
                .unwrap()
                .success()
            && Command::new("mount")
                .arg("-o")
                .arg("loop")
                .arg(file)
                .arg(&mount)
                .status()
                .unwrap()
                .success();
        assert!(ok, "setting up {}", file.display());
    }
    std::fs::remove_dir_all(&half_dir).unwrap_or_default();
    assert_eq!(loops_under(&half_dir).len(), 1);
    let foreign_loops = loops_under(foreign.path());
    assert_eq!(foreign_loops.len(), 1);

    // A new agent knows nothing of `running`.
    let restarted = host_env.restarted().await;
    let swept = restarted.sweep(&[kept.id()]).await.unwrap();
    assert!(
        swept.contains(&running.id()) && swept.contains(&half),
        "{swept:?}"
    );
    assert!(!swept.contains(&kept.id()));
    for id in [running.id(), half] {
        let dir = host_env.layout().sandbox_dir(id);
        assert!(mounts_under(&dir).is_empty(), "{id}");
        assert!(
            wait_until(|| loops_under(&dir).is_empty()),
            "{id}: {:?}",
            loops_under(&dir)
        );
    }
    assert_eq!(
        kept.ok("echo still here > /root/x && cat /root/x").await,
        "still here\n"
    );
    assert_eq!(
        mounts_under(&host_env.layout().sandbox_dir(kept.id())).len(),
        1
    );

    // Other people's devices and mounts are untouched.
    assert_eq!(loops_under(foreign.path()), foreign_loops);
    assert_eq!(mounts_under(&foreign_mount).len(), 1);
    assert!(
        Command::new("umount")
            .arg(&foreign_mount)
            .status()
            .unwrap()
            .success()
    );
    assert!(wait_until(|| loops_under(foreign.path()).is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_a_sandbox_hibernated_before_disks_restores_into_a_new_disk() {
    let host_env = Host::new().await;
    let config = config(PLATFORM_TEAM_ID, BUILTIN_TEMPLATE_ID);
    let snapshot = host_env.layout().snapshot_dir(config.id);
    std::fs::create_dir_all(snapshot.join("upper/root")).unwrap();
    std::fs::write(snapshot.join("upper/root/old-note"), "from before\n").unwrap();
    template::write_record(
        &snapshot,
        &template::HibernationRecord {
            config: (&config).into(),
            hibernated_at: "2026-01-01T00:00:00Z".into(),
            image: None,
        },
    )
    .unwrap();
    let mut sb = Sandbox::guard(&host_env.runtime, config.clone());
    sb.instance = host_env.runtime.restore(&config).await.unwrap();
    assert_eq!(sb.ok("cat /root/old-note").await, "from before\n");
    let (size, _) = df_root(&sb).await;
    assert!(size <= u64::from(config.disk_size_mb) * MIB, "{size}");
    assert!(!snapshot.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_a_restored_sandbox_snapshots_into_a_template_new_capsules_see() {
    let host_env = Host::new().await;
    let sb = host_env.sandbox().await;
    sb.ok("echo restored > /root/note").await;
    host_env.runtime.hibernate(&sb.instance).await.unwrap();
    let instance = host_env.runtime.restore(&sb.config).await.unwrap();
    let team = TeamId::new();
    let template = TemplateId::new();
    host_env
        .runtime
        .snapshot(&instance, team, template)
        .await
        .unwrap();
    let child = host_env.sandbox_from(team, template).await;
    assert_eq!(child.ok("cat /root/note").await, "restored\n");
}

//! A disk's size and limits: `df` shows its size, writes past it fail with ENOSPC,
//! sizes out of range are refused, and I/O limits are set on its device.

use super::df_root;
use crate::process_runtime::{Host, MIB, Sandbox, config, loops_under, sized};
use wrenn_agent::disk;
use wrenn_agent::runtime::process::ProcessRuntimeOptions;
use wrenn_agent::runtime::process::cgroup::{IoLimits, SandboxCgroup};
use wrenn_agent::runtime::{Runtime, RuntimeError};
use wrenn_core::id::{BUILTIN_TEMPLATE_ID, PLATFORM_TEAM_ID};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_df_shows_its_size_and_writes_past_it_fail_with_enospc_without_touching_the_host() {
    let host_env = Host::new().await;
    let config = sized(config(PLATFORM_TEAM_ID, BUILTIN_TEMPLATE_ID), 128);
    let mut sb = Sandbox::guard(&host_env.runtime, config.clone());
    sb.instance = host_env.runtime.create(&config).await.unwrap();

    let (size, _) = df_root(&sb).await;
    assert!(
        size > 112 * MIB && size <= 128 * MIB,
        "df / shows {size} bytes for a 128 MiB disk"
    );
    let (out, code) = sb
        .sh("dd if=/dev/zero of=/root/big bs=1M count=256 2>&1; echo dd=$?")
        .await;
    assert_ne!(code, 1, "{out}");
    assert!(out.contains("No space left on device"), "{out}");
    assert!(!out.contains("dd=0"), "{out}");
    let written = sb.ok("stat -c %s /root/big").await;
    let written: u64 = written.trim().parse().unwrap();
    assert!(written > 100 * MIB && written <= 128 * MIB, "{written}");

    // The host file never grows past the disk's size.
    let file = host_env.layout().sandbox_dir(sb.id()).join(disk::DISK_FILE);
    let allocated =
        std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&file).unwrap()) * 512;
    assert!(
        allocated <= 128 * MIB,
        "{allocated} bytes allocated on the host"
    );
    let stats = host_env.runtime.stats(&sb.instance).await.unwrap();
    assert!(
        stats.disk_bytes >= written && stats.disk_bytes <= 128 * MIB,
        "disk_bytes {} for {written} written",
        stats.disk_bytes
    );

    // Freeing space makes the disk usable again.
    sb.ok("rm /root/big && echo fine > /root/after").await;
    assert_eq!(sb.ok("cat /root/after").await, "fine\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_sizes_below_the_minimum_or_above_the_free_space_are_refused_before_anything_exists() {
    let host_env = Host::with(ProcessRuntimeOptions {
        disk_space_check: disk::SpaceCheck::FreeSpace,
        ..Default::default()
    })
    .await;
    let st = rustix::fs::statvfs(host_env.layout().sandboxes_dir().as_path()).unwrap();
    let free_mb = st.f_bavail * st.f_frsize / MIB;
    let above_free = u32::try_from(free_mb + 2048).unwrap();
    for size in [0, 32, disk::MIN_SIZE_MB - 1, above_free, u32::MAX] {
        let config = sized(config(PLATFORM_TEAM_ID, BUILTIN_TEMPLATE_ID), size);
        let err = host_env.runtime.create(&config).await.unwrap_err();
        assert!(
            matches!(&err, RuntimeError::FailedPrecondition(m) if m.contains("disk_size_mb")),
            "{size}: {err}"
        );
        let dir = host_env.layout().sandbox_dir(config.id);
        assert!(!dir.exists());
        assert!(loops_under(&dir).is_empty());
        assert!(!host_env.runtime.sandbox_cgroup(config.id).exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_io_limits_are_set_on_the_capsule_device() {
    let io = IoLimits {
        weight: 300,
        read_bps: Some(50 * MIB),
        write_bps: Some(20 * MIB),
        read_iops: Some(3000),
        write_iops: None,
    };
    let host_env = Host::with(ProcessRuntimeOptions {
        io,
        ..Default::default()
    })
    .await;
    let sb = host_env.sandbox().await;
    let device = host_env.runtime.disk_device(sb.id()).unwrap();
    let dev = format!("{}:{}", device.major, device.minor);
    assert_eq!(sb.instance.metadata.get("disk_device"), Some(&dev));
    match host_env.runtime.sandbox_cgroup(sb.id()) {
        SandboxCgroup::V1 {
            blkio: Some(blkio), ..
        } => {
            let read = |f: &str| std::fs::read_to_string(blkio.join(f)).unwrap();
            assert_eq!(
                read("blkio.throttle.read_bps_device"),
                format!("{dev} {}\n", 50 * MIB)
            );
            assert_eq!(
                read("blkio.throttle.write_bps_device"),
                format!("{dev} {}\n", 20 * MIB)
            );
            assert_eq!(
                read("blkio.throttle.read_iops_device"),
                format!("{dev} 3000\n")
            );
            assert_eq!(
                read("blkio.throttle.write_iops_device"),
                "",
                "None = no rule"
            );
            if blkio.join("blkio.weight").exists() {
                assert_eq!(read("blkio.weight"), "300\n");
            }
            // The sandbox's processes are in that cgroup, so its direct I/O is throttled.
            let mut procs: Vec<i32> = read("cgroup.procs")
                .lines()
                .map(|p| p.parse().unwrap())
                .collect();
            procs.sort();
            let mut all = host_env.runtime.sandbox_cgroup(sb.id()).pids();
            all.sort();
            assert!(!procs.is_empty());
            assert_eq!(procs, all);
            let (out, _) = sb
                .sh("dd if=/dev/zero of=/root/d bs=1M count=40 oflag=direct 2>&1 | tail -n 1")
                .await;
            eprintln!("direct write of 40 MiB at 20 MiB/s: {out}");
            let secs: f64 = out
                .split(',')
                .nth(1)
                .and_then(|s| s.trim().split(' ').next())
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("dd output: {out}"));
            assert!(secs >= 1.5, "40 MiB at 20 MiB/s took {secs} s");
        }
        SandboxCgroup::V2 { dir } => {
            let max = std::fs::read_to_string(dir.join("io.max")).unwrap();
            assert!(max.contains(&dev), "{max}");
        }
        other => panic!("no I/O controller: {other:?}"),
    }
}

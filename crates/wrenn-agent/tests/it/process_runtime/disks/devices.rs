//! Loop devices and the disk pool: ready disks handed out and refilled, attach, mount
//! and format timings, and many devices bound at once.

use std::time::{Duration, Instant};

use super::df_root;
use crate::process_runtime::{Host, MIB, Sandbox, config, loops_under, wait_until};
use wrenn_agent::disk;
use wrenn_agent::runtime::Runtime;
use wrenn_agent::runtime::process::{self, ProcessRuntimeOptions};
use wrenn_core::id::{BUILTIN_TEMPLATE_ID, PLATFORM_TEAM_ID};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_pool_hands_out_ready_disks_and_refills_in_the_background() {
    let host_env = Host::with(ProcessRuntimeOptions {
        disk_pool_size_mb: 1024,
        disk_pool_depth: 2,
        ..Default::default()
    })
    .await;
    let pool = host_env.runtime.disk_pool();
    assert!(wait_until(|| pool.ready() == 2), "the pool never filled");
    let refills_before = pool.refill_times().len();

    let mut sandboxes = Vec::new();
    for _ in 0..3 {
        let config = config(PLATFORM_TEAM_ID, BUILTIN_TEMPLATE_ID);
        let mut sb = Sandbox::guard(&host_env.runtime, config.clone());
        let started = Instant::now();
        sb.instance = host_env.runtime.create(&config).await.unwrap();
        eprintln!("create with a 1 GiB disk took {:?}", started.elapsed());
        let (size, _) = df_root(&sb).await;
        assert!(size > 1000 * MIB && size <= 1024 * MIB, "{size}");
        sandboxes.push(sb);
    }
    // Taken disks are replaced (the third create may have been served by a refill or
    // formatted on demand).
    assert!(wait_until(|| pool.ready() == 2), "the pool did not refill");
    let refills = pool.refill_times();
    assert!(refills.len() >= refills_before + 2, "{refills:?}");
    eprintln!("pool refill times (format + bind + mount): {refills:?}");
    // The pool's files live in its own directory, not among the sandboxes.
    let pool_files = std::fs::read_dir(process::disk_pool_dir(host_env.layout()))
        .unwrap()
        .count();
    assert_eq!(pool_files, 2);
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_timings_attach_mount_and_format() {
    let dir = tempfile::Builder::new()
        .prefix("wr-disk")
        .tempdir()
        .unwrap();
    let mkfs = disk::ext4::find_mkfs().unwrap();
    let mut report = Vec::new();
    for gib in [1u32, 5, 20] {
        let file = dir.path().join(format!("{gib}.ext4"));
        let started = Instant::now();
        disk::ext4::format(&mkfs, &file, disk::size_bytes(gib * 1024))
            .await
            .unwrap();
        let took = started.elapsed();
        let allocated =
            std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&file).unwrap()) * 512;
        report.push(format!(
            "mkfs {gib} GiB: {took:?} ({} KiB allocated)",
            allocated / 1024
        ));
    }
    let file = dir.path().join("20.ext4");
    let target = dir.path().join("mnt");
    std::fs::create_dir(&target).unwrap();
    let (mut attach, mut unmount) = (Vec::new(), Vec::new());
    for _ in 0..30 {
        let started = Instant::now();
        let device = disk::MountedDisk::open(&file)
            .unwrap()
            .place(&target)
            .unwrap();
        attach.push(started.elapsed());
        assert!(device.direct_io, "loop device without direct I/O");
        let usage = disk::ext4::usage(&target).unwrap();
        assert!(usage.total_bytes > 19 * 1024 * MIB, "{usage:?}");
        assert!(target.join("upper").is_dir() && target.join("work").is_dir());
        let started = Instant::now();
        disk::unmount(&target).unwrap();
        disk::wait_released(device.number, &file, Duration::from_secs(5)).unwrap();
        unmount.push(started.elapsed());
    }
    attach.sort();
    unmount.sort();
    report.push(format!(
        "attach+mount (20 GiB, in-process): p50 {:?} p99 {:?}",
        percentile(&attach, 0.5),
        percentile(&attach, 0.99)
    ));
    report.push(format!(
        "unmount+unbind: p50 {:?} p99 {:?}",
        percentile(&unmount, 0.5),
        percentile(&unmount, 0.99)
    ));

    // A disk copied from a blank: a sparse file of the full size holding only the
    // blank's few MiB of metadata, a filesystem that mounts and has its full size.
    let blanks =
        std::sync::Arc::new(disk::blank::Blanks::new(&dir.path().join("blank"), &mkfs).unwrap());
    let copy = dir.path().join("copied.ext4");
    let started = Instant::now();
    blanks.make(&copy, 20 * 1024).await.unwrap();
    let first = started.elapsed();
    std::fs::remove_file(&copy).unwrap();
    let started = Instant::now();
    blanks.make(&copy, 20 * 1024).await.unwrap();
    let copied = started.elapsed();
    report.push(format!(
        "blank 20 GiB disk: first (mkfs) {first:?}, then copied in {copied:?}"
    ));
    let meta = std::fs::metadata(&copy).unwrap();
    assert_eq!(meta.len(), disk::size_bytes(20 * 1024));
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < 64 * MIB,
        "the copy is sparse"
    );
    let target = dir.path().join("copied");
    std::fs::create_dir(&target).unwrap();
    disk::MountedDisk::open(&copy)
        .unwrap()
        .place(&target)
        .unwrap();
    let usage = disk::ext4::usage(&target).unwrap();
    assert!(usage.total_bytes > 19 * 1024 * MIB, "{usage:?}");
    assert!(target.join(disk::UPPER_DIR).is_dir());
    disk::unmount(&target).unwrap();

    // A pooled disk: what create pays (rename + move_mount).
    let pool_dir = dir.path().join("pool");
    let pool = disk::pool::DiskPool::start(&pool_dir, blanks, 20 * 1024, 4).unwrap();
    assert!(wait_until(|| pool.ready() == 4), "the pool never filled");
    let mut handout = Vec::new();
    for i in 0..4 {
        let place = dir.path().join(format!("sb{i}"));
        std::fs::create_dir(&place).unwrap();
        let started = Instant::now();
        let pooled = pool.take().unwrap();
        std::fs::rename(&pooled.file, place.join(disk::DISK_FILE)).unwrap();
        pooled.disk.place(&place).unwrap();
        handout.push(started.elapsed());
        assert!(place.join("upper").is_dir());
        disk::unmount(&place).unwrap();
    }
    handout.sort();
    report.push(format!(
        "pooled disk handout (rename + move_mount): p50 {:?} max {:?}",
        percentile(&handout, 0.5),
        handout[handout.len() - 1]
    ));
    assert!(wait_until(|| pool.ready() == 4), "the pool did not refill");
    let refills = pool.refill_times();
    report.push(format!("pool refill per 20 GiB disk: {refills:?}"));
    drop(pool);
    assert!(wait_until(|| loops_under(dir.path()).is_empty()));
    // The figures are a report (the benchmarks hold the targets), not an assertion.
    eprintln!("{}", report.join("\n"));
}

#[test]
fn disk_many_loop_devices_bound_at_once_each_get_their_own() {
    // Concurrent binds race for the device `LOOP_CTL_GET_FREE` offers; each must end
    // up with a device of its own (the loser retries), none may fail.
    let dir = tempfile::Builder::new()
        .prefix("wr-loops")
        .tempdir()
        .unwrap();
    let binds: Vec<_> = (0..12)
        .map(|i| {
            let file = dir.path().join(format!("{i}.img"));
            std::thread::spawn(move || {
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&file)
                    .unwrap();
                f.set_len(64 * MIB).unwrap();
                disk::loopdev::attach(&f, disk::loopdev::AttachOptions::default())
            })
        })
        .collect();
    let devices: Vec<_> = binds
        .into_iter()
        .map(|t| t.join().unwrap().expect("every bind succeeds"))
        .collect();
    let mut numbers: Vec<u32> = devices.iter().map(|d| d.number).collect();
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(numbers.len(), devices.len(), "a device was bound twice");
    drop(devices);
    assert!(wait_until(|| loops_under(dir.path()).is_empty()));
}

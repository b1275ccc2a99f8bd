//! Spare init programs and warm capsules: they wait at idle priority, a create gives
//! one its identity, and they leave with the runtime.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Host, config, exited, host_mounts, sized, wait_until};
use wrenn_agent::runtime::Runtime;
use wrenn_agent::runtime::process::{self, ProcessRuntime, ProcessRuntimeOptions};
use wrenn_core::id::{BUILTIN_TEMPLATE_ID, PLATFORM_TEAM_ID, SandboxId};
use wrenn_core::layout::Layout;

/// Processes whose command line starts with `argv0`.
fn processes_started_as(argv0: &Path) -> Vec<i32> {
    let mut prefix = argv0.as_os_str().as_encoded_bytes().to_vec();
    prefix.push(0);
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(&prefix))
        })
        .filter(|pid| !exited(*pid))
        .collect()
}

/// The scheduling policy of a process (`policy` in `/proc/{pid}/sched`: 0 normal,
/// 5 idle).
fn scheduling_policy(pid: i32) -> String {
    let sched = std::fs::read_to_string(format!("/proc/{pid}/sched")).unwrap_or_default();
    sched
        .lines()
        .find_map(|l| l.strip_prefix("policy"))
        .map(|v| v.trim_start_matches([' ', ':']).trim().to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spare_init_programs_wait_at_idle_priority_and_leave_with_the_runtime() {
    // A name of their own, to tell this runtime's init programs from other tests'.
    let names = tempfile::tempdir().unwrap();
    let program = names.path().join("spare-init-under-test");
    std::os::unix::fs::symlink(std::env::current_exe().unwrap(), &program).unwrap();
    let host_env = Host::with(ProcessRuntimeOptions {
        spare_inits: 2,
        init_program: Some(program.clone()),
        ..Default::default()
    })
    .await;
    assert!(
        wait_until(|| host_env.runtime.spare_inits() == 2),
        "the spares never started"
    );
    // A spare counts once it is forked; it shows its program's name once it has
    // exec'd it (later, on a busy machine).
    assert!(
        wait_until(|| processes_started_as(&program).len() == 2),
        "the spares never ran their program: {:?}",
        processes_started_as(&program)
    );
    let spares = processes_started_as(&program);
    assert!(
        wait_until(|| spares.iter().all(|pid| scheduling_policy(*pid) == "5")),
        "a spare is not SCHED_IDLE: {:?}",
        spares
            .iter()
            .map(|pid| (pid, scheduling_policy(*pid)))
            .collect::<Vec<_>>()
    );

    // A capsule starts from a spare, which goes back to normal priority.
    let sb = host_env.sandbox().await;
    assert_eq!(
        sb.ok("grep ^policy /proc/self/sched")
            .await
            .split_whitespace()
            .last(),
        Some("0")
    );
    assert!(
        spares.iter().any(|pid| scheduling_policy(*pid) == "0"),
        "no spare was used"
    );
    assert!(
        wait_until(|| host_env.runtime.spare_inits() == 2),
        "the spares were not replaced"
    );
    drop(sb);

    // Spares belong to no capsule: they exit with the runtime.
    let waiting: Vec<i32> = processes_started_as(&program)
        .into_iter()
        .filter(|pid| scheduling_policy(*pid) == "5")
        .collect();
    assert_eq!(waiting.len(), 2, "{waiting:?}");
    drop(host_env);
    assert!(
        wait_until(|| waiting.iter().all(|pid| exited(*pid))),
        "spare init programs outlived their runtime"
    );
}

/// The sandbox ids with a directory under `sandboxes/`.
fn sandbox_dirs(layout: &Layout) -> Vec<SandboxId> {
    std::fs::read_dir(layout.sandboxes_dir())
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_capsules_wait_at_idle_priority_and_a_create_gives_one_its_identity() {
    const DISK_MB: u32 = 1024;
    let host_env = Host::with(ProcessRuntimeOptions {
        warm_capsules: 1,
        disk_pool_size_mb: DISK_MB,
        disk_pool_depth: 2,
        ..Default::default()
    })
    .await;
    let runtime = host_env.runtime.clone();
    let layout = host_env.layout().clone();
    // Only once the agent has swept leftovers.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(runtime.warm_capsules(), 0);
    Arc::clone(&runtime).start_background();
    let deadline = Instant::now() + Duration::from_secs(30);
    while runtime.warm_capsules() < 1 {
        assert!(Instant::now() < deadline, "no capsule became warm");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let warm_ids = sandbox_dirs(&layout);
    assert_eq!(warm_ids.len(), 1, "{warm_ids:?}");
    let provisional = warm_ids[0];
    let warm_cgroup = runtime.sandbox_cgroup(provisional);
    let warm_pids = warm_cgroup.pids();
    assert!(!warm_pids.is_empty());
    for tid in warm_cgroup.threads() {
        assert_eq!(
            scheduling_policy(tid),
            "5",
            "warm thread {tid} is not SCHED_IDLE"
        );
    }

    // A create that fits (built-in template, pooled disk size) takes it.
    let mut wanted = sized(config(PLATFORM_TEAM_ID, BUILTIN_TEMPLATE_ID), DISK_MB);
    wanted.vcpus = 2;
    wanted.memory_mb = 384;
    let sb = host_env.sandbox_with(wanted).await;
    let id = sb.id();
    let cgroup = runtime.sandbox_cgroup(id);
    assert_eq!(
        cgroup.pids(),
        warm_pids,
        "the warm capsule's processes run it"
    );
    assert!(!warm_cgroup.exists());
    assert!(!layout.sandbox_dir(provisional).exists());
    assert!(
        !Path::new("/run/netns")
            .join(ProcessRuntime::netns_name(provisional))
            .exists()
    );
    assert!(
        Path::new("/run/netns")
            .join(ProcessRuntime::netns_name(id))
            .exists()
    );
    assert!(runtime.id_map(id).is_some());
    assert!(runtime.id_map(provisional).is_none());
    // Its identity, limits and priority are the create's.
    assert_eq!(sb.ok("hostname").await.trim(), id.to_string());
    assert_eq!(
        cgroup.memory_limit().unwrap(),
        384 * 1024 * 1024,
        "memory limit"
    );
    for tid in cgroup.threads() {
        assert_eq!(scheduling_policy(tid), "0", "claimed thread {tid} is idle");
    }
    assert_eq!(
        sb.ok("echo hello > /root/f && cat /root/f").await,
        "hello\n"
    );
    // It is recorded like any capsule: an agent that restarts adopts it.
    assert!(
        layout
            .sandbox_dir(id)
            .join(process::state::STATE_FILE)
            .is_file()
    );

    // Another is booted in its place; a create that does not fit boots its own.
    let deadline = Instant::now() + Duration::from_secs(30);
    while runtime.warm_capsules() < 1 {
        assert!(
            Instant::now() < deadline,
            "the warm capsule was not replaced"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let other = host_env
        .sandbox_with(sized(config(PLATFORM_TEAM_ID, BUILTIN_TEMPLATE_ID), 2048))
        .await;
    assert_eq!(runtime.warm_capsules(), 1);
    assert_ne!(runtime.sandbox_cgroup(other.id()).pids(), warm_pids);
    drop(other);
    drop(sb);

    // Warm capsules belong to no one: they go with the runtime.
    let warm = sandbox_dirs(&layout);
    assert_eq!(warm.len(), 1, "{warm:?}");
    let warm_cgroup = runtime.sandbox_cgroup(warm[0]);
    let warm_pids = warm_cgroup.pids();
    runtime.removals_settled().await;
    drop(runtime);
    drop(host_env);
    assert!(
        wait_until(|| warm_pids.iter().all(|pid| exited(*pid))),
        "a warm capsule outlived its runtime"
    );
    assert!(!warm_cgroup.exists());
    assert!(
        !Path::new("/run/netns")
            .join(ProcessRuntime::netns_name(warm[0]))
            .exists()
    );
    assert!(!host_mounts().contains(&warm[0].to_string()));
}

//! A capsule's life: pause and resume, hibernate and restore, snapshots as templates,
//! destroy, and the sweep after an agent crash.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{Host, assert_nothing_left_in_removing, exited, host_mounts, run, wait_until};
use crate::common::test_image;
use wrenn_agent::runtime::process::ProcessRuntime;
use wrenn_agent::runtime::{Runtime, RuntimeError};
use wrenn_core::id::{TeamId, TemplateId};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_freezes_the_sandbox_and_resume_continues_with_its_memory() {
    let host_env = Host::new().await;
    let sb = host_env.sandbox().await;
    let counter = host_env
        .layout()
        .sandbox_dir(sb.id())
        .join("disk/upper/root/counter");
    // A shell whose loop variable lives only in memory.
    sb.ok("sh -c 'i=0; while :; do i=$((i+1)); echo $i > /root/next; mv /root/next /root/counter; sleep 0.01; done' >/dev/null 2>&1 &")
        .await;
    let read = || -> u64 {
        std::fs::read_to_string(&counter)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while read() < 5 {
        assert!(Instant::now() < deadline, "the counter never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let started = Instant::now();
    host_env.runtime.pause(&sb.instance).await.unwrap();
    eprintln!("pause took {:?}", started.elapsed());
    let frozen_at = read();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(read(), frozen_at, "the counter advanced while paused");
    assert!(
        host_env
            .runtime
            .sandbox_cgroup(sb.id())
            .is_frozen()
            .unwrap()
    );

    let started = Instant::now();
    host_env.runtime.resume(&sb.instance).await.unwrap();
    eprintln!("resume took {:?}", started.elapsed());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = read();
    assert!(
        after > frozen_at,
        "the counter did not continue ({after} <= {frozen_at})"
    );
    assert!(
        after < frozen_at + 200,
        "the counter restarted or jumped instead of continuing ({frozen_at} → {after})"
    );
    assert_eq!(sb.ok("echo alive").await, "alive\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hibernate_frees_the_sandbox_and_restore_brings_back_its_files() {
    let host_env = Host::new().await;
    let sb = host_env.sandbox().await;
    let id = sb.id();
    sb.ok("mkdir -p /root/work && echo kept > /root/work/note && sleep 1000 >/dev/null 2>&1 &")
        .await;
    let cgroup = host_env.runtime.sandbox_cgroup(id);

    host_env.runtime.hibernate(&sb.instance).await.unwrap();
    assert!(!host_env.layout().sandbox_dir(id).exists());
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(host_env.layout().snapshot_dir(id).join("sandbox.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        record["image"]["rootfs"],
        test_image().rootfs().display().to_string(),
        "the record names the image build the upper layer was written over"
    );
    assert!(!cgroup.exists(), "memory is freed: the cgroup is gone");
    assert!(
        !Path::new("/run/netns")
            .join(ProcessRuntime::netns_name(id))
            .exists()
    );
    assert!(
        host_env
            .layout()
            .snapshot_dir(id)
            .join("disk.ext4")
            .is_file(),
        "the disk moved into the snapshot"
    );
    // Hibernated state survives an agent restart.
    let restarted = host_env.restarted().await;
    let listed = restarted.hibernated().await.unwrap();
    assert_eq!(listed, vec![sb.config.clone()]);

    let instance = host_env.runtime.restore(&sb.config).await.unwrap();
    assert_eq!(
        run(&instance, "cat /root/work/note").await,
        ("kept\n".into(), 0)
    );
    let (procs, _) = run(&instance, "cat /proc/[0-9]*/comm 2>/dev/null").await;
    assert!(
        !procs.contains("sleep"),
        "processes do not survive hibernation: {procs}"
    );
    assert!(host_env.runtime.hibernated().await.unwrap().is_empty());
    assert!(!host_env.layout().snapshot_dir(id).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_a_template_that_new_sandboxes_start_from() {
    let host_env = Host::new().await;
    let team = TeamId::new();
    let first = TemplateId::new();
    let second = TemplateId::new();

    let original = host_env.sandbox().await;
    original
        .ok("mkdir -p /opt/wrenn && echo one > /opt/wrenn/one && rm /etc/os-release")
        .await;
    let size = host_env
        .runtime
        .snapshot(&original.instance, team, first)
        .await
        .unwrap();
    assert!(size > 0);
    assert!(
        host_env
            .layout()
            .template_dir(team, first)
            .join("template.json")
            .is_file()
    );
    assert_eq!(original.ok("echo still running").await, "still running\n");

    let child = host_env.sandbox_from(team, first).await;
    assert_eq!(child.ok("cat /opt/wrenn/one").await, "one\n");
    assert_ne!(
        child.sh("test -e /etc/os-release").await.1,
        0,
        "deletions carry over"
    );
    assert!(
        child.ok("ls /usr/bin").await.contains("sh"),
        "the image base is there"
    );
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            host_env
                .layout()
                .template_dir(team, first)
                .join("template.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        manifest["base"]["image"]["rootfs"],
        test_image().rootfs().display().to_string(),
        "the template records the image build it sits on: {manifest}"
    );
    child.ok("echo two > /opt/wrenn/two").await;

    // A template of a template stands alone: deleting its parent does not matter.
    host_env
        .runtime
        .snapshot(&child.instance, team, second)
        .await
        .unwrap();
    drop(child);
    std::fs::remove_dir_all(host_env.layout().template_dir(team, first)).unwrap();
    let grandchild = host_env.sandbox_from(team, second).await;
    assert_eq!(
        grandchild.ok("cat /opt/wrenn/one /opt/wrenn/two").await,
        "one\ntwo\n"
    );

    // Snapshotting onto an existing template is refused.
    let err = host_env
        .runtime
        .snapshot(&grandchild.instance, team, second)
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::FailedPrecondition(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_removes_processes_mounts_network_cgroups_and_directories() {
    let host_env = Host::new().await;
    let sb = host_env.sandbox().await;
    let id = sb.id();
    let runtime = host_env.runtime.clone();
    let net = runtime.network(id).unwrap();
    let cgroup = runtime.sandbox_cgroup(id);
    let pids = cgroup.pids();
    sb.ok("sleep 1000 >/dev/null 2>&1 &").await;
    runtime.pause(&sb.instance).await.unwrap();

    runtime.destroy(id).await.unwrap();
    // Every process got SIGKILL before destroy answered (a frozen one included): none
    // runs again. Waiting for them and removing the rest happens after answering.
    assert!(
        wait_until(|| pids.iter().all(|p| exited(*p))),
        "processes survived"
    );
    assert!(!host_env.layout().sandbox_dir(id).exists());
    runtime.removals_settled().await;
    assert!(!cgroup.exists());
    assert!(!Path::new("/run/netns").join(&net.netns).exists());
    // The kernel deletes the veth pair with the namespace, after destroy answered.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Path::new("/sys/class/net").join(&net.veth).exists() {
        assert!(Instant::now() < deadline, "veth {} left", net.veth);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_nothing_left_in_removing(runtime.layout());
    assert!(!host_mounts().contains(&id.to_string()));
    assert!(matches!(
        runtime.stats(&sb.instance).await,
        Err(RuntimeError::NotFound(_))
    ));
    // Idempotent (the guard destroys it again).
    runtime.destroy(id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_after_an_agent_crash_removes_leftovers_but_keeps_hibernated_sandboxes() {
    let host_env = Host::new().await;
    let leftover = host_env.sandbox().await;
    let kept = host_env.sandbox().await;
    let hibernated = host_env.sandbox().await;
    hibernated.ok("echo zzz > /root/dream").await;
    host_env
        .runtime
        .hibernate(&hibernated.instance)
        .await
        .unwrap();
    let leftover_cgroup = host_env.runtime.sandbox_cgroup(leftover.id());
    let leftover_pids = leftover_cgroup.pids();

    // A new agent knows nothing of the running sandboxes.
    let restarted = host_env.restarted().await;
    let swept = restarted.sweep(&[kept.id()]).await.unwrap();
    assert_eq!(swept, vec![leftover.id()]);
    restarted.removals_settled().await;
    assert!(
        leftover_pids.iter().all(|p| exited(*p)),
        "processes survived the sweep"
    );
    assert!(!leftover_cgroup.exists());
    assert!(
        !Path::new("/run/netns")
            .join(ProcessRuntime::netns_name(leftover.id()))
            .exists()
    );
    assert!(!host_env.layout().sandbox_dir(leftover.id()).exists());

    assert_eq!(kept.ok("echo kept").await, "kept\n");
    let listed = restarted.hibernated().await.unwrap();
    assert_eq!(
        listed.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![hibernated.id()]
    );
    let instance = restarted.restore(&hibernated.config).await.unwrap();
    assert_eq!(run(&instance, "cat /root/dream").await, ("zzz\n".into(), 0));
    restarted.destroy(hibernated.id()).await.unwrap();
}

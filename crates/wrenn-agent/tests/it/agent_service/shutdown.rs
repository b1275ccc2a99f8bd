//! Agent restarts and shutdown: hibernated capsules survive, leftovers are swept, and
//! terminate or shutdown leave nothing half done.

use crate::common;

use std::time::Duration;

use common::{PATIENCE, Setup, TestAgent};
use tonic::Code;
use wrenn_core::id::SandboxId;
use wrenn_proto::hostagent::v1 as pb;

#[tokio::test]
async fn hibernate_survives_an_agent_restart_and_shutdown_hibernates() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let agent = TestAgent::start_in(dir.clone(), Setup::default()).await;
    let a = agent.create(0).await;
    let b = agent.create(0).await;
    let file = agent.path("state.txt");
    agent.sh(a, &format!("echo before > {file}")).await.unwrap();
    let mut c = agent.client.clone();
    let size = c
        .hibernate_sandbox(pb::HibernateSandboxRequest {
            sandbox_id: a.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .size_bytes;
    assert!(size > 0);
    let err = c
        .hibernate_sandbox(pb::HibernateSandboxRequest {
            sandbox_id: a.to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    c.pause_sandbox(pb::PauseSandboxRequest {
        sandbox_id: b.to_string(),
    })
    .await
    .unwrap();
    let c_running = agent.create(0).await;

    // Graceful shutdown hibernates the paused and the running one.
    let kept = agent.handle.shutdown().await;
    assert!(kept.contains(&b) && kept.contains(&c_running), "{kept:?}");
    drop(agent);

    let agent = TestAgent::start_in(dir, Setup::default()).await;
    let list = agent
        .client
        .clone()
        .list_sandboxes(pb::ListSandboxesRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut hib = list.hibernated_sandbox_ids.clone();
    hib.sort();
    let mut want = vec![a.to_string(), b.to_string(), c_running.to_string()];
    want.sort();
    assert_eq!(hib, want);
    assert_eq!(
        agent
            .runtime
            .sweeps
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    agent
        .client
        .clone()
        .resume_sandbox(pb::ResumeSandboxRequest {
            sandbox_id: a.to_string(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        agent.sh(a, &format!("cat {file}")).await.unwrap().0,
        "before\n"
    );
    // A hibernated sandbox can be destroyed directly.
    agent
        .client
        .clone()
        .destroy_sandbox(pb::DestroySandboxRequest {
            sandbox_id: b.to_string(),
        })
        .await
        .unwrap();
    assert!(!agent.layout.snapshot_dir(b).exists());
}

#[tokio::test]
async fn leftovers_of_untracked_sandboxes_are_destroyed_and_swept() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    // A leftover directory from a crashed agent: swept at startup.
    let layout = wrenn_core::layout::Layout::new(dir.path().join("wrenn"));
    let crashed = SandboxId::new();
    std::fs::create_dir_all(layout.sandbox_dir(crashed)).unwrap();
    let agent = TestAgent::start_in(dir, Setup::default()).await;
    assert!(!layout.sandbox_dir(crashed).exists(), "swept at startup");
    // A leftover snapshot dir without a record: DestroySandbox removes it.
    let orphan = SandboxId::new();
    std::fs::create_dir_all(layout.snapshot_dir(orphan)).unwrap();
    agent
        .client
        .clone()
        .destroy_sandbox(pb::DestroySandboxRequest {
            sandbox_id: orphan.to_string(),
        })
        .await
        .unwrap();
    assert!(!layout.snapshot_dir(orphan).exists());
}

#[tokio::test]
async fn terminate_hibernates_and_stops_serving() {
    let agent = TestAgent::start().await;
    let id = agent.create(0).await;
    agent
        .client
        .clone()
        .terminate(pb::TerminateRequest {})
        .await
        .unwrap();
    tokio::time::timeout(PATIENCE, agent.handle.wait())
        .await
        .expect("agent stops");
    assert!(
        agent.layout.snapshot_dir(id).join("sandbox.json").is_file(),
        "hibernated"
    );
    // No new connections are served.
    let res = tokio::time::timeout(
        Duration::from_secs(5),
        tonic::transport::Endpoint::from_shared(format!("http://{}", agent.handle.local_addr()))
            .unwrap()
            .connect(),
    )
    .await;
    assert!(!matches!(res, Ok(Ok(_))), "still accepting connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_right_after_destroys_leaves_nothing_half_removed() {
    let agent = TestAgent::start().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(agent.create(0).await);
    }
    // Enough files that deleting a sandbox's directory takes a while.
    for id in &ids {
        let made = agent
            .sh(
                *id,
                "mkdir -p /tmp/many && cd /tmp/many && seq 1 20000 | xargs touch",
            )
            .await
            .unwrap();
        assert_eq!(made.2, 0, "{made:?}");
    }
    let mut c = agent.client.clone();
    for id in &ids {
        c.destroy_sandbox(pb::DestroySandboxRequest {
            sandbox_id: id.to_string(),
        })
        .await
        .unwrap();
    }
    // The directories are deleted after the destroys answered; shutdown waits for them.
    agent.handle.manager().shutdown().await;
    let root = agent.layout.root().to_path_buf();
    let removing: Vec<_> = std::fs::read_dir(root.join("removing"))
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(removing.is_empty(), "left half removed: {removing:?}");
    for id in ids {
        assert!(!agent.layout.sandbox_dir(id).exists(), "{id}");
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = root.to_string_lossy();
    assert!(
        !mounts.lines().any(|l| l.contains(root.as_ref())),
        "mounts left under {root}"
    );
}

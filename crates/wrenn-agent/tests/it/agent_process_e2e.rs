//! The agent end to end over the real process runtime (namespaces, overlayfs, cgroups,
//! a network namespace per sandbox) and the real `wrenn-envd`: lifecycle, exec, files,
//! isolation, pause keeping memory, hibernation keeping files, snapshots as templates,
//! and the port proxy reaching a server inside a sandbox. Needs root, like the runtime.
//!
//! The sandbox init program is the `wrenn-agent` binary itself (it calls
//! `wrenn_agent::init::main_if_init()` first thing, as every embedding binary must).

use crate::common;

use std::path::PathBuf;
use std::sync::Arc;

use common::{Envd, PATIENCE, command, eventually, shell};
use tonic::Code;
use tonic::transport::Channel;
use wrenn_agent::runtime::Runtime;
use wrenn_agent::runtime::process::{ProcessRuntime, ProcessRuntimeOptions};
use wrenn_agent::{Agent, AgentOptions};
use wrenn_core::id::SandboxId;
use wrenn_core::layout::Layout;
use wrenn_proto::hostagent::v1 as pb;

/// Runs `sh -c line` in sandbox `id` through the agent: (stdout, exit code).
async fn sh(channel: &Channel, id: SandboxId, line: &str) -> Result<(String, i32), tonic::Status> {
    let ran = Envd::of(channel, id).sh(line).await?;
    Ok((ran.stdout, ran.exit_code))
}

/// Starts `start` in sandbox `id` as a background process tagged `tag`.
async fn spawn(
    channel: &Channel,
    id: SandboxId,
    mut start: wrenn_proto::envd::v1::StartRequest,
    tag: &str,
) -> wrenn_proto::envd::v1::StartEvent {
    start.tag = Some(tag.into());
    Envd::of(channel, id).spawn(start).await.expect("start")
}

#[tokio::test]
async fn agent_over_the_process_runtime() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: the process runtime needs root");
        return;
    }
    // Short $WRENN_DIR: unix socket paths live under it.
    let dir = tempfile::Builder::new().prefix("wa").tempdir().unwrap();
    let layout = Layout::new(dir.path());
    let envd = tokio::task::spawn_blocking(common::envd_binary)
        .await
        .unwrap();
    let result = tokio::spawn(scenario(layout.clone(), envd.clone())).await;
    // Whatever happened, remove every sandbox (processes, mounts, cgroups, network).
    let rt = ProcessRuntime::new(layout.clone(), envd, common::process_options().await)
        .await
        .unwrap();
    let _ = rt.sweep(&[]).await;
    for config in rt.hibernated().await.unwrap_or_default() {
        let _ = rt.destroy(config.id).await;
    }
    rt.removals_settled().await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn scenario(layout: Layout, envd: PathBuf) {
    let options = ProcessRuntimeOptions {
        init_program: Some(PathBuf::from(env!("CARGO_BIN_EXE_wrenn-agent"))),
        ..common::process_options().await
    };
    let runtime = ProcessRuntime::new(layout.clone(), envd, options)
        .await
        .expect("the process runtime starts (root, cgroups, overlayfs, nf_tables)");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent = Agent::start(AgentOptions::new(
        Arc::new(runtime),
        layout.clone(),
        listener,
    ))
    .await
    .unwrap();
    let channel = common::connect_channel(agent.local_addr()).await;
    let c = common::agent_client(&channel);

    // Create and exec.
    let id = SandboxId::new();
    let created = c
        .clone()
        .create_sandbox(common::create_request(id, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.metadata["runtime"], "process");
    assert!(!created.host_ip.is_empty());
    let r = sh(&channel, id, "echo hi").await;
    if r.is_err() {
        let log =
            std::fs::read_to_string(layout.sandbox_dir(id).join("envd.log")).unwrap_or_default();
        eprintln!("ENVD LOG:\n{log}");
        let _ = std::process::Command::new("ps")
            .args(["-ef", "--forest"])
            .status();
    }
    assert_eq!(r.unwrap(), ("hi\n".into(), 0));
    assert_eq!(
        sh(&channel, id, "hostname").await.unwrap().0.trim(),
        id.to_string()
    );

    // Files land in the sandbox, not on the host.
    let note = format!("/root/wrenn-e2e-{id}.txt");
    Envd::of(&channel, id)
        .write_file(&note, b"inside")
        .await
        .expect("write file");
    assert_eq!(
        sh(&channel, id, &format!("cat {note}")).await.unwrap().0,
        "inside"
    );
    assert!(
        !std::path::Path::new(&note).exists(),
        "the host never sees sandbox writes"
    );

    // Pause keeps memory: a background process survives with its pid.
    let bg = spawn(
        &channel,
        id,
        shell("n=0; while true; do n=$((n+1)); echo $n > /tmp/count; sleep 0.1; done"),
        "counter",
    )
    .await;
    c.clone()
        .pause_sandbox(pb::PauseSandboxRequest {
            sandbox_id: id.to_string(),
        })
        .await
        .unwrap();
    let err = sh(&channel, id, "true").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    c.clone()
        .resume_sandbox(pb::ResumeSandboxRequest {
            sandbox_id: id.to_string(),
            ..Default::default()
        })
        .await
        .unwrap();
    let procs = Envd::of(&channel, id).list().await.unwrap();
    assert!(
        procs
            .iter()
            .any(|p| p.tag.as_deref() == Some("counter") && p.pid == bg.pid)
    );

    // The proxy reaches a server inside the sandbox's network namespace.
    {
        spawn(
            &channel,
            id,
            command(
                "/usr/bin/python3",
                &["-m", "http.server", "8123", "--directory", "/root"],
            ),
            "web",
        )
        .await;
        let url = format!(
            "http://{}/proxy/{id}/8123/wrenn-e2e-{id}.txt",
            agent.local_addr()
        );
        let http = reqwest::Client::new();
        eventually("the proxied server", || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                match http.get(&url).send().await {
                    Ok(r) if r.status() == 200 => r.text().await.is_ok_and(|t| t == "inside"),
                    _ => false,
                }
            }
        })
        .await;
    }

    // Hibernate → resume keeps files (processes restart from scratch).
    c.clone()
        .hibernate_sandbox(pb::HibernateSandboxRequest {
            sandbox_id: id.to_string(),
        })
        .await
        .unwrap();
    let list = c
        .clone()
        .list_sandboxes(pb::ListSandboxesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(list.hibernated_sandbox_ids.contains(&id.to_string()));
    c.clone()
        .resume_sandbox(pb::ResumeSandboxRequest {
            sandbox_id: id.to_string(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        sh(&channel, id, &format!("cat {note}")).await.unwrap().0,
        "inside"
    );

    // Snapshot → a new sandbox from the template sees the files.
    let team = "00000000-0000-0000-0000-00000000e2e1";
    let tmpl = uuid::Uuid::new_v4().hyphenated().to_string();
    c.clone()
        .create_snapshot(pb::CreateSnapshotRequest {
            sandbox_id: id.to_string(),
            team_id: team.into(),
            template_id: tmpl.clone(),
        })
        .await
        .unwrap();
    let child = SandboxId::new();
    let mut req = common::create_request(child, 0);
    req.template_team_id = team.into();
    req.template_id = tmpl.clone();
    c.clone().create_sandbox(req).await.unwrap();
    assert_eq!(
        sh(&channel, child, &format!("cat {note}")).await.unwrap().0,
        "inside"
    );

    // Destroy everything; the template can then go.
    for sb in [id, child] {
        c.clone()
            .destroy_sandbox(pb::DestroySandboxRequest {
                sandbox_id: sb.to_string(),
            })
            .await
            .unwrap();
        assert_eq!(
            sh(&channel, sb, "true").await.unwrap_err().code(),
            Code::NotFound
        );
    }
    let deleted = c
        .clone()
        .delete_snapshot(pb::DeleteSnapshotRequest {
            team_id: team.into(),
            template_id: tmpl,
        })
        .await
        .unwrap()
        .into_inner()
        .deleted;
    assert!(deleted);

    // Graceful shutdown with a running sandbox hibernates it.
    let last = SandboxId::new();
    c.clone()
        .create_sandbox(common::create_request(last, 0))
        .await
        .unwrap();
    let kept = tokio::time::timeout(PATIENCE, agent.shutdown())
        .await
        .unwrap();
    assert_eq!(kept, vec![last]);
    assert!(layout.snapshot_dir(last).exists());
}

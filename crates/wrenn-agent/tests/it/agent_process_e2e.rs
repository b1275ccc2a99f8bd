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

use common::{PATIENCE, connect, eventually};
use tonic::Code;
use wrenn_agent::runtime::Runtime;
use wrenn_agent::runtime::process::{ProcessRuntime, ProcessRuntimeOptions};
use wrenn_agent::{Agent, AgentOptions};
use wrenn_core::id::SandboxId;
use wrenn_core::layout::Layout;
use wrenn_proto::hostagent::v1 as pb;
use wrenn_proto::hostagent::v1::host_agent_service_client::HostAgentServiceClient;

async fn sh(
    c: &HostAgentServiceClient<tonic::transport::Channel>,
    id: SandboxId,
    line: &str,
) -> Result<(String, i32), tonic::Status> {
    let r = c
        .clone()
        .exec(pb::ExecRequest {
            sandbox_id: id.to_string(),
            cmd: "/bin/sh".into(),
            args: vec!["-c".into(), line.into()],
            timeout_sec: 30,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok((String::from_utf8_lossy(&r.stdout).into_owned(), r.exit_code))
}

async fn write(
    c: &HostAgentServiceClient<tonic::transport::Channel>,
    id: SandboxId,
    path: &str,
    data: &[u8],
) {
    let mut msgs = vec![pb::WriteFileStreamRequest {
        msg: Some(pb::write_file_stream_request::Msg::Meta(
            pb::WriteFileMeta {
                sandbox_id: id.to_string(),
                path: path.into(),
                ..Default::default()
            },
        )),
    }];
    msgs.extend(
        data.chunks(wrenn_proto::FILE_CHUNK_SIZE)
            .map(|ch| pb::WriteFileStreamRequest {
                msg: Some(pb::write_file_stream_request::Msg::Chunk(
                    ch.to_vec().into(),
                )),
            }),
    );
    c.clone()
        .write_file_stream(futures::stream::iter(msgs))
        .await
        .expect("write file");
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
    let c = connect(agent.local_addr()).await;

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
    let r = sh(&c, id, "echo hi").await;
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
        sh(&c, id, "hostname").await.unwrap().0.trim(),
        id.to_string()
    );

    // Files land in the sandbox, not on the host.
    let note = format!("/root/wrenn-e2e-{id}.txt");
    write(&c, id, &note, b"inside").await;
    assert_eq!(
        sh(&c, id, &format!("cat {note}")).await.unwrap().0,
        "inside"
    );
    assert!(
        !std::path::Path::new(&note).exists(),
        "the host never sees sandbox writes"
    );

    // Pause keeps memory: a background process survives with its pid.
    let bg = c
        .clone()
        .start_background(pb::StartBackgroundRequest {
            sandbox_id: id.to_string(),
            cmd: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                "n=0; while true; do n=$((n+1)); echo $n > /tmp/count; sleep 0.1; done".into(),
            ],
            tag: "counter".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    c.clone()
        .pause_sandbox(pb::PauseSandboxRequest {
            sandbox_id: id.to_string(),
        })
        .await
        .unwrap();
    let err = sh(&c, id, "true").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    c.clone()
        .resume_sandbox(pb::ResumeSandboxRequest {
            sandbox_id: id.to_string(),
            ..Default::default()
        })
        .await
        .unwrap();
    let procs = c
        .clone()
        .list_processes(pb::ListProcessesRequest {
            sandbox_id: id.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        procs
            .processes
            .iter()
            .any(|p| p.tag == "counter" && p.pid == bg.pid)
    );

    // The proxy reaches a server inside the sandbox's network namespace.
    {
        c.clone()
            .start_background(pb::StartBackgroundRequest {
                sandbox_id: id.to_string(),
                cmd: "/usr/bin/python3".into(),
                args: vec![
                    "-m".into(),
                    "http.server".into(),
                    "8123".into(),
                    "--directory".into(),
                    "/root".into(),
                ],
                tag: "web".into(),
                ..Default::default()
            })
            .await
            .unwrap();
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
        sh(&c, id, &format!("cat {note}")).await.unwrap().0,
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
        sh(&c, child, &format!("cat {note}")).await.unwrap().0,
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
        assert_eq!(sh(&c, sb, "true").await.unwrap_err().code(), Code::NotFound);
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

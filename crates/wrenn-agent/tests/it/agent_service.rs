//! The agent's gRPC service end to end: a real agent on 127.0.0.1:0, a tonic client,
//! and real `wrenn-envd` processes behind a test runtime (see `common`).

use crate::common;

use std::time::Duration;

use common::{FakeControlPlane, PATIENCE, Setup, TestAgent, create_request, eventually};
use tonic::Code;
use wrenn_core::id::{HostId, SandboxId};
use wrenn_proto::hostagent::v1 as pb;

fn sel_tag(tag: &str) -> Option<pb::ProcessSelector> {
    Some(pb::ProcessSelector {
        selector: Some(pb::process_selector::Selector::Tag(tag.into())),
    })
}

fn sel_pid(pid: u32) -> Option<pb::ProcessSelector> {
    Some(pb::ProcessSelector {
        selector: Some(pb::process_selector::Selector::Pid(pid)),
    })
}

/// Collects an ExecEvent stream: (pid, stdout, stderr, end).
async fn collect_exec(
    mut s: tonic::Streaming<pb::ExecEvent>,
) -> (u32, String, String, Option<pb::ExecEnd>) {
    let (mut pid, mut out, mut err, mut end) = (0, Vec::new(), Vec::new(), None);
    while let Some(ev) = tokio::time::timeout(PATIENCE, s.message())
        .await
        .expect("stream event in time")
        .expect("stream ok")
    {
        match ev.event.unwrap() {
            pb::exec_event::Event::Start(st) => pid = st.pid,
            pb::exec_event::Event::Data(d) => match d.output.unwrap() {
                pb::exec_data::Output::Stdout(b) => out.extend(b),
                pb::exec_data::Output::Stderr(b) => err.extend(b),
            },
            pb::exec_event::Event::End(e) => {
                end = Some(e);
                break;
            }
        }
    }
    (
        pid,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
        end,
    )
}

#[tokio::test]
async fn create_exec_echo_and_metadata() {
    let agent = TestAgent::start().await;
    let id = SandboxId::new();
    let mut req = create_request(id, 0);
    req.metadata.insert("owner".into(), "tests".into());
    req.metadata
        .insert("runtime".into(), "caller-value-loses".into());
    req.default_env.insert("GREETING".into(), "hello".into());
    let created = agent
        .client
        .clone()
        .create_sandbox(req)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.status(), pb::SandboxStatus::Running);
    assert_eq!(created.host_ip, "127.0.0.1");
    assert_eq!(created.metadata["owner"], "tests");
    assert_eq!(created.metadata["runtime"], "envd-test");
    assert!(created.metadata.contains_key("envd_version"));
    assert!(created.metadata.contains_key("agent_version"));

    let resp = agent
        .client
        .clone()
        .exec(pb::ExecRequest {
            sandbox_id: id.to_string(),
            cmd: "echo".into(),
            args: vec!["hi".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.stdout, b"hi\n");
    assert_eq!(resp.exit_code, 0);
    assert!(!resp.truncated);

    // Exit codes, stderr, default env from Init, request env and cwd, stdin.
    let (out, err, code) = agent
        .sh(id, "echo $GREETING; echo oops >&2; exit 3")
        .await
        .unwrap();
    assert_eq!((out.as_str(), err.as_str(), code), ("hello\n", "oops\n", 3));
    let mut envs = std::collections::HashMap::new();
    envs.insert("X".to_owned(), "42".to_owned());
    let resp = agent
        .client
        .clone()
        .exec(pb::ExecRequest {
            sandbox_id: id.to_string(),
            cmd: "/bin/sh".into(),
            args: vec!["-c".into(), "echo $X; pwd; cat".into()],
            envs,
            cwd: Some(agent.scratch.display().to_string()),
            stdin: Some(b"from stdin".to_vec()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        String::from_utf8_lossy(&resp.stdout),
        format!("42\n{}\nfrom stdin", agent.scratch.display())
    );

    // Bad input to Exec.
    let err = agent
        .client
        .clone()
        .exec(pb::ExecRequest {
            sandbox_id: id.to_string(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = agent
        .client
        .clone()
        .exec(pb::ExecRequest {
            sandbox_id: id.to_string(),
            cmd: "true".into(),
            cwd: Some("/nonexistent/dir".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // A duplicate id is refused and the running sandbox is untouched.
    let err = agent
        .client
        .clone()
        .create_sandbox(create_request(id, 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(agent.sh(id, "echo still").await.unwrap().0, "still\n");
}

#[tokio::test]
async fn exec_timeout_kills_the_process_and_output_is_capped() {
    let agent = TestAgent::start().await;
    let id = agent.create(0).await;
    let marker = agent.path("slept");
    let started = std::time::Instant::now();
    let err = agent
        .client
        .clone()
        .exec(pb::ExecRequest {
            sandbox_id: id.to_string(),
            cmd: "/bin/sh".into(),
            args: vec!["-c".into(), format!("sleep 3; touch {marker}")],
            timeout_sec: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !std::path::Path::new(&marker).exists(),
        "the process was killed"
    );

    // 17 MiB of output: 16 MiB kept, truncated set.
    let resp = agent
        .client
        .clone()
        .exec(pb::ExecRequest {
            sandbox_id: id.to_string(),
            cmd: "head".into(),
            args: vec![
                "-c".into(),
                (17 * 1024 * 1024).to_string(),
                "/dev/zero".into(),
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.stdout.len(), 16 * 1024 * 1024);
    assert!(resp.truncated);
}

#[tokio::test]
async fn exec_stream_events_and_cancel_kills() {
    let agent = TestAgent::start().await;
    let id = agent.create(0).await;
    let s = agent
        .client
        .clone()
        .exec_stream(pb::ExecStreamRequest {
            sandbox_id: id.to_string(),
            cmd: "/bin/sh".into(),
            args: vec!["-c".into(), "echo one; echo two >&2; exit 4".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (pid, out, err, end) = collect_exec(s).await;
    assert!(pid > 0);
    assert_eq!((out.as_str(), err.as_str()), ("one\n", "two\n"));
    let end = end.unwrap();
    assert_eq!(end.exit_code, 4);
    assert_eq!(end.error, None);

    // Timeout: the stream ends with an error and the process is gone.
    let s = agent
        .client
        .clone()
        .exec_stream(pb::ExecStreamRequest {
            sandbox_id: id.to_string(),
            cmd: "sleep".into(),
            args: vec!["30".into()],
            timeout_sec: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (_, _, _, end) = collect_exec(s).await;
    let end = end.unwrap();
    assert_eq!(end.exit_code, -1);
    assert!(end.error.unwrap().contains("timed out"));

    // Cancelling the stream kills the process.
    let mut s = agent
        .client
        .clone()
        .exec_stream(pb::ExecStreamRequest {
            sandbox_id: id.to_string(),
            cmd: "sleep".into(),
            args: vec!["31".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = s.message().await.unwrap().unwrap();
    let Some(pb::exec_event::Event::Start(st)) = first.event else {
        panic!("first event is start")
    };
    drop(s);
    let client = agent.client.clone();
    eventually("the cancelled process to be killed", || {
        let mut c = client.clone();
        async move {
            let list = c
                .list_processes(pb::ListProcessesRequest {
                    sandbox_id: id.to_string(),
                })
                .await
                .unwrap()
                .into_inner();
            !list.processes.iter().any(|p| p.pid == st.pid)
        }
    })
    .await;

    // Errors before the first event are the call's status.
    let err = agent
        .client
        .clone()
        .exec_stream(pb::ExecStreamRequest {
            sandbox_id: id.to_string(),
            cmd: "/definitely/not/here".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}

#[tokio::test]
async fn background_process_connect_replay_input_and_kill() {
    let agent = TestAgent::start().await;
    let id = agent.create(0).await;
    let mut c = agent.client.clone();
    let bg = c
        .start_background(pb::StartBackgroundRequest {
            sandbox_id: id.to_string(),
            cmd: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                "echo ready; while read line; do echo got:$line; done; echo bye".into(),
            ],
            tag: "worker".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bg.tag, "worker");
    assert!(bg.pid > 0);

    // A second live process with the same tag is refused; a bad tag is invalid.
    let err = c
        .start_background(pb::StartBackgroundRequest {
            sandbox_id: id.to_string(),
            cmd: "sleep".into(),
            args: vec!["5".into()],
            tag: "worker".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let err = c
        .start_background(pb::StartBackgroundRequest {
            sandbox_id: id.to_string(),
            cmd: "sleep".into(),
            tag: "bad tag!".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // A generated tag.
    let gen_tag = c
        .start_background(pb::StartBackgroundRequest {
            sandbox_id: id.to_string(),
            cmd: "sleep".into(),
            args: vec!["30".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        gen_tag.tag.starts_with("proc-") && gen_tag.tag.len() == 13,
        "{}",
        gen_tag.tag
    );

    let list = c
        .list_processes(pb::ListProcessesRequest {
            sandbox_id: id.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    let worker = list.processes.iter().find(|p| p.tag == "worker").unwrap();
    assert_eq!(worker.pid, bg.pid);
    assert_eq!(worker.cmd, "/bin/sh");

    // Reattach with replay: the earlier "ready" comes first.
    let mut s = c
        .connect_process(pb::ConnectProcessRequest {
            sandbox_id: id.to_string(),
            process: sel_tag("worker"),
            replay: true,
        })
        .await
        .unwrap()
        .into_inner();
    let first = s.message().await.unwrap().unwrap();
    assert!(matches!(first.event, Some(pb::exec_event::Event::Start(ref st)) if st.pid == bg.pid));
    c.send_process_input(pb::SendProcessInputRequest {
        sandbox_id: id.to_string(),
        process: sel_pid(bg.pid),
        stdin: b"abc\n".to_vec(),
    })
    .await
    .unwrap();
    c.close_process_stdin(pb::CloseProcessStdinRequest {
        sandbox_id: id.to_string(),
        process: sel_tag("worker"),
    })
    .await
    .unwrap();
    let (_, out, _, end) = collect_exec(s).await;
    assert_eq!(out, "ready\ngot:abc\nbye\n");
    assert_eq!(end.unwrap().exit_code, 0);

    // KillProcess by tag; no selector is invalid; an unknown process is NotFound.
    c.kill_process(pb::KillProcessRequest {
        sandbox_id: id.to_string(),
        process: sel_tag(&gen_tag.tag),
        signal: pb::Signal::Sigterm as i32,
    })
    .await
    .unwrap();
    let err = c
        .kill_process(pb::KillProcessRequest {
            sandbox_id: id.to_string(),
            process: None,
            signal: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .kill_process(pb::KillProcessRequest {
            sandbox_id: id.to_string(),
            process: sel_tag("nobody"),
            signal: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .connect_process(pb::ConnectProcessRequest {
            sandbox_id: id.to_string(),
            process: sel_pid(999_999),
            replay: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn pty_attach_input_resize_reattach_kill() {
    let agent = TestAgent::start().await;
    let id = agent.create(0).await;
    let mut c = agent.client.clone();
    let mut s = c
        .pty_attach(pb::PtyAttachRequest {
            sandbox_id: id.to_string(),
            cmd: "/bin/sh".into(),
            cols: 80,
            rows: 24,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let started = match s.message().await.unwrap().unwrap().event.unwrap() {
        pb::pty_event::Event::Started(st) => st,
        other => panic!("first event {other:?}"),
    };
    assert!(started.tag.starts_with("pty-"), "{}", started.tag);
    let tag = started.tag.clone();

    c.pty_send_input(pb::PtySendInputRequest {
        sandbox_id: id.to_string(),
        tag: tag.clone(),
        data: b"stty size; echo TERM=$TERM\n".to_vec(),
    })
    .await
    .unwrap();
    let mut seen = String::new();
    while !(seen.contains("24 80") && seen.contains("TERM=xterm-256color")) {
        let ev = tokio::time::timeout(PATIENCE, s.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(pb::pty_event::Event::Output(o)) = ev.event {
            seen.push_str(&String::from_utf8_lossy(&o.data));
        }
    }

    c.pty_resize(pb::PtyResizeRequest {
        sandbox_id: id.to_string(),
        tag: tag.clone(),
        cols: 100,
        rows: 40,
    })
    .await
    .unwrap();
    let err = c
        .pty_resize(pb::PtyResizeRequest {
            sandbox_id: id.to_string(),
            tag: tag.clone(),
            cols: 0,
            rows: 40,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Detach, then reattach by tag: `started` again, then live output.
    drop(s);
    let mut s = c
        .pty_attach(pb::PtyAttachRequest {
            sandbox_id: id.to_string(),
            tag: tag.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    match s.message().await.unwrap().unwrap().event.unwrap() {
        pb::pty_event::Event::Started(st) => assert_eq!(st.pid, started.pid),
        other => panic!("first event on reattach {other:?}"),
    }
    c.pty_send_input(pb::PtySendInputRequest {
        sandbox_id: id.to_string(),
        tag: tag.clone(),
        data: b"stty size\n".to_vec(),
    })
    .await
    .unwrap();
    let mut seen = String::new();
    while !seen.contains("40 100") {
        let ev = tokio::time::timeout(PATIENCE, s.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(pb::pty_event::Event::Output(o)) = ev.event {
            seen.push_str(&String::from_utf8_lossy(&o.data));
        }
    }

    c.pty_kill(pb::PtyKillRequest {
        sandbox_id: id.to_string(),
        tag: tag.clone(),
    })
    .await
    .unwrap();
    loop {
        let ev = tokio::time::timeout(PATIENCE, s.message())
            .await
            .unwrap()
            .unwrap();
        match ev.and_then(|e| e.event) {
            Some(pb::pty_event::Event::Exited(x)) => {
                assert_eq!(x.exit_code, -1);
                break;
            }
            Some(_) => {}
            None => panic!("stream ended without exited"),
        }
    }

    // Reattach to an unknown tag, a new PTY without a size, PtyKill on a pipe process.
    let err = c
        .pty_attach(pb::PtyAttachRequest {
            sandbox_id: id.to_string(),
            tag: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .pty_attach(pb::PtyAttachRequest {
            sandbox_id: id.to_string(),
            cmd: "/bin/sh".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    c.start_background(pb::StartBackgroundRequest {
        sandbox_id: id.to_string(),
        cmd: "sleep".into(),
        args: vec!["30".into()],
        tag: "pipe".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let err = c
        .pty_kill(pb::PtyKillRequest {
            sandbox_id: id.to_string(),
            tag: "pipe".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn files_stream_20_mib_and_fs_operations() {
    let agent = TestAgent::start().await;
    let id = agent.create(0).await;
    let mut c = agent.client.clone();
    let path = agent.path("sub/dir/big.bin");

    // 20 MiB of non-trivial content, streamed in 64 KiB chunks.
    const SIZE: usize = 20 * 1024 * 1024;
    let content: Vec<u8> = (0..SIZE).map(|i| (i * 7 % 251) as u8).collect();
    let mut msgs = vec![pb::WriteFileStreamRequest {
        msg: Some(pb::write_file_stream_request::Msg::Meta(
            pb::WriteFileMeta {
                sandbox_id: id.to_string(),
                path: path.clone(),
                mode: Some(0o600),
                user: None,
            },
        )),
    }];
    msgs.extend(
        content
            .chunks(wrenn_proto::FILE_CHUNK_SIZE)
            .map(|c| pb::WriteFileStreamRequest {
                msg: Some(pb::write_file_stream_request::Msg::Chunk(c.to_vec().into())),
            }),
    );
    let resp = c
        .write_file_stream(futures::stream::iter(msgs))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.size, SIZE as u64);
    assert_eq!(resp.path, path);
    assert_eq!(std::fs::read(&path).unwrap(), content, "on disk");

    let mut s = c
        .read_file_stream(pb::ReadFileStreamRequest {
            sandbox_id: id.to_string(),
            path: path.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut back = Vec::with_capacity(SIZE);
    let mut first = true;
    while let Some(m) = s.message().await.unwrap() {
        assert!(m.chunk.len() <= wrenn_proto::FILE_CHUNK_SIZE);
        if first {
            assert_eq!(m.total_size, Some(SIZE as u64));
            first = false;
        } else {
            assert_eq!(m.total_size, None);
        }
        back.extend(m.chunk);
    }
    assert!(back == content, "read back what was written");

    // Stat, ListDir, MakeDir (AlreadyExists passed through), Move, RemovePath.
    let st = c
        .stat(pb::StatRequest {
            sandbox_id: id.to_string(),
            path: path.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert_eq!(st.r#type(), pb::FileType::File);
    assert_eq!(st.size, SIZE as u64);
    assert_eq!(st.mode, 0o600);
    assert!(st.modified_at_unix > 0);
    let dir = agent.path("made");
    let made = c
        .make_dir(pb::MakeDirRequest {
            sandbox_id: id.to_string(),
            path: dir.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert_eq!(made.r#type(), pb::FileType::Directory);
    let err = c
        .make_dir(pb::MakeDirRequest {
            sandbox_id: id.to_string(),
            path: dir.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let moved = c
        .r#move(pb::MoveRequest {
            sandbox_id: id.to_string(),
            source: path.clone(),
            destination: format!("{dir}/big.bin"),
        })
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert_eq!(moved.name, "big.bin");
    let list = c
        .list_dir(pb::ListDirRequest {
            sandbox_id: id.to_string(),
            path: agent.scratch.display().to_string(),
            depth: 3,
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = list.entries.iter().map(|e| e.name.as_str()).collect();
    assert!(
        names.contains(&"made") && names.contains(&"big.bin") && names.contains(&"sub"),
        "{names:?}"
    );
    c.remove_path(pb::RemovePathRequest {
        sandbox_id: id.to_string(),
        path: dir.clone(),
    })
    .await
    .unwrap();
    let err = c
        .stat(pb::StatRequest {
            sandbox_id: id.to_string(),
            path: dir.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .read_file_stream(pb::ReadFileStreamRequest {
            sandbox_id: id.to_string(),
            path: agent.path("missing"),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Malformed write streams.
    let err = c
        .write_file_stream(futures::stream::iter(vec![pb::WriteFileStreamRequest {
            msg: Some(pb::write_file_stream_request::Msg::Chunk(
                b"x".to_vec().into(),
            )),
        }]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let meta = pb::WriteFileStreamRequest {
        msg: Some(pb::write_file_stream_request::Msg::Meta(
            pb::WriteFileMeta {
                sandbox_id: id.to_string(),
                path: agent.path("too-big"),
                ..Default::default()
            },
        )),
    };
    let err = c
        .write_file_stream(futures::stream::iter(vec![
            meta.clone(),
            pb::WriteFileStreamRequest {
                msg: Some(pb::write_file_stream_request::Msg::Chunk(
                    vec![0; wrenn_proto::FILE_CHUNK_SIZE + 1].into(),
                )),
            },
        ]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .write_file_stream(futures::stream::iter(vec![meta.clone(), meta]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .stat(pb::StatRequest {
            sandbox_id: id.to_string(),
            path: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn pause_refuses_exec_then_resume_and_destroy() {
    let cp = FakeControlPlane::start(0).await;
    let host = HostId::new();
    let agent = TestAgent::start_with(Setup {
        cp: Some((cp.url.clone(), host, "host-jwt".into())),
        ..Setup::default()
    })
    .await;
    let id = agent.create(0).await;
    let mut c = agent.client.clone();

    // A background process whose state must survive the pause.
    c.start_background(pb::StartBackgroundRequest {
        sandbox_id: id.to_string(),
        cmd: "sleep".into(),
        args: vec!["60".into()],
        tag: "survivor".into(),
        ..Default::default()
    })
    .await
    .unwrap();

    c.pause_sandbox(pb::PauseSandboxRequest {
        sandbox_id: id.to_string(),
    })
    .await
    .unwrap();
    assert_eq!(agent.status(id).await, Some(pb::SandboxStatus::Paused));
    let err = agent.sh(id, "echo no").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("paused"), "{}", err.message());
    let err = c
        .ping_sandbox(pb::PingSandboxRequest {
            sandbox_id: id.to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = c
        .pause_sandbox(pb::PauseSandboxRequest {
            sandbox_id: id.to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    // A manual pause is not an auto-pause.
    let list = c
        .list_sandboxes(pb::ListSandboxesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(list.auto_paused_sandbox_ids.is_empty());

    let resumed = c
        .resume_sandbox(pb::ResumeSandboxRequest {
            sandbox_id: id.to_string(),
            timeout_sec: 0,
            default_user: String::new(),
            default_env: [("AFTER".to_owned(), "resume".to_owned())].into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resumed.status(), pb::SandboxStatus::Running);
    assert_eq!(agent.sh(id, "echo $AFTER").await.unwrap().0, "resume\n");
    let list = c
        .list_processes(pb::ListProcessesRequest {
            sandbox_id: id.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(list.processes.iter().any(|p| p.tag == "survivor"));
    let err = c
        .resume_sandbox(pb::ResumeSandboxRequest {
            sandbox_id: id.to_string(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    c.ping_sandbox(pb::PingSandboxRequest {
        sandbox_id: id.to_string(),
    })
    .await
    .unwrap();

    c.destroy_sandbox(pb::DestroySandboxRequest {
        sandbox_id: id.to_string(),
    })
    .await
    .unwrap();
    assert_eq!(agent.status(id).await, None);
    assert!(!agent.layout.sandbox_dir(id).exists());
    let err = agent.sh(id, "true").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .destroy_sandbox(pb::DestroySandboxRequest {
            sandbox_id: id.to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // The control plane heard about every step, with the host token.
    for kind in ["started", "paused", "resumed", "stopped"] {
        let r = cp.wait_for(kind, id).await;
        assert_eq!(r.host_token.as_deref(), Some("host-jwt"));
        assert_eq!(r.body["host_id"], host.to_string());
        assert!(r.body["timestamp"].as_i64().unwrap() > 0);
    }
}

#[tokio::test]
async fn unknown_and_malformed_ids() {
    let agent = TestAgent::start().await;
    let mut c = agent.client.clone();
    let unknown = SandboxId::new().to_string();
    let err = c
        .exec(pb::ExecRequest {
            sandbox_id: unknown.clone(),
            cmd: "true".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains(&unknown));
    for code in [
        c.pause_sandbox(pb::PauseSandboxRequest {
            sandbox_id: unknown.clone(),
        })
        .await
        .unwrap_err()
        .code(),
        c.resume_sandbox(pb::ResumeSandboxRequest {
            sandbox_id: unknown.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err()
        .code(),
        c.hibernate_sandbox(pb::HibernateSandboxRequest {
            sandbox_id: unknown.clone(),
        })
        .await
        .unwrap_err()
        .code(),
        c.ping_sandbox(pb::PingSandboxRequest {
            sandbox_id: unknown.clone(),
        })
        .await
        .unwrap_err()
        .code(),
        c.destroy_sandbox(pb::DestroySandboxRequest {
            sandbox_id: unknown.clone(),
        })
        .await
        .unwrap_err()
        .code(),
        c.get_sandbox_metrics(pb::GetSandboxMetricsRequest {
            sandbox_id: unknown.clone(),
            range: String::new(),
        })
        .await
        .unwrap_err()
        .code(),
        c.pty_kill(pb::PtyKillRequest {
            sandbox_id: unknown.clone(),
            tag: "x".into(),
        })
        .await
        .unwrap_err()
        .code(),
        c.create_snapshot(pb::CreateSnapshotRequest {
            sandbox_id: unknown.clone(),
            team_id: "00000000-0000-0000-0000-000000000001".into(),
            template_id: "00000000-0000-0000-0000-000000000002".into(),
        })
        .await
        .unwrap_err()
        .code(),
    ] {
        assert_eq!(code, Code::NotFound);
    }

    for bad in [
        "",
        "cl-short",
        "usr-0000000000000000000000000",
        "cl-ABCDEFGHIJKLMNOPQRSTUVWXY",
        "../../etc",
    ] {
        let err = c
            .create_sandbox(pb::CreateSandboxRequest {
                sandbox_id: bad.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
        let err = c
            .destroy_sandbox(pb::DestroySandboxRequest {
                sandbox_id: bad.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
        let err = c
            .stat(pb::StatRequest {
                sandbox_id: bad.into(),
                path: "/".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
    }
    let id = SandboxId::new();
    for (team, template) in [
        ("not-a-uuid", ""),
        ("", "12345"),
        ("00000000000000000000000000000001", ""),
    ] {
        let err = c
            .create_sandbox(pb::CreateSandboxRequest {
                sandbox_id: id.to_string(),
                team_id: team.into(),
                template_id: template.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{team:?} {template:?}");
    }
    let err = c
        .create_sandbox(pb::CreateSandboxRequest {
            sandbox_id: id.to_string(),
            vcpus: 1000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // A template this host does not have.
    let err = c
        .create_sandbox(pb::CreateSandboxRequest {
            sandbox_id: id.to_string(),
            template_id: "00000000-0000-0000-0000-0000000000aa".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(
        agent.status(id).await,
        None,
        "a failed create leaves nothing"
    );
    // Defaults that envd cannot apply fail the create, and the sandbox is destroyed.
    let mut req = create_request(id, 0);
    req.default_user = "no-such-user-here".into();
    let err = c.create_sandbox(req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(agent.status(id).await, None);
    assert!(!agent.layout.sandbox_dir(id).exists());
    // Nothing was touched by any of it.
    let list = c
        .list_sandboxes(pb::ListSandboxesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(list.sandboxes.is_empty());
}

#[tokio::test]
async fn ttl_auto_pause_is_reported_then_hibernated_then_resumed() {
    let cp = FakeControlPlane::start(2).await; // the first two POSTs fail: retried
    let host = HostId::new();
    let mut setup = Setup {
        cp: Some((cp.url.clone(), host, "jwt-1".into())),
        reaper_tick: Duration::from_millis(200),
        ..Setup::default()
    };
    setup.settings.min_timeout = Duration::from_secs(1);
    setup.settings.hibernate_after = Duration::from_secs(2);
    let agent = TestAgent::start_with(setup).await;
    let idle = agent.create(1).await;
    let busy = agent.create(0).await; // timeout 0 = never paused
    let file = agent.path("kept.txt");
    agent
        .sh(idle, &format!("echo kept > {file}"))
        .await
        .unwrap();

    let mut c = agent.client.clone();
    eventually("the idle sandbox to be auto-paused", || {
        let mut c = c.clone();
        async move {
            let list = c
                .list_sandboxes(pb::ListSandboxesRequest {})
                .await
                .unwrap()
                .into_inner();
            list.auto_paused_sandbox_ids.contains(&idle.to_string())
        }
    })
    .await;
    // Not drained on read.
    let list = c
        .list_sandboxes(pb::ListSandboxesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(list.auto_paused_sandbox_ids.contains(&idle.to_string()));
    assert!(!list.auto_paused_sandbox_ids.contains(&busy.to_string()));
    assert_eq!(agent.status(busy).await, Some(pb::SandboxStatus::Running));
    let ev = cp.wait_for("auto_paused", idle).await;
    assert_eq!(ev.host_token.as_deref(), Some("jwt-1"));
    assert_eq!(ev.body["host_id"], host.to_string());
    assert!(ev.body.get("team_id").is_some());

    // Paused longer than hibernate_after: hibernated and reported.
    cp.wait_for("hibernated", idle).await;
    let list = c
        .list_sandboxes(pb::ListSandboxesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(list.hibernated_sandbox_ids.contains(&idle.to_string()));
    assert!(!list.auto_paused_sandbox_ids.contains(&idle.to_string()));
    let info = list
        .sandboxes
        .iter()
        .find(|s| s.sandbox_id == idle.to_string())
        .unwrap();
    assert_eq!(info.status(), pb::SandboxStatus::Hibernated);
    assert_eq!(info.host_ip, "");
    let err = c
        .get_sandbox_metrics(pb::GetSandboxMetricsRequest {
            sandbox_id: idle.to_string(),
            range: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // Resume from hibernated: files kept, defaults re-applied, timeout replaced.
    c.resume_sandbox(pb::ResumeSandboxRequest {
        sandbox_id: idle.to_string(),
        timeout_sec: 0,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        agent.sh(idle, &format!("cat {file}")).await.unwrap().0,
        "kept\n"
    );
    cp.wait_for("resumed", idle).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        agent.status(idle).await,
        Some(pb::SandboxStatus::Running),
        "timeout 0 now"
    );
}

#[tokio::test]
async fn activity_postpones_the_auto_pause() {
    let mut setup = Setup {
        reaper_tick: Duration::from_millis(100),
        ..Setup::default()
    };
    setup.settings.min_timeout = Duration::from_secs(1);
    let agent = TestAgent::start_with(setup).await;
    let id = agent.create(1).await;
    let mut c = agent.client.clone();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        c.ping_sandbox(pb::PingSandboxRequest {
            sandbox_id: id.to_string(),
        })
        .await
        .unwrap();
    }
    assert_eq!(agent.status(id).await, Some(pb::SandboxStatus::Running));
    // Streamed output counts too: a 3 s stream that prints every 300 ms.
    let s = c
        .exec_stream(pb::ExecStreamRequest {
            sandbox_id: id.to_string(),
            cmd: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                "for i in 1 2 3 4 5 6 7 8 9 10; do echo $i; sleep 0.3; done".into(),
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (_, out, _, end) = collect_exec(s).await;
    assert!(out.ends_with("10\n"));
    assert_eq!(end.unwrap().exit_code, 0);
    eventually("the auto-pause once idle", || {
        let a = &agent;
        async move { a.status(id).await == Some(pb::SandboxStatus::Paused) }
    })
    .await;
}

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
async fn pause_all_reports_auto_paused_and_failures() {
    let cp = FakeControlPlane::start(0).await;
    let agent = TestAgent::start_with(Setup {
        cp: Some((cp.url.clone(), HostId::new(), "t".into())),
        ..Setup::default()
    })
    .await;
    let a = agent.create(0).await;
    let b = agent.create(0).await;
    let mut c = agent.client.clone();
    let out = c
        .pause_all(pb::PauseAllRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut paused = out.paused_sandbox_ids.clone();
    paused.sort();
    let mut want = vec![a.to_string(), b.to_string()];
    want.sort();
    assert_eq!(paused, want);
    assert!(out.failed.is_empty());
    let list = c
        .list_sandboxes(pb::ListSandboxesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.auto_paused_sandbox_ids.len(), 2);
    cp.wait_for("auto_paused", a).await;
    cp.wait_for("auto_paused", b).await;

    // A pause that fails leaves the sandbox running and is reported.
    c.resume_sandbox(pb::ResumeSandboxRequest {
        sandbox_id: a.to_string(),
        ..Default::default()
    })
    .await
    .unwrap();
    agent
        .runtime
        .fail_next_pause
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let out = c
        .pause_all(pb::PauseAllRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(out.paused_sandbox_ids.is_empty());
    assert!(out.failed[&a.to_string()].contains("injected"));
    assert_eq!(agent.status(a).await, Some(pb::SandboxStatus::Running));
    assert_eq!(agent.sh(a, "echo alive").await.unwrap().0, "alive\n");
    cp.wait_for("pause_failed", a).await;
}

#[tokio::test]
async fn snapshots_create_delete_and_flatten() {
    let agent = TestAgent::start().await;
    let id = agent.create(0).await;
    let mut c = agent.client.clone();
    let team = "00000000-0000-0000-0000-0000000000c1";
    let tmpl = "00000000-0000-0000-0000-0000000000d1";
    let size = c
        .create_snapshot(pb::CreateSnapshotRequest {
            sandbox_id: id.to_string(),
            team_id: team.into(),
            template_id: tmpl.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .size_bytes;
    assert!(size > 0);
    assert_eq!(
        agent.status(id).await,
        Some(pb::SandboxStatus::Running),
        "a running sandbox carries on after the snapshot"
    );
    assert_eq!(agent.sh(id, "echo after").await.unwrap().0, "after\n");
    let err = c
        .create_snapshot(pb::CreateSnapshotRequest {
            sandbox_id: id.to_string(),
            team_id: team.into(),
            template_id: tmpl.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    for (team_id, template_id) in [
        ("", tmpl),
        (team, "00000000-0000-0000-0000-000000000000"),
        (team, "nope"),
    ] {
        let err = c
            .create_snapshot(pb::CreateSnapshotRequest {
                sandbox_id: id.to_string(),
                team_id: team_id.into(),
                template_id: template_id.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{team_id:?} {template_id:?}"
        );
    }

    // A new sandbox from the template; the template cannot be deleted while used.
    let child = SandboxId::new();
    let mut req = create_request(child, 0);
    req.template_team_id = team.into();
    req.template_id = tmpl.into();
    c.create_sandbox(req).await.unwrap();
    let err = c
        .delete_snapshot(pb::DeleteSnapshotRequest {
            team_id: team.into(),
            template_id: tmpl.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    c.destroy_sandbox(pb::DestroySandboxRequest {
        sandbox_id: child.to_string(),
    })
    .await
    .unwrap();
    let deleted = c
        .delete_snapshot(pb::DeleteSnapshotRequest {
            team_id: team.into(),
            template_id: tmpl.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .deleted;
    assert!(deleted);
    let again = c
        .delete_snapshot(pb::DeleteSnapshotRequest {
            team_id: team.into(),
            template_id: tmpl.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .deleted;
    assert!(!again);
    let err = c
        .delete_snapshot(pb::DeleteSnapshotRequest {
            team_id: "00000000-0000-0000-0000-000000000000".into(),
            template_id: "00000000-0000-0000-0000-000000000000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // FlattenRootfs: validated (a paused sandbox is refused), then UNIMPLEMENTED for
    // this runtime.
    c.pause_sandbox(pb::PauseSandboxRequest {
        sandbox_id: id.to_string(),
    })
    .await
    .unwrap();
    let err = c
        .flatten_rootfs(pb::FlattenRootfsRequest {
            sandbox_id: id.to_string(),
            team_id: team.into(),
            template_id: tmpl.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "paused");
    c.resume_sandbox(pb::ResumeSandboxRequest {
        sandbox_id: id.to_string(),
        ..Default::default()
    })
    .await
    .unwrap();
    let err = c
        .flatten_rootfs(pb::FlattenRootfsRequest {
            sandbox_id: id.to_string(),
            team_id: team.into(),
            template_id: tmpl.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(err.message().contains("CreateSnapshot"));
}

#[tokio::test]
async fn metrics_sandbox_and_host() {
    let agent = TestAgent::start().await;
    let id = agent.create(0).await;
    let mut c = agent.client.clone();
    eventually("samples", || {
        let mut c = c.clone();
        async move {
            !c.get_sandbox_metrics(pb::GetSandboxMetricsRequest {
                sandbox_id: id.to_string(),
                range: "5m".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .points
            .is_empty()
        }
    })
    .await;
    let points = c
        .get_sandbox_metrics(pb::GetSandboxMetricsRequest {
            sandbox_id: id.to_string(),
            range: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .points;
    let p = points.last().unwrap();
    assert!(p.mem_bytes > 0 && (0.0..=100.0).contains(&p.cpu_pct) && p.timestamp_unix > 0);
    let err = c
        .get_sandbox_metrics(pb::GetSandboxMetricsRequest {
            sandbox_id: id.to_string(),
            range: "3d".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let flushed = c
        .flush_sandbox_metrics(pb::FlushSandboxMetricsRequest {
            sandbox_id: id.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!flushed.points_10m.is_empty());
    let host = c
        .get_host_metrics(pb::GetHostMetricsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(host.cpu_count >= 1 && host.memory_total_bytes > 0 && host.disk_total_bytes > 0);
    assert_eq!(
        (
            host.sandbox_count,
            host.running_sandbox_count,
            host.vcpus_allocated
        ),
        (1, 1, 1)
    );
    assert_eq!(host.memory_allocated_mb, 512);
}

#[tokio::test]
async fn auth_token_is_required_when_configured() {
    let agent = TestAgent::start_with(Setup {
        auth_token: Some("s3cret".into()),
        ..Setup::default()
    })
    .await;
    let err = agent
        .client
        .clone()
        .list_sandboxes(pb::ListSandboxesRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut req = tonic::Request::new(pb::ListSandboxesRequest {});
    req.metadata_mut()
        .insert("authorization", "Bearer wrong".parse().unwrap());
    assert_eq!(
        agent
            .client
            .clone()
            .list_sandboxes(req)
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    let mut req = tonic::Request::new(pb::ListSandboxesRequest {});
    req.metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    agent.client.clone().list_sandboxes(req).await.unwrap();
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

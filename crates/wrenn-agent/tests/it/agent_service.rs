//! The agent's gRPC service end to end: a real agent on 127.0.0.1:0, tonic clients of
//! its `HostAgentService` and of the envd services it forwards, and real `wrenn-envd`
//! processes behind a test runtime (see `common`).

use crate::common;

use std::time::Duration;

use common::{
    FakeControlPlane, PATIENCE, Setup, TestAgent, by_pid, by_tag, collect, command, create_request,
    eventually, file_data, file_header, first_start, next_event, read_pty_until, shell,
};
use tonic::Code;
use tonic::metadata::MetadataMap;
use wrenn_core::id::{HostId, SandboxId};
use wrenn_proto::envd::v1 as ev;
use wrenn_proto::envd::v1::filesystem_client::FilesystemClient;
use wrenn_proto::envd::v1::process_client::ProcessClient;
use wrenn_proto::envd::v1::process_input::Input;
use wrenn_proto::hostagent::v1 as pb;

/// `start` with the tag `tag`.
fn tagged(mut start: ev::StartRequest, tag: &str) -> ev::StartRequest {
    start.tag = Some(tag.into());
    start
}

/// True once `pid` is gone from this host's process table or is a zombie (the test
/// runtime runs envd and its processes on the host).
fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
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

    // envd's Process.Start, forwarded by the agent to the sandbox the metadata names.
    let envd = agent.envd(id);
    let ran = envd.run(command("echo", &["hi"])).await.unwrap();
    assert_eq!((ran.stdout.as_str(), ran.exit_code), ("hi\n", 0));
    assert!(ran.pid > 0 && ran.end.exited, "{ran:?}");

    // Exit codes, stderr, default env from Init, request env and cwd, stdin.
    let (out, err, code) = agent
        .sh(id, "echo $GREETING; echo oops >&2; exit 3")
        .await
        .unwrap();
    assert_eq!((out.as_str(), err.as_str(), code), ("hello\n", "oops\n", 3));
    let mut start = shell("echo $X; pwd; cat");
    let config = start.process.as_mut().unwrap();
    config.envs.insert("X".into(), "42".into());
    config.cwd = Some(agent.scratch.display().to_string());
    start.stdin = true;
    let mut events = envd.start_killed_on_disconnect(start).await.unwrap();
    let started = first_start(&mut events).await;
    envd.send_input(by_pid(started.pid), Input::Stdin(b"from stdin".to_vec()))
        .await
        .unwrap();
    envd.close_stdin(by_pid(started.pid)).await.unwrap();
    let ran = collect(events).await;
    assert_eq!(
        ran.stdout,
        format!("42\n{}\nfrom stdin", agent.scratch.display())
    );
    assert_eq!(ran.exit_code, 0);

    // Bad input to Start: envd's status, as the call's status.
    let err = envd.start(command("", &[])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let mut start = command("true", &[]);
    start.process.as_mut().unwrap().cwd = Some("/nonexistent/dir".into());
    let err = envd.start(start).await.unwrap_err();
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
async fn start_streams_events_and_relays_all_output() {
    let agent = TestAgent::start().await;
    let id = agent.create(0).await;
    let envd = agent.envd(id);
    let ran = envd
        .run(shell("echo one; echo two >&2; exit 4"))
        .await
        .unwrap();
    assert!(ran.pid > 0);
    assert_eq!(
        (ran.stdout.as_str(), ran.stderr.as_str()),
        ("one\n", "two\n")
    );
    assert_eq!(ran.exit_code, 4);
    assert!(ran.end.exited);
    assert_eq!(ran.end.error, None);

    // The agent relays every byte: output limits are the control plane's, not its own.
    let ran = envd
        .run(command(
            "head",
            &["-c", &(17 * 1024 * 1024).to_string(), "/dev/zero"],
        ))
        .await
        .unwrap();
    assert_eq!(ran.stdout.len(), 17 * 1024 * 1024);
    assert!(ran.stdout.bytes().all(|b| b == 0));
    assert_eq!(ran.exit_code, 0);

    // Errors before the first event are the call's status.
    let err = envd
        .start(command("/definitely/not/here", &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}

#[tokio::test]
async fn killed_on_disconnect_kills_the_process_group_when_the_caller_goes_away() {
    let agent = TestAgent::start().await;
    let id = agent.create(0).await;
    let envd = agent.envd(id);
    let child_file = agent.path("child.pid");
    let mut events = envd
        .start_killed_on_disconnect(shell(&format!("sleep 300 & echo $! > {child_file}; wait")))
        .await
        .unwrap();
    let started = first_start(&mut events).await;
    let child = {
        let file = child_file.clone();
        let mut child = None;
        eventually("the child's pid", || {
            child = std::fs::read_to_string(&file)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok());
            std::future::ready(child.is_some())
        })
        .await;
        child.unwrap()
    };
    assert!(envd.lists(started.pid).await);
    assert!(!dead(child));

    // The caller goes away before `end`: the agent kills the process.
    drop(events);
    eventually("the abandoned process to be killed", || {
        let envd = envd.clone();
        async move { !envd.lists(started.pid).await }
    })
    .await;
    // Killed by a signal (envd keeps an exited process's `end` for a minute), and its
    // whole process group with it.
    let end = collect(envd.connect(by_pid(started.pid), false).await.unwrap()).await;
    assert!(!end.end.exited, "{:?}", end.end);
    assert_eq!(end.exit_code, -1);
    eventually("its child in the same process group to die", || {
        std::future::ready(dead(child))
    })
    .await;

    // A stream read to its end is not "abandoned": the next command runs as usual.
    assert_eq!(agent.sh(id, "echo fine").await.unwrap().0, "fine\n");
}

#[tokio::test]
async fn without_kill_on_disconnect_a_dropped_start_runs_on_until_signalled() {
    let agent = TestAgent::start().await;
    let id = agent.create(0).await;
    let envd = agent.envd(id);
    let mut events = envd.start(command("sleep", &["300"])).await.unwrap();
    let started = first_start(&mut events).await;
    drop(events);
    // Far longer than a kill on disconnect takes (see the test above).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        envd.lists(started.pid).await,
        "the process runs on after its caller left"
    );
    assert!(!dead(started.pid));

    // Reattached, then killed with SendSignal: the `end` event says how.
    let events = envd.connect(by_pid(started.pid), false).await.unwrap();
    envd.signal(by_pid(started.pid), ev::Signal::Sigkill)
        .await
        .unwrap();
    let ran = collect(events).await;
    assert!(!ran.end.exited);
    assert_eq!(ran.exit_code, -1);
    eventually("the killed process to leave the list", || {
        let envd = envd.clone();
        async move { !envd.lists(started.pid).await }
    })
    .await;
}

#[tokio::test]
async fn background_process_connect_replay_input_and_kill() {
    let agent = TestAgent::start().await;
    let id = agent.create(0).await;
    let envd = agent.envd(id);
    let mut start = tagged(
        shell("echo ready; while read line; do echo got:$line; done; echo bye"),
        "worker",
    );
    start.stdin = true;
    let bg = envd.spawn(start).await.unwrap();
    assert_eq!(bg.tag, "worker");
    assert!(bg.pid > 0);

    // A second live process with the same tag is refused; a bad tag is invalid.
    let err = envd
        .start(tagged(command("sleep", &["5"]), "worker"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let err = envd
        .start(tagged(command("sleep", &["5"]), "bad\ttag"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // A generated tag.
    let gen_tag = envd.spawn(command("sleep", &["30"])).await.unwrap();
    assert!(
        gen_tag.tag.starts_with("proc-") && gen_tag.tag.len() == 13,
        "{}",
        gen_tag.tag
    );

    let list = envd.list().await.unwrap();
    let worker = list
        .iter()
        .find(|p| p.tag.as_deref() == Some("worker"))
        .unwrap();
    assert_eq!(worker.pid, bg.pid);
    assert_eq!(worker.config.as_ref().unwrap().cmd, "/bin/sh");
    assert!(!worker.pty);

    // Reattach with replay: the earlier "ready" comes first.
    let mut s = envd.connect(by_tag("worker"), true).await.unwrap();
    assert_eq!(first_start(&mut s).await.pid, bg.pid);
    envd.send_input(by_pid(bg.pid), Input::Stdin(b"abc\n".to_vec()))
        .await
        .unwrap();
    envd.close_stdin(by_tag("worker")).await.unwrap();
    let ran = collect(s).await;
    assert_eq!(ran.stdout, "ready\ngot:abc\nbye\n");
    assert_eq!(ran.exit_code, 0);

    // SendSignal by tag; no selector is invalid; an unknown process is NotFound.
    envd.signal(by_tag(&gen_tag.tag), ev::Signal::Sigterm)
        .await
        .unwrap();
    let err = envd.signal(None, ev::Signal::Sigterm).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = envd
        .signal(by_tag("nobody"), ev::Signal::Sigterm)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = envd.connect(by_pid(999_999), false).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn pty_start_input_resize_reattach_kill() {
    let agent = TestAgent::start().await;
    let id = agent.create(0).await;
    let envd = agent.envd(id);
    let mut start = command("/bin/sh", &[]);
    start.pty = Some(ev::Pty { cols: 80, rows: 24 });
    let mut s = envd.start(start).await.unwrap();
    let started = first_start(&mut s).await;
    assert!(started.tag.starts_with("pty-"), "{}", started.tag);
    let tag = started.tag.clone();

    envd.send_input(
        by_tag(&tag),
        Input::Pty(b"stty size; echo TERM=$TERM\n".to_vec()),
    )
    .await
    .unwrap();
    read_pty_until(&mut s, &["24 80", "TERM=xterm-256color"]).await;

    envd.resize(by_tag(&tag), 100, 40).await.unwrap();
    let err = envd.resize(by_tag(&tag), 0, 40).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Detach, then reattach by tag: `start` again, then the replay and live output.
    drop(s);
    let mut s = envd.connect(by_tag(&tag), true).await.unwrap();
    assert_eq!(first_start(&mut s).await.pid, started.pid);
    envd.send_input(by_pid(started.pid), Input::Pty(b"stty size\n".to_vec()))
        .await
        .unwrap();
    read_pty_until(&mut s, &["40 100"]).await;

    envd.signal(by_tag(&tag), ev::Signal::Sigkill)
        .await
        .unwrap();
    loop {
        match next_event(&mut s).await.unwrap() {
            Some(ev::process_event::Event::End(end)) => {
                assert_eq!(end.exit_code, -1);
                assert!(!end.exited);
                break;
            }
            Some(_) => {}
            None => panic!("stream ended without end"),
        }
    }

    // Reattach to an unknown tag, a PTY of zero size, and input or stdin calls of the
    // wrong kind.
    let err = envd.connect(by_tag("nope"), false).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let mut start = command("/bin/sh", &[]);
    start.pty = Some(ev::Pty { cols: 0, rows: 0 });
    let err = envd.start(start).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut start = tagged(command("/bin/sh", &[]), "term");
    start.pty = Some(ev::Pty { cols: 80, rows: 24 });
    envd.spawn(start).await.unwrap();
    let err = envd
        .send_input(by_tag("term"), Input::Stdin(b"x".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = envd.close_stdin(by_tag("term")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    envd.spawn(tagged(command("sleep", &["30"]), "pipe"))
        .await
        .unwrap();
    let err = envd
        .send_input(by_tag("pipe"), Input::Pty(b"x".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = envd.resize(by_tag("pipe"), 80, 24).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn files_stream_20_mib_and_fs_operations() {
    let agent = TestAgent::start().await;
    let id = agent.create(0).await;
    let envd = agent.envd(id);
    let mut fs = envd.fs.clone();
    let path = agent.path("sub/dir/big.bin");

    // 20 MiB of non-trivial content, streamed in FILE_CHUNK_SIZE chunks.
    const SIZE: usize = 20 * 1024 * 1024;
    let content: Vec<u8> = (0..SIZE).map(|i| (i * 7 % 251) as u8).collect();
    let written = envd
        .write_file_with(
            ev::WriteFileHeader {
                path: path.clone(),
                mode: Some(0o600),
                ..Default::default()
            },
            &content,
        )
        .await
        .unwrap();
    assert_eq!(written.size, SIZE as u64);
    assert_eq!(written.path, path);
    assert_eq!(std::fs::read(&path).unwrap(), content, "on disk");

    let messages = envd.read_file_messages(&path).await.unwrap();
    assert!(messages.len() >= SIZE / wrenn_proto::FILE_CHUNK_SIZE);
    assert_eq!(messages[0].total_size, Some(SIZE as u64));
    assert!(messages[1..].iter().all(|m| m.total_size.is_none()));
    let back: Vec<u8> = messages.into_iter().flat_map(|m| m.data).collect();
    assert!(back == content, "read back what was written");

    // Stat, ListDir, MakeDir (AlreadyExists passed through), Move, Remove.
    let st = envd.stat(&path).await.unwrap();
    assert_eq!(st.r#type(), ev::FileType::File);
    assert_eq!(st.size, SIZE as u64);
    assert_eq!(st.mode, 0o600);
    assert!(st.modified_time.is_some_and(|t| t.seconds > 0));
    let dir = agent.path("made");
    let made = fs
        .make_dir(envd.request(ev::MakeDirRequest {
            path: dir.clone(),
            user: None,
        }))
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert_eq!(made.r#type(), ev::FileType::Directory);
    let err = fs
        .make_dir(envd.request(ev::MakeDirRequest {
            path: dir.clone(),
            user: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let moved = fs
        .r#move(envd.request(ev::MoveRequest {
            source: path.clone(),
            destination: format!("{dir}/big.bin"),
        }))
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert_eq!(moved.name, "big.bin");
    let list = fs
        .list_dir(envd.request(ev::ListDirRequest {
            path: agent.scratch.display().to_string(),
            depth: 3,
        }))
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = list.entries.iter().map(|e| e.name.as_str()).collect();
    assert!(
        names.contains(&"made") && names.contains(&"big.bin") && names.contains(&"sub"),
        "{names:?}"
    );
    fs.remove(envd.request(ev::RemoveRequest { path: dir.clone() }))
        .await
        .unwrap();
    assert!(!std::path::Path::new(&dir).exists());
    let err = envd.stat(&dir).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = envd.read_file(&agent.path("missing")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Malformed write streams.
    let err = envd
        .write_messages(vec![file_data(b"x".to_vec())])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let header = file_header(ev::WriteFileHeader {
        path: agent.path("too-big"),
        ..Default::default()
    });
    let err = envd
        .write_messages(vec![
            header.clone(),
            file_data(vec![0; wrenn_proto::FILE_CHUNK_SIZE + 1]),
        ])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = envd
        .write_messages(vec![header.clone(), header])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = envd.stat("").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

/// Every forwarded `Process` and `Filesystem` method, called once with `route` applied
/// to its metadata: the method's name and its outcome. File calls point under the
/// agent's scratch directory (`routing/`), so a call wrongly let through shows there.
async fn every_forwarded_call(
    agent: &TestAgent,
    route: &dyn Fn(&mut MetadataMap),
) -> Vec<(&'static str, Result<(), tonic::Status>)> {
    fn req<T>(route: &dyn Fn(&mut MetadataMap), message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        route(request.metadata_mut());
        request
    }
    fn outcome<T>(r: Result<T, tonic::Status>) -> Result<(), tonic::Status> {
        r.map(drop)
    }
    let channel = common::connect_channel(agent.handle.local_addr()).await;
    let mut p = ProcessClient::new(channel.clone());
    let mut f = FilesystemClient::new(channel);
    let path = agent.path("routing/file");
    let sel = by_tag("routing");
    vec![
        (
            "Process.List",
            outcome(p.list(req(route, ev::ListRequest {})).await),
        ),
        (
            "Process.Start",
            outcome(p.start(req(route, command("true", &[]))).await),
        ),
        (
            "Process.Connect",
            outcome(
                p.connect(req(
                    route,
                    ev::ConnectRequest {
                        process: sel.clone(),
                        replay: false,
                    },
                ))
                .await,
            ),
        ),
        (
            "Process.Update",
            outcome(
                p.update(req(
                    route,
                    ev::UpdateRequest {
                        process: sel.clone(),
                        pty: Some(ev::Pty { cols: 1, rows: 1 }),
                    },
                ))
                .await,
            ),
        ),
        (
            "Process.StreamInput",
            outcome(
                p.stream_input(req(
                    route,
                    futures::stream::iter(vec![ev::StreamInputRequest {
                        event: Some(ev::stream_input_request::Event::Start(
                            ev::StreamInputStart {
                                process: sel.clone(),
                            },
                        )),
                    }]),
                ))
                .await,
            ),
        ),
        (
            "Process.SendInput",
            outcome(
                p.send_input(req(
                    route,
                    ev::SendInputRequest {
                        process: sel.clone(),
                        input: Some(ev::ProcessInput {
                            input: Some(Input::Stdin(b"x".to_vec())),
                        }),
                    },
                ))
                .await,
            ),
        ),
        (
            "Process.SendSignal",
            outcome(
                p.send_signal(req(
                    route,
                    ev::SendSignalRequest {
                        process: sel.clone(),
                        signal: ev::Signal::Sigterm as i32,
                    },
                ))
                .await,
            ),
        ),
        (
            "Process.CloseStdin",
            outcome(
                p.close_stdin(req(route, ev::CloseStdinRequest { process: sel }))
                    .await,
            ),
        ),
        (
            "Filesystem.Stat",
            outcome(
                f.stat(req(route, ev::StatRequest { path: path.clone() }))
                    .await,
            ),
        ),
        (
            "Filesystem.ListDir",
            outcome(
                f.list_dir(req(
                    route,
                    ev::ListDirRequest {
                        path: agent.scratch.display().to_string(),
                        depth: 1,
                    },
                ))
                .await,
            ),
        ),
        (
            "Filesystem.MakeDir",
            outcome(
                f.make_dir(req(
                    route,
                    ev::MakeDirRequest {
                        path: agent.path("routing/dir"),
                        user: None,
                    },
                ))
                .await,
            ),
        ),
        (
            "Filesystem.Move",
            outcome(
                f.r#move(req(
                    route,
                    ev::MoveRequest {
                        source: path.clone(),
                        destination: agent.path("routing/moved"),
                    },
                ))
                .await,
            ),
        ),
        (
            "Filesystem.Remove",
            outcome(
                f.remove(req(route, ev::RemoveRequest { path: path.clone() }))
                    .await,
            ),
        ),
        (
            "Filesystem.ReadFile",
            outcome(
                f.read_file(req(route, ev::ReadFileRequest { path: path.clone() }))
                    .await,
            ),
        ),
        (
            "Filesystem.WriteFile",
            outcome(
                f.write_file(req(
                    route,
                    futures::stream::iter(vec![
                        file_header(ev::WriteFileHeader {
                            path,
                            ..Default::default()
                        }),
                        file_data(b"x".to_vec()),
                    ]),
                ))
                .await,
            ),
        ),
    ]
}

/// Asserts every outcome is an error with `code` whose message contains `names`.
fn assert_all_refused(
    outcomes: Vec<(&'static str, Result<(), tonic::Status>)>,
    code: Code,
    names: &str,
    why: &str,
) {
    assert_eq!(outcomes.len(), 15, "every forwarded method");
    for (call, outcome) in outcomes {
        let err = outcome.expect_err(&format!("{call} {why} was accepted"));
        assert_eq!(err.code(), code, "{call} {why}: {err:?}");
        assert!(
            err.message().contains(names),
            "{call} {why}: {:?} does not name {names:?}",
            err.message()
        );
    }
}

#[tokio::test]
async fn forwarded_calls_need_a_known_running_capsule() {
    let agent = TestAgent::start().await;
    let id = agent.create(0).await;

    // No `wrenn-capsule-id`, or a malformed one.
    let none = every_forwarded_call(&agent, &|_| {}).await;
    assert_all_refused(none, Code::InvalidArgument, "", "without a capsule id");
    for bad in [
        "",
        "cl-short",
        "usr-0000000000000000000000000",
        "cl-ABCDEFGHIJKLMNOPQRSTUVWXY",
        "../../etc",
    ] {
        let route = |m: &mut MetadataMap| {
            m.insert(
                wrenn_proto::routing::CAPSULE_ID_METADATA,
                bad.parse().unwrap(),
            );
        };
        let outcomes = every_forwarded_call(&agent, &route).await;
        assert_all_refused(outcomes, Code::InvalidArgument, "", &format!("to {bad:?}"));
    }

    // A well-formed id this agent does not know: NOT_FOUND naming the sandbox.
    let unknown = SandboxId::new().to_string();
    let route = |m: &mut MetadataMap| {
        m.insert(
            wrenn_proto::routing::CAPSULE_ID_METADATA,
            unknown.parse().unwrap(),
        );
    };
    let outcomes = every_forwarded_call(&agent, &route).await;
    assert_all_refused(outcomes, Code::NotFound, &unknown, "to an unknown sandbox");

    // A paused sandbox: FAILED_PRECONDITION naming its status.
    agent
        .client
        .clone()
        .pause_sandbox(pb::PauseSandboxRequest {
            sandbox_id: id.to_string(),
        })
        .await
        .unwrap();
    let route = |m: &mut MetadataMap| {
        m.insert(
            wrenn_proto::routing::CAPSULE_ID_METADATA,
            id.to_string().parse().unwrap(),
        );
    };
    let outcomes = every_forwarded_call(&agent, &route).await;
    assert_all_refused(
        outcomes,
        Code::FailedPrecondition,
        "paused",
        "to a paused sandbox",
    );
    assert!(
        !std::path::Path::new(&agent.path("routing")).exists(),
        "no refused call touched anything"
    );

    // Calls go to the sandbox they name, and only there.
    agent
        .client
        .clone()
        .resume_sandbox(pb::ResumeSandboxRequest {
            sandbox_id: id.to_string(),
            ..Default::default()
        })
        .await
        .unwrap();
    let other = agent.create(0).await;
    let here = agent
        .envd(id)
        .spawn(tagged(command("sleep", &["30"]), "mine"))
        .await
        .unwrap();
    assert!(agent.envd(id).lists(here.pid).await);
    assert!(!agent.envd(other).lists(here.pid).await);
    let err = agent
        .envd(other)
        .connect(by_tag("mine"), false)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
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
    let envd = agent.envd(id);
    envd.spawn(tagged(command("sleep", &["60"]), "survivor"))
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
    let list = envd.list().await.unwrap();
    assert!(list.iter().any(|p| p.tag.as_deref() == Some("survivor")));
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
    let err = agent.envd(&unknown).sh("true").await.unwrap_err();
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
        agent
            .envd(&unknown)
            .signal(by_tag("x"), ev::Signal::Sigkill)
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
        let err = agent.envd(bad).stat("/").await.unwrap_err();
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
    // Output streamed through a forwarded Start counts too: a 3 s stream that prints
    // every 300 ms (a pause in between would stop envd, and the stream with it).
    let ran = agent
        .envd(id)
        .sh("for i in 1 2 3 4 5 6 7 8 9 10; do echo $i; sleep 0.3; done")
        .await
        .unwrap();
    assert!(ran.stdout.ends_with("10\n"));
    assert_eq!(ran.exit_code, 0);
    assert_eq!(agent.status(id).await, Some(pb::SandboxStatus::Running));
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

    // The forwarded envd calls are the agent's calls too: refused without the token,
    // whatever sandbox they name, before anything reaches envd.
    let id = SandboxId::new();
    let mut req = tonic::Request::new(create_request(id, 0));
    req.metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    agent.client.clone().create_sandbox(req).await.unwrap();
    let marker = agent.path("unauthenticated");
    for envd in [agent.envd(id), agent.envd(id).with_bearer("wrong")] {
        let refused = [
            envd.list().await.map(drop),
            envd.start(shell(&format!("touch {marker}")))
                .await
                .map(drop),
            envd.write_file(&marker, b"no").await.map(drop),
            envd.read_file(&agent.path("none")).await.map(drop),
            envd.stat("/").await.map(drop),
        ];
        for outcome in refused {
            assert_eq!(outcome.unwrap_err().code(), Code::Unauthenticated);
        }
    }
    let err = agent.envd(SandboxId::new()).stat("/").await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unauthenticated,
        "auth comes before routing"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!std::path::Path::new(&marker).exists());
    let authorized = agent.envd(id).with_bearer("s3cret");
    assert_eq!(authorized.sh("echo in").await.unwrap().stdout, "in\n");
    authorized.write_file(&marker, b"yes").await.unwrap();
    assert_eq!(authorized.read_file(&marker).await.unwrap(), b"yes");
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

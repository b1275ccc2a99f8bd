//! envd's `Process` service through the agent: create and exec, streamed events and
//! output, kill on disconnect, background processes, PTYs.

use crate::common;

use std::time::Duration;

use super::{dead, tagged};
use common::{
    TestAgent, by_pid, by_tag, collect, command, create_request, eventually, first_start,
    next_event, read_pty_until, shell,
};
use tonic::Code;
use wrenn_core::id::SandboxId;
use wrenn_proto::envd::v1 as ev;
use wrenn_proto::envd::v1::process_input::Input;
use wrenn_proto::hostagent::v1 as pb;

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

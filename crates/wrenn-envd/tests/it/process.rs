//! The Process service against real processes: output and exit codes, environment,
//! working directory, users, replay after exit, stdin, signals, tags and reattach, and
//! bad input.

use crate::common;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use common::{
    Collected, Envd, by_pid, by_tag, collect, collect_until, config, request, sh, within,
};
use futures::StreamExt;
use tonic::Code;
use wrenn_proto::envd::v1::{
    CloseStdinRequest, ConnectRequest, InitRequest, ListRequest, ProcessInput, ProcessSelector,
    SendInputRequest, SendSignalRequest, Signal, StartRequest, StreamInputRequest,
    StreamInputStart, UpdateRequest, process_event, process_input, stream_input_request,
};

fn stdin_input(bytes: &[u8]) -> Option<ProcessInput> {
    Some(ProcessInput {
        input: Some(process_input::Input::Stdin(bytes.to_vec())),
    })
}

/// Starts a background process with a tag and returns its pid (the stream is dropped).
async fn start_tagged(envd: &mut Envd, mut request: StartRequest, tag: &str) -> u32 {
    request.tag = Some(tag.to_owned());
    let mut stream = envd.start(request).await.expect("start");
    match stream.next().await.expect("start event").expect("ok").event {
        Some(process_event::Event::Start(start)) => {
            assert_eq!(start.tag, tag);
            start.pid
        }
        other => panic!("expected a start event, got {other:?}"),
    }
}

async fn connect(envd: &mut Envd, process: Option<ProcessSelector>, replay: bool) -> Collected {
    let stream = envd
        .process
        .connect(ConnectRequest { process, replay })
        .await
        .expect("connect")
        .into_inner();
    collect(stream).await
}

async fn wait_until_exited(envd: &mut Envd, pid: u32) {
    within(async {
        loop {
            let list = envd
                .process
                .list(ListRequest {})
                .await
                .unwrap()
                .into_inner();
            if list.processes.iter().all(|p| p.pid != pid) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

async fn signal(envd: &mut Envd, process: Option<ProcessSelector>, signal: Signal) {
    envd.process
        .send_signal(SendSignalRequest {
            process,
            signal: signal as i32,
        })
        .await
        .expect("signal delivered");
}

#[tokio::test]
async fn echo_reaches_stdout_and_stderr_with_the_exit_code() {
    let mut envd = Envd::unix().await;
    let run = collect(
        envd.start(sh("echo out; echo err >&2; exit 3"))
            .await
            .unwrap(),
    )
    .await;
    assert!(run.pid > 0);
    assert!(
        run.tag.starts_with("proc-") && run.tag.len() == 13,
        "{}",
        run.tag
    );
    assert_eq!(run.stdout(), "out\n");
    assert_eq!(run.stderr(), "err\n");
    let end = run.end.unwrap();
    assert_eq!((end.exit_code, end.exited), (3, true));
    assert_eq!(end.status, "exit status 3");
    assert_eq!(end.error, None);
}

#[tokio::test]
async fn output_arrives_as_produced_not_at_exit() {
    let mut envd = Envd::unix().await;
    let started = Instant::now();
    let mut stream = envd
        .start(sh("printf partial; sleep 5; echo done"))
        .await
        .unwrap();
    let mut seen = Collected::default();
    collect_until(&mut stream, &mut seen, |c| c.stdout == b"partial").await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "a chunk without newline arrives early"
    );
    assert!(seen.end.is_none());
}

#[tokio::test]
async fn environment_is_cleared_then_built_from_base_defaults_and_request() {
    let mut envd = Envd::unix().await;
    let mut req = request("/usr/bin/env", &[]);
    let cfg = req.process.as_mut().unwrap();
    cfg.envs = HashMap::from([
        ("FOO".to_owned(), "bar".to_owned()),
        ("USER".to_owned(), "override".to_owned()),
    ]);
    let run = collect(envd.start(req).await.unwrap()).await;
    let vars: HashMap<String, String> = run
        .stdout()
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let names: BTreeSet<&str> = vars.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from(["FOO", "HOME", "LOGNAME", "PATH", "USER"])
    );
    assert_eq!(vars["FOO"], "bar");
    assert_eq!(vars["USER"], "override", "request variables win");
    assert_eq!(vars["HOME"], "/root");
    assert_eq!(vars["LOGNAME"], "root");
}

#[tokio::test]
async fn init_default_env_is_applied_and_request_env_wins() {
    let mut envd = Envd::unix().await;
    envd.system
        .init(InitRequest {
            env_vars: HashMap::from([("A".into(), "init".into()), ("B".into(), "init".into())]),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut req = sh("echo $A $B");
    req.process.as_mut().unwrap().envs = HashMap::from([("A".into(), "request".into())]);
    let run = collect(envd.start(req).await.unwrap()).await;
    assert_eq!(run.stdout(), "request init\n");
}

#[tokio::test]
async fn cwd_is_honoured_and_relative_cwd_resolves_against_home() {
    let mut envd = Envd::unix().await;
    let mut req = request("pwd", &[]);
    req.process.as_mut().unwrap().cwd = Some(envd.path(""));
    let run = collect(envd.start(req).await.unwrap()).await;
    assert_eq!(
        run.stdout().trim_end(),
        envd.dir.path().display().to_string()
    );

    let mut req = request("pwd", &[]);
    req.process.as_mut().unwrap().cwd = Some("~".into());
    let run = collect(envd.start(req).await.unwrap()).await;
    assert_eq!(run.stdout(), "/root\n");
}

#[tokio::test]
async fn default_cwd_is_the_users_home() {
    let mut envd = Envd::unix().await;
    assert_eq!(envd.run("pwd", &[]).await.stdout(), "/root\n");
}

#[tokio::test]
async fn a_non_root_user_runs_with_its_own_ids_and_groups() {
    let mut envd = Envd::unix().await;
    let mut req = sh("id -u; id -g; id -G; pwd; echo $HOME $USER");
    req.process.as_mut().unwrap().user = Some("nobody".into());
    let run = collect(envd.start(req).await.unwrap()).await;
    assert_eq!(run.exit_code(), 0, "{}", run.stderr());
    let lines: Vec<&str> = run
        .stdout
        .split(|b| *b == b'\n')
        .map(|l| std::str::from_utf8(l).unwrap())
        .collect();
    assert_eq!(lines[0], "65534");
    assert_eq!(lines[1], "65534");
    assert_eq!(
        lines[2], "65534",
        "no supplementary groups inherited from envd"
    );
    assert_eq!(
        lines[3], "/",
        "nobody's home does not exist, so the default cwd is /"
    );
    assert_eq!(lines[4], "/nonexistent nobody");
}

#[tokio::test]
async fn a_process_that_exited_before_connect_delivers_its_output_and_exit_on_replay() {
    let mut envd = Envd::unix().await;
    let pid = start_tagged(&mut envd, sh("echo early; echo late >&2; exit 7"), "quick").await;
    wait_until_exited(&mut envd, pid).await;

    let replayed = connect(&mut envd, by_pid(pid), true).await;
    assert_eq!((replayed.pid, replayed.tag.as_str()), (pid, "quick"));
    assert_eq!(replayed.stdout(), "early\n");
    assert_eq!(replayed.stderr(), "late\n");
    assert_eq!(replayed.exit_code(), 7);

    let by_tag_replay = connect(&mut envd, by_tag("quick"), true).await;
    assert_eq!(by_tag_replay.stdout(), "early\n");

    let live_only = connect(&mut envd, by_pid(pid), false).await;
    assert!(live_only.stdout.is_empty() && live_only.stderr.is_empty());
    assert_eq!(live_only.exit_code(), 7, "the end event is never lost");
}

#[tokio::test]
async fn replay_keeps_the_last_mebibyte_of_each_stream() {
    let mut envd = Envd::unix().await;
    let pid = start_tagged(&mut envd, sh("head -c 3000000 /dev/zero; echo END"), "big").await;
    wait_until_exited(&mut envd, pid).await;
    let replayed = connect(&mut envd, by_pid(pid), true).await;
    let len = replayed.stdout.len();
    assert!(
        (1 << 20..=(1 << 20) + 32 * 1024).contains(&len),
        "replayed {len} bytes"
    );
    assert!(replayed.stdout.ends_with(b"\0END\n"));
    assert_eq!(replayed.exit_code(), 0);
}

#[tokio::test]
async fn a_slow_reader_loses_no_output() {
    let mut envd = Envd::unix().await;
    let total = 8 * 1024 * 1024;
    let mut stream = envd
        .start(sh(&format!("head -c {total} /dev/zero")))
        .await
        .unwrap();
    // Let the process run far ahead of the client's first read.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut seen = Collected::default();
    collect_until(&mut stream, &mut seen, |c| c.end.is_some()).await;
    assert_eq!(seen.stdout.len(), total);
    assert_eq!(seen.exit_code(), 0);
}

#[tokio::test]
async fn stdin_round_trips_through_cat_and_close_stdin_ends_it() {
    let mut envd = Envd::unix().await;
    let mut req = request("cat", &[]);
    req.stdin = true;
    let mut stream = envd.start(req).await.unwrap();
    let mut seen = Collected::default();
    collect_until(&mut stream, &mut seen, |c| c.pid != 0).await;
    let pid = seen.pid;

    envd.process
        .send_input(SendInputRequest {
            process: by_pid(pid),
            input: stdin_input(b"hello\n"),
        })
        .await
        .unwrap();
    collect_until(&mut stream, &mut seen, |c| c.stdout == b"hello\n").await;

    let messages = vec![
        StreamInputRequest {
            event: Some(stream_input_request::Event::Start(StreamInputStart {
                process: by_pid(pid),
            })),
        },
        StreamInputRequest {
            event: Some(stream_input_request::Event::Data(
                stdin_input(b"streamed ").unwrap(),
            )),
        },
        StreamInputRequest {
            event: Some(stream_input_request::Event::Keepalive(Default::default())),
        },
        StreamInputRequest {
            event: Some(stream_input_request::Event::Data(
                stdin_input(b"input\n").unwrap(),
            )),
        },
    ];
    envd.process
        .stream_input(futures::stream::iter(messages))
        .await
        .unwrap();
    collect_until(&mut stream, &mut seen, |c| {
        c.stdout == b"hello\nstreamed input\n"
    })
    .await;

    envd.process
        .close_stdin(CloseStdinRequest {
            process: by_pid(pid),
        })
        .await
        .unwrap();
    envd.process
        .close_stdin(CloseStdinRequest {
            process: by_pid(pid),
        })
        .await
        .expect("closing twice is fine");
    collect_until(&mut stream, &mut seen, |c| c.end.is_some()).await;
    assert_eq!(seen.exit_code(), 0);

    let after = envd
        .process
        .send_input(SendInputRequest {
            process: by_pid(pid),
            input: stdin_input(b"late"),
        })
        .await
        .unwrap_err();
    assert_eq!(after.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn stdin_is_refused_when_it_was_not_requested() {
    let mut envd = Envd::unix().await;
    let pid = start_tagged(&mut envd, request("sleep", &["30"]), "no-stdin").await;
    let close = envd
        .process
        .close_stdin(CloseStdinRequest {
            process: by_pid(pid),
        })
        .await
        .unwrap_err();
    assert_eq!(close.code(), Code::FailedPrecondition);
    let send = envd
        .process
        .send_input(SendInputRequest {
            process: by_pid(pid),
            input: stdin_input(b"x"),
        })
        .await
        .unwrap_err();
    assert_eq!(send.code(), Code::FailedPrecondition);
    signal(&mut envd, by_pid(pid), Signal::Sigkill).await;
}

#[tokio::test]
async fn sigterm_ends_sleep_and_the_end_event_reports_the_signal() {
    let mut envd = Envd::unix().await;
    let mut stream = envd.start(request("sleep", &["100"])).await.unwrap();
    let mut seen = Collected::default();
    collect_until(&mut stream, &mut seen, |c| c.pid != 0).await;
    signal(&mut envd, by_pid(seen.pid), Signal::Sigterm).await;
    collect_until(&mut stream, &mut seen, |c| c.end.is_some()).await;
    let end = seen.end.unwrap();
    assert!(!end.exited);
    assert_eq!(end.exit_code, -1);
    assert_eq!(end.status, "signal: terminated");
}

#[tokio::test]
async fn signals_reach_the_whole_process_group() {
    let mut envd = Envd::unix().await;
    // The background sleep keeps stdout open; it must die with its parent.
    let mut stream = envd
        .start(sh("sleep 100 & echo $!; sleep 100; wait"))
        .await
        .unwrap();
    let mut seen = Collected::default();
    collect_until(&mut stream, &mut seen, |c| c.stdout.ends_with(b"\n")).await;
    let background: u32 = seen.stdout().trim().parse().unwrap();
    let started = Instant::now();
    signal(&mut envd, by_pid(seen.pid), Signal::Sigterm).await;
    collect_until(&mut stream, &mut seen, |c| c.end.is_some()).await;
    assert_eq!(seen.end.unwrap().status, "signal: terminated");
    assert!(started.elapsed() < Duration::from_secs(5));
    within(async {
        // Gone, or a zombie waiting for its new parent to reap it.
        while std::fs::read_to_string(format!("/proc/{background}/stat"))
            .is_ok_and(|stat| !stat.contains(") Z "))
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn list_shows_live_processes_with_tags_and_pty_flags() {
    let mut envd = Envd::unix().await;
    let web = start_tagged(&mut envd, request("sleep", &["30"]), "web").await;
    let mut shell = request("sleep", &["30"]);
    shell.pty = Some(wrenn_proto::envd::v1::Pty { cols: 80, rows: 24 });
    let term = start_tagged(&mut envd, shell, "term").await;

    let list = envd
        .process
        .list(ListRequest {})
        .await
        .unwrap()
        .into_inner();
    let web_info = list
        .processes
        .iter()
        .find(|p| p.pid == web)
        .expect("web listed");
    assert_eq!(web_info.tag.as_deref(), Some("web"));
    assert!(!web_info.pty);
    let config = web_info.config.as_ref().unwrap();
    assert_eq!(
        (config.cmd.as_str(), config.args.as_slice()),
        ("sleep", &["30".to_owned()][..])
    );
    assert_eq!(config.cwd.as_deref(), Some("/root"));
    assert_eq!(config.user.as_deref(), Some("root"));
    let term_info = list
        .processes
        .iter()
        .find(|p| p.pid == term)
        .expect("term listed");
    assert_eq!(term_info.tag.as_deref(), Some("term"));
    assert!(term_info.pty);

    signal(&mut envd, by_tag("web"), Signal::Sigkill).await;
    signal(&mut envd, by_tag("term"), Signal::Sigkill).await;
    wait_until_exited(&mut envd, web).await;
    wait_until_exited(&mut envd, term).await;
}

#[tokio::test]
async fn a_background_process_can_be_reattached_by_tag() {
    let mut envd = Envd::unix().await;
    let mut req = sh("echo one; read x; echo two $x");
    req.stdin = true;
    start_tagged(&mut envd, req, "worker").await;

    let mut stream = envd
        .process
        .connect(ConnectRequest {
            process: by_tag("worker"),
            replay: true,
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Collected::default();
    collect_until(&mut stream, &mut seen, |c| c.stdout == b"one\n").await;
    assert_eq!(seen.tag, "worker");
    envd.process
        .send_input(SendInputRequest {
            process: by_tag("worker"),
            input: stdin_input(b"again\n"),
        })
        .await
        .unwrap();
    collect_until(&mut stream, &mut seen, |c| c.end.is_some()).await;
    assert_eq!(seen.stdout(), "one\ntwo again\n");
}

#[tokio::test]
async fn a_tag_in_use_is_already_exists_and_free_again_after_exit() {
    let mut envd = Envd::unix().await;
    let pid = start_tagged(&mut envd, request("sleep", &["30"]), "dup").await;
    let mut again = request("true", &[]);
    again.tag = Some("dup".into());
    let err = envd.process.start(again.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    signal(&mut envd, by_pid(pid), Signal::Sigkill).await;
    wait_until_exited(&mut envd, pid).await;
    let reused = collect(envd.start(again).await.unwrap()).await;
    assert_eq!(reused.tag, "dup");
    assert_eq!(reused.exit_code(), 0);
    let newest = connect(&mut envd, by_tag("dup"), true).await;
    assert_eq!(
        newest.pid, reused.pid,
        "a tag names its most recent process"
    );
}

#[tokio::test]
async fn cancelling_a_start_stream_leaves_the_process_to_the_caller() {
    let mut envd = Envd::unix().await;
    let pid = start_tagged(&mut envd, sh("echo started; sleep 100"), "foreground").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let list = envd
        .process
        .list(ListRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        list.processes.iter().any(|p| p.pid == pid),
        "still running after the stream was dropped"
    );

    // The host agent ends an abandoned foreground exec with SendSignal.
    signal(&mut envd, by_tag("foreground"), Signal::Sigkill).await;
    let after = connect(&mut envd, by_pid(pid), true).await;
    assert_eq!(after.stdout(), "started\n");
    assert_eq!(after.end.unwrap().status, "signal: killed");
}

#[tokio::test]
async fn idle_streams_get_keepalives() {
    let mut envd = Envd::unix_with(|c| c.keepalive_interval = Duration::from_millis(100)).await;
    let run = collect(envd.start(request("sleep", &["0.5"])).await.unwrap()).await;
    assert!(run.keepalives >= 2, "{} keepalives", run.keepalives);
    assert_eq!(run.exit_code(), 0);
}

#[tokio::test]
async fn exited_processes_are_forgotten_after_the_retention_time() {
    let mut envd = Envd::unix_with(|c| c.exited_retention = Duration::from_secs(1)).await;
    let run = envd.run("true", &[]).await;
    let connected = envd
        .process
        .connect(ConnectRequest {
            process: by_pid(run.pid),
            replay: true,
        })
        .await;
    assert!(connected.is_ok(), "still there right after exit");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let gone = envd
        .process
        .connect(ConnectRequest {
            process: by_pid(run.pid),
            replay: true,
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
}

#[tokio::test]
async fn a_process_starts_with_no_signal_blocked_ignored_or_caught() {
    // envd (a Rust program) ignores SIGPIPE and handles SIGCHLD; its children must not
    // inherit either, or `yes | head` would never end and handlers would be lost.
    let mut envd = Envd::unix().await;
    let run = collect(
        envd.start(sh(
            "cat /proc/self/status | grep -E '^Sig(Blk|Ign|Cgt)'; yes | head -c 4",
        ))
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(
        run.stdout(),
        "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\nSigCgt:\t0000000000000000\ny\ny\n"
    );
    assert_eq!(run.end.unwrap().exit_code, 0);
}

#[tokio::test]
async fn a_missing_program_fails_fast_with_not_found() {
    let mut envd = Envd::unix().await;
    let started = Instant::now();
    let err = envd
        .start(request("definitely-not-a-program", &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message().contains("definitely-not-a-program"),
        "{}",
        err.message()
    );
    assert!(started.elapsed() < Duration::from_secs(2));

    let file = envd.path("not-executable");
    std::fs::write(&file, "#!/bin/sh\n").unwrap();
    let err = envd.start(request(&file, &[])).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn bad_start_requests_are_invalid_argument() {
    let mut envd = Envd::unix().await;
    let cases: Vec<(&str, StartRequest)> = vec![
        ("no process", StartRequest::default()),
        ("empty cmd", request("", &[])),
        ("blank cmd", request("  ", &[])),
        ("missing cwd", {
            let mut r = request("true", &[]);
            r.process.as_mut().unwrap().cwd = Some("/no/such/dir".into());
            r
        }),
        ("cwd escaping home", {
            let mut r = request("true", &[]);
            r.process.as_mut().unwrap().cwd = Some("../../etc".into());
            r
        }),
        ("unknown user", {
            let mut r = request("true", &[]);
            r.process.as_mut().unwrap().user = Some("no-such-user".into());
            r
        }),
        ("bad env name", {
            let mut r = request("true", &[]);
            r.process.as_mut().unwrap().envs = HashMap::from([("A=B".into(), "x".into())]);
            r
        }),
        ("zero pty size", {
            let mut r = request("true", &[]);
            r.pty = Some(wrenn_proto::envd::v1::Pty { cols: 0, rows: 24 });
            r
        }),
    ];
    for (what, req) in cases {
        let err = envd.start(req).await.expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
    }
    let mut req = config("true", &[]);
    req.cwd = None;
    let ok = collect(
        envd.start(StartRequest {
            process: Some(req),
            ..Default::default()
        })
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(ok.exit_code(), 0, "envd still works after bad requests");
}

#[tokio::test]
async fn unknown_processes_are_not_found_and_empty_selectors_invalid() {
    let mut envd = Envd::unix().await;
    let unknown = by_pid(999_999);
    let codes = [
        envd.process
            .connect(ConnectRequest {
                process: unknown.clone(),
                replay: false,
            })
            .await
            .err()
            .map(|e| e.code()),
        envd.process
            .send_signal(SendSignalRequest {
                process: unknown.clone(),
                signal: Signal::Sigterm as i32,
            })
            .await
            .err()
            .map(|e| e.code()),
        envd.process
            .send_input(SendInputRequest {
                process: unknown.clone(),
                input: stdin_input(b"x"),
            })
            .await
            .err()
            .map(|e| e.code()),
        envd.process
            .close_stdin(CloseStdinRequest {
                process: unknown.clone(),
            })
            .await
            .err()
            .map(|e| e.code()),
        envd.process
            .update(UpdateRequest {
                process: unknown.clone(),
                pty: None,
            })
            .await
            .err()
            .map(|e| e.code()),
        envd.process
            .connect(ConnectRequest {
                process: by_tag("nobody-has-this-tag"),
                replay: false,
            })
            .await
            .err()
            .map(|e| e.code()),
    ];
    for code in codes {
        assert_eq!(code, Some(Code::NotFound));
    }
    let empty = envd
        .process
        .connect(ConnectRequest {
            process: None,
            replay: false,
        })
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    let empty = envd
        .process
        .send_signal(SendSignalRequest {
            process: Some(ProcessSelector { selector: None }),
            signal: 15,
        })
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn unspecified_signals_and_malformed_input_streams_are_invalid() {
    let mut envd = Envd::unix().await;
    let pid = start_tagged(&mut envd, request("sleep", &["30"]), "target").await;
    let err = envd
        .process
        .send_signal(SendSignalRequest {
            process: by_pid(pid),
            signal: Signal::Unspecified as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = envd
        .process
        .send_signal(SendSignalRequest {
            process: by_pid(pid),
            signal: 5,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let no_start = vec![StreamInputRequest {
        event: Some(stream_input_request::Event::Data(
            stdin_input(b"x").unwrap(),
        )),
    }];
    let err = envd
        .process
        .stream_input(futures::stream::iter(no_start))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    signal(&mut envd, by_pid(pid), Signal::Sigkill).await;
}

#[tokio::test]
async fn many_short_processes_all_report_their_own_exit_codes() {
    let envd = Envd::unix().await;
    let runs = (0..20).map(|i| {
        let mut client = envd.process.clone();
        async move {
            let stream = client
                .start(sh(&format!("exit {i}")))
                .await
                .unwrap()
                .into_inner();
            (i, collect(stream).await.exit_code())
        }
    });
    for (expected, code) in futures::future::join_all(runs).await {
        assert_eq!(code, expected);
    }
}

//! PTY processes: a real terminal, resize, input echo, and the input kinds that do not
//! apply to a terminal.

use crate::common;

use common::{Collected, Envd, by_pid, collect_until, request};
use tonic::Code;
use wrenn_proto::envd::v1::{
    CloseStdinRequest, ProcessInput, Pty, SendInputRequest, StartRequest, UpdateRequest,
    process_input,
};

fn on_pty(cmd: &str, args: &[&str], cols: u32, rows: u32) -> StartRequest {
    let mut req = request(cmd, args);
    req.pty = Some(Pty { cols, rows });
    req
}

fn pty_input(bytes: &[u8]) -> Option<ProcessInput> {
    Some(ProcessInput {
        input: Some(process_input::Input::Pty(bytes.to_vec())),
    })
}

async fn type_into(envd: &mut Envd, pid: u32, text: &[u8]) {
    envd.process
        .send_input(SendInputRequest {
            process: by_pid(pid),
            input: pty_input(text),
        })
        .await
        .expect("pty input accepted");
}

#[tokio::test]
async fn tty_prints_a_dev_pts_path() {
    let mut envd = Envd::unix().await;
    let mut stream = envd.start(on_pty("tty", &[], 80, 24)).await.unwrap();
    let mut seen = Collected::default();
    collect_until(&mut stream, &mut seen, |c| c.end.is_some()).await;
    assert!(seen.tag.starts_with("pty-"), "{}", seen.tag);
    assert!(seen.pty().starts_with("/dev/pts/"), "{:?}", seen.pty());
    assert!(
        seen.stdout.is_empty() && seen.stderr.is_empty(),
        "a PTY has one output stream"
    );
    assert_eq!(seen.exit_code(), 0);
}

#[tokio::test]
async fn the_terminal_starts_with_the_requested_size_and_follows_resizes() {
    let mut envd = Envd::unix().await;
    let mut stream = envd.start(on_pty("/bin/sh", &[], 120, 30)).await.unwrap();
    let mut seen = Collected::default();
    collect_until(&mut stream, &mut seen, |c| c.pid != 0).await;
    let pid = seen.pid;

    type_into(&mut envd, pid, b"stty size\n").await;
    collect_until(&mut stream, &mut seen, |c| c.pty().contains("30 120")).await;

    envd.process
        .update(UpdateRequest {
            process: by_pid(pid),
            pty: Some(Pty {
                cols: 100,
                rows: 40,
            }),
        })
        .await
        .unwrap();
    type_into(&mut envd, pid, b"stty size\n").await;
    collect_until(&mut stream, &mut seen, |c| c.pty().contains("40 100")).await;

    type_into(&mut envd, pid, b"exit 5\n").await;
    collect_until(&mut stream, &mut seen, |c| c.end.is_some()).await;
    assert_eq!(seen.exit_code(), 5);
}

#[tokio::test]
async fn input_is_echoed_and_ctrl_d_ends_cat() {
    let mut envd = Envd::unix().await;
    let mut stream = envd.start(on_pty("cat", &[], 80, 24)).await.unwrap();
    let mut seen = Collected::default();
    collect_until(&mut stream, &mut seen, |c| c.pid != 0).await;
    type_into(&mut envd, seen.pid, b"hello\n").await;
    // The terminal echoes the line, then cat prints it again.
    collect_until(&mut stream, &mut seen, |c| {
        c.pty().matches("hello").count() >= 2
    })
    .await;
    type_into(&mut envd, seen.pid, &[0x04]).await;
    collect_until(&mut stream, &mut seen, |c| c.end.is_some()).await;
    assert_eq!(seen.exit_code(), 0);
}

#[tokio::test]
async fn the_pty_is_the_controlling_terminal_of_a_new_session() {
    let mut envd = Envd::unix().await;
    let script = "read pid comm state ppid pgrp sid tty rest < /proc/$$/stat; \
        [ \"$sid\" = \"$$\" ] && echo session-leader; [ \"$tty\" != 0 ] && echo has-ctty; tty";
    let mut stream = envd
        .start(on_pty("/bin/sh", &["-c", script], 80, 24))
        .await
        .unwrap();
    let mut seen = Collected::default();
    collect_until(&mut stream, &mut seen, |c| c.end.is_some()).await;
    let out = seen.pty();
    assert!(out.contains("session-leader"), "{out:?}");
    assert!(out.contains("has-ctty"), "{out:?}");
    assert!(out.contains("/dev/pts/"), "{out:?}");
}

#[tokio::test]
async fn pipe_input_and_close_stdin_do_not_apply_to_a_pty_process() {
    let mut envd = Envd::unix().await;
    let mut stream = envd.start(on_pty("sleep", &["30"], 80, 24)).await.unwrap();
    let mut seen = Collected::default();
    collect_until(&mut stream, &mut seen, |c| c.pid != 0).await;
    let stdin = Some(ProcessInput {
        input: Some(process_input::Input::Stdin(b"x".to_vec())),
    });
    let err = envd
        .process
        .send_input(SendInputRequest {
            process: by_pid(seen.pid),
            input: stdin,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = envd
        .process
        .close_stdin(CloseStdinRequest {
            process: by_pid(seen.pid),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("0x04"), "{}", err.message());
    let err = envd
        .process
        .update(UpdateRequest {
            process: by_pid(seen.pid),
            pty: Some(Pty { cols: 0, rows: 10 }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn pty_input_and_resize_do_not_apply_to_a_pipe_process() {
    let mut envd = Envd::unix().await;
    let mut req = request("sleep", &["30"]);
    req.stdin = true;
    let mut stream = envd.start(req).await.unwrap();
    let mut seen = Collected::default();
    collect_until(&mut stream, &mut seen, |c| c.pid != 0).await;
    let err = envd
        .process
        .send_input(SendInputRequest {
            process: by_pid(seen.pid),
            input: pty_input(b"x"),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = envd
        .process
        .update(UpdateRequest {
            process: by_pid(seen.pid),
            pty: Some(Pty { cols: 80, rows: 24 }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}

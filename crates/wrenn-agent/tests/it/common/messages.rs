//! envd messages: request builders and readers of process event streams.

use super::PATIENCE;
use super::envd::Ran;
use wrenn_proto::envd::v1 as ev;

/// A StartRequest for `cmd args…` (pipes, no stdin, generated tag).
pub fn command(cmd: &str, args: &[&str]) -> ev::StartRequest {
    ev::StartRequest {
        process: Some(ev::ProcessConfig {
            cmd: cmd.into(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A StartRequest for `/bin/sh -c line`.
pub fn shell(line: &str) -> ev::StartRequest {
    command("/bin/sh", &["-c", line])
}

/// Selects a process by pid.
pub fn by_pid(pid: u32) -> Option<ev::ProcessSelector> {
    Some(ev::ProcessSelector {
        selector: Some(ev::process_selector::Selector::Pid(pid)),
    })
}

/// Selects a process by tag.
pub fn by_tag(tag: &str) -> Option<ev::ProcessSelector> {
    Some(ev::ProcessSelector {
        selector: Some(ev::process_selector::Selector::Tag(tag.into())),
    })
}

/// The first message of a WriteFile stream.
pub fn file_header(header: ev::WriteFileHeader) -> ev::WriteFileRequest {
    ev::WriteFileRequest {
        msg: Some(ev::write_file_request::Msg::Header(header)),
    }
}

/// A content message of a WriteFile stream.
pub fn file_data(data: Vec<u8>) -> ev::WriteFileRequest {
    ev::WriteFileRequest {
        msg: Some(ev::write_file_request::Msg::Data(data.into())),
    }
}

/// The next event of a process stream, other than keepalives (`None` at the end of the
/// stream); panics if none comes within [`PATIENCE`].
pub async fn next_event(
    events: &mut tonic::Streaming<ev::ProcessEvent>,
) -> Result<Option<ev::process_event::Event>, tonic::Status> {
    loop {
        let message = tokio::time::timeout(PATIENCE, events.message())
            .await
            .expect("a process event in time")?;
        match message.and_then(|m| m.event) {
            Some(ev::process_event::Event::Keepalive(_)) => continue,
            other => return Ok(other),
        }
    }
}

/// Reads the first event of a process stream, which must be `start`.
pub async fn first_start(events: &mut tonic::Streaming<ev::ProcessEvent>) -> ev::StartEvent {
    match next_event(events).await.expect("the stream's first event") {
        Some(ev::process_event::Event::Start(start)) => start,
        other => panic!("the first event is {other:?}, not start"),
    }
}

/// Reads a process stream to its `end` event, panicking if an event takes longer than
/// [`PATIENCE`] or the stream ends without `end`.
pub async fn collect(events: tonic::Streaming<ev::ProcessEvent>) -> Ran {
    collect_all(events).await.expect("process stream")
}

pub(super) async fn collect_all(
    mut events: tonic::Streaming<ev::ProcessEvent>,
) -> Result<Ran, tonic::Status> {
    let (mut pid, mut out, mut err) = (0, Vec::new(), Vec::new());
    loop {
        match next_event(&mut events).await? {
            Some(ev::process_event::Event::Start(start)) => pid = start.pid,
            Some(ev::process_event::Event::Data(data)) => match data.output {
                Some(ev::data_event::Output::Stdout(b) | ev::data_event::Output::Pty(b)) => {
                    out.extend(b)
                }
                Some(ev::data_event::Output::Stderr(b)) => err.extend(b),
                None => {}
            },
            Some(ev::process_event::Event::End(end)) => {
                return Ok(Ran {
                    pid,
                    stdout: String::from_utf8_lossy(&out).into_owned(),
                    stderr: String::from_utf8_lossy(&err).into_owned(),
                    exit_code: end.exit_code,
                    end,
                });
            }
            Some(ev::process_event::Event::Keepalive(_)) | None => {
                panic!("the process stream ended without an end event")
            }
        }
    }
}

/// Reads PTY output of a process stream until it contains every one of `wanted`;
/// returns what was read.
pub async fn read_pty_until(
    events: &mut tonic::Streaming<ev::ProcessEvent>,
    wanted: &[&str],
) -> String {
    let mut seen = String::new();
    while !wanted.iter().all(|w| seen.contains(w)) {
        match next_event(events).await.expect("PTY stream") {
            Some(ev::process_event::Event::Data(ev::DataEvent {
                output: Some(ev::data_event::Output::Pty(b)),
            })) => seen.push_str(&String::from_utf8_lossy(&b)),
            Some(ev::process_event::Event::Data(_) | ev::process_event::Event::Start(_)) => {}
            other => panic!("waiting for {wanted:?} in {seen:?}, got {other:?}"),
        }
    }
    seen
}

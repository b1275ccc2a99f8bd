//! `hostagent.v1` ↔ [`wrenn_core::data_plane`]: the requests the control plane sends
//! into a running capsule and the answers and events it gets back.

use std::collections::HashMap;

use bytes::Bytes;
use wrenn_core::data_plane::{
    Command, ExecOutput, FileEntry, FileKind, MetricSample, ProcessEvent, ProcessInfo, ProcessRef,
    PtyEvent, PtySpec, Signal, StartedProcess,
};

use crate::hostagent::v1 as pb;
use crate::hostagent::v1::exec_data::Output;
use crate::hostagent::v1::exec_event::Event as ExecEventKind;
use crate::hostagent::v1::process_selector::Selector;
use crate::hostagent::v1::pty_event::Event as PtyEventKind;

fn envs(command: &Command) -> HashMap<String, String> {
    command.envs.clone().into_iter().collect()
}

/// `Exec` of `command` in `sandbox_id`, at most `timeout_sec` seconds.
pub fn exec_request(sandbox_id: String, command: Command, timeout_sec: u32) -> pb::ExecRequest {
    pb::ExecRequest {
        sandbox_id,
        envs: envs(&command),
        cmd: command.cmd,
        args: command.args,
        cwd: command.cwd,
        user: None,
        timeout_sec,
        stdin: None,
    }
}

/// `ExecStream` of `command` in `sandbox_id` (0: no timeout).
pub fn exec_stream_request(
    sandbox_id: String,
    command: Command,
    timeout_sec: u32,
) -> pb::ExecStreamRequest {
    pb::ExecStreamRequest {
        sandbox_id,
        envs: envs(&command),
        cmd: command.cmd,
        args: command.args,
        cwd: command.cwd,
        user: None,
        timeout_sec,
        stdin: None,
    }
}

/// `StartBackground` of `command` in `sandbox_id` under `tag`.
pub fn start_background_request(
    sandbox_id: String,
    command: Command,
    tag: String,
) -> pb::StartBackgroundRequest {
    pb::StartBackgroundRequest {
        sandbox_id,
        envs: envs(&command),
        cmd: command.cmd,
        args: command.args,
        cwd: command.cwd,
        user: None,
        tag,
    }
}

/// A foreground command's outcome.
pub fn exec_output(response: pb::ExecResponse) -> ExecOutput {
    ExecOutput {
        stdout: Bytes::from(response.stdout),
        stderr: Bytes::from(response.stderr),
        exit_code: response.exit_code,
        truncated: response.truncated,
    }
}

/// A started background process.
pub fn started_process(response: pb::StartBackgroundResponse) -> StartedProcess {
    StartedProcess {
        pid: response.pid,
        tag: response.tag,
    }
}

/// A process stream's event (`None` for an empty message, which carries nothing).
pub fn process_event(event: pb::ExecEvent) -> Option<ProcessEvent> {
    Some(match event.event? {
        ExecEventKind::Start(s) => ProcessEvent::Started {
            pid: s.pid,
            tag: s.tag,
        },
        ExecEventKind::Data(d) => match d.output? {
            Output::Stdout(b) => ProcessEvent::Stdout(Bytes::from(b)),
            Output::Stderr(b) => ProcessEvent::Stderr(Bytes::from(b)),
        },
        ExecEventKind::End(end) => ProcessEvent::Ended {
            exit_code: end.exit_code,
            error: end.error.filter(|e| !e.is_empty()),
        },
    })
}

/// A tracked process.
pub fn process_info(info: pb::ProcessInfo) -> ProcessInfo {
    ProcessInfo {
        pid: info.pid,
        tag: info.tag,
        cmd: info.cmd,
        args: info.args,
        envs: info.envs.into_iter().collect(),
        cwd: info.cwd,
        pty: info.pty,
    }
}

/// The wire selector of a process.
pub fn process_selector(process: ProcessRef) -> pb::ProcessSelector {
    pb::ProcessSelector {
        selector: Some(match process {
            ProcessRef::Pid(pid) => Selector::Pid(pid),
            ProcessRef::Tag(tag) => Selector::Tag(tag),
        }),
    }
}

/// The wire value of a signal.
pub fn signal(signal: Signal) -> pb::Signal {
    match signal {
        Signal::Hangup => pb::Signal::Sighup,
        Signal::Interrupt => pb::Signal::Sigint,
        Signal::Kill => pb::Signal::Sigkill,
        Signal::Terminate => pb::Signal::Sigterm,
    }
}

/// A file-system entry; unknown kinds are [`FileKind::Other`].
pub fn file_entry(entry: pb::FileEntry) -> FileEntry {
    let kind = match pb::FileType::try_from(entry.r#type) {
        Ok(pb::FileType::File) => FileKind::File,
        Ok(pb::FileType::Directory) => FileKind::Directory,
        Ok(pb::FileType::Symlink) => FileKind::Symlink,
        Ok(pb::FileType::Other | pb::FileType::Unspecified) | Err(_) => FileKind::Other,
    };
    FileEntry {
        name: entry.name,
        path: entry.path,
        kind,
        size: entry.size,
        mode: entry.mode,
        permissions: entry.permissions,
        owner: entry.owner,
        group: entry.group,
        modified_at: entry.modified_at_unix,
        symlink_target: entry.symlink_target,
    }
}

/// `PtyAttach` of `spec` in `sandbox_id`.
pub fn pty_attach_request(sandbox_id: String, spec: PtySpec) -> pb::PtyAttachRequest {
    pb::PtyAttachRequest {
        sandbox_id,
        tag: spec.tag,
        envs: envs(&spec.command),
        cmd: spec.command.cmd,
        args: spec.command.args,
        cwd: spec.command.cwd,
        user: spec.user,
        cols: spec.cols,
        rows: spec.rows,
    }
}

/// A terminal's event (`None` for an empty message).
pub fn pty_event(event: pb::PtyEvent) -> Option<PtyEvent> {
    Some(match event.event? {
        PtyEventKind::Started(s) => PtyEvent::Started {
            pid: s.pid,
            tag: s.tag,
        },
        PtyEventKind::Output(o) => PtyEvent::Output(Bytes::from(o.data)),
        PtyEventKind::Exited(e) => PtyEvent::Exited {
            exit_code: e.exit_code,
            error: e.error.filter(|e| !e.is_empty()),
        },
    })
}

/// A resource sample.
pub fn metric_sample(point: pb::MetricPoint) -> MetricSample {
    MetricSample {
        timestamp_unix: point.timestamp_unix,
        cpu_pct: point.cpu_pct,
        mem_bytes: point.mem_bytes,
        disk_bytes: point.disk_bytes,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn command() -> Command {
        Command {
            cmd: "/bin/sh".into(),
            args: vec!["-c".into(), "echo $X".into()],
            envs: BTreeMap::from([("X".into(), "1".into())]),
            cwd: Some("/tmp".into()),
        }
    }

    #[test]
    fn commands_cross_field_for_field() {
        let exec = exec_request("cl-1".into(), command(), 30);
        assert_eq!(
            (
                exec.sandbox_id.as_str(),
                exec.cmd.as_str(),
                exec.args.len(),
                exec.timeout_sec
            ),
            ("cl-1", "/bin/sh", 2, 30)
        );
        assert_eq!(exec.envs.get("X").map(String::as_str), Some("1"));
        assert_eq!(exec.cwd.as_deref(), Some("/tmp"));
        let stream = exec_stream_request("cl-1".into(), command(), 0);
        assert_eq!(
            (stream.cmd, stream.args, stream.cwd),
            (exec.cmd, exec.args, exec.cwd)
        );
        let background = start_background_request("cl-1".into(), command(), "proc-1".into());
        assert_eq!(
            (background.tag.as_str(), background.envs.len()),
            ("proc-1", 1)
        );
        let pty = pty_attach_request(
            "cl-1".into(),
            PtySpec {
                tag: "t".into(),
                command: command(),
                cols: 80,
                rows: 24,
                user: Some("root".into()),
            },
        );
        assert_eq!((pty.tag.as_str(), pty.cols, pty.rows), ("t", 80, 24));
        assert_eq!(pty.user.as_deref(), Some("root"));
        assert_eq!(pty.cmd, "/bin/sh");
    }

    #[test]
    fn process_events_keep_their_bytes_and_drop_empty_messages() {
        let data = |output| pb::ExecEvent {
            event: Some(ExecEventKind::Data(pb::ExecData { output })),
        };
        assert_eq!(
            process_event(data(Some(Output::Stdout(vec![0xff, b'a'])))),
            Some(ProcessEvent::Stdout(Bytes::from_static(&[0xff, b'a'])))
        );
        assert_eq!(
            process_event(data(Some(Output::Stderr(b"e".to_vec())))),
            Some(ProcessEvent::Stderr(Bytes::from_static(b"e")))
        );
        assert_eq!(process_event(data(None)), None);
        assert_eq!(process_event(pb::ExecEvent { event: None }), None);
        let end = |error: Option<&str>| pb::ExecEvent {
            event: Some(ExecEventKind::End(pb::ExecEnd {
                exit_code: 7,
                error: error.map(str::to_owned),
            })),
        };
        assert_eq!(
            process_event(end(Some(""))),
            Some(ProcessEvent::Ended {
                exit_code: 7,
                error: None
            })
        );
        assert_eq!(
            process_event(end(Some("killed"))),
            Some(ProcessEvent::Ended {
                exit_code: 7,
                error: Some("killed".into())
            })
        );
        let pty = pty_event(pb::PtyEvent {
            event: Some(PtyEventKind::Started(pb::PtyStarted {
                pid: 4,
                tag: "t".into(),
            })),
        });
        assert_eq!(
            pty,
            Some(PtyEvent::Started {
                pid: 4,
                tag: "t".into()
            })
        );
    }

    #[test]
    fn selectors_signals_and_entries_map_every_value() {
        assert_eq!(
            process_selector(ProcessRef::Pid(3)).selector,
            Some(Selector::Pid(3))
        );
        assert_eq!(
            process_selector(ProcessRef::Tag("a".into())).selector,
            Some(Selector::Tag("a".into()))
        );
        for (domain, wire) in [
            (Signal::Hangup, pb::Signal::Sighup),
            (Signal::Interrupt, pb::Signal::Sigint),
            (Signal::Kill, pb::Signal::Sigkill),
            (Signal::Terminate, pb::Signal::Sigterm),
        ] {
            assert_eq!(signal(domain), wire);
        }
        for (wire, kind) in [
            (pb::FileType::File as i32, FileKind::File),
            (pb::FileType::Directory as i32, FileKind::Directory),
            (pb::FileType::Symlink as i32, FileKind::Symlink),
            (pb::FileType::Other as i32, FileKind::Other),
            (99, FileKind::Other),
        ] {
            let entry = file_entry(pb::FileEntry {
                name: "n".into(),
                path: "/n".into(),
                r#type: wire,
                size: 5,
                mode: 0o644,
                permissions: "-rw-r--r--".into(),
                owner: "u".into(),
                group: "g".into(),
                modified_at_unix: 9,
                symlink_target: None,
            });
            assert_eq!(entry.kind, kind);
            assert_eq!((entry.size, entry.mode, entry.modified_at), (5, 0o644, 9));
        }
        let sample = metric_sample(pb::MetricPoint {
            timestamp_unix: 1,
            cpu_pct: 2.5,
            mem_bytes: 3,
            disk_bytes: 4,
        });
        assert_eq!(
            (sample.timestamp_unix, sample.mem_bytes, sample.disk_bytes),
            (1, 3, 4)
        );
    }
}

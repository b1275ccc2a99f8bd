//! `envd.v1` ↔ [`wrenn_core::data_plane`]: the requests the control plane sends into a
//! running capsule (through its host agent, which forwards them to the capsule's guest
//! agent — see [`crate::routing`]) and the answers and events it gets back.

use std::collections::HashMap;

use bytes::Bytes;
use wrenn_core::data_plane::{
    Command, FileEntry, FileKind, MetricSample, ProcessEvent, ProcessInfo, ProcessRef, PtyEvent,
    PtySpec, Signal,
};

use crate::envd::v1 as envd;
use crate::envd::v1::data_event::Output;
use crate::envd::v1::process_event::Event;
use crate::envd::v1::process_selector::Selector;
use crate::hostagent::v1 as pb;

/// The terminal type a new terminal gets unless its command sets `TERM`.
pub const DEFAULT_TERM: &str = "xterm-256color";

fn config(command: Command, user: Option<String>) -> envd::ProcessConfig {
    envd::ProcessConfig {
        envs: command.envs.into_iter().collect::<HashMap<_, _>>(),
        cmd: command.cmd,
        args: command.args,
        cwd: command.cwd,
        user,
    }
}

/// `Process.Start` of a command without a terminal: `tag` empty lets envd generate
/// one; with `stdin` the process reads a pipe fed by `SendInput`.
pub fn start_request(command: Command, tag: String, stdin: bool) -> envd::StartRequest {
    envd::StartRequest {
        process: Some(config(command, None)),
        pty: None,
        tag: (!tag.is_empty()).then_some(tag),
        stdin,
    }
}

/// `Process.Start` of a new terminal (`TERM` defaults to [`DEFAULT_TERM`]).
pub fn pty_start_request(spec: PtySpec) -> envd::StartRequest {
    let mut command = spec.command;
    command
        .envs
        .entry("TERM".into())
        .or_insert_with(|| DEFAULT_TERM.into());
    envd::StartRequest {
        process: Some(config(command, spec.user)),
        pty: Some(pty_size(spec.cols, spec.rows)),
        tag: (!spec.tag.is_empty()).then_some(spec.tag),
        stdin: true,
    }
}

/// A terminal size.
pub fn pty_size(cols: u32, rows: u32) -> envd::Pty {
    envd::Pty { cols, rows }
}

/// What one event of a process stream says: `None` for keepalives and empty
/// messages, which carry nothing. Terminal output is standard output.
pub fn process_event(event: envd::ProcessEvent) -> Option<ProcessEvent> {
    Some(match event.event? {
        Event::Start(s) => ProcessEvent::Started {
            pid: s.pid,
            tag: s.tag,
        },
        Event::Data(d) => match d.output? {
            Output::Stdout(b) | Output::Pty(b) => ProcessEvent::Stdout(Bytes::from(b)),
            Output::Stderr(b) => ProcessEvent::Stderr(Bytes::from(b)),
        },
        Event::End(end) => ProcessEvent::Ended {
            exit_code: end.exit_code,
            error: end_error(&end),
        },
        Event::Keepalive(_) => return None,
    })
}

/// What one event of a terminal's stream says (`None` for keepalives and empty
/// messages). Any output is terminal output.
pub fn pty_event(event: envd::ProcessEvent) -> Option<PtyEvent> {
    Some(match process_event(event)? {
        ProcessEvent::Started { pid, tag } => PtyEvent::Started { pid, tag },
        ProcessEvent::Stdout(b) | ProcessEvent::Stderr(b) => PtyEvent::Output(b),
        ProcessEvent::Ended { exit_code, error } => PtyEvent::Exited { exit_code, error },
    })
}

/// Why a process ended abnormally: envd's own error, else the status of a process a
/// signal ended ("signal: killed"); `None` for a normal exit.
pub fn end_error(end: &envd::EndEvent) -> Option<String> {
    end.error.clone().filter(|e| !e.is_empty()).or_else(|| {
        (!end.exited).then(|| {
            if end.status.is_empty() {
                "killed by a signal".to_owned()
            } else {
                end.status.clone()
            }
        })
    })
}

/// A live process.
pub fn process_info(info: envd::ProcessInfo) -> ProcessInfo {
    let config = info.config.unwrap_or_default();
    ProcessInfo {
        pid: info.pid,
        tag: info.tag.unwrap_or_default(),
        cmd: config.cmd,
        args: config.args,
        envs: config.envs.into_iter().collect(),
        cwd: config.cwd.unwrap_or_default(),
        pty: info.pty,
    }
}

/// The wire selector of a process.
pub fn process_selector(process: ProcessRef) -> envd::ProcessSelector {
    envd::ProcessSelector {
        selector: Some(match process {
            ProcessRef::Pid(pid) => Selector::Pid(pid),
            ProcessRef::Tag(tag) => Selector::Tag(tag),
        }),
    }
}

/// `Process.SendSignal` of `signal` to `process`.
pub fn signal_request(process: ProcessRef, signal: Signal) -> envd::SendSignalRequest {
    envd::SendSignalRequest {
        process: Some(process_selector(process)),
        signal: wire_signal(signal).into(),
    }
}

/// The wire value of a signal.
pub fn wire_signal(signal: Signal) -> envd::Signal {
    match signal {
        Signal::Hangup => envd::Signal::Sighup,
        Signal::Interrupt => envd::Signal::Sigint,
        Signal::Kill => envd::Signal::Sigkill,
        Signal::Terminate => envd::Signal::Sigterm,
    }
}

/// `Process.SendInput` of keystrokes to the terminal `tag`.
pub fn pty_input_request(tag: &str, data: Bytes) -> envd::SendInputRequest {
    envd::SendInputRequest {
        process: Some(process_selector(ProcessRef::Tag(tag.to_owned()))),
        input: Some(envd::ProcessInput {
            input: Some(envd::process_input::Input::Pty(data.to_vec())),
        }),
    }
}

/// `Filesystem.WriteFile`'s first message: create or truncate `path`.
pub fn write_header(path: String) -> envd::WriteFileRequest {
    envd::WriteFileRequest {
        msg: Some(envd::write_file_request::Msg::Header(
            envd::WriteFileHeader {
                path,
                mode: None,
                user: None,
                append: false,
            },
        )),
    }
}

/// A `Filesystem.WriteFile` content message.
pub fn write_data(chunk: Bytes) -> envd::WriteFileRequest {
    envd::WriteFileRequest {
        msg: Some(envd::write_file_request::Msg::Data(chunk)),
    }
}

/// A file-system entry; unknown kinds are [`FileKind::Other`].
pub fn file_entry(entry: envd::EntryInfo) -> FileEntry {
    let kind = match envd::FileType::try_from(entry.r#type) {
        Ok(envd::FileType::File) => FileKind::File,
        Ok(envd::FileType::Directory) => FileKind::Directory,
        Ok(envd::FileType::Symlink) => FileKind::Symlink,
        Ok(envd::FileType::Other | envd::FileType::Unspecified) | Err(_) => FileKind::Other,
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
        modified_at: entry.modified_time.map_or(0, |t| t.seconds),
        symlink_target: entry.symlink_target,
    }
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
        let start = start_request(command(), String::new(), false);
        let config = start.process.clone().unwrap();
        assert_eq!(
            (
                config.cmd.as_str(),
                config.args.len(),
                config.cwd.as_deref()
            ),
            ("/bin/sh", 2, Some("/tmp"))
        );
        assert_eq!(config.envs.get("X").map(String::as_str), Some("1"));
        assert_eq!((start.tag, start.stdin, start.pty), (None, false, None));
        let background = start_request(command(), "proc-1".into(), true);
        assert_eq!(
            (background.tag.as_deref(), background.stdin),
            (Some("proc-1"), true)
        );
        let pty = pty_start_request(PtySpec {
            tag: "t".into(),
            command: command(),
            cols: 80,
            rows: 24,
            user: Some("root".into()),
        });
        let config = pty.process.unwrap();
        assert_eq!(pty.tag.as_deref(), Some("t"));
        assert_eq!(pty.pty, Some(envd::Pty { cols: 80, rows: 24 }));
        assert_eq!(config.user.as_deref(), Some("root"));
        assert_eq!(
            config.envs.get("TERM").map(String::as_str),
            Some(DEFAULT_TERM)
        );
        let mut own_term = command();
        own_term.envs.insert("TERM".into(), "dumb".into());
        let pty = pty_start_request(PtySpec {
            tag: String::new(),
            command: own_term,
            cols: 1,
            rows: 1,
            user: None,
        });
        assert_eq!(pty.tag, None);
        assert_eq!(
            pty.process.unwrap().envs.get("TERM").map(String::as_str),
            Some("dumb")
        );
    }

    #[test]
    fn process_events_keep_their_bytes_and_drop_empty_messages() {
        let data = |output| envd::ProcessEvent {
            event: Some(Event::Data(envd::DataEvent { output })),
        };
        assert_eq!(
            process_event(data(Some(Output::Stdout(vec![0xff, b'a'])))),
            Some(ProcessEvent::Stdout(Bytes::from_static(&[0xff, b'a'])))
        );
        assert_eq!(
            process_event(data(Some(Output::Pty(b"p".to_vec())))),
            Some(ProcessEvent::Stdout(Bytes::from_static(b"p")))
        );
        assert_eq!(
            process_event(data(Some(Output::Stderr(b"e".to_vec())))),
            Some(ProcessEvent::Stderr(Bytes::from_static(b"e")))
        );
        assert_eq!(process_event(data(None)), None);
        assert_eq!(process_event(envd::ProcessEvent { event: None }), None);
        assert_eq!(
            process_event(envd::ProcessEvent {
                event: Some(Event::Keepalive(envd::KeepAlive {}))
            }),
            None
        );
        let end = |exited: bool, status: &str, error: Option<&str>| envd::ProcessEvent {
            event: Some(Event::End(envd::EndEvent {
                exit_code: if exited { 7 } else { -1 },
                exited,
                status: status.into(),
                error: error.map(str::to_owned),
            })),
        };
        assert_eq!(
            process_event(end(true, "exit status 7", Some(""))),
            Some(ProcessEvent::Ended {
                exit_code: 7,
                error: None
            })
        );
        assert_eq!(
            process_event(end(false, "signal: killed", None)),
            Some(ProcessEvent::Ended {
                exit_code: -1,
                error: Some("signal: killed".into())
            })
        );
        assert_eq!(
            process_event(end(false, "", None)),
            Some(ProcessEvent::Ended {
                exit_code: -1,
                error: Some("killed by a signal".into())
            })
        );
        assert_eq!(
            process_event(end(true, "exit status 7", Some("wait failed"))),
            Some(ProcessEvent::Ended {
                exit_code: 7,
                error: Some("wait failed".into())
            })
        );
        let started = envd::ProcessEvent {
            event: Some(Event::Start(envd::StartEvent {
                pid: 4,
                tag: "t".into(),
            })),
        };
        assert_eq!(
            pty_event(started),
            Some(PtyEvent::Started {
                pid: 4,
                tag: "t".into()
            })
        );
        assert_eq!(
            pty_event(data(Some(Output::Stderr(b"x".to_vec())))),
            Some(PtyEvent::Output(Bytes::from_static(b"x")))
        );
    }

    #[test]
    fn selectors_signals_processes_and_entries_map_every_value() {
        assert_eq!(
            process_selector(ProcessRef::Pid(3)).selector,
            Some(Selector::Pid(3))
        );
        assert_eq!(
            process_selector(ProcessRef::Tag("a".into())).selector,
            Some(Selector::Tag("a".into()))
        );
        for (domain, wire) in [
            (Signal::Hangup, envd::Signal::Sighup),
            (Signal::Interrupt, envd::Signal::Sigint),
            (Signal::Kill, envd::Signal::Sigkill),
            (Signal::Terminate, envd::Signal::Sigterm),
        ] {
            assert_eq!(wire_signal(domain), wire);
            assert_eq!(
                signal_request(ProcessRef::Pid(1), domain).signal,
                wire as i32
            );
        }
        let input = pty_input_request("t", Bytes::from_static(b"ls\n"));
        assert_eq!(
            input.input.and_then(|i| i.input),
            Some(envd::process_input::Input::Pty(b"ls\n".to_vec()))
        );
        let info = process_info(envd::ProcessInfo {
            config: Some(envd::ProcessConfig {
                cmd: "sleep".into(),
                args: vec!["9".into()],
                envs: HashMap::from([("A".into(), "b".into())]),
                cwd: None,
                user: None,
            }),
            pid: 12,
            tag: Some("proc-1".into()),
            pty: true,
        });
        assert_eq!(
            (
                info.pid,
                info.tag.as_str(),
                info.cmd.as_str(),
                info.cwd.as_str()
            ),
            (12, "proc-1", "sleep", "")
        );
        assert!(info.pty);
        assert_eq!(info.envs.get("A").map(String::as_str), Some("b"));
        for (wire, kind) in [
            (envd::FileType::File as i32, FileKind::File),
            (envd::FileType::Directory as i32, FileKind::Directory),
            (envd::FileType::Symlink as i32, FileKind::Symlink),
            (envd::FileType::Other as i32, FileKind::Other),
            (99, FileKind::Other),
        ] {
            let entry = file_entry(envd::EntryInfo {
                name: "n".into(),
                path: "/n".into(),
                r#type: wire,
                size: 5,
                mode: 0o644,
                permissions: "-rw-r--r--".into(),
                owner: "u".into(),
                group: "g".into(),
                modified_time: Some(prost_types::Timestamp {
                    seconds: 9,
                    nanos: 0,
                }),
                symlink_target: None,
            });
            assert_eq!(entry.kind, kind);
            assert_eq!((entry.size, entry.mode, entry.modified_at), (5, 0o644, 9));
        }
        match write_header("/a".into()).msg {
            Some(envd::write_file_request::Msg::Header(h)) => {
                assert_eq!((h.path.as_str(), h.append), ("/a", false))
            }
            other => panic!("{other:?}"),
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

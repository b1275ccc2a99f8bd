//! Process RPCs: Exec, ExecStream, StartBackground, ListProcesses, KillProcess,
//! ConnectProcess, SendProcessInput and CloseProcessStdin.

use crate::runtime::error_chain;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use wrenn_proto::envd::v1 as envd;
use wrenn_proto::envd::v1::process_client::ProcessClient;
use wrenn_proto::hostagent::v1 as pb;

use super::convert::{
    by_pid, check_tag, envd_signal, generated_tag, parse_sandbox_id, process_config, require_cmd,
    selector,
};
use super::relay::{KillOnDrop, Relayed, end_error, first_start, spawn_relay};
use super::{
    AgentService, DEFAULT_EXEC_TIMEOUT, EXEC_OUTPUT_CAP, Rpc, START_TIMEOUT, STDIN_CHUNK,
    STREAM_BUFFER, status_of,
};
use crate::envd::EnvdChannel;
use crate::error::{AgentError, AgentResult};

/// Writes `data` to a process's stdin in chunks, then closes it.
async fn feed_stdin(mut process: ProcessClient<EnvdChannel>, pid: u32, data: Vec<u8>) {
    for chunk in data.chunks(STDIN_CHUNK) {
        let req = envd::SendInputRequest {
            process: Some(by_pid(pid)),
            input: Some(envd::ProcessInput {
                input: Some(envd::process_input::Input::Stdin(chunk.to_vec())),
            }),
        };
        if let Err(e) = process.send_input(req).await {
            tracing::debug!(pid, "stdin: {}", error_chain(&e));
            break;
        }
    }
    let _ = process
        .close_stdin(envd::CloseStdinRequest {
            process: Some(by_pid(pid)),
        })
        .await;
}

fn exec_event(ev: envd::ProcessEvent) -> Relayed<pb::ExecEvent> {
    use envd::data_event::Output as O;
    use envd::process_event::Event as E;
    use pb::exec_data::Output as P;
    match ev.event {
        Some(E::Start(s)) => Relayed::Item(pb::ExecEvent {
            event: Some(pb::exec_event::Event::Start(pb::ExecStart {
                pid: s.pid,
                tag: s.tag,
            })),
        }),
        Some(E::Data(d)) => {
            let output = match d.output {
                Some(O::Stdout(b)) | Some(O::Pty(b)) => P::Stdout(b),
                Some(O::Stderr(b)) => P::Stderr(b),
                None => return Relayed::Skip,
            };
            Relayed::Item(pb::ExecEvent {
                event: Some(pb::exec_event::Event::Data(pb::ExecData {
                    output: Some(output),
                })),
            })
        }
        Some(E::End(end)) => Relayed::End(exec_end(end.exit_code, end_error(&end))),
        Some(E::Keepalive(_)) | None => Relayed::Skip,
    }
}

fn exec_end(exit_code: i32, error: Option<String>) -> pb::ExecEvent {
    pb::ExecEvent {
        event: Some(pb::exec_event::Event::End(pb::ExecEnd { exit_code, error })),
    }
}

impl AgentService {
    async fn exec_inner(&self, r: pb::ExecRequest) -> AgentResult<pb::ExecResponse> {
        let id = parse_sandbox_id(&r.sandbox_id)?;
        require_cmd(&r.cmd)?;
        let (sb, envd) = self.manager.envd_for(id, "exec needs a running sandbox")?;
        let limit = if r.timeout_sec == 0 {
            DEFAULT_EXEC_TIMEOUT
        } else {
            Duration::from_secs(u64::from(r.timeout_sec))
        };
        let deadline = Instant::now() + limit;
        let mut process = envd.process.clone();
        let start = envd::StartRequest {
            process: Some(process_config(r.cmd, r.args, r.envs, r.cwd, r.user)),
            pty: None,
            tag: None,
            stdin: r.stdin.is_some(),
        };
        let mut stream = process.start(start).await?.into_inner();
        let started = first_start(&mut stream, deadline).await?;
        let mut guard = KillOnDrop::new(envd.process.clone(), started.pid);
        if let Some(data) = r.stdin {
            tokio::spawn(feed_stdin(envd.process.clone(), started.pid, data));
        }
        let mut out = pb::ExecResponse::default();
        let append = |buf: &mut Vec<u8>, data: &[u8], truncated: &mut bool| {
            let room = EXEC_OUTPUT_CAP.saturating_sub(buf.len());
            if data.len() > room {
                *truncated = true;
            }
            buf.extend_from_slice(&data[..data.len().min(room)]);
        };
        loop {
            let msg = match tokio::time::timeout_at(deadline, stream.message()).await {
                Ok(m) => m,
                Err(_) => {
                    guard.kill_now().await;
                    return Err(AgentError::DeadlineExceeded(format!(
                        "the command outlived its timeout of {}s and was killed",
                        limit.as_secs()
                    )));
                }
            };
            use envd::data_event::Output as O;
            use envd::process_event::Event as E;
            match msg {
                Ok(Some(ev)) => match ev.event {
                    Some(E::Data(d)) => {
                        sb.touch();
                        match d.output {
                            Some(O::Stdout(b)) | Some(O::Pty(b)) => {
                                append(&mut out.stdout, &b, &mut out.truncated)
                            }
                            Some(O::Stderr(b)) => append(&mut out.stderr, &b, &mut out.truncated),
                            None => {}
                        }
                    }
                    Some(E::End(end)) => {
                        guard.disarm();
                        if let Some(err) = end.error {
                            return Err(AgentError::Internal(format!("guest agent: {err}")));
                        }
                        out.exit_code = end.exit_code;
                        sb.touch();
                        return Ok(out);
                    }
                    _ => {}
                },
                Ok(None) => {
                    return Err(AgentError::Unavailable(
                        "guest agent closed the process stream before the process ended".into(),
                    ));
                }
                Err(status) => return Err(status.into()),
            }
        }
    }
}

pub(super) async fn exec(
    svc: &AgentService,
    req: Request<pb::ExecRequest>,
) -> Rpc<pb::ExecResponse> {
    let resp = svc.exec_inner(req.into_inner()).await.map_err(status_of)?;
    Ok(Response::new(resp))
}

pub(super) async fn exec_stream(
    svc: &AgentService,
    req: Request<pb::ExecStreamRequest>,
) -> Rpc<ReceiverStream<Result<pb::ExecEvent, Status>>> {
    let r = req.into_inner();
    let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
    require_cmd(&r.cmd).map_err(status_of)?;
    let (sb, envd) = svc
        .manager
        .envd_for(id, "exec needs a running sandbox")
        .map_err(status_of)?;
    let limit = (r.timeout_sec > 0).then(|| Duration::from_secs(u64::from(r.timeout_sec)));
    let start_deadline = Instant::now() + limit.unwrap_or(START_TIMEOUT).min(START_TIMEOUT);
    let mut process = envd.process.clone();
    let start = envd::StartRequest {
        process: Some(process_config(r.cmd, r.args, r.envs, r.cwd, r.user)),
        pty: None,
        tag: None,
        stdin: r.stdin.is_some(),
    };
    let mut stream = process
        .start(start)
        .await
        .map_err(|s| status_of(s.into()))?
        .into_inner();
    let started = first_start(&mut stream, start_deadline)
        .await
        .map_err(status_of)?;
    let guard = KillOnDrop::new(envd.process.clone(), started.pid);
    if let Some(data) = r.stdin {
        tokio::spawn(feed_stdin(envd.process.clone(), started.pid, data));
    }
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let first = pb::ExecEvent {
        event: Some(pb::exec_event::Event::Start(pb::ExecStart {
            pid: started.pid,
            tag: started.tag,
        })),
    };
    let _ = tx.send(Ok(first)).await;
    let deadline = limit.map(|l| (Instant::now() + l, l));
    spawn_relay(sb, stream, tx, exec_event, exec_end, Some(guard), deadline);
    Ok(Response::new(ReceiverStream::new(rx)))
}

pub(super) async fn start_background(
    svc: &AgentService,
    req: Request<pb::StartBackgroundRequest>,
) -> Rpc<pb::StartBackgroundResponse> {
    let r = req.into_inner();
    let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
    require_cmd(&r.cmd).map_err(status_of)?;
    let tag = if r.tag.is_empty() {
        generated_tag("proc")
    } else {
        check_tag(&r.tag).map_err(status_of)?;
        r.tag
    };
    let (_sb, envd) = svc
        .manager
        .envd_for(id, "starting a process needs a running sandbox")
        .map_err(status_of)?;
    let mut process = envd.process.clone();
    let start = envd::StartRequest {
        process: Some(process_config(r.cmd, r.args, r.envs, r.cwd, r.user)),
        pty: None,
        tag: Some(tag),
        stdin: true,
    };
    let mut stream = process
        .start(start)
        .await
        .map_err(|s| status_of(s.into()))?
        .into_inner();
    let started = first_start(&mut stream, Instant::now() + START_TIMEOUT)
        .await
        .map_err(status_of)?;
    // Dropping the stream detaches; envd keeps the process running.
    drop(stream);
    Ok(Response::new(pb::StartBackgroundResponse {
        pid: started.pid,
        tag: started.tag,
    }))
}

pub(super) async fn list_processes(
    svc: &AgentService,
    req: Request<pb::ListProcessesRequest>,
) -> Rpc<pb::ListProcessesResponse> {
    let r = req.into_inner();
    let (_sb, envd) = svc
        .running(&r.sandbox_id, "listing processes needs a running sandbox")
        .map_err(status_of)?;
    let mut process = envd.process.clone();
    let list = process
        .list(envd::ListRequest {})
        .await
        .map_err(|s| status_of(s.into()))?
        .into_inner();
    let processes = list
        .processes
        .into_iter()
        .map(|p| {
            let c = p.config.unwrap_or_default();
            pb::ProcessInfo {
                pid: p.pid,
                tag: p.tag.unwrap_or_default(),
                cmd: c.cmd,
                args: c.args,
                envs: c.envs,
                cwd: c.cwd.unwrap_or_default(),
                pty: p.pty,
            }
        })
        .collect();
    Ok(Response::new(pb::ListProcessesResponse { processes }))
}

pub(super) async fn kill_process(
    svc: &AgentService,
    req: Request<pb::KillProcessRequest>,
) -> Rpc<pb::KillProcessResponse> {
    let r = req.into_inner();
    let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
    let sel = selector(r.process).map_err(status_of)?;
    let signal = envd_signal(r.signal).map_err(status_of)?;
    let (_sb, envd) = svc
        .manager
        .envd_for(id, "signalling a process needs a running sandbox")
        .map_err(status_of)?;
    let mut process = envd.process.clone();
    process
        .send_signal(envd::SendSignalRequest {
            process: Some(sel),
            signal,
        })
        .await
        .map_err(|s| status_of(s.into()))?;
    Ok(Response::new(pb::KillProcessResponse {}))
}

pub(super) async fn connect_process(
    svc: &AgentService,
    req: Request<pb::ConnectProcessRequest>,
) -> Rpc<ReceiverStream<Result<pb::ExecEvent, Status>>> {
    let r = req.into_inner();
    let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
    let sel = selector(r.process).map_err(status_of)?;
    let (sb, envd) = svc
        .manager
        .envd_for(id, "attaching to a process needs a running sandbox")
        .map_err(status_of)?;
    let mut process = envd.process.clone();
    let mut stream = process
        .connect(envd::ConnectRequest {
            process: Some(sel),
            replay: r.replay,
        })
        .await
        .map_err(|s| status_of(s.into()))?
        .into_inner();
    let started = first_start(&mut stream, Instant::now() + START_TIMEOUT)
        .await
        .map_err(status_of)?;
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let first = pb::ExecEvent {
        event: Some(pb::exec_event::Event::Start(pb::ExecStart {
            pid: started.pid,
            tag: started.tag,
        })),
    };
    let _ = tx.send(Ok(first)).await;
    spawn_relay(sb, stream, tx, exec_event, exec_end, None, None);
    Ok(Response::new(ReceiverStream::new(rx)))
}

pub(super) async fn send_process_input(
    svc: &AgentService,
    req: Request<pb::SendProcessInputRequest>,
) -> Rpc<pb::SendProcessInputResponse> {
    let r = req.into_inner();
    let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
    let sel = selector(r.process).map_err(status_of)?;
    let (_sb, envd) = svc
        .manager
        .envd_for(id, "process input needs a running sandbox")
        .map_err(status_of)?;
    let mut process = envd.process.clone();
    process
        .send_input(envd::SendInputRequest {
            process: Some(sel),
            input: Some(envd::ProcessInput {
                input: Some(envd::process_input::Input::Stdin(r.stdin)),
            }),
        })
        .await
        .map_err(|s| status_of(s.into()))?;
    Ok(Response::new(pb::SendProcessInputResponse {}))
}

pub(super) async fn close_process_stdin(
    svc: &AgentService,
    req: Request<pb::CloseProcessStdinRequest>,
) -> Rpc<pb::CloseProcessStdinResponse> {
    let r = req.into_inner();
    let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
    let sel = selector(r.process).map_err(status_of)?;
    let (_sb, envd) = svc
        .manager
        .envd_for(id, "process input needs a running sandbox")
        .map_err(status_of)?;
    let mut process = envd.process.clone();
    process
        .close_stdin(envd::CloseStdinRequest { process: Some(sel) })
        .await
        .map_err(|s| status_of(s.into()))?;
    Ok(Response::new(pb::CloseProcessStdinResponse {}))
}

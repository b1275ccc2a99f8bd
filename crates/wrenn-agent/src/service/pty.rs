//! PTY RPCs: PtyAttach (new terminal or reattach), PtySendInput, PtyResize and PtyKill.

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use wrenn_proto::envd::v1 as envd;
use wrenn_proto::hostagent::v1 as pb;

use super::convert::{by_tag, check_tag, generated_tag, parse_sandbox_id, process_config};
use super::relay::{Relayed, end_error, first_start, spawn_relay};
use super::{AgentService, Rpc, START_TIMEOUT, STREAM_BUFFER, status_of};
use crate::error::{AgentError, AgentResult};

fn pty_event(ev: envd::ProcessEvent) -> Relayed<pb::PtyEvent> {
    use envd::data_event::Output as O;
    use envd::process_event::Event as E;
    match ev.event {
        Some(E::Data(d)) => match d.output {
            Some(O::Pty(b)) | Some(O::Stdout(b)) | Some(O::Stderr(b)) => {
                Relayed::Item(pb::PtyEvent {
                    event: Some(pb::pty_event::Event::Output(pb::PtyOutput { data: b })),
                })
            }
            None => Relayed::Skip,
        },
        Some(E::End(end)) => Relayed::End(pty_exited(end.exit_code, end_error(&end))),
        Some(E::Start(_)) | Some(E::Keepalive(_)) | None => Relayed::Skip,
    }
}

fn pty_exited(exit_code: i32, error: Option<String>) -> pb::PtyEvent {
    pb::PtyEvent {
        event: Some(pb::pty_event::Event::Exited(pb::PtyExited {
            exit_code,
            error,
        })),
    }
}

impl AgentService {
    async fn pty_attach_inner(
        &self,
        r: pb::PtyAttachRequest,
    ) -> AgentResult<ReceiverStream<Result<pb::PtyEvent, Status>>> {
        let id = parse_sandbox_id(&r.sandbox_id)?;
        let new = !r.cmd.is_empty();
        if new {
            if r.cols == 0 || r.rows == 0 {
                return Err(AgentError::invalid(
                    "cols and rows must be non-zero for a new PTY",
                ));
            }
            if !r.tag.is_empty() {
                check_tag(&r.tag)?;
            }
        } else if r.tag.is_empty() {
            return Err(AgentError::invalid(
                "tag is required to reattach (cmd is empty)",
            ));
        }
        let (sb, envd) = self.manager.envd_for(id, "PTY needs a running sandbox")?;
        let mut process = envd.process.clone();
        let deadline = Instant::now() + START_TIMEOUT;
        let (stream, started) = if new {
            let mut envs = r.envs;
            envs.entry("TERM".into())
                .or_insert_with(|| "xterm-256color".into());
            let tag = if r.tag.is_empty() {
                generated_tag("pty")
            } else {
                r.tag
            };
            let start = envd::StartRequest {
                process: Some(process_config(r.cmd, r.args, envs, r.cwd, r.user)),
                pty: Some(envd::Pty {
                    cols: r.cols,
                    rows: r.rows,
                }),
                tag: Some(tag),
                stdin: true,
            };
            let mut stream = process.start(start).await?.into_inner();
            let started = first_start(&mut stream, deadline).await?;
            (stream, started)
        } else {
            let info = find_process(&envd, &r.tag).await?;
            if !info.pty {
                return Err(AgentError::NotFound(format!(
                    "no PTY process with tag {:?} (it runs without a terminal)",
                    r.tag
                )));
            }
            if r.cols > 0 && r.rows > 0 {
                process
                    .update(envd::UpdateRequest {
                        process: Some(by_tag(&r.tag)),
                        pty: Some(envd::Pty {
                            cols: r.cols,
                            rows: r.rows,
                        }),
                    })
                    .await?;
            }
            let mut stream = process
                .connect(envd::ConnectRequest {
                    process: Some(by_tag(&r.tag)),
                    replay: true,
                })
                .await?
                .into_inner();
            let started = first_start(&mut stream, deadline).await?;
            (stream, started)
        };
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let first = pb::PtyEvent {
            event: Some(pb::pty_event::Event::Started(pb::PtyStarted {
                pid: started.pid,
                tag: started.tag,
            })),
        };
        tx.send(Ok(first))
            .await
            .map_err(|_| AgentError::Cancelled("caller went away".into()))?;
        // A detached PTY keeps running: no kill guard.
        spawn_relay(sb, stream, tx, pty_event, pty_exited, None, None);
        Ok(ReceiverStream::new(rx))
    }
}

/// The live process with `tag`, or NotFound.
async fn find_process(envd: &crate::envd::EnvdClient, tag: &str) -> AgentResult<envd::ProcessInfo> {
    let mut process = envd.process.clone();
    let list = process.list(envd::ListRequest {}).await?.into_inner();
    list.processes
        .into_iter()
        .find(|p| p.tag.as_deref() == Some(tag))
        .ok_or_else(|| AgentError::NotFound(format!("no process with tag {tag:?}")))
}

pub(super) async fn pty_attach(
    svc: &AgentService,
    req: Request<pb::PtyAttachRequest>,
) -> Rpc<ReceiverStream<Result<pb::PtyEvent, Status>>> {
    let stream = svc
        .pty_attach_inner(req.into_inner())
        .await
        .map_err(status_of)?;
    Ok(Response::new(stream))
}

pub(super) async fn pty_send_input(
    svc: &AgentService,
    req: Request<pb::PtySendInputRequest>,
) -> Rpc<pb::PtySendInputResponse> {
    let r = req.into_inner();
    let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
    if r.tag.is_empty() {
        return Err(status_of(AgentError::invalid("tag is required")));
    }
    let (_sb, envd) = svc
        .manager
        .envd_for(id, "PTY input needs a running sandbox")
        .map_err(status_of)?;
    let mut process = envd.process.clone();
    process
        .send_input(envd::SendInputRequest {
            process: Some(by_tag(&r.tag)),
            input: Some(envd::ProcessInput {
                input: Some(envd::process_input::Input::Pty(r.data)),
            }),
        })
        .await
        .map_err(|s| status_of(s.into()))?;
    Ok(Response::new(pb::PtySendInputResponse {}))
}

pub(super) async fn pty_resize(
    svc: &AgentService,
    req: Request<pb::PtyResizeRequest>,
) -> Rpc<pb::PtyResizeResponse> {
    let r = req.into_inner();
    let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
    if r.tag.is_empty() {
        return Err(status_of(AgentError::invalid("tag is required")));
    }
    if r.cols == 0 || r.rows == 0 {
        return Err(status_of(AgentError::invalid(
            "cols and rows must be non-zero",
        )));
    }
    let (_sb, envd) = svc
        .manager
        .envd_for(id, "PTY resize needs a running sandbox")
        .map_err(status_of)?;
    let mut process = envd.process.clone();
    process
        .update(envd::UpdateRequest {
            process: Some(by_tag(&r.tag)),
            pty: Some(envd::Pty {
                cols: r.cols,
                rows: r.rows,
            }),
        })
        .await
        .map_err(|s| status_of(s.into()))?;
    Ok(Response::new(pb::PtyResizeResponse {}))
}

pub(super) async fn pty_kill(
    svc: &AgentService,
    req: Request<pb::PtyKillRequest>,
) -> Rpc<pb::PtyKillResponse> {
    let r = req.into_inner();
    let id = parse_sandbox_id(&r.sandbox_id).map_err(status_of)?;
    if r.tag.is_empty() {
        return Err(status_of(AgentError::invalid("tag is required")));
    }
    let (_sb, envd) = svc
        .manager
        .envd_for(id, "PTY kill needs a running sandbox")
        .map_err(status_of)?;
    let info = find_process(&envd, &r.tag).await.map_err(status_of)?;
    if !info.pty {
        return Err(status_of(AgentError::FailedPrecondition(format!(
            "process {:?} has no PTY: use KillProcess",
            r.tag
        ))));
    }
    let mut process = envd.process.clone();
    process
        .send_signal(envd::SendSignalRequest {
            process: Some(by_tag(&r.tag)),
            signal: envd::Signal::Sigkill as i32,
        })
        .await
        .map_err(|s| status_of(s.into()))?;
    Ok(Response::new(pb::PtyKillResponse {}))
}

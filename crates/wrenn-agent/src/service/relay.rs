//! Plumbing shared by the process and PTY calls: waiting for envd's `start` event,
//! relaying an envd process stream to a caller, and killing an abandoned process.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::{Status, Streaming};
use wrenn_proto::envd::v1 as envd;
use wrenn_proto::envd::v1::process_client::ProcessClient;

use super::convert::by_pid;
use crate::envd::EnvdChannel;
use crate::error::{AgentError, AgentResult};
use crate::manager::Sandbox;

/// Waits for the `start` event that opens every envd process stream.
pub(super) async fn first_start(
    stream: &mut Streaming<envd::ProcessEvent>,
    deadline: Instant,
) -> AgentResult<envd::StartEvent> {
    loop {
        let msg = tokio::time::timeout_at(deadline, stream.message())
            .await
            .map_err(|_| {
                AgentError::DeadlineExceeded("the process did not start in time".into())
            })?;
        match msg? {
            Some(envd::ProcessEvent {
                event: Some(envd::process_event::Event::Start(s)),
            }) => return Ok(s),
            Some(envd::ProcessEvent {
                event: Some(envd::process_event::Event::Keepalive(_)),
            }) => continue,
            Some(_) => {
                return Err(AgentError::internal(
                    "guest agent sent an event before `start`",
                ));
            }
            None => {
                return Err(AgentError::Unavailable(
                    "guest agent closed the process stream before `start`".into(),
                ));
            }
        }
    }
}

/// Sends SIGKILL to a process when dropped while armed: an abandoned Exec or ExecStream
/// (timeout, cancelled call) never leaves its process running (Obs-L4).
pub(super) struct KillOnDrop {
    process: ProcessClient<EnvdChannel>,
    pid: u32,
    armed: bool,
}

impl KillOnDrop {
    pub(super) fn new(process: ProcessClient<EnvdChannel>, pid: u32) -> Self {
        Self {
            process,
            pid,
            armed: true,
        }
    }

    pub(super) fn disarm(&mut self) {
        self.armed = false;
    }

    /// Kills now and waits for envd to confirm (bounded).
    pub(super) async fn kill_now(&mut self) {
        self.armed = false;
        let mut p = self.process.clone();
        let req = envd::SendSignalRequest {
            process: Some(by_pid(self.pid)),
            signal: envd::Signal::Sigkill as i32,
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), p.send_signal(req)).await;
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut p = self.process.clone();
        let pid = self.pid;
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let req = envd::SendSignalRequest {
                    process: Some(by_pid(pid)),
                    signal: envd::Signal::Sigkill as i32,
                };
                let _ = tokio::time::timeout(Duration::from_secs(5), p.send_signal(req)).await;
            });
        }
    }
}

/// What one envd event becomes on a caller's stream.
pub(super) enum Relayed<T> {
    /// Nothing (keepalive).
    Skip,
    /// An item; the stream goes on.
    Item(T),
    /// The last item.
    End(T),
}

/// The `error` of an end event: envd's own error, or the status of an abnormal exit.
pub(super) fn end_error(end: &envd::EndEvent) -> Option<String> {
    end.error.clone().or_else(|| {
        (!end.exited).then(|| {
            if end.status.is_empty() {
                "killed by a signal".to_owned()
            } else {
                end.status.clone()
            }
        })
    })
}

/// Relays an envd process stream to a caller until the process ends, the stream
/// breaks, the caller goes away, or the deadline passes. Output counts as activity.
/// With a `kill` guard, the process is killed when the caller goes away or the
/// deadline passes.
#[allow(clippy::too_many_arguments)]
pub(super) fn spawn_relay<T: Send + 'static>(
    sb: Arc<Sandbox>,
    mut stream: Streaming<envd::ProcessEvent>,
    tx: mpsc::Sender<Result<T, Status>>,
    map: fn(envd::ProcessEvent) -> Relayed<T>,
    end_with: fn(i32, Option<String>) -> T,
    mut kill: Option<KillOnDrop>,
    deadline: Option<(Instant, Duration)>,
) {
    tokio::spawn(async move {
        // Unused when there is no deadline (the branch is disabled).
        let far = Instant::now() + Duration::from_secs(24 * 3600);
        let (at, limit) = deadline.unwrap_or((far, Duration::ZERO));
        loop {
            tokio::select! {
                _ = tx.closed() => {
                    // The caller went away: `kill` (if any) fires on drop.
                    return;
                }
                _ = tokio::time::sleep_until(at), if deadline.is_some() => {
                    if let Some(k) = kill.as_mut() {
                        k.kill_now().await;
                    }
                    let _ = tx
                        .send(Ok(end_with(-1, Some(format!("timed out after {}s; the process was killed", limit.as_secs())))))
                        .await;
                    return;
                }
                msg = stream.message() => {
                    match msg {
                        Ok(Some(ev)) => match map(ev) {
                            Relayed::Skip => {}
                            Relayed::Item(item) => {
                                sb.touch();
                                if tx.send(Ok(item)).await.is_err() {
                                    return;
                                }
                            }
                            Relayed::End(item) => {
                                if let Some(k) = kill.as_mut() {
                                    k.disarm();
                                }
                                sb.touch();
                                let _ = tx.send(Ok(item)).await;
                                return;
                            }
                        },
                        Ok(None) => {
                            let _ = tx
                                .send(Ok(end_with(-1, Some("guest agent closed the stream".into()))))
                                .await;
                            return;
                        }
                        Err(status) => {
                            let _ = tx
                                .send(Ok(end_with(-1, Some(format!("guest agent: {}", status.message())))))
                                .await;
                            return;
                        }
                    }
                }
            }
        }
    });
}

//! `envd.v1.Process` forwarded, and the kill-on-disconnect of `Process.Start`.

use std::time::Duration;

use tokio::sync::oneshot;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;
use wrenn_core::id::SandboxId;
use wrenn_proto::envd::v1 as envd;
use wrenn_proto::envd::v1::process_client::ProcessClient;
use wrenn_proto::envd::v1::process_event::Event;
use wrenn_proto::envd::v1::process_server::Process;
use wrenn_proto::routing;

use super::stream::{Relay, Watch};
use super::{EnvdStream, Forwarder, call_span, envd_status};
use crate::envd::EnvdChannel;

/// How long the kill of an abandoned process may take (and how long an abandoned
/// `Process.Start` stream is read for its pid).
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

type Rpc<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl Process for Forwarder {
    async fn list(&self, request: Request<envd::ListRequest>) -> Rpc<envd::ListResponse> {
        self.unary("Process.List", request, |mut e, r| async move {
            e.process.list(r).await
        })
        .await
    }

    type StartStream = EnvdStream<envd::ProcessEvent>;

    /// Relays the process's events. With `wrenn-on-disconnect: kill` the process is
    /// SIGKILLed if the caller drops the stream (or the call) before the `end` event.
    async fn start(&self, request: Request<envd::StartRequest>) -> Rpc<Self::StartStream> {
        const RPC: &str = "Process.Start";
        if !routing::kills_on_disconnect(request.metadata()) {
            let started = self
                .forward(
                    RPC,
                    request,
                    |mut e, r| async move { e.process.start(r).await },
                )
                .await?;
            let events = Relay::boxed(started.answer, started.sandbox, ());
            return Ok(Response::new(events));
        }
        let (sandbox, envd) = self.route(request.metadata(), RPC)?;
        let request = Request::new(request.into_inner());
        let events = start_killable(envd.process.clone(), sandbox.id(), request)
            .instrument(call_span(RPC, &sandbox))
            .await
            .map_err(envd_status)?
            .into_inner();
        let watch = OnDisconnect::Kill {
            process: envd.process,
            sandbox: sandbox.id(),
        };
        Ok(Response::new(Relay::boxed(events, sandbox, watch)))
    }

    type ConnectStream = EnvdStream<envd::ProcessEvent>;

    /// Relays the process's events; dropping the stream detaches.
    async fn connect(&self, request: Request<envd::ConnectRequest>) -> Rpc<Self::ConnectStream> {
        let connected = self
            .forward("Process.Connect", request, |mut e, r| async move {
                e.process.connect(r).await
            })
            .await?;
        Ok(Response::new(Relay::boxed(
            connected.answer,
            connected.sandbox,
            (),
        )))
    }

    async fn update(&self, request: Request<envd::UpdateRequest>) -> Rpc<envd::UpdateResponse> {
        self.unary("Process.Update", request, |mut e, r| async move {
            e.process.update(r).await
        })
        .await
    }

    async fn stream_input(
        &self,
        request: Request<Streaming<envd::StreamInputRequest>>,
    ) -> Rpc<envd::StreamInputResponse> {
        self.client_stream("Process.StreamInput", request, |mut e, r| async move {
            e.process.stream_input(r).await
        })
        .await
    }

    async fn send_input(
        &self,
        request: Request<envd::SendInputRequest>,
    ) -> Rpc<envd::SendInputResponse> {
        self.unary("Process.SendInput", request, |mut e, r| async move {
            e.process.send_input(r).await
        })
        .await
    }

    async fn send_signal(
        &self,
        request: Request<envd::SendSignalRequest>,
    ) -> Rpc<envd::SendSignalResponse> {
        self.unary("Process.SendSignal", request, |mut e, r| async move {
            e.process.send_signal(r).await
        })
        .await
    }

    async fn close_stdin(
        &self,
        request: Request<envd::CloseStdinRequest>,
    ) -> Rpc<envd::CloseStdinResponse> {
        self.unary("Process.CloseStdin", request, |mut e, r| async move {
            e.process.close_stdin(r).await
        })
        .await
    }
}

/// envd's `Process.Start` on a task of its own, so that a caller who goes away while
/// envd is still starting the process gets it killed all the same.
async fn start_killable(
    process: ProcessClient<EnvdChannel>,
    sandbox: SandboxId,
    request: Request<envd::StartRequest>,
) -> Result<Response<Streaming<envd::ProcessEvent>>, Status> {
    let (tx, rx) = oneshot::channel();
    let mut client = process.clone();
    tokio::spawn(async move {
        let answer = client.start(request).await;
        if let Err(Ok(events)) = tx.send(answer) {
            OnDisconnect::Kill { process, sandbox }.abandoned(events.into_inner());
        }
    });
    rx.await
        .unwrap_or_else(|_| Err(Status::unavailable("the call to the guest agent was lost")))
}

/// What a `Process.Start` relay does with the process when the caller goes away.
enum OnDisconnect {
    /// Nothing (any more): the `end` event was relayed, or the kill was handed off.
    Detach,
    /// Kill it, once the `start` event names its pid.
    Kill {
        process: ProcessClient<EnvdChannel>,
        sandbox: SandboxId,
    },
    /// The pid is known: the guard kills it when dropped armed.
    Armed(KillOnDrop),
}

impl Watch<envd::ProcessEvent> for OnDisconnect {
    fn seen(&mut self, event: &envd::ProcessEvent) {
        match &event.event {
            Some(Event::Start(start)) => {
                if let Self::Kill { process, sandbox } = self {
                    *self = Self::Armed(KillOnDrop::new(process.clone(), *sandbox, start.pid));
                }
            }
            Some(Event::End(_)) => {
                if let Self::Armed(guard) = self {
                    guard.disarm();
                }
                *self = Self::Detach;
            }
            Some(Event::Data(_) | Event::Keepalive(_)) | None => {}
        }
    }

    /// Dropped before the `start` event was read (or before the caller got the stream):
    /// reads it from the rest of envd's stream (bounded) and kills that pid.
    fn abandoned(&mut self, mut rest: Streaming<envd::ProcessEvent>) {
        let Self::Kill { process, sandbox } = std::mem::replace(self, Self::Detach) else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        handle.spawn(async move {
            let pid = tokio::time::timeout(KILL_TIMEOUT, async {
                loop {
                    match rest.message().await {
                        Ok(Some(envd::ProcessEvent {
                            event: Some(Event::Start(start)),
                        })) => return Some(start.pid),
                        Ok(Some(envd::ProcessEvent {
                            event: Some(Event::End(_)),
                        }))
                        | Ok(None)
                        | Err(_) => return None,
                        Ok(Some(_)) => {}
                    }
                }
            })
            .await;
            if let Ok(Some(pid)) = pid {
                // Dropped armed: kills.
                drop(KillOnDrop::new(process, sandbox, pid));
            }
        });
    }
}

/// Sends SIGKILL (to the process group, through envd, bounded by [`KILL_TIMEOUT`]) to a
/// process when dropped while armed: a caller that asked for it never leaves its
/// process running by going away.
struct KillOnDrop {
    process: ProcessClient<EnvdChannel>,
    sandbox: SandboxId,
    pid: u32,
    armed: bool,
}

impl KillOnDrop {
    fn new(process: ProcessClient<EnvdChannel>, sandbox: SandboxId, pid: u32) -> Self {
        Self {
            process,
            sandbox,
            pid,
            armed: true,
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut process = self.process.clone();
        let (sandbox, pid) = (self.sandbox, self.pid);
        tracing::debug!(%sandbox, pid, "caller went away before the process ended: killing it");
        handle.spawn(async move {
            let request = envd::SendSignalRequest {
                process: Some(envd::ProcessSelector {
                    selector: Some(envd::process_selector::Selector::Pid(pid)),
                }),
                signal: envd::Signal::Sigkill as i32,
            };
            match tokio::time::timeout(KILL_TIMEOUT, process.send_signal(request)).await {
                Ok(Ok(_)) => {}
                Ok(Err(status)) => {
                    tracing::debug!(%sandbox, pid, error = %status.message(), "kill of an abandoned process failed");
                }
                Err(_) => tracing::debug!(%sandbox, pid, "kill of an abandoned process timed out"),
            }
        });
    }
}

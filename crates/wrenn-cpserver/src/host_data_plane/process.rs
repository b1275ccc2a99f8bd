//! Process streams: waiting for the `start` event that opens every `Process.Start` and
//! `Process.Connect` stream, collecting a foreground command's output, and a stream of
//! domain events that ends itself at a deadline.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::time::Instant;
use tonic::Streaming;
use wrenn_core::agents::HostCallError;
use wrenn_core::data_plane::{ExecOutput, HostStream};
use wrenn_proto::envd::v1 as envd;
use wrenn_proto::envd::v1::process_event::Event;

use super::{Call, Failure};

/// Output a foreground command keeps per stream; beyond it output is dropped and the
/// answer says `truncated`.
pub const EXEC_OUTPUT_CAP: usize = 16 * 1024 * 1024;

/// How long a stream may take to deliver its `start` event.
pub(super) const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits for the `start` event that opens a process stream (keepalives skipped).
pub(super) async fn first_start(
    op: &str,
    fail: &Failure,
    events: &mut Streaming<envd::ProcessEvent>,
    deadline: Instant,
) -> Result<envd::StartEvent, HostCallError> {
    loop {
        let message = tokio::time::timeout_at(deadline, events.message())
            .await
            .map_err(|_| {
                HostCallError::Timeout(format!("{op}: the process did not start in time"))
            })?
            .map_err(|s| fail.error(op, &s))?;
        match message.and_then(|m| m.event) {
            Some(Event::Start(started)) => return Ok(started),
            Some(Event::Keepalive(_)) => continue,
            Some(_) => {
                return Err(HostCallError::Internal(format!(
                    "{op}: the guest agent sent an event before `start`"
                )));
            }
            None => {
                return Err(HostCallError::Unavailable(format!(
                    "{op}: the guest agent closed the process stream before `start`"
                )));
            }
        }
    }
}

/// Appends `data` to `buf` up to [`EXEC_OUTPUT_CAP`], noting a truncation.
fn append(buf: &mut BytesMut, data: &[u8], truncated: &mut bool) {
    let room = EXEC_OUTPUT_CAP.saturating_sub(buf.len());
    if data.len() > room {
        *truncated = true;
    }
    buf.extend_from_slice(&data[..data.len().min(room)]);
}

/// Collects a foreground command's output until it ends. At `deadline` the process is
/// killed and the call fails with [`HostCallError::Timeout`].
pub(super) async fn collect(
    call: &Call,
    pid: u32,
    mut events: Streaming<envd::ProcessEvent>,
    deadline: Instant,
    limit: Duration,
) -> Result<ExecOutput, HostCallError> {
    use envd::data_event::Output;
    let (mut stdout, mut stderr, mut truncated) = (BytesMut::new(), BytesMut::new(), false);
    loop {
        let Ok(message) = tokio::time::timeout_at(deadline, events.message()).await else {
            call.kill(pid).await;
            return Err(HostCallError::Timeout(format!(
                "exec: the command outlived its timeout of {}s and was killed",
                limit.as_secs()
            )));
        };
        match message
            .map_err(|s| call.fail.error("exec", &s))?
            .map(|m| m.event)
        {
            Some(Some(Event::Data(data))) => match data.output {
                Some(Output::Stdout(b) | Output::Pty(b)) => append(&mut stdout, &b, &mut truncated),
                Some(Output::Stderr(b)) => append(&mut stderr, &b, &mut truncated),
                None => {}
            },
            Some(Some(Event::End(end))) => {
                if let Some(error) = end.error.filter(|e| !e.is_empty()) {
                    return Err(HostCallError::Internal(format!(
                        "exec: guest agent: {error}"
                    )));
                }
                return Ok(ExecOutput {
                    stdout: stdout.freeze(),
                    stderr: stderr.freeze(),
                    exit_code: end.exit_code,
                    truncated,
                });
            }
            Some(_) => {}
            None => {
                return Err(HostCallError::Unavailable(
                    "exec: the guest agent closed the process stream before the process ended"
                        .into(),
                ));
            }
        }
    }
}

/// What a stream's deadline does: kill the process, then end the stream with this.
pub(super) struct Deadline<T> {
    /// When.
    pub at: Instant,
    /// The process to kill.
    pub pid: u32,
    /// The stream's last item.
    pub last: T,
}

/// How a process stream becomes a stream of domain values of type `T`.
pub(super) struct Relay<T> {
    /// The operation, for errors.
    pub op: &'static str,
    /// The first item (the converted `start` event).
    pub first: T,
    /// Converts the following events (`None`: dropped, as keepalives are).
    pub convert: fn(envd::ProcessEvent) -> Option<T>,
    /// True for the process's last event.
    pub is_last: fn(&T) -> bool,
    /// The last item when the agent closes the stream before the process's last event.
    pub closed: T,
    /// Kills the process and ends the stream at a deadline.
    pub deadline: Option<Deadline<T>>,
}

/// A process's events as domain values, as `relay` says: `first`, then the rest
/// converted, ending after the process's last event (or with `closed`, or at the
/// deadline with its `last` item after the process was killed).
pub(super) fn events<T: Send + 'static>(
    call: Call,
    events: Streaming<envd::ProcessEvent>,
    relay: Relay<T>,
) -> HostStream<T> {
    let Relay {
        op,
        first,
        convert,
        is_last,
        closed,
        deadline,
    } = relay;
    struct State<T> {
        call: Call,
        events: Streaming<envd::ProcessEvent>,
        deadline: Option<Deadline<T>>,
        closed: Option<T>,
    }
    let state = State {
        call,
        events,
        deadline,
        closed: Some(closed),
    };
    let rest = futures::stream::unfold(Some(state), move |state| async move {
        let mut state = state?;
        loop {
            let at = state.deadline.as_ref().map(|d| d.at);
            let message = match at {
                Some(at) => match tokio::time::timeout_at(at, state.events.message()).await {
                    Ok(message) => message,
                    Err(_) => {
                        let deadline = state.deadline.take()?;
                        state.call.kill(deadline.pid).await;
                        return Some((Ok(deadline.last), None));
                    }
                },
                None => state.events.message().await,
            };
            match message {
                Ok(Some(event)) => {
                    if let Some(item) = convert(event) {
                        let done = is_last(&item);
                        return Some((Ok(item), (!done).then_some(state)));
                    }
                }
                Ok(None) => return Some((Ok(state.closed.take()?), None)),
                Err(status) => return Some((Err(state.call.fail.error(op, &status)), None)),
            }
        }
    });
    futures::stream::iter([Ok(first)]).chain(rest).boxed()
}

/// `chunk` in pieces of at most [`wrenn_proto::FILE_CHUNK_SIZE`] bytes.
pub(super) fn pieces(chunk: Bytes) -> impl Iterator<Item = Bytes> {
    let size = wrenn_proto::FILE_CHUNK_SIZE;
    (0..chunk.len())
        .step_by(size)
        .map(move |start| chunk.slice(start..(start + size).min(chunk.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_capped_and_the_cap_is_reported() {
        let (mut buf, mut truncated) = (BytesMut::new(), false);
        append(&mut buf, &vec![1; EXEC_OUTPUT_CAP - 1], &mut truncated);
        assert!(!truncated);
        append(&mut buf, b"ab", &mut truncated);
        assert!(truncated);
        assert_eq!(buf.len(), EXEC_OUTPUT_CAP);
        assert_eq!(buf[EXEC_OUTPUT_CAP - 1], b'a');
    }

    #[test]
    fn chunks_are_cut_to_the_wire_limit() {
        let size = wrenn_proto::FILE_CHUNK_SIZE;
        let cut: Vec<usize> = pieces(Bytes::from(vec![0; 2 * size + 1]))
            .map(|p| p.len())
            .collect();
        assert_eq!(cut, vec![size, size, 1]);
        assert_eq!(pieces(Bytes::new()).count(), 0);
    }
}

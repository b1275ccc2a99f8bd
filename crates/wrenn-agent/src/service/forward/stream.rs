//! The two lazy stream relays of the forwarder: [`Relay`] carries a server stream from
//! envd to the caller, [`Inbound`] a client stream from the caller to envd. Both touch
//! the sandbox on every message that is [`Activity`] and neither has a task or buffer
//! of its own.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use futures::Stream;
use tokio::sync::oneshot;
use tonic::{Status, Streaming};

use wrenn_proto::envd::v1 as envd;

use super::envd_status;
use crate::manager::Sandbox;

/// Whether a streamed message counts as activity. envd's keepalives on an otherwise
/// idle process stream do not: an open but silent stream does not keep a sandbox from
/// its idle pause.
pub(super) trait Activity {
    /// True if relaying this message is activity.
    fn is_activity(&self) -> bool {
        true
    }
}

impl Activity for envd::ProcessEvent {
    fn is_activity(&self) -> bool {
        !matches!(
            self.event,
            Some(envd::process_event::Event::Keepalive(_)) | None
        )
    }
}

impl Activity for envd::ReadFileResponse {}

/// A stream of envd's messages relayed to the caller (the response type of every
/// server-streaming RPC of the forwarder).
pub type EnvdStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What a relay does besides passing messages on: watch them, and act when the caller
/// drops the stream before envd ended it.
pub(super) trait Watch<T>: Send + Unpin + 'static {
    /// Called with every message before it is passed on.
    fn seen(&mut self, _message: &T) {}

    /// Called when the caller drops the stream while envd's side is still open, with
    /// the rest of envd's stream.
    fn abandoned(&mut self, _rest: Streaming<T>) {}
}

/// No watching: the relay only passes messages on and touches the sandbox.
impl<T> Watch<T> for () {}

/// envd's server stream relayed to the caller: every message touches the sandbox and is
/// shown to the [`Watch`] (each message that is [`Activity`] touches the sandbox); errors are mapped with [`envd_status`] and end the stream.
pub(super) struct Relay<T: Activity + Send + 'static, W: Watch<T>> {
    /// envd's stream; `None` once it ended or failed.
    inner: Option<Streaming<T>>,
    sandbox: Arc<Sandbox>,
    watch: W,
}

impl<T: Activity + Send + 'static, W: Watch<T>> Relay<T, W> {
    /// A relay of `inner` for `sandbox`, boxed as the caller's response stream.
    pub(super) fn boxed(inner: Streaming<T>, sandbox: Arc<Sandbox>, watch: W) -> EnvdStream<T> {
        Box::pin(Self {
            inner: Some(inner),
            sandbox,
            watch,
        })
    }
}

impl<T: Activity + Send + 'static, W: Watch<T>> Stream for Relay<T, W> {
    type Item = Result<T, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match ready!(Pin::new(inner).poll_next(cx)) {
            Some(Ok(message)) => {
                if message.is_activity() {
                    this.sandbox.touch();
                }
                this.watch.seen(&message);
                Poll::Ready(Some(Ok(message)))
            }
            Some(Err(status)) => {
                this.inner = None;
                Poll::Ready(Some(Err(envd_status(status))))
            }
            None => {
                this.inner = None;
                Poll::Ready(None)
            }
        }
    }
}

impl<T: Activity + Send + 'static, W: Watch<T>> Drop for Relay<T, W> {
    fn drop(&mut self) {
        if let Some(rest) = self.inner.take() {
            self.watch.abandoned(rest);
        }
    }
}

/// The caller's client stream handed to envd: every message touches the sandbox. When
/// the caller's stream fails, its status goes to `failed` and the stream stays pending,
/// so envd never sees a clean end of a broken upload; the forwarder then drops the envd
/// call.
pub(super) struct Inbound<T> {
    stream: Streaming<T>,
    sandbox: Arc<Sandbox>,
    /// `None` once the caller's stream failed.
    failed: Option<oneshot::Sender<Status>>,
}

impl<T> Inbound<T> {
    pub(super) fn new(
        stream: Streaming<T>,
        sandbox: Arc<Sandbox>,
        failed: oneshot::Sender<Status>,
    ) -> Self {
        Self {
            stream,
            sandbox,
            failed: Some(failed),
        }
    }
}

impl<T> Stream for Inbound<T> {
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let this = self.get_mut();
        if this.failed.is_none() {
            // The call is being abandoned; never end it cleanly.
            return Poll::Pending;
        }
        match ready!(Pin::new(&mut this.stream).poll_next(cx)) {
            Some(Ok(message)) => {
                this.sandbox.touch();
                Poll::Ready(Some(message))
            }
            Some(Err(status)) => {
                if let Some(failed) = this.failed.take() {
                    let _ = failed.send(status);
                }
                Poll::Pending
            }
            None => Poll::Ready(None),
        }
    }
}

//! `Filesystem.WriteFile` from a stream of chunks.

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use wrenn_proto::domain::data_plane as convert;
use wrenn_proto::envd::v1 as envd;

use super::Call;
use super::process::pieces;

/// A task aborted when its handle is dropped.
pub(super) struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    /// The task's result.
    pub(super) async fn join(mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The result of a `WriteFile` call.
type Upload = Result<tonic::Response<envd::WriteFileResponse>, tonic::Status>;

/// Starts a `WriteFile` of `path` from `chunks`. The messages cross a channel fed by a
/// task of its own (tonic's client-streaming future over a boxed stream is not provably
/// `Send` inside an `async_trait` method); both tasks end when their handles are
/// dropped: a write given up before its last chunk resets the stream and the guest
/// agent stops writing.
pub(super) fn start(
    call: &Call,
    path: String,
    chunks: BoxStream<'static, Bytes>,
) -> (AbortOnDrop<()>, AbortOnDrop<Upload>) {
    let (tx, rx) = tokio::sync::mpsc::channel::<envd::WriteFileRequest>(16);
    let feed = AbortOnDrop(tokio::spawn(async move {
        let mut requests = futures::stream::iter([convert::write_header(path)]).chain(
            chunks.flat_map(|chunk| futures::stream::iter(pieces(chunk).map(convert::write_data))),
        );
        while let Some(message) = requests.next().await {
            if tx.send(message).await.is_err() {
                break;
            }
        }
    }));
    let requests =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let request = call.to_capsule(requests);
    let mut files = call.files();
    let upload = AbortOnDrop(tokio::spawn(async move { files.write_file(request).await }));
    (feed, upload)
}

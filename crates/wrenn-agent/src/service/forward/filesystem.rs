//! `envd.v1.Filesystem` forwarded.

use tonic::{Request, Response, Status, Streaming};
use wrenn_proto::envd::v1 as envd;
use wrenn_proto::envd::v1::filesystem_server::Filesystem;

use super::stream::Relay;
use super::{EnvdStream, Forwarder};

type Rpc<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl Filesystem for Forwarder {
    async fn stat(&self, request: Request<envd::StatRequest>) -> Rpc<envd::StatResponse> {
        self.unary("Filesystem.Stat", request, |mut e, r| async move {
            e.fs.stat(r).await
        })
        .await
    }

    async fn list_dir(&self, request: Request<envd::ListDirRequest>) -> Rpc<envd::ListDirResponse> {
        self.unary("Filesystem.ListDir", request, |mut e, r| async move {
            e.fs.list_dir(r).await
        })
        .await
    }

    async fn make_dir(&self, request: Request<envd::MakeDirRequest>) -> Rpc<envd::MakeDirResponse> {
        self.unary("Filesystem.MakeDir", request, |mut e, r| async move {
            e.fs.make_dir(r).await
        })
        .await
    }

    async fn r#move(&self, request: Request<envd::MoveRequest>) -> Rpc<envd::MoveResponse> {
        self.unary("Filesystem.Move", request, |mut e, r| async move {
            e.fs.r#move(r).await
        })
        .await
    }

    async fn remove(&self, request: Request<envd::RemoveRequest>) -> Rpc<envd::RemoveResponse> {
        self.unary("Filesystem.Remove", request, |mut e, r| async move {
            e.fs.remove(r).await
        })
        .await
    }

    type ReadFileStream = EnvdStream<envd::ReadFileResponse>;

    /// Relays envd's chunks; each touches the sandbox.
    async fn read_file(
        &self,
        request: Request<envd::ReadFileRequest>,
    ) -> Rpc<Self::ReadFileStream> {
        let read = self
            .forward("Filesystem.ReadFile", request, |mut e, r| async move {
                e.fs.read_file(r).await
            })
            .await?;
        Ok(Response::new(Relay::boxed(read.answer, read.sandbox, ())))
    }

    /// Hands the caller's chunks to envd as they arrive; each touches the sandbox. A
    /// failed upload stream aborts envd's call rather than ending it cleanly.
    async fn write_file(
        &self,
        request: Request<Streaming<envd::WriteFileRequest>>,
    ) -> Rpc<envd::WriteFileResponse> {
        self.client_stream("Filesystem.WriteFile", request, |mut e, r| async move {
            e.fs.write_file(r).await
        })
        .await
    }
}

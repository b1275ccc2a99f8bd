//! The `envd.v1.Filesystem` service.
//!
//! - [`entry`] — `EntryInfo` from `lstat` (type, mode, `ls -l` permissions, owner names,
//!   symlink target).
//! - [`dir`] — listing with depth, directory creation with parents, removal.
//! - [`rename`] — moves, with a copy fallback across file systems.
//! - [`read`] and [`write`] — files streamed in 64 KiB chunks; writes land atomically.
//!
//! Paths resolve with [`crate::paths::resolve`] against the home of the request's user
//! (or of the default user). All blocking work runs on tokio's blocking pool.

pub(crate) mod dir;
pub(crate) mod entry;
pub(crate) mod read;
pub(crate) mod rename;
pub(crate) mod write;

use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::{Request, Response, Status, Streaming};
use wrenn_proto::envd::v1::{
    EntryInfo, ListDirRequest, ListDirResponse, MakeDirRequest, MakeDirResponse, MoveRequest,
    MoveResponse, ReadFileRequest, RemoveRequest, RemoveResponse, StatRequest, StatResponse,
    WriteFileRequest, WriteFileResponse, filesystem_server,
};

use crate::error::{EnvdError, Result};
use crate::paths;
use crate::state::Shared;
use crate::users::Names;

/// Owner (uid, gid) given to created entries; `None` = leave as created.
pub(crate) type Owner = Option<(u32, u32)>;

/// Changes the owner of `path` (not following a symlink). Failing is not an error: an
/// unprivileged envd cannot give files away, and the content is still written.
pub(crate) fn chown_best_effort(path: &Path, owner: Owner) {
    if let Some((uid, gid)) = owner {
        if let Err(err) = std::os::unix::fs::lchown(path, Some(uid), Some(gid)) {
            tracing::debug!(path = %path.display(), %err, "cannot change owner");
        }
    }
}

/// A hidden, practically unique file name starting with `prefix`.
pub(crate) fn temp_name(prefix: &str) -> String {
    let random = RandomState::new().hash_one(std::time::SystemTime::now());
    format!("{prefix}-{random:016x}")
}

/// The `Filesystem` service.
#[derive(Debug, Clone)]
pub(crate) struct FilesystemService {
    shared: Arc<Shared>,
}

impl FilesystemService {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Resolves `path` against the home of `user` (or of the default user).
    fn resolve(&self, path: &str, user: Option<&str>) -> Result<PathBuf> {
        let user = self.shared.user(user)?;
        paths::resolve(path, &user.home)
    }

    fn owner(&self, user: Option<&str>) -> Result<Owner> {
        let user = self.shared.user(user)?;
        Ok(Some((user.uid, user.gid)))
    }
}

/// Runs blocking file-system work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work).await?
}

fn describe(path: &Path) -> Result<EntryInfo> {
    entry::entry_info(path, &Names::load()).map_err(EnvdError::io(path.display()))
}

#[tonic::async_trait]
impl filesystem_server::Filesystem for FilesystemService {
    async fn stat(&self, request: Request<StatRequest>) -> Result<Response<StatResponse>, Status> {
        let path = self.resolve(&request.into_inner().path, None)?;
        let entry = blocking(move || describe(&path)).await?;
        Ok(Response::new(StatResponse { entry: Some(entry) }))
    }

    async fn list_dir(
        &self,
        request: Request<ListDirRequest>,
    ) -> Result<Response<ListDirResponse>, Status> {
        let request = request.into_inner();
        let path = self.resolve(&request.path, None)?;
        let entries = blocking(move || dir::list(&path, request.depth, &Names::load())).await?;
        Ok(Response::new(ListDirResponse { entries }))
    }

    async fn make_dir(
        &self,
        request: Request<MakeDirRequest>,
    ) -> Result<Response<MakeDirResponse>, Status> {
        let request = request.into_inner();
        let path = self.resolve(&request.path, request.user.as_deref())?;
        let owner = self.owner(request.user.as_deref())?;
        let entry = blocking(move || {
            dir::make_dir(&path, owner)?;
            describe(&path)
        })
        .await?;
        Ok(Response::new(MakeDirResponse { entry: Some(entry) }))
    }

    async fn r#move(
        &self,
        request: Request<MoveRequest>,
    ) -> Result<Response<MoveResponse>, Status> {
        let request = request.into_inner();
        let source = self.resolve(&request.source, None)?;
        let destination = self.resolve(&request.destination, None)?;
        let owner = self.owner(None)?;
        let entry = blocking(move || {
            rename::move_path(&source, &destination, owner)?;
            describe(&destination)
        })
        .await?;
        Ok(Response::new(MoveResponse { entry: Some(entry) }))
    }

    async fn remove(
        &self,
        request: Request<RemoveRequest>,
    ) -> Result<Response<RemoveResponse>, Status> {
        let path = self.resolve(&request.into_inner().path, None)?;
        blocking(move || dir::remove(&path)).await?;
        Ok(Response::new(RemoveResponse {}))
    }

    type ReadFileStream = read::ReadStream;

    async fn read_file(
        &self,
        request: Request<ReadFileRequest>,
    ) -> Result<Response<Self::ReadFileStream>, Status> {
        let path = self.resolve(&request.into_inner().path, None)?;
        let (file, size) = blocking(move || read::open(&path)).await?;
        Ok(Response::new(read::stream(file, size)))
    }

    async fn write_file(
        &self,
        request: Request<Streaming<WriteFileRequest>>,
    ) -> Result<Response<WriteFileResponse>, Status> {
        let path = write::receive(&self.shared, request.into_inner()).await?;
        let entry = blocking(move || describe(&path)).await?;
        Ok(Response::new(WriteFileResponse { entry: Some(entry) }))
    }
}

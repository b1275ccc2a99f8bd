//! `envd.v1.Filesystem` of the fake agent, over real files under the sandbox's tree.
//!
//! As envd: entries come from `lstat` (symlinks are reported, never followed); listings
//! are parents before children, siblings by name; `MakeDir` of an existing path is
//! ALREADY_EXISTS; files are streamed in chunks of at most `FILE_CHUNK_SIZE`, `ReadFile`'s
//! first message carrying the size; a `WriteFile` lands atomically (a temporary file
//! renamed over the target at the end), so a cancelled upload leaves nothing behind.

use std::fs::{self, Metadata};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use wrenn_proto::FILE_CHUNK_SIZE;
use wrenn_proto::envd::v1::filesystem_server::Filesystem;
use wrenn_proto::envd::v1::{
    EntryInfo, FileType, ListDirRequest, ListDirResponse, MakeDirRequest, MakeDirResponse,
    MoveRequest, MoveResponse, ReadFileRequest, ReadFileResponse, RemoveRequest, RemoveResponse,
    StatRequest, StatResponse, WriteFileRequest, WriteFileResponse, write_file_request,
};

use super::{FakeAgent, io_status};

impl FakeAgent {
    /// The entry of `host` (not following a final symlink).
    fn entry(&self, sandbox: &str, host: &Path) -> Result<EntryInfo, Status> {
        let meta = fs::symlink_metadata(host)
            .map_err(|e| io_status(&e, &self.sandbox_path(sandbox, host)))?;
        Ok(self.entry_from(sandbox, host, &meta))
    }

    fn entry_from(&self, sandbox: &str, host: &Path, meta: &Metadata) -> EntryInfo {
        let ft = meta.file_type();
        let (kind, ch) = if ft.is_symlink() {
            (FileType::Symlink, 'l')
        } else if ft.is_dir() {
            (FileType::Directory, 'd')
        } else if ft.is_file() {
            (FileType::File, '-')
        } else {
            (FileType::Other, 'p')
        };
        let mode = meta.permissions().mode() & 0o7777;
        let mut permissions = String::from(ch);
        for shift in [6u32, 3, 0] {
            let bits = (mode >> shift) & 7;
            permissions.push(if bits & 4 != 0 { 'r' } else { '-' });
            permissions.push(if bits & 2 != 0 { 'w' } else { '-' });
            permissions.push(if bits & 1 != 0 { 'x' } else { '-' });
        }
        EntryInfo {
            name: host
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            r#type: kind.into(),
            path: self.sandbox_path(sandbox, host),
            size: meta.len(),
            mode,
            permissions,
            owner: "root".into(),
            group: "root".into(),
            modified_time: meta.modified().ok().map(Into::into),
            symlink_target: ft
                .is_symlink()
                .then(|| fs::read_link(host).ok())
                .flatten()
                .map(|t| t.to_string_lossy().into_owned()),
        }
    }

    /// Appends the entries of `dir`, `levels` deep, parents before children.
    fn walk(&self, sandbox: &str, dir: &Path, levels: u32, out: &mut Vec<EntryInfo>) {
        let Ok(read) = fs::read_dir(dir) else {
            return;
        };
        let mut children: Vec<_> = read.filter_map(Result::ok).collect();
        children.sort_by_key(|c| c.file_name());
        for child in children {
            let path = child.path();
            // `DirEntry::metadata` does not follow symlinks.
            let Ok(meta) = child.metadata() else {
                continue;
            };
            out.push(self.entry_from(sandbox, &path, &meta));
            if meta.is_dir() && levels > 1 {
                self.walk(sandbox, &path, levels - 1, out);
            }
        }
    }

    /// Creates the missing directories of `dir` (a parent that is not a directory is
    /// INVALID_ARGUMENT).
    fn make_dirs(&self, sandbox: &str, dir: &Path) -> Result<(), Status> {
        let mut existing = dir;
        while fs::symlink_metadata(existing).is_err() {
            match existing.parent() {
                Some(parent) => existing = parent,
                None => break,
            }
        }
        if !existing.is_dir() {
            return Err(Status::invalid_argument(format!(
                "{} is not a directory",
                self.sandbox_path(sandbox, existing)
            )));
        }
        fs::create_dir_all(dir).map_err(|e| io_status(&e, &self.sandbox_path(sandbox, dir)))
    }
}

/// A temporary upload file, removed unless it was renamed into place.
struct Upload {
    path: PathBuf,
    done: bool,
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Reads until `buf` is full or the file ends.
fn read_full(file: &mut fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// `envd.v1.Filesystem` of a [`FakeAgent`].
#[derive(Clone)]
pub(super) struct FilesService(pub(super) Arc<FakeAgent>);

#[tonic::async_trait]
impl Filesystem for FilesService {
    async fn stat(&self, r: Request<StatRequest>) -> Result<Response<StatResponse>, Status> {
        let sandbox = self.0.route("Filesystem.Stat", r.metadata())?;
        let host = self.0.host_path(&sandbox, &r.into_inner().path)?;
        Ok(Response::new(StatResponse {
            entry: Some(self.0.entry(&sandbox, &host)?),
        }))
    }

    async fn list_dir(
        &self,
        r: Request<ListDirRequest>,
    ) -> Result<Response<ListDirResponse>, Status> {
        let sandbox = self.0.route("Filesystem.ListDir", r.metadata())?;
        let r = r.into_inner();
        let host = self.0.host_path(&sandbox, &r.path)?;
        let meta = fs::metadata(&host).map_err(|e| io_status(&e, &r.path))?;
        if !meta.is_dir() {
            return Err(Status::invalid_argument(format!(
                "{} is not a directory",
                r.path
            )));
        }
        let mut entries = Vec::new();
        self.0.walk(&sandbox, &host, r.depth.max(1), &mut entries);
        Ok(Response::new(ListDirResponse { entries }))
    }

    async fn make_dir(
        &self,
        r: Request<MakeDirRequest>,
    ) -> Result<Response<MakeDirResponse>, Status> {
        let sandbox = self.0.route("Filesystem.MakeDir", r.metadata())?;
        let r = r.into_inner();
        let host = self.0.host_path(&sandbox, &r.path)?;
        if fs::symlink_metadata(&host).is_ok() {
            return Err(Status::already_exists(format!("{} already exists", r.path)));
        }
        self.0.make_dirs(&sandbox, &host)?;
        Ok(Response::new(MakeDirResponse {
            entry: Some(self.0.entry(&sandbox, &host)?),
        }))
    }

    async fn r#move(&self, r: Request<MoveRequest>) -> Result<Response<MoveResponse>, Status> {
        let sandbox = self.0.route("Filesystem.Move", r.metadata())?;
        let r = r.into_inner();
        let source = self.0.host_path(&sandbox, &r.source)?;
        let destination = self.0.host_path(&sandbox, &r.destination)?;
        fs::symlink_metadata(&source).map_err(|e| io_status(&e, &r.source))?;
        if destination.is_dir() && fs::read_dir(&destination).is_ok_and(|mut d| d.next().is_some())
        {
            return Err(Status::already_exists(format!(
                "{} is a non-empty directory",
                r.destination
            )));
        }
        if let Some(parent) = destination.parent() {
            self.0.make_dirs(&sandbox, parent)?;
        }
        fs::rename(&source, &destination).map_err(|e| io_status(&e, &r.destination))?;
        Ok(Response::new(MoveResponse {
            entry: Some(self.0.entry(&sandbox, &destination)?),
        }))
    }

    async fn remove(&self, r: Request<RemoveRequest>) -> Result<Response<RemoveResponse>, Status> {
        let sandbox = self.0.route("Filesystem.Remove", r.metadata())?;
        let r = r.into_inner();
        let host = self.0.host_path(&sandbox, &r.path)?;
        if self.0.sandbox_path(&sandbox, &host) == "/" {
            return Err(Status::invalid_argument("refusing to remove /"));
        }
        let meta = fs::symlink_metadata(&host).map_err(|e| io_status(&e, &r.path))?;
        if meta.is_dir() {
            fs::remove_dir_all(&host)
        } else {
            fs::remove_file(&host)
        }
        .map_err(|e| io_status(&e, &r.path))?;
        Ok(Response::new(RemoveResponse {}))
    }

    type ReadFileStream = ReceiverStream<Result<ReadFileResponse, Status>>;

    async fn read_file(
        &self,
        r: Request<ReadFileRequest>,
    ) -> Result<Response<Self::ReadFileStream>, Status> {
        let sandbox = self.0.route("Filesystem.ReadFile", r.metadata())?;
        let path = r.into_inner().path;
        let host = self.0.host_path(&sandbox, &path)?;
        let meta = fs::metadata(&host).map_err(|e| io_status(&e, &path))?;
        if !meta.is_file() {
            return Err(Status::invalid_argument(format!(
                "{path} is not a regular file"
            )));
        }
        let mut file = fs::File::open(&host).map_err(|e| io_status(&e, &path))?;
        let size = meta.len();
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let mut first = true;
            loop {
                let mut buf = vec![0u8; FILE_CHUNK_SIZE];
                let n = match read_full(&mut file, &mut buf) {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(io_status(&e, &path)));
                        return;
                    }
                };
                if n == 0 && !first {
                    return;
                }
                let full = n == buf.len();
                buf.truncate(n);
                let message = ReadFileResponse {
                    data: buf.into(),
                    total_size: first.then_some(size),
                };
                first = false;
                if tx.blocking_send(Ok(message)).is_err() || !full {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn write_file(
        &self,
        r: Request<Streaming<WriteFileRequest>>,
    ) -> Result<Response<WriteFileResponse>, Status> {
        let sandbox = self.0.route("Filesystem.WriteFile", r.metadata())?;
        let mut messages = r.into_inner();
        let header = match messages.message().await?.and_then(|m| m.msg) {
            Some(write_file_request::Msg::Header(header)) => header,
            _ => {
                return Err(Status::invalid_argument(
                    "the first WriteFile message must be the header",
                ));
            }
        };
        let path = header.path;
        let target = self.0.host_path(&sandbox, &path)?;
        let existing = fs::metadata(&target).ok();
        if let Some(meta) = &existing
            && !meta.is_file()
        {
            return Err(Status::invalid_argument(if meta.is_dir() {
                format!("{path} is a directory")
            } else {
                format!("{path} is not a regular file")
            }));
        }
        let parent = target
            .parent()
            .ok_or_else(|| Status::invalid_argument("cannot write to /"))?
            .to_path_buf();
        self.0.make_dirs(&sandbox, &parent)?;
        let mut upload = Upload {
            path: parent.join(format!(".wrenn-upload-{:016x}", rand::random::<u64>())),
            done: false,
        };
        let mut file = tokio::fs::File::create(&upload.path)
            .await
            .map_err(|e| io_status(&e, &path))?;
        if header.append && existing.is_some() {
            let mut current = tokio::fs::File::open(&target)
                .await
                .map_err(|e| io_status(&e, &path))?;
            tokio::io::copy(&mut current, &mut file)
                .await
                .map_err(|e| io_status(&e, &path))?;
        }
        loop {
            let message = match messages.message().await {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(status) => {
                    return Err(Status::invalid_argument(format!(
                        "upload interrupted: {}",
                        status.message()
                    )));
                }
            };
            let data = match message.msg {
                Some(write_file_request::Msg::Data(data)) => data,
                Some(write_file_request::Msg::Header(_)) => {
                    return Err(Status::invalid_argument(
                        "a WriteFile stream has only one header",
                    ));
                }
                None => return Err(Status::invalid_argument("empty WriteFile message")),
            };
            if data.len() > FILE_CHUNK_SIZE {
                return Err(Status::invalid_argument(format!(
                    "chunk of {} bytes exceeds the {FILE_CHUNK_SIZE}-byte limit",
                    data.len()
                )));
            }
            {
                let mut max = self.0.max_chunk.lock().unwrap();
                *max = (*max).max(data.len());
            }
            file.write_all(&data)
                .await
                .map_err(|e| io_status(&e, &path))?;
        }
        file.flush().await.map_err(|e| io_status(&e, &path))?;
        drop(file);
        let permissions = match &existing {
            Some(meta) => meta.permissions(),
            None => fs::Permissions::from_mode(header.mode.unwrap_or(0o644) & 0o7777),
        };
        fs::set_permissions(&upload.path, permissions).map_err(|e| io_status(&e, &path))?;
        fs::rename(&upload.path, &target).map_err(|e| io_status(&e, &path))?;
        upload.done = true;
        Ok(Response::new(WriteFileResponse {
            entry: Some(self.0.entry(&sandbox, &target)?),
        }))
    }
}

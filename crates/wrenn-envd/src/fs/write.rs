//! Receiving a file from a client stream.
//!
//! The content goes to a temporary file in the destination's directory, which is renamed
//! over the destination only once the stream ended cleanly. A cancelled or failed upload
//! therefore never leaves a partial file at the path (the temporary file is deleted). An
//! append copies the current content into the temporary file first, so appends are
//! all-or-nothing too. Chunks travel from the gRPC stream to a blocking writer through a
//! small channel, so memory stays bounded whatever the file size.

use std::fs::{self, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

use tokio::sync::mpsc;
use tonic::Streaming;
use wrenn_proto::FILE_CHUNK_SIZE;
use wrenn_proto::envd::v1::{WriteFileHeader, WriteFileRequest, write_file_request};

use super::dir::create_dirs;
use super::entry::is_special;
use super::{Owner, chown_best_effort};
use crate::error::{EnvdError, Result};
use crate::paths;
use crate::state::Shared;

/// Chunks buffered between the gRPC stream and the writer.
const CHANNEL_CHUNKS: usize = 8;

enum Piece {
    Data(tokio_util::bytes::Bytes),
    Commit,
}

/// Receives a WriteFile stream; returns the path written.
pub(crate) async fn receive(
    shared: &Shared,
    mut messages: Streaming<WriteFileRequest>,
) -> Result<PathBuf> {
    let first = messages.message().await.map_err(|status| {
        EnvdError::invalid(format!("reading the upload: {}", status.message()))
    })?;
    let header = match first.and_then(|m| m.msg) {
        Some(write_file_request::Msg::Header(header)) => header,
        _ => {
            return Err(EnvdError::invalid(
                "the first WriteFile message must be the header",
            ));
        }
    };
    let WriteFileHeader {
        path,
        mode,
        user,
        append,
    } = header;
    let user = shared.user(user.as_deref())?;
    let path = paths::resolve(&path, &user.home)?;
    let mode = mode.unwrap_or(0o644) & 0o7777;
    let owner = Some((user.uid, user.gid));

    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    let writer = tokio::task::spawn_blocking(move || write_blocking(path, mode, owner, append, rx));
    loop {
        let message = match messages.message().await {
            Ok(Some(message)) => message,
            Ok(None) => {
                let _ = tx.send(Piece::Commit).await;
                break;
            }
            Err(status) => {
                return Err(EnvdError::invalid(format!(
                    "upload interrupted: {}",
                    status.message()
                )));
            }
        };
        let data = match message.msg {
            Some(write_file_request::Msg::Data(data)) => data,
            Some(write_file_request::Msg::Header(_)) => {
                return Err(EnvdError::invalid("a WriteFile stream has only one header"));
            }
            None => return Err(EnvdError::invalid("empty WriteFile message")),
        };
        if data.len() > FILE_CHUNK_SIZE {
            return Err(EnvdError::invalid(format!(
                "chunk of {} bytes exceeds the {FILE_CHUNK_SIZE}-byte limit",
                data.len()
            )));
        }
        if !data.is_empty() && tx.send(Piece::Data(data)).await.is_err() {
            break; // The writer failed; its error is returned below.
        }
    }
    drop(tx);
    writer.await?
}

fn write_blocking(
    path: PathBuf,
    mode: u32,
    owner: Owner,
    append: bool,
    mut pieces: mpsc::Receiver<Piece>,
) -> Result<PathBuf> {
    // Write through a final symlink to its target, as open(2) would.
    let target = match fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_symlink() => fs::canonicalize(&path).unwrap_or(path),
        _ => path,
    };
    let existing = fs::metadata(&target).ok();
    if let Some(meta) = &existing {
        if meta.is_dir() {
            return Err(EnvdError::invalid(format!(
                "{} is a directory",
                target.display()
            )));
        }
        if is_special(&meta.file_type()) {
            return Err(EnvdError::invalid(format!(
                "{} is not a regular file",
                target.display()
            )));
        }
    }
    let parent = target
        .parent()
        .ok_or_else(|| EnvdError::invalid("cannot write to /"))?
        .to_path_buf();
    create_dirs(&parent, owner, false)?;
    let context = |what: &str| format!("{what} {}", target.display());
    let mut temp = tempfile::Builder::new()
        .prefix(".wrenn-upload-")
        .tempfile_in(&parent)
        .map_err(EnvdError::io(context("creating a temporary file for")))?;
    if append && existing.is_some() {
        let mut current = fs::File::open(&target).map_err(EnvdError::io(context("reading")))?;
        io::copy(&mut current, temp.as_file_mut()).map_err(EnvdError::io(context("copying")))?;
    }
    let (permissions, file_owner) = match &existing {
        Some(meta) => (meta.permissions(), Some((meta.uid(), meta.gid()))),
        None => (Permissions::from_mode(mode), owner),
    };
    fs::set_permissions(temp.path(), permissions)
        .map_err(EnvdError::io(context("setting the mode of")))?;
    chown_best_effort(temp.path(), file_owner);

    loop {
        match pieces.blocking_recv() {
            Some(Piece::Data(data)) => temp
                .as_file_mut()
                .write_all(&data)
                .map_err(EnvdError::io(context("writing")))?,
            Some(Piece::Commit) => break,
            // The stream failed or was cancelled: `temp` is deleted on drop.
            None => return Err(EnvdError::invalid("upload cancelled")),
        }
    }
    temp.persist(&target)
        .map_err(|err| EnvdError::from_io(context("replacing"), &err.error))?;
    Ok(target)
}

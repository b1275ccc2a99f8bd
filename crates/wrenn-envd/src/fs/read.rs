//! Streaming a file out in chunks of at most [`FILE_CHUNK_SIZE`] bytes.
//!
//! A blocking task reads one chunk at a time and hands it to a channel of four chunks;
//! the gRPC stream pulls from the channel. A slow client therefore stalls the reader,
//! and at most a few chunks of any file are ever in memory.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use wrenn_proto::FILE_CHUNK_SIZE;
use wrenn_proto::envd::v1::ReadFileResponse;

use crate::error::{EnvdError, Result};

/// Chunks buffered between the reading task and the gRPC stream.
const CHANNEL_CHUNKS: usize = 4;

/// The stream type of ReadFile.
pub type ReadStream = ReceiverStream<Result<ReadFileResponse, Status>>;

/// Opens a regular file for streaming; returns it with its size. Blocking.
pub(crate) fn open(path: &Path) -> Result<(File, u64)> {
    // Check before opening: opening a FIFO for reading would block until a writer
    // appears.
    let metadata = std::fs::metadata(path).map_err(EnvdError::io(path.display()))?;
    if !metadata.is_file() {
        return Err(EnvdError::invalid(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let file = File::open(path).map_err(EnvdError::io(path.display()))?;
    let metadata = file.metadata().map_err(EnvdError::io(path.display()))?;
    if !metadata.is_file() {
        return Err(EnvdError::invalid(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    Ok((file, metadata.len()))
}

/// Streams `file`: the first message carries `size`; an empty file yields one empty
/// message.
pub(crate) fn stream(mut file: File, size: u64) -> ReadStream {
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    tokio::task::spawn_blocking(move || {
        let mut first = true;
        loop {
            // A buffer of its own per chunk, handed to the message without a copy.
            let mut buf = vec![0u8; FILE_CHUNK_SIZE];
            let n = match read_full(&mut file, &mut buf) {
                Ok(n) => n,
                Err(err) => {
                    let _ = tx.blocking_send(Err(EnvdError::from_io("reading", &err).into()));
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
                return; // The client went away, or this was the last chunk.
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Reads until `buf` is full or the file ends.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

//! Non-blocking reads and writes on raw pipe and pseudo-terminal descriptors, driven by
//! tokio's reactor (through its pipe types, which accept any pollable descriptor).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use tokio::net::unix::pipe;
use tokio::sync::Mutex;

/// The reading side: a stdout/stderr pipe or a PTY master.
#[derive(Debug)]
pub(crate) struct Reader(pipe::Receiver);

impl Reader {
    /// Makes `fd` non-blocking and registers it with the reactor.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        rustix::io::ioctl_fionbio(&fd, true)?;
        Ok(Self(pipe::Receiver::from_owned_fd_unchecked(fd)?))
    }

    /// Reads what is available (0 = end of file). Cancel-safe.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            self.0.readable().await?;
            match self.0.try_read(buf) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                result => return result,
            }
        }
    }
}

/// The writing side: a stdin pipe or a PTY master.
#[derive(Debug)]
pub(crate) struct Writer {
    tx: pipe::Sender,
    serialise: Mutex<()>,
}

impl Writer {
    /// Makes `fd` non-blocking and registers it with the reactor.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        rustix::io::ioctl_fionbio(&fd, true)?;
        Ok(Self {
            tx: pipe::Sender::from_owned_fd_unchecked(fd)?,
            serialise: Mutex::new(()),
        })
    }

    /// The descriptor, for ioctls.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.tx.as_fd()
    }

    /// Writes all of `data`; concurrent writers do not interleave.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        let _serialised = self.serialise.lock().await;
        while !data.is_empty() {
            self.tx.writable().await?;
            match self.tx.try_write(data) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => data = &data[n..],
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }
}

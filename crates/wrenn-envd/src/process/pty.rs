//! Pseudo-terminals: allocation and resizing.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{Mode, OFlags};
use rustix::pty::OpenptFlags;
use rustix::termios::Winsize;

/// A terminal size in columns and rows (both non-zero, validated by the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Size {
    /// Width.
    pub cols: u16,
    /// Height.
    pub rows: u16,
}

impl Size {
    fn winsize(self) -> Winsize {
        Winsize {
            ws_row: self.rows,
            ws_col: self.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        }
    }
}

/// A new pseudo-terminal pair of the given size: `(master, slave)`. Both descriptors
/// are close-on-exec; the slave is opened without becoming envd's controlling terminal.
pub(crate) fn open(size: Size) -> io::Result<(OwnedFd, OwnedFd)> {
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let name = rustix::pty::ptsname(&master, Vec::new())?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    resize(&master, size)?;
    Ok((master, slave))
}

/// Sets the terminal size (`TIOCSWINSZ`); the kernel sends `SIGWINCH` to the terminal's
/// foreground process group.
pub(crate) fn resize(master: impl AsFd, size: Size) -> io::Result<()> {
    rustix::termios::tcsetwinsize(master, size.winsize())?;
    Ok(())
}

//! Moving entries, with a copy fallback across file systems.
//!
//! `rename(2)` fails with `EXDEV` between file systems, and also on overlayfs for
//! directories that come from the lower layer (the process runtime's root file system).
//! Then the source is copied next to the destination under a temporary name, renamed
//! into place (atomic on the destination's file system), and removed.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::io::Errno;

use super::dir::{create_dirs, remove};
use super::entry::is_special;
use super::{Owner, chown_best_effort, temp_name};
use crate::error::{EnvdError, Result};

/// Moves `source` to `destination`, creating the destination's parents.
pub(crate) fn move_path(source: &Path, destination: &Path, owner: Owner) -> Result<()> {
    let source_meta = fs::symlink_metadata(source)
        .map_err(EnvdError::io(format_args!("source {}", source.display())))?;
    if source == destination {
        return Ok(());
    }
    if destination.starts_with(source) {
        return Err(EnvdError::invalid(format!(
            "cannot move {} into itself",
            source.display()
        )));
    }
    if let Some(parent) = destination.parent() {
        create_dirs(parent, owner, false)?;
    }
    match fs::rename(source, destination) {
        Ok(()) => Ok(()),
        Err(err) if err.raw_os_error() == Some(Errno::XDEV.raw_os_error()) => {
            copy_into_place(source, &source_meta, destination)?;
            remove(source)
        }
        Err(err) => Err(rename_error(destination, &err)),
    }
}

fn rename_error(destination: &Path, err: &io::Error) -> EnvdError {
    let errno = err.raw_os_error().map(Errno::from_raw_os_error);
    match errno {
        Some(Errno::NOTEMPTY) | Some(Errno::EXIST) => EnvdError::AlreadyExists(format!(
            "destination {} is a non-empty directory",
            destination.display()
        )),
        Some(Errno::ISDIR) => EnvdError::invalid(format!(
            "destination {} is a directory",
            destination.display()
        )),
        Some(Errno::NOTDIR) => EnvdError::invalid(format!(
            "destination {} is not a directory",
            destination.display()
        )),
        _ => EnvdError::from_io(format_args!("moving to {}", destination.display()), err),
    }
}

fn copy_into_place(source: &Path, source_meta: &fs::Metadata, destination: &Path) -> Result<()> {
    if let Ok(existing) = fs::symlink_metadata(destination) {
        match (source_meta.is_dir(), existing.is_dir()) {
            (_, true)
                if fs::read_dir(destination)
                    .map(|mut d| d.next().is_some())
                    .unwrap_or(true) =>
            {
                return Err(rename_error(
                    destination,
                    &io::Error::from_raw_os_error(Errno::NOTEMPTY.raw_os_error()),
                ));
            }
            (false, true) => {
                return Err(rename_error(
                    destination,
                    &io::Error::from_raw_os_error(Errno::ISDIR.raw_os_error()),
                ));
            }
            (true, false) => {
                return Err(rename_error(
                    destination,
                    &io::Error::from_raw_os_error(Errno::NOTDIR.raw_os_error()),
                ));
            }
            _ => {}
        }
    }
    let parent = destination.parent().unwrap_or(Path::new("/"));
    let staging: PathBuf = parent.join(temp_name(".wrenn-move"));
    let copied = copy_tree(source, &staging).and_then(|()| fs::rename(&staging, destination));
    if let Err(err) = copied {
        let _ = if staging.is_dir() {
            fs::remove_dir_all(&staging)
        } else {
            fs::remove_file(&staging)
        };
        return Err(EnvdError::from_io(
            format_args!("copying {} to {}", source.display(), destination.display()),
            &err,
        ));
    }
    Ok(())
}

/// Copies a file, symlink or directory tree, keeping modes, owners and file mtimes.
fn copy_tree(source: &Path, target: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(source)?;
    let kind = meta.file_type();
    let owner = Some((meta.uid(), meta.gid()));
    if kind.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(source)?, target)?;
    } else if kind.is_dir() {
        fs::create_dir(target)?;
        for child in fs::read_dir(source)? {
            let child = child?;
            copy_tree(&child.path(), &target.join(child.file_name()))?;
        }
        fs::set_permissions(target, meta.permissions())?;
    } else if is_special(&kind) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "cannot copy special file {} across file systems",
                source.display()
            ),
        ));
    } else {
        fs::copy(source, target)?;
        if let Ok(modified) = meta.modified() {
            let _ = fs::File::options()
                .write(true)
                .open(target)
                .and_then(|f| f.set_modified(modified));
        }
    }
    chown_best_effort(target, owner);
    Ok(())
}

//! Directories: listing, creation (with parents), and removal.

use std::fs;
use std::io;
use std::path::Path;

use wrenn_proto::envd::v1::EntryInfo;

use super::entry::from_metadata;
use super::{Owner, chown_best_effort};
use crate::error::{EnvdError, Result};
use crate::users::Names;

/// Lists `dir` `depth` levels deep (0 and 1 = children only), parents before their
/// children, siblings by name. Symlinks are reported, never followed; subdirectories
/// that cannot be read are listed but not descended into.
pub(crate) fn list(dir: &Path, depth: u32, names: &Names) -> Result<Vec<EntryInfo>> {
    let metadata = fs::metadata(dir).map_err(EnvdError::io(dir.display()))?;
    if !metadata.is_dir() {
        return Err(EnvdError::invalid(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let mut entries = Vec::new();
    walk(dir, depth.max(1), names, &mut entries).map_err(EnvdError::io(dir.display()))?;
    Ok(entries)
}

fn walk(dir: &Path, levels: u32, names: &Names, out: &mut Vec<EntryInfo>) -> io::Result<()> {
    let mut children: Vec<fs::DirEntry> = fs::read_dir(dir)?.collect::<io::Result<_>>()?;
    children.sort_by_key(|child| child.file_name());
    for child in children {
        let path = dir.join(child.file_name());
        // `DirEntry::metadata` does not follow symlinks.
        let Ok(metadata) = child.metadata() else {
            continue; // Removed while we were listing.
        };
        out.push(from_metadata(&path, &metadata, names));
        if metadata.is_dir() && levels > 1 {
            if let Err(err) = walk(&path, levels - 1, names, out) {
                tracing::debug!(path = %path.display(), %err, "not descending into directory");
            }
        }
    }
    Ok(())
}

/// Creates `path` and its missing parents, each owned by `owner`. An existing `path`
/// (of any kind) is `ALREADY_EXISTS`; a parent that is not a directory is
/// `INVALID_ARGUMENT`.
pub(crate) fn make_dir(path: &Path, owner: Owner) -> Result<()> {
    if fs::symlink_metadata(path).is_ok() {
        return Err(EnvdError::AlreadyExists(format!(
            "{} already exists",
            path.display()
        )));
    }
    create_dirs(path, owner, true)
}

/// Creates `path` and every missing parent, owned by `owner`. With `must_create`, an
/// existing final directory is `ALREADY_EXISTS`; otherwise it is fine.
pub(crate) fn create_dirs(path: &Path, owner: Owner, must_create: bool) -> Result<()> {
    let mut missing = Vec::new();
    let mut current = Some(path);
    while let Some(dir) = current {
        match fs::metadata(dir) {
            Ok(metadata) if metadata.is_dir() => break,
            Ok(_) => {
                return Err(EnvdError::invalid(format!(
                    "{} is not a directory",
                    dir.display()
                )));
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                missing.push(dir);
                current = dir.parent();
            }
            Err(err) => return Err(EnvdError::from_io(dir.display(), &err)),
        }
    }
    if missing.is_empty() && must_create {
        return Err(EnvdError::AlreadyExists(format!(
            "{} already exists",
            path.display()
        )));
    }
    for dir in missing.into_iter().rev() {
        match fs::create_dir(dir) {
            Ok(()) => chown_best_effort(dir, owner),
            Err(err)
                if err.kind() == io::ErrorKind::AlreadyExists
                    && dir.is_dir()
                    && !(must_create && dir == path) => {}
            Err(err) => {
                return Err(EnvdError::from_io(
                    format_args!("creating {}", dir.display()),
                    &err,
                ));
            }
        }
    }
    Ok(())
}

/// Removes a file, a symlink (not its target) or a directory tree.
pub(crate) fn remove(path: &Path) -> Result<()> {
    if path.parent().is_none() {
        return Err(EnvdError::invalid("refusing to remove /"));
    }
    let metadata = fs::symlink_metadata(path).map_err(EnvdError::io(path.display()))?;
    let removed = if metadata.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    removed.map_err(EnvdError::io(format_args!("removing {}", path.display())))
}

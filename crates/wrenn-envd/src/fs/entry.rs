//! `EntryInfo`: what a path is, from `lstat`.

use std::fs::{FileType as OsFileType, Metadata};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use wrenn_proto::envd::v1::{EntryInfo, FileType};

use crate::users::Names;

/// Describes `path` without following a final symlink.
pub(crate) fn entry_info(path: &Path, names: &Names) -> io::Result<EntryInfo> {
    let metadata = std::fs::symlink_metadata(path)?;
    Ok(from_metadata(path, &metadata, names))
}

/// Builds the entry of `path` from its `lstat` metadata.
pub(crate) fn from_metadata(path: &Path, metadata: &Metadata, names: &Names) -> EntryInfo {
    let kind = file_type(&metadata.file_type());
    let symlink_target = (kind == FileType::Symlink)
        .then(|| std::fs::read_link(path).ok())
        .flatten()
        .map(|target| target.to_string_lossy().into_owned());
    EntryInfo {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".to_owned()),
        r#type: kind as i32,
        path: path.to_string_lossy().into_owned(),
        size: metadata.len(),
        mode: metadata.mode() & 0o7777,
        permissions: permissions(metadata.mode()),
        owner: names.user(metadata.uid()),
        group: names.group(metadata.gid()),
        modified_time: metadata.modified().ok().map(prost_types::Timestamp::from),
        symlink_target,
    }
}

fn file_type(kind: &OsFileType) -> FileType {
    if kind.is_symlink() {
        FileType::Symlink
    } else if kind.is_dir() {
        FileType::Directory
    } else if kind.is_file() {
        FileType::File
    } else {
        FileType::Other
    }
}

/// `ls -l` style permissions of a full `st_mode`, for example `-rwxr-xr-x`.
pub(crate) fn permissions(mode: u32) -> String {
    let kind = match mode & 0o170000 {
        0o040000 => 'd',
        0o120000 => 'l',
        0o010000 => 'p',
        0o140000 => 's',
        0o020000 => 'c',
        0o060000 => 'b',
        _ => '-',
    };
    let bit = |mask: u32, c: char| if mode & mask != 0 { c } else { '-' };
    let special =
        |exec: u32, flag: u32, set: char, unset: char| match (mode & exec != 0, mode & flag != 0) {
            (true, true) => set,
            (false, true) => unset,
            (true, false) => 'x',
            (false, false) => '-',
        };
    [
        kind,
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        special(0o100, 0o4000, 's', 'S'),
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        special(0o010, 0o2000, 's', 'S'),
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        special(0o001, 0o1000, 't', 'T'),
    ]
    .iter()
    .collect()
}

/// Whether `kind` is a FIFO, socket or device (nothing a file operation can copy).
pub(crate) fn is_special(kind: &OsFileType) -> bool {
    kind.is_fifo() || kind.is_socket() || kind.is_block_device() || kind.is_char_device()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_look_like_ls() {
        assert_eq!(permissions(0o100755), "-rwxr-xr-x");
        assert_eq!(permissions(0o040700), "drwx------");
        assert_eq!(permissions(0o120777), "lrwxrwxrwx");
        assert_eq!(permissions(0o104755), "-rwsr-xr-x");
        assert_eq!(permissions(0o041777), "drwxrwxrwt");
        assert_eq!(permissions(0o102644), "-rw-r-Sr--");
    }
}

//! `rootfs.ext4`: the tree as an ext4 image, made without mounting (`mkfs.ext4 -d`),
//! sized to its content plus a margin, sparse.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use super::ImageError;
use super::build::{find_program, run};

/// Block size of the image.
const BLOCK: u64 = 4096;
/// Free space left in the image beyond its content.
const MARGIN_BYTES: u64 = 256 << 20;
/// Extra inodes beyond the tree's.
const MARGIN_INODES: u64 = 16_384;

/// What a tree needs: bytes in whole blocks and inodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeSize {
    /// Bytes of file and directory data, rounded up to blocks.
    pub bytes: u64,
    /// Files, directories and links (hard links once).
    pub inodes: u64,
}

/// Measures `root` without following symlinks.
pub fn measure(root: &Path) -> std::io::Result<TreeSize> {
    let mut seen = HashSet::new();
    let mut size = TreeSize {
        bytes: 0,
        inodes: 0,
    };
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path)?;
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert(meta.ino()) {
            continue;
        }
        size.inodes += 1;
        size.bytes += meta.len().div_ceil(BLOCK) * BLOCK;
        if meta.is_dir() {
            for entry in fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(size)
}

/// The image size and inode count for a tree: content + 10 % + 256 MiB plus
/// room for the inode tables, in whole MiB.
pub fn plan(tree: TreeSize) -> (u64, u64) {
    let inodes = tree.inodes + tree.inodes / 5 + MARGIN_INODES;
    let bytes = tree.bytes + tree.bytes / 10 + MARGIN_BYTES + inodes * 256;
    (bytes.div_ceil(1 << 20) << 20, inodes)
}

/// Makes `image` (which must not exist) from the tree `root`, owned by root.
pub fn make(root: &Path, image: &Path) -> Result<(), ImageError> {
    let mkfs = find_program("mkfs.ext4").ok_or_else(|| ImageError::MissingTool {
        tool: "mkfs.ext4".to_owned(),
        package: "e2fsprogs".to_owned(),
        why: "it makes rootfs.ext4".to_owned(),
    })?;
    let tree = measure(root).map_err(ImageError::io(format!("measure {}", root.display())))?;
    let (bytes, inodes) = plan(tree);
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(image)
        .map_err(ImageError::io(format!("create {}", image.display())))?;
    // Sparse: mkfs writes only metadata and the tree's blocks.
    file.set_len(bytes)
        .map_err(ImageError::io(format!("size {}", image.display())))?;
    drop(file);
    run(Command::new(mkfs)
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-b",
            "4096",
            "-m",
            "0",
            "-L",
            "wrenn-rootfs",
        ])
        .args(["-N", &inodes.to_string(), "-E", "root_owner=0:0", "-d"])
        .arg(root)
        .arg(image))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_leaves_room_beyond_the_content() {
        let (bytes, inodes) = plan(TreeSize {
            bytes: 400 << 20,
            inodes: 20_000,
        });
        assert!(bytes >= (400 << 20) + MARGIN_BYTES);
        assert_eq!(bytes % (1 << 20), 0);
        assert!(inodes >= 20_000 + MARGIN_INODES);
    }

    #[test]
    fn a_tree_is_measured_in_blocks_with_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), vec![1u8; 5000]).unwrap();
        fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        fs::create_dir(dir.path().join("d")).unwrap();
        let size = measure(dir.path()).unwrap();
        assert_eq!(size.inodes, 3);
        assert!(size.bytes >= 2 * BLOCK);
    }
}

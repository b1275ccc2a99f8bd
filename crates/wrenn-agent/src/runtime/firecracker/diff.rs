//! Merging a diff memory snapshot onto its base.
//!
//! A [`Diff`](super::api::SnapshotType::Diff) snapshot's memory file is as large as
//! guest memory and holds data only where the guest (or a device) wrote since the VM
//! was loaded — Firecracker's dirty page bitmap — with holes everywhere else. Merging
//! copies those data ranges, found with `SEEK_DATA`/`SEEK_HOLE`, over the base file
//! at the same offsets, as Firecracker's `rebase-snap` does. Contents never decide: a
//! page the guest zeroed is data in the diff and is copied like any other (the
//! original treated all-zero blocks as "unchanged" and brought stale pages back).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Bytes copied per read.
const CHUNK: usize = 1 << 20;

/// What a merge copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Merged {
    /// Data ranges found in the diff.
    pub ranges: u64,
    /// Bytes copied onto the base.
    pub bytes: u64,
}

/// Copies every data range of the sparse file `diff` onto `base` at the same offset.
/// `base` must be at least as large as `diff` (both are guest memory's size).
pub fn merge(diff: &Path, base: &Path) -> io::Result<Merged> {
    let diff = File::open(diff)?;
    let base = File::options().write(true).open(base)?;
    let (diff_len, base_len) = (diff.metadata()?.len(), base.metadata()?.len());
    if diff_len > base_len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the diff ({diff_len} bytes) is larger than its base ({base_len} bytes)"),
        ));
    }
    let mut merged = Merged::default();
    let mut buffer = vec![0u8; CHUNK];
    let mut offset = 0;
    while offset < diff_len {
        let Some(start) = seek(&diff, offset, libc::SEEK_DATA)? else {
            break;
        };
        let end = seek(&diff, start, libc::SEEK_HOLE)?.unwrap_or(diff_len);
        let mut at = start;
        while at < end {
            let n = usize::try_from(end - at).map_or(CHUNK, |left| left.min(CHUNK));
            diff.read_exact_at(&mut buffer[..n], at)?;
            base.write_all_at(&buffer[..n], at)?;
            at += n as u64;
        }
        merged.ranges += 1;
        merged.bytes += end - start;
        offset = end;
    }
    base.sync_data()?;
    Ok(merged)
}

/// `lseek(fd, from, whence)`; `None` where no data follows `from` (`ENXIO`).
fn seek(file: &File, from: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let from = libc::off_t::try_from(from).map_err(io::Error::other)?;
    // SAFETY: lseek on a descriptor this function borrows; no memory is passed.
    #[allow(unsafe_code)]
    let at = unsafe { libc::lseek(file.as_raw_fd(), from, whence) };
    if at < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    Ok(Some(at as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 4096;

    fn sparse(path: &Path, len: u64, pages: &[(u64, u8)]) {
        let file = File::create(path).unwrap();
        file.set_len(len).unwrap();
        for (page, byte) in pages {
            file.write_all_at(&[*byte; PAGE as usize], page * PAGE)
                .unwrap();
        }
    }

    #[test]
    fn data_ranges_replace_the_base_and_holes_keep_it() {
        let dir = tempfile::tempdir().unwrap();
        let (base, diff) = (dir.path().join("memory"), dir.path().join("memory.diff"));
        let len = 64 * PAGE;
        std::fs::write(&base, vec![7u8; len as usize]).unwrap();
        // Page 3 zeroed by the guest, pages 10–11 rewritten, the last page too.
        sparse(&diff, len, &[(3, 0), (10, 1), (11, 2), (63, 9)]);
        let merged = merge(&diff, &base).unwrap();
        assert_eq!(merged.bytes, 4 * PAGE);
        let after = std::fs::read(&base).unwrap();
        let page = |n: u64| &after[(n * PAGE) as usize..((n + 1) * PAGE) as usize];
        assert!(page(3).iter().all(|b| *b == 0), "a zeroed page is copied");
        assert!(page(10).iter().all(|b| *b == 1));
        assert!(page(11).iter().all(|b| *b == 2));
        assert!(page(63).iter().all(|b| *b == 9));
        for untouched in [0, 2, 4, 9, 12, 62] {
            assert!(page(untouched).iter().all(|b| *b == 7), "page {untouched}");
        }
        assert_eq!(after.len() as u64, len);
    }

    #[test]
    fn an_empty_diff_changes_nothing_and_a_larger_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (base, diff) = (dir.path().join("memory"), dir.path().join("memory.diff"));
        std::fs::write(&base, vec![5u8; 8 * PAGE as usize]).unwrap();
        sparse(&diff, 8 * PAGE, &[]);
        assert_eq!(merge(&diff, &base).unwrap(), Merged::default());
        assert!(std::fs::read(&base).unwrap().iter().all(|b| *b == 5));
        sparse(&diff, 9 * PAGE, &[(0, 1)]);
        let err = merge(&diff, &base).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(std::fs::read(&base).unwrap().iter().all(|b| *b == 5));
    }
}

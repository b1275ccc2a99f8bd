//! Where the guest's memory is zeros: the memory file's data extents (found with
//! `SEEK_DATA`/`SEEK_HOLE`, everything else a hole) and the ranges the guest gave back.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;

use rustix::fs::SeekFrom;
use rustix::io::Errno;

use super::UffdError;
use super::sys::Mapping;

/// The memory file: mapped, with its data extents (everything else is a hole).
#[derive(Debug)]
pub(super) struct Memory {
    map: Option<Mapping>,
    pub(super) len: u64,
    /// Sorted, disjoint `[start, end)` byte ranges holding data.
    pub(super) data: Vec<(u64, u64)>,
}

impl Memory {
    pub(super) fn open(path: &Path) -> Result<Self, UffdError> {
        let error = |what| {
            move |source| UffdError::MemoryFile {
                what,
                path: path.to_owned(),
                source,
            }
        };
        let file = File::open(path).map_err(error("open"))?;
        let len = file.metadata().map_err(error("inspect"))?.len();
        let data = data_extents(&file, len).map_err(error("find the holes of"))?;
        let map = match usize::try_from(len) {
            Ok(0) => None,
            Ok(size) => Some(Mapping::new(Some(file.as_fd()), size).map_err(error("map"))?),
            Err(_) => return Err(error("map")(io::Error::from(io::ErrorKind::FileTooLarge))),
        };
        // The mapping keeps the file's contents; the descriptor is not needed any more.
        Ok(Self { map, len, data })
    }

    /// Whether `[offset, offset + len)` holds no data.
    pub(super) fn is_hole(&self, offset: u64, len: u64) -> bool {
        let end = offset.saturating_add(len);
        let after = self.data.partition_point(|&(start, _)| start < end);
        after == 0 || self.data[after - 1].1 <= offset
    }

    pub(super) fn addr(&self) -> u64 {
        self.map.as_ref().map_or(0, |m| m.addr as u64)
    }
}

/// The data extents of `file` by `SEEK_DATA`/`SEEK_HOLE`; all of it where the file
/// system cannot tell.
fn data_extents(file: &File, len: u64) -> io::Result<Vec<(u64, u64)>> {
    let mut data = Vec::new();
    let mut pos = 0;
    while pos < len {
        let start = match rustix::fs::seek(file, SeekFrom::Data(pos)) {
            Ok(start) => start,
            Err(Errno::NXIO) => break,
            Err(Errno::INVAL | Errno::OPNOTSUPP) if pos == 0 => return Ok(vec![(0, len)]),
            Err(e) => return Err(e.into()),
        };
        let end = match rustix::fs::seek(file, SeekFrom::Hole(start)) {
            Ok(end) => end.min(len),
            Err(Errno::NXIO) => len,
            Err(e) => return Err(e.into()),
        };
        if end <= start {
            break;
        }
        data.push((start, end));
        pos = end;
    }
    Ok(data)
}

/// Address ranges the guest gave back (`UFFD_EVENT_REMOVE`): `[start, end)` by start,
/// merged.
#[derive(Debug, Default)]
pub(super) struct Removed(BTreeMap<u64, u64>);

impl Removed {
    pub(super) fn add(&mut self, mut start: u64, mut end: u64) {
        if end <= start {
            return;
        }
        if let Some((&s, &e)) = self.0.range(..=start).next_back()
            && e >= start
        {
            start = s;
            end = end.max(e);
        }
        let merged: Vec<u64> = self.0.range(start..=end).map(|(&s, _)| s).collect();
        for s in merged {
            if let Some(e) = self.0.remove(&s) {
                end = end.max(e);
            }
        }
        self.0.insert(start, end);
    }

    pub(super) fn contains(&self, addr: u64) -> bool {
        self.0
            .range(..=addr)
            .next_back()
            .is_some_and(|(_, &end)| end > addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 4096;

    #[test]
    fn uffd_removed_ranges_merge() {
        let mut removed = Removed::default();
        removed.add(10 * PAGE, 12 * PAGE);
        removed.add(14 * PAGE, 15 * PAGE);
        removed.add(5 * PAGE, 5 * PAGE); // empty
        assert_eq!(removed.0.len(), 2);
        removed.add(11 * PAGE, 14 * PAGE); // bridges both
        assert_eq!(removed.0, BTreeMap::from([(10 * PAGE, 15 * PAGE)]));
        removed.add(2 * PAGE, 3 * PAGE);
        removed.add(PAGE, 10 * PAGE); // covers one, touches the other
        assert_eq!(removed.0, BTreeMap::from([(PAGE, 15 * PAGE)]));
        assert!(!removed.contains(0));
        assert!(removed.contains(PAGE));
        assert!(removed.contains(15 * PAGE - 1));
        assert!(!removed.contains(15 * PAGE));
    }

    #[test]
    fn uffd_holes_come_from_seek_data_not_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        file.set_len(8 * PAGE).unwrap();
        // Page 1: data; page 2: written zeros (data too); the rest: holes.
        std::os::unix::fs::FileExt::write_all_at(&file, &[7; PAGE as usize], PAGE).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &[0; PAGE as usize], 2 * PAGE).unwrap();
        drop(file);
        let memory = Memory::open(&path).unwrap();
        let holes: Vec<bool> = (0..8).map(|p| memory.is_hole(p * PAGE, PAGE)).collect();
        assert_eq!(holes, [true, false, false, true, true, true, true, true]);
        // A huge page is a hole only if all of it is.
        assert!(!memory.is_hole(0, 4 * PAGE));
        assert!(memory.is_hole(4 * PAGE, 4 * PAGE));
    }
}

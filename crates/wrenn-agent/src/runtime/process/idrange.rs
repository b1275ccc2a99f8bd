//! Host uid/gid ranges of capsules: each live capsule owns a distinct range of
//! [`RANGE_SIZE`] host ids (capsule ids `0..65536`), allocated on create/restore and
//! freed when the capsule's processes are gone (destroy, hibernate, failed start).
//!
//! Range `k` is `base + k·65536 .. base + (k+1)·65536`. The range of a sandbox is also
//! written to `sandboxes/{id}/id-range`, so an agent started on the same `$WRENN_DIR`
//! never hands out the range of a capsule that still runs.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Mutex;

use wrenn_core::id::SandboxId;

use crate::init::IdMap;

/// Ids per capsule: capsule uids and gids `0..65536`.
pub const RANGE_SIZE: u32 = 65536;

/// The file in `sandboxes/{id}/` recording the capsule's range (`"<host base> <size>"`).
pub const RECORD_FILE: &str = "id-range";

/// Why a set of ranges cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum IdRangeError {
    /// The base or count is out of bounds.
    #[error(
        "invalid capsule id ranges: base {base} and {count} ranges of {RANGE_SIZE} must lie in \
         {RANGE_SIZE}..{max} (above host users, below the invalid id u32::MAX)",
        max = u32::MAX
    )]
    Invalid {
        /// First host id.
        base: u32,
        /// Number of ranges.
        count: u32,
    },
    /// Every range is in use.
    #[error("all {0} capsule id ranges are in use")]
    Exhausted(u32),
}

/// The allocator. See the [module docs](self).
#[derive(Debug)]
pub struct IdRanges {
    base: u32,
    count: u32,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_sandbox: HashMap<SandboxId, u32>,
    used: BTreeSet<u32>,
}

impl IdRanges {
    /// `count` ranges starting at host id `base`.
    pub fn new(base: u32, count: u32) -> Result<Self, IdRangeError> {
        let end = u64::from(base) + u64::from(count) * u64::from(RANGE_SIZE);
        if base < RANGE_SIZE || count == 0 || end > u64::from(u32::MAX) {
            return Err(IdRangeError::Invalid { base, count });
        }
        Ok(Self {
            base,
            count,
            inner: Mutex::new(Inner::default()),
        })
    }

    fn map(&self, slot: u32) -> IdMap {
        IdMap {
            host_base: self.base + slot * RANGE_SIZE,
            size: RANGE_SIZE,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The range of `sandbox`, allocating the lowest free one if it has none.
    pub fn allocate(&self, sandbox: SandboxId) -> Result<IdMap, IdRangeError> {
        let mut inner = self.lock();
        if let Some(slot) = inner.by_sandbox.get(&sandbox) {
            return Ok(self.map(*slot));
        }
        let slot = (0..self.count)
            .find(|s| !inner.used.contains(s))
            .ok_or(IdRangeError::Exhausted(self.count))?;
        inner.used.insert(slot);
        inner.by_sandbox.insert(sandbox, slot);
        Ok(self.map(slot))
    }

    /// Marks `map` as the range of `sandbox` (a capsule found running at start-up).
    /// Returns `false` if it is not one of these ranges or already taken by another.
    pub fn reserve(&self, sandbox: SandboxId, map: IdMap) -> bool {
        let Some(offset) = map.host_base.checked_sub(self.base) else {
            return false;
        };
        let slot = offset / RANGE_SIZE;
        if offset % RANGE_SIZE != 0 || slot >= self.count || map.size != RANGE_SIZE {
            return false;
        }
        let mut inner = self.lock();
        match inner.by_sandbox.get(&sandbox) {
            Some(s) => *s == slot,
            None if inner.used.contains(&slot) => false,
            None => {
                inner.used.insert(slot);
                inner.by_sandbox.insert(sandbox, slot);
                true
            }
        }
    }

    /// The range of `sandbox`, if it has one.
    pub fn get(&self, sandbox: SandboxId) -> Option<IdMap> {
        self.lock().by_sandbox.get(&sandbox).map(|s| self.map(*s))
    }

    /// Frees the range of `sandbox` (whose processes are gone).
    pub fn release(&self, sandbox: SandboxId) {
        let mut inner = self.lock();
        if let Some(slot) = inner.by_sandbox.remove(&sandbox) {
            inner.used.remove(&slot);
        }
    }

    /// Gives the range of `from` to `to` (a capsule started ahead of time under a
    /// provisional id, then given its real one). Returns `false` if `from` has none or
    /// `to` has one already.
    pub fn rekey(&self, from: SandboxId, to: SandboxId) -> bool {
        let mut inner = self.lock();
        if inner.by_sandbox.contains_key(&to) {
            return false;
        }
        match inner.by_sandbox.remove(&from) {
            Some(slot) => {
                inner.by_sandbox.insert(to, slot);
                true
            }
            None => false,
        }
    }

    /// How many ranges are in use.
    pub fn in_use(&self) -> usize {
        self.lock().used.len()
    }
}

/// Writes the range record of a sandbox into its directory.
pub fn write_record(sandbox_dir: &Path, map: IdMap) -> std::io::Result<()> {
    std::fs::write(
        sandbox_dir.join(RECORD_FILE),
        format!("{} {}\n", map.host_base, map.size),
    )
}

/// Reads the range record of a sandbox directory, if there is a valid one.
pub fn read_record(sandbox_dir: &Path) -> Option<IdMap> {
    let text = std::fs::read_to_string(sandbox_dir.join(RECORD_FILE)).ok()?;
    let mut parts = text.split_whitespace();
    let host_base = parts.next()?.parse().ok()?;
    let size = parts.next()?.parse().ok()?;
    Some(IdMap { host_base, size })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_distinct_reused_after_release_and_bounded() {
        let ranges = IdRanges::new(1 << 31, 2).unwrap();
        let (a, b, c) = (SandboxId::new(), SandboxId::new(), SandboxId::new());
        let ra = ranges.allocate(a).unwrap();
        let rb = ranges.allocate(b).unwrap();
        assert_eq!(ra.host_base, 1 << 31);
        assert_eq!(rb.host_base, (1 << 31) + RANGE_SIZE);
        assert_eq!(ranges.allocate(a).unwrap(), ra, "idempotent");
        assert!(matches!(
            ranges.allocate(c),
            Err(IdRangeError::Exhausted(2))
        ));
        ranges.release(a);
        assert_eq!(ranges.allocate(c).unwrap(), ra);
        assert!(!ranges.reserve(a, rb), "taken by b");
        ranges.release(b);
        assert!(ranges.reserve(a, rb));
        assert_eq!(ranges.get(a), Some(rb));
    }

    #[test]
    fn ranges_that_reach_host_root_or_past_u32_are_refused() {
        assert!(IdRanges::new(0, 1).is_err());
        assert!(IdRanges::new(1000, 1).is_err());
        assert!(IdRanges::new(u32::MAX - RANGE_SIZE + 1, 1).is_err());
        assert!(
            IdRanges::new(u32::MAX - RANGE_SIZE, 1).is_ok(),
            "ends at u32::MAX - 1"
        );
        assert!(IdRanges::new(1 << 31, 0).is_err());
        assert!(IdRanges::new(u32::MAX - 2 * RANGE_SIZE, 1).is_ok());
    }
}

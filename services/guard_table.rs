//! The table of live process groups that exemesh shares with its [orphan guard](super::reaper).
//!
//! A small `memfd` mapped into exemesh: registering a group is an atomic store into a free slot,
//! unregistering it another, so a spawned call neither makes a system call nor wakes the guard for
//! it. The guard holds the same `memfd` and reads it only once, when exemesh has died
//! ([`read_groups`]). Measured (nineteenth session, docs/benchmarks.md "What exemesh adds to a
//! spawn"): telling the guard through its pipe cost a spawned Python script 0.04–0.25 ms per call.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

/// Slots in exemesh's table (one 4 KiB page). Groups beyond it go through the guard's pipe.
pub const SLOTS: usize = 1024;

/// A table of process group ids in memory shared with the guard; 0 marks a free slot.
#[derive(Debug)]
pub struct GroupTable {
    fd: OwnedFd,
    slots: *const AtomicI32,
    len: usize,
    /// Where the next search for a free slot starts (spreads concurrent inserts).
    next: AtomicUsize,
}

// SAFETY: the mapping is shared memory accessed only through atomics, and lives as long as the table.
unsafe impl Send for GroupTable {}
// SAFETY: as above: every access to the slots is atomic.
unsafe impl Sync for GroupTable {}

/// A group's place in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot(usize);

impl GroupTable {
    /// Creates a table of `slots` entries in a new `memfd` (close-on-exec).
    pub fn create(slots: usize) -> io::Result<Self> {
        let len = slots.max(1);
        let bytes = len * std::mem::size_of::<AtomicI32>();
        // SAFETY: the name is a valid C string; the flags are valid.
        let raw = unsafe { libc::memfd_create(c"exemesh-guard".as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: memfd_create returned a new fd owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: ftruncate on our own fd; a new memfd reads as zeros (every slot free).
        if unsafe { libc::ftruncate(fd.as_raw_fd(), bytes as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a shared read-write mapping of the whole file, which is `bytes` long.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            fd,
            slots: map as *const AtomicI32,
            len,
            next: AtomicUsize::new(0),
        })
    }

    fn slots(&self) -> &[AtomicI32] {
        // SAFETY: `slots` maps `len` i32s (page-aligned), alive until drop; AtomicI32 has i32's layout.
        unsafe { std::slice::from_raw_parts(self.slots, self.len) }
    }

    /// The `memfd`, for the guard to inherit.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Puts `pgid` (> 0) in a free slot; `None` when the table is full.
    pub fn insert(&self, pgid: i32) -> Option<Slot> {
        let slots = self.slots();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..slots.len())
            .map(|i| (start + i) % slots.len())
            .find(|&i| {
                slots[i]
                    .compare_exchange(0, pgid, Ordering::Release, Ordering::Relaxed)
                    .is_ok()
            })
            .map(Slot)
    }

    /// Frees the slot `pgid` was put in.
    pub fn remove(&self, slot: Slot, pgid: i32) {
        if let Some(entry) = self.slots().get(slot.0) {
            let _ = entry.compare_exchange(pgid, 0, Ordering::Release, Ordering::Relaxed);
        }
    }
}

impl Drop for GroupTable {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `create`; no reference to it outlives `self`.
        unsafe {
            libc::munmap(
                self.slots as *mut libc::c_void,
                self.len * std::mem::size_of::<AtomicI32>(),
            );
        }
    }
}

/// The groups registered in a table, read through its `memfd` (as the guard does once exemesh has
/// died and nothing writes to it any more).
pub fn read_groups(fd: BorrowedFd<'_>) -> io::Result<Vec<i32>> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::from(fd.try_clone_to_owned()?);
    let len = usize::try_from(file.metadata()?.len()).map_err(io::Error::other)?;
    let mut bytes = vec![0; len];
    // At an offset, not through the file position, which exemesh's descriptor shares.
    file.read_exact_at(&mut bytes, 0)?;
    Ok(bytes
        .chunks_exact(4)
        .filter_map(|c| c.try_into().ok().map(i32::from_ne_bytes))
        .filter(|&pgid| pgid > 1)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The groups the guard would read, sorted.
    fn listed(table: &GroupTable) -> Vec<i32> {
        let mut groups = read_groups(table.fd()).expect("read");
        groups.sort_unstable();
        groups
    }

    #[test]
    fn the_guard_reads_what_is_registered_and_not_what_was_removed() {
        let table = GroupTable::create(8).expect("memfd");
        let a = table.insert(4001).expect("slot");
        let _b = table.insert(4002).expect("slot");
        let _c = table.insert(4003).expect("slot");
        table.remove(a, 4001);
        assert_eq!(listed(&table), vec![4002, 4003]);
    }

    #[test]
    fn a_full_table_says_so_and_a_freed_slot_is_used_again() {
        let table = GroupTable::create(2).expect("memfd");
        let a = table.insert(10).expect("slot");
        assert!(table.insert(11).is_some());
        assert_eq!(table.insert(12), None, "full");
        table.remove(a, 10);
        assert_eq!(table.insert(12), Some(a));
        assert_eq!(listed(&table), vec![11, 12]);
    }

    #[test]
    fn removing_with_a_stale_group_id_leaves_the_slot_alone() {
        let table = GroupTable::create(2).expect("memfd");
        let a = table.insert(20).expect("slot");
        table.remove(a, 21);
        assert_eq!(listed(&table), vec![20]);
    }
}

//! Zeroed tables of plain slots, each in its own anonymous mapping: the large hash tables a
//! night probes at random (the ID index, the per-user cap). A mapping's memory goes back to the
//! system when the table is dropped, where the allocator might keep it for later.
//!
//! A table filled all at once ([`AnonTable::filled`], the ID index) is advised for transparent
//! huge pages: a table of a gigabyte in 4 KiB pages misses the TLB on nearly every probe, and a
//! 2 MiB page walk is shorter. `cargo bench --bench idindex`, batched lookups at 20M keys on 2
//! threads: 30.8M/s with the advice, 26.6M/s without. On this benchmark VM the full job pays
//! for it in the index build (0.99-1.48 s against 0.60-0.66 s, the kernel clearing 2 MiB pages),
//! with no steady gain in its parse; on hardware without a hypervisor's second page walk the
//! lookups gain more. A table that fills as the night goes ([`AnonTable::zeroed`], the cap) is
//! not advised: session 7 measured the advice slowing the parse down.

/// A slot type any bit pattern of which is a valid value, with zero as its empty slot.
///
/// # Safety
///
/// Implementors must be plain data: no padding, no pointers, no invalid bit patterns, a size
/// above zero and an alignment of at most 4096 (a mapping is page-aligned).
#[allow(unsafe_code)]
pub(crate) unsafe trait Plain: Copy + 'static {}

// SAFETY: an integer: every bit pattern is a value.
#[allow(unsafe_code)]
unsafe impl Plain for u128 {}

/// The smallest page size: touching one byte in each faults the whole mapping in.
const PAGE: usize = 4096;

/// `len` zeroed slots of `T` (see the module).
pub(crate) struct AnonTable<T: Plain> {
    map: Option<memmap2::MmapMut>,
    _slots: std::marker::PhantomData<T>,
}

impl<T: Plain> Default for AnonTable<T> {
    fn default() -> Self {
        AnonTable {
            map: None,
            _slots: std::marker::PhantomData,
        }
    }
}

impl<T: Plain> AnonTable<T> {
    /// A table of `len` zeroed slots, its pages faulted in as they are first touched.
    pub(crate) fn zeroed(len: usize) -> std::io::Result<AnonTable<T>> {
        Self::map(len, false)
    }

    /// A table of `len` zeroed slots about to be filled all at once: advised for huge pages
    /// (see the module), every page faulted in now. A probe reads a slot before writing it, and
    /// on an untouched page that read maps the shared zero page, so the write after it must
    /// replace the mapping and flush it from every core's TLB (`perf`: a quarter of a small
    /// night's time went to those flushes). Writing every page first gives each its own zeroed
    /// page at once. A table that fills over a long time gains nothing by it and would wait for
    /// all of its zeroing up front (0.4 s for 512 MiB here).
    pub(crate) fn filled(len: usize) -> std::io::Result<AnonTable<T>> {
        Self::map(len, true)
    }

    fn map(len: usize, for_fill: bool) -> std::io::Result<AnonTable<T>> {
        const { assert!(size_of::<T>() > 0 && align_of::<T>() <= PAGE) };
        if len == 0 {
            return Ok(AnonTable::default());
        }
        let bytes = len
            .checked_mul(size_of::<T>())
            .ok_or_else(|| std::io::Error::other("table size overflows"))?;
        let mut map = memmap2::MmapMut::map_anon(bytes)?;
        if for_fill {
            // A hint: without transparent huge pages the table works the same, only slower.
            #[cfg(target_os = "linux")]
            let _ = map.advise(memmap2::Advice::HugePage);
            map.iter_mut().step_by(PAGE).for_each(|b| *b = 0);
        }
        Ok(AnonTable {
            map: Some(map),
            _slots: std::marker::PhantomData,
        })
    }

    /// The slots.
    #[allow(unsafe_code)]
    pub(crate) fn slots(&self) -> &[T] {
        match &self.map {
            // SAFETY: the mapping is page-aligned (at least `T`'s alignment, see `Plain`),
            // `len / size_of::<T>()` slots long, and any bit pattern is a valid `T`; the
            // borrow of `self` bounds the slice's lifetime.
            Some(map) => unsafe {
                std::slice::from_raw_parts(map.as_ptr().cast::<T>(), map.len() / size_of::<T>())
            },
            None => &[],
        }
    }

    /// The slots, writable.
    #[allow(unsafe_code)]
    pub(crate) fn slots_mut(&mut self) -> &mut [T] {
        match &mut self.map {
            // SAFETY: as in `slots`; the exclusive borrow of `self` makes the slice exclusive.
            Some(map) => unsafe {
                std::slice::from_raw_parts_mut(
                    map.as_mut_ptr().cast::<T>(),
                    map.len() / size_of::<T>(),
                )
            },
            None => &mut [],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_starts_zeroed_and_keeps_what_is_written() {
        for mut t in [
            AnonTable::<u128>::zeroed(10_000).unwrap(),
            AnonTable::<u128>::filled(10_000).unwrap(),
        ] {
            assert_eq!(t.slots().len(), 10_000);
            assert!(t.slots().iter().all(|&s| s == 0));
            t.slots_mut()[9_999] = u128::MAX;
            assert_eq!(t.slots()[9_999], u128::MAX);
        }
        assert!(AnonTable::<u128>::zeroed(0).unwrap().slots().is_empty());
        assert!(AnonTable::<u128>::zeroed(usize::MAX / 8).is_err());
    }
}

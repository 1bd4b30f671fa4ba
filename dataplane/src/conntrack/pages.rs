//! The table's arrays in memory of their own, on transparent huge pages where the host
//! allows, and how much of them the kernel put there.

/// A table's array (the index's slots, the slab's entries) in memory of its own: a fresh
/// anonymous mapping, advised for transparent huge pages (`MADV_HUGEPAGE`) before its first
/// write, and then faulted in whole so no packet takes its page faults. Reads as a slice.
///
/// Why a mapping and not a `Vec`: a lookup's misses are its index slot (anywhere in 16 MB at
/// the default capacity) and its entry (anywhere in 128 MB). On 4 KiB pages nearly every one
/// also misses the TLB, and under a hypervisor each such miss is a two-level page walk; on
/// 2 MiB pages the index is 8 TLB entries and the slab 64 (docs/benchmarks.md, "the conntrack
/// table on transparent huge pages"). The advice only takes effect on pages not yet touched,
/// which a `Vec` cannot promise: the allocator may hand back heap it has used before. When
/// the host's THP setting is `never` the advice fails and the array is on 4 KiB pages.
/// Without `huge` (`[conntrack] huge_pages = false`) the array is advised `MADV_NOHUGEPAGE`
/// instead, so it is on 4 KiB pages whatever the host's setting.
/// `T` is plain data (`bytemuck::Pod`), so the bytes are viewed as `T`s without `unsafe`.
#[derive(Debug)]
pub(super) struct Mapped<T> {
    map: memmap2::MmapMut,
    _t: std::marker::PhantomData<T>,
}

impl<T: bytemuck::Pod> Mapped<T> {
    /// `n` zeroed `T`s (at least one), on huge pages when `huge` and the kernel allows.
    pub(super) fn zeroed(n: usize, huge: bool) -> Mapped<T> {
        let bytes = n.max(1) * size_of::<T>();
        let map = match memmap2::MmapOptions::new().len(bytes).map_anon() {
            Ok(map) => map,
            // What a `Vec` does when its allocation fails.
            Err(_) => std::alloc::handle_alloc_error(
                std::alloc::Layout::from_size_align(bytes, 4096).unwrap_or(std::alloc::Layout::new::<T>()),
            ),
        };
        // Best effort: the kernel refuses `MADV_HUGEPAGE` when the host's THP setting is
        // `never` (`Table::huge_page_bytes` says what it gave).
        #[cfg(target_os = "linux")]
        let _ = map.advise(if huge { memmap2::Advice::HugePage } else { memmap2::Advice::NoHugePage });
        #[cfg(not(target_os = "linux"))]
        let _ = huge;
        let mut m = Mapped { map, _t: std::marker::PhantomData };
        // Fault every page in now: one store per 4 KiB (the first store to a 2 MiB region
        // brings its huge page).
        for page in m.map.chunks_mut(4096) {
            page[0] = 0;
        }
        m
    }

    pub(super) fn bytes(&self) -> usize {
        self.map.len()
    }

    /// The mapping's address range.
    pub(super) fn range(&self) -> std::ops::Range<usize> {
        let start = self.map.as_ptr() as usize;
        start..start + self.map.len()
    }
}

/// Bytes of `range` the kernel has placed on huge pages, from `smaps` text (the format of
/// `/proc/PID/smaps`: a `start-end perms ...` line per mapping, then its `Key: value kB`
/// lines). The kernel merges adjacent mappings of the same kind into one (the index and the
/// slab, or two workers' tables), and smaps counts per merged mapping, so a mapping's
/// `AnonHugePages` is shared out by how much of it `range` covers: exact when the mapping
/// is `range` or wholly on huge pages, else an estimate. `None` when no mapping overlaps it.
pub(super) fn anon_huge_bytes(smaps: &str, range: std::ops::Range<usize>) -> Option<usize> {
    let mut total = None;
    // The overlap with `range` of the mapping being read, and that mapping's size.
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let mut words = line.split_ascii_whitespace();
        let first = words.next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-')
            && let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        {
            let overlap = hi.min(range.end).saturating_sub(lo.max(range.start));
            current = (overlap > 0 && hi > lo).then_some((overlap, hi - lo));
        } else if let Some((overlap, size)) = current
            && first == "AnonHugePages:"
        {
            let huge = words.next()?.parse::<usize>().ok()? * 1024;
            let share = (huge as u128 * overlap as u128 / size as u128) as usize;
            total = Some(total.unwrap_or(0) + share);
            current = None;
        }
    }
    total
}

/// The `T`s. (The cast cannot fail: the mapping is page-aligned, `T`'s alignment is at most
/// a line, and the length is a whole number of `T`s.)
impl<T: bytemuck::Pod> std::ops::Deref for Mapped<T> {
    type Target = [T];

    #[inline(always)]
    fn deref(&self) -> &[T] {
        bytemuck::cast_slice(&self.map)
    }
}

impl<T: bytemuck::Pod> std::ops::DerefMut for Mapped<T> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut [T] {
        bytemuck::cast_slice_mut(&mut self.map)
    }
}

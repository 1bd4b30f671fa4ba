//! Sets of `u128` values as sorted, disjoint, non-adjacent inclusive intervals: the address,
//! port and protocol sets the policy compiler intersects and subtracts.

/// A normalised set of inclusive intervals.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct IntervalSet(Vec<(u128, u128)>);

impl IntervalSet {
    /// The set `lo..=hi`.
    pub(crate) fn range(lo: u128, hi: u128) -> Self {
        Self(vec![(lo, hi)])
    }

    /// The union of `ranges` (any order, overlaps allowed).
    pub(crate) fn from_ranges(mut ranges: Vec<(u128, u128)>) -> Self {
        ranges.sort_unstable();
        let mut out: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match out.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => out.push((lo, hi)),
            }
        }
        Self(out)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn ranges(&self) -> &[(u128, u128)] {
        &self.0
    }

    pub(crate) fn intersect(&self, other: &Self) -> Self {
        let (mut i, mut j, mut out) = (0, 0, Vec::new());
        while i < self.0.len() && j < other.0.len() {
            let (a, b) = (self.0[i], other.0[j]);
            let (lo, hi) = (a.0.max(b.0), a.1.min(b.1));
            if lo <= hi {
                out.push((lo, hi));
            }
            if a.1 < b.1 { i += 1 } else { j += 1 }
        }
        Self(out)
    }

    pub(crate) fn subtract(&self, other: &Self) -> Self {
        let mut out = Vec::new();
        let mut j = 0;
        for &(mut lo, hi) in &self.0 {
            while j < other.0.len() && other.0[j].1 < lo {
                j += 1;
            }
            let mut k = j;
            let mut done = false;
            while k < other.0.len() && other.0[k].0 <= hi {
                let (olo, ohi) = other.0[k];
                if olo > lo {
                    out.push((lo, olo - 1));
                }
                if ohi >= hi {
                    done = true;
                    break;
                }
                lo = ohi + 1;
                k += 1;
            }
            if !done {
                out.push((lo, hi));
            }
        }
        Self(out)
    }
}

/// The fewest prefixes `(value, len)` of a `bits`-bit space covering `lo..=hi`.
pub(crate) fn range_to_prefixes(mut lo: u128, hi: u128, bits: u32) -> Vec<(u128, u8)> {
    // Last value of the aligned block of 2^k values starting at `lo`.
    let block_end = |lo: u128, k: u32| {
        if k >= 128 { (lo == 0).then_some(u128::MAX) } else { lo.checked_add((1u128 << k) - 1) }
    };
    let mut out = Vec::new();
    loop {
        // The largest block aligned at `lo` that ends within `hi`.
        let mut k = if lo == 0 { bits } else { lo.trailing_zeros().min(bits) };
        while k > 0 && block_end(lo, k).is_none_or(|e| e > hi) {
            k -= 1;
        }
        let end = block_end(lo, k).unwrap_or(lo);
        out.push((lo, (bits - k) as u8));
        if end >= hi {
            return out;
        }
        lo = end + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_operations() {
        let a = IntervalSet::from_ranges(vec![(10, 20), (5, 12), (30, 40), (41, 45)]);
        assert_eq!(a.ranges(), &[(5, 20), (30, 45)]);
        let b = IntervalSet::from_ranges(vec![(0, 6), (15, 35), (44, 100)]);
        assert_eq!(a.intersect(&b).ranges(), &[(5, 6), (15, 20), (30, 35), (44, 45)]);
        assert_eq!(a.subtract(&b).ranges(), &[(7, 14), (36, 43)]);
        assert_eq!(b.subtract(&a).ranges(), &[(0, 4), (21, 29), (46, 100)]);
        assert!(a.subtract(&IntervalSet::range(0, u128::MAX)).is_empty());
        assert_eq!(
            IntervalSet::range(0, u128::MAX).subtract(&IntervalSet::range(0, 0)).ranges(),
            &[(1, u128::MAX)]
        );
    }

    #[test]
    fn prefixes_cover_ranges_exactly() {
        assert_eq!(range_to_prefixes(0, u32::MAX as u128, 32), vec![(0, 0)]);
        assert_eq!(range_to_prefixes(0, u128::MAX, 128), vec![(0, 0)]);
        assert_eq!(range_to_prefixes(5, 5, 32), vec![(5, 32)]);
        assert_eq!(range_to_prefixes(4, 11, 32), vec![(4, 30), (8, 30)]);
        for (lo, hi) in [(1u128, 254u128), (3, 1000), (0, 77), (255, 256), (1 << 100, (1 << 101) + 5)] {
            let p = range_to_prefixes(lo, hi, 128);
            let mut next = lo;
            for (v, len) in p {
                assert_eq!(v, next, "{lo}..{hi}");
                next = v + (1u128 << (128 - u32::from(len)));
            }
            assert_eq!(next, hi + 1);
        }
    }
}

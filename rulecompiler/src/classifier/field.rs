//! Field ranges and rules: the classifier's input model.
//!
//! Every field is an inclusive range of `u32`. An IPv4 address is one field; an IPv6 address is
//! four (most significant word first), and a prefix decomposes exactly into per-word ranges:
//! the words above the prefix boundary are exact, the word holding the boundary is a range, the
//! words below it are wildcards. Matching all four word ranges is then the same as matching the
//! 128-bit prefix, so one engine serves both address families.

/// The index of a rule: its priority. Lower wins.
pub type RuleId = u32;

/// An inclusive range `lo..=hi` of one header field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FieldRange {
    lo: u32,
    hi: u32,
}

impl FieldRange {
    /// Matches every value.
    pub const ANY: Self = Self { lo: 0, hi: u32::MAX };

    /// The range `lo..=hi`, or `None` when `lo > hi`.
    pub const fn new(lo: u32, hi: u32) -> Option<Self> {
        if lo <= hi { Some(Self { lo, hi }) } else { None }
    }

    /// Exactly `value`.
    pub const fn exact(value: u32) -> Self {
        Self { lo: value, hi: value }
    }

    /// The addresses of the prefix `value/len` of a 32-bit field; host bits of `value` are
    /// ignored. `len` above 32 is treated as 32.
    pub const fn prefix(value: u32, len: u8) -> Self {
        if len == 0 {
            return Self::ANY;
        }
        let len = if len > 32 { 32 } else { len as u32 };
        // A shift by 32 would overflow (and panic in debug builds, as the fuzzer found).
        let host = if len == 32 { 0 } else { u32::MAX >> len };
        Self { lo: value & !host, hi: (value & !host) | host }
    }

    /// The lowest value in the range.
    pub const fn lo(self) -> u32 {
        self.lo
    }

    /// The highest value in the range.
    pub const fn hi(self) -> u32 {
        self.hi
    }

    /// Whether `value` lies in the range.
    pub const fn contains(self, value: u32) -> bool {
        self.lo <= value && value <= self.hi
    }

    /// Whether the two ranges share a value.
    pub const fn overlaps(self, other: Self) -> bool {
        self.lo <= other.hi && other.lo <= self.hi
    }

    /// The number of low bits not fixed across the range: the range lies inside one aligned
    /// block of `2^free_bits` values. 0 for a single value, 32 for a range that crosses the
    /// top bit.
    pub const fn free_bits(self) -> u32 {
        32 - (self.lo ^ self.hi).leading_zeros()
    }
}

/// The four 32-bit word ranges of the IPv6 prefix `addr/len`, most significant first.
pub fn prefix128(addr: u128, len: u8) -> [FieldRange; 4] {
    let len = u32::from(len.min(128));
    let mut out = [FieldRange::ANY; 4];
    for (i, slot) in out.iter_mut().enumerate() {
        let word_start = 32 * i as u32;
        let word = (addr >> (96 - word_start)) as u32;
        let bits = len.saturating_sub(word_start).min(32) as u8;
        *slot = FieldRange::prefix(word, bits);
    }
    out
}

/// Splits an IPv6 address into four 32-bit words, most significant first: the key form of an
/// address for a classifier built with [`prefix128`] fields.
pub fn words128(addr: u128) -> [u32; 4] {
    [(addr >> 96) as u32, (addr >> 64) as u32, (addr >> 32) as u32, addr as u32]
}

/// A rule over `D` fields. A key matches when every field's value lies in the rule's range.
/// Its priority is its position in the list the classifier is built from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rule<const D: usize> {
    /// One range per field, in the classifier's field order.
    pub fields: [FieldRange; D],
}

impl<const D: usize> Rule<D> {
    /// A rule that matches every key.
    pub const ANY: Self = Self { fields: [FieldRange::ANY; D] };

    /// Whether `key` matches every field.
    pub fn matches(&self, key: &[u32; D]) -> bool {
        self.fields.iter().zip(key).all(|(f, &k)| f.contains(k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_masks_host_bits() {
        let r = FieldRange::prefix(0xC612_0A0B, 24);
        assert_eq!((r.lo(), r.hi()), (0xC612_0A00, 0xC612_0AFF));
        assert_eq!(FieldRange::prefix(7, 32), FieldRange::exact(7));
        assert_eq!(FieldRange::prefix(7, 0), FieldRange::ANY);
        assert_eq!(FieldRange::prefix(7, 40), FieldRange::exact(7));
        assert_eq!(FieldRange::prefix(0xFFFF_FFFF, 1).lo(), 0x8000_0000);
    }

    #[test]
    fn free_bits_counts_unfixed_low_bits() {
        assert_eq!(FieldRange::exact(80).free_bits(), 0);
        assert_eq!(FieldRange::ANY.free_bits(), 32);
        assert_eq!(FieldRange::prefix(0x0A00_0000, 8).free_bits(), 24);
        // 1023..=1024 crosses a 2^11 boundary... and the 2^10 one: lo^hi = 0x7FF.
        assert_eq!(FieldRange::new(1023, 1024).map(FieldRange::free_bits), Some(11));
        assert_eq!(FieldRange::new(5, 4), None);
    }

    #[test]
    fn prefix128_splits_into_words() {
        let addr: u128 = 0x2001_0db8_0010_0000_0000_0000_0000_0011;
        let w = prefix128(addr, 48);
        assert_eq!(w[0], FieldRange::exact(0x2001_0db8));
        assert_eq!(w[1], FieldRange::prefix(0x0010_0000, 16));
        assert_eq!(w[2], FieldRange::ANY);
        assert_eq!(w[3], FieldRange::ANY);
        let host = prefix128(addr, 128);
        assert_eq!(host.map(|r| r.lo()), words128(addr));
        assert_eq!(prefix128(addr, 0), [FieldRange::ANY; 4]);
        let rule = Rule { fields: prefix128(addr, 48) };
        assert!(rule.matches(&words128(addr)));
        assert!(rule.matches(&words128(addr | 0xFFFF_FFFF)));
        assert!(!rule.matches(&words128(addr ^ (1 << 80))));
        assert!(rule.matches(&words128(addr ^ (1 << 79))));
    }
}

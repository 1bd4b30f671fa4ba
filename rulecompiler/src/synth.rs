//! Synthetic keys for demos, tests and benchmarks: deterministic points inside rules.

use crate::classifier::Rule;

/// SplitMix64: a tiny, fast, deterministic generator. Not for anything secret.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from a seed; the same seed gives the same sequence.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `lo..=hi`.
    pub fn in_range(&mut self, lo: u32, hi: u32) -> u32 {
        let span = u64::from(hi - lo) + 1;
        lo + ((u128::from(self.next_u64()) * u128::from(span)) >> 64) as u32
    }

    /// An index below `n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// `count` keys, each a random point of a random rule (or, when `rules` is empty, of the whole
/// space), the way ClassBench's trace generator draws headers without locality.
pub fn keys_in_rules<const D: usize>(rules: &[Rule<D>], count: usize, seed: u64) -> Vec<[u32; D]> {
    let mut rng = SplitMix64::new(seed);
    (0..count)
        .map(|_| {
            let rule = if rules.is_empty() { Rule::ANY } else { rules[rng.below(rules.len())] };
            rule.fields.map(|f| rng.in_range(f.lo(), f.hi()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classifier::FieldRange;

    #[test]
    fn keys_fall_inside_their_rules_and_are_deterministic() {
        let rules = [Rule { fields: [FieldRange::prefix(0x0A00_0000, 8), FieldRange::exact(80)] }];
        let keys = keys_in_rules(&rules, 1000, 7);
        assert!(keys.iter().all(|k| rules[0].matches(k)));
        assert_eq!(keys, keys_in_rules(&rules, 1000, 7));
        assert_ne!(keys, keys_in_rules(&rules, 1000, 8));
        let mut rng = SplitMix64::new(1);
        assert!((0..1000).all(|_| rng.in_range(5, 5) == 5));
        assert!((0..1000).map(|_| rng.in_range(0, u32::MAX)).any(|v| v > u32::MAX / 2));
    }
}

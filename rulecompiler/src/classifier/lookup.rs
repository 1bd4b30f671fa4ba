//! Lookup: single and batched.
//!
//! Both walk the trees in order of their best rule and skip a tree whose best rule cannot beat
//! the match found so far; a lookup bounded from below (`classify_after`) also skips a tree
//! whose worst rule lies below its bound. The batch path walks [`BATCH_WIDTH`] keys through
//! one tree in lockstep, a level at a time, so the cache misses of different keys overlap
//! instead of queueing behind each other; results are identical to the single path.

use super::{BATCH_WIDTH, Classifier, RuleId, Slot};
use crate::hint::prefetch;

/// Internal "no match" marker: worse than every rule id.
const NONE: RuleId = RuleId::MAX;

impl<const D: usize, T> Classifier<D, T> {
    /// The highest-priority (lowest index) rule matching `key`, or `None`.
    pub fn classify(&self, key: &[u32; D]) -> Option<RuleId> {
        let (best, _) = self.finish::<false>(&self.trees, key, (NONE, 0), 0);
        (best != NONE).then_some(best)
    }

    /// The first rule matching `key` whose index is above `after` (all rules when `None`).
    /// Used by the policy lookup to continue past `log` and `pass` rules.
    pub fn classify_after(&self, key: &[u32; D], after: Option<RuleId>) -> Option<RuleId> {
        self.classify_after_tagged(key, after).map(|(id, _)| id)
    }

    /// [`Classifier::classify_after`] with the matched rule's tag ([`Classifier::with_tags`]),
    /// read from the leaf line the match was.
    pub fn classify_after_tagged(&self, key: &[u32; D], after: Option<RuleId>) -> Option<(RuleId, &T)> {
        let (best, at) = match after {
            None => self.finish::<false>(&self.trees, key, (NONE, 0), 0),
            // No rule is above the largest id.
            Some(RuleId::MAX) => return None,
            Some(a) => self.finish::<true>(&self.trees, key, (NONE, 0), a + 1),
        };
        (best != NONE).then(|| (best, &self.leaves[at].tag))
    }

    /// Classifies every key of `keys` into the matching position of `out`, like
    /// [`Classifier::classify`] on each. Any batch length works; internally keys go in groups
    /// of [`BATCH_WIDTH`].
    ///
    /// # Panics
    /// When `out` is shorter than `keys`.
    pub fn classify_batch(&self, keys: &[[u32; D]], out: &mut [Option<RuleId>]) {
        assert!(
            out.len() >= keys.len(),
            "classify_batch: out ({}) shorter than keys ({})",
            out.len(),
            keys.len()
        );
        for (keys, out) in keys.chunks(BATCH_WIDTH).zip(out.chunks_mut(BATCH_WIDTH)) {
            self.classify_group(keys, out);
        }
    }

    /// One group of at most `BATCH_WIDTH` keys.
    ///
    /// The first tree (every key walks it, and it holds most rules) is walked by the whole
    /// group in lockstep, one level per pass, in two sweeps: compute every key's child and
    /// prefetch it, then load the children. Then every key's leaf is prefetched and scanned.
    /// The later trees are small and most keys skip them (their best rule cannot beat the
    /// match found), so each key finishes them on its own, as [`Classifier::classify`] does:
    /// lockstep bookkeeping there cost more than it saved (measured in `docs/design/classifier.md`).
    fn classify_group(&self, keys: &[[u32; D]], out: &mut [Option<RuleId>]) {
        let n = keys.len();
        let Some((first, rest)) = self.trees.split_first() else {
            out[..n].fill(None);
            return;
        };
        let mut slot = [first.root; BATCH_WIDTH];
        let mut next = [0usize; BATCH_WIDTH];
        let mut active = [0u8; BATCH_WIDTH];
        let mut walking = 0;
        if first.root.is_node() {
            for (i, a) in active[..n].iter_mut().enumerate() {
                *a = i as u8;
            }
            walking = n;
        }
        while walking > 0 {
            for &i in &active[..walking] {
                let i = i as usize;
                next[i] = slot[i].child(&keys[i]);
                prefetch(&self.slots[next[i]]);
            }
            let mut still = 0;
            for j in 0..walking {
                let i = active[j] as usize;
                slot[i] = self.slots[next[i]];
                active[still] = i as u8;
                still += usize::from(slot[i].is_node());
            }
            walking = still;
        }
        for s in &slot[..n] {
            let (start, count) = s.leaf_range();
            if count > 0 {
                prefetch(&self.leaves[start]);
            }
        }
        for i in 0..n {
            let found = self.scan::<false>(slot[i], &keys[i], (NONE, 0), 0);
            let (best, _) = self.finish::<false>(rest, &keys[i], found, 0);
            out[i] = (best != NONE).then_some(best);
        }
    }

    /// Walks `trees` for one key, starting from the match `found` so far (the best rule id and
    /// its index in `leaves`), considering only rules numbered `floor` or above when `BOUNDED`
    /// (the unbounded instantiation compiles the floor check away: it is the hot path).
    #[inline(always)]
    fn finish<const BOUNDED: bool>(
        &self,
        trees: &[super::Tree],
        key: &[u32; D],
        mut found: (RuleId, usize),
        floor: RuleId,
    ) -> (RuleId, usize) {
        for tree in trees {
            if tree.min_rule >= found.0 {
                break;
            }
            // Every rule of this tree lies below the floor (a lookup continuing past a `log`
            // or `pass` match): nothing in it can be the answer.
            if BOUNDED && tree.max_rule < floor {
                continue;
            }
            let mut slot = tree.root;
            while slot.is_node() {
                slot = self.slots[slot.child(key)];
            }
            found = self.scan::<BOUNDED>(slot, key, found, floor);
        }
        found
    }

    /// Scans a leaf for the first rule numbered `floor` or above that matches `key` and beats
    /// the match `found` so far: that rule's id and index in `leaves`, or `found`.
    #[inline(always)]
    fn scan<const BOUNDED: bool>(
        &self,
        leaf: Slot,
        key: &[u32; D],
        found: (RuleId, usize),
        floor: RuleId,
    ) -> (RuleId, usize) {
        let (start, count) = leaf.leaf_range();
        for (i, rule) in self.leaves[start..start + count].iter().enumerate() {
            if rule.id >= found.0 {
                break;
            }
            if (!BOUNDED || rule.id >= floor) && rule.matches(key) {
                return (rule.id, start + i);
            }
        }
        found
    }
}

/// The work one lookup did: for tuning and for humans (`margay classbench --cost`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LookupCost {
    /// Trees walked (not skipped by the best-rule bound).
    pub trees: u32,
    /// Internal slots stepped through.
    pub steps: u32,
    /// Leaf rules compared against the key.
    pub rules: u32,
}

impl<const D: usize, T> Classifier<D, T> {
    /// Classifies `key` like [`Classifier::classify`] and reports the work it took.
    pub fn classify_with_cost(&self, key: &[u32; D]) -> (Option<RuleId>, LookupCost) {
        let mut cost = LookupCost::default();
        let mut best = NONE;
        for tree in self.trees.iter() {
            if tree.min_rule >= best {
                break;
            }
            cost.trees += 1;
            let mut slot = tree.root;
            while slot.is_node() {
                cost.steps += 1;
                slot = self.slots[slot.child(key)];
            }
            let (start, count) = slot.leaf_range();
            for rule in &self.leaves[start..start + count] {
                if rule.id >= best {
                    break;
                }
                cost.rules += 1;
                if rule.matches(key) {
                    best = rule.id;
                    break;
                }
            }
        }
        ((best != NONE).then_some(best), cost)
    }
}

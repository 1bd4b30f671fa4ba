//! Lookup: single and batched.
//!
//! Both walk the trees in order of their best rule and skip a tree whose best rule cannot beat
//! the match found so far. The batch path walks [`BATCH_WIDTH`] keys through one tree in
//! lockstep, a level at a time, so the cache misses of different keys overlap instead of
//! queueing behind each other; results are identical to the single path.

use super::prefetch::prefetch;
use super::{BATCH_WIDTH, Classifier, RuleId, Slot};

/// Internal "no match" marker: worse than every rule id.
const NONE: RuleId = RuleId::MAX;

impl<const D: usize> Classifier<D> {
    /// The highest-priority (lowest index) rule matching `key`, or `None`.
    pub fn classify(&self, key: &[u32; D]) -> Option<RuleId> {
        let mut best = NONE;
        for tree in self.trees.iter() {
            if tree.min_rule >= best {
                break;
            }
            let mut slot = tree.root;
            while slot.is_node() {
                slot = self.slots[slot.child(key)];
            }
            best = self.scan(slot, key, best);
        }
        (best != NONE).then_some(best)
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
    /// Per tree: every live key steps one level per pass, in two sweeps: first compute each
    /// key's child and prefetch it, then load the children and keep the keys still at a cut.
    /// Then prefetch every key's leaf and scan the leaves. Nothing a key does waits on another
    /// key's miss.
    fn classify_group(&self, keys: &[[u32; D]], out: &mut [Option<RuleId>]) {
        let n = keys.len();
        let mut best = [NONE; BATCH_WIDTH];
        let mut slot = [Slot::EMPTY; BATCH_WIDTH];
        let mut next = [0usize; BATCH_WIDTH];
        for tree in self.trees.iter() {
            // The keys this tree can still improve on.
            let mut live = 0usize;
            let mut lanes = [0u8; BATCH_WIDTH];
            for (i, &b) in best[..n].iter().enumerate() {
                lanes[live] = i as u8;
                live += usize::from(tree.min_rule < b);
                slot[i] = tree.root;
            }
            if live == 0 {
                // Trees are sorted by best rule: no later tree can help either.
                break;
            }
            let mut walking = if tree.root.is_node() { live } else { 0 };
            let mut active = lanes;
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
            for &i in &lanes[..live] {
                let (start, count) = slot[i as usize].leaf_range();
                if count > 0 {
                    prefetch(&self.leaves[start]);
                }
            }
            for &i in &lanes[..live] {
                let i = i as usize;
                best[i] = self.scan(slot[i], &keys[i], best[i]);
            }
        }
        for (o, &b) in out.iter_mut().zip(&best[..n]) {
            *o = (b != NONE).then_some(b);
        }
    }

    /// Scans a leaf for the first rule matching `key` that beats `best`.
    #[inline(always)]
    fn scan(&self, leaf: Slot, key: &[u32; D], best: RuleId) -> RuleId {
        let (start, count) = leaf.leaf_range();
        for rule in &self.leaves[start..start + count] {
            if rule.id >= best {
                break;
            }
            if rule.matches(key) {
                return rule.id;
            }
        }
        best
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

impl<const D: usize> Classifier<D> {
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

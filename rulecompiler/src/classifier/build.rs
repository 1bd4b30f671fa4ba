//! Building the forest: greedy multi-bit cuts without replication.
//!
//! At a node with rules `R`, for every field `d` and every shift `s` at which some rule first
//! becomes whole (a rule is whole under a cut at shift `s` when `lo >> s == hi >> s`, i.e. its
//! [`FieldRange::free_bits`] is at most `s`), the builder scores the cut on bits
//! `s .. s + w` of field `d`:
//!
//! - `w` covers the bits that still differ among the whole rules, capped by the fan-out budget
//!   (`space_factor * |R|` children) and [`BuildParams::max_cut_bits`];
//! - the cost is the expected size of the child a rule lands in (`sum(c_i^2) / sum(c_i)`), plus
//!   `defer_cost` per rule the cut would split, which is deferred to the next tree.
//!
//! The cheapest cut wins (ties: lower field, then lower shift), so the build is deterministic.
//! A node with no cut that separates its rules into two or more children becomes a leaf.
//! Rules keep ascending id order through every partition, so leaves come out sorted by
//! priority and a leaf scan can stop at its first match.

use super::{BuildError, BuildParams, Classifier, ClassifierStats, LeafRule, Rule, RuleId, Slot, Tree};

/// A chosen cut.
#[derive(Debug, Clone, Copy)]
struct Cut {
    dim: usize,
    shift: u32,
    bits: u32,
}

struct Builder<'a, const D: usize> {
    rules: &'a [Rule<D>],
    params: &'a BuildParams,
    /// `free_bits` of every rule's every field, computed once.
    free: Vec<[u8; D]>,
    slots: Vec<Slot>,
    leaves: Vec<LeafRule<D>>,
    /// Rules split by a cut of the tree being built: they go to the next tree.
    deferred: Vec<RuleId>,
    allow_defer: bool,
    /// Scratch for scoring: counts per child, and which children were touched.
    counts: Vec<u32>,
    touched: Vec<u32>,
    nodes: usize,
    max_leaf: usize,
    max_depth: usize,
}

pub(super) fn build<const D: usize>(
    rules: &[Rule<D>],
    params: &BuildParams,
) -> Result<Classifier<D>, BuildError> {
    if D == 0 || D > 127 {
        return Err(BuildError::BadFieldCount(D));
    }
    if rules.len() >= u32::MAX as usize {
        return Err(BuildError::TooManyRules(rules.len()));
    }
    if params.leaf_size == 0 {
        return Err(BuildError::BadParams("leaf_size must be at least 1"));
    }
    if !(1..=super::MAX_CUT_BITS).contains(&params.max_cut_bits) {
        return Err(BuildError::BadParams("max_cut_bits must be 1..=16"));
    }
    if params.max_trees == 0 || params.space_factor == 0 {
        return Err(BuildError::BadParams("max_trees and space_factor must be at least 1"));
    }
    if params.defer_cost.is_nan() || params.defer_cost < 0.0 {
        return Err(BuildError::BadParams("defer_cost must be a non-negative number"));
    }

    let mut b = Builder {
        rules,
        params,
        free: rules.iter().map(|r| r.fields.map(|f| f.free_bits() as u8)).collect(),
        slots: Vec::new(),
        leaves: Vec::with_capacity(rules.len()),
        deferred: Vec::new(),
        allow_defer: true,
        counts: vec![0; 1 << params.max_cut_bits],
        touched: Vec::new(),
        nodes: 0,
        max_leaf: 0,
        max_depth: 0,
    };

    let mut trees = Vec::new();
    let mut rules_per_tree = Vec::new();
    let mut pending: Vec<RuleId> = (0..rules.len() as RuleId).collect();
    while let Some(&min_rule) = pending.first() {
        b.allow_defer = trees.len() + 1 < params.max_trees;
        // The tree's rules are the leaf rules it appends, each once. (`node` uses `pending`
        // as scratch, so its worst rule is read from those leaves, not from `pending`.)
        let first_leaf = b.leaves.len();
        let root = b.node(&mut pending, 0)?;
        let max_rule = b.leaves[first_leaf..].iter().map(|r| r.id).max().unwrap_or(min_rule);
        let mut next = std::mem::take(&mut b.deferred);
        next.sort_unstable();
        rules_per_tree.push(pending.len() - next.len());
        trees.push(Tree { root, min_rule, max_rule });
        pending = next;
    }
    if b.slots.len() > u32::MAX as usize {
        return Err(BuildError::TooLarge("slots"));
    }

    let memory_bytes = trees.len() * size_of::<Tree>()
        + b.slots.len() * size_of::<Slot>()
        + b.leaves.len() * size_of::<LeafRule<D>>();
    let stats = ClassifierStats {
        rules: rules.len(),
        trees: trees.len(),
        rules_per_tree,
        best_rule_per_tree: trees.iter().map(|t| t.min_rule).collect(),
        worst_rule_per_tree: trees.iter().map(|t| t.max_rule).collect(),
        slots: b.slots.len(),
        nodes: b.nodes,
        leaves: b.slots.iter().filter(|s| !s.is_node() && s.leaf_range().1 > 0).count()
            + trees.iter().filter(|t| !t.root.is_node()).count(),
        max_leaf: b.max_leaf,
        max_depth: b.max_depth,
        memory_bytes,
    };
    Ok(Classifier {
        trees: trees.into_boxed_slice(),
        slots: b.slots.into_boxed_slice(),
        leaves: b.leaves.into_boxed_slice(),
        stats,
    })
}

impl<const D: usize> Builder<'_, D> {
    /// Builds the subtree for `ids` (ascending) and returns its slot. `ids` is used as scratch.
    fn node(&mut self, ids: &mut [RuleId], depth: usize) -> Result<Slot, BuildError> {
        if ids.len() <= self.params.leaf_size {
            return self.leaf(ids);
        }
        let Some(cut) = self.choose(ids) else {
            return self.leaf(ids);
        };
        self.nodes += 1;
        self.max_depth = self.max_depth.max(depth + 1);

        // Partition: stable counting sort of the whole rules by child; split rules deferred.
        let fanout = 1usize << cut.bits;
        let mask = (fanout - 1) as u32;
        let mut starts = vec![0u32; fanout + 1];
        let mut kept = Vec::with_capacity(ids.len());
        for &id in ids.iter() {
            if u32::from(self.free[id as usize][cut.dim]) <= cut.shift {
                let child = (self.rules[id as usize].fields[cut.dim].lo() >> cut.shift) & mask;
                starts[child as usize + 1] += 1;
                kept.push(id);
            } else {
                self.deferred.push(id);
            }
        }
        for i in 0..fanout {
            starts[i + 1] += starts[i];
        }
        let mut fill = starts.clone();
        let sorted = &mut ids[..kept.len()];
        for &id in &kept {
            let child = (self.rules[id as usize].fields[cut.dim].lo() >> cut.shift) & mask;
            sorted[fill[child as usize] as usize] = id;
            fill[child as usize] += 1;
        }

        let base = self.slots.len();
        let base32 = u32::try_from(base).map_err(|_| BuildError::TooLarge("slots"))?;
        self.slots.resize(base + fanout, Slot::EMPTY);
        for child in 0..fanout {
            let (lo, hi) = (starts[child] as usize, starts[child + 1] as usize);
            if lo < hi {
                let slot = self.node(&mut sorted[lo..hi], depth + 1)?;
                self.slots[base + child] = slot;
            }
        }
        Ok(Slot::node(cut.dim, cut.shift, mask, base32))
    }

    fn leaf(&mut self, ids: &[RuleId]) -> Result<Slot, BuildError> {
        if ids.len() > Slot::MAX_LEAF {
            return Err(BuildError::TooLarge("leaf"));
        }
        let start = u32::try_from(self.leaves.len()).map_err(|_| BuildError::TooLarge("leaves"))?;
        self.leaves.extend(ids.iter().map(|&id| LeafRule::new(&self.rules[id as usize], id)));
        self.max_leaf = self.max_leaf.max(ids.len());
        Ok(Slot::leaf(start, ids.len() as u32))
    }

    /// The cheapest cut for `ids`, or `None` when no cut separates them.
    fn choose(&mut self, ids: &[RuleId]) -> Option<Cut> {
        let n = ids.len();
        let budget = (self.params.space_factor.saturating_mul(n)).max(2);
        let budget_bits = (usize::BITS - 1 - budget.leading_zeros()).min(self.params.max_cut_bits);
        let mut best: Option<(f64, Cut)> = None;
        let may_defer = self.allow_defer && n > self.params.defer_min_rules;

        for dim in 0..D {
            // Rules by free bits, so the whole set at shift s grows as s rises.
            let mut hist = [0u32; 34];
            for &id in ids {
                hist[self.free[id as usize][dim] as usize + 1] += 1;
            }
            let mut by_free = vec![0 as RuleId; n];
            let mut pos = hist;
            for i in 0..33 {
                pos[i + 1] += pos[i];
            }
            let offsets = pos;
            for &id in ids {
                let f = self.free[id as usize][dim] as usize;
                by_free[pos[f] as usize] = id;
                pos[f] += 1;
            }

            let mut differ = 0u32;
            let mut reference: Option<u32> = None;
            for shift in 0..32u32 {
                let (from, to) = (offsets[shift as usize] as usize, offsets[shift as usize + 1] as usize);
                if from == to {
                    continue;
                }
                for &id in &by_free[from..to] {
                    let lo = self.rules[id as usize].fields[dim].lo();
                    let r = *reference.get_or_insert(lo);
                    differ |= lo ^ r;
                }
                let whole = to;
                let split = n - whole;
                if split > 0 && !may_defer {
                    continue;
                }
                let top = 32 - differ.leading_zeros();
                if top <= shift {
                    continue;
                }
                let bits = (top - shift).min(budget_bits);
                let mask = (1u32 << bits) - 1;
                let defer_cost = self.params.defer_cost * split as f64;
                if let Some((c, _)) = best {
                    // Even a perfect spread costs at least 1 per whole rule's child.
                    if defer_cost + 1.0 >= c {
                        continue;
                    }
                }
                let mut sum_sq = 0u64;
                for &id in &by_free[..whole] {
                    let child = (self.rules[id as usize].fields[dim].lo() >> shift) & mask;
                    let c = &mut self.counts[child as usize];
                    if *c == 0 {
                        self.touched.push(child);
                    }
                    sum_sq += 2 * u64::from(*c) + 1;
                    *c += 1;
                }
                let children = self.touched.len();
                for &t in &self.touched {
                    self.counts[t as usize] = 0;
                }
                self.touched.clear();
                if children < 2 {
                    continue;
                }
                let cost = sum_sq as f64 / whole as f64 + defer_cost;
                if best.is_none_or(|(c, _)| cost < c) {
                    best = Some((cost, Cut { dim, shift, bits }));
                }
            }
        }
        best.map(|(_, cut)| cut)
    }
}

//! The classifier engine: first-match lookup over `D` range fields.
//!
//! A [`Classifier`] is a small forest of multi-bit cut trees (ByteCuts-style: cuts on bit
//! windows, no rule replication), laid out flat:
//!
//! - `slots`: one `u64` per tree slot. An internal slot holds the next cut (field, shift, mask)
//!   and the index of its first child, so one load per level is all a walk needs; a leaf slot
//!   holds a range of `leaves`.
//! - `leaves`: each rule exactly once, as `lo` and `span` per field, grouped by leaf and sorted by
//!   priority inside a leaf.
//!
//! A rule sits in a tree only where every cut on its path leaves it whole; a rule that a cut
//! would split is deferred to the next tree. Lookup walks the trees in order of their best rule
//! and stops once no later tree can hold a better match. The design and its measurements are
//! in `docs/design/classifier.md`.
//!
//! The structure is immutable once built (`Send + Sync`, no interior mutability), so the
//! dataplane can publish it behind an atomic pointer and swap it whole.

mod build;
mod field;
mod lookup;

pub use field::{FieldRange, Rule, RuleId, prefix128, words128};
pub use lookup::LookupCost;

/// Widest cut the builder makes, in bits. The slot format stores the mask in 16 bits.
pub const MAX_CUT_BITS: u32 = 16;

/// Keys classified together by [`Classifier::classify_batch`] before moving to the next tree.
pub const BATCH_WIDTH: usize = 16;

/// Tuning knobs of the builder. The defaults are what `docs/design/classifier.md` measured best on
/// the ClassBench sets; they are not part of the lookup contract.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildParams {
    /// A node with at most this many rules becomes a leaf.
    pub leaf_size: usize,
    /// A node with `n` rules cuts into at most `space_factor * n` children (rounded down to a
    /// power of two, at least 2, at most `2^max_cut_bits`).
    pub space_factor: usize,
    /// Widest single cut in bits (1..=16).
    pub max_cut_bits: u32,
    /// Most trees in the forest. The last tree defers nothing: a node it cannot cut without
    /// splitting a rule becomes a (possibly long) leaf.
    pub max_trees: usize,
    /// Cost of deferring one rule to a later tree, in units of one rule of expected leaf scan.
    pub defer_cost: f64,
    /// Only a node with more than this many rules may defer rules to a later tree; a smaller
    /// node cuts only where every rule stays whole, or becomes a leaf.
    pub defer_min_rules: usize,
}

impl Default for BuildParams {
    fn default() -> Self {
        Self {
            leaf_size: 32,
            space_factor: 4,
            max_cut_bits: MAX_CUT_BITS,
            max_trees: 8,
            defer_cost: 2.0,
            defer_min_rules: 32,
        }
    }
}

/// What a build produced: sizes for humans and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassifierStats {
    /// Rules the classifier was built from.
    pub rules: usize,
    /// Trees in the forest.
    pub trees: usize,
    /// Rules held by each tree, in lookup order.
    pub rules_per_tree: Vec<usize>,
    /// The best (lowest) rule id of each tree: a lookup skips a tree once it holds a better
    /// match.
    pub best_rule_per_tree: Vec<RuleId>,
    /// The worst (highest) rule id of each tree: a lookup that continues past a `log` or
    /// `pass` match ([`Classifier::classify_after`]) skips a tree whose rules all lie at or
    /// below its bound.
    pub worst_rule_per_tree: Vec<RuleId>,
    /// Tree slots (internal and leaf), 8 bytes each.
    pub slots: usize,
    /// Internal (cut) nodes.
    pub nodes: usize,
    /// Non-empty leaves.
    pub leaves: usize,
    /// Rules in the longest leaf.
    pub max_leaf: usize,
    /// Most cuts on any root-to-leaf path.
    pub max_depth: usize,
    /// Bytes of the built lookup structure.
    pub memory_bytes: usize,
}

/// One tree of the forest: its root slot and the best (lowest) and worst (highest) rule ids
/// it holds.
#[derive(Debug, Clone, Copy)]
struct Tree {
    root: Slot,
    min_rule: RuleId,
    max_rule: RuleId,
}

/// A tree slot, packed into 64 bits.
///
/// ```text
/// internal: bit 63 = 1 | dim: bits 56..62 | shift: bits 48..52 | mask: bits 32..47 | base: bits 0..31
/// leaf:     bit 63 = 0 | count: bits 32..55                                       | start: bits 0..31
/// ```
/// An empty slot is a leaf with count 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(transparent)]
struct Slot(u64);

const _: () = assert!(size_of::<Slot>() == 8);

impl Slot {
    const NODE: u64 = 1 << 63;
    const EMPTY: Slot = Slot(0);
    /// Longest leaf the slot format can hold.
    const MAX_LEAF: usize = (1 << 24) - 1;

    fn leaf(start: u32, count: u32) -> Self {
        Slot(u64::from(start) | (u64::from(count) << 32))
    }

    fn node(dim: usize, shift: u32, mask: u32, base: u32) -> Self {
        Slot(
            Self::NODE
                | ((dim as u64) << 56)
                | (u64::from(shift) << 48)
                | (u64::from(mask) << 32)
                | u64::from(base),
        )
    }

    #[inline(always)]
    fn is_node(self) -> bool {
        self.0 & Self::NODE != 0
    }

    /// The index of the child slot `key` goes to. Only for internal slots.
    #[inline(always)]
    fn child<const D: usize>(self, key: &[u32; D]) -> usize {
        let dim = ((self.0 >> 56) & 0x7F) as usize;
        let shift = ((self.0 >> 48) & 0x1F) as u32;
        let mask = ((self.0 >> 32) & 0xFFFF) as u32;
        let base = self.0 as u32 as usize;
        base + ((key[dim] >> shift) & mask) as usize
    }

    /// `(start, count)` of a leaf slot's rules in `leaves`.
    #[inline(always)]
    fn leaf_range(self) -> (usize, usize) {
        (self.0 as u32 as usize, ((self.0 >> 32) & 0xFF_FFFF) as usize)
    }
}

/// A rule as stored in a leaf: a key matches when `key[i] - lo[i] <= span[i]` (wrapping) for
/// every field, one compare per field. `tag` is the caller's data for the rule
/// ([`Classifier::with_tags`]); `()` by default, which takes no space.
#[derive(Debug, Clone, Copy)]
struct LeafRule<const D: usize, T = ()> {
    lo: [u32; D],
    span: [u32; D],
    id: RuleId,
    tag: T,
}

impl<const D: usize> LeafRule<D> {
    fn new(rule: &Rule<D>, id: RuleId) -> Self {
        Self { lo: rule.fields.map(|f| f.lo()), span: rule.fields.map(|f| f.hi() - f.lo()), id, tag: () }
    }
}

impl<const D: usize, T> LeafRule<D, T> {
    #[inline(always)]
    fn matches(&self, key: &[u32; D]) -> bool {
        let mut ok = true;
        for ((&k, &lo), &span) in key.iter().zip(&self.lo).zip(&self.span) {
            ok &= k.wrapping_sub(lo) <= span;
        }
        ok
    }
}

/// A compiled first-match classifier over `D` fields. Build it with [`Classifier::build`],
/// look up with [`Classifier::classify`] or [`Classifier::classify_batch`].
///
/// `T` is data the caller keeps with each rule ([`Classifier::with_tags`]), returned by
/// [`Classifier::classify_after_tagged`] from the leaf line the match was read from, so a
/// caller needs no second random access (an array indexed by rule id) to act on a match.
#[derive(Debug, Clone)]
pub struct Classifier<const D: usize, T = ()> {
    trees: Box<[Tree]>,
    slots: Box<[Slot]>,
    leaves: Box<[LeafRule<D, T>]>,
    stats: ClassifierStats,
}

/// Why a rule list cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The classifier numbers rules with `u32` and keeps one reserved value.
    #[error("{0} rules is more than the classifier can number (at most {max})", max = u32::MAX - 1)]
    TooManyRules(usize),
    /// The field count is outside what the slot format encodes.
    #[error("{0} fields per rule; the classifier supports 1 to 127")]
    BadFieldCount(usize),
    /// A parameter is out of its range.
    #[error("bad build parameter: {0}")]
    BadParams(&'static str),
    /// A leaf or the slot array outgrew the 32-bit indices of the flat layout.
    #[error("the compiled structure outgrew its 32-bit indices ({0})")]
    TooLarge(&'static str),
}

impl<const D: usize> Classifier<D> {
    /// Compiles `rules` (in priority order: index 0 wins) with default parameters.
    pub fn build(rules: &[Rule<D>]) -> Result<Self, BuildError> {
        Self::build_with(rules, &BuildParams::default())
    }

    /// Compiles `rules` with explicit parameters. Deterministic: the same rules and parameters
    /// give the same structure.
    pub fn build_with(rules: &[Rule<D>], params: &BuildParams) -> Result<Self, BuildError> {
        build::build(rules, params)
    }

    /// The same classifier with `tag(id)` kept beside each rule `id` in the leaves.
    pub fn with_tags<U>(self, mut tag: impl FnMut(RuleId) -> U) -> Classifier<D, U> {
        let leaves: Box<[LeafRule<D, U>]> = self
            .leaves
            .iter()
            .map(|r| LeafRule { lo: r.lo, span: r.span, id: r.id, tag: tag(r.id) })
            .collect();
        let mut stats = self.stats;
        stats.memory_bytes = stats.memory_bytes - self.leaves.len() * size_of::<LeafRule<D>>()
            + leaves.len() * size_of::<LeafRule<D, U>>();
        Classifier { trees: self.trees, slots: self.slots, leaves, stats }
    }
}

impl<const D: usize, T> Classifier<D, T> {
    /// Sizes of the built structure.
    pub fn stats(&self) -> &ClassifierStats {
        &self.stats
    }

    /// Bytes of the built lookup structure (trees, slots and leaf rules).
    pub fn memory_bytes(&self) -> usize {
        self.stats.memory_bytes
    }

    /// Number of rules compiled in.
    pub fn rule_count(&self) -> usize {
        self.stats.rules
    }
}

//! The reference matcher: a deliberately naive linear first-match scan.
//!
//! It is the oracle the compiled classifier is tested against, so it stays obviously correct:
//! no indexing, no early exits beyond the first match, no cleverness.

use crate::classifier::{Rule, RuleId};

/// First-match over a rule list, by walking it.
#[derive(Debug, Clone)]
pub struct LinearMatcher<const D: usize> {
    rules: Vec<Rule<D>>,
}

impl<const D: usize> LinearMatcher<D> {
    /// A matcher over `rules`, in priority order.
    pub fn new(rules: &[Rule<D>]) -> Self {
        Self { rules: rules.to_vec() }
    }

    /// The index of the first rule that matches `key`.
    pub fn classify(&self, key: &[u32; D]) -> Option<RuleId> {
        self.rules.iter().position(|r| r.matches(key)).map(|i| i as RuleId)
    }
}

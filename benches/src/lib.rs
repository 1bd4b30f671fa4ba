//! Margay's benchmarks.
//!
//! - `benches/classifier.rs` (criterion): classifier build, single and batch lookup by rule set
//!   and rule count, reported in keys per second. `cargo bench -p margay-benches`.
//! - `classbench-vs-dpdk.py`: Margay's classifier and DPDK's rte_acl side by side on the
//!   same ClassBench files, with ratios. Figures go to `docs/benchmarks.md`.
//!
//! - `benches/policy.rs` (criterion): the policy issue's scale case ([`policygen`]): parse,
//!   compile, and decisions per second.
//!
//! - `benches/throughput.rs` ([`harness`]): Margay side by side with Linux forwarding, nftables
//!   and DPDK testpmd over veth, with a table, a plot and JSON. `benches/topology.sh` builds
//!   its namespaces. Needs root. docs/design/harness.md.
//!
//! This library holds what the benchmarks share: finding the ClassBench data, and generators.

pub mod harness;
pub mod plot;
pub mod policygen;

use margay_rulecompiler::{Rule, synth};
use margay_testkit::classbench::{self, Key};

/// A named rule set with keys to look up.
#[derive(Debug)]
pub struct Workload {
    /// `acl1_10k`, ...
    pub name: String,
    /// The rules, in priority order.
    pub rules: Vec<Rule<5>>,
    /// Keys: the set's trace when available, else points drawn inside the rules.
    pub keys: Vec<Key>,
}

/// Loads `set` with up to `max_keys` keys, or `None` when its rule file is not there.
pub fn load(set: &str, max_keys: usize) -> Option<Workload> {
    let dir = classbench::data_dir();
    let rules = classbench::load_rules(&dir.join(format!("{set}.rules"))).ok()?;
    let keys = match classbench::load_trace(&dir.join(format!("{set}.trace.xz"))) {
        Ok(trace) => trace.iter().take(max_keys).map(|t| t.key).collect(),
        Err(_) => synth::keys_in_rules(&rules, max_keys, 1),
    };
    Some(Workload { name: set.to_owned(), rules, keys })
}

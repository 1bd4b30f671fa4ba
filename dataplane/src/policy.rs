//! The policy as the dataplane holds it: compiled versions numbered by epoch, the versions
//! flow records may still name, and the policy's JSON forms shared by the control socket and
//! the command line.

use std::collections::VecDeque;
use std::sync::Arc;

use margay_config::PolicySet;
use margay_config::policy::Verdict;
use margay_rulecompiler::policy::compile::CompiledPolicy;
use margay_rulecompiler::policy::{Decision, SideDecision};
use serde_json::{Value, json};

/// Older policies kept to name the decisions of flows not yet seen under the current one.
pub const POLICY_HISTORY: usize = 8;

/// A compiled policy with its epoch (incremented by every reload).
#[derive(Debug)]
pub struct PolicyVersion {
    /// The epoch.
    pub epoch: u32,
    /// The policy.
    pub compiled: CompiledPolicy,
}

/// The policy versions flow records name, by epoch: the newest [`PolicyVersions::KEEP`]. What
/// a record's reader keeps to resolve [`FlowRecord::policy_epoch`].
#[derive(Debug, Default, Clone)]
pub struct PolicyVersions(VecDeque<Arc<PolicyVersion>>);

impl PolicyVersions {
    /// Versions kept: as many as a pipeline keeps for its tracked flows
    /// ([`POLICY_HISTORY`] before the current one).
    pub const KEEP: usize = POLICY_HISTORY + 1;

    /// Versions holding `v` alone.
    pub fn of(v: Arc<PolicyVersion>) -> Self {
        let mut s = Self::default();
        s.insert(v);
        s
    }

    /// Adds `v` (replacing a version of the same epoch), dropping the oldest past
    /// [`PolicyVersions::KEEP`].
    pub fn insert(&mut self, v: Arc<PolicyVersion>) {
        self.0.retain(|p| p.epoch != v.epoch);
        self.0.push_front(v);
        self.0.truncate(Self::KEEP);
    }

    /// The version of `epoch`, if kept.
    pub fn get(&self, epoch: u32) -> Option<&PolicyVersion> {
        self.0.iter().find(|p| p.epoch == epoch).map(|p| &**p)
    }
}

/// Compiles `set`, timing it.
pub fn compile_timed(set: &PolicySet) -> anyhow::Result<(CompiledPolicy, f64)> {
    let started = std::time::Instant::now();
    let compiled = CompiledPolicy::compile(set)?;
    Ok((compiled, started.elapsed().as_secs_f64() * 1e3))
}

fn side_json(s: Option<&SideDecision>) -> Value {
    s.map_or(
        Value::Null,
        |s| json!({"tier": s.tier, "policy": s.policy, "rule": s.rule, "action": s.verdict.as_str()}),
    )
}

/// A policy decision as JSON: what `margay explain --json` and `ctl explain` print.
pub fn decision_json(d: &Decision) -> Value {
    json!({
        "verdict": d.verdict.as_str(),
        "egress": side_json(d.egress.as_ref()),
        "ingress": side_json(d.ingress.as_ref()),
        "log": d.log.iter().map(|h| json!({
            "direction": if h.ingress { "ingress" } else { "egress" },
            "tier": h.tier, "policy": h.policy, "rule": h.rule,
        })).collect::<Vec<_>>(),
        "staged": d.staged.map(Verdict::as_str),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use margay_config::PolicySet;
    use margay_rulecompiler::policy::compile::CompiledPolicy;

    use super::{PolicyVersion, PolicyVersions};

    fn version(epoch: u32) -> Arc<PolicyVersion> {
        let set = PolicySet::parse("", Path::new("empty.toml")).unwrap();
        Arc::new(PolicyVersion { epoch, compiled: CompiledPolicy::compile(&set).unwrap() })
    }

    #[test]
    fn policy_versions_keep_the_newest_and_replace_by_epoch() {
        let mut v = PolicyVersions::of(version(1));
        assert_eq!(v.get(1).map(|p| p.epoch), Some(1));
        assert!(v.get(2).is_none());
        for e in 2..=PolicyVersions::KEEP as u32 + 1 {
            v.insert(version(e));
        }
        // KEEP + 1 versions went in: the oldest is gone, every newer one is there.
        assert!(v.get(1).is_none(), "the oldest version past KEEP is dropped");
        for e in 2..=PolicyVersions::KEEP as u32 + 1 {
            assert_eq!(v.get(e).map(|p| p.epoch), Some(e));
        }
        // The same epoch again replaces, and does not push another version out.
        let again = version(2);
        v.insert(Arc::clone(&again));
        assert!(std::ptr::eq(v.get(2).unwrap(), &*again));
        assert_eq!(v.get(3).map(|p| p.epoch), Some(3));
    }
}

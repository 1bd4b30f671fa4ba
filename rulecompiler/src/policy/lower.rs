//! Lowering (see [`super::compile`]'s module documentation): policy rules into classifier
//! rules, per address family, with the sentinels that give a first-match classifier the tiers'
//! control flow.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use margay_config::net::{Cidr, IcmpMatch};
use margay_config::policy::{
    Action, IpVersion, Peer, Policy, PolicySet, Rule as PolicyRule, Tier, TierDefault,
};
use margay_config::selector::Selector;

use super::compile::*;
use super::intervals::{IntervalSet, range_to_prefixes};
use crate::classifier::{Classifier, FieldRange, Rule, RuleId};

/// Lowered rules of one family, and what each means.
#[derive(Debug, Default)]
pub(super) struct Emit<const D: usize> {
    pub(super) rules: Vec<Rule<D>>,
    pub(super) steps: Vec<Step>,
    /// Set when a rule would have taken the list past [`MAX_CLASSIFIER_RULES`].
    pub(super) overflow: bool,
}

impl<const D: usize> Emit<D> {
    pub(super) fn finish(self) -> Result<Lowered<D>, CompileError> {
        if self.overflow {
            return Err(CompileError::TooManyRules);
        }
        let classifier = Classifier::build_with(&self.rules, &policy_build_params())?;
        let steps = self.steps;
        Ok(Lowered { classifier: classifier.with_tags(|id| steps[id as usize]) })
    }

    fn next_id(&self) -> RuleId {
        self.steps.len() as RuleId
    }

    /// Rules matching every key of the signatures in `runs`.
    fn sentinel(&mut self, runs: &[FieldRange], step: Step) {
        for &run in runs {
            let mut fields = [FieldRange::ANY; D];
            fields[0] = run;
            self.rules.push(Rule { fields });
            self.steps.push(step);
        }
    }

    /// Sets `end` of the `pass` rule steps from `from` on to the tier's last rule.
    fn close_tier(&mut self, from: usize, tier_end: RuleId) {
        for step in &mut self.steps[from..] {
            if let Step::Rule { action: Action::Pass, end, .. } = step {
                *end = tier_end;
            }
        }
    }
}

/// (policy namespace, selector, namespace selector, with netsets, IPv4).
type SelectedKey = (Option<String>, String, Option<String>, bool, bool);

pub(super) struct Lowering<'a> {
    pub(super) set: &'a PolicySet,
    /// Endpoint indexes by namespace.
    pub(super) by_namespace: HashMap<&'a str, Vec<usize>>,
    pub(super) meta: Vec<Meta>,
    pub(super) v4: Emit<V4_FIELDS>,
    pub(super) v6: Emit<V6_FIELDS>,
    /// Memo of what selectors denote, by (policy namespace, selector, namespace selector,
    /// netsets, family).
    pub(super) selected: HashMap<SelectedKey, IntervalSet>,
}

/// The pieces of one lowered policy rule in one family: each field's ranges.
struct Pieces {
    src: Vec<Vec<FieldRange>>,
    dst: Vec<Vec<FieldRange>>,
    proto: Vec<FieldRange>,
    sport: Vec<FieldRange>,
    dport: Vec<FieldRange>,
    icmp: Vec<(FieldRange, FieldRange)>,
}

fn to_field(r: (u128, u128)) -> FieldRange {
    FieldRange::new(r.0 as u32, r.1 as u32).unwrap_or(FieldRange::ANY)
}

/// Sorted signature ids as runs of consecutive ids.
fn runs(ids: &[u32]) -> Vec<FieldRange> {
    let mut out: Vec<FieldRange> = Vec::new();
    for &id in ids {
        match out.last_mut() {
            Some(last) if last.hi() + 1 == id => *last = FieldRange::new(last.lo(), id).unwrap_or(*last),
            _ => out.push(FieldRange::exact(id)),
        }
    }
    out
}

impl Lowering<'_> {
    /// Emits every tier: its policies' rules once each, over the signatures that hold them,
    /// then its sentinels; finally the `no_policy_action` sentinel over every signature.
    pub(super) fn all(&mut self, order: &[usize], sigs: &[(usize, Vec<usize>)], with_staged: bool) {
        let set = self.set;
        for tier in &set.tiers {
            let (from4, from6) = (self.v4.steps.len(), self.v6.steps.len());
            for &p in order.iter().filter(|&&p| set.policies[p].tier == tier.name) {
                let policy = &set.policies[p];
                if policy.staged && !with_staged {
                    continue;
                }
                for (d, rules) in [(0, &policy.egress), (1, &policy.ingress)] {
                    let holders: Vec<u32> = (0..sigs.len() as u32)
                        .filter(|&i| sigs[i as usize].0 == d && sigs[i as usize].1.contains(&p))
                        .collect();
                    if holders.is_empty() {
                        continue;
                    }
                    let sig_runs = runs(&holders);
                    for (i, rule) in rules.iter().enumerate() {
                        let meta = self.meta.len() as u32;
                        self.meta.push(Meta {
                            tier: tier.name.clone(),
                            policy: policy.name.clone(),
                            rule: rule.reported_index(i),
                            qualified: qualified(&tier.name, policy),
                        });
                        if let Some(pc) = self.pieces(policy, rule, true) {
                            emit_rule(&mut self.v4, &sig_runs, 1, &pc, meta, rule.action);
                        }
                        if let Some(pc) = self.pieces(policy, rule, false) {
                            emit_rule(&mut self.v6, &sig_runs, 4, &pc, meta, rule.action);
                        }
                    }
                }
            }
            // A tier whose default is pass gets no sentinels: passing on is what a first-match
            // walk does anyway when nothing in the tier matched, and a sentinel matches every
            // key, so it would cost each such side a second lookup (and a rule in the
            // classifier's shared tail leaf, scanned by every lookup).
            if tier.default_action == TierDefault::Deny {
                self.deny_sentinels(tier, sigs);
            }
            let (end4, end6) = (self.v4.next_id().saturating_sub(1), self.v6.next_id().saturating_sub(1));
            self.v4.close_tier(from4, end4);
            self.v6.close_tier(from6, end6);
        }
        let every = runs(&(0..sigs.len() as u32).collect::<Vec<_>>());
        self.v4.sentinel(&every, Step::NoPolicy(set.defaults.no_policy_action));
        self.v6.sentinel(&every, Step::NoPolicy(set.defaults.no_policy_action));
    }

    /// The sentinels of a tier whose default is deny: over the signatures the tier applies
    /// to, grouped by its last selecting policy (which the tier-default decision names).
    fn deny_sentinels(&mut self, tier: &Tier, sigs: &[(usize, Vec<usize>)]) {
        let set = self.set;
        let mut by_last: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
        for (i, (_, list)) in sigs.iter().enumerate() {
            if let Some(&last) = list.iter().rev().find(|&&p| set.policies[p].tier == tier.name) {
                by_last.entry(last).or_default().push(i as u32);
            }
        }
        for (last, ids) in by_last {
            let meta = self.meta.len() as u32;
            self.meta.push(Meta {
                tier: tier.name.clone(),
                policy: set.policies[last].name.clone(),
                rule: -1,
                qualified: qualified(&tier.name, &set.policies[last]),
            });
            let step = Step::TierDeny { meta };
            self.v4.sentinel(&runs(&ids), step);
            self.v6.sentinel(&runs(&ids), step);
        }
    }

    /// `rule` of `policy` in one family, or `None` when it cannot match there.
    fn pieces(&mut self, policy: &Policy, rule: &PolicyRule, v4: bool) -> Option<Pieces> {
        if rule.ip_version.is_some_and(|v| (v == IpVersion::V4) != v4) {
            return None;
        }
        let src = self.addresses(policy, &rule.source, v4);
        let dst = self.addresses(policy, &rule.destination, v4);
        let mut proto =
            rule.protocol.map_or(IntervalSet::range(0, 255), |p| IntervalSet::range(p.0.into(), p.0.into()));
        if let Some(p) = rule.not_protocol {
            proto = proto.subtract(&IntervalSet::range(p.0.into(), p.0.into()));
        }
        let (sport, dport) = (ports(&rule.source), ports(&rule.destination));
        let icmp = icmp_boxes(rule.icmp, rule.not_icmp);
        if [&src, &dst, &proto, &sport, &dport].iter().any(|s| s.is_empty()) || icmp.is_empty() {
            return None;
        }
        let addr = |s: &IntervalSet| -> Vec<Vec<FieldRange>> {
            if v4 {
                s.ranges().iter().map(|&r| vec![to_field(r)]).collect()
            } else {
                s.ranges()
                    .iter()
                    .flat_map(|&(lo, hi)| range_to_prefixes(lo, hi, 128))
                    .map(|(v, len)| crate::classifier::prefix128(v, len).to_vec())
                    .collect()
            }
        };
        let fields = |s: &IntervalSet| s.ranges().iter().map(|&r| to_field(r)).collect();
        Some(Pieces {
            src: addr(&src),
            dst: addr(&dst),
            proto: fields(&proto),
            sport: fields(&sport),
            dport: fields(&dport),
            icmp: icmp.into_iter().map(|(t, c)| (to_field(t), to_field(c))).collect(),
        })
    }

    /// The addresses of one family a peer matches.
    fn addresses(&mut self, policy: &Policy, peer: &Peer, v4: bool) -> IntervalSet {
        let universe = IntervalSet::range(0, if v4 { u128::from(u32::MAX) } else { u128::MAX });
        let cidrs = |list: &[Cidr]| {
            IntervalSet::from_ranges(
                list.iter().filter(|c| c.is_ipv4() == v4).map(|&c| cidr_range(c)).collect(),
            )
        };
        let mut s = if peer.nets.is_empty() { universe } else { cidrs(&peer.nets) };
        let ns = peer.namespace_selector.as_ref();
        if let Some(sel) = peer.selector.as_ref().or(ns.map(|_| &Selector::All)) {
            s = s.intersect(&self.selected(policy, sel, ns, peer.selector.is_some(), v4));
        }
        s = s.subtract(&cidrs(&peer.not_nets));
        if let Some(sel) = &peer.not_selector {
            s = s.subtract(&self.selected(policy, sel, ns, true, v4));
        }
        s
    }

    /// What a selector denotes, as the reference evaluator defines it (memoized).
    fn selected(
        &mut self,
        policy: &Policy,
        sel: &Selector,
        ns: Option<&Selector>,
        netsets: bool,
        v4: bool,
    ) -> IntervalSet {
        let key = (policy.namespace.clone(), sel.to_string(), ns.map(ToString::to_string), netsets, v4);
        if let Some(s) = self.selected.get(&key) {
            return s.clone();
        }
        let set = self.set;
        // The endpoints in scope (`in_scope`), by the namespace index.
        let in_namespaces = |names: &mut dyn Iterator<Item = &str>| -> Vec<usize> {
            let mut v: Vec<usize> =
                names.flat_map(|n| self.by_namespace.get(n).into_iter().flatten().copied()).collect();
            v.sort_unstable();
            v
        };
        let scope: Vec<usize> = match (ns, &policy.namespace) {
            (Some(ns_sel), _) => in_namespaces(
                &mut set.namespaces.iter().filter(|n| ns_sel.matches(&n.labels)).map(|n| n.name.as_str()),
            ),
            (None, Some(own)) => in_namespaces(&mut std::iter::once(own.as_str())),
            (None, None) => (0..set.endpoints.len()).collect(),
        };
        let mut ranges = Vec::new();
        for e in scope.iter().map(|&i| &set.endpoints[i]).filter(|e| sel.matches(&e.labels)) {
            debug_assert!(super::in_scope(set, policy, ns, e));
            for ip in e.ips.iter().filter(|ip| ip.is_ipv4() == v4) {
                let v = ip_value(*ip);
                ranges.push((v, v));
            }
        }
        if netsets {
            for n in set.netsets.iter().filter(|n| sel.matches(&n.labels)) {
                ranges.extend(n.nets.iter().filter(|c| c.is_ipv4() == v4).map(|&c| cidr_range(c)));
            }
        }
        let result = IntervalSet::from_ranges(ranges);
        self.selected.insert(key, result.clone());
        result
    }
}

fn ip_value(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn cidr_range(c: Cidr) -> (u128, u128) {
    let lo = ip_value(c.addr());
    let bits = if c.is_ipv4() { 32 } else { 128 };
    let host = u32::from(bits - c.prefix_len());
    let span = if host >= 128 { u128::MAX } else { (1u128 << host) - 1 };
    (lo, lo | span)
}

fn ports(peer: &Peer) -> IntervalSet {
    let list = |l: &[margay_config::net::PortRange]| {
        IntervalSet::from_ranges(l.iter().map(|r| (u128::from(r.lo()), u128::from(r.hi()))).collect())
    };
    let base = if peer.ports.is_empty() { IntervalSet::range(0, 65535) } else { list(&peer.ports) };
    base.subtract(&list(&peer.not_ports))
}

type IcmpBox = ((u128, u128), (u128, u128));

/// ICMP (type, code) boxes: `icmp` (or everything) minus `not_icmp`.
fn icmp_boxes(icmp: Option<IcmpMatch>, not_icmp: Option<IcmpMatch>) -> Vec<IcmpBox> {
    let all = (0, 255);
    let as_box = |m: IcmpMatch| {
        ((u128::from(m.kind), u128::from(m.kind)), m.code.map_or(all, |c| (c.into(), c.into())))
    };
    let base = icmp.map_or((all, all), as_box);
    let Some(n) = not_icmp.map(as_box) else { return vec![base] };
    let (bt, bc) = (IntervalSet::range(base.0.0, base.0.1), IntervalSet::range(base.1.0, base.1.1));
    let (nt, nc) = (IntervalSet::range(n.0.0, n.0.1), IntervalSet::range(n.1.0, n.1.1));
    let mut out: Vec<IcmpBox> = bt.subtract(&nt).ranges().iter().map(|&t| (t, base.1)).collect();
    for &t in bt.intersect(&nt).ranges() {
        out.extend(bc.subtract(&nc).ranges().iter().map(|&c| (t, c)));
    }
    out
}

/// Emits the cross product of `p` for one rule over the signature `runs`: fields `[sig,
/// src (w), dst (w), proto, sport, dport, icmp type, icmp code]`.
fn emit_rule<const D: usize>(
    emit: &mut Emit<D>,
    runs: &[FieldRange],
    w: usize,
    p: &Pieces,
    meta: u32,
    action: Action,
) {
    let count =
        [runs.len(), p.src.len(), p.dst.len(), p.proto.len(), p.sport.len(), p.dport.len(), p.icmp.len()]
            .into_iter()
            .fold(1usize, usize::saturating_mul);
    if emit.overflow || emit.rules.len().saturating_add(count) > MAX_CLASSIFIER_RULES {
        emit.overflow = true;
        return;
    }
    let first = emit.steps.len();
    for &sig in runs {
        for src in &p.src {
            for dst in &p.dst {
                for &proto in &p.proto {
                    for &sport in &p.sport {
                        for &dport in &p.dport {
                            for &(itype, icode) in &p.icmp {
                                let mut fields = [FieldRange::ANY; D];
                                fields[0] = sig;
                                fields[1..1 + w].copy_from_slice(src);
                                fields[1 + w..1 + 2 * w].copy_from_slice(dst);
                                fields[1 + 2 * w..].copy_from_slice(&[proto, sport, dport, itype, icode]);
                                emit.rules.push(Rule { fields });
                            }
                        }
                    }
                }
            }
        }
    }
    // Rules and steps stay in step: the pieces are `first..rules.len()`.
    let group_end = emit.rules.len().saturating_sub(1) as RuleId;
    for _ in first..emit.rules.len() {
        // A pass rule's `end` is its tier's last rule, set when the tier is closed.
        emit.steps.push(Step::Rule { meta, action, end: group_end });
    }
}

/// A policy's name as Calico's flow logs write it: `tier.name`, or `namespace/tier.name`.
fn qualified(tier: &str, policy: &Policy) -> String {
    match &policy.namespace {
        Some(ns) => format!("{ns}/{tier}.{}", policy.name),
        None => format!("{tier}.{}", policy.name),
    }
}

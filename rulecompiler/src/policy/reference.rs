//! The reference evaluator: POLICY.md's evaluation rules, written as plainly as possible.
//!
//! No precomputation beyond sorting, no indexes: every selector is evaluated against every
//! endpoint and netset on every lookup. It is slow on purpose, and it is the oracle the compiled
//! policy must agree with. It shares four short definitions with the compiler (which
//! policies select an endpoint, which endpoints a peer selector may see, the evaluation order,
//! how sides combine; `super`); the
//! hand-worked corpus in `tests/policies/` is the independent check of those.
//!
//! Steps, as in POLICY.md:
//! 1. The source's endpoint (if local) decides egress; the destination's decides ingress; both
//!    must allow. With neither local, `unmanaged_action`.
//! 2. Per side: tiers by (order, name); a tier applies when one of its policies selects the
//!    endpoint for the direction. Its policies go by (order, unset last, then name), their
//!    rules in file order: allow and deny decide, pass leaves the tier, log records a hit.
//!    No decision in an applying tier: the tier's `default_action`.
//! 3. No tier decided: `no_policy_action`.
//! 4. Staged policies: the same walk with them enforced gives the `staged` verdict.

use std::net::IpAddr;

use margay_config::policy::{Action, Endpoint, Peer, Policy, PolicySet, Rule, TierDefault, Verdict};
use margay_config::selector::Selector;

use super::{Decision, Flow, LogHit, SideDecision, combine, selects};

/// Evaluates flows against a policy set, by the book.
#[derive(Debug, Clone)]
pub struct ReferenceEvaluator<'a> {
    set: &'a PolicySet,
    /// Policies sorted by (tier order, tier name, order with unset last, name).
    policies: Vec<&'a Policy>,
}

impl<'a> ReferenceEvaluator<'a> {
    /// An evaluator over `set`.
    pub fn new(set: &'a PolicySet) -> Self {
        let policies = super::evaluation_order(set).into_iter().map(|i| &set.policies[i]).collect();
        Self { set, policies }
    }

    /// The decision for `flow`.
    pub fn evaluate(&self, flow: &Flow) -> Decision {
        let src = self.endpoint_of(flow.src);
        let dst = self.endpoint_of(flow.dst);
        let mut log = Vec::new();
        if src.is_none() && dst.is_none() {
            let verdict = self.set.defaults.unmanaged_action;
            return Decision { verdict, egress: None, ingress: None, log, staged: None };
        }
        let egress = src.map(|e| self.side(e, false, flow, false, &mut log));
        let ingress = dst.map(|e| self.side(e, true, flow, false, &mut log));
        let verdict = combine(egress.as_ref(), ingress.as_ref());

        let staged_applies = |e: Option<&Endpoint>, ingress: bool| {
            e.is_some_and(|e| self.policies.iter().any(|p| p.staged && selects(p, e, ingress)))
        };
        let staged = (staged_applies(src, false) || staged_applies(dst, true)).then(|| {
            let mut ignored = Vec::new();
            let eg = src.map(|e| self.side(e, false, flow, true, &mut ignored));
            let ing = dst.map(|e| self.side(e, true, flow, true, &mut ignored));
            combine(eg.as_ref(), ing.as_ref())
        });
        Decision { verdict, egress, ingress, log, staged }
    }

    fn endpoint_of(&self, ip: IpAddr) -> Option<&'a Endpoint> {
        self.set.endpoints.iter().find(|e| e.ips.contains(&ip))
    }

    /// One side: `endpoint`'s ingress (or egress) for `flow`. With `with_staged`, staged
    /// policies count as enforced.
    fn side(
        &self,
        endpoint: &Endpoint,
        ingress: bool,
        flow: &Flow,
        with_staged: bool,
        log: &mut Vec<LogHit>,
    ) -> SideDecision {
        'tiers: for tier in &self.set.tiers {
            let applying: Vec<&Policy> = self
                .policies
                .iter()
                .copied()
                .filter(|p| {
                    p.tier == tier.name && (with_staged || !p.staged) && selects(p, endpoint, ingress)
                })
                .collect();
            let Some(last) = applying.last() else { continue };
            for policy in &applying {
                let rules = if ingress { &policy.ingress } else { &policy.egress };
                for (i, rule) in rules.iter().enumerate() {
                    if !self.rule_matches(policy, rule, flow) {
                        continue;
                    }
                    let decided = |verdict| SideDecision {
                        verdict,
                        tier: tier.name.clone(),
                        policy: policy.name.clone(),
                        rule: rule.reported_index(i),
                    };
                    match rule.action {
                        Action::Allow => return decided(Verdict::Allow),
                        Action::Deny => return decided(Verdict::Deny),
                        Action::Pass => continue 'tiers,
                        Action::Log => log.push(LogHit {
                            ingress,
                            tier: tier.name.clone(),
                            policy: policy.name.clone(),
                            rule: rule.reported_index(i),
                        }),
                    }
                }
            }
            match tier.default_action {
                TierDefault::Deny => {
                    return SideDecision {
                        verdict: Verdict::Deny,
                        tier: tier.name.clone(),
                        policy: last.name.clone(),
                        rule: -1,
                    };
                }
                TierDefault::Pass => continue,
            }
        }
        SideDecision {
            verdict: self.set.defaults.no_policy_action,
            tier: String::new(),
            policy: String::new(),
            rule: -1,
        }
    }

    fn rule_matches(&self, policy: &Policy, rule: &Rule, flow: &Flow) -> bool {
        let proto_ok = rule.protocol.is_none_or(|p| p.0 == flow.protocol)
            && rule.not_protocol.is_none_or(|p| p.0 != flow.protocol);
        let version_ok =
            rule.ip_version.is_none_or(|v| (v == margay_config::policy::IpVersion::V4) == flow.src.is_ipv4());
        let icmp_hit = |m: &margay_config::net::IcmpMatch| {
            flow.icmp.is_some_and(|(t, c)| t == m.kind && m.code.is_none_or(|mc| mc == c))
        };
        let icmp_ok =
            rule.icmp.as_ref().is_none_or(icmp_hit) && !rule.not_icmp.as_ref().is_some_and(icmp_hit);
        proto_ok
            && version_ok
            && icmp_ok
            && self.peer_matches(policy, &rule.source, flow.src, flow.src_port)
            && self.peer_matches(policy, &rule.destination, flow.dst, flow.dst_port)
    }

    fn peer_matches(&self, policy: &Policy, peer: &Peer, ip: IpAddr, port: Option<u16>) -> bool {
        let nets_ok = (peer.nets.is_empty() || peer.nets.iter().any(|c| c.contains(ip)))
            && !peer.not_nets.iter().any(|c| c.contains(ip));
        let ports_ok = (peer.ports.is_empty()
            || port.is_some_and(|p| peer.ports.iter().any(|r| r.contains(p))))
            && !port.is_some_and(|p| peer.not_ports.iter().any(|r| r.contains(p)));
        let ns = peer.namespace_selector.as_ref();
        // A namespace_selector alone selects every endpoint of the matching namespaces.
        let selector = peer.selector.as_ref().or(ns.map(|_| &Selector::All));
        let selected_ok = selector.is_none_or(|s| self.selected(policy, s, ns, peer.selector.is_some(), ip));
        let not_selected_ok =
            peer.not_selector.as_ref().is_none_or(|s| !self.selected(policy, s, ns, true, ip));
        nets_ok && ports_ok && selected_ok && not_selected_ok
    }

    /// Whether `ip` is an address of what `selector` denotes for a rule of `policy`: endpoints
    /// with matching labels in the allowed namespaces (those `ns` selects, else the policy's
    /// own for a namespaced policy, else all), and (when `netsets`) netsets with matching
    /// labels. `netsets` is false for the `all()` a lone `namespace_selector` implies.
    fn selected(
        &self,
        policy: &Policy,
        selector: &Selector,
        ns: Option<&Selector>,
        netsets: bool,
        ip: IpAddr,
    ) -> bool {
        let namespace_ok = |e: &Endpoint| super::in_scope(self.set, policy, ns, e);
        let by_endpoint = self
            .set
            .endpoints
            .iter()
            .any(|e| e.ips.contains(&ip) && namespace_ok(e) && selector.matches(&e.labels));
        let by_netset = netsets
            && self
                .set
                .netsets
                .iter()
                .any(|n| selector.matches(&n.labels) && n.nets.iter().any(|c| c.contains(ip)));
        by_endpoint || by_netset
    }
}

//! `margay export nft`: a policy as an nftables ruleset with the same verdicts, for the kernel
//! baseline of the throughput harness and as an independent oracle (the kernel evaluates it).
//!
//! Shape (`table inet margay`, forward hook):
//! - `ct state established,related accept` first: like Margay, the policy decides a flow's
//!   first packet and conntrack the rest; `ct state invalid drop`.
//! - `ip saddr vmap { A : jump eN_out }` for every local endpoint address, then the same with
//!   `daddr` to `eN_in`. A side chain `return`s when its side allows and `drop`s when it denies.
//! - Then a flow with a local endpoint on either side is accepted (every present side allowed),
//!   and one with none gets `unmanaged_action`.
//! - A side chain `goto`s its first applying tier's chain. A tier chain holds its policies'
//!   rules in evaluation order: allow → `return`, deny → `drop`, pass → `goto` the next tier,
//!   log → `log` and go on. It ends with the tier's default (`drop`, or `goto` next). After the
//!   last tier, `no_policy_action`.
//!
//! Each rule becomes one nftables rule per address family it can match. Selectors are resolved
//! here to address sets (endpoints in scope, netsets). A negated ICMP match (`not_icmp`) is a
//! disjunction, so it becomes up to three rules with the same action. Staged policies are not
//! enforced, so they are not exported.

use std::fmt::Write as _;
use std::net::IpAddr;

use margay_config::Selector;
use margay_config::net::{Cidr, PortRange};
use margay_config::policy::{
    Action, Endpoint, IpVersion, Peer, Policy, PolicySet, Rule, TierDefault, Verdict,
};

use super::{evaluation_order, in_scope, selects};

/// The nftables table the export creates (family `inet`).
pub const TABLE: &str = "margay";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn ip(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    fn has(self, ip: IpAddr) -> bool {
        ip.is_ipv4() == (self == Family::V4)
    }

    fn icmp(self) -> (&'static str, u8) {
        match self {
            Family::V4 => ("icmp", 1),
            Family::V6 => ("icmpv6", 58),
        }
    }
}

fn set_of(items: &[String]) -> String {
    format!("{{ {} }}", items.join(", "))
}

fn cidr_text(c: Cidr) -> String {
    let full = if c.is_ipv4() { 32 } else { 128 };
    if c.prefix_len() == full { c.addr().to_string() } else { format!("{}/{}", c.addr(), c.prefix_len()) }
}

fn ports_text(ports: &[PortRange]) -> String {
    set_of(
        &ports
            .iter()
            .map(|r| if r.lo() == r.hi() { r.lo().to_string() } else { format!("{}-{}", r.lo(), r.hi()) })
            .collect::<Vec<_>>(),
    )
}

/// A string safe inside an nft double-quoted string (and short).
fn quoted(s: &str) -> String {
    let clean: String =
        s.chars().map(|c| if c == '"' || c == '\\' || c.is_control() { '_' } else { c }).collect();
    clean.chars().take(100).collect()
}

struct Exporter<'a> {
    set: &'a PolicySet,
    order: Vec<usize>,
    out: String,
}

impl Exporter<'_> {
    /// Addresses (of `family`) a peer selector denotes for a rule of `policy`, as nft set
    /// elements. `netsets` is false for the `all()` a lone `namespace_selector` implies.
    fn selected(
        &self,
        policy: &Policy,
        selector: &Selector,
        ns: Option<&Selector>,
        netsets: bool,
        family: Family,
    ) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for e in &self.set.endpoints {
            if in_scope(self.set, policy, ns, e) && selector.matches(&e.labels) {
                out.extend(e.ips.iter().filter(|ip| family.has(**ip)).map(ToString::to_string));
            }
        }
        if netsets {
            for n in &self.set.netsets {
                if selector.matches(&n.labels) {
                    out.extend(n.nets.iter().filter(|c| family.has(c.addr())).map(|c| cidr_text(*c)));
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// The conditions a peer puts on the `dir` ("saddr"/"daddr") address and `port_dir`
    /// ("sport"/"dport"); None when it cannot match in `family`.
    fn peer(
        &self,
        policy: &Policy,
        peer: &Peer,
        dir: &str,
        port_dir: &str,
        family: Family,
    ) -> Option<Vec<String>> {
        let ip = family.ip();
        let mut conds = Vec::new();
        if !peer.nets.is_empty() {
            let nets: Vec<String> =
                peer.nets.iter().filter(|c| family.has(c.addr())).map(|c| cidr_text(*c)).collect();
            if nets.is_empty() {
                return None;
            }
            conds.push(format!("{ip} {dir} {}", set_of(&nets)));
        }
        let not_nets: Vec<String> =
            peer.not_nets.iter().filter(|c| family.has(c.addr())).map(|c| cidr_text(*c)).collect();
        if !not_nets.is_empty() {
            conds.push(format!("{ip} {dir} != {}", set_of(&not_nets)));
        }
        let ns = peer.namespace_selector.as_ref();
        if let Some(sel) = peer.selector.as_ref().or(ns.map(|_| &Selector::All)) {
            let addrs = self.selected(policy, sel, ns, peer.selector.is_some(), family);
            if addrs.is_empty() {
                return None;
            }
            conds.push(format!("{ip} {dir} {}", set_of(&addrs)));
        }
        if let Some(sel) = &peer.not_selector {
            let addrs = self.selected(policy, sel, ns, true, family);
            if !addrs.is_empty() {
                conds.push(format!("{ip} {dir} != {}", set_of(&addrs)));
            }
        }
        if !peer.ports.is_empty() {
            conds.push(format!("th {port_dir} {}", ports_text(&peer.ports)));
        }
        if !peer.not_ports.is_empty() {
            conds.push(format!("th {port_dir} != {}", ports_text(&peer.not_ports)));
        }
        Some(conds)
    }

    /// The alternatives (each a list of ANDed conditions) under which `rule` matches in
    /// `family`; empty when it cannot.
    fn rule(&self, policy: &Policy, rule: &Rule, family: Family) -> Vec<Vec<String>> {
        if let Some(v) = rule.ip_version
            && (v == IpVersion::V4) != (family == Family::V4)
        {
            return Vec::new();
        }
        let mut base = Vec::new();
        if let Some(p) = rule.protocol
            && rule.icmp.is_none()
        {
            base.push(format!("meta l4proto {}", p.0));
        }
        if let Some(p) = rule.not_protocol {
            base.push(format!("meta l4proto != {}", p.0));
        }
        let (icmp, icmp_proto) = family.icmp();
        // With a protocol, only packets of that protocol match, so this family's ICMP header
        // is only there when the protocol is this family's ICMP.
        let icmp_possible = rule.protocol.is_none_or(|p| p.0 == icmp_proto);
        if let Some(m) = &rule.icmp {
            if !icmp_possible {
                return Vec::new();
            }
            base.push(format!("meta l4proto {icmp_proto}"));
            base.push(format!("{icmp} type {}", m.kind));
            if let Some(c) = m.code {
                base.push(format!("{icmp} code {c}"));
            }
        }
        let Some(src) = self.peer(policy, &rule.source, "saddr", "sport", family) else { return Vec::new() };
        let Some(dst) = self.peer(policy, &rule.destination, "daddr", "dport", family) else {
            return Vec::new();
        };
        base.extend(src);
        base.extend(dst);
        match &rule.not_icmp {
            None => vec![base],
            // Not this family's ICMP at all: the negation always holds.
            Some(_) if !icmp_possible => vec![base],
            // not (icmp and type == T and code == C): one alternative per way to fail it.
            Some(m) => {
                let mut alts = vec![
                    [base.clone(), vec![format!("meta l4proto != {icmp_proto}")]].concat(),
                    [
                        base.clone(),
                        vec![format!("meta l4proto {icmp_proto}"), format!("{icmp} type != {}", m.kind)],
                    ]
                    .concat(),
                ];
                if let Some(c) = m.code {
                    alts.push(
                        [
                            base,
                            vec![
                                format!("meta l4proto {icmp_proto}"),
                                format!("{icmp} type {}", m.kind),
                                format!("{icmp} code != {c}"),
                            ],
                        ]
                        .concat(),
                    );
                }
                alts
            }
        }
    }

    fn verdict(v: Verdict) -> &'static str {
        match v {
            Verdict::Allow => "return",
            Verdict::Deny => "drop",
        }
    }

    /// The chains of endpoint `i`'s side (`ingress`): the entry chain, one per applying tier,
    /// and the end.
    fn side(&mut self, i: usize, e: &Endpoint, ingress: bool) {
        let dir = if ingress { "in" } else { "out" };
        let base = format!("e{i}_{dir}");
        let tiers: Vec<(&margay_config::policy::Tier, Vec<&Policy>)> = self
            .set
            .tiers
            .iter()
            .map(|t| {
                let ps: Vec<&Policy> = self
                    .order
                    .iter()
                    .map(|&k| &self.set.policies[k])
                    .filter(|p| p.tier == t.name && !p.staged && selects(p, e, ingress))
                    .collect();
                (t, ps)
            })
            .filter(|(_, ps)| !ps.is_empty())
            .collect();
        let end = format!("{base}_end");
        let chain_of = |k: usize| if k < tiers.len() { format!("{base}_t{k}") } else { end.clone() };
        let _ = writeln!(
            self.out,
            "  chain {base} {{\n    comment \"{} {dir}\"\n    goto {}\n  }}",
            quoted(&e.name),
            chain_of(0)
        );
        let mut body = String::new();
        for (k, (tier, policies)) in tiers.iter().enumerate() {
            body.clear();
            let next = chain_of(k + 1);
            for p in policies {
                let rules = if ingress { &p.ingress } else { &p.egress };
                for (r, rule) in rules.iter().enumerate() {
                    let r = rule.reported_index(r);
                    let action = match rule.action {
                        Action::Allow => "return".to_owned(),
                        Action::Deny => "drop".to_owned(),
                        Action::Pass => format!("goto {next}"),
                        Action::Log => format!(
                            "log prefix \"margay {} {} {r}: \"",
                            quoted(&tier.name).chars().take(20).collect::<String>(),
                            quoted(&p.name).chars().take(40).collect::<String>()
                        ),
                    };
                    let comment = quoted(&format!("{}/{}/{dir} rule {r}", tier.name, p.name));
                    // A rule with no family-specific condition comes out the same for both.
                    let mut lines: Vec<String> = Vec::new();
                    for family in [Family::V4, Family::V6] {
                        for conds in self.rule(p, rule, family) {
                            let line = format!("    {} {action} comment \"{comment}\"\n", conds.join(" "));
                            if !lines.contains(&line) {
                                lines.push(line);
                            }
                        }
                    }
                    body.extend(lines);
                }
            }
            let default = match tier.default_action {
                TierDefault::Deny => "drop".to_owned(),
                TierDefault::Pass => format!("goto {next}"),
            };
            let _ = writeln!(
                self.out,
                "  chain {base}_t{k} {{\n    comment \"tier {}\"\n{body}    {default}\n  }}",
                quoted(&tier.name)
            );
        }
        let _ = writeln!(
            self.out,
            "  chain {end} {{\n    {}\n  }}",
            Self::verdict(self.set.defaults.no_policy_action)
        );
    }
}

/// The policy as an nftables ruleset (`nft -f`): replaces table `inet margay`.
pub fn export(set: &PolicySet) -> String {
    let mut x = Exporter { set, order: evaluation_order(set), out: String::new() };
    let _ = writeln!(
        x.out,
        "# Generated by `margay export nft`: the policy as nftables rules (docs/guide/policy-language.md)."
    );
    let _ = writeln!(x.out, "table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{");
    // Each address maps to its first endpoint, as the evaluator has it.
    let mut owners: Vec<(IpAddr, usize)> = Vec::new();
    for (i, e) in set.endpoints.iter().enumerate() {
        for ip in &e.ips {
            if !owners.iter().any(|(a, _)| a == ip) {
                owners.push((*ip, i));
            }
        }
    }
    let used: Vec<usize> = {
        let mut u: Vec<usize> = owners.iter().map(|(_, i)| *i).collect();
        u.sort_unstable();
        u.dedup();
        u
    };
    for &i in &used {
        x.side(i, &set.endpoints[i], false);
        x.side(i, &set.endpoints[i], true);
    }
    let mut fwd = String::new();
    fwd.push_str("  chain forward {\n    type filter hook forward priority filter; policy accept;\n");
    fwd.push_str("    ct state established,related accept\n    ct state invalid drop\n");
    for (dir, side) in [("saddr", "out"), ("daddr", "in")] {
        for family in [Family::V4, Family::V6] {
            let items: Vec<String> = owners
                .iter()
                .filter(|(a, _)| family.has(*a))
                .map(|(a, i)| format!("{a} : jump e{i}_{side}"))
                .collect();
            if !items.is_empty() {
                let _ = writeln!(fwd, "    {} {dir} vmap {}", family.ip(), set_of(&items));
            }
        }
    }
    for family in [Family::V4, Family::V6] {
        let local: Vec<String> =
            owners.iter().filter(|(a, _)| family.has(*a)).map(|(a, _)| a.to_string()).collect();
        if !local.is_empty() {
            let _ = writeln!(fwd, "    {} saddr {} accept", family.ip(), set_of(&local));
            let _ = writeln!(fwd, "    {} daddr {} accept", family.ip(), set_of(&local));
        }
    }
    let unmanaged = match set.defaults.unmanaged_action {
        Verdict::Allow => "accept",
        Verdict::Deny => "drop",
    };
    let _ = writeln!(fwd, "    {unmanaged}\n  }}");
    x.out.push_str(&fwd);
    x.out.push_str("}\n");
    x.out
}

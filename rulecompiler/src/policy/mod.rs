//! Policies (`margay_config::policy`) evaluated on flows.
//!
//! - [`reference`]: the plain evaluator of `docs/design/policy-contract.md`, the oracle for the
//!   compiled policy (the compiler, which lowers policies to classifier rules, comes next).
//!
//! A [`Flow`] is what the first packet of a connection says: protocol, addresses, ports (TCP,
//! UDP, SCTP) or ICMP type and code. A [`Decision`] names what decided it, per side.

pub mod compile;
mod intervals;
mod lower;
pub mod nft;
pub mod reference;

use std::net::IpAddr;

use margay_config::policy::{Endpoint, Policy, PolicySet, Verdict};

/// The header fields a policy decision depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    /// IP protocol number.
    pub protocol: u8,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port, for protocols with ports.
    pub src_port: Option<u16>,
    /// Destination port, for protocols with ports.
    pub dst_port: Option<u16>,
    /// ICMP type and code, for ICMP and ICMPv6.
    pub icmp: Option<(u8, u8)>,
}

/// What decided one side (an endpoint's egress or ingress).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideDecision {
    /// The side's verdict.
    pub verdict: Verdict,
    /// The deciding tier; `""` for a `[defaults]` verdict.
    pub tier: String,
    /// The deciding policy; `""` for a `[defaults]` verdict. For a tier default, the last
    /// policy of the tier that selected the endpoint.
    pub policy: String,
    /// Index of the deciding rule in the policy's rules of this direction; -1 for a tier
    /// default or a `[defaults]` verdict.
    pub rule: i32,
}

/// A `log` rule that matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogHit {
    /// `egress` (the source endpoint's) or `ingress` (the destination endpoint's).
    pub ingress: bool,
    /// Tier of the rule.
    pub tier: String,
    /// Policy of the rule.
    pub policy: String,
    /// Index of the rule in the policy's rules of that direction.
    pub rule: i32,
}

/// The whole decision for a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allow only when every side present allows (or, with no local side, `unmanaged_action`).
    pub verdict: Verdict,
    /// The source endpoint's egress, when the source is a local endpoint.
    pub egress: Option<SideDecision>,
    /// The destination endpoint's ingress, when the destination is a local endpoint.
    pub ingress: Option<SideDecision>,
    /// `log` rules that matched on the way, in evaluation order (egress first).
    pub log: Vec<LogHit>,
    /// The verdict if staged policies were enforced, when a staged policy selected a side.
    pub staged: Option<Verdict>,
}

/// Whether `policy` selects `endpoint` for the direction: its selector matches the labels, the
/// endpoint is in its namespace (for a namespaced policy), and the direction is in its types.
pub(crate) fn selects(policy: &Policy, endpoint: &Endpoint, ingress: bool) -> bool {
    (if ingress { policy.ingress_type } else { policy.egress_type })
        && policy.namespace.as_ref().is_none_or(|n| *n == endpoint.namespace)
        && policy.selector.matches(&endpoint.labels)
}

/// Whether `endpoint` is within a rule peer's namespace scope: the namespaces `ns` (the peer's
/// `namespace_selector`) selects; else the policy's own namespace for a namespaced policy; else
/// every namespace.
pub(crate) fn in_scope(
    set: &PolicySet,
    policy: &Policy,
    ns: Option<&margay_config::Selector>,
    endpoint: &Endpoint,
) -> bool {
    match (ns, &policy.namespace) {
        (Some(ns_sel), _) => {
            set.namespaces.iter().any(|n| n.name == endpoint.namespace && ns_sel.matches(&n.labels))
        }
        (None, Some(own)) => endpoint.namespace == *own,
        (None, None) => true,
    }
}

/// Indexes of `set.policies` in evaluation order: by tier (in `set.tiers` order), then
/// `order` (unset last), then name.
pub(crate) fn evaluation_order(set: &PolicySet) -> Vec<usize> {
    let tier_rank = |p: &Policy| set.tiers.iter().position(|t| t.name == p.tier).unwrap_or(usize::MAX);
    let mut order: Vec<usize> = (0..set.policies.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&set.policies[a], &set.policies[b]);
        tier_rank(a)
            .cmp(&tier_rank(b))
            .then_with(|| match (a.order, b.order) {
                (Some(x), Some(y)) => x.total_cmp(&y),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            })
            .then_with(|| a.name.cmp(&b.name))
    });
    order
}

/// Allow only when every side present allows.
pub(crate) fn combine(egress: Option<&SideDecision>, ingress: Option<&SideDecision>) -> Verdict {
    combine_verdicts(egress.map(|s| s.verdict), ingress.map(|s| s.verdict))
}

/// Allow only when every side present allows.
pub(crate) fn combine_verdicts(egress: Option<Verdict>, ingress: Option<Verdict>) -> Verdict {
    if egress == Some(Verdict::Deny) || ingress == Some(Verdict::Deny) {
        Verdict::Deny
    } else {
        Verdict::Allow
    }
}

impl Flow {
    /// Parses `PROTO SRC[:PORT] -> DST[:PORT]`, with IPv6 addresses written `[addr]:port` when
    /// they carry a port, and an optional ICMP `TYPE/CODE` (or `TYPE`, code 0). PROTO is tcp,
    /// udp, icmp, icmpv6, sctp or a number.
    pub fn parse(text: &str, icmp: Option<&str>) -> Result<Self, String> {
        let (proto, rest) = text
            .trim()
            .split_once(char::is_whitespace)
            .ok_or("expected \"PROTO SRC[:PORT] -> DST[:PORT]\"")?;
        let protocol: margay_config::net::Protocol = proto.parse()?;
        let (src, dst) = rest.split_once("->").ok_or("expected '->' between source and destination")?;
        let (src, src_port) = parse_endpoint(src.trim())?;
        let (dst, dst_port) = parse_endpoint(dst.trim())?;
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(format!("{src} and {dst} are of different address families"));
        }
        let has_ports = protocol.has_ports();
        if !has_ports && (src_port.is_some() || dst_port.is_some()) {
            return Err(format!("protocol {protocol} has no ports"));
        }
        let icmp = match icmp {
            None => None,
            Some(_) if !protocol.is_icmp() => {
                return Err(format!("--icmp needs protocol icmp or icmpv6, not {protocol}"));
            }
            Some(s) => {
                let byte = |v: &str| {
                    v.trim().parse::<u8>().map_err(|_| format!("'{v}' is not an ICMP type or code (0..=255)"))
                };
                Some(match s.split_once('/') {
                    Some((t, c)) => (byte(t)?, byte(c)?),
                    None => (byte(s)?, 0),
                })
            }
        };
        Ok(Flow {
            protocol: protocol.0,
            src,
            dst,
            src_port: if has_ports { Some(src_port.unwrap_or(0)) } else { None },
            dst_port: if has_ports { Some(dst_port.unwrap_or(0)) } else { None },
            icmp,
        })
    }
}

/// `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]:80`.
fn parse_endpoint(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    let port = |p: &str| p.parse::<u16>().map_err(|_| format!("'{p}' is not a port (0..=65535)"));
    if let Some(rest) = s.strip_prefix('[') {
        let (addr, after) = rest.split_once(']').ok_or_else(|| format!("'{s}': missing ']'"))?;
        let addr = addr.parse().map_err(|_| format!("'{addr}' is not an IPv6 address"))?;
        return match after.strip_prefix(':') {
            Some(p) => Ok((addr, Some(port(p)?))),
            None if after.is_empty() => Ok((addr, None)),
            None => Err(format!("'{s}': unexpected '{after}' after ']'")),
        };
    }
    if let Ok(addr) = s.parse::<IpAddr>() {
        return Ok((addr, None));
    }
    match s.rsplit_once(':') {
        Some((a, p)) if !a.contains(':') => {
            let addr = a.parse().map_err(|_| format!("'{a}' is not an IP address"))?;
            Ok((addr, Some(port(p)?)))
        }
        _ => Err(format!("'{s}' is not an address (IPv6 with a port is written [addr]:port)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_parse() {
        let f = Flow::parse("tcp 198.18.10.2:40000 -> 198.18.10.11:80", None).unwrap();
        assert_eq!((f.protocol, f.src_port, f.dst_port), (6, Some(40000), Some(80)));
        let f = Flow::parse("udp [2001:2::1]:53 -> [2001:2::53]:53", None).unwrap();
        assert_eq!((f.src.to_string().as_str(), f.dst_port), ("2001:2::1", Some(53)));
        let f = Flow::parse("icmp 198.18.0.1 -> 198.18.0.2", Some("8/0")).unwrap();
        assert_eq!((f.icmp, f.src_port), (Some((8, 0)), None));
        let f = Flow::parse("icmpv6 2001:2::1 -> 2001:2::2", Some("128")).unwrap();
        assert_eq!(f.icmp, Some((128, 0)));
        let f = Flow::parse("47 198.18.0.1 -> 198.18.0.2", None).unwrap();
        assert_eq!((f.protocol, f.src_port), (47, None));
        for (bad, icmp, want) in [
            ("tcp 198.18.0.1 198.18.0.2", None, "'->'"),
            ("tcp 198.18.0.1:70000 -> 198.18.0.2:1", None, "not a port"),
            ("tcp 198.18.0.1 -> 2001:2::1", None, "different address families"),
            ("icmp 198.18.0.1:5 -> 198.18.0.2", None, "has no ports"),
            ("tcp 198.18.0.1 -> 198.18.0.2", Some("8/0"), "needs protocol icmp"),
            ("icmp 198.18.0.1 -> 198.18.0.2", Some("300"), "not an ICMP type"),
            ("gre 198.18.0.1 -> 198.18.0.2", None, "not a protocol"),
            ("tcp 198.18.0.1:80:1 -> 198.18.0.2", None, "is not an address"),
            ("tcp [2001:2::1:80 -> 2001:2::2", None, "missing ']'"),
            ("", None, "expected"),
        ] {
            let e = Flow::parse(bad, icmp).unwrap_err();
            assert!(e.contains(want), "{bad:?}: {e}");
        }
    }
}

//! The raw form of a policy file (what serde reads, shape and single values checked) and its
//! validation into a [`PolicySet`] (what spans objects).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::*;
use crate::net::{Cidr, IcmpMatch, PortRange, Protocol};
use crate::selector::Selector;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    #[serde(default)]
    namespace: Vec<RawNamespace>,
    #[serde(default)]
    endpoint: Vec<RawEndpoint>,
    #[serde(default)]
    netset: Vec<RawNetset>,
    #[serde(default)]
    tier: Vec<RawTier>,
    #[serde(default)]
    policy: Vec<RawPolicy>,
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    intentionally_empty: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNamespace {
    name: Spanned<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    name: Spanned<String>,
    namespace: Option<Spanned<String>>,
    ips: Vec<Spanned<IpAddr>>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    interface: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetset {
    name: Spanned<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    nets: Vec<Cidr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    name: Spanned<String>,
    order: Spanned<f64>,
    default_action: Option<TierDefault>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: Spanned<String>,
    tier: Option<Spanned<String>>,
    order: Option<Spanned<f64>>,
    namespace: Option<Spanned<String>>,
    selector: Option<Selector>,
    types: Option<Spanned<Vec<Direction>>>,
    #[serde(default)]
    staged: bool,
    #[serde(default)]
    ingress: Vec<Spanned<RawRule>>,
    #[serde(default)]
    egress: Vec<Spanned<RawRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    action: Action,
    protocol: Option<Protocol>,
    not_protocol: Option<Protocol>,
    ip_version: Option<IpVersion>,
    icmp: Option<IcmpMatch>,
    not_icmp: Option<IcmpMatch>,
    #[serde(default)]
    source: RawPeer,
    #[serde(default)]
    destination: RawPeer,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    #[serde(default)]
    nets: Vec<Cidr>,
    #[serde(default)]
    not_nets: Vec<Cidr>,
    selector: Option<Selector>,
    not_selector: Option<Selector>,
    namespace_selector: Option<Selector>,
    #[serde(default)]
    ports: Vec<PortRange>,
    #[serde(default)]
    not_ports: Vec<PortRange>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    no_policy_action: Option<Verdict>,
    unmanaged_action: Option<Verdict>,
}

// ---------------------------------------------------------------------------------------------
// Checked form: what the compiler and the reference evaluator consume.

pub(super) struct Validator<'a> {
    pub(super) at: &'a dyn Fn(Option<Range<usize>>, String) -> PolicyError,
}

impl Validator<'_> {
    fn err<T>(&self, span: Range<usize>, message: String) -> Result<T, PolicyError> {
        Err((self.at)(Some(span), message))
    }

    /// Checks that names are unique, pointing at the second use.
    fn unique<'n>(
        &self,
        what: &str,
        names: impl Iterator<Item = &'n Spanned<String>>,
    ) -> Result<(), PolicyError> {
        let mut seen = BTreeSet::new();
        for n in names {
            if n.get_ref().is_empty() {
                return self.err(n.span(), format!("{what} name is empty"));
            }
            if !seen.insert(n.get_ref().as_str()) {
                return self.err(n.span(), format!("duplicate {what} name '{}'", n.get_ref()));
            }
        }
        Ok(())
    }

    pub(super) fn run(&self, raw: RawFile) -> Result<PolicySet, PolicyError> {
        let namespaces = self.namespaces(raw.namespace)?;
        let endpoints = self.endpoints(raw.endpoint, &namespaces)?;
        self.unique("netset", raw.netset.iter().map(|n| &n.name))?;
        let netsets = raw
            .netset
            .into_iter()
            .map(|n| Netset { name: n.name.into_inner(), labels: n.labels, nets: n.nets })
            .collect();
        let tiers = self.tiers(raw.tier)?;
        let mut seen = BTreeSet::new();
        let policies = raw
            .policy
            .into_iter()
            .map(|p| self.policy(p, &namespaces, &tiers, &mut seen))
            .collect::<Result<_, _>>()?;
        Ok(PolicySet {
            namespaces,
            endpoints,
            netsets,
            tiers,
            policies,
            defaults: Defaults {
                no_policy_action: raw.defaults.no_policy_action.unwrap_or(Verdict::Allow),
                unmanaged_action: raw.defaults.unmanaged_action.unwrap_or(Verdict::Allow),
            },
            intentionally_empty: raw.intentionally_empty,
        })
    }

    /// The declared namespaces, and `default` unless declared.
    fn namespaces(&self, raw: Vec<RawNamespace>) -> Result<Vec<Namespace>, PolicyError> {
        self.unique("namespace", raw.iter().map(|n| &n.name))?;
        let mut namespaces: Vec<Namespace> =
            raw.into_iter().map(|n| Namespace { name: n.name.into_inner(), labels: n.labels }).collect();
        if !namespaces.iter().any(|n| n.name == DEFAULT_NAMESPACE) {
            namespaces.insert(0, Namespace { name: DEFAULT_NAMESPACE.into(), labels: BTreeMap::new() });
        }
        Ok(namespaces)
    }

    /// `n`, when it names a declared namespace.
    fn known_ns(&self, namespaces: &[Namespace], n: &Spanned<String>) -> Result<String, PolicyError> {
        if namespaces.iter().any(|ns| ns.name == *n.get_ref()) {
            Ok(n.get_ref().clone())
        } else {
            self.err(n.span(), format!("unknown namespace '{}' (declare it with [[namespace]])", n.get_ref()))
        }
    }

    /// Endpoints: unique names, known namespaces, some addresses, none shared.
    fn endpoints(
        &self,
        raw: Vec<RawEndpoint>,
        namespaces: &[Namespace],
    ) -> Result<Vec<Endpoint>, PolicyError> {
        self.unique("endpoint", raw.iter().map(|e| &e.name))?;
        let mut owner: BTreeMap<IpAddr, String> = BTreeMap::new();
        let mut endpoints = Vec::new();
        for e in raw {
            let namespace = match &e.namespace {
                Some(n) => self.known_ns(namespaces, n)?,
                None => DEFAULT_NAMESPACE.to_owned(),
            };
            if e.ips.is_empty() {
                return self.err(e.name.span(), format!("endpoint '{}' has no ips", e.name.get_ref()));
            }
            for ip in &e.ips {
                if let Some(other) = owner.insert(*ip.get_ref(), e.name.get_ref().clone()) {
                    return self.err(
                        ip.span(),
                        format!("address {} belongs to endpoint '{other}' already", ip.get_ref()),
                    );
                }
            }
            endpoints.push(Endpoint {
                name: e.name.into_inner(),
                namespace,
                ips: e.ips.into_iter().map(Spanned::into_inner).collect(),
                labels: e.labels,
                interface: e.interface,
            });
        }
        Ok(endpoints)
    }

    /// Tiers in evaluation order: the declared ones and the built-in `default`.
    fn tiers(&self, raw: Vec<RawTier>) -> Result<Vec<Tier>, PolicyError> {
        self.unique("tier", raw.iter().map(|t| &t.name))?;
        let mut tiers = vec![Tier {
            name: DEFAULT_TIER.into(),
            order: DEFAULT_TIER_ORDER,
            default_action: TierDefault::Deny,
        }];
        for t in raw {
            if t.name.get_ref() == DEFAULT_TIER {
                return self.err(
                    t.name.span(),
                    "tier 'default' is built in (order 1000000, default_action deny)".into(),
                );
            }
            if !t.order.get_ref().is_finite() {
                return self.err(t.order.span(), "order must be a finite number".into());
            }
            tiers.push(Tier {
                name: t.name.into_inner(),
                order: t.order.into_inner(),
                default_action: t.default_action.unwrap_or(TierDefault::Deny),
            });
        }
        tiers.sort_by(|a, b| a.order.total_cmp(&b.order).then_with(|| a.name.cmp(&b.name)));
        Ok(tiers)
    }

    /// One policy: a unique name in its scope, a known tier and namespace, finite order,
    /// rules only in the directions its `types` name.
    fn policy(
        &self,
        p: RawPolicy,
        namespaces: &[Namespace],
        tiers: &[Tier],
        seen: &mut BTreeSet<(Option<String>, String)>,
    ) -> Result<Policy, PolicyError> {
        let namespace = p.namespace.as_ref().map(|n| self.known_ns(namespaces, n)).transpose()?;
        if p.name.get_ref().is_empty() {
            return self.err(p.name.span(), "policy name is empty".into());
        }
        if !seen.insert((namespace.clone(), p.name.get_ref().clone())) {
            let scope = namespace.as_deref().map_or("global".to_owned(), |n| format!("namespace '{n}'"));
            return self
                .err(p.name.span(), format!("duplicate policy name '{}' in {scope}", p.name.get_ref()));
        }
        let tier = match &p.tier {
            Some(t) if !tiers.iter().any(|x| x.name == *t.get_ref()) => {
                return self
                    .err(t.span(), format!("unknown tier '{}' (declare it with [[tier]])", t.get_ref()));
            }
            Some(t) => t.get_ref().clone(),
            None => DEFAULT_TIER.to_owned(),
        };
        if let Some(o) = &p.order
            && !o.get_ref().is_finite()
        {
            return self.err(o.span(), "order must be a finite number".into());
        }
        let (ingress_type, egress_type) = match &p.types {
            Some(t) if t.get_ref().is_empty() => {
                return self.err(t.span(), "types is empty: give ingress, egress or both".into());
            }
            Some(t) => (t.get_ref().contains(&Direction::Ingress), t.get_ref().contains(&Direction::Egress)),
            None => (true, !p.egress.is_empty()),
        };
        for (rules, wanted, dir) in
            [(&p.ingress, ingress_type, "ingress"), (&p.egress, egress_type, "egress")]
        {
            if let Some(r) = rules.first()
                && !wanted
            {
                return self.err(r.span(), format!("{dir} rules in a policy whose types leave out {dir}"));
            }
        }
        let ingress = p.ingress.into_iter().map(|r| self.rule(r)).collect::<Result<_, _>>()?;
        let egress = p.egress.into_iter().map(|r| self.rule(r)).collect::<Result<_, _>>()?;
        Ok(Policy {
            name: p.name.into_inner(),
            tier,
            order: p.order.map(Spanned::into_inner),
            namespace,
            selector: p.selector.unwrap_or(Selector::All),
            ingress_type,
            egress_type,
            staged: p.staged,
            ingress,
            egress,
        })
    }

    fn rule(&self, raw: Spanned<RawRule>) -> Result<Rule, PolicyError> {
        let span = raw.span();
        let r = raw.into_inner();
        let has_ports = |p: &RawPeer| !p.ports.is_empty() || !p.not_ports.is_empty();
        if (has_ports(&r.source) || has_ports(&r.destination)) && !r.protocol.is_some_and(Protocol::has_ports)
        {
            return self
                .err(span, "ports need protocol = \"tcp\", \"udp\" or \"sctp\" in the same rule".into());
        }
        if (r.icmp.is_some() || r.not_icmp.is_some()) && !r.protocol.is_some_and(Protocol::is_icmp) {
            return self.err(
                span,
                "icmp and not_icmp need protocol = \"icmp\" or \"icmpv6\" in the same rule".into(),
            );
        }
        // An address family pinned by ip_version or by the ICMP flavour must agree with the nets.
        let family = match (r.ip_version, r.protocol) {
            (Some(v), Some(p)) if p.is_icmp() && (v == IpVersion::V4) != (p == Protocol::ICMP) => {
                return self.err(
                    span,
                    format!(
                        "protocol {p} does not go with ip_version {}",
                        if v == IpVersion::V4 { 4 } else { 6 }
                    ),
                );
            }
            (Some(v), _) => Some(v),
            (None, Some(Protocol::ICMP)) => Some(IpVersion::V4),
            (None, Some(Protocol::ICMPV6)) => Some(IpVersion::V6),
            _ => None,
        };
        if let Some(v) = family {
            let all = [&r.source.nets, &r.source.not_nets, &r.destination.nets, &r.destination.not_nets];
            if let Some(bad) = all.iter().flat_map(|n| n.iter()).find(|c| c.is_ipv4() != (v == IpVersion::V4))
            {
                return self.err(
                    span,
                    format!(
                        "net {bad} is of the other address family than this rule's ip_version or protocol"
                    ),
                );
            }
        }
        let peer = |p: RawPeer| Peer {
            nets: p.nets,
            not_nets: p.not_nets,
            selector: p.selector,
            not_selector: p.not_selector,
            namespace_selector: p.namespace_selector,
            ports: p.ports,
            not_ports: p.not_ports,
        };
        Ok(Rule {
            action: r.action,
            protocol: r.protocol,
            not_protocol: r.not_protocol,
            ip_version: r.ip_version,
            icmp: r.icmp,
            not_icmp: r.not_icmp,
            source: peer(r.source),
            destination: peer(r.destination),
            index: None,
        })
    }
}

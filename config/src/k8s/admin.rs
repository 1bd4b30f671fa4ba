//! `policy.networking.k8s.io/v1alpha1` AdminNetworkPolicy and BaselineAdminNetworkPolicy,
//! landed as Calico lands them: the tier `kube-admin` (order 1,000, before every usual tier)
//! holds the AdminNetworkPolicies, ordered by `priority`; the tier `kube-baseline` (order
//! 10,000,000, after `default`) holds the BaselineAdminNetworkPolicy. Both tiers pass on what
//! their policies do not decide, so NetworkPolicies (in `default`) sit between them, and an
//! endpoint no tier decides for is allowed, as on a Calico cluster.
//!
//! Subjects and peers select pods by their namespace's labels (`namespaces`) or by both
//! (`pods`: `namespaceSelector` and `podSelector`), cluster-wide; `networks` are CIDRs. Rules:
//! Allow, Deny and (admin only) Pass; ports as `portNumber`, `portRange` or `namedPort` (a
//! name matched under TCP, UDP and SCTP alike). `nodes` peers are refused: Margay has no node
//! objects. Upstream leaves the order of equal priorities undefined; Margay orders them by name.

use marked_yaml::{Span, Spanned};

use super::{NamedPorts, PortEntry, Resources, pods};
use crate::net::{Cidr, PortRange, Protocol};
use crate::policy::{Action, Peer, Policy, PolicyError, Rule, Tier, TierDefault};
use crate::selector::{Inherit, Selector};

/// The API version read.
pub(super) const API_VERSION: &str = "policy.networking.k8s.io/v1alpha1";

/// The tier of AdminNetworkPolicies.
pub const ADMIN_TIER: &str = "kube-admin";
/// Its order: before every tier with a usual order.
pub const ADMIN_TIER_ORDER: f64 = 1_000.0;
/// The tier of the BaselineAdminNetworkPolicy.
pub const BASELINE_TIER: &str = "kube-baseline";
/// Its order: after the default tier.
pub const BASELINE_TIER_ORDER: f64 = 10_000_000.0;

/// An AdminNetworkPolicy (`baseline` false) or the BaselineAdminNetworkPolicy.
#[derive(Debug)]
pub(super) struct AdminPolicy {
    pub baseline: bool,
    pub policy: schema::AdminNetworkPolicy,
}

impl Resources {
    /// The admin tiers the resources need (none without admin policies).
    pub(super) fn admin_tiers(&self) -> Vec<Tier> {
        let mut out = Vec::new();
        for (baseline, name, order) in
            [(false, ADMIN_TIER, ADMIN_TIER_ORDER), (true, BASELINE_TIER, BASELINE_TIER_ORDER)]
        {
            let present = self
                .resources
                .iter()
                .any(|(_, r)| matches!(r, super::Resource::Admin(a) if a.baseline == baseline));
            if present {
                out.push(Tier { name: name.to_owned(), order, default_action: TierDefault::Pass });
            }
        }
        out
    }

    /// An AdminNetworkPolicy or BaselineAdminNetworkPolicy as a policy of its tier.
    pub(super) fn admin_policy(
        &self,
        span: &Span,
        a: &AdminPolicy,
        named_ports: &NamedPorts,
    ) -> Result<Policy, PolicyError> {
        let name = self.name(span, &a.policy.metadata)?;
        let spec = &a.policy.spec;
        let (tier, policy_name, order) = if a.baseline {
            if name != "default" {
                let at = a.policy.metadata.name.as_ref().map_or(span, |n| n.span());
                return Err(
                    self.at(at, format!("a BaselineAdminNetworkPolicy is named 'default', not '{name}'"))
                );
            }
            if let Some(p) = &spec.priority {
                return Err(self.at(p.span(), "a BaselineAdminNetworkPolicy has no priority".into()));
            }
            (BASELINE_TIER, format!("kbanp.baselineadminnetworkpolicy.{name}"), None)
        } else {
            let Some(p) = &spec.priority else {
                return Err(self.at(spec.span(), "spec.priority is required (0..=1000, lower first)".into()));
            };
            let priority = match p.parse::<u16>() {
                Ok(v) if v <= 1000 => f64::from(v),
                _ => return Err(self.at(p.span(), format!("priority '{}': 0..=1000", p.as_str()))),
            };
            (ADMIN_TIER, format!("kanp.adminnetworkpolicy.{name}"), Some(priority))
        };
        let selector = self.subject(&spec.subject)?;
        let mut directions = Vec::new();
        for (rules, ingress) in [(&spec.ingress, true), (&spec.egress, false)] {
            let mut out = Vec::new();
            for (index, rule) in rules.iter().flatten().enumerate() {
                self.admin_rule(rule, index, ingress, a.baseline, named_ports, &mut out)?;
            }
            directions.push(out);
        }
        let egress = directions.pop().unwrap_or_default();
        let ingress = directions.pop().unwrap_or_default();
        Ok(Policy {
            name: policy_name,
            tier: tier.to_owned(),
            order,
            namespace: None,
            selector,
            ingress_type: spec.ingress.as_ref().is_some_and(|r| !r.is_empty()),
            egress_type: spec.egress.as_ref().is_some_and(|r| !r.is_empty()),
            staged: false,
            ingress,
            egress,
        })
    }

    /// The pods a subject or peer (`namespaces` or `pods`) selects, cluster-wide.
    fn admin_pods(
        &self,
        namespaces: Option<&Spanned<super::schema::LabelSelector>>,
        pods_: Option<&Spanned<schema::NamespacedPod>>,
        at: &Span,
    ) -> Result<Selector, PolicyError> {
        match (namespaces, pods_) {
            (Some(ns), None) => Ok(pods(self.label_selector_inherited(ns, Some(Inherit::Namespace))?)),
            (None, Some(p)) => {
                let ns = self.label_selector_inherited(&p.namespace_selector, Some(Inherit::Namespace))?;
                let pod = self.label_selector(&p.pod_selector)?;
                Ok(pods(Selector::And(vec![ns, pod])))
            }
            _ => Err(self.at(at, "give exactly one of namespaces and pods".into())),
        }
    }

    fn subject(&self, s: &Spanned<schema::Subject>) -> Result<Selector, PolicyError> {
        self.admin_pods(s.namespaces.as_ref(), s.pods.as_ref(), s.span())
    }

    fn admin_rule(
        &self,
        rule: &Spanned<schema::AdminRule>,
        index: usize,
        ingress: bool,
        baseline: bool,
        named_ports: &NamedPorts,
        out: &mut Vec<Rule>,
    ) -> Result<(), PolicyError> {
        let action = match (rule.action.as_str(), baseline) {
            ("Allow", _) => Action::Allow,
            ("Deny", _) => Action::Deny,
            ("Pass", false) => Action::Pass,
            (other, _) => {
                let allowed = if baseline { "Allow or Deny" } else { "Allow, Deny or Pass" };
                return Err(self.at(rule.action.span(), format!("action '{other}': {allowed}")));
            }
        };
        let (peers, wrong) = if ingress { (&rule.from, &rule.to) } else { (&rule.to, &rule.from) };
        if let Some(w) = wrong {
            let (field, dir) = if ingress { ("to", "an ingress") } else { ("from", "an egress") };
            return Err(self.at(w.span(), format!("`{field}` in {dir} rule")));
        }
        let Some(peers) = peers.as_ref().filter(|p| !p.is_empty()) else {
            let field = if ingress { "from" } else { "to" };
            return Err(self.at(rule.span(), format!("a rule needs `{field}` (at least one peer)")));
        };
        let mut lowered = Vec::new();
        for p in peers.iter() {
            if let Some(n) = &p.nodes {
                return Err(
                    self.at(n.span(), "nodes peers are not supported (Margay has no node objects)".into())
                );
            }
            if let Some(n) = &p.networks {
                if ingress {
                    return Err(self.at(n.span(), "networks are egress peers".into()));
                }
                let nets = n
                    .iter()
                    .map(|c| c.parse::<Cidr>().map_err(|e| self.at(c.span(), e)))
                    .collect::<Result<_, _>>()?;
                if p.namespaces.is_some() || p.pods.is_some() {
                    return Err(self.at(p.span(), "give exactly one of namespaces, pods and networks".into()));
                }
                lowered.push(Peer { nets, ..Peer::default() });
                continue;
            }
            let selector = self.admin_pods(p.namespaces.as_ref(), p.pods.as_ref(), p.span())?;
            lowered.push(Peer {
                selector: Some(selector),
                namespace_selector: Some(Selector::All),
                ..Peer::default()
            });
        }
        let mut entries: Vec<PortEntry> = Vec::new();
        for port in rule.ports.iter().flatten() {
            let protocol = |p: Option<&Spanned<String>>| self.k8s_protocol(p, port.span());
            match (&port.port_number, &port.port_range, &port.named_port) {
                (Some(n), None, None) => {
                    let number = self.port_number(&n.port)?;
                    entries.push((
                        Some(protocol(n.protocol.as_ref())?),
                        PortRange::new(number, number).into_iter().collect(),
                        None,
                    ));
                }
                (None, Some(r), None) => {
                    let (lo, hi) = (self.port_number(&r.start)?, self.port_number(&r.end)?);
                    let Some(range) = PortRange::new(lo, hi) else {
                        return Err(self.at(r.end.span(), format!("end {hi} is below start {lo}")));
                    };
                    entries.push((Some(protocol(r.protocol.as_ref())?), vec![range], None));
                }
                (None, None, Some(name)) => {
                    self.check_port_name(name)?;
                    for p in [Protocol::TCP, Protocol::UDP, Protocol::SCTP] {
                        entries.push((Some(p), Vec::new(), Some(name.to_string())));
                    }
                }
                _ => {
                    return Err(self
                        .at(port.span(), "give exactly one of portNumber, portRange and namedPort".into()));
                }
            }
        }
        if entries.is_empty() {
            entries.push((None, Vec::new(), None));
        }
        out.extend(Self::peer_port_rules(action, ingress, index, &lowered, &entries, named_ports));
        Ok(())
    }
}

/// The resources as written, read with positions; unknown fields are errors.
pub(super) mod schema {
    use marked_yaml::Spanned;
    use serde::Deserialize;
    use serde::de::IgnoredAny;

    use super::super::schema::{LabelSelector, Metadata};

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct AdminNetworkPolicy {
        #[serde(rename = "apiVersion")]
        pub _api_version: IgnoredAny,
        #[serde(rename = "kind")]
        pub _kind: IgnoredAny,
        pub metadata: Metadata,
        pub spec: Spanned<Spec>,
        #[serde(rename = "status")]
        pub _status: Option<IgnoredAny>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Spec {
        pub priority: Option<Spanned<String>>,
        pub subject: Spanned<Subject>,
        pub ingress: Option<Vec<Spanned<AdminRule>>>,
        pub egress: Option<Vec<Spanned<AdminRule>>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Subject {
        pub namespaces: Option<Spanned<LabelSelector>>,
        pub pods: Option<Spanned<NamespacedPod>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct NamespacedPod {
        pub namespace_selector: Spanned<LabelSelector>,
        pub pod_selector: Spanned<LabelSelector>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct AdminRule {
        /// A label for the rule: no bearing on verdicts.
        #[serde(rename = "name")]
        pub _name: Option<IgnoredAny>,
        pub action: Spanned<String>,
        pub from: Option<Spanned<Vec<Spanned<AdminPeer>>>>,
        pub to: Option<Spanned<Vec<Spanned<AdminPeer>>>>,
        pub ports: Option<Vec<Spanned<AdminPort>>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct AdminPeer {
        pub namespaces: Option<Spanned<LabelSelector>>,
        pub pods: Option<Spanned<NamespacedPod>>,
        pub nodes: Option<Spanned<IgnoredAny>>,
        pub networks: Option<Spanned<Vec<Spanned<String>>>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct AdminPort {
        pub port_number: Option<Spanned<PortNumber>>,
        pub port_range: Option<Spanned<PortRange>>,
        pub named_port: Option<Spanned<String>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct PortNumber {
        pub protocol: Option<Spanned<String>>,
        pub port: Spanned<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct PortRange {
        pub protocol: Option<Spanned<String>>,
        pub start: Spanned<String>,
        pub end: Spanned<String>,
    }
}

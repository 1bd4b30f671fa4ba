//! Calico `projectcalico.org/v3` resources landed in Margay's model as Felix lands them
//! (docs/guide/kubernetes.md):
//!
//! - a NetworkPolicy of namespace `NS` is a policy of `NS` selecting `selector &&
//!   pcsa.(serviceAccountSelector)`; a GlobalNetworkPolicy a global one selecting `selector &&
//!   pcns.(namespaceSelector) && pcsa.(serviceAccountSelector)`; staged kinds are staged
//!   policies named `staged:NAME`; a Tier is a tier;
//! - an entity rule's selector is scoped as Calico scopes it, over the labels every endpoint
//!   and network set carries: its `namespaceSelector` over the `pcns.` labels (`all()` any
//!   namespace, `global()` none), else the policy's own namespace
//!   (`projectcalico.org/namespace == 'NS'`) for a namespaced policy, ANDed with its
//!   `serviceAccounts` (`pcsa.` labels and `projectcalico.org/serviceaccount`) and `selector`
//!   whenever any of them, or a `notSelector`, is given; `notSelector` itself is not scoped;
//! - a GlobalNetworkSet is a netset with its labels; a NetworkSet one with its namespace's
//!   labels too, as endpoints have, so the same scoping reaches it;
//! - a WorkloadEndpoint is an endpoint, as a Pod is.
//!
//! Fields Margay does not enforce (`http`, `services`, `allowedEgressDomains`, `doNotTrack`,
//! `preDNAT`, `applyOnForward`, profiles with rules, NAT) are errors, never dropped.

use std::collections::BTreeSet;

use marked_yaml::{Node, Span, Spanned};

use super::{Labels, NamedPorts, PortNames, Resources, STAGED_PREFIX, Workload, inherit};
use crate::net::{Cidr, IcmpMatch, PortRange, Protocol};
use crate::policy::{
    Action, DEFAULT_TIER, DEFAULT_TIER_ORDER, IpVersion, Namespace, Netset, Peer, Policy, PolicyError, Rule,
    Tier, TierDefault,
};
use crate::selector::{Inherit, NAMESPACE_LABEL, Selector};

/// The Calico API version read.
pub(super) const API_VERSION: &str = "projectcalico.org/v3";

/// The Calico kinds read.
pub(super) const KINDS: &[&str] = &[
    "NetworkPolicy",
    "GlobalNetworkPolicy",
    "StagedNetworkPolicy",
    "StagedGlobalNetworkPolicy",
    "StagedKubernetesNetworkPolicy",
    "Tier",
    "NetworkSet",
    "GlobalNetworkSet",
    "WorkloadEndpoint",
    "HostEndpoint",
];

/// Order of a tier without one: after every tier with an order (`default` included), as in
/// Calico.
pub const UNORDERED_TIER: f64 = f64::MAX;

/// A Calico resource read.
#[derive(Debug)]
pub(super) enum Resource {
    Tier(schema::Tier),
    Policy(Box<PolicyResource>),
    /// A NetworkSet (with its namespace) or a GlobalNetworkSet.
    NetworkSet(Option<String>, schema::NetworkSet),
    WorkloadEndpoint(String, schema::WorkloadEndpoint),
    HostEndpoint(schema::HostEndpoint),
}

/// A (Global, Staged) NetworkPolicy.
#[derive(Debug)]
pub(super) struct PolicyResource {
    pub kind: &'static str,
    /// `None` for the global kinds.
    pub namespace: Option<String>,
    pub staged: bool,
    pub policy: schema::Policy,
}

impl Resource {
    pub(super) fn namespace(&self) -> Option<&str> {
        match self {
            Resource::Tier(_) | Resource::HostEndpoint(_) => None,
            Resource::Policy(p) => p.namespace.as_deref(),
            Resource::NetworkSet(ns, _) => ns.as_deref(),
            Resource::WorkloadEndpoint(ns, _) => Some(ns),
        }
    }
}

impl Resources {
    /// Reads a Calico resource of `kind` (one of [`KINDS`] but StagedKubernetesNetworkPolicy),
    /// in namespace `ns` when it is namespaced.
    pub(super) fn calico_resource(
        &self,
        node: &Node,
        kind: &str,
        ns: String,
    ) -> Result<Resource, PolicyError> {
        let kind: &'static str = KINDS.iter().find(|k| **k == kind).copied().unwrap_or("NetworkPolicy");
        let policy = |namespace: Option<String>, staged| -> Result<Resource, PolicyError> {
            Ok(Resource::Policy(Box::new(PolicyResource {
                kind,
                namespace,
                staged,
                policy: self.decode(node)?,
            })))
        };
        match kind {
            "Tier" => Ok(Resource::Tier(self.decode(node)?)),
            "GlobalNetworkPolicy" => policy(None, false),
            "StagedGlobalNetworkPolicy" => policy(None, true),
            "StagedNetworkPolicy" => policy(Some(ns), true),
            "NetworkSet" => Ok(Resource::NetworkSet(Some(ns), self.decode(node)?)),
            "GlobalNetworkSet" => Ok(Resource::NetworkSet(None, self.decode(node)?)),
            "WorkloadEndpoint" => Ok(Resource::WorkloadEndpoint(ns, self.decode(node)?)),
            "HostEndpoint" => Ok(Resource::HostEndpoint(self.decode(node)?)),
            _ => policy(Some(ns), false),
        }
    }

    /// The tiers: `default` and every Tier, in evaluation order (by order, unordered last, then
    /// name).
    pub(super) fn tiers(&self) -> Result<Vec<Tier>, PolicyError> {
        let mut tiers = vec![Tier {
            name: DEFAULT_TIER.into(),
            order: DEFAULT_TIER_ORDER,
            default_action: TierDefault::Deny,
        }];
        let mut given = BTreeSet::new();
        for (span, r) in &self.resources {
            let super::Resource::Calico(Resource::Tier(t)) = r else { continue };
            let name = self.name(span, &t.metadata)?;
            if !given.insert(name.clone()) {
                return Err(self.at(span, format!("Tier '{name}' is given twice")));
            }
            if [super::admin::ADMIN_TIER, super::admin::BASELINE_TIER].contains(&name.as_str()) {
                let at = t.metadata.name.as_ref().map_or(span, |n| n.span());
                return Err(self.at(
                    at,
                    format!("tier '{name}' holds the admin network policies: it is not given as a Tier"),
                ));
            }
            let spec = t.spec.as_ref();
            let order = spec.and_then(|s| s.order.as_ref()).map(|o| self.order(o)).transpose()?;
            let default_action = match spec.and_then(|s| s.default_action.as_ref()) {
                None => TierDefault::Deny,
                Some(a) if a.as_str() == "Deny" => TierDefault::Deny,
                Some(a) if a.as_str() == "Pass" => TierDefault::Pass,
                Some(a) => {
                    return Err(self.at(a.span(), format!("defaultAction '{}': Deny or Pass", a.as_str())));
                }
            };
            if name == DEFAULT_TIER {
                // The built-in tier may be given (for its default action), not moved.
                if order.is_some_and(|o| o != DEFAULT_TIER_ORDER) {
                    return Err(self.at(span, format!("the default tier's order is {DEFAULT_TIER_ORDER}")));
                }
                tiers[0].default_action = default_action;
                continue;
            }
            tiers.push(Tier { name, order: order.unwrap_or(UNORDERED_TIER), default_action });
        }
        tiers.extend(self.admin_tiers());
        tiers.sort_by(|a, b| a.order.total_cmp(&b.order).then_with(|| a.name.cmp(&b.name)));
        Ok(tiers)
    }

    /// NetworkSets and GlobalNetworkSets as netsets (a namespaced one carries its namespace's
    /// labels as endpoints do), and HostEndpoints' addresses; their named ports join
    /// `named_ports`.
    pub(super) fn netsets(
        &self,
        namespaces: &std::collections::BTreeMap<String, Namespace>,
        named_ports: &mut NamedPorts,
    ) -> Result<Vec<Netset>, PolicyError> {
        let mut out: Vec<Netset> = Vec::new();
        for (span, r) in &self.resources {
            let super::Resource::Calico(Resource::NetworkSet(ns, set)) = r else { continue };
            let name = self.name(span, &set.metadata)?;
            let mut labels: Labels = set.metadata.labels.clone().unwrap_or_default();
            let full = match ns {
                Some(ns) => {
                    labels.insert(NAMESPACE_LABEL.to_owned(), ns.clone());
                    inherit(&mut labels, Inherit::Namespace, namespaces.get(ns).map(|n| &n.labels));
                    format!("{ns}/{name}")
                }
                None => name,
            };
            if out.iter().any(|n| n.name == full) {
                return Err(self.at(span, format!("network set '{full}' is given twice")));
            }
            let spec = set.spec.as_ref();
            if let Some(d) = spec.and_then(|s| s.allowed_egress_domains.as_ref()) {
                return Err(
                    self.at(d.span(), "allowedEgressDomains (DNS names) are not enforced by Margay".into())
                );
            }
            let nets = spec.and_then(|s| s.nets.as_ref()).into_iter().flatten();
            let nets = nets.map(|n| self.net(n)).collect::<Result<_, _>>()?;
            out.push(Netset { name: full, labels, nets });
        }
        for (span, r) in &self.resources {
            let super::Resource::Calico(Resource::HostEndpoint(hep)) = r else { continue };
            out.push(self.host_endpoint(span, hep, named_ports)?);
        }
        Ok(out)
    }

    /// A HostEndpoint: the host's addresses on one interface, labelled. Margay forwards
    /// traffic and never carries the host's own, so no policy applies *to* a host endpoint
    /// (Calico applies host-endpoint policy to forwarded traffic only with `applyOnForward`,
    /// refused above); what remains is what rules see: its `expectedIPs` are selected by
    /// label like a GlobalNetworkSet's CIDRs (outside every namespace, so `global()` reaches
    /// them), with its named `ports`.
    fn host_endpoint(
        &self,
        span: &Span,
        hep: &schema::HostEndpoint,
        named_ports: &mut NamedPorts,
    ) -> Result<Netset, PolicyError> {
        let name = self.name(span, &hep.metadata)?;
        let spec = &hep.spec;
        if let Some(p) = spec.profiles.iter().flatten().next() {
            return Err(self.at(
                p.span(),
                format!(
                    "profile '{}': profiles are not supported (their rules would be ignored)",
                    p.as_str()
                ),
            ));
        }
        let nets: Vec<Cidr> = spec
            .expected_ips
            .iter()
            .flatten()
            .map(|ip| self.address(ip).map(Cidr::host))
            .collect::<Result<_, PolicyError>>()?;
        let mut labels = hep.metadata.labels.clone().unwrap_or_default();
        for p in spec.ports.iter().flatten() {
            self.check_port_name(&p.name)?;
            let protocol = self.port_protocol(p.protocol.as_ref())?;
            let number = self.port_number(&p.port)?;
            let key = super::named_port_key(protocol, &p.name);
            labels.insert(key.clone(), number.to_string());
            named_ports.entry(key).or_default().add(number, nets.iter().copied());
        }
        Ok(Netset { name: format!("hostendpoint:{name}"), labels, nets })
    }

    /// The protocol of a named port: TCP (default), UDP or SCTP.
    fn port_protocol(&self, p: Option<&Spanned<String>>) -> Result<Protocol, PolicyError> {
        match p {
            None => Ok(Protocol::TCP),
            Some(s) => match s.parse::<Protocol>() {
                Ok(pr) if pr.has_ports() => Ok(pr),
                _ => Err(self.at(s.span(), format!("protocol '{}': TCP, UDP or SCTP", s.as_str()))),
            },
        }
    }

    /// A WorkloadEndpoint as a workload.
    pub(super) fn workload_endpoint<'a>(
        &self,
        span: &Span,
        ns: &str,
        wep: &'a schema::WorkloadEndpoint,
    ) -> Result<Workload<'a>, PolicyError> {
        let name = self.name(span, &wep.metadata)?;
        let spec = &wep.spec;
        for p in spec.profiles.iter().flatten() {
            // Calico's own Kubernetes profiles carry labels and allow: what Margay does for
            // endpoints no policy selects.
            if !(p.starts_with("kns.") || p.starts_with("ksa.")) {
                return Err(self.at(
                    p.span(),
                    format!(
                        "profile '{}': profiles are not supported (their rules would be ignored)",
                        p.as_str()
                    ),
                ));
            }
        }
        for (field, v) in
            [("ipNATs", &spec.ip_nats), ("allowSpoofedSourcePrefixes", &spec.allow_spoofed_source_prefixes)]
        {
            if let Some(v) = v.as_ref().filter(|v| !v.is_empty()) {
                return Err(self.at(v.span(), format!("{field} is not supported")));
            }
        }
        let mut labels = wep.metadata.labels.clone().unwrap_or_default();
        if let Some(o) = &spec.orchestrator {
            labels.insert(super::ORCHESTRATOR_LABEL.to_owned(), o.clone());
        }
        let mut ports = Vec::new();
        for p in spec.ports.iter().flatten() {
            self.check_port_name(&p.name)?;
            let protocol = match &p.protocol {
                None => Protocol::TCP,
                Some(s) => match s.parse::<Protocol>() {
                    Ok(pr) if pr.has_ports() => pr,
                    _ => {
                        return Err(self.at(s.span(), format!("protocol '{}': TCP, UDP or SCTP", s.as_str())));
                    }
                },
            };
            ports.push((protocol, p.name.to_string(), self.port_number(&p.port)?, *p.span()));
        }
        Ok(Workload {
            name,
            namespace: ns.to_owned(),
            addresses: spec.ip_networks.iter().flatten().collect(),
            labels,
            service_account: spec.service_account_name.clone().unwrap_or_else(|| "default".to_owned()),
            ports,
        })
    }

    /// A (Global, Staged) NetworkPolicy as a policy.
    pub(super) fn calico_policy(
        &self,
        span: &Span,
        p: &PolicyResource,
        tiers: &[Tier],
        named_ports: &NamedPorts,
    ) -> Result<Policy, PolicyError> {
        let spec = &p.policy.spec;
        let name = self.name(span, &p.policy.metadata)?;
        self.staged_action(spec.staged_action.as_ref(), p.staged)?;
        let global_only = [
            ("namespaceSelector", &spec.namespace_selector),
            ("doNotTrack", &spec.do_not_track),
            ("preDNAT", &spec.pre_dnat),
            ("applyOnForward", &spec.apply_on_forward),
        ];
        for (field, value) in global_only {
            let Some(v) = value else { continue };
            if p.namespace.is_some() {
                return Err(self.at(v.span(), format!("spec.{field} is a field of global policies")));
            }
            match (field, v.as_str()) {
                ("namespaceSelector", _) | (_, "false") => {}
                (_, "true") => {
                    return Err(self.at(
                        v.span(),
                        format!("spec.{field}: host-endpoint policies are not supported (Margay enforces workload policy)"),
                    ));
                }
                (_, other) => {
                    return Err(self.at(v.span(), format!("spec.{field}: '{other}' is not true or false")));
                }
            }
        }
        let tier = spec.tier.as_ref().map_or(DEFAULT_TIER, |t| t.as_str());
        if !tiers.iter().any(|t| t.name == tier) {
            let at = spec.tier.as_ref().map_or(span, |t| t.span());
            return Err(self.at(at, format!("tier '{tier}' is not defined (give its Tier resource)")));
        }
        let order = spec.order.as_ref().map(|o| self.order(o)).transpose()?;
        let mut terms = Vec::new();
        if let Some(s) = non_empty(&spec.selector) {
            terms.push(self.selector(s, None)?);
        }
        if let Some(s) = non_empty(&spec.namespace_selector) {
            terms.push(self.selector(s, Some(Inherit::Namespace))?);
        }
        if let Some(s) = non_empty(&spec.service_account_selector) {
            terms.push(self.selector(s, Some(Inherit::ServiceAccount))?);
        }
        let (ingress_rules, egress_rules) =
            (spec.ingress.as_deref().unwrap_or_default(), spec.egress.as_deref().unwrap_or_default());
        let (ingress_type, egress_type) = match &spec.types {
            Some(types) => {
                let (mut i, mut e) = (false, false);
                for t in types {
                    match t.as_str() {
                        "Ingress" => i = true,
                        "Egress" => e = true,
                        other => {
                            return Err(
                                self.at(t.span(), format!("types: '{other}' is neither Ingress nor Egress"))
                            );
                        }
                    }
                }
                (i, e)
            }
            // Calico's defaulting: Ingress when there are ingress rules or no rules at all,
            // Egress when there are egress rules.
            None => (!ingress_rules.is_empty() || egress_rules.is_empty(), !egress_rules.is_empty()),
        };
        let mut directions = Vec::new();
        for (rules, typed, field) in
            [(ingress_rules, ingress_type, "ingress"), (egress_rules, egress_type, "egress")]
        {
            if let (Some(first), false) = (rules.first(), typed) {
                return Err(self.at(first.span(), format!("{field} rules, but types leaves {field} out")));
            }
            let mut out = Vec::new();
            for (i, rule) in rules.iter().enumerate() {
                let (rule, names) = self.calico_rule(rule, i, p.namespace.as_deref())?;
                out.extend(Self::with_named_ports(rule, [&names[0], &names[1]], named_ports));
            }
            directions.push(out);
        }
        let egress = directions.pop().unwrap_or_default();
        let ingress = directions.pop().unwrap_or_default();
        Ok(Policy {
            name: if p.staged { format!("{STAGED_PREFIX}{name}") } else { name },
            tier: tier.to_owned(),
            order,
            namespace: p.namespace.clone(),
            selector: and(terms).unwrap_or(Selector::All),
            ingress_type,
            egress_type,
            staged: p.staged,
            ingress,
            egress,
        })
    }

    /// A rule, and the port names of its source and destination.
    fn calico_rule(
        &self,
        rule: &Spanned<schema::Rule>,
        index: usize,
        namespace: Option<&str>,
    ) -> Result<(Rule, [PortNames; 2]), PolicyError> {
        if let Some(h) = &rule.http {
            return Err(self.at(
                h.span(),
                "http: HTTP match rules are not enforced by Margay (an L3/L4 dataplane)".into(),
            ));
        }
        let action = match rule.action.to_ascii_lowercase().as_str() {
            "allow" => Action::Allow,
            "deny" => Action::Deny,
            "log" => Action::Log,
            "pass" => Action::Pass,
            _ => {
                return Err(self.at(
                    rule.action.span(),
                    format!("action '{}': Allow, Deny, Log or Pass", rule.action.as_str()),
                ));
            }
        };
        let protocol = rule.protocol.as_ref().map(|p| self.protocol(p)).transpose()?;
        let not_protocol = rule.not_protocol.as_ref().map(|p| self.protocol(p)).transpose()?;
        let ip_version = match rule.ip_version.as_ref().map(|v| (v, v.as_str())) {
            None => None,
            Some((_, "4")) => Some(IpVersion::V4),
            Some((_, "6")) => Some(IpVersion::V6),
            Some((v, other)) => return Err(self.at(v.span(), format!("ipVersion '{other}': 4 or 6"))),
        };
        let icmp =
            |m: &Option<Spanned<schema::Icmp>>, field: &str| -> Result<Option<IcmpMatch>, PolicyError> {
                let Some(m) = m else { return Ok(None) };
                if !protocol.is_some_and(Protocol::is_icmp) {
                    return Err(self.at(m.span(), format!("{field} needs protocol ICMP or ICMPv6")));
                }
                let byte = |s: &Spanned<String>| {
                    s.parse::<u8>().map_err(|_| {
                        self.at(s.span(), format!("'{}' is not an ICMP type or code (0..=255)", s.as_str()))
                    })
                };
                match (&m.kind, &m.code) {
                    (Some(t), code) => {
                        Ok(Some(IcmpMatch { kind: byte(t)?, code: code.as_ref().map(byte).transpose()? }))
                    }
                    (None, Some(c)) => Err(self.at(c.span(), format!("{field}: a code needs a type"))),
                    (None, None) => Ok(None),
                }
            };
        let (icmp, not_icmp) = (icmp(&rule.icmp, "icmp")?, icmp(&rule.not_icmp, "notICMP")?);
        let (source, source_names) = self.entity(rule.source.as_ref(), namespace, protocol)?;
        let (destination, destination_names) = self.entity(rule.destination.as_ref(), namespace, protocol)?;
        let index = Some(index);
        let rule =
            Rule { action, protocol, not_protocol, ip_version, icmp, not_icmp, source, destination, index };
        Ok((rule, [source_names, destination_names]))
    }

    /// An entity rule as a peer (scoped as Felix scopes it), and its port names.
    fn entity(
        &self,
        er: Option<&Spanned<schema::EntityRule>>,
        namespace: Option<&str>,
        protocol: Option<Protocol>,
    ) -> Result<(Peer, PortNames), PolicyError> {
        let Some(er) = er else { return Ok((Peer::default(), PortNames::default())) };
        if let Some(s) = &er.services {
            return Err(self.at(s.span(), "services: Kubernetes Service matches are not supported".into()));
        }
        let nets = |list: &Option<Vec<Spanned<String>>>| -> Result<Vec<Cidr>, PolicyError> {
            list.iter().flatten().map(|n| self.net(n)).collect()
        };
        let ns_given = non_empty(&er.namespace_selector);
        let namespace_scope = match ns_given {
            Some(s) => Some(self.selector(s, Some(Inherit::Namespace))?),
            None => namespace.map(|ns| Selector::Eq(NAMESPACE_LABEL.to_owned(), ns.to_owned())),
        };
        let mut terms = Vec::new();
        if let Some(sa) = &er.service_accounts {
            if let Some(s) = non_empty(&sa.selector) {
                terms.push(self.selector(s, Some(Inherit::ServiceAccount))?);
            }
            let names: BTreeSet<String> = sa.names.iter().flatten().cloned().collect();
            if !names.is_empty() {
                terms.push(Selector::In(super::SERVICE_ACCOUNT_LABEL.to_owned(), names));
            }
        }
        if let Some(s) = non_empty(&er.selector) {
            terms.push(self.selector(s, None)?);
        }
        let not_selector = non_empty(&er.not_selector).map(|s| self.selector(s, None)).transpose()?;
        let mut selector = and(terms);
        if let Some(scope) = namespace_scope
            && (selector.is_some() || not_selector.is_some() || ns_given.is_some())
        {
            selector = and(selector.into_iter().chain([scope]).collect());
        }
        let (ports, names) = self.calico_ports(er.ports.as_deref(), protocol, "ports")?;
        let (not_ports, not_names) = self.calico_ports(er.not_ports.as_deref(), protocol, "notPorts")?;
        let peer = Peer {
            nets: nets(&er.nets)?,
            not_nets: nets(&er.not_nets)?,
            // The selector is scoped above: Margay's own scoping of a namespaced policy's
            // selectors is switched off with an all() namespace selector.
            namespace_selector: selector.is_some().then_some(Selector::All),
            selector,
            not_selector,
            ports,
            not_ports,
        };
        Ok((peer, PortNames { ports: names, not_ports: not_names }))
    }

    /// Calico ports: numbers (`80`, `"80"`), ranges (`"100:250"`) and names.
    fn calico_ports(
        &self,
        list: Option<&[Spanned<String>]>,
        protocol: Option<Protocol>,
        field: &str,
    ) -> Result<(Vec<PortRange>, Vec<String>), PolicyError> {
        let list = list.unwrap_or_default();
        if let Some(first) = list.first()
            && !protocol.is_some_and(Protocol::has_ports)
        {
            return Err(self.at(first.span(), format!("{field} need protocol TCP, UDP or SCTP in the rule")));
        }
        let (mut ranges, mut names) = (Vec::new(), Vec::new());
        for p in list {
            if p.chars().next().is_some_and(|c| c.is_ascii_digit()) {
                ranges.push(p.parse::<PortRange>().map_err(|e| self.at(p.span(), e))?);
            } else {
                self.check_port_name(p)?;
                names.push(p.to_string());
            }
        }
        Ok((ranges, names))
    }

    fn protocol(&self, p: &Spanned<String>) -> Result<Protocol, PolicyError> {
        if p.eq_ignore_ascii_case("udplite") {
            return Ok(Protocol(136));
        }
        match p.parse::<Protocol>() {
            Ok(Protocol(0)) | Err(_) => Err(self.at(
                p.span(),
                format!(
                    "protocol '{}': TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or a number 1..=255",
                    p.as_str()
                ),
            )),
            Ok(pr) => Ok(pr),
        }
    }

    fn net(&self, n: &Spanned<String>) -> Result<Cidr, PolicyError> {
        n.parse().map_err(|e: String| self.at(n.span(), e))
    }

    /// A finite order.
    fn order(&self, o: &Spanned<String>) -> Result<f64, PolicyError> {
        match o.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => Err(self.at(o.span(), format!("order '{}' is not a finite number", o.as_str()))),
        }
    }

    /// A Calico selector, plain or rewritten over inherited labels.
    fn selector(&self, s: &Spanned<String>, inherit: Option<Inherit>) -> Result<Selector, PolicyError> {
        let parsed = match inherit {
            None => Selector::parse(s),
            Some(i) => Selector::parse_inherited(s, i),
        };
        parsed.map_err(|e| self.at(s.span(), format!("bad selector {:?}: {e}", s.as_str())))
    }

    /// Checks `stagedAction`: only for staged kinds, and only `Set`.
    pub(super) fn staged_action(
        &self,
        action: Option<&Spanned<String>>,
        staged: bool,
    ) -> Result<(), PolicyError> {
        match action {
            None => Ok(()),
            Some(a) if !staged => Err(self.at(a.span(), "stagedAction is a field of staged policies".into())),
            Some(a) if a.as_str() == "Set" => Ok(()),
            Some(a) => Err(self.at(
                a.span(),
                format!(
                    "stagedAction '{}' is not supported yet: only Set (a preview of the policy)",
                    a.as_str()
                ),
            )),
        }
    }
}

/// The value of an optional string field that is given and not empty (Calico treats `''` as
/// absent).
fn non_empty(s: &Option<Spanned<String>>) -> Option<&Spanned<String>> {
    s.as_ref().filter(|s| !s.trim().is_empty())
}

/// The conjunction of `terms` (`None` when there are none).
fn and(mut terms: Vec<Selector>) -> Option<Selector> {
    match terms.len() {
        0 => None,
        1 => terms.pop(),
        _ => Some(Selector::And(terms)),
    }
}

/// The Calico resources as written, read with positions. A policy's spec and rules refuse
/// unknown fields: one Margay did not enforce would silently change the verdicts.
pub(super) mod schema {
    use marked_yaml::Spanned;
    use serde::Deserialize;
    use serde::de::IgnoredAny;

    use super::super::schema::Metadata;

    /// `Tier`.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Tier {
        #[serde(rename = "apiVersion")]
        pub _api_version: IgnoredAny,
        #[serde(rename = "kind")]
        pub _kind: IgnoredAny,
        pub metadata: Metadata,
        pub spec: Option<Spanned<TierSpec>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct TierSpec {
        pub order: Option<Spanned<String>>,
        pub default_action: Option<Spanned<String>>,
    }

    /// (Global, Staged) NetworkPolicy.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Policy {
        #[serde(rename = "apiVersion")]
        pub _api_version: IgnoredAny,
        #[serde(rename = "kind")]
        pub _kind: IgnoredAny,
        pub metadata: Metadata,
        pub spec: Spanned<PolicySpec>,
        #[serde(rename = "status")]
        pub _status: Option<IgnoredAny>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct PolicySpec {
        pub tier: Option<Spanned<String>>,
        pub order: Option<Spanned<String>>,
        pub selector: Option<Spanned<String>>,
        pub namespace_selector: Option<Spanned<String>>,
        pub service_account_selector: Option<Spanned<String>>,
        pub types: Option<Vec<Spanned<String>>>,
        pub ingress: Option<Vec<Spanned<Rule>>>,
        pub egress: Option<Vec<Spanned<Rule>>>,
        pub do_not_track: Option<Spanned<String>>,
        #[serde(rename = "preDNAT")]
        pub pre_dnat: Option<Spanned<String>>,
        pub apply_on_forward: Option<Spanned<String>>,
        /// Hints for Felix's dataplane programming; no bearing on verdicts.
        #[serde(rename = "performanceHints")]
        pub _performance_hints: Option<IgnoredAny>,
        pub staged_action: Option<Spanned<String>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct Rule {
        pub action: Spanned<String>,
        pub protocol: Option<Spanned<String>>,
        pub not_protocol: Option<Spanned<String>>,
        pub ip_version: Option<Spanned<String>>,
        pub icmp: Option<Spanned<Icmp>>,
        #[serde(rename = "notICMP")]
        pub not_icmp: Option<Spanned<Icmp>>,
        pub source: Option<Spanned<EntityRule>>,
        pub destination: Option<Spanned<EntityRule>>,
        pub http: Option<Spanned<IgnoredAny>>,
        /// Annotations: no bearing on verdicts.
        #[serde(rename = "metadata")]
        pub _metadata: Option<IgnoredAny>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Icmp {
        #[serde(rename = "type")]
        pub kind: Option<Spanned<String>>,
        pub code: Option<Spanned<String>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct EntityRule {
        pub nets: Option<Vec<Spanned<String>>>,
        pub not_nets: Option<Vec<Spanned<String>>>,
        pub selector: Option<Spanned<String>>,
        pub not_selector: Option<Spanned<String>>,
        pub namespace_selector: Option<Spanned<String>>,
        pub service_accounts: Option<Spanned<ServiceAccountMatch>>,
        pub ports: Option<Vec<Spanned<String>>>,
        pub not_ports: Option<Vec<Spanned<String>>>,
        pub services: Option<Spanned<IgnoredAny>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ServiceAccountMatch {
        pub names: Option<Vec<String>>,
        pub selector: Option<Spanned<String>>,
    }

    /// NetworkSet or GlobalNetworkSet.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct NetworkSet {
        #[serde(rename = "apiVersion")]
        pub _api_version: IgnoredAny,
        #[serde(rename = "kind")]
        pub _kind: IgnoredAny,
        pub metadata: Metadata,
        pub spec: Option<Spanned<NetworkSetSpec>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct NetworkSetSpec {
        pub nets: Option<Vec<Spanned<String>>>,
        pub allowed_egress_domains: Option<Spanned<IgnoredAny>>,
    }

    /// WorkloadEndpoint.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct WorkloadEndpoint {
        #[serde(rename = "apiVersion")]
        pub _api_version: IgnoredAny,
        #[serde(rename = "kind")]
        pub _kind: IgnoredAny,
        pub metadata: Metadata,
        pub spec: WorkloadEndpointSpec,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct WorkloadEndpointSpec {
        pub orchestrator: Option<String>,
        pub service_account_name: Option<String>,
        pub ip_networks: Option<Vec<Spanned<String>>>,
        pub profiles: Option<Vec<Spanned<String>>>,
        pub ports: Option<Vec<Spanned<WorkloadPort>>>,
        #[serde(rename = "ipNATs")]
        pub ip_nats: Option<Spanned<Vec<IgnoredAny>>>,
        pub allow_spoofed_source_prefixes: Option<Spanned<Vec<IgnoredAny>>>,
        // Identity and plumbing: no bearing on verdicts.
        #[serde(rename = "workload")]
        pub _workload: Option<IgnoredAny>,
        #[serde(rename = "node")]
        pub _node: Option<IgnoredAny>,
        #[serde(rename = "containerID")]
        pub _container_id: Option<IgnoredAny>,
        #[serde(rename = "pod")]
        pub _pod: Option<IgnoredAny>,
        #[serde(rename = "endpoint")]
        pub _endpoint: Option<IgnoredAny>,
        #[serde(rename = "interfaceName")]
        pub _interface_name: Option<IgnoredAny>,
        #[serde(rename = "mac")]
        pub _mac: Option<IgnoredAny>,
        #[serde(rename = "ipv4Gateway")]
        pub _ipv4_gateway: Option<IgnoredAny>,
        #[serde(rename = "ipv6Gateway")]
        pub _ipv6_gateway: Option<IgnoredAny>,
    }

    /// HostEndpoint.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct HostEndpoint {
        #[serde(rename = "apiVersion")]
        pub _api_version: IgnoredAny,
        #[serde(rename = "kind")]
        pub _kind: IgnoredAny,
        pub metadata: Metadata,
        pub spec: HostEndpointSpec,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct HostEndpointSpec {
        #[serde(rename = "expectedIPs")]
        pub expected_ips: Option<Vec<Spanned<String>>>,
        pub profiles: Option<Vec<Spanned<String>>>,
        pub ports: Option<Vec<Spanned<WorkloadPort>>>,
        // Where it is: no bearing on what rules match.
        #[serde(rename = "node")]
        pub _node: Option<IgnoredAny>,
        #[serde(rename = "interfaceName")]
        pub _interface_name: Option<IgnoredAny>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct WorkloadPort {
        pub name: Spanned<String>,
        pub protocol: Option<Spanned<String>>,
        pub port: Spanned<String>,
        #[serde(rename = "hostPort")]
        pub _host_port: Option<IgnoredAny>,
        #[serde(rename = "hostIP")]
        pub _host_ip: Option<IgnoredAny>,
    }
}

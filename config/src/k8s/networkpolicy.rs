//! Kubernetes `networking.k8s.io/v1` NetworkPolicy (and Calico's StagedKubernetesNetworkPolicy,
//! the same spec as a preview) landed in Margay's model as Calico lands it.

use std::collections::BTreeSet;

use marked_yaml::Spanned;

use super::{K8S_POLICY_ORDER, NamedPorts, PortEntry, Resources, pods, schema};
use crate::net::{Cidr, PortRange};
use crate::policy::{Action, DEFAULT_TIER, Peer, Policy, PolicyError, Rule};
use crate::selector::{Inherit, Selector};

impl Resources {
    /// NetworkPolicy `name` of namespace `ns` (`staged`: a StagedKubernetesNetworkPolicy).
    pub(super) fn network_policy(
        &self,
        ns: &str,
        name: &str,
        np: &schema::NetworkPolicy,
        staged: bool,
        named_ports: &NamedPorts,
    ) -> Result<Policy, PolicyError> {
        let spec = &np.spec;
        self.staged_action(spec.staged_action.as_ref(), staged)?;
        let Some(pod_selector) = &spec.pod_selector else {
            return Err(self.at(spec.span(), "spec.podSelector is required (`{}` selects every pod)".into()));
        };
        let (mut ingress_type, mut egress_type) = (false, false);
        match &spec.policy_types {
            // `policyTypes: []` is defaulted as if absent, as the API server does.
            Some(types) if !types.is_empty() => {
                for t in types {
                    match t.as_str() {
                        "Ingress" => ingress_type = true,
                        "Egress" => egress_type = true,
                        other => {
                            return Err(self.at(
                                t.span(),
                                format!("policyTypes: '{other}' is neither Ingress nor Egress"),
                            ));
                        }
                    }
                }
            }
            // Upstream: Ingress always, Egress when there are egress rules (`egress: []` adds
            // nothing).
            _ => {
                ingress_type = true;
                egress_type = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
            }
        }
        // Rules of a direction policyTypes leaves out have no effect upstream either.
        let rules = |list, ingress| self.rules(list, ingress, named_ports);
        let ingress = if ingress_type { rules(spec.ingress.as_deref(), true)? } else { Vec::new() };
        let egress = if egress_type { rules(spec.egress.as_deref(), false)? } else { Vec::new() };
        Ok(Policy {
            name: format!("{}knp.default.{name}", if staged { super::STAGED_PREFIX } else { "" }),
            tier: DEFAULT_TIER.into(),
            order: Some(K8S_POLICY_ORDER),
            namespace: Some(ns.to_owned()),
            selector: pods(self.label_selector(pod_selector)?),
            ingress_type,
            egress_type,
            staged,
            ingress,
            egress,
        })
    }

    fn rules(
        &self,
        rules: Option<&[Spanned<schema::NetworkPolicyRule>]>,
        ingress: bool,
        named_ports: &NamedPorts,
    ) -> Result<Vec<Rule>, PolicyError> {
        let mut out = Vec::new();
        for (index, rule) in rules.unwrap_or_default().iter().enumerate() {
            let (peers, wrong) = if ingress { (&rule.from, &rule.to) } else { (&rule.to, &rule.from) };
            if let Some(w) = wrong {
                let (field, dir) = if ingress { ("to", "an ingress") } else { ("from", "an egress") };
                return Err(self.at(
                    w.span(),
                    format!("`{field}` in {dir} rule (ingress rules have `from`, egress rules `to`)"),
                ));
            }
            let peers: Vec<Peer> = match peers {
                Some(list) if !list.is_empty() => {
                    list.iter().map(|p| self.peer(p)).collect::<Result<_, _>>()?
                }
                _ => vec![Peer::default()],
            };
            let ports = self.ports(rule.ports.as_deref())?;
            out.extend(Self::peer_port_rules(Action::Allow, ingress, index, &peers, &ports, named_ports));
        }
        Ok(out)
    }

    fn peer(&self, p: &Spanned<schema::NetworkPolicyPeer>) -> Result<Peer, PolicyError> {
        match (&p.pod_selector, &p.namespace_selector, &p.ip_block) {
            (None, None, None) => {
                Err(self.at(p.span(), "a peer needs podSelector, namespaceSelector or ipBlock".into()))
            }
            (Some(_), _, Some(b)) | (_, Some(_), Some(b)) => Err(self.at(
                b.span(),
                "ipBlock cannot be combined with podSelector or namespaceSelector in one peer".into(),
            )),
            (None, None, Some(b)) => {
                let cidr = self.cidr(&b.cidr)?;
                let mut not_nets = Vec::new();
                for e in b.except.iter().flatten() {
                    let x = self.cidr(e)?;
                    if x.is_ipv4() != cidr.is_ipv4()
                        || x.prefix_len() < cidr.prefix_len()
                        || !cidr.contains(x.addr())
                    {
                        return Err(self.at(
                            e.span(),
                            format!("except {} is not inside cidr {}", e.as_str(), b.cidr.as_str()),
                        ));
                    }
                    not_nets.push(x);
                }
                Ok(Peer { nets: vec![cidr], not_nets, ..Peer::default() })
            }
            (pod, ns, None) => {
                let selector = match pod {
                    Some(s) => self.label_selector(s)?,
                    None => Selector::All,
                };
                let namespace_selector = ns.as_ref().map(|s| self.label_selector(s)).transpose()?;
                Ok(Peer { selector: Some(pods(selector)), namespace_selector, ..Peer::default() })
            }
        }
    }

    fn cidr(&self, s: &Spanned<String>) -> Result<Cidr, PolicyError> {
        s.parse().map_err(|e: String| self.at(s.span(), format!("ipBlock: {e}")))
    }

    /// A rule's port entries as (protocol, destination ports, or the port's name): one entry
    /// per item of `ports`, or a single "any protocol, any port" when there are none.
    fn ports(
        &self,
        ports: Option<&[Spanned<schema::NetworkPolicyPort>]>,
    ) -> Result<Vec<PortEntry>, PolicyError> {
        let ports = ports.unwrap_or_default();
        if ports.is_empty() {
            return Ok(vec![(None, Vec::new(), None)]);
        }
        let mut out = Vec::new();
        for p in ports {
            let protocol = self.k8s_protocol(p.protocol.as_ref(), p.span())?;
            let ranges = match (&p.port, &p.end_port) {
                (None, None) => Vec::new(),
                (None, Some(e)) => return Err(self.at(e.span(), "endPort without port".into())),
                (Some(port), end) if !port.chars().all(|c| c.is_ascii_digit()) => {
                    if let Some(e) = end {
                        return Err(self.at(e.span(), "endPort goes with a port number, not a name".into()));
                    }
                    self.check_port_name(port)?;
                    out.push((Some(protocol), Vec::new(), Some(port.to_string())));
                    continue;
                }
                (Some(port), None) => {
                    let n = self.port_number(port)?;
                    PortRange::new(n, n).into_iter().collect()
                }
                (Some(port), Some(end)) => {
                    let (lo, hi) = (self.port_number(port)?, self.port_number(end)?);
                    match PortRange::new(lo, hi) {
                        Some(r) => vec![r],
                        None => return Err(self.at(end.span(), format!("endPort {hi} is below port {lo}"))),
                    }
                }
            };
            out.push((Some(protocol), ranges, None));
        }
        Ok(out)
    }

    pub(super) fn label_selector(&self, s: &Spanned<schema::LabelSelector>) -> Result<Selector, PolicyError> {
        self.label_selector_inherited(s, None)
    }

    /// A label selector, over the labels an endpoint inherits (`pcns.KEY`) when `inherit`
    /// says so.
    pub(super) fn label_selector_inherited(
        &self,
        s: &Spanned<schema::LabelSelector>,
        inherit: Option<Inherit>,
    ) -> Result<Selector, PolicyError> {
        let prefix = inherit.map_or("", Inherit::prefix);
        let mut terms = Vec::new();
        for (k, v) in s.match_labels.iter().flatten() {
            terms.push(Selector::Eq(format!("{prefix}{k}"), v.clone()));
        }
        for req in s.match_expressions.iter().flatten() {
            let key = format!("{prefix}{}", req.key.as_str());
            let values: BTreeSet<String> = req.values.iter().flatten().cloned().collect();
            let term = match req.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(
                        self.at(req.span(), format!("operator {} needs values", req.operator.as_str()))
                    );
                }
                "In" => Selector::In(key, values),
                "NotIn" => Selector::NotIn(key, values),
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(
                        self.at(req.span(), format!("operator {} takes no values", req.operator.as_str()))
                    );
                }
                "Exists" => Selector::Has(key),
                "DoesNotExist" => Selector::Not(Box::new(Selector::Has(key))),
                other => {
                    return Err(self.at(
                        req.operator.span(),
                        format!("operator '{other}': In, NotIn, Exists or DoesNotExist"),
                    ));
                }
            };
            terms.push(term);
        }
        Ok(match terms.len() {
            0 => Selector::All,
            1 => terms.remove(0),
            _ => Selector::And(terms),
        })
    }
}

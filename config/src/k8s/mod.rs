//! Policy written as Kubernetes resources: `networking.k8s.io/v1` NetworkPolicy, and the world
//! it applies to as `v1` Namespace, Pod and ServiceAccount manifests, read from YAML or JSON
//! (multi-document files, or directories of them) and landed in Margay's model the way Calico
//! lands them (docs/guide/kubernetes.md):
//!
//! - a NetworkPolicy `NAME` of namespace `NS` becomes policy `knp.default.NAME` of namespace
//!   `NS` in tier `default` with order 1000, selecting the pods its `podSelector` selects;
//!   `policyTypes` as written, or inferred (ingress, and egress when it has egress rules);
//! - each rule becomes one allow rule per (peer, port entry): a peer's `podSelector` selects
//!   pods of the policy's namespace, `namespaceSelector` pods of the matching namespaces (both:
//!   both), `ipBlock` its CIDR minus `except`; no peers matches any address, no ports any port;
//! - a pod is an endpoint with its `status.podIPs`, its labels, and the labels Calico gives
//!   (`projectcalico.org/namespace`, `projectcalico.org/orchestrator: k8s`,
//!   `projectcalico.org/serviceaccount`); a pod selector matches pods only (Calico adds the
//!   orchestrator label for the same reason: network sets are not pods);
//! - a namespace keeps its labels, with `kubernetes.io/metadata.name` (as the API server sets
//!   it) and Calico's `projectcalico.org/name`.
//!
//! Nothing is silently dropped: a field that bears on what a policy allows and is not enforced
//! here (an unknown one, or a named port, not supported yet) is an error naming the file, line
//! and column.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use marked_yaml::{Node, Span, Spanned};

use crate::Selector;
use crate::net::{Cidr, PortRange, Protocol};
use crate::policy::{
    DEFAULT_NAMESPACE, DEFAULT_TIER, DEFAULT_TIER_ORDER, Defaults, Endpoint, Namespace, Peer, Policy,
    PolicyError, PolicySet, Rule, Tier, TierDefault, Verdict,
};

mod schema;
#[cfg(test)]
mod tests;

/// The order Calico gives Kubernetes NetworkPolicies in tier `default`.
pub const K8S_POLICY_ORDER: f64 = 1000.0;

/// The label Calico puts on Kubernetes pods (`projectcalico.org/orchestrator: k8s`), which
/// pod selectors converted from Kubernetes policies require.
pub const ORCHESTRATOR_LABEL: &str = "projectcalico.org/orchestrator";

/// Reads `path` (a resource file or a directory of them, at most `max_bytes` in all) into a
/// policy set.
pub fn load(path: &Path, max_bytes: u64) -> Result<PolicySet, PolicyError> {
    let mut r = Resources::new();
    let mut budget = max_bytes;
    r.add_path_limited(path, None, &mut budget)?;
    r.to_policy_set()
}

/// Whether `path` is read as Kubernetes resources rather than a TOML policy: a directory, or a
/// `.yaml`, `.yml` or `.json` file.
pub fn is_resource_path(path: &Path) -> bool {
    is_resource_file(path) || path.is_dir()
}

/// Whether `path` names a file this module reads (by extension).
pub fn is_resource_file(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
}

/// A resource read, with the namespace it lives in (namespaced kinds).
#[derive(Debug)]
enum Resource {
    Namespace(schema::Namespace),
    /// Read for its namespace; its labels will matter with Calico's service-account selectors.
    ServiceAccount(String),
    Pod(String, schema::Pod),
    NetworkPolicy(String, schema::NetworkPolicy),
}

/// One port entry of a rule: its protocol (any when `None`) and destination ports (any when
/// empty).
type PortEntry = (Option<Protocol>, Vec<PortRange>);

/// Resources read from files, to be turned into a [`PolicySet`].
#[derive(Debug, Default)]
pub struct Resources {
    /// The files read; a position's source index is an index here.
    files: Vec<PathBuf>,
    resources: Vec<(Span, Resource)>,
}

impl Resources {
    /// No resources yet.
    pub fn new() -> Resources {
        Resources::default()
    }

    /// Reads `path`: a YAML or JSON file, or a directory, whose `.yaml`, `.yml` and `.json`
    /// files are read in name order (not its subdirectories). Namespaced resources without
    /// `metadata.namespace` go in `namespace` (as `kubectl apply -n` would put them), or
    /// `default`.
    pub fn add_path(&mut self, path: &Path, namespace: Option<&str>) -> Result<(), PolicyError> {
        let mut budget = u64::MAX;
        self.add_path_limited(path, namespace, &mut budget)
    }

    /// [`Resources::add_path`], reading at most `budget` bytes in all (what is read is taken
    /// from it), and only regular files (a FIFO would block a reload).
    pub fn add_path_limited(
        &mut self,
        path: &Path,
        namespace: Option<&str>,
        budget: &mut u64,
    ) -> Result<(), PolicyError> {
        let io = |error| PolicyError::Io { path: path.to_owned(), error };
        let refuse = |what: String| io(std::io::Error::new(std::io::ErrorKind::InvalidInput, what));
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(io)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_resource_file(p) && !p.is_dir())
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(refuse("a directory without .yaml, .yml or .json files".into()));
            }
            for f in files {
                self.add_path_limited(&f, namespace, budget)?;
            }
            return Ok(());
        }
        if !meta.is_file() {
            return Err(refuse(
                "not a regular file (a FIFO, device or directory): refusing to read it".into(),
            ));
        }
        use std::io::Read as _;
        let mut text = String::new();
        let file = std::fs::File::open(path).map_err(io)?;
        file.take(budget.saturating_add(1)).read_to_string(&mut text).map_err(io)?;
        if text.len() as u64 > *budget {
            return Err(refuse(
                "past the policy size limit ([daemon] max_policy_bytes) for all files together".into(),
            ));
        }
        *budget -= text.len() as u64;
        self.add_text(&text, path, namespace)
    }

    /// Reads the documents of `text`, which came from `path`.
    pub fn add_text(&mut self, text: &str, path: &Path, namespace: Option<&str>) -> Result<(), PolicyError> {
        let source = self.files.len();
        self.files.push(path.to_owned());
        for doc in documents(text) {
            let node = marked_yaml::parse_yaml(source, &doc).map_err(|e| self.load_error(source, &e))?;
            if let Some(r) = self.resource(&node, namespace)? {
                self.resources.push((*node.span(), r));
            }
        }
        Ok(())
    }

    fn resource(&self, node: &Node, namespace: Option<&str>) -> Result<Option<Resource>, PolicyError> {
        let Some(map) = node.as_mapping() else {
            return Err(self.at(node.span(), "a resource is a mapping".into()));
        };
        let field = |name: &str| map.get_scalar(name).map(|s| (s.as_str().to_owned(), *s.span()));
        let Some((kind, kind_span)) = field("kind") else {
            return Err(self.at(node.span(), "a resource without `kind`".into()));
        };
        let api = field("apiVersion").map(|(a, _)| a).unwrap_or_default();
        let ns = |m: &schema::Metadata| {
            m.namespace
                .as_ref()
                .map_or_else(|| namespace.unwrap_or(DEFAULT_NAMESPACE).to_owned(), |n| n.to_string())
        };
        Ok(Some(match (api.as_str(), kind.as_str()) {
            ("v1", "Namespace") => Resource::Namespace(self.decode(node)?),
            ("v1", "ServiceAccount") => {
                let sa: schema::ServiceAccount = self.decode(node)?;
                Resource::ServiceAccount(ns(&sa.metadata))
            }
            ("v1", "Pod") => {
                let pod: schema::Pod = self.decode(node)?;
                Resource::Pod(ns(&pod.metadata), pod)
            }
            ("networking.k8s.io/v1", "NetworkPolicy") => {
                let np: schema::NetworkPolicy = self.decode(node)?;
                Resource::NetworkPolicy(ns(&np.metadata), np)
            }
            (_, "List") => {
                return Err(self.at(&kind_span, "kind List: give the items as documents of their own".into()));
            }
            _ => {
                return Err(self.at(
                    &kind_span,
                    format!(
                        "kind {kind} (apiVersion {api:?}) is not supported: Margay reads v1 Namespace, Pod and \
                         ServiceAccount and networking.k8s.io/v1 NetworkPolicy"
                    ),
                ));
            }
        }))
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, node: &Node) -> Result<T, PolicyError> {
        marked_yaml::from_node(node).map_err(|e| {
            // The error's own mark can be that of an enclosing node; the field path it gives
            // leads to the exact one.
            let located = e.path().and_then(|p| locate(node, p)).copied();
            let mark = located.or_else(|| e.start_mark());
            let (line, column, source) =
                mark.map_or((0, 0, None), |m| (m.line(), m.column(), Some(m.source())));
            let path = source.and_then(|s| self.files.get(s)).cloned().unwrap_or_default();
            PolicyError::Invalid { path, line, column, message: e.to_string() }
        })
    }

    fn at(&self, span: &Span, message: String) -> PolicyError {
        let mark = span.start();
        let path = mark.and_then(|m| self.files.get(m.source())).cloned().unwrap_or_default();
        PolicyError::Invalid {
            path,
            line: mark.map_or(0, |m| m.line()),
            column: mark.map_or(0, |m| m.column()),
            message,
        }
    }

    fn load_error(&self, source: usize, e: &marked_yaml::LoadError) -> PolicyError {
        use marked_yaml::LoadError as L;
        let mark = match e {
            L::TopLevelMustBeMapping(m)
            | L::TopLevelMustBeSequence(m)
            | L::UnexpectedAnchor(m)
            | L::MappingKeyMustBeScalar(m)
            | L::UnexpectedTag(m)
            | L::ScanError(m, _) => Some(*m),
            _ => None,
        };
        let text = e.to_string();
        // The loader's message starts with the position, which the error gives itself.
        let message = text.split_once(": ").map_or(text.clone(), |(_, m)| m.to_owned());
        PolicyError::Invalid {
            path: self.files.get(source).cloned().unwrap_or_default(),
            line: mark.map_or(0, |m| m.line()),
            column: mark.map_or(0, |m| m.column()),
            message,
        }
    }

    /// The policy set these resources make.
    pub fn to_policy_set(&self) -> Result<PolicySet, PolicyError> {
        let mut namespaces: BTreeMap<String, Namespace> = BTreeMap::new();
        for (span, r) in &self.resources {
            if let Resource::Namespace(n) = r {
                let name = self.name(span, &n.metadata)?;
                let labels = n.metadata.labels.clone().unwrap_or_default();
                if namespaces.insert(name.clone(), Namespace { name: name.clone(), labels }).is_some() {
                    return Err(self.at(span, format!("namespace '{name}' is given twice")));
                }
            }
        }
        // Namespaces the other resources live in exist, as the API server requires.
        for (_, r) in &self.resources {
            if let Resource::Pod(ns, _) | Resource::NetworkPolicy(ns, _) | Resource::ServiceAccount(ns) = r {
                namespaces
                    .entry(ns.clone())
                    .or_insert_with(|| Namespace { name: ns.clone(), labels: BTreeMap::new() });
            }
        }
        namespaces
            .entry(DEFAULT_NAMESPACE.to_owned())
            .or_insert_with(|| Namespace { name: DEFAULT_NAMESPACE.to_owned(), labels: BTreeMap::new() });
        for n in namespaces.values_mut() {
            n.labels.entry("kubernetes.io/metadata.name".to_owned()).or_insert_with(|| n.name.clone());
            n.labels.insert("projectcalico.org/name".to_owned(), n.name.clone());
        }
        let mut endpoints = Vec::new();
        let mut owners: BTreeMap<IpAddr, String> = BTreeMap::new();
        let mut seen = BTreeSet::new();
        for (span, r) in &self.resources {
            if let Resource::Pod(ns, pod) = r {
                let name = self.name(span, &pod.metadata)?;
                if !seen.insert((ns.clone(), name.clone())) {
                    return Err(self.at(span, format!("pod '{ns}/{name}' is given twice")));
                }
                let Some(ips) = self.pod_ips(pod, ns, &name, &mut owners)? else { continue };
                let mut labels = pod.metadata.labels.clone().unwrap_or_default();
                labels.insert("projectcalico.org/namespace".to_owned(), ns.clone());
                labels.insert(ORCHESTRATOR_LABEL.to_owned(), "k8s".to_owned());
                let sa = pod.spec.service_account_name.clone().unwrap_or_else(|| "default".to_owned());
                labels.insert("projectcalico.org/serviceaccount".to_owned(), sa);
                endpoints.push(Endpoint { name, namespace: ns.clone(), ips, labels, interface: None });
            }
        }
        let mut policies = Vec::new();
        let mut names = BTreeSet::new();
        for (span, r) in &self.resources {
            if let Resource::NetworkPolicy(ns, np) = r {
                let name = self.name(span, &np.metadata)?;
                if !names.insert((ns.clone(), name.clone())) {
                    return Err(self.at(span, format!("NetworkPolicy '{ns}/{name}' is given twice")));
                }
                policies.push(self.network_policy(ns, &name, np)?);
            }
        }
        Ok(PolicySet {
            namespaces: namespaces.into_values().collect(),
            endpoints,
            netsets: Vec::new(),
            tiers: vec![Tier {
                name: DEFAULT_TIER.into(),
                order: DEFAULT_TIER_ORDER,
                default_action: TierDefault::Deny,
            }],
            policies,
            // A pod no policy selects is not isolated: Calico's namespace profile allows.
            defaults: Defaults { no_policy_action: Verdict::Allow, unmanaged_action: Verdict::Allow },
            intentionally_empty: false,
        })
    }

    fn name(&self, span: &Span, m: &schema::Metadata) -> Result<String, PolicyError> {
        match &m.name {
            Some(n) if !n.is_empty() => Ok(n.to_string()),
            Some(n) => Err(self.at(n.span(), "metadata.name is empty".into())),
            None => Err(self.at(span, "a resource without metadata.name".into())),
        }
    }

    /// A pod's addresses (`status.podIPs`, else `status.podIP`); `None` for a pod without one
    /// yet (nothing can address it).
    fn pod_ips(
        &self,
        pod: &schema::Pod,
        ns: &str,
        name: &str,
        owners: &mut BTreeMap<IpAddr, String>,
    ) -> Result<Option<Vec<IpAddr>>, PolicyError> {
        let given: Vec<&Spanned<String>> = if pod.status.pod_ips.is_empty() {
            pod.status.pod_ip.iter().collect()
        } else {
            pod.status.pod_ips.iter().map(|i| &i.ip).collect()
        };
        let mut ips = Vec::new();
        for ip in given {
            let addr: IpAddr = ip
                .parse()
                .map_err(|_| self.at(ip.span(), format!("'{}' is not an IP address", ip.as_str())))?;
            if let Some(other) = owners.insert(addr, format!("{ns}/{name}")) {
                return Err(self.at(ip.span(), format!("address {addr} belongs to pod {other} already")));
            }
            if !ips.contains(&addr) {
                ips.push(addr);
            }
        }
        Ok((!ips.is_empty()).then_some(ips))
    }

    fn network_policy(
        &self,
        ns: &str,
        name: &str,
        np: &schema::NetworkPolicy,
    ) -> Result<Policy, PolicyError> {
        let spec = &np.spec;
        let Some(pod_selector) = &spec.pod_selector else {
            return Err(self.at(spec.span(), "spec.podSelector is required (`{}` selects every pod)".into()));
        };
        let (mut ingress_type, mut egress_type) = (false, false);
        match &spec.policy_types {
            Some(types) => {
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
            None => {
                ingress_type = true;
                egress_type = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
            }
        }
        // Rules of a direction policyTypes leaves out have no effect upstream either.
        let ingress = if ingress_type { self.rules(spec.ingress.as_deref(), true)? } else { Vec::new() };
        let egress = if egress_type { self.rules(spec.egress.as_deref(), false)? } else { Vec::new() };
        Ok(Policy {
            name: format!("knp.default.{name}"),
            tier: DEFAULT_TIER.into(),
            order: Some(K8S_POLICY_ORDER),
            namespace: Some(ns.to_owned()),
            selector: pods(self.label_selector(pod_selector)?),
            ingress_type,
            egress_type,
            staged: false,
            ingress,
            egress,
        })
    }

    fn rules(
        &self,
        rules: Option<&[Spanned<schema::NetworkPolicyRule>]>,
        ingress: bool,
    ) -> Result<Vec<Rule>, PolicyError> {
        let mut out = Vec::new();
        for rule in rules.unwrap_or_default() {
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
            for peer in &peers {
                for (protocol, ranges) in &ports {
                    // The ports are the destination's: with the peer for an egress rule.
                    let (source, destination) = if ingress {
                        (peer.clone(), Peer { ports: ranges.clone(), ..Peer::default() })
                    } else {
                        (Peer::default(), Peer { ports: ranges.clone(), ..peer.clone() })
                    };
                    out.push(Rule {
                        action: crate::policy::Action::Allow,
                        protocol: *protocol,
                        not_protocol: None,
                        ip_version: None,
                        icmp: None,
                        not_icmp: None,
                        source,
                        destination,
                    });
                }
            }
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

    /// A rule's port entries as (protocol, destination ports): one entry per item of `ports`, or
    /// a single "any protocol, any port" when there are none.
    fn ports(
        &self,
        ports: Option<&[Spanned<schema::NetworkPolicyPort>]>,
    ) -> Result<Vec<PortEntry>, PolicyError> {
        let ports = ports.unwrap_or_default();
        if ports.is_empty() {
            return Ok(vec![(None, Vec::new())]);
        }
        let mut out = Vec::new();
        for p in ports {
            let protocol = match p.protocol.as_ref().map(|s| s.as_str()) {
                None | Some("TCP") => Protocol::TCP,
                Some("UDP") => Protocol::UDP,
                Some("SCTP") => Protocol::SCTP,
                Some(other) => {
                    let span = p.protocol.as_ref().map_or(p.span(), |s| s.span());
                    return Err(self.at(span, format!("protocol '{other}': TCP, UDP or SCTP")));
                }
            };
            let number = |s: &Spanned<String>| -> Result<u16, PolicyError> {
                match s.parse::<u16>() {
                    Ok(n) if n > 0 => Ok(n),
                    _ => Err(self.at(s.span(), format!("'{}' is not a port number (1..=65535)", s.as_str()))),
                }
            };
            let ranges = match (&p.port, &p.end_port) {
                (None, None) => Vec::new(),
                (None, Some(e)) => return Err(self.at(e.span(), "endPort without port".into())),
                (Some(port), end) if !port.chars().all(|c| c.is_ascii_digit()) => {
                    if let Some(e) = end {
                        return Err(self.at(e.span(), "endPort goes with a port number, not a name".into()));
                    }
                    return Err(self.at(
                        port.span(),
                        format!("named port '{}': named ports are not supported yet (open work: docs/guide/kubernetes.md)", port.as_str()),
                    ));
                }
                (Some(port), None) => {
                    let n = number(port)?;
                    PortRange::new(n, n).into_iter().collect()
                }
                (Some(port), Some(end)) => {
                    let (lo, hi) = (number(port)?, number(end)?);
                    match PortRange::new(lo, hi) {
                        Some(r) => vec![r],
                        None => return Err(self.at(end.span(), format!("endPort {hi} is below port {lo}"))),
                    }
                }
            };
            out.push((Some(protocol), ranges));
        }
        Ok(out)
    }

    fn label_selector(&self, s: &Spanned<schema::LabelSelector>) -> Result<Selector, PolicyError> {
        let mut terms = Vec::new();
        for (k, v) in s.match_labels.iter().flatten() {
            terms.push(Selector::Eq(k.clone(), v.clone()));
        }
        for req in s.match_expressions.iter().flatten() {
            let key = req.key.to_string();
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

/// The start of what field path `path` (`spec.ingress[0].from[0].podSelector.matchLabel`)
/// names under `node`: the key itself for a mapping entry, so an unknown field is pointed at.
fn locate<'n>(node: &'n Node, path: &str) -> Option<&'n marked_yaml::Marker> {
    let mut here = node;
    let mut mark = node.span().start();
    for part in path.split('.') {
        let (key, indexes) = part.split_once('[').map_or((part, ""), |(k, rest)| (k, rest));
        if !key.is_empty() {
            let map = here.as_mapping()?;
            let (k, v) = map.iter().find(|(k, _)| k.as_str() == key)?;
            mark = k.span().start();
            here = v;
        }
        for index in indexes.split('[').filter(|i| !i.is_empty()) {
            let i: usize = index.trim_end_matches(']').parse().ok()?;
            here = here.as_sequence()?.get(i)?;
            mark = here.span().start();
        }
    }
    mark
}

/// `selector` restricted to Kubernetes pods.
fn pods(selector: Selector) -> Selector {
    let pod = Selector::Eq(ORCHESTRATOR_LABEL.to_owned(), "k8s".to_owned());
    match selector {
        Selector::All => pod,
        Selector::And(mut terms) => {
            terms.insert(0, pod);
            Selector::And(terms)
        }
        other => Selector::And(vec![pod, other]),
    }
}

/// The documents of a YAML stream, each padded with empty lines so that positions in it are
/// positions in the file; documents holding nothing but comments are left out.
fn documents(text: &str) -> Vec<String> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start = 0;
    let mut flush = |current: &mut String, start: usize| {
        if current.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')) {
            docs.push(format!("{}{}", "\n".repeat(start), current));
        }
        current.clear();
    };
    for (i, line) in text.lines().enumerate() {
        let marker = |m: &str| {
            line.strip_prefix(m).is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '#']))
        };
        if marker("---") {
            flush(&mut current, start);
            start = i;
            // Content after the marker on the same line stays, in its columns.
            current.push_str(&" ".repeat(3));
            current.push_str(&line[3..]);
            current.push('\n');
        } else if marker("...") {
            flush(&mut current, start);
            start = i + 1;
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    flush(&mut current, start);
    docs
}

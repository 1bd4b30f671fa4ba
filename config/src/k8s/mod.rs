//! Policy written as Kubernetes and Calico resources, and the world it applies to (`v1`
//! Namespace, Pod and ServiceAccount manifests, Calico WorkloadEndpoints), read from YAML or
//! JSON (multi-document files, or directories of them) and landed in Margay's model the way
//! Calico lands them (docs/guide/kubernetes.md): `networking.k8s.io/v1` NetworkPolicy in
//! `networkpolicy.rs`, `projectcalico.org/v3` kinds in `calico.rs`; here, reading, the world,
//! and named ports.
//!
//! - a pod is an endpoint with its `status.podIPs`, its labels, and the labels Calico gives
//!   (`projectcalico.org/namespace`, `projectcalico.org/orchestrator: k8s`,
//!   `projectcalico.org/serviceaccount`, its namespace's labels as `pcns.KEY` and its service
//!   account's as `pcsa.KEY`), and one label per named container port
//!   ([`NAMED_PORT_LABEL`]);
//! - a namespace keeps its labels, with `kubernetes.io/metadata.name` (as the API server sets
//!   it) and Calico's `projectcalico.org/name`;
//! - a rule with a named port lands as one rule per number the name has on the endpoints,
//!   selecting the endpoints with that number.
//!
//! Nothing is silently dropped: a field that bears on what a policy allows and is not enforced
//! here is an error naming the file, line and column.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use marked_yaml::{Node, Span, Spanned};

use crate::net::{Cidr, PortRange, Protocol};
use crate::policy::{
    Action, DEFAULT_NAMESPACE, Defaults, Endpoint, Namespace, Peer, PolicyError, PolicySet, Rule, Verdict,
};
use crate::selector::{Inherit, NAMESPACE_LABEL, Selector};

mod admin;
mod calico;
mod networkpolicy;
mod schema;
#[cfg(test)]
mod tests;

/// The prefix of a staged policy's name (`staged:knp.default.NAME`), as Calico shows them.
pub const STAGED_PREFIX: &str = "staged:";

/// The order Calico gives Kubernetes NetworkPolicies in tier `default`.
pub const K8S_POLICY_ORDER: f64 = 1000.0;

/// The label Calico puts on Kubernetes pods (`projectcalico.org/orchestrator: k8s`), which
/// pod selectors converted from Kubernetes policies require.
pub const ORCHESTRATOR_LABEL: &str = "projectcalico.org/orchestrator";

/// Whether `path` names a file this module reads (by extension).
pub fn is_resource_file(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
}

/// A resource read, with the namespace it lives in (namespaced kinds).
#[derive(Debug)]
enum Resource {
    Namespace(schema::Namespace),
    ServiceAccount(String, schema::ServiceAccount),
    Pod(String, schema::Pod),
    /// A NetworkPolicy, or with `true` a Calico StagedKubernetesNetworkPolicy.
    NetworkPolicy(String, Box<schema::NetworkPolicy>, bool),
    Calico(calico::Resource),
    Admin(Box<admin::AdminPolicy>),
}

impl Resource {
    /// The namespace of a namespaced resource.
    fn namespace(&self) -> Option<&str> {
        match self {
            Resource::Namespace(_) => None,
            Resource::ServiceAccount(ns, _) | Resource::Pod(ns, _) | Resource::NetworkPolicy(ns, ..) => {
                Some(ns)
            }
            Resource::Calico(c) => c.namespace(),
            Resource::Admin(_) => None,
        }
    }
}

/// Resources read from files, to be turned into a [`PolicySet`].
#[derive(Debug, Default)]
pub struct Resources {
    /// The files read.
    files: Vec<PathBuf>,
    /// The documents read, as (file index, line of the file before the document's first): a
    /// position's source index is an index here. Each document is parsed on its own, and
    /// positions are moved to the file's lines when reported.
    documents: Vec<(usize, usize)>,
    resources: Vec<(Span, Resource)>,
    /// Each resource as written, in the order read.
    manifests: Vec<Manifest>,
}

/// One resource as written: what names it, and its document's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// `apiVersion` (`networking.k8s.io/v1`, `projectcalico.org/v3`, `v1`).
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// Its namespace, when the kind is namespaced (`default` when the document gives none and
    /// the file was read without one).
    pub namespace: Option<String>,
    /// `metadata.name`, when given.
    pub name: Option<String>,
    /// The document (YAML or JSON).
    pub text: String,
    /// Where it was read: `FILE:LINE`.
    pub origin: String,
}

impl Resources {
    /// No resources yet.
    pub fn new() -> Resources {
        Resources::default()
    }

    /// Reads `path`: a YAML or JSON file, or a directory, whose `.yaml`, `.yml` and `.json`
    /// files are read in name order (not its subdirectories). Namespaced resources without
    /// `metadata.namespace` go in `namespace` (as `kubectl apply -n` would put them), or
    /// `default`. Only regular files are read (a FIFO would block).
    pub fn add_path(&mut self, path: &Path, namespace: Option<&str>) -> Result<(), PolicyError> {
        let io = |error| PolicyError::Io { path: path.to_owned(), error };
        let files = if std::fs::metadata(path).map_err(io)?.is_dir() {
            crate::policy::directory_files(path, is_resource_file, ".yaml, .yml or .json")?
        } else {
            vec![path.to_owned()]
        };
        let mut budget = u64::MAX;
        for file in files {
            let text = crate::policy::read_limited(&file, &mut budget)?;
            self.add_text(&text, &file, namespace)?;
        }
        Ok(())
    }

    /// Reads the documents of `text`, which came from `path`.
    pub fn add_text(&mut self, text: &str, path: &Path, namespace: Option<&str>) -> Result<(), PolicyError> {
        let file = self.files.len();
        self.files.push(path.to_owned());
        for (offset, doc) in documents(text) {
            let source = self.documents.len();
            self.documents.push((file, offset));
            let node = marked_yaml::parse_yaml(source, &doc).map_err(|e| self.load_error(source, &e))?;
            if let Some(r) = self.resource(&node, namespace)? {
                let map = node.as_mapping();
                let field = |name: &str| map.and_then(|m| m.get_scalar(name)).map(|s| s.as_str().to_owned());
                let meta = map.and_then(|m| m.get_mapping("metadata"));
                self.manifests.push(Manifest {
                    api_version: field("apiVersion").unwrap_or_default(),
                    kind: field("kind").unwrap_or_default(),
                    namespace: r.namespace().map(str::to_owned),
                    name: meta.and_then(|m| m.get_scalar("name")).map(|s| s.as_str().to_owned()),
                    origin: format!(
                        "{}:{}",
                        path.display(),
                        node.span().start().map_or(offset + 1, |m| m.line() + offset)
                    ),
                    text: doc,
                });
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
        // Where a namespaced resource lives: its metadata's, else the one given for the file.
        let ns = |node: &Node| {
            let meta = node.as_mapping().and_then(|m| m.get_mapping("metadata"));
            meta.and_then(|m| m.get_scalar("namespace"))
                .map(|n| n.as_str().to_owned())
                .unwrap_or_else(|| namespace.unwrap_or(DEFAULT_NAMESPACE).to_owned())
        };
        let ns = ns(node);
        Ok(Some(match (api.as_str(), kind.as_str()) {
            ("v1", "Namespace") => Resource::Namespace(self.decode(node)?),
            ("v1", "ServiceAccount") => Resource::ServiceAccount(ns, self.decode(node)?),
            ("v1", "Pod") => Resource::Pod(ns, self.decode(node)?),
            ("networking.k8s.io/v1", "NetworkPolicy") => {
                Resource::NetworkPolicy(ns, self.decode(node)?, false)
            }
            (calico::API_VERSION, "StagedKubernetesNetworkPolicy") => {
                Resource::NetworkPolicy(ns, self.decode(node)?, true)
            }
            (calico::API_VERSION, kind) if calico::KINDS.contains(&kind) => {
                Resource::Calico(self.calico_resource(node, kind, ns)?)
            }
            (_, "List") => {
                return Err(self.at(&kind_span, "kind List: give the items as documents of their own".into()));
            }
            (admin::API_VERSION, "AdminNetworkPolicy" | "BaselineAdminNetworkPolicy") => {
                let baseline = kind == "BaselineAdminNetworkPolicy";
                Resource::Admin(Box::new(admin::AdminPolicy { baseline, policy: self.decode(node)? }))
            }
            _ => {
                return Err(self.at(
                    &kind_span,
                    format!(
                        "kind {kind} (apiVersion {api:?}) is not supported: Margay reads v1 Namespace, Pod and \
                         ServiceAccount, networking.k8s.io/v1 NetworkPolicy, {} AdminNetworkPolicy and \
                         BaselineAdminNetworkPolicy, and projectcalico.org/v3 {}",
                        admin::API_VERSION,
                        calico::KINDS.join(", ")
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
            self.error(mark.as_ref(), None, e.to_string())
        })
    }

    fn at(&self, span: &Span, message: String) -> PolicyError {
        self.error(span.start(), None, message)
    }

    /// `message` at `mark` (in document `source` when the mark has none).
    fn error(
        &self,
        mark: Option<&marked_yaml::Marker>,
        source: Option<usize>,
        message: String,
    ) -> PolicyError {
        let source = mark.map(|m| m.source()).or(source);
        let (file, offset) = source.and_then(|s| self.documents.get(s)).copied().unwrap_or((usize::MAX, 0));
        PolicyError::Invalid {
            path: self.files.get(file).cloned().unwrap_or_default(),
            line: mark.map_or(0, |m| m.line() + offset),
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
        self.error(mark.as_ref(), Some(source), message)
    }

    /// Every resource read, as written.
    pub fn manifests(&self) -> &[Manifest] {
        &self.manifests
    }

    /// The policy set these resources make.
    pub fn to_policy_set(&self) -> Result<PolicySet, PolicyError> {
        let namespaces = self.namespaces()?;
        let accounts = self.service_accounts()?;
        let (endpoints, mut named_ports) = self.endpoints(&namespaces, &accounts)?;
        let tiers = self.tiers()?;
        let netsets = self.netsets(&namespaces, &mut named_ports)?;
        let mut policies = Vec::new();
        let mut names = BTreeSet::new();
        for (span, r) in &self.resources {
            let (policy, kind) = match r {
                Resource::NetworkPolicy(ns, np, staged) => {
                    let name = self.name(span, &np.metadata)?;
                    (self.network_policy(ns, &name, np, *staged, &named_ports)?, "NetworkPolicy")
                }
                Resource::Calico(calico::Resource::Policy(p)) => {
                    (self.calico_policy(span, p, &tiers, &named_ports)?, p.kind)
                }
                Resource::Admin(a) => {
                    let kind = if a.baseline { "BaselineAdminNetworkPolicy" } else { "AdminNetworkPolicy" };
                    (self.admin_policy(span, a, &named_ports)?, kind)
                }
                _ => continue,
            };
            if !names.insert((policy.namespace.clone(), policy.name.clone())) {
                let ns = policy.namespace.as_deref().map_or(String::new(), |n| format!("{n}/"));
                return Err(self.at(span, format!("{kind} '{ns}{}' is given twice", policy.name)));
            }
            policies.push(policy);
        }
        Ok(PolicySet {
            namespaces: namespaces.into_values().collect(),
            endpoints,
            netsets,
            tiers,
            policies,
            // A pod no policy selects is not isolated: Calico's namespace profile allows.
            defaults: Defaults { no_policy_action: Verdict::Allow, unmanaged_action: Verdict::Allow },
            intentionally_empty: false,
        })
    }

    /// The namespaces given, those other resources live in (as the API server requires them to
    /// exist), and `default`, with the labels the API server and Calico add.
    fn namespaces(&self) -> Result<BTreeMap<String, Namespace>, PolicyError> {
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
        for ns in self.resources.iter().filter_map(|(_, r)| r.namespace()).chain([DEFAULT_NAMESPACE]) {
            namespaces
                .entry(ns.to_owned())
                .or_insert_with(|| Namespace { name: ns.to_owned(), labels: BTreeMap::new() });
        }
        for n in namespaces.values_mut() {
            n.labels.entry("kubernetes.io/metadata.name".to_owned()).or_insert_with(|| n.name.clone());
            n.labels.insert(NAME_LABEL.to_owned(), n.name.clone());
        }
        Ok(namespaces)
    }

    /// Service accounts' labels (with Calico's `projectcalico.org/name`), by (namespace, name).
    fn service_accounts(&self) -> Result<BTreeMap<(String, String), Labels>, PolicyError> {
        let mut accounts = BTreeMap::new();
        for (span, r) in &self.resources {
            if let Resource::ServiceAccount(ns, sa) = r {
                let name = self.name(span, &sa.metadata)?;
                let mut labels = sa.metadata.labels.clone().unwrap_or_default();
                labels.insert(NAME_LABEL.to_owned(), name.clone());
                if accounts.insert((ns.clone(), name.clone()), labels).is_some() {
                    return Err(self.at(span, format!("service account '{ns}/{name}' is given twice")));
                }
            }
        }
        Ok(accounts)
    }

    /// Pods and Calico workload endpoints as endpoints, with the labels Calico gives them, and
    /// the index of their named ports.
    fn endpoints(
        &self,
        namespaces: &BTreeMap<String, Namespace>,
        accounts: &BTreeMap<(String, String), Labels>,
    ) -> Result<(Vec<Endpoint>, NamedPorts), PolicyError> {
        let mut endpoints = Vec::new();
        let mut named_ports = NamedPorts::new();
        let mut owners: BTreeMap<IpAddr, String> = BTreeMap::new();
        let mut seen = BTreeSet::new();
        for (span, r) in &self.resources {
            let workload = match r {
                Resource::Pod(ns, pod) => self.pod(span, ns, pod)?,
                Resource::Calico(calico::Resource::WorkloadEndpoint(ns, wep)) => {
                    self.workload_endpoint(span, ns, wep)?
                }
                _ => continue,
            };
            let Workload { name, namespace, addresses, mut labels, service_account, ports } = workload;
            if !seen.insert((namespace.clone(), name.clone())) {
                return Err(self.at(span, format!("workload '{namespace}/{name}' is given twice")));
            }
            let mut ips = Vec::new();
            for ip in addresses {
                let addr = self.address(ip)?;
                if let Some(other) = owners.insert(addr, format!("{namespace}/{name}")) {
                    return Err(self.at(ip.span(), format!("address {addr} belongs to {other} already")));
                }
                if !ips.contains(&addr) {
                    ips.push(addr);
                }
            }
            if ips.is_empty() {
                // Not running yet: nothing can address it.
                continue;
            }
            labels.insert(NAMESPACE_LABEL.to_owned(), namespace.clone());
            labels.insert(SERVICE_ACCOUNT_LABEL.to_owned(), service_account.clone());
            inherit(&mut labels, Inherit::Namespace, namespaces.get(&namespace).map(|n| &n.labels));
            let mut sa_labels = accounts.get(&(namespace.clone(), service_account.clone())).cloned();
            if sa_labels.is_none() {
                // An account not given as a resource still has its name.
                sa_labels = Some(BTreeMap::from([(NAME_LABEL.to_owned(), service_account.clone())]));
            }
            inherit(&mut labels, Inherit::ServiceAccount, sa_labels.as_ref());
            for (protocol, port_name, number, span) in ports {
                let key = named_port_key(protocol, &port_name);
                if labels.insert(key, number.to_string()).is_some() {
                    return Err(self.at(
                        &span,
                        format!(
                            "port name '{port_name}' ({protocol}) is given twice in '{namespace}/{name}'"
                        ),
                    ));
                }
                named_ports
                    .entry(named_port_key(protocol, &port_name))
                    .or_default()
                    .add(number, ips.iter().copied().map(Cidr::host));
            }
            endpoints.push(Endpoint { name, namespace, ips, labels, interface: None });
        }
        Ok((endpoints, named_ports))
    }

    /// A pod as a workload.
    fn pod<'a>(&self, span: &Span, ns: &str, pod: &'a schema::Pod) -> Result<Workload<'a>, PolicyError> {
        let name = self.name(span, &pod.metadata)?;
        let addresses: Vec<&Spanned<String>> = if pod.status.pod_ips.is_empty() {
            pod.status.pod_ip.iter().collect()
        } else {
            pod.status.pod_ips.iter().map(|i| &i.ip).collect()
        };
        let mut labels = pod.metadata.labels.clone().unwrap_or_default();
        labels.insert(ORCHESTRATOR_LABEL.to_owned(), "k8s".to_owned());
        let mut ports = Vec::new();
        for c in &pod.spec.containers {
            for p in c.ports.iter().flatten() {
                let Some(port_name) = &p.name else { continue };
                let protocol = self.k8s_protocol(p.protocol.as_ref(), p.span())?;
                let number = self.port_number(&p.container_port)?;
                self.check_port_name(port_name)?;
                ports.push((protocol, port_name.to_string(), number, *p.span()));
            }
        }
        Ok(Workload {
            name,
            namespace: ns.to_owned(),
            addresses,
            labels,
            service_account: pod.spec.service_account_name.clone().unwrap_or_else(|| "default".to_owned()),
            ports,
        })
    }

    fn address(&self, ip: &Spanned<String>) -> Result<IpAddr, PolicyError> {
        // Calico's ipNetworks are host prefixes: `198.18.1.10/32`.
        let text = ip.as_str();
        let bare = match text.split_once('/') {
            Some((a, "32")) if !a.contains(':') => a,
            Some((a, "128")) => a,
            Some(_) => {
                return Err(self
                    .at(ip.span(), format!("'{text}': a workload's address is one address (/32 or /128)")));
            }
            None => text,
        };
        bare.parse().map_err(|_| self.at(ip.span(), format!("'{text}' is not an IP address")))
    }

    /// Protocol of a Kubernetes port: TCP (the default), UDP or SCTP.
    fn k8s_protocol(&self, protocol: Option<&Spanned<String>>, span: &Span) -> Result<Protocol, PolicyError> {
        match protocol.map(|s| s.as_str()) {
            None | Some("TCP") => Ok(Protocol::TCP),
            Some("UDP") => Ok(Protocol::UDP),
            Some("SCTP") => Ok(Protocol::SCTP),
            Some(other) => {
                Err(self
                    .at(protocol.map_or(span, |s| s.span()), format!("protocol '{other}': TCP, UDP or SCTP")))
            }
        }
    }

    /// A port number 1..=65535.
    fn port_number(&self, s: &Spanned<String>) -> Result<u16, PolicyError> {
        match s.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(self.at(s.span(), format!("'{}' is not a port number (1..=65535)", s.as_str()))),
        }
    }

    /// A port name as Kubernetes and Calico allow it (letters, digits, `-`, `_`, `.`).
    fn check_port_name(&self, name: &Spanned<String>) -> Result<(), PolicyError> {
        let ok = !name.is_empty()
            && name.len() <= 63
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if ok { Ok(()) } else { Err(self.at(name.span(), format!("'{}' is not a port name", name.as_str()))) }
    }

    fn name(&self, span: &Span, m: &schema::Metadata) -> Result<String, PolicyError> {
        match &m.name {
            Some(n) if !n.is_empty() => Ok(n.to_string()),
            Some(n) => Err(self.at(n.span(), "metadata.name is empty".into())),
            None => Err(self.at(span, "a resource without metadata.name".into())),
        }
    }

    /// The rules one Kubernetes-style rule (ANDed peers list and port entries, ORed within
    /// each) lands as: one per (peer, port entry), in that order, each reporting `index`. The
    /// ports are the destination's, so they go with the peer for an egress rule; a named port
    /// is resolved on the destination endpoints ([`Resources::with_named_ports`]).
    fn peer_port_rules(
        action: Action,
        ingress: bool,
        index: usize,
        peers: &[Peer],
        entries: &[PortEntry],
        named_ports: &NamedPorts,
    ) -> Vec<Rule> {
        let mut out = Vec::new();
        for peer in peers {
            for (protocol, ranges, name) in entries {
                let ported = |p: Peer| Peer { ports: ranges.clone(), ..p };
                let (source, destination) = if ingress {
                    (peer.clone(), ported(Peer::default()))
                } else {
                    (Peer::default(), ported(peer.clone()))
                };
                let rule = Rule {
                    action,
                    protocol: *protocol,
                    not_protocol: None,
                    ip_version: None,
                    icmp: None,
                    not_icmp: None,
                    source,
                    destination,
                    index: Some(index),
                };
                let names = PortNames { ports: name.iter().cloned().collect(), not_ports: Vec::new() };
                out.extend(Self::with_named_ports(rule, [&PortNames::default(), &names], named_ports));
            }
        }
        out
    }

    /// `rule` with its sides' named ports resolved against the endpoints (`names`: the
    /// source's and the destination's, matched with the rule's protocol). A named port in
    /// `ports` matches an endpoint's container port of that name and protocol, which may have a
    /// different number on each endpoint: the side lands once for its numbered ports and once
    /// per value, selecting the endpoints with it (a side with names and no numbers has no
    /// copy for the numbers; a name no endpoint has adds nothing). A named port in `notPorts`
    /// splits the side the same way ([`exclude_named_port`]).
    fn with_named_ports(rule: Rule, names: [&PortNames; 2], named_ports: &NamedPorts) -> Vec<Rule> {
        if names.iter().all(|n| n.is_empty()) {
            return vec![rule];
        }
        // Rules with named ports have a port protocol (checked where they are read).
        let Some(protocol) = rule.protocol else { return vec![rule] };
        let variants = |peer: &Peer, names: &PortNames| -> Vec<Peer> {
            let mut out = Vec::new();
            if names.ports.is_empty() || !peer.ports.is_empty() {
                out.push(peer.clone());
            }
            for name in &names.ports {
                let key = named_port_key(protocol, name);
                for &number in named_ports.get(&key).map(|n| &n.numbers).into_iter().flatten() {
                    out.push(Peer {
                        ports: PortRange::new(number, number).into_iter().collect(),
                        ..holding(peer, &key, number)
                    });
                }
            }
            for name in &names.not_ports {
                let key = named_port_key(protocol, name);
                out = out.iter().flat_map(|p| exclude_named_port(p, &key, named_ports)).collect();
            }
            out
        };
        let sources = variants(&rule.source, names[0]);
        let destinations = variants(&rule.destination, names[1]);
        let mut out = Vec::new();
        for source in &sources {
            for destination in &destinations {
                out.push(Rule { source: source.clone(), destination: destination.clone(), ..rule.clone() });
            }
        }
        out
    }
}

/// The port names of one side of a rule: those in its `ports` and in its `notPorts`.
#[derive(Debug, Default)]
struct PortNames {
    ports: Vec<String>,
    not_ports: Vec<String>,
}

impl PortNames {
    fn is_empty(&self) -> bool {
        self.ports.is_empty() && self.not_ports.is_empty()
    }
}

/// `peer` narrowed to the endpoints (and host endpoints) whose named port `key` is `number`.
fn holding(peer: &Peer, key: &str, number: u16) -> Peer {
    let term = Selector::Eq(key.to_owned(), number.to_string());
    let selector = Some(match peer.selector.clone() {
        None => term,
        Some(Selector::And(mut terms)) => {
            terms.push(term);
            Selector::And(terms)
        }
        Some(other) => Selector::And(vec![other, term]),
    });
    // A selector of its own would be limited to a namespaced policy's namespace: without a
    // selector or namespace selector, the endpoint may be anywhere.
    let namespace_selector = match (&peer.selector, &peer.namespace_selector) {
        (None, None) => Some(Selector::All),
        _ => peer.namespace_selector.clone(),
    };
    Peer { selector, namespace_selector, ..peer.clone() }
}

/// `peer` with named port `key` in its `notPorts`, as Felix matches it: an (address, port)
/// pair is excluded when the address is one of the peer's endpoints holding that name on that
/// port. The peer splits into one copy per value `v` the name takes (its holders of `v`,
/// with `v` added to `not_ports`) and one for the rest of its addresses (its holders
/// removed: by `not_selector` scoped as the peer's own selector is, or, for a peer without a
/// selector, which may match any address anywhere, by the holders' addresses in
/// `not_nets`).
fn exclude_named_port(peer: &Peer, key: &str, named_ports: &NamedPorts) -> Vec<Peer> {
    let Some(held) = named_ports.get(key) else { return vec![peer.clone()] };
    let mut out: Vec<Peer> = held
        .numbers
        .iter()
        .map(|&number| {
            let mut p = holding(peer, key, number);
            p.not_ports.extend(PortRange::new(number, number));
            p
        })
        .collect();
    let mut rest = peer.clone();
    let holders = peer
        .selector
        .clone()
        .or_else(|| peer.namespace_selector.as_ref().map(|_| Selector::All))
        .map(|s| Selector::And(vec![s, Selector::Has(key.to_owned())]));
    match holders {
        Some(holders) => {
            rest.not_selector = Some(match rest.not_selector.take() {
                None => holders,
                Some(Selector::Or(mut terms)) => {
                    terms.push(holders);
                    Selector::Or(terms)
                }
                Some(other) => Selector::Or(vec![other, holders]),
            });
        }
        None => rest.not_nets.extend(held.addresses.iter().copied()),
    }
    out.push(rest);
    out
}

/// Labels.
type Labels = BTreeMap<String, String>;

/// One port entry of a Kubernetes-style rule: its protocol (any when `None`) and destination
/// ports (any when empty), or the name of the destination's port.
type PortEntry = (Option<Protocol>, Vec<PortRange>, Option<String>);

/// The values each named port takes and the addresses that hold it, by its label key
/// ([`named_port_key`]).
type NamedPorts = BTreeMap<String, NamedPort>;

/// What one named port is across the endpoints.
#[derive(Debug, Default)]
struct NamedPort {
    /// The numbers it has.
    numbers: BTreeSet<u16>,
    /// The addresses of the endpoints and host endpoints that have it.
    addresses: Vec<Cidr>,
}

impl NamedPort {
    fn add(&mut self, number: u16, addresses: impl IntoIterator<Item = Cidr>) {
        self.numbers.insert(number);
        self.addresses.extend(addresses);
    }
}

/// Calico's label for a namespace's, service account's or network set's own name.
const NAME_LABEL: &str = "projectcalico.org/name";
/// Calico's label for a workload's service account.
const SERVICE_ACCOUNT_LABEL: &str = "projectcalico.org/serviceaccount";
/// The prefix of the labels that carry an endpoint's named ports: `margay.named-port/tcp.http:
/// "8080"`. Rules with a named port select endpoints by them.
pub const NAMED_PORT_LABEL: &str = "margay.named-port/";

fn named_port_key(protocol: Protocol, name: &str) -> String {
    format!("{NAMED_PORT_LABEL}{protocol}.{name}")
}

/// Adds `from`'s labels to `labels` under the inherited prefix (`pcns.KEY`, `pcsa.KEY`).
fn inherit(labels: &mut Labels, how: Inherit, from: Option<&Labels>) {
    for (k, v) in from.into_iter().flatten() {
        labels.insert(format!("{}{k}", how.prefix()), v.clone());
    }
}

/// A pod or workload endpoint, before its addresses are checked.
struct Workload<'a> {
    name: String,
    namespace: String,
    addresses: Vec<&'a Spanned<String>>,
    labels: Labels,
    service_account: String,
    /// (protocol, name, number, where) of its named ports.
    ports: Vec<(Protocol, String, u16, Span)>,
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

/// The documents of a YAML stream, each with the number of lines of the file before it;
/// documents holding nothing but comments are left out.
fn documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start = 0;
    let mut flush = |current: &mut String, start: usize| {
        if current.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')) {
            docs.push((start, std::mem::take(current)));
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

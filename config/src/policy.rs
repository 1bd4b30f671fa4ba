//! Policy files (`../shared/design/POLICY.md`, `docs/policy-language.md`): parsing and
//! validation into a checked [`PolicySet`].
//!
//! Two stages. The raw serde structs (`deny_unknown_fields`) check shape and each value on its
//! own (CIDRs, ports, protocols, selectors, ICMP), so the TOML layer reports those with the
//! value's line and column. Validation then checks what spans objects: duplicate names,
//! unknown tiers and namespaces, ports without a port protocol, ICMP without an ICMP protocol,
//! address families against `ip_version`, overlapping endpoint addresses, directions against
//! `types`. Every error names the file, line and column. A file is accepted or rejected whole.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::net::{Cidr, IcmpMatch, PortRange, Protocol};
use crate::selector::Selector;

/// The built-in tier: policies without a `tier` belong to it.
pub const DEFAULT_TIER: &str = "default";
/// The built-in tier's order: after every tier with a usual order.
pub const DEFAULT_TIER_ORDER: f64 = 1_000_000.0;
/// The namespace of endpoints without one.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A policy file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file does not parse or validate.
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
}

/// What a rule, or a tier default, decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Allowed; evaluation stops.
    Allow,
    /// Denied; evaluation stops.
    Deny,
    /// Leave this tier; continue with the next.
    Pass,
    /// Record a log hit; continue with the next rule.
    Log,
}

/// A tier's verdict when one of its policies selects the endpoint but no rule matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TierDefault {
    /// Deny.
    Deny,
    /// Continue with the next tier.
    Pass,
}

/// A verdict from `[defaults]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Allow.
    Allow,
    /// Deny.
    Deny,
}

impl Verdict {
    /// `"allow"` or `"deny"`, as written in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        }
    }
}

/// Traffic direction relative to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Traffic to the endpoint.
    Ingress,
    /// Traffic from the endpoint.
    Egress,
}

/// IP version restriction of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpVersion {
    /// IPv4 only.
    V4,
    /// IPv6 only.
    V6,
}

impl<'de> Deserialize<'de> for IpVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match i64::deserialize(d)? {
            4 => Ok(IpVersion::V4),
            6 => Ok(IpVersion::V6),
            n => Err(serde::de::Error::custom(format!("ip_version is 4 or 6, not {n}"))),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw form: what the file says.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
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

/// A namespace and its labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Namespace {
    /// Unique name.
    pub name: String,
    /// Labels that namespace selectors match.
    pub labels: BTreeMap<String, String>,
}

/// A workload endpoint served on this node.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// Unique name.
    pub name: String,
    /// Its namespace (declared, or `default`).
    pub namespace: String,
    /// Its addresses (no two endpoints share one).
    pub ips: Vec<IpAddr>,
    /// Labels that selectors match.
    pub labels: BTreeMap<String, String>,
    /// The interface it sits behind, when given.
    pub interface: Option<String>,
}

/// A labelled list of CIDRs.
#[derive(Debug, Clone, PartialEq)]
pub struct Netset {
    /// Unique name.
    pub name: String,
    /// Labels that rule selectors match.
    pub labels: BTreeMap<String, String>,
    /// Its prefixes.
    pub nets: Vec<Cidr>,
}

/// A tier.
#[derive(Debug, Clone, PartialEq)]
pub struct Tier {
    /// Unique name.
    pub name: String,
    /// Lower runs first; ties by name.
    pub order: f64,
    /// Verdict when a selecting policy's rules all miss.
    pub default_action: TierDefault,
}

/// One side of a rule.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Peer {
    /// Matches when the address is in any of these (or the list is empty).
    pub nets: Vec<Cidr>,
    /// Matches when the address is in none of these.
    pub not_nets: Vec<Cidr>,
    /// Endpoints and netsets whose labels match; their addresses.
    pub selector: Option<Selector>,
    /// Excludes the addresses of what this selects.
    pub not_selector: Option<Selector>,
    /// Restricts `selector`'s endpoints to namespaces with matching labels.
    pub namespace_selector: Option<Selector>,
    /// Matches when the port is in any of these (or the list is empty).
    pub ports: Vec<PortRange>,
    /// Matches when the port is in none of these.
    pub not_ports: Vec<PortRange>,
}

/// A rule. All present fields must match.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// What a match decides.
    pub action: Action,
    /// Only this protocol.
    pub protocol: Option<Protocol>,
    /// Not this protocol.
    pub not_protocol: Option<Protocol>,
    /// Only this IP version.
    pub ip_version: Option<IpVersion>,
    /// Only this ICMP type (and code).
    pub icmp: Option<IcmpMatch>,
    /// Not this ICMP type (and code).
    pub not_icmp: Option<IcmpMatch>,
    /// The packet's source.
    pub source: Peer,
    /// The packet's destination.
    pub destination: Peer,
}

/// A policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Name (unique within its namespace, or among global policies).
    pub name: String,
    /// Its tier.
    pub tier: String,
    /// Lower first; `None` after all ordered ones; ties by name.
    pub order: Option<f64>,
    /// Namespaced policy: selects endpoints of this namespace only.
    pub namespace: Option<String>,
    /// Which endpoints it applies to.
    pub selector: Selector,
    /// Applies to ingress.
    pub ingress_type: bool,
    /// Applies to egress.
    pub egress_type: bool,
    /// Evaluated and logged, never enforced.
    pub staged: bool,
    /// Ingress rules, in file order.
    pub ingress: Vec<Rule>,
    /// Egress rules, in file order.
    pub egress: Vec<Rule>,
}

/// The `[defaults]` verdicts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Defaults {
    /// Endpoint selected by no policy in a direction, or all tiers passed.
    pub no_policy_action: Verdict,
    /// Neither side is a local endpoint.
    pub unmanaged_action: Verdict,
}

/// A validated policy file.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicySet {
    /// Namespaces, `default` included.
    pub namespaces: Vec<Namespace>,
    /// Endpoints, in file order.
    pub endpoints: Vec<Endpoint>,
    /// Netsets, in file order.
    pub netsets: Vec<Netset>,
    /// Tiers in evaluation order (by order, then name), `default` included.
    pub tiers: Vec<Tier>,
    /// Policies in file order.
    pub policies: Vec<Policy>,
    /// `[defaults]`.
    pub defaults: Defaults,
}

impl PolicySet {
    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| PolicyError::Io { path: path.to_owned(), source })?;
        Self::parse(&text, path)
    }

    /// Validates policy text; `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, PolicyError> {
        let at = |span, message| error_at(text, path, span, message);
        let raw: RawFile = toml::from_str(text).map_err(|e| at(e.span(), e.message().trim().to_owned()))?;
        Validator { at: &at }.run(raw)
    }
}

/// The error `message` at byte span `span` of `text` (the file's start when unknown).
pub(crate) fn error_at(text: &str, path: &Path, span: Option<Range<usize>>, message: String) -> PolicyError {
    let (line, column) = line_column(text, span.map_or(0, |s| s.start));
    PolicyError::Invalid { path: path.to_owned(), line, column, message }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

struct Validator<'a> {
    at: &'a dyn Fn(Option<Range<usize>>, String) -> PolicyError,
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

    fn run(&self, raw: RawFile) -> Result<PolicySet, PolicyError> {
        // Namespaces.
        self.unique("namespace", raw.namespace.iter().map(|n| &n.name))?;
        let mut namespaces: Vec<Namespace> = raw
            .namespace
            .into_iter()
            .map(|n| Namespace { name: n.name.into_inner(), labels: n.labels })
            .collect();
        if !namespaces.iter().any(|n| n.name == DEFAULT_NAMESPACE) {
            namespaces.insert(0, Namespace { name: DEFAULT_NAMESPACE.into(), labels: BTreeMap::new() });
        }
        let known_ns = |n: &Spanned<String>| -> Result<String, PolicyError> {
            if namespaces.iter().any(|ns| ns.name == *n.get_ref()) {
                Ok(n.get_ref().clone())
            } else {
                self.err(
                    n.span(),
                    format!("unknown namespace '{}' (declare it with [[namespace]])", n.get_ref()),
                )
            }
        };

        // Endpoints: known namespace, no address shared.
        self.unique("endpoint", raw.endpoint.iter().map(|e| &e.name))?;
        let mut owner: BTreeMap<IpAddr, String> = BTreeMap::new();
        let mut endpoints = Vec::new();
        for e in raw.endpoint {
            let namespace = match &e.namespace {
                Some(n) => known_ns(n)?,
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

        self.unique("netset", raw.netset.iter().map(|n| &n.name))?;
        let netsets = raw
            .netset
            .into_iter()
            .map(|n| Netset { name: n.name.into_inner(), labels: n.labels, nets: n.nets })
            .collect();

        // Tiers: `default` is built in.
        self.unique("tier", raw.tier.iter().map(|t| &t.name))?;
        let mut tiers = vec![Tier {
            name: DEFAULT_TIER.into(),
            order: DEFAULT_TIER_ORDER,
            default_action: TierDefault::Deny,
        }];
        for t in raw.tier {
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

        // Policies.
        let mut seen = BTreeSet::new();
        let mut policies = Vec::new();
        for p in raw.policy {
            let namespace = p.namespace.as_ref().map(known_ns).transpose()?;
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
                Some(t) => {
                    (t.get_ref().contains(&Direction::Ingress), t.get_ref().contains(&Direction::Egress))
                }
                None => (true, !p.egress.is_empty()),
            };
            for (rules, wanted, dir) in
                [(&p.ingress, ingress_type, "ingress"), (&p.egress, egress_type, "egress")]
            {
                if let Some(r) = rules.first()
                    && !wanted
                {
                    return self
                        .err(r.span(), format!("{dir} rules in a policy whose types leave out {dir}"));
                }
            }
            let ingress = p.ingress.into_iter().map(|r| self.rule(r)).collect::<Result<_, _>>()?;
            let egress = p.egress.into_iter().map(|r| self.rule(r)).collect::<Result<_, _>>()?;
            policies.push(Policy {
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
            });
        }

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
        })
    }
}

//! Policy files (`docs/guide/policy-language.md`): parsing and
//! validation into a checked [`PolicySet`].
//!
//! Two stages. The raw serde structs (`deny_unknown_fields`) check shape and each value on its
//! own (CIDRs, ports, protocols, selectors, ICMP), so the TOML layer reports those with the
//! value's line and column. Validation then checks what spans objects: duplicate names,
//! unknown tiers and namespaces, ports without a port protocol, ICMP without an ICMP protocol,
//! address families against `ip_version`, overlapping endpoint addresses, directions against
//! `types`. Every error names the file, line and column. A file is accepted or rejected whole.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::net::{Cidr, IcmpMatch, PortRange, Protocol};
use crate::selector::Selector;

mod print;
mod sources;
pub(crate) use sources::{directory_files, read_limited};
mod validate;

/// The built-in tier: policies without a `tier` belong to it.
pub const DEFAULT_TIER: &str = "default";
/// The built-in tier's order: after every tier with a usual order.
pub const DEFAULT_TIER_ORDER: f64 = 1_000_000.0;
/// The largest policy file read by default (`[daemon] max_policy_bytes` sets the daemon's):
/// 64 MiB, about 20 times the scale benchmark's 10,000 rules and 100,000-CIDR feed.
pub const MAX_POLICY_BYTES: u64 = 64 << 20;
/// The namespace of endpoints without one.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A policy file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why. Not the error's `source`: the message already says it, and error chains
        /// printed whole (`{:#}`) said it twice.
        error: std::io::Error,
    },
    /// Two sources of one policy disagree (`PolicySet::load_all`).
    #[error("{path}: {message}")]
    Conflict {
        /// The source read second.
        path: PathBuf,
        /// What conflicts.
        message: String,
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
    /// The index reported for this rule when it is not its place in its policy's list: a
    /// rule read from a Kubernetes or Calico resource can land as several (one per peer and
    /// port entry, or per number a named port takes), and each reports the index the rule has
    /// in the resource.
    pub index: Option<usize>,
}

impl Rule {
    /// The index reported for the rule at place `i` of its policy's list.
    pub fn reported_index(&self, i: usize) -> i32 {
        i32::try_from(self.index.unwrap_or(i)).unwrap_or(i32::MAX)
    }
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
    /// `intentionally_empty = true`: the file means to have no `[[policy]]` (see
    /// [`PolicySet::is_empty`]).
    pub intentionally_empty: bool,
}

impl PolicySet {
    /// Whether the file holds no `[[policy]]`: it then enforces only `[defaults]` (allow, unless
    /// they say otherwise). An empty, truncated or comment-only file written in place of a
    /// real policy opens the node, so a daemon refuses to reload such a file over a policy
    /// that has policies, unless it sets `intentionally_empty = true`; `margay check` warns.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Why this set may not replace one of `current_policies` policies, if it may not: it is
    /// empty, the current one is not, and it does not say it means to be.
    pub fn refuses_to_replace(&self, current_policies: usize) -> Option<String> {
        (self.is_empty() && current_policies > 0 && !self.intentionally_empty).then(|| {
            format!(
                "the new policy has no [[policy]] (it would enforce only [defaults]) and would replace \
                 one with {current_policies}: refused; an empty or truncated file is the likely cause. \
                 If the node is meant to run without policies, set intentionally_empty = true in the file"
            )
        })
    }

    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        Self::load_limited(path, MAX_POLICY_BYTES)
    }

    /// Reads and validates a policy file, or a directory of them, of at most `max_bytes` in
    /// all: a TOML policy, or Kubernetes and Calico resources (`.yaml`, `.yml`, `.json`), or a
    /// directory of any of these, merged ([`PolicySet::load_all`]).
    pub fn load_limited(path: &Path, max_bytes: u64) -> Result<Self, PolicyError> {
        Self::load_all(&[path.to_owned()], max_bytes)
    }

    /// Validates policy text; `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, PolicyError> {
        let at = |span, message| error_at(text, path, span, message);
        let raw: validate::RawFile =
            toml::from_str(text).map_err(|e| at(e.span(), e.message().trim().to_owned()))?;
        validate::Validator { at: &at }.run(raw)
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

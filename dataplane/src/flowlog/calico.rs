//! Calico's flow-log schema: records with the field names and meanings of Calico Enterprise's
//! flow logs (`start_time`, `reporter`, `source_*`, `dest_*`, `policies`, ...), aggregated over
//! each flow-log interval at Calico's aggregation levels. docs/guide/flow-logs.md is the field
//! reference, with where Margay differs from Calico.
//!
//! Calico writes one record per flow, reporting side and interval; Margay's recorder writes
//! events (a flow's start, its traffic each interval, its end). The [`Aggregator`] folds the
//! events of an interval into Calico's shape: at level 0 a flow's start, aggregate and end
//! records of one interval become one record (`num_flows_started` and `num_flows_completed`
//! say which happened); levels 1 and 2 fold flows together by a coarser key. `log` records
//! are not aggregated: each is written as it comes.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::net::IpAddr;

use foldhash::fast::FixedState;
use margay_config::daemon::Aggregation;
use margay_config::policy::Verdict;
use margay_rulecompiler::policy::compile::SideRef;
use serde::Serialize;

use super::{FlowRecord, Kind, Proto, proto_name};
use crate::policy::{PolicyVersion, PolicyVersions};

/// Aggregates held at once; past this an interval is written out early (nothing is lost).
pub const MAX_AGGREGATES: usize = 262_144;

/// Which side reports a record: Calico writes a flow once for its source endpoint (egress
/// policy) and once for its destination endpoint (ingress policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
enum Reporter {
    Src,
    Dst,
}

/// One side of a record: who it is, at the aggregation level's resolution.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Side {
    ip: Option<IpAddr>,
    name: String,
    name_aggr: String,
    namespace: String,
    port: Option<u16>,
    kind: &'static str,
    labels: Option<Vec<String>>,
}

/// What records aggregate by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    action: Verdict,
    reporter: Reporter,
    proto: u8,
    source: Side,
    dest: Side,
    policies: Vec<String>,
}

#[derive(Debug, Default)]
struct Totals {
    start_ns: u64,
    end_ns: u64,
    packets_in: u64,
    packets_out: u64,
    bytes_in: u64,
    bytes_out: u64,
    flows: HashSet<u64, FixedState>,
    started: u64,
    completed: u64,
}

/// Folds flow records into Calico records over an interval.
#[derive(Debug)]
pub struct Aggregator {
    allowed: Aggregation,
    denied: Aggregation,
    host: String,
    open: HashMap<Key, Totals, FixedState>,
}

impl Aggregator {
    /// An aggregator at these levels, naming `host` in its records.
    pub fn new(allowed: Aggregation, denied: Aggregation, host: &str) -> Aggregator {
        Aggregator { allowed, denied, host: host.to_owned(), open: HashMap::default() }
    }

    /// Aggregates held.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Adds `r`; a `log` record is returned as a Calico record at once instead. Names come
    /// from `versions`.
    pub fn add(&mut self, r: &FlowRecord, versions: &PolicyVersions) -> Option<CalicoRecord> {
        let policy = r.policy_epoch.and_then(|e| versions.get(e));
        let level = if r.action == Verdict::Allow { self.allowed } else { self.denied };
        let egress = r.decision.and_then(|d| d.egress);
        let ingress = r.decision.and_then(|d| d.ingress);
        if r.kind == Kind::Log {
            // The rules that logged: the egress side's reports as the source, else the ingress
            // side's as the destination; both are named.
            let reporter = if egress.is_some() { Reporter::Src } else { Reporter::Dst };
            let mut k = key(r, policy, Aggregation::None, reporter, None);
            if let Some(p) = policy {
                k.policies = [egress, ingress]
                    .into_iter()
                    .flatten()
                    .enumerate()
                    .map(|(i, s)| policy_entry(i, p, s, "log"))
                    .collect();
            }
            let mut t = Totals { start_ns: r.start_ns, end_ns: r.end_ns, ..Totals::default() };
            t.flows.insert(flow_id(r));
            return Some(render(k, &t, &self.host, Some("log")));
        }
        let src_local = policy.is_some_and(|p| p.compiled.endpoint(r.src).is_some());
        let dst_local = policy.is_some_and(|p| p.compiled.endpoint(r.dst).is_some());
        let mut reporters = Vec::with_capacity(2);
        if src_local || !dst_local {
            reporters.push((Reporter::Src, egress));
        }
        if dst_local {
            reporters.push((Reporter::Dst, ingress));
        }
        for (reporter, side) in reporters {
            let k = key(r, policy, level, reporter, side.map(|s| (s, s.verdict.as_str())));
            let t = self.open.entry(k).or_default();
            if t.start_ns == 0 || r.start_ns < t.start_ns {
                t.start_ns = r.start_ns;
            }
            t.end_ns = t.end_ns.max(r.end_ns);
            let (out, inn) = match reporter {
                Reporter::Src => (0, 1),
                Reporter::Dst => (1, 0),
            };
            t.packets_out += r.packets[out];
            t.packets_in += r.packets[inn];
            t.bytes_out += r.ip_bytes(out);
            t.bytes_in += r.ip_bytes(inn);
            t.flows.insert(flow_id(r));
            t.started += u64::from(r.flows_started);
            t.completed += u64::from(r.flows_completed);
        }
        None
    }

    /// The interval's records, in a stable order (first packet, then reporter, addresses and
    /// ports); the aggregator starts over.
    pub fn drain(&mut self) -> Vec<CalicoRecord> {
        let mut out: Vec<CalicoRecord> =
            self.open.drain().map(|(k, t)| render(k, &t, &self.host, None)).collect();
        out.sort_unstable_by(|a, b| {
            let order = |r: &CalicoRecord| {
                (r.start_ns, r.reporter, r.source_ip, r.source_port, r.dest_ip, r.dest_port)
            };
            order(a).cmp(&order(b)).then_with(|| a.policies.all_policies.cmp(&b.policies.all_policies))
        });
        out
    }
}

/// A flow's identity for `num_flows` (its 5-tuple, hashed).
fn flow_id(r: &FlowRecord) -> u64 {
    FixedState::with_seed(0x6e75_6d66).hash_one((r.proto, r.src, r.src_port, r.dst, r.dst_port))
}

fn key(
    r: &FlowRecord,
    policy: Option<&PolicyVersion>,
    level: Aggregation,
    reporter: Reporter,
    side: Option<(SideRef, &str)>,
) -> Key {
    let policies = match (side, policy) {
        (Some((s, action)), Some(p)) => vec![policy_entry(0, p, s, action)],
        _ => Vec::new(),
    };
    Key {
        action: r.action,
        reporter,
        proto: r.proto,
        source: endpoint_side(r.src, port(r, r.src_port), policy, level, true),
        dest: endpoint_side(r.dst, port(r, r.dst_port), policy, level, false),
        policies,
    }
}

/// Calico's `INDEX|TIER|NAME|ACTION|RULE`, NAME being `tier.policy` or `namespace/tier.policy`;
/// a `[defaults]` verdict is `__DEFAULTS__`.
fn policy_entry(index: usize, p: &PolicyVersion, s: SideRef, action: &str) -> String {
    if s.meta == SideRef::DEFAULTS {
        return format!("{index}|__DEFAULTS__|__DEFAULTS__|{action}|-1");
    }
    let (tier, _, rule) = p.compiled.side_names(s);
    format!("{index}|{tier}|{}|{action}|{rule}", p.compiled.side_qualified_name(s))
}

/// A port, for protocols with ports (ICMP echo's identifier is not one: Calico gives none).
fn port(r: &FlowRecord, p: u16) -> Option<u16> {
    (!matches!(r.proto, 1 | 58)).then_some(p)
}

fn endpoint_side(
    ip: IpAddr,
    port: Option<u16>,
    policy: Option<&PolicyVersion>,
    level: Aggregation,
    source: bool,
) -> Side {
    let port = port.filter(|_| !source || level == Aggregation::None);
    let ep = policy.and_then(|p| p.compiled.endpoint(ip).map(|e| (e, p.compiled.endpoint_labels(ip))));
    let keep_names = level != Aggregation::Prefixes;
    match ep {
        Some(((name, namespace), labels)) => Side {
            ip: keep_names.then_some(ip),
            name: if keep_names { name.to_owned() } else { "-".to_owned() },
            name_aggr: name_aggr(name),
            namespace: namespace.to_owned(),
            port,
            kind: "wep",
            labels: Some(labels.map(<[String]>::to_vec).unwrap_or_default()),
        },
        None => Side {
            ip: keep_names.then_some(ip),
            name: "-".to_owned(),
            name_aggr: if private(ip) { "pvt" } else { "pub" }.to_owned(),
            namespace: "-".to_owned(),
            port,
            kind: "net",
            labels: None,
        },
    }
}

/// Calico's aggregated name: a Kubernetes-generated name (`web-7d4b9c-x2kfp`: a prefix, then
/// five characters of Kubernetes' random alphabet) becomes its prefix and `*`; any other name
/// stays as it is.
pub fn name_aggr(name: &str) -> String {
    const RANDOM: &str = "bcdfghjklmnpqrstvwxz2456789";
    match name.rsplit_once('-') {
        Some((prefix, tail))
            if !prefix.is_empty() && tail.len() == 5 && tail.chars().all(|c| RANDOM.contains(c)) =>
        {
            format!("{prefix}-*")
        }
        _ => name.to_owned(),
    }
}

/// Calico's `pvt`: addresses not routed on the public internet.
fn private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            a.is_private()
                || a.is_loopback()
                || a.is_link_local()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
        }
        IpAddr::V6(a) => {
            a.is_loopback() || (a.segments()[0] & 0xfe00) == 0xfc00 || (a.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// A Calico-format record: a line of the flow log (fields in alphabetical order).
#[derive(Debug, Clone, Serialize)]
pub struct CalicoRecord {
    action: &'static str,
    bytes_in: u64,
    bytes_out: u64,
    dest_ip: Option<IpAddr>,
    dest_labels: Option<Labels>,
    dest_name: String,
    dest_name_aggr: String,
    dest_namespace: String,
    dest_port: Option<u16>,
    dest_type: &'static str,
    end_time: u64,
    host: String,
    num_flows: usize,
    num_flows_completed: u64,
    num_flows_started: u64,
    packets_in: u64,
    packets_out: u64,
    policies: Policies,
    proto: Proto,
    reporter: Reporter,
    source_ip: Option<IpAddr>,
    source_labels: Option<Labels>,
    source_name: String,
    source_name_aggr: String,
    source_namespace: String,
    source_port: Option<u16>,
    source_type: &'static str,
    start_time: u64,
    /// `log` for a log-rule hit; absent on flow records.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    #[serde(skip)]
    start_ns: u64,
}

#[derive(Debug, Clone, Serialize)]
struct Labels {
    labels: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
struct Policies {
    all_policies: Vec<String>,
}

fn render(k: Key, t: &Totals, host: &str, kind: Option<&'static str>) -> CalicoRecord {
    let labels = |l: Option<Vec<String>>| l.map(|labels| Labels { labels });
    CalicoRecord {
        start_time: t.start_ns / 1_000_000_000,
        end_time: t.end_ns.div_ceil(1_000_000_000),
        action: k.action.as_str(),
        reporter: k.reporter,
        proto: proto_name(k.proto),
        source_ip: k.source.ip,
        source_name: k.source.name,
        source_name_aggr: k.source.name_aggr,
        source_namespace: k.source.namespace,
        source_port: k.source.port,
        source_type: k.source.kind,
        source_labels: labels(k.source.labels),
        dest_ip: k.dest.ip,
        dest_name: k.dest.name,
        dest_name_aggr: k.dest.name_aggr,
        dest_namespace: k.dest.namespace,
        dest_port: k.dest.port,
        dest_type: k.dest.kind,
        dest_labels: labels(k.dest.labels),
        bytes_in: t.bytes_in,
        bytes_out: t.bytes_out,
        packets_in: t.packets_in,
        packets_out: t.packets_out,
        num_flows: t.flows.len(),
        num_flows_started: t.started,
        num_flows_completed: t.completed,
        policies: Policies { all_policies: k.policies },
        host: host.to_owned(),
        kind,
        start_ns: t.start_ns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_aggregate_to_their_prefix() {
        assert_eq!(name_aggr("web-7d4b9c6f8d-x2kfp"), "web-7d4b9c6f8d-*");
        assert_eq!(name_aggr("db-0"), "db-0");
        assert_eq!(name_aggr("client"), "client");
        // Vowels are not in Kubernetes' alphabet: a word, not a generated suffix.
        assert_eq!(name_aggr("api-alpha"), "api-alpha");
    }

    #[test]
    fn private_ranges() {
        for a in ["10.1.2.3", "192.168.0.1", "198.18.1.10", "198.19.0.1", "100.64.0.1", "fd00::1"] {
            assert!(private(a.parse().unwrap()), "{a}");
        }
        for a in ["8.8.8.8", "198.20.0.1", "2001:db8::1"] {
            assert!(!private(a.parse().unwrap()), "{a}");
        }
    }
}

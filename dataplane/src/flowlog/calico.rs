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

use std::borrow::Cow;
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

/// Who a side of a record is, by index: names are resolved when the record is written, so an
/// aggregate's key is a few words to hash, not a dozen strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Who {
    /// A local endpoint, by index in the record's policy version.
    Endpoint(u32),
    /// Endpoints of one namespace and name prefix (level 2), by index in the groups.
    Group(u32),
    /// Not an endpoint: a private or a public address.
    Net { private: bool },
}

/// One side of a record at the aggregation level's resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SideKey {
    ip: Option<IpAddr>,
    port: Option<u16>,
    who: Who,
}

/// What records aggregate by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    /// The policy version that names the endpoints and the rule.
    epoch: Option<u32>,
    action: Verdict,
    reporter: Reporter,
    proto: u8,
    source: SideKey,
    dest: SideKey,
    /// The reporting side's deciding rule.
    rule: Option<SideRef>,
}

#[derive(Debug, Default)]
struct Totals {
    start_ns: u64,
    end_ns: u64,
    packets_in: u64,
    packets_out: u64,
    bytes_in: u64,
    bytes_out: u64,
    /// The distinct flows folded in (levels 1 and 2; at level 0 a key is one flow).
    flows: Option<HashSet<u64, FixedState>>,
    started: u64,
    completed: u64,
}

/// Endpoints of one namespace and name prefix, within an interval.
#[derive(Debug)]
struct Group {
    namespace: String,
    name_aggr: String,
    /// The labels every member seen so far has.
    labels: Vec<String>,
}

/// Folds flow records into Calico records over an interval.
#[derive(Debug)]
pub struct Aggregator {
    allowed: Aggregation,
    denied: Aggregation,
    host: String,
    open: HashMap<Key, Totals, FixedState>,
    groups: Vec<Group>,
    group_of: HashMap<(u32, u32), u32, FixedState>,
    group_by_name: HashMap<(String, String), u32, FixedState>,
    /// The groups belong to the interval last drained: cleared at the next record.
    groups_stale: bool,
}

impl Aggregator {
    /// An aggregator at these levels, naming `host` in its records.
    pub fn new(allowed: Aggregation, denied: Aggregation, host: &str) -> Aggregator {
        Aggregator {
            allowed,
            denied,
            host: host.to_owned(),
            open: HashMap::default(),
            groups: Vec::new(),
            group_of: HashMap::default(),
            group_by_name: HashMap::default(),
            groups_stale: false,
        }
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
    pub fn add<'a>(&'a mut self, r: &FlowRecord, versions: &'a PolicyVersions) -> Option<CalicoRecord<'a>> {
        if self.groups_stale {
            self.groups.clear();
            self.group_of.clear();
            self.group_by_name.clear();
            self.groups_stale = false;
        }
        let policy = r.policy_epoch.and_then(|e| versions.get(e));
        let egress = r.decision.and_then(|d| d.egress);
        let ingress = r.decision.and_then(|d| d.ingress);
        // The endpoints at each end, looked up once for both reporters' keys.
        let ends = policy
            .map_or([None, None], |p| [p.compiled.endpoint_index(r.src), p.compiled.endpoint_index(r.dst)]);
        if r.kind == Kind::Log {
            // The rules that logged: the egress side's reports as the source, else the ingress
            // side's as the destination; both are named.
            let reporter = if egress.is_some() { Reporter::Src } else { Reporter::Dst };
            let k = Key { reporter, ..self.key(r, policy, ends, Aggregation::None) };
            let t = Totals { start_ns: r.start_ns, end_ns: r.end_ns, ..Totals::default() };
            let mut v = render(&k, &t, self, versions, Some("log"));
            if let Some(p) = policy {
                v.policies.all_policies = [egress, ingress]
                    .into_iter()
                    .flatten()
                    .enumerate()
                    .map(|(i, s)| policy_entry(i, p, s, "log"))
                    .collect();
            }
            return Some(v);
        }
        let level = if r.action == Verdict::Allow { self.allowed } else { self.denied };
        let [src_local, dst_local] = ends.map(|e| e.is_some());
        let base = self.key(r, policy, ends, level);
        let reporters = [
            (src_local || !dst_local).then_some((Reporter::Src, egress)),
            dst_local.then_some((Reporter::Dst, ingress)),
        ];
        for (reporter, side) in reporters.into_iter().flatten() {
            let k = Key { reporter, rule: side, ..base };
            let t = self.open.entry(k).or_insert_with(|| Totals {
                start_ns: r.start_ns,
                flows: (level != Aggregation::None).then(HashSet::default),
                ..Totals::default()
            });
            t.start_ns = t.start_ns.min(r.start_ns);
            t.end_ns = t.end_ns.max(r.end_ns);
            let (out, inn) = match reporter {
                Reporter::Src => (0, 1),
                Reporter::Dst => (1, 0),
            };
            t.packets_out += r.packets[out];
            t.packets_in += r.packets[inn];
            t.bytes_out += r.ip_bytes(out);
            t.bytes_in += r.ip_bytes(inn);
            if let Some(f) = t.flows.as_mut() {
                f.insert(flow_id(r));
            }
            t.started += u64::from(r.flows_started);
            t.completed += u64::from(r.flows_completed);
        }
        None
    }

    /// The interval's records, in a stable order (first packet, then reporter, addresses and
    /// ports); the aggregator starts over. Names come from `versions`.
    pub fn drain<'a>(&'a mut self, versions: &'a PolicyVersions) -> Vec<CalicoRecord<'a>> {
        let open = std::mem::take(&mut self.open);
        self.groups_stale = true;
        let this: &'a Aggregator = self;
        let mut out: Vec<CalicoRecord<'a>> =
            open.iter().map(|(k, t)| render(k, t, this, versions, None)).collect();
        out.sort_unstable_by(|a, b| {
            let order = |r: &CalicoRecord| {
                (r.start_ns, r.reporter, r.source_ip, r.source_port, r.dest_ip, r.dest_port)
            };
            order(a).cmp(&order(b)).then_with(|| a.policies.all_policies.cmp(&b.policies.all_policies))
        });
        out
    }

    /// `r`'s key at `level`, as the source reports it with no rule (callers set both); `ends`
    /// are the endpoints at its source and destination.
    fn key(
        &mut self,
        r: &FlowRecord,
        policy: Option<&PolicyVersion>,
        ends: [Option<u32>; 2],
        level: Aggregation,
    ) -> Key {
        let source_port = port(r, r.src_port).filter(|_| level == Aggregation::None);
        Key {
            epoch: policy.map(|p| p.epoch),
            action: r.action,
            reporter: Reporter::Src,
            proto: r.proto,
            source: self.side(r.src, source_port, policy.zip(ends[0]), level),
            dest: self.side(r.dst, port(r, r.dst_port), policy.zip(ends[1]), level),
            rule: None,
        }
    }

    /// A side at `level`: `endpoint`, when the address is one, is its version and index.
    fn side(
        &mut self,
        ip: IpAddr,
        port: Option<u16>,
        endpoint: Option<(&PolicyVersion, u32)>,
        level: Aggregation,
    ) -> SideKey {
        let who = match (endpoint, level) {
            (Some((p, e)), Aggregation::Prefixes) => Who::Group(self.group(p, e)),
            (Some((_, e)), _) => Who::Endpoint(e),
            (None, _) => Who::Net { private: private(ip) },
        };
        SideKey { ip: (level != Aggregation::Prefixes).then_some(ip), port, who }
    }

    /// The group of endpoint `e` of version `p`, made or joined (its labels narrowed to the ones
    /// every member has).
    fn group(&mut self, p: &PolicyVersion, e: u32) -> u32 {
        if let Some(&g) = self.group_of.get(&(p.epoch, e)) {
            return g;
        }
        let (name, namespace, labels) = p.compiled.endpoint_at(e).unwrap_or(("-", "-", &[]));
        let id = (namespace.to_owned(), name_aggr(name).into_owned());
        let g = match self.group_by_name.get(&id) {
            Some(&g) => {
                self.groups[g as usize].labels.retain(|l| labels.contains(l));
                g
            }
            None => {
                let g = self.groups.len() as u32;
                self.groups.push(Group {
                    namespace: id.0.clone(),
                    name_aggr: id.1.clone(),
                    labels: labels.to_vec(),
                });
                self.group_by_name.insert(id, g);
                g
            }
        };
        self.group_of.insert((p.epoch, e), g);
        g
    }
}

/// A flow's identity for `num_flows` (its 5-tuple, hashed).
fn flow_id(r: &FlowRecord) -> u64 {
    FixedState::with_seed(0x6e75_6d66).hash_one((r.proto, r.src, r.src_port, r.dst, r.dst_port))
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

/// Calico's aggregated name: a Kubernetes-generated name (`web-7d4b9c-x2kfp`: a prefix, then
/// five characters of Kubernetes' random alphabet) becomes its prefix and `*`; any other name
/// stays as it is.
pub fn name_aggr(name: &str) -> Cow<'_, str> {
    const RANDOM: &str = "bcdfghjklmnpqrstvwxz2456789";
    match name.rsplit_once('-') {
        Some((prefix, tail))
            if !prefix.is_empty() && tail.len() == 5 && tail.chars().all(|c| RANDOM.contains(c)) =>
        {
            Cow::Owned(format!("{prefix}-*"))
        }
        _ => Cow::Borrowed(name),
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

/// A Calico-format record: a line of the flow log (fields in alphabetical order), borrowing
/// its names from the policy version and the aggregator.
#[derive(Debug, Clone, Serialize)]
pub struct CalicoRecord<'a> {
    action: &'static str,
    bytes_in: u64,
    bytes_out: u64,
    dest_ip: Option<IpAddr>,
    dest_labels: Option<Labels<'a>>,
    dest_name: &'a str,
    dest_name_aggr: Cow<'a, str>,
    dest_namespace: &'a str,
    dest_port: Option<u16>,
    dest_type: &'static str,
    end_time: u64,
    host: &'a str,
    num_flows: usize,
    num_flows_completed: u64,
    num_flows_started: u64,
    packets_in: u64,
    packets_out: u64,
    policies: Policies,
    proto: Proto,
    reporter: Reporter,
    source_ip: Option<IpAddr>,
    source_labels: Option<Labels<'a>>,
    source_name: &'a str,
    source_name_aggr: Cow<'a, str>,
    source_namespace: &'a str,
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
struct Labels<'a> {
    labels: &'a [String],
}

#[derive(Debug, Clone, Serialize)]
struct Policies {
    all_policies: Vec<String>,
}

/// One side's names: name, aggregated name, namespace, type and labels.
type Names<'a> = (&'a str, Cow<'a, str>, &'a str, &'static str, Option<Labels<'a>>);

fn names<'a>(who: Who, policy: Option<&'a PolicyVersion>, groups: &'a [Group]) -> Names<'a> {
    let endpoint = |e: u32| policy.and_then(|p| p.compiled.endpoint_at(e));
    match who {
        Who::Endpoint(e) => match endpoint(e) {
            Some((name, namespace, labels)) => {
                (name, name_aggr(name), namespace, "wep", Some(Labels { labels }))
            }
            None => ("-", Cow::Borrowed("-"), "-", "wep", None),
        },
        Who::Group(g) => match groups.get(g as usize) {
            Some(g) => (
                "-",
                Cow::Borrowed(g.name_aggr.as_str()),
                g.namespace.as_str(),
                "wep",
                Some(Labels { labels: &g.labels }),
            ),
            None => ("-", Cow::Borrowed("-"), "-", "wep", None),
        },
        Who::Net { private } => ("-", Cow::Borrowed(if private { "pvt" } else { "pub" }), "-", "net", None),
    }
}

fn render<'a>(
    k: &Key,
    t: &Totals,
    agg: &'a Aggregator,
    versions: &'a PolicyVersions,
    kind: Option<&'static str>,
) -> CalicoRecord<'a> {
    let policy = k.epoch.and_then(|e| versions.get(e));
    let (source_name, source_name_aggr, source_namespace, source_type, source_labels) =
        names(k.source.who, policy, &agg.groups);
    let (dest_name, dest_name_aggr, dest_namespace, dest_type, dest_labels) =
        names(k.dest.who, policy, &agg.groups);
    let all_policies = match (k.rule, policy) {
        (Some(s), Some(p)) => vec![policy_entry(0, p, s, s.verdict.as_str())],
        _ => Vec::new(),
    };
    CalicoRecord {
        start_time: t.start_ns / 1_000_000_000,
        end_time: t.end_ns.div_ceil(1_000_000_000),
        action: k.action.as_str(),
        reporter: k.reporter,
        proto: proto_name(k.proto),
        source_ip: k.source.ip,
        source_name,
        source_name_aggr,
        source_namespace,
        source_port: k.source.port,
        source_type,
        source_labels,
        dest_ip: k.dest.ip,
        dest_name,
        dest_name_aggr,
        dest_namespace,
        dest_port: k.dest.port,
        dest_type,
        dest_labels,
        bytes_in: t.bytes_in,
        bytes_out: t.bytes_out,
        packets_in: t.packets_in,
        packets_out: t.packets_out,
        num_flows: t.flows.as_ref().map_or(1, HashSet::len),
        num_flows_started: t.started,
        num_flows_completed: t.completed,
        policies: Policies { all_policies },
        host: &agg.host,
        kind,
        start_ns: t.start_ns,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use margay_config::PolicySet;
    use margay_rulecompiler::policy::compile::CompiledPolicy;

    use super::*;
    use crate::flowlog::Reason;

    const POLICY: &str = r#"
[[endpoint]]
name = "web-7d4b9c6f8d-x2kfp"
ips = ["198.18.2.20"]
labels = { app = "web", zone = "a" }
[[endpoint]]
name = "web-7d4b9c6f8d-q9wzt"
ips = ["198.18.2.21"]
labels = { app = "web", zone = "b" }
"#;

    fn versions() -> PolicyVersions {
        let set = PolicySet::parse(POLICY, Path::new("p.toml")).unwrap_or_else(|e| panic!("{e}"));
        let compiled = CompiledPolicy::compile(&set).unwrap_or_else(|e| panic!("{e}"));
        PolicyVersions::of(Arc::new(PolicyVersion { epoch: 1, compiled }))
    }

    /// A start record of a UDP flow from `src`:`sport` (outside) to `dst`:53, 2 frames of 60 bytes.
    fn record(src: &str, sport: u16, dst: &str) -> FlowRecord {
        FlowRecord {
            kind: Kind::Start,
            start_ns: 5_000_000_000,
            end_ns: 5_500_000_000,
            proto: 17,
            src: src.parse().unwrap_or_else(|e| panic!("{e}")),
            src_port: sport,
            dst: dst.parse().unwrap_or_else(|e| panic!("{e}")),
            dst_port: 53,
            action: Verdict::Allow,
            reason: Reason::Policy,
            policy_epoch: Some(1),
            decision: None,
            packets: [2, 0],
            bytes: [120, 0],
            flows_started: 1,
            flows_completed: 0,
        }
    }

    fn lines(level: Aggregation) -> Vec<serde_json::Value> {
        let v = versions();
        let mut a = Aggregator::new(level, Aggregation::None, "node-1");
        for (src, sport, dst) in [
            ("8.8.8.8", 1000, "198.18.2.20"),
            ("8.8.8.8", 1001, "198.18.2.20"),
            ("10.0.0.1", 1000, "198.18.2.21"),
        ] {
            assert!(a.add(&record(src, sport, dst), &v).is_none());
        }
        // A flow's second record in the interval folds into its first.
        assert!(a.add(&record("8.8.8.8", 1000, "198.18.2.20"), &v).is_none());
        a.drain(&v).iter().map(|r| serde_json::to_value(r).unwrap_or_else(|e| panic!("{e}"))).collect()
    }

    #[test]
    fn level_0_is_a_record_per_flow_and_reporting_side() {
        let l = lines(Aggregation::None);
        // Sources are outside: the destination reports each flow, once.
        assert_eq!(l.len(), 3, "{l:#?}");
        let first = &l[0];
        assert_eq!(first["reporter"], "dst");
        assert_eq!((first["packets_in"].as_u64(), first["bytes_in"].as_u64()), (Some(4), Some(184)));
        assert_eq!((first["num_flows"].as_u64(), first["num_flows_started"].as_u64()), (Some(1), Some(2)));
        assert_eq!(first["source_type"], "net");
        assert_eq!(first["source_name_aggr"], "pub");
        assert_eq!(first["dest_name"], "web-7d4b9c6f8d-x2kfp");
        assert_eq!(first["dest_labels"]["labels"], serde_json::json!(["app=web", "zone=a"]));
        assert_eq!(first["host"], "node-1");
        assert_eq!(l[2]["source_name_aggr"], "pvt");
    }

    #[test]
    fn level_1_folds_source_ports() {
        let l = lines(Aggregation::SourcePorts);
        assert_eq!(l.len(), 2, "{l:#?}");
        let pub_ = l.iter().find(|r| r["source_ip"] == "8.8.8.8").unwrap_or_else(|| panic!("{l:#?}"));
        assert_eq!(pub_["source_port"], serde_json::Value::Null);
        assert_eq!((pub_["num_flows"].as_u64(), pub_["packets_in"].as_u64()), (Some(2), Some(6)));
    }

    #[test]
    fn level_2_folds_endpoints_by_name_prefix_keeping_common_labels() {
        let l = lines(Aggregation::Prefixes);
        // The two public-source flows and the private one differ in source (pub, pvt).
        assert_eq!(l.len(), 2, "{l:#?}");
        for r in &l {
            assert_eq!(
                (&r["source_ip"], &r["dest_ip"]),
                (&serde_json::Value::Null, &serde_json::Value::Null)
            );
            assert_eq!(r["dest_name"], "-");
            assert_eq!(r["dest_name_aggr"], "web-7d4b9c6f8d-*");
        }
        // The group's labels are those every pod of it seen in the interval has.
        for r in &l {
            assert_eq!(r["dest_labels"]["labels"], serde_json::json!(["app=web"]), "{r}");
        }
        let public = l.iter().find(|r| r["source_name_aggr"] == "pub").unwrap_or_else(|| panic!("{l:#?}"));
        assert_eq!(public["num_flows"], 2);
    }

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

//! Flow records, modelled on Calico's flow logs, and a JSON-lines writer.
//!
//! Three kinds: `start` when a flow is allowed and tracked, `aggregate` every flow-log
//! interval while it sees traffic, and `end` when it leaves the table (expired, reclaimed, cut
//! by a policy change, or reopened). Packets and bytes in a record count what happened since
//! the flow's previous record, so each packet is in exactly one record: a flow's totals are
//! the sums over its records. Dropped traffic (denied by policy, invalid, table full, no
//! route, TTL) is aggregated per 5-tuple and reason and written as `aggregate` records with
//! action `deny` at each interval. docs/guide/operations.md has the field reference.
//!
//! Records carry the epoch of the policy they were decided under and indexes into it, so
//! making one neither allocates names nor touches a shared reference count; the writer
//! resolves names from the [`PolicyVersions`] it keeps.

use std::io::{self, Write};
use std::net::IpAddr;

use margay_config::policy::Verdict;
use margay_rulecompiler::policy::compile::SideRef;
use serde::Serialize;
use serde_json::Value;

use crate::counters::Drop;

pub mod calico;
pub mod ipfix;
mod recorder;

use crate::policy::PolicyVersions;
pub use recorder::{DropKey, MAX_DROP_AGGREGATES, Recorder};

/// A record's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A flow was allowed and is now tracked.
    Start,
    /// Traffic over an interval.
    Aggregate,
    /// A tracked flow ended.
    End,
    /// A new flow matched a policy's `log` rule (its decision names the rule on each side;
    /// it counts no packets: they are in the flow's other records).
    Log,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Start => "start",
            Kind::Aggregate => "aggregate",
            Kind::End => "end",
            Kind::Log => "log",
        }
    }
}

/// Why a flow was allowed or dropped (or, for an `end` record, why it ended).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The policy decided (allowed, for a tracked flow).
    Policy,
    /// The flow stayed idle past its timeout.
    Expired,
    /// A TCP connection was reopened (a new SYN on a closed connection).
    Reopened,
    /// Dropped for this reason; for an `end` record, `TableFull` means reclaimed to make room
    /// and `PolicyChanged` cut by a reload.
    Drop(Drop),
}

impl Reason {
    /// The name records use: a drop's [`Drop::record_reason`].
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Policy => "policy",
            Reason::Expired => "expired",
            Reason::Reopened => "reopened",
            Reason::Drop(d) => d.record_reason(),
        }
    }
}

/// The policy decision a record reports, by index into the record's policy.
#[derive(Debug, Clone, Copy)]
pub struct RecordDecision {
    /// The egress side, when the source is a local endpoint.
    pub egress: Option<SideRef>,
    /// The ingress side, when the destination is a local endpoint.
    pub ingress: Option<SideRef>,
    /// The staged verdict, when a staged policy applied.
    pub staged: Option<Verdict>,
}

/// One flow record. Addresses and ports are the originator's (`src`) and the responder's.
#[derive(Debug, Clone)]
pub struct FlowRecord {
    /// Kind.
    pub kind: Kind,
    /// Start of the period the record covers (the flow's start for `start`), ns.
    pub start_ns: u64,
    /// End of the period, ns.
    pub end_ns: u64,
    /// IP protocol.
    pub proto: u8,
    /// Originator address.
    pub src: IpAddr,
    /// Originator port (ICMP echo: identifier; 0 without ports).
    pub src_port: u16,
    /// Responder address.
    pub dst: IpAddr,
    /// Responder port.
    pub dst_port: u16,
    /// Allowed or dropped.
    pub action: Verdict,
    /// Why.
    pub reason: Reason,
    /// The epoch of the policy that names endpoints and decisions (the one the decision was
    /// made under), when the pipeline still held that version; [`PolicyVersions`] resolves it.
    /// An epoch rather than a reference: a counted reference per record cost every new flow a
    /// locked increment behind its table stores, and workers and the flow-log thread
    /// contending for one counter (docs/guide/operations.md, "The flow-log writer").
    pub policy_epoch: Option<u32>,
    /// The policy decision, when the policy was consulted.
    pub decision: Option<RecordDecision>,
    /// Packets `[out (originator to responder), in]`.
    pub packets: [u64; 2],
    /// Bytes, same order.
    pub bytes: [u64; 2],
    /// Flows started in the period.
    pub flows_started: u32,
    /// Flows completed in the period.
    pub flows_completed: u32,
}

/// A protocol as records name it: its name when it has a common one, else its number.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Hash)]
#[serde(untagged)]
pub(crate) enum Proto {
    Name(&'static str),
    Number(u8),
}

pub(crate) fn proto_name(p: u8) -> Proto {
    match p {
        1 => Proto::Name("icmp"),
        6 => Proto::Name("tcp"),
        17 => Proto::Name("udp"),
        58 => Proto::Name("icmp6"),
        132 => Proto::Name("sctp"),
        n => Proto::Number(n),
    }
}

/// One side's decision in a Margay record.
#[derive(Serialize)]
struct SideJson<'a> {
    action: &'static str,
    policy: &'a str,
    rule: i32,
    tier: &'a str,
}

/// A record in Margay's format, borrowing its names: serialized directly (a `serde_json::Value`
/// per record cost the writer ~4 µs in allocations). Fields in alphabetical order, the order the
/// format has always had.
#[derive(Serialize)]
struct MargayJson<'a> {
    action: &'static str,
    bytes_in: u64,
    bytes_out: u64,
    dst_ip: IpAddr,
    dst_name: Option<&'a str>,
    dst_namespace: Option<&'a str>,
    dst_port: u16,
    egress: Option<SideJson<'a>>,
    end_time_ns: u64,
    flows_completed: u32,
    flows_started: u32,
    ingress: Option<SideJson<'a>>,
    packets_in: u64,
    packets_out: u64,
    policy_epoch: Option<u32>,
    proto: Proto,
    reason: &'static str,
    src_ip: IpAddr,
    src_name: Option<&'a str>,
    src_namespace: Option<&'a str>,
    src_port: u16,
    staged_action: Option<&'static str>,
    start_time_ns: u64,
    #[serde(rename = "type")]
    kind: &'static str,
}

/// Bytes of an Ethernet header: what a record's bytes count beyond the IP packets (served
/// interfaces carry untagged Ethernet only).
const ETHERNET_HEADER: u64 = 14;

impl FlowRecord {
    /// The IP bytes of direction `dir` (0: originator to responder): `bytes` counts frames,
    /// Calico and IPFIX count IP packets.
    pub fn ip_bytes(&self, dir: usize) -> u64 {
        self.bytes[dir].saturating_sub(ETHERNET_HEADER * self.packets[dir])
    }

    /// The record in Margay's format, names resolved from `versions`.
    fn margay<'a>(&self, versions: &'a PolicyVersions) -> MargayJson<'a> {
        let policy = self.policy_epoch.and_then(|e| versions.get(e));
        let endpoint = |ip: IpAddr| policy.and_then(|p| p.compiled.endpoint(ip));
        let side = |s: Option<SideRef>| match (s, policy) {
            (Some(s), Some(p)) => {
                let (tier, policy, rule) = p.compiled.side_names(s);
                // A `log` record's sides are the rules that logged.
                let action = if self.kind == Kind::Log { "log" } else { s.verdict.as_str() };
                Some(SideJson { action, policy, rule, tier })
            }
            _ => None,
        };
        let (src_ep, dst_ep) = (endpoint(self.src), endpoint(self.dst));
        let decision = self.decision.as_ref();
        MargayJson {
            kind: self.kind.as_str(),
            start_time_ns: self.start_ns,
            end_time_ns: self.end_ns,
            proto: proto_name(self.proto),
            src_ip: self.src,
            src_port: self.src_port,
            dst_ip: self.dst,
            dst_port: self.dst_port,
            src_name: src_ep.map(|e| e.0),
            src_namespace: src_ep.map(|e| e.1),
            dst_name: dst_ep.map(|e| e.0),
            dst_namespace: dst_ep.map(|e| e.1),
            action: self.action.as_str(),
            reason: self.reason.as_str(),
            policy_epoch: decision.and(policy).map(|p| p.epoch),
            egress: side(decision.and_then(|d| d.egress)),
            ingress: side(decision.and_then(|d| d.ingress)),
            staged_action: decision.and_then(|d| d.staged).map(Verdict::as_str),
            packets_out: self.packets[0],
            bytes_out: self.bytes[0],
            packets_in: self.packets[1],
            bytes_in: self.bytes[1],
            flows_started: self.flows_started,
            flows_completed: self.flows_completed,
        }
    }

    /// The record in Margay's format as a JSON object, names resolved from `versions`.
    pub fn to_json(&self, versions: &PolicyVersions) -> Value {
        serde_json::to_value(self.margay(versions)).unwrap_or(Value::Null)
    }

    /// Writes the record in Margay's format as JSON (no newline).
    pub fn write_json(&self, versions: &PolicyVersions, out: &mut impl Write) -> io::Result<()> {
        serde_json::to_writer(out, &self.margay(versions)).map_err(io::Error::from)
    }
}

/// Writes records as JSON lines.
#[derive(Debug)]
pub struct JsonLines<W: Write> {
    out: W,
}

impl<W: Write> JsonLines<W> {
    /// A writer onto `out`.
    pub fn new(out: W) -> Self {
        JsonLines { out }
    }

    /// Writes one record as a line, names resolved from `versions`.
    pub fn write(&mut self, r: &FlowRecord, versions: &PolicyVersions) -> io::Result<()> {
        r.write_json(versions, &mut self.out)?;
        self.out.write_all(b"\n")
    }

    /// Flushes and returns the sink.
    pub fn into_inner(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

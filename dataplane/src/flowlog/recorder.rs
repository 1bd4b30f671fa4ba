//! Making flow records on the packet path: from conntrack entries (start, aggregate, end) and
//! from dropped packets, aggregated per 5-tuple, reason and decision over each flow-log
//! interval. A pipeline owns one [`Recorder`]; the daemon or replay takes the records.

use std::collections::HashMap;
use std::net::IpAddr;

use foldhash::fast::FixedState;
use margay_config::policy::Verdict;
use margay_rulecompiler::policy::compile::{SideRef, Verdicts};

use super::{FlowRecord, Kind, Reason, RecordDecision};
use crate::conntrack::{Entry, flags};
use crate::policy::PolicyVersions;

/// Distinct dropped flows aggregated per flow-log interval; past it, records are counted as lost.
pub const MAX_DROP_AGGREGATES: usize = 65_536;

/// What a dropped packet's aggregate is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DropKey {
    /// IP protocol.
    pub proto: u8,
    /// Source address.
    pub src: IpAddr,
    /// Source port (ICMP echo: identifier; 0 without ports).
    pub src_port: u16,
    /// Destination address.
    pub dst: IpAddr,
    /// Destination port.
    pub dst_port: u16,
    /// Why it was dropped.
    pub reason: Reason,
    /// The egress side of the policy decision, when the policy was consulted.
    pub egress: Option<SideRef>,
    /// The ingress side.
    pub ingress: Option<SideRef>,
    /// The staged verdict.
    pub staged: Option<Verdict>,
}

impl DropKey {
    /// Sets the decision fields from the policy's verdicts, when it was consulted.
    pub fn with_decision(mut self, decision: Option<&Verdicts>) -> DropKey {
        self.egress = decision.and_then(|v| v.egress);
        self.ingress = decision.and_then(|v| v.ingress);
        self.staged = decision.and_then(|v| v.staged);
        self
    }
}

#[derive(Debug, Clone, Copy)]
struct DropAgg {
    first: u64,
    last: u64,
    packets: u64,
    bytes: u64,
}

/// The records a pipeline has made and not yet handed over, and the interval's drop
/// aggregates.
#[derive(Debug)]
pub struct Recorder {
    records: Vec<FlowRecord>,
    log_budget: LogBudget,
    drops: HashMap<DropKey, DropAgg, FixedState>,
    /// The flow-log interval, ns.
    interval: u64,
    last_flush: Option<u64>,
}

impl Recorder {
    /// A recorder writing aggregates every `interval` ns and at most `log_rate` `log` records
    /// a second (bursts of up to a second's worth).
    pub fn new(interval: u64, log_rate: u32) -> Recorder {
        Recorder {
            records: Vec::new(),
            log_budget: LogBudget::new(log_rate),
            drops: HashMap::default(),
            interval,
            last_flush: None,
        }
    }

    /// A `log` record of the new flow `key` (addresses and ports; `reason` unused) whose
    /// decision `d` matched a `log` rule, decided under the policy of `epoch`, when the rate
    /// allows: false when it does not (the caller counts it).
    pub fn log(&mut self, key: &DropKey, d: &Verdicts, now: u64, epoch: u32) -> bool {
        if !self.log_budget.take(now) {
            return false;
        }
        let side =
            |meta: Option<u32>| meta.map(|meta| SideRef { verdict: d.verdict, meta, tier_default: false });
        self.records.push(FlowRecord {
            kind: Kind::Log,
            start_ns: now,
            end_ns: now,
            proto: key.proto,
            src: key.src,
            src_port: key.src_port,
            dst: key.dst,
            dst_port: key.dst_port,
            action: d.verdict,
            reason: Reason::Policy,
            policy_epoch: Some(epoch),
            decision: Some(RecordDecision { egress: side(d.log[0]), ingress: side(d.log[1]), staged: None }),
            packets: [0, 0],
            bytes: [0, 0],
            flows_started: 0,
            flows_completed: 0,
        });
        true
    }

    /// The flow-log interval, ns.
    pub fn interval(&self) -> u64 {
        self.interval
    }

    /// Moves the records made so far into `out`.
    pub fn take(&mut self, out: &mut Vec<FlowRecord>) {
        out.append(&mut self.records);
    }

    /// A `start` record for the flow `e` just opened by a packet of `len` bytes.
    pub fn start(&mut self, e: &Entry, now: u64, len: usize, versions: &PolicyVersions) {
        let mut rec = record(Kind::Start, e, now, now, Reason::Policy, Verdict::Allow, versions);
        rec.packets = [1, 0];
        rec.bytes = [len as u64, 0];
        rec.flows_started = 1;
        self.records.push(rec);
    }

    /// An `aggregate` record of `e`'s traffic since its last record; its counters restart.
    pub fn aggregate(&mut self, e: &mut Entry, now: u64, versions: &PolicyVersions) {
        let rec = record(Kind::Aggregate, e, e.reported, now, Reason::Policy, Verdict::Allow, versions);
        self.records.push(rec);
        e.reported = now;
        e.clear_counters();
    }

    /// An `end` record of `e`, which leaves the table for `reason`.
    pub fn end(&mut self, e: &Entry, now: u64, reason: Reason, action: Verdict, versions: &PolicyVersions) {
        let mut rec = record(Kind::End, e, e.reported, now, reason, action, versions);
        rec.flows_completed = 1;
        self.records.push(rec);
    }

    /// Adds a dropped packet of `len` bytes to its aggregate. False when the packet starts a
    /// new aggregate and the table of them is full: its record is lost.
    pub fn dropped(&mut self, key: DropKey, now: u64, len: usize) -> bool {
        let full = self.drops.len() >= MAX_DROP_AGGREGATES;
        match self.drops.get_mut(&key) {
            Some(a) => {
                a.last = now;
                a.packets += 1;
                a.bytes += len as u64;
            }
            None if full => return false,
            None => {
                self.drops.insert(key, DropAgg { first: now, last: now, packets: 1, bytes: len as u64 });
            }
        }
        true
    }

    /// Whether the interval is over at `now` (the first call starts it).
    pub fn interval_due(&mut self, now: u64) -> bool {
        match self.last_flush {
            None => {
                self.last_flush = Some(now);
                false
            }
            Some(t) => now.saturating_sub(t) >= self.interval,
        }
    }

    /// Writes the drop aggregates as `aggregate` records with action `deny`, under the policy
    /// of `epoch`, and starts a new interval.
    pub fn flush_drops(&mut self, now: u64, epoch: u32) {
        self.last_flush = Some(now);
        let mut drops: Vec<(DropKey, DropAgg)> = self.drops.drain().collect();
        // Deterministic output: by first packet, then by key fields.
        drops.sort_by_key(|(k, a)| (a.first, k.src, k.src_port, k.dst, k.dst_port, k.proto));
        for (k, a) in drops {
            let decision = (k.egress.is_some() || k.ingress.is_some() || k.staged.is_some())
                .then_some(RecordDecision { egress: k.egress, ingress: k.ingress, staged: k.staged });
            self.records.push(FlowRecord {
                kind: Kind::Aggregate,
                start_ns: a.first,
                end_ns: a.last,
                proto: k.proto,
                src: k.src,
                src_port: k.src_port,
                dst: k.dst,
                dst_port: k.dst_port,
                action: Verdict::Deny,
                reason: k.reason,
                policy_epoch: Some(epoch),
                decision,
                packets: [a.packets, 0],
                bytes: [a.bytes, 0],
                flows_started: 1,
                flows_completed: 1,
            });
        }
    }
}

/// A token bucket in nanosecond units: `rate` tokens a second, at most a second's worth kept.
#[derive(Debug)]
struct LogBudget {
    rate: u64,
    /// Tokens x 1e9.
    have: u64,
    last: Option<u64>,
}

impl LogBudget {
    const UNIT: u64 = 1_000_000_000;

    fn new(rate: u32) -> LogBudget {
        let rate = u64::from(rate);
        LogBudget { rate, have: rate * Self::UNIT, last: None }
    }

    fn take(&mut self, now: u64) -> bool {
        let cap = self.rate * Self::UNIT;
        if let Some(last) = self.last {
            let earned = now.saturating_sub(last).saturating_mul(self.rate);
            self.have = self.have.saturating_add(earned).min(cap);
        }
        self.last = Some(now);
        if self.have >= Self::UNIT {
            self.have -= Self::UNIT;
            true
        } else {
            false
        }
    }
}

/// A record of a tracked flow's entry over `start..end`, naming its decision when the policy
/// version it was made under is still kept.
fn record(
    kind: Kind,
    e: &Entry,
    start: u64,
    end: u64,
    reason: Reason,
    action: Verdict,
    versions: &PolicyVersions,
) -> FlowRecord {
    let ((src, src_port), (dst, dst_port)) = e.endpoints();
    let policy_epoch = versions.get(e.epoch).map(|p| p.epoch);
    let decision = policy_epoch.map(|_| {
        let side = |present, td, meta| {
            (e.flags & present != 0).then_some(SideRef {
                verdict: Verdict::Allow,
                meta,
                tier_default: e.flags & td != 0,
            })
        };
        RecordDecision {
            egress: side(flags::EGRESS, flags::EGRESS_TIER_DEFAULT, e.egress_meta),
            ingress: side(flags::INGRESS, flags::INGRESS_TIER_DEFAULT, e.ingress_meta),
            staged: (e.flags & flags::STAGED != 0).then_some(if e.flags & flags::STAGED_DENY != 0 {
                Verdict::Deny
            } else {
                Verdict::Allow
            }),
        }
    });
    FlowRecord {
        kind,
        start_ns: start,
        end_ns: end,
        proto: e.key.proto,
        src,
        src_port,
        dst,
        dst_port,
        action,
        reason,
        policy_epoch,
        decision,
        packets: e.packets(),
        bytes: e.bytes(),
        flows_started: 0,
        flows_completed: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::LogBudget;

    #[test]
    fn the_log_budget_allows_a_burst_then_its_rate() {
        const S: u64 = 1_000_000_000;
        let mut b = LogBudget::new(3);
        let t0 = 10 * S;
        assert_eq!((0..5).filter(|_| b.take(t0)).count(), 3, "a second's worth at once");
        assert!(!b.take(t0 + S / 10), "a tenth of a second earns 0.3 of a record");
        assert!(b.take(t0 + S / 2), "half a second earns 1.5");
        assert_eq!(
            (0..10).filter(|_| b.take(t0 + 100 * S)).count(),
            3,
            "never more than a second's worth saved"
        );
        let mut off = LogBudget::new(0);
        assert!(!off.take(t0) && !off.take(t0 + 100 * S), "rate 0: no log records");
    }
}
